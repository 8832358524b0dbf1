//! `tools tunable`: change the memserver's tunables while `tools demo
//! --control-socket` runs, as one writes Linux's
//! `/sys/module/page_reporting/parameters/page_reporting_order`; prints the
//! memserver's answer to each change.
//!
//! Exit status: 0 when every change was set, 1 when the memserver refused
//! one (its reason is printed), 2 on bad arguments or no demo to talk to.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tools::control_socket;
use tools::demo::parse_tunable_pair;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The running demo's socket (`tools demo --control-socket`).
    #[arg(long, default_value = control_socket::DEFAULT_PATH)]
    pub socket: PathBuf,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// The changes, in order: `delay_ms=250`, `policy=linux`, ...
    #[arg(required = true, value_name = "KEY=VALUE", value_parser = pair)]
    pub changes: Vec<String>,
}

/// Refuse text the memserver could never take before connecting.
fn pair(text: &str) -> Result<String, String> {
    parse_tunable_pair(text).map(|_| text.trim().to_string())
}

pub fn main(args: Args) -> ExitCode {
    let timeout = match Duration::try_from_secs_f64(args.timeout) {
        Ok(t) if !t.is_zero() => t,
        _ => {
            eprintln!("tunable: --timeout {} is not a positive time", args.timeout);
            return ExitCode::from(2);
        }
    };
    match control_socket::ask(&args.socket, &args.changes, timeout) {
        Ok(answers) => {
            for a in &answers {
                println!("{a}");
            }
            if answers.iter().all(|a| a.ends_with(" set")) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("tunable: {e}");
            ExitCode::from(2)
        }
    }
}
