//! The workload of the Linux guest VM (issue 13): a static
//! aarch64-unknown-linux-musl program that `/init` starts in the
//! initramfs `tools guest` builds. It maps and touches N MiB, holds it,
//! frees it (munmap), and stays alive, printing a timestamped line per
//! step on the console, so the host sees Linux's own free page reporting
//! give the memory back (directly under QEMU, or nested under the VMM).
//!
//! The logic ([`run`]) and the parameters ([`params`]) are host-tested; the
//! binary (`main.rs`) only supplies mmap, the clock and stdout.

pub mod line;
pub mod meminfo;
pub mod params;
pub mod run;

pub use params::{ParamError, Params};
pub use run::{Os, Summary, run};
