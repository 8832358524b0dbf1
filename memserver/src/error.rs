//! Error values of the memserver core.

use core::fmt;

/// Why an operation of [`crate::MemCore`] was refused. On `Err` nothing
/// changed: every request is validated before any state is touched, because
/// peers (clients, the balloon driver) are not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// More than [`crate::MAX_ZONES`] zone specs.
    TooManyZones,
    /// A zone spec with zero pages or whose end overflows.
    EmptyZone,
    /// Two zone specs overlap.
    ZonesOverlap,
    /// The zones hold more pages than the metadata's 32-bit links can name.
    TooManyPages,
    /// The metadata buffer is smaller than [`crate::metadata_bytes`].
    MetadataTooSmall {
        /// Bytes the zones need.
        needed: usize,
    },
    /// A tunable is out of range; the text names it.
    BadTunable(&'static str),
    /// Tunables cannot change while a reporting pass runs.
    ReportingBusy,
    /// No zone with this id.
    NoSuchZone,
    /// Order above [`crate::MAX_ORDER`].
    BadOrder,
    /// The block is not (entirely) inside the named zone.
    OutOfZone,
    /// The PFN is not aligned to the block's order.
    Misaligned,
    /// No free block of the requested order (or larger) in the zone.
    NoMemory,
    /// The PFN is inside a block but not its first frame.
    NotBlockHead,
    /// The block is free already (double free).
    AlreadyFree,
    /// The block is allocated with a different order.
    WrongOrder,
    /// The block is isolated for reporting (the host holds it).
    Isolated,
    /// The block is in the balloon.
    Ballooned,
    /// Deflate of a range that is not inside a ballooned block.
    NotBallooned,
    /// Completion for a batch that is not in flight.
    UnknownBatch,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooManyZones => write!(f, "more zones than MAX_ZONES"),
            Error::EmptyZone => write!(f, "zone is empty or its end overflows"),
            Error::ZonesOverlap => write!(f, "zones overlap"),
            Error::TooManyPages => write!(f, "too many pages for 32-bit metadata links"),
            Error::MetadataTooSmall { needed } => {
                write!(f, "metadata buffer too small: {needed} bytes needed")
            }
            Error::BadTunable(name) => write!(f, "tunable out of range: {name}"),
            Error::ReportingBusy => write!(f, "a reporting pass is in progress"),
            Error::NoSuchZone => write!(f, "no such zone"),
            Error::BadOrder => write!(f, "order above MAX_ORDER"),
            Error::OutOfZone => write!(f, "block outside the zone"),
            Error::Misaligned => write!(f, "pfn not aligned to the order"),
            Error::NoMemory => write!(f, "no free block of that order"),
            Error::NotBlockHead => write!(f, "pfn is not the first frame of a block"),
            Error::AlreadyFree => write!(f, "block is already free"),
            Error::WrongOrder => write!(f, "block allocated with another order"),
            Error::Isolated => write!(f, "block is isolated for reporting"),
            Error::Ballooned => write!(f, "block is in the balloon"),
            Error::NotBallooned => write!(f, "range is not in the balloon"),
            Error::UnknownBatch => write!(f, "no such report batch in flight"),
        }
    }
}

impl core::error::Error for Error {}

/// A broken invariant found by [`crate::MemCore::check_invariants`]: a bug
/// in the core, never the result of bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvariantViolation {
    /// Which invariant.
    pub what: &'static str,
    /// Zone index where it was found.
    pub zone: usize,
    /// Frame where it was found (0 when not about a frame).
    pub pfn: u64,
}

impl fmt::Display for InvariantViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invariant broken in zone {} at pfn {:#x}: {}",
            self.zone, self.pfn, self.what
        )
    }
}

impl core::error::Error for InvariantViolation {}
