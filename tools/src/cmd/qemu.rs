//! `tools qemu --board B [--config C]`: build the Microkit image, boot it in
//! QEMU with a free-page-reporting virtio-balloon, follow QEMU's RSS and the
//! PDs' console, print the timeline and the phase table, write the plot, and
//! fail when the host did not get the memory back.

use super::image::{parse_board, parse_config, target_dir, workspace};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tools::bare;
use tools::image::{Board, KernelConfig};
use tools::qemu::{self, Arch, BalloonDevice, Boot, QemuConfig, RunConfig};

/// Share of the memory that must come back (issue 6 asks 90 %).
const FRACTION: f64 = 0.9;

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
    /// The seL4 kernel configuration: debug or release (release kernels
    /// print nothing, so only debug runs can be followed).
    #[arg(long, value_parser = parse_config, default_value = "debug")]
    pub config: KernelConfig,
    /// The system description (for qemu_virt_aarch64; see `tools image`).
    #[arg(long, default_value_os_t = workspace().join("system.xml"))]
    pub system: PathBuf,
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
    /// attacks the memserver, issue 8), on seL4 or the bare platform, and
    /// check that the memserver held. Asks the balloon for 1792 MiB at the
    /// end unless `--balloon-mib` says otherwise (the memserver logs its
    /// counters when a reporting or balloon pass settles).
    #[arg(long)]
    pub hostile: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 240)]
    pub timeout_s: u64,
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

fn run(args: Args, board: Board) -> Result<ExitCode, String> {
    let out = args.out.clone().unwrap_or_else(|| {
        let variant = if args.hostile { "-hostile" } else { "" };
        target_dir()
            .join("microkit")
            .join(format!("{}-{}{variant}", board, args.config))
    });
    let system = if args.hostile {
        // The description with guest1 running hostile.elf, as on the bare
        // platform; the board's variant is derived from it as usual.
        let xml = std::fs::read_to_string(&args.system)
            .map_err(|e| format!("{}: {e}", args.system.display()))?;
        let xml = tools::image::variant(&xml, bare::HOSTILE_PD, bare::HOSTILE_IMAGE)
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let path = out.join("system-hostile.xml");
        std::fs::write(&path, xml).map_err(|e| format!("{}: {e}", path.display()))?;
        path
    } else {
        args.system.clone()
    };
    let img = super::image::build(board, args.config, system, Some(out.clone()))
        .map_err(|e| e.to_string())?;
    let sys =
        sdf::System::parse(&std::fs::read_to_string(&img.board_sdf).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let guests: Vec<String> = sys
        .pds
        .iter()
        .filter(|p| p.program_image.as_deref() == Some("guest.elf"))
        .map(|p| p.name.to_uppercase())
        .collect();
    let cfg = RunConfig {
        qemu: QemuConfig {
            arch: match board {
                Board::QemuVirtAarch64 => Arch::Aarch64,
                Board::X86_64Generic => Arch::X86_64,
            },
            boot: Boot::Microkit {
                loader: img.loader.clone(),
                kernel: img.kernel.clone(),
            },
            memory_mib: 2048,
            balloon: Some(BalloonDevice {
                reporting: !args.no_reporting,
                modern_mmio: args.modern_mmio,
            }),
            qmp: out.join("qmp.sock"),
            extra: Vec::new(),
        },
        guests: guests.clone(),
        done_lines: if args.hostile {
            vec![bare::HOSTILE_DONE.to_string()]
        } else {
            Vec::new()
        },
        timeout: Duration::from_secs(args.timeout_s),
        period: Duration::from_millis(250),
        steady: Duration::from_secs(3),
        settle: Duration::from_secs(30),
        balloon_target: args
            .balloon_mib
            .or(args.hostile.then_some(bare::HOSTILE_BALLOON_MIB))
            .map(|m| m << 20),
    };
    eprintln!("booting {} in QEMU", img.loader.display());
    let report = qemu::run(&cfg, &mut |line| eprintln!("{line}")).map_err(|e| e.to_string())?;
    let console = out.join("console.txt");
    std::fs::write(&console, &report.console).map_err(|e| e.to_string())?;
    let csv = out.join("timeline.csv");
    std::fs::write(&csv, report.timeline.csv()).map_err(|e| e.to_string())?;
    let svg = out.join("timeline.svg");
    report
        .timeline
        .plot_svg(&svg, &format!("seL4 Microkit on {}: QEMU RSS", board))?;
    println!("{}", report.summary());
    println!(
        "console: {}\nplot: {}\nsamples: {}",
        console.display(),
        svg.display(),
        csv.display()
    );
    let held = !args.hostile || super::bare::hostile_held(&report.console, &guests);
    let balloon_ok = report.balloon.is_none_or(|b| b.reached.is_some());
    // With the hostile PD the boot-time report and guest0's free overlap
    // (see `RunReport::memory_came_back_overall`).
    let back = if args.hostile {
        if let Some((back, free)) = report.whole_run() {
            println!(
                "over the whole run (the boot-time report and guest0's free overlap): {:.1} of {:.1} MiB reported free came back",
                back as f64 / (1u64 << 20) as f64,
                free as f64 / (1u64 << 20) as f64
            );
        }
        report.memory_came_back_overall(FRACTION)
    } else {
        report.memory_came_back(FRACTION)
    };
    if back && balloon_ok && held {
        println!("ok: the host got the memory back");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAILED: the memory did not come back (or the balloon target was not reached)");
        Ok(ExitCode::FAILURE)
    }
}
