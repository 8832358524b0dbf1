//! `tools demo`: run the system on the host platform and show the host
//! getting the guests' freed memory back (see `tools::demo`).
//!
//! Exit status: 0 when at least `--expect` of the freed memory came back and
//! the guests verified their live data, 1 when not, 2 when the demo could not
//! run.

use super::image::workspace;
use balloon::model::DeviceConfig;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tools::control_socket;
use tools::demo::{self, DemoConfig};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Pattern {
    /// Allocate in 4 MiB blocks, touch, free all.
    Bulk,
    /// Small blocks (orders 0-3), free every other one, then the rest.
    Fragmented,
    /// Rounds of mixed-order allocation and free.
    Churn,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Policy {
    /// Watch each zone: report a quiet zone at once, wait for a busy one,
    /// age small blocks back (memserver/src/adaptive.rs).
    Adaptive,
    /// Linux's rules, the control: a full delay and 1/16 of a list per pass.
    Linux,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Adaptive => "adaptive",
            Policy::Linux => "linux",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// MiB each guest allocates and frees (with `--live-mib`, at most the
    /// guest's RAM in the system description).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub guest_mib: u64,
    /// The guests' allocation pattern.
    #[arg(long, value_enum, default_value_t = Pattern::Bulk)]
    pub pattern: Pattern,
    /// How long the guests hold memory between phases (ms).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub hold_ms: u64,
    /// Rounds of the churn pattern.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rounds: u32,
    /// MiB each guest keeps for the whole run and verifies at the end.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=65536))]
    pub live_mib: u64,
    /// Reporting order (Linux: 9, 2 MiB blocks).
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u8).range(0..=i64::from(memserver::MAX_ORDER)))]
    pub order: u8,
    /// Reporting delay in ms (Linux: 2000).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub delay_ms: u64,
    /// Blocks per report (Linux: 32, one wire batch; the device's queue
    /// size may lower it).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=memserver::MAX_CAPACITY as i64))]
    pub capacity: u16,
    /// Report batches in flight (Linux: 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=memserver::MAX_IN_FLIGHT as i64))]
    pub in_flight: u8,
    /// Reporting policy.
    #[arg(long, value_enum, default_value_t = Policy::Adaptive)]
    pub policy: Policy,
    /// More memserver tunables, `key=value,...` (e.g. `quiet_order=2,age_ms=3000`;
    /// see memserver::params).
    #[arg(long, default_value = "")]
    pub tunables: String,
    /// Keep watching until this many seconds after the first free, even
    /// when the memory looks settled.
    #[arg(long)]
    pub watch: Option<f64>,
    /// Change a tunable while the system runs, SECS seconds after the PDs
    /// start, through the memserver's control port (repeatable; e.g.
    /// `3:delay_ms=250`, `5:policy=linux`). The memserver range-checks it
    /// and answers; the description needs the port
    /// (tools/systems/host-2x1g.xml has it).
    #[arg(long, value_name = "SECS:KEY=VALUE")]
    pub set_tunable: Vec<demo::TunableChange>,
    /// Take tunable changes typed while the system runs: listen on this
    /// Unix socket (default target/demo/control.sock) for `tools tunable
    /// KEY=VALUE`, passed to the memserver's control port as
    /// --set-tunable's are. The description needs the port.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = control_socket::DEFAULT_PATH)]
    pub control_socket: Option<PathBuf>,
    /// Turn reporting off (the control run: the memory stays with the host).
    #[arg(long)]
    pub no_reporting: bool,
    /// Fraction of the freed memory that must come back for success.
    #[arg(long, default_value_t = 0.95)]
    pub expect: f64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Where the plot (SVG) and the samples (CSV) go.
    #[arg(long, default_value = "target/demo")]
    pub out: PathBuf,
    /// The system description (default: the workspace's system.xml).
    #[arg(long)]
    pub system: Option<PathBuf>,
    /// Do not build the PDs first (use the binaries next to this one).
    #[arg(long)]
    pub no_build: bool,
    /// The balloon device the host's model plays: QEMU's, or the shape of
    /// another VMM's (qemu, dense, dense-no-stats, no-stats,
    /// small-reporting-queue).
    #[arg(long, default_value = "qemu", value_parser = device_profile)]
    pub device: String,
}

