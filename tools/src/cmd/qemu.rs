//! `tools qemu --board B [--config C]`: build the Microkit image, boot it in
//! QEMU with a free-page-reporting virtio-balloon, follow QEMU's RSS and the
//! PDs' console, print the timeline and the phase table, write the plot, and
//! fail when the host did not get the memory back.

use super::image::{parse_board, parse_config, target_dir};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tools::image::{Board, KernelConfig};
use tools::qemu::{self, Arch, BalloonDevice};
use tools::sel4::{self, Sel4Run};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// qemu_virt_aarch64 or x86_64_generic.
    #[arg(long, value_parser = parse_board, required_unless_present = "platform")]
    pub board: Option<Board>,
    /// `bare`: boot the bare platform's image instead (no seL4, no SDK;
    /// DESIGN §5.3), with `--arch`.
    #[arg(long, value_parser = ["bare"], requires = "arch", conflicts_with = "board")]
    pub platform: Option<String>,
    /// With `--platform bare`: aarch64 or x86_64.
    #[arg(long, value_parser = super::bare::parse_arch)]
    pub arch: Option<Arch>,
    /// The seL4 kernel configuration: debug or release. Both are followed
    /// through the PDs' log pages (a release kernel prints nothing).
    #[arg(long, value_parser = parse_config, default_value = "debug")]
    pub config: KernelConfig,
    /// The system description (for qemu_virt_aarch64; see `tools image`).
    /// [default: the workspace's system.xml]
    #[arg(long)]
    pub system: Option<PathBuf>,
    /// Output directory for the image, plot and CSV.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// After the run, ask the balloon (QMP `balloon`) for a guest of this
    /// many MiB and check `query-balloon`.
    #[arg(long)]
    pub balloon_mib: Option<u64>,
    /// QEMU without free page reporting (the control run).
    #[arg(long)]
    pub no_reporting: bool,
    /// aarch64: virtio-mmio version 2 (`force-legacy=false`).
    #[arg(long)]
    pub modern_mmio: bool,
    /// Boot the test-only hostile variant (guest1 runs hostile.elf and
    /// attacks the memserver), on seL4 or the bare platform, and check that
    /// the memserver held. Asks the balloon for 1792 MiB at the end unless
    /// `--balloon-mib` says otherwise (the memserver logs its counters when
    /// a reporting or balloon pass settles).
    #[arg(long)]
    pub hostile: bool,
    /// With a <virtual_machine> in the description: the VMM's smoke guest
    /// instead of Debian's Linux.
    #[arg(long)]
    pub smoke_vm: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 240)]
    pub timeout_s: u64,
    /// What the PDs are built with.
    #[command(flatten)]
    pub built_in: tools::pd_build::BuiltIn,
    /// A line to type on the console PD's serial line once it is ready
    /// (repeatable, in order), e.g. `--type "tunable delay_ms=250"`. Lines
    /// of standard input are typed there too, as they come.
    #[arg(long = "type", value_name = "LINE")]
    pub type_lines: Vec<String>,
}

