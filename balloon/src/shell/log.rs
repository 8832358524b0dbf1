//! Log lines of the balloon PD's core: their level and where they go (the
//! PD prints them as `BALLOON|INFO: ...`).

use super::BalloonPd;
use core::fmt;
use virtio_drivers::{Hal, transport::Transport};

/// Log level of a line.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Level {
    /// Progress.
    Info,
    /// A peer misbehaved; it was ignored.
    Warn,
    /// Something is stuck or lost.
    Error,
}

/// Where log lines go: the PD prints them as `BALLOON|INFO: ...`.
pub type LogFn = fn(Level, fmt::Arguments<'_>);

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    pub(super) fn info(&self, args: fmt::Arguments<'_>) {
        (self.log)(Level::Info, args)
    }

    pub(super) fn warn(&self, args: fmt::Arguments<'_>) {
        (self.log)(Level::Warn, args)
    }

    pub(super) fn error(&self, args: fmt::Arguments<'_>) {
        (self.log)(Level::Error, args)
    }
}
