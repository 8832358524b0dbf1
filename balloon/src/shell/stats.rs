//! Statistics: the device asks on its stats queue, the memserver answers
//! a `StatsRequest` with its numbers, the driver hands them to the device.

use super::BalloonPd;
use crate::defs::{PAGE_SIZE, Stats};
use memserver_api::MemStats;
use virtio_drivers::{Hal, transport::Transport};

fn to_stats(m: &MemStats) -> Stats {
    Stats {
        free: m.free_pages.saturating_mul(PAGE_SIZE),
        total: m.total_pages.saturating_mul(PAGE_SIZE),
        available: m.available_pages.saturating_mul(PAGE_SIZE),
        ..Stats::default()
    }
}

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    /// The device wants statistics: ask the memserver, one request at a
    /// time.
    pub(super) fn request_stats(&mut self) {
        if self.drv.take_stats_request() {
            self.stats_wanted = true;
        }
        if self.stats_wanted && !self.stats_outstanding {
            self.stats_wanted = false;
            self.stats_outstanding = true;
            self.counters.stats_requests += 1;
            self.stats_queued = true;
        }
    }

    /// The memserver's numbers (`ToBalloon::Stats`) for the device.
    pub(super) fn stats_answered(&mut self, m: &MemStats) {
        self.stats_outstanding = false;
        self.counters.stats_updates += 1;
        // Broken device: the numbers are kept for the next buffer.
        let _ = self.drv.set_stats(to_stats(m));
    }
}
