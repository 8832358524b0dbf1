//! The console PD: the operator's serial line on seL4 and the bare
//! platform. It owns the board's UART (a PL011 on qemu_virt_aarch64, COM1's
//! 16550 on x86_64), reads what the operator types a line at a time, and
//! passes `tunable key=value` to the memserver's control port
//! (`memserver_api::FromControl` on the `control_req` ring, a notification
//! on their channel); the memserver's answers (`ToControl` on
//! `control_resp`) are printed on the line. Linux changes
//! `page_reporting_order` through sysfs while it runs; this is the same
//! thing for a system whose kernel has no shell.
//!
//! What the operator can type:
//!
//! | line                  | effect                                            |
//! |-----------------------|---------------------------------------------------|
//! | `tunable KEY=VALUE`   | asks the memserver to set one tunable; its answer (`delay_ms=250 set`, or `... refused: value out of range`) is printed |
//! | `help`                | the commands and the tunables' names              |
//! | an empty line         | nothing                                           |
//!
//! The operator is trusted with the tunables (the memserver range-checks
//! every value), not with the bytes: a line that is too long, holds a byte
//! that is not printable ASCII, names no command or no tunable, or has no
//! number where one belongs is refused here with its reason, and nothing
//! is sent. The memserver is a ring peer like any other: an answer that
//! does not decode is counted and said, never trusted.
//!
//! # Layout
//!
//! - [`line`]: the line editor (echo, erase, bounded length).
//! - [`command`]: a line to a command, and its refusals.
//! - [`session`]: the two together with the control port's two ends, the
//!   no_std core of the PD, tested on the host.
//! - [`uart`]: the two UARTs' registers, behind small register traits so
//!   the drivers are tested on the host too.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod command;
pub mod line;
pub mod session;
pub mod uart;

pub use command::{Command, CommandError};
pub use line::{Key, LineEditor, LineError};
pub use session::{Outcome, Port, Session};
