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
    /// Build the PDs for a Microkit board and the bootable image (needs
    /// MICROKIT_SDK).
    Image(cmd::image::Args),
    /// Boot the Microkit image in QEMU with a virtio-balloon and show the
    /// host getting memory back (needs MICROKIT_SDK).
    Qemu(cmd::qemu::Args),
    /// Run the system on the host platform and show the host getting the
    /// guests' freed memory back.
    Demo(cmd::demo::Args),
    /// Build the Linux guest VM's kernel Image and initramfs from Debian's
    /// arm64 packages (target/linux-guest); --boot runs it under QEMU.
    Guest(cmd::guest::Args),
    /// Run every check and test of the project (the command CI runs).
    Test(cmd::test::Args),
    /// Change a tunable of a running `tools demo --control-socket` and
    /// print the memserver's answer.
    Tunable(cmd::tunable::Args),
    /// Run the benchmarks (allocator, balloon driver, reclaim on the host
    /// platform) and write tables and a plot.
    Bench(cmd::bench::Args),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check(a) => cmd::check::main(a),
        Command::Run(a) => cmd::run::main(a),
        Command::Demo(a) => cmd::demo::main(a),
        Command::Guest(a) => cmd::guest::main(a),
        Command::Test(a) => cmd::test::main(a),
        Command::Image(a) => cmd::image::main(a),
        Command::Qemu(a) => cmd::qemu::main(a),
        Command::Bench(a) => cmd::bench::main(a),
        Command::Tunable(a) => cmd::tunable::main(a),
    }
}
