//! `tools qemu --platform bare --arch aarch64|x86_64`: build the bare image
//! (every PD in one ELF, DESIGN §5.3), boot it in QEMU with QEMU's
//! virtio-balloon, follow QEMU's RSS and the PDs' console, print the timeline
//! and the phase table, write the plot, and fail when the host did not get
//! the guests' freed memory back. `--hostile` boots the hostile variant
//! (guest1 runs `hostile.elf`, issue 8), shows its attack counts and the
//! memserver's counters, and fails as well when the memserver did not hold.

use super::image::{target_dir, workspace};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tools::bare;
use tools::qemu::{self, Arch, BalloonDevice};

/// Share of the freed memory that must come back (issue 6: 90 %).
const FRACTION: f64 = 0.9;

/// What `tools qemu --platform bare` needs.
#[derive(Debug, Clone)]
pub struct BareArgs {
    pub arch: Arch,
    pub out: Option<PathBuf>,
    pub balloon_mib: Option<u64>,
    pub no_reporting: bool,
    pub modern_mmio: bool,
    pub hostile: bool,
    pub timeout_s: u64,
    /// The description (default: the workspace's system.xml).
    pub system: Option<PathBuf>,
    /// The memserver's reporting tunables and the guests' workload, built
    /// in.
    pub built_in: tools::pd_build::BuiltIn,
    /// Lines to type on the console PD's serial line once it is ready
    /// (`tools qemu --type`).
    pub type_lines: Vec<String>,
}

/// `aarch64` or `x86_64`.
pub fn parse_arch(s: &str) -> Result<Arch, String> {
    match s {
        "aarch64" => Ok(Arch::Aarch64),
        "x86_64" => Ok(Arch::X86_64),
        _ => Err(format!("unknown arch '{s}': aarch64 or x86_64")),
    }
}

pub fn main(args: BareArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tools qemu --platform bare: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: BareArgs) -> Result<ExitCode, String> {
    let name = match args.arch {
        Arch::Aarch64 => "aarch64",
        Arch::X86_64 => "x86_64",
    };
    let variant = if args.hostile {
        bare::Variant::Hostile
    } else {
        bare::Variant::System
    };
    let dir = match variant {
        bare::Variant::System => name.to_string(),
        v => format!("{name}-{}", v.name()),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("bare").join(dir));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let system = super::image::system_or_default(args.system.clone());
    let xml = bare::description_of(&system, variant).map_err(|e| e.to_string())?;
    eprintln!(
        "building the bare image ({}) for {}",
        variant.name(),
        bare::target(args.arch)
    );
    // Not cargo's target dir: `tools` may be running under cargo.
    let kernel = bare::build(
        &workspace(),
        &tools::pd_build::target_dir(&target_dir()),
        &out,
        args.arch,
        "system",
        &xml,
        &args.built_in,
    )
    .map_err(|e| e.to_string())?;
    let guests = bare::guests(&xml)?;
    let mut cfg = bare::run_config(
        args.arch,
        kernel.clone(),
        BalloonDevice {
            reporting: !args.no_reporting,
            modern_mmio: args.modern_mmio,
        },
        out.join("qmp.sock"),
        guests.clone(),
        args.balloon_mib
            .or(args.hostile.then_some(bare::HOSTILE_BALLOON_MIB))
            .map(|m| m << 20),
    );
    if args.hostile {
        cfg.done_lines = vec![bare::HOSTILE_DONE.to_string()];
    }
    cfg.timeout = Duration::from_secs(args.timeout_s);
    cfg.console_lines = args.type_lines;
    cfg.console_stdin = true;
    eprintln!("booting {} in QEMU", kernel.display());
    super::qemu::console_hint(&xml);
    let report = qemu::run(&cfg, &mut |line| eprintln!("{line}")).map_err(|e| e.to_string())?;
    let console = out.join("console.txt");
    std::fs::write(&console, &report.console).map_err(|e| e.to_string())?;
    let csv = out.join("timeline.csv");
    std::fs::write(&csv, report.timeline.csv()).map_err(|e| e.to_string())?;
    let svg = out.join("timeline.svg");
    report
        .timeline
        .plot_svg(&svg, &format!("bare platform on {name}: QEMU RSS"))?;
    println!("{}", bare::summary(&report));
    println!(
        "console: {}\nplot: {}\nsamples: {}",
        console.display(),
        svg.display(),
        csv.display()
    );
    let mut failed = args.hostile && !hostile_held(&report.console, &guests);
    match bare::verdict(&report, FRACTION) {
        Ok(()) => println!("ok: the host got the memory back"),
        Err(e) => {
            println!("FAILED: {e}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Show the hostile PD's lines and judge the hostile run (bare or seL4);
/// whether the memserver held.
pub fn hostile_held(console: &str, guests: &[String]) -> bool {
    for l in console.lines().filter(|l| l.starts_with("HOSTILE|")) {
        println!("{l}");
    }
    match bare::hostile_verdict(console, guests) {
        Ok(f) => {
            println!(
                "ok: the memserver held against the hostile PD ({} rounds); {}",
                f.rounds, f.peers
            );
            true
        }
        Err(e) => {
            println!("FAILED: the hostile run: {e}");
            false
        }
    }
}
