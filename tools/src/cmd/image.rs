//! `tools image --board B --config C [--system PATH] [--out DIR]`: build the
//! PD ELFs for board B and make the bootable Microkit image with the SDK at
//! `MICROKIT_SDK` (see `tools::image`).

use std::path::PathBuf;
use std::process::ExitCode;
use tools::image::{self, Board, Image, ImageSpec, KernelConfig};
use tools::pd_build::BuiltIn;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// qemu_virt_aarch64 or x86_64_generic.
    #[arg(long, value_parser = parse_board)]
    pub board: Board,
    /// The seL4 kernel configuration of the SDK: debug or release.
    #[arg(long, value_parser = parse_config, default_value = "debug")]
    pub config: KernelConfig,
    /// The system description (written for qemu_virt_aarch64; the x86_64
    /// variant is derived from it).
    /// [default: the workspace's system.xml]
    #[arg(long)]
    pub system: Option<PathBuf>,
    /// Output directory (default: <target dir>/microkit/<board>-<config>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only write the board's system description (<board>.xml) and its
    /// Microkit-dialect copy (microkit.xml); needs no SDK.
    #[arg(long)]
    pub sdf_only: bool,
    /// With a <virtual_machine> in the description: give the VMM its smoke
    /// guest (four instructions) instead of Debian's Linux.
    #[arg(long)]
    pub smoke_vm: bool,
    /// What the PDs are built with.
    #[command(flatten)]
    pub built_in: BuiltIn,
}

/// The Linux guest of `system`'s VM, prepared in `<out>/vm-guest` (Debian's
/// packages, fetched and checked, and the VM's device tree); `None` when
/// the description has no VM or `smoke` asks for the smoke guest.
pub fn vm_guest(
    system: &std::path::Path,
    out: &std::path::Path,
    smoke: bool,
) -> Result<Option<PathBuf>, String> {
    if smoke {
        return Ok(None);
    }
    let text = std::fs::read_to_string(system).map_err(|e| format!("{}: {e}", system.display()))?;
    let sys = sdf::System::parse(&text).map_err(|e| format!("{}:{e}", system.display()))?;
    tools::vm_guest::prepare(
        &sys,
        &workspace(),
        &out.join("vm-guest"),
        tools::vm_guest::WORKLOAD,
        &mut |l| eprintln!("guest: {l}"),
    )
}

fn out_dir(board: Board, config: KernelConfig, out: Option<PathBuf>) -> PathBuf {
    out.unwrap_or_else(|| {
        target_dir()
            .join("microkit")
            .join(format!("{}-{}", board.name(), config.name()))
    })
}

pub fn parse_board(s: &str) -> Result<Board, String> {
    Board::parse(s)
        .ok_or_else(|| format!("unknown board '{s}' (qemu_virt_aarch64, x86_64_generic)"))
}

pub fn parse_config(s: &str) -> Result<KernelConfig, String> {
    KernelConfig::parse(s).ok_or_else(|| format!("unknown config '{s}' (debug, release)"))
}

/// `--system`, or the workspace's `system.xml`.
pub fn system_or_default(system: Option<PathBuf>) -> PathBuf {
    system.unwrap_or_else(|| workspace().join("system.xml"))
}

/// The workspace this binary was built from.
pub fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// cargo's target dir: `CARGO_TARGET_DIR` or the workspace's `target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// Build the image `args` describe; errors are one printable message.
pub fn build(
    board: Board,
    config: KernelConfig,
    system: PathBuf,
    out: Option<PathBuf>,
    vm_guest: Option<PathBuf>,
    built_in: BuiltIn,
) -> Result<Image, image::ImageError> {
    let sdk = image::sdk_from_env()?;
    let target_dir = target_dir();
    let out_dir = out_dir(board, config, out);
    eprintln!(
        "building the PDs for {board} and the image ({config} kernel) in {}",
        out_dir.display()
    );
    image::build(&ImageSpec {
        board,
        config,
        system,
        sdk,
        workspace: workspace(),
        target_dir,
        out_dir,
        vm_guest,
        built_in,
    })
}

pub fn main(args: Args) -> ExitCode {
    if args.sdf_only {
        let dir = out_dir(args.board, args.config, args.out);
        return match image::write_sdfs(&system_or_default(args.system), args.board, &dir) {
            Ok((board, mk, _)) => {
                println!("system description: {}", board.display());
                println!("for the microkit tool: {}", mk.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tools image: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let system = system_or_default(args.system);
    let out = out_dir(args.board, args.config, args.out.clone());
    let guest = match vm_guest(&system, &out, args.smoke_vm) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("tools image: the VM's guest: {e}");
            return ExitCode::FAILURE;
        }
    };
    match build(
        args.board,
        args.config,
        system,
        Some(out),
        guest,
        args.built_in,
    ) {
        Ok(img) => {
            println!("image: {}", img.loader.display());
            if let Some(k) = &img.kernel {
                println!("kernel: {}", k.display());
            }
            println!("system description: {}", img.board_sdf.display());
            println!("report: {}", img.report.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tools image: {e}");
            ExitCode::FAILURE
        }
    }
}
