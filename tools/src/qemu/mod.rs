//! A QEMU runner for the systems this project boots (the seL4 Microkit image
//! now, the bare platform later): the command line per arch with QEMU's
//! virtio-balloon, the serial console captured line by line with bounded
//! waits for exact lines, a small QMP client (`query-balloon`, `balloon`),
//! and the memory timeline of a run: QEMU's RSS sampled from
//! `/proc/<pid>/status`, phase marks parsed from the PDs' console lines.
//!
//! The console contract (the PDs' log lines): `GUEST0|INFO: phase=touched
//! mib=N ...` and the other `phase=` lines of `guest::workload`, and
//! `MEMSERVER|INFO: reported: reported_mib=N ...` when a reporting pass has
//! settled.
//!
//! One concern a module: [`command`](self::command) (QEMU's command line),
//! `console`, `process` (a running QEMU and its RSS), `qmp` (the QMP
//! client), `lines` (reading the PDs' log lines) and `run` (following a
//! whole run).

mod command;
mod console;
mod lines;
mod process;
mod qmp;
mod run;

pub use command::{Arch, BALLOON_ID, BalloonDevice, Boot, QemuConfig, command};
pub use console::Console;
pub use lines::{Observed, field, log_prefix, parse_phase, parse_reported, segments};
pub use process::{Qemu, rss};
pub use qmp::{GuestStats, Qmp};
pub use run::{BalloonCheck, RunConfig, RunReport, run};

use std::fmt;
use std::path::PathBuf;

/// A runner failure.
#[derive(Debug)]
pub enum QemuError {
    Spawn(std::io::Error),
    /// QEMU ended (its exit status) before the run did.
    Exited(String),
    Qmp(String),
    Io(PathBuf, std::io::Error),
}

impl fmt::Display for QemuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QemuError::Spawn(e) => write!(f, "starting QEMU: {e}"),
            QemuError::Exited(s) => write!(f, "QEMU exited: {s}"),
            QemuError::Qmp(m) => write!(f, "QMP: {m}"),
            QemuError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for QemuError {}