fn device_profile(name: &str) -> Result<String, String> {
    match DeviceConfig::profile(name) {
        Some(_) => Ok(name.to_string()),
        None => Err(format!(
            "unknown device profile (known: {})",
            DeviceConfig::profiles()
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

pub fn main(args: Args) -> ExitCode {
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let pattern = match args.pattern {
        Pattern::Bulk => "bulk",
        Pattern::Fragmented => "fragmented",
        Pattern::Churn => "churn",
    };
    let tunables = if args.no_reporting {
        "off".to_string()
    } else {
        let mut t = format!(
            "policy={},order={},delay_ms={},capacity={},in_flight={}",
            args.policy.name(),
            args.order,
            args.delay_ms,
            args.capacity,
            args.in_flight
        );
        if !args.tunables.trim().is_empty() {
            t.push(',');
            t.push_str(args.tunables.trim());
        }
        t
    };
    let mut cfg = DemoConfig {
        system: args
            .system
            .clone()
            .unwrap_or_else(|| workspace().join("system.xml")),
        bin_dir: PathBuf::new(),
        guest_params: format!(
            "pattern={pattern},mib={},hold_ms={},rounds={},live_mib={}",
            args.guest_mib, args.hold_ms, args.rounds, args.live_mib
        ),
        tunables,
        timeout: Duration::from_secs_f64(args.timeout),
        period: Duration::from_millis(100),
        settle: Duration::from_secs_f64(args.delay_ms as f64 / 1000.0 * 4.0 + 10.0),
        device: DeviceConfig::profile(&args.device).unwrap_or_default(),
        watch: args.watch.map(Duration::from_secs_f64),
        set_tunables: args.set_tunable.clone(),
        control_socket: args.control_socket.clone(),
    };
    // Refuse what cannot run (a workload larger than a guest's RAM) before
    // building or starting anything.
    demo::check(&cfg)?;
    // Built from the description it runs: their zones, rings and channels
    // are generated from it (and the launcher checks each PD's stamp).
    cfg.bin_dir =
        demo::pds_next_to_this_binary(&workspace(), !args.no_build, args.system.as_deref())?;
    println!(
        "demo: {} guests x {} MiB ({pattern}), reporting {}",
        demo::guest_names(&cfg)?.len(),
        args.guest_mib,
        cfg.tunables
    );
    if let Some(path) = &cfg.control_socket {
        println!(
            "demo: tunables change while it runs: tools tunable --socket {} KEY=VALUE",
            path.display()
        );
    }
    let tty = std::io::stdout().is_terminal();
    let mut last_print = Instant::now() - Duration::from_secs(1);
    let report = demo::run(&cfg, &mut |line| {
        // Live on a terminal; a line a second otherwise (CI logs).
        if tty {
            print!("\r{line}\x1b[K");
            let _ = std::io::stdout().flush();
        } else if last_print.elapsed() >= Duration::from_secs(1) {
            println!("{line}");
            last_print = Instant::now();
        }
    })?;
    if tty {
        println!();
    }
    for answer in &report.control {
        println!("control: {answer}");
    }
    println!("\n{}", report.summary());
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("creating {}: {e}", args.out.display()))?;
    let svg = args.out.join("host-memory.svg");
    report
        .timeline
        .plot_svg(&svg, "tools demo: host memory for guest RAM")?;
    let csv = args.out.join("samples.csv");
    std::fs::write(&csv, report.timeline.csv())
        .map_err(|e| format!("writing {}: {e}", csv.display()))?;
    println!("plot: {}  samples: {}", svg.display(), csv.display());
    let ok = report.memory_came_back(args.expect);
    if args.no_reporting {
        println!("reporting was off: the host kept the freed memory, as expected without it");
        return Ok(report.guests_ok);
    }
    if !ok {
        println!(
            "FAILED: expected at least {:.0} % of the freed memory back",
            args.expect * 100.0
        );
    }
    Ok(ok)
}
