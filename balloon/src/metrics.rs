//! Driver counters (Firecracker `balloon/metrics.rs` style). Tests use them
//! as oracles.

use crate::defs::Error;

/// Device errors by kind.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct ErrorCounts {
    /// Used ids beyond the queue size.
    pub bad_used_id: u64,
    /// Used lengths beyond the buffer.
    pub bad_used_len: u64,
    /// Completions for buffers not in flight.
    pub not_in_flight: u64,
    /// Used index jumps.
    pub used_idx_jump: u64,
    /// Device resets / NEEDS_RESET seen.
    pub device_reset: u64,
    /// Stalls: the watchdog reset the device.
    pub stalled: u64,
}

impl ErrorCounts {
    pub(crate) fn count(&mut self, e: &Error) {
        match e {
            Error::BadUsedId { .. } => self.bad_used_id += 1,
            Error::BadUsedLength { .. } => self.bad_used_len += 1,
            Error::NotInFlight { .. } => self.not_in_flight += 1,
            Error::UsedIndexJump { .. } => self.used_idx_jump += 1,
            Error::DeviceReset => self.device_reset += 1,
            Error::Stalled => self.stalled += 1,
            _ => {}
        }
    }

    /// Sum of all kinds.
    pub fn total(&self) -> u64 {
        self.bad_used_id
            + self.bad_used_len
            + self.not_in_flight
            + self.used_idx_jump
            + self.device_reset
            + self.stalled
    }
}

/// Counters of one driver instance (they survive `restart`).
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct Metrics {
    /// Report batches posted.
    pub reports_submitted: u64,
    /// Report batches the device returned successfully.
    pub reports_completed: u64,
    /// Report batches failed (their blocks go back unreported).
    pub reports_failed: u64,
    /// Blocks in successful reports.
    pub blocks_reported: u64,
    /// 4 KiB pages in successful reports.
    pub pages_reported: u64,
    /// Pages the device acknowledged as inflated.
    pub pages_inflated: u64,
    /// Pages the device acknowledged as deflated.
    pub pages_deflated: u64,
    /// Inflate/deflate requests failed.
    pub balloon_requests_failed: u64,
    /// Stats buffers the device returned asking for fresh numbers.
    pub stats_requests: u64,
    /// Stats buffers refilled and returned to the device.
    pub stats_updates: u64,
    /// Configuration-change interrupts seen.
    pub config_changes: u64,
    /// Times the driver reset the device after a protocol violation.
    pub device_resets: u64,
    /// Device errors by kind.
    pub errors: ErrorCounts,
}
