//! `tools run <system.xml>`: the host platform launcher.
//!
//! Exit status: 0 when `--until` matched, 1 when a PD ended (reported by name),
//! 2 when the system could not be started, 3 on `--timeout`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tools::host::{Event, Launcher};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The system description.
    pub system: PathBuf,
    /// Where the PDs' host binaries are (`foo.elf` runs `<DIR>/foo`);
    /// default: the directory of this executable.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Stop the system (successfully) when a console line contains TEXT.
    #[arg(long, value_name = "TEXT")]
    pub until: Option<String>,
    /// Stop the system (unsuccessfully) after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
}

const GRACE: Duration = Duration::from_secs(2);

pub fn main(args: Args) -> ExitCode {
    let path = args.system.display().to_string();
    let sys = match std::fs::read_to_string(&args.system)
        .map_err(|e| e.to_string())
        .and_then(|x| sdf::System::parse(&x).map_err(|e| format!("{path}:{e}")))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("launcher: {e}");
            return ExitCode::from(2);
        }
    };
    let bin_dir = args
        .bin_dir
        .clone()
        .or_else(|| std::env::current_exe().ok()?.parent().map(Into::into))
        .unwrap_or_default();
    let mut launcher = match Launcher::new(sys, &bin_dir, true) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("launcher: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = launcher.check_built_from(&args.system) {
        eprintln!("launcher: {e}");
        return ExitCode::from(2);
    }
    if let Some(u) = &args.until {
        launcher.console().watch(u);
    }
    if let Err(e) = launcher.start() {
        eprintln!("launcher: {e}");
        return ExitCode::from(2);
    }
    for (pd, pid) in launcher.pids() {
        println!("launcher: started PD '{pd}' (pid {pid})");
    }
    let timeout = args.timeout.map(Duration::from_secs_f64);
    let event = launcher.wait(timeout);
    // Stop (and read every PD's pipe to its end) before saying what
    // happened: the match may be one PD's line while another's earlier
    // line is still in its pipe.
    let exits = launcher.stop(GRACE);
    let code = match event {
        Ok(Event::Matched(line)) => {
            println!("launcher: matched \"{line}\"");
            0
        }
        Ok(Event::Exited(e)) => {
            println!("launcher: {e}; stopping the others");
            1
        }
        Ok(Event::Timeout) => {
            println!("launcher: timeout after {:?}", timeout.unwrap_or_default());
            3
        }
        Err(e) => {
            eprintln!("launcher: {e}");
            2
        }
    };
    for e in exits {
        println!("launcher: stopped: {e}");
    }
    ExitCode::from(code)
}
