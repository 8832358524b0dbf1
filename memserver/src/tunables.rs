//! Reporting tunables, each with Linux's default (DESIGN §2).

use crate::{Error, MAX_CAPACITY, MAX_IN_FLIGHT, MAX_ORDER};

/// Numbers of the reporting worker. `Default` gives Linux's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    /// Smallest order reported; freeing a block of at least this order
    /// requests reporting. Linux `page_reporting_order`: 9 (2 MiB).
    /// Range `0..=MAX_ORDER`.
    pub reporting_order: u8,
    /// Delay between a request and the worker's pass, in nanoseconds.
    /// Linux `PAGE_REPORTING_DELAY`: 2 s. Range `1..=3600 s`.
    pub delay_ns: u64,
    /// Blocks per report batch. Linux `PAGE_REPORTING_CAPACITY`: 32; the
    /// device's queue size may lower it. Range `1..=MAX_CAPACITY`.
    pub capacity: u16,
    /// Budget divisor: each free list may send
    /// `ceil(nr_free / (capacity * budget_divisor))` batches per pass.
    /// Linux: 16. Range `1..=65536`.
    pub budget_divisor: u32,
    /// Low watermark in pages. A zone is skipped when its free pages are
    /// below `low_watermark_pages + (capacity << reporting_order)`; no
    /// isolation takes a zone's free pages (isolated ones excluded) below
    /// it, however many batches are in flight; and the balloon never takes
    /// a zone below it. Default 1280 pages (5 MiB):
    /// about Linux's low watermark of a 1 GiB zone (`min_free_kbytes` =
    /// sqrt(16 * 1 GiB in KiB) = 4 MiB, plus a quarter).
    pub low_watermark_pages: u64,
    /// Report batches in flight at once. Linux: 1 (its `report()` call
    /// blocks). Range `1..=MAX_IN_FLIGHT`.
    pub max_in_flight: u8,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            reporting_order: 9,
            delay_ns: 2_000_000_000,
            capacity: 32,
            budget_divisor: 16,
            low_watermark_pages: 1280,
            max_in_flight: 1,
        }
    }
}

impl Tunables {
    /// Check every field's range.
    pub fn validate(&self) -> Result<(), Error> {
        if self.reporting_order > MAX_ORDER {
            return Err(Error::BadTunable("reporting_order"));
        }
        if self.delay_ns == 0 || self.delay_ns > 3_600_000_000_000 {
            return Err(Error::BadTunable("delay_ns"));
        }
        if self.capacity == 0 || usize::from(self.capacity) > MAX_CAPACITY {
            return Err(Error::BadTunable("capacity"));
        }
        if self.budget_divisor == 0 || self.budget_divisor > 65536 {
            return Err(Error::BadTunable("budget_divisor"));
        }
        if self.low_watermark_pages > u64::from(u32::MAX) {
            return Err(Error::BadTunable("low_watermark_pages"));
        }
        if self.max_in_flight == 0 || usize::from(self.max_in_flight) > MAX_IN_FLIGHT {
            return Err(Error::BadTunable("max_in_flight"));
        }
        Ok(())
    }

    /// Pages a zone must have free for the worker to visit it.
    pub(crate) fn zone_threshold(&self) -> u64 {
        self.low_watermark_pages + (u64::from(self.capacity) << self.reporting_order)
    }
}
