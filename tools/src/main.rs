//! Host-side tools. Each subcommand lives in its own module under `cmd/`.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;

#[derive(Debug, Parser)]
#[command(
    name = "tools",
    about = "Host-side tools for the free-page-reporting Microkit system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a system description (system.xml).
    Check(cmd::check::Args),
    /// Run a system on the host platform: one Linux process per PD.
    Run(cmd::run::Args),
    /// Run every check and test of the project (the command CI runs).
    Test(cmd::test::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check(a) => cmd::check::main(a),
        Command::Run(a) => cmd::run::main(a),
        Command::Test(a) => cmd::test::main(a),
    }
}
