//! `tools check <system.xml>`: parse and validate, print every finding as
//! `path:line: severity: message`; exit 1 on errors.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The system description.
    pub system: PathBuf,
    /// The board it is for: qemu_virt_aarch64 (the default) or
    /// x86_64_generic, which cannot run a <virtual_machine>.
    #[arg(long, default_value = "qemu_virt_aarch64", value_parser = ["qemu_virt_aarch64", "x86_64_generic"])]
    pub board: String,
}

pub fn main(args: Args) -> ExitCode {
    let path = args.system.display();
    let xml = match std::fs::read_to_string(&args.system) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sys = match sdf::System::parse(&xml) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{path}:{e}");
            return ExitCode::FAILURE;
        }
    };
    let diags = sdf::check::check_for_board(&sys, &args.board);
    for d in &diags {
        eprintln!("{path}:{d}");
    }
    if sdf::check::has_errors(&diags) {
        return ExitCode::FAILURE;
    }
    println!(
        "{path}: ok ({} PDs, {} memory regions, {} channels, {} warnings)",
        sys.pds.len(),
        sys.memory_regions.len(),
        sys.channels.len(),
        diags.len()
    );
    ExitCode::SUCCESS
}