pub fn main(args: Args) -> ExitCode {
    if let (Some(_), Some(arch)) = (&args.platform, args.arch) {
        return super::bare::main(super::bare::BareArgs {
            arch,
            out: args.out,
            balloon_mib: args.balloon_mib,
            no_reporting: args.no_reporting,
            modern_mmio: args.modern_mmio,
            hostile: args.hostile,
            timeout_s: args.timeout_s,
            built_in: args.built_in,
            system: args.system,
            type_lines: args.type_lines,
        });
    }
    let Some(board) = args.board else {
        eprintln!("tools qemu: --board or --platform bare --arch ARCH");
        return ExitCode::FAILURE;
    };
    match run(args, board) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tools qemu: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Say how to reach the console PD, when the description has one.
pub fn console_hint(description: &str) {
    if tools::console_session::has_console(description) {
        eprintln!(
            "the console PD takes lines typed here: `tunable KEY=VALUE` (e.g. tunable delay_ms=250) changes a reporting tunable while the system runs; `help` lists them"
        );
    }
}

fn has_vm(system: &std::path::Path) -> Result<bool, String> {
    let text = std::fs::read_to_string(system).map_err(|e| format!("{}: {e}", system.display()))?;
    let sys = sdf::System::parse(&text).map_err(|e| format!("{}:{e}", system.display()))?;
    Ok(tools::vm_guest::plan(&sys)?.is_some())
}

fn run(args: Args, board: Board) -> Result<ExitCode, String> {
    let vm = has_vm(&super::image::system_or_default(args.system.clone()))?;
    // A description with a VM runs Linux in it (nested reporting), or the
    // smoke guest; the verdict follows.
    let run = match (vm, args.smoke_vm, args.hostile, args.no_reporting) {
        (true, _, true, _) => {
            return Err(
                "--hostile replaces a native guest of system.xml; it does not run with a VM's description"
                    .into(),
            );
        }
        (true, true, _, _) => Sel4Run::SmokeVm,
        (true, false, _, true) => Sel4Run::LinuxVmControl,
        (true, false, _, false) => Sel4Run::LinuxVm,
        (false, _, true, _) => Sel4Run::Hostile,
        (false, _, false, true) => Sel4Run::Control,
        (false, _, false, false) => Sel4Run::Reporting,
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let variant = if args.hostile { "-hostile" } else { "" };
        target_dir()
            .join("microkit")
            .join(format!("{}-{}{variant}", board, args.config))
    });
    let system = sel4::description(
        &super::image::system_or_default(args.system.clone()),
        run,
        &out,
    )
    .map_err(|e| e.to_string())?;
    let guest = super::image::vm_guest(&system, &out, args.smoke_vm)?;
    let img = super::image::build(
        board,
        args.config,
        system,
        Some(out.clone()),
        guest,
        args.built_in.clone(),
    )
    .map_err(|e| e.to_string())?;
    let mut cfg = sel4::run_config(&img, run, &out, Duration::from_secs(args.timeout_s))?;
    cfg.qemu.balloon = cfg.qemu.balloon.map(|b| BalloonDevice {
        modern_mmio: args.modern_mmio,
        ..b
    });
    if let Some(mib) = args.balloon_mib {
        cfg.balloon_target = Some(mib << 20);
    }
    cfg.console_lines = args.type_lines;
    cfg.console_stdin = true;
    eprintln!(
        "booting {} in QEMU ({} kernel; the PDs' lines are read from their log pages)",
        img.loader.display(),
        args.config
    );
    console_hint(&std::fs::read_to_string(&img.board_sdf).unwrap_or_default());
    let report = qemu::run(&cfg, &mut |line| eprintln!("{line}")).map_err(|e| e.to_string())?;
    let console = out.join("console.txt");
    std::fs::write(&console, &report.console).map_err(|e| e.to_string())?;
    let log = out.join("pd-log.txt");
    std::fs::write(&log, &report.log).map_err(|e| e.to_string())?;
    let csv = out.join("timeline.csv");
    std::fs::write(&csv, report.timeline.csv()).map_err(|e| e.to_string())?;
    let svg = out.join("timeline.svg");
    report.timeline.plot_svg(
        &svg,
        &format!("seL4 Microkit on {board} ({}): QEMU RSS", args.config),
    )?;
    println!("{}", report.summary());
    if run == Sel4Run::Hostile {
        for l in report.log.lines().filter(|l| l.starts_with("HOSTILE|")) {
            println!("{l}");
        }
        if let Some((back, free)) = report.whole_run() {
            println!(
                "over the whole run (the boot-time report and guest0's free overlap): {:.1} of {:.1} MiB reported free came back",
                back as f64 / (1u64 << 20) as f64,
                free as f64 / (1u64 << 20) as f64
            );
        }
    }
    println!(
        "console: {}\nPD log (from the log pages): {}\nplot: {}\nsamples: {}",
        console.display(),
        log.display(),
        svg.display(),
        csv.display()
    );
    match sel4::verdict(&img, run, &report) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED ({}): {e}", sel4::label(board, args.config, run));
            Ok(ExitCode::FAILURE)
        }
    }
}
