//! One module per subcommand: `Args` (clap) and `main(Args) -> ExitCode`.

pub mod bare;
pub mod bench;
pub mod check;
pub mod demo;
pub mod guest;
pub mod image;
pub mod qemu;
pub mod run;
pub mod test;
pub mod tunable;
