//! The host platform launcher (DESIGN §5.2): runs the PDs of a `system.xml`
//! as Linux processes wired exactly as the SDF says.
//!
//! - one process per PD: `program_image="foo.elf"` runs `<bin_dir>/foo`;
//! - each memory region is one memfd, sized from the SDF and sealed against
//!   resizing, passed only to the PDs that map it; a `perms="r"` map gets a
//!   read-only file description, so the PD cannot map it writable;
//! - each channel end has an eventfd its PD polls; the peer gets it to write
//!   when its end may notify;
//! - each PPC channel is a `SOCK_SEQPACKET` socketpair;
//! - each `<irq>` is a pair of eventfds (raise, ack) whose launcher ends a
//!   device model gets with [`Launcher::irq_line`];
//! - PD console output is collected by [`Console`] and echoed;
//! - the memserver's control port, where the description has one, is
//!   driven by [`ControlConsole`] (the operator's console).
//!
//! PDs get `PR_SET_PDEATHSIG(SIGKILL)`, are watched through pidfds and are
//! stopped with SIGTERM then SIGKILL after a bounded wait, so no process
//! outlives the launcher. Spawn from a thread that lives as long as the
//! launcher: the death signal follows the thread that forked.

mod console;
mod control;
mod launcher;

pub use console::Console;
pub use control::{ControlConsole, ControlError, port_irq};
pub use launcher::{Event, IrqLine, LaunchError, Launcher, PdExit, SharedMapping, host_binary};

/// Where regions without a `phys_addr` get their pseudo-physical addresses
/// on the host: above 4 GiB, out of the way of any `phys_addr` in our SDFs.
pub const PSEUDO_PHYS_BASE: u64 = 0x1_0000_0000;
