//! The core's counters: the PD's metrics and the tests' oracles.

/// Counters: the PD's metrics and the tests' oracles.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct Counters {
    /// `ToBalloon` messages taken off the ring.
    pub messages: u64,
    /// Messages that did not decode (or a slot with a bad length).
    pub malformed: u64,
    /// Well-formed messages that answer nothing we asked, or duplicate
    /// batch ids.
    pub unexpected: u64,
    /// Illegal ring index moves seen from the memserver.
    pub ring_misbehaviour: u64,
    /// `Report` batches received.
    pub reports_received: u64,
    /// Batches that had to wait for the reporting queue.
    pub reports_waited: u64,
    /// `ReportDone { ok: true }` sent.
    pub reports_ok: u64,
    /// `ReportDone { ok: false }` sent (device failure or refused batch).
    pub reports_failed: u64,
    /// `Inflate` requests sent.
    pub inflate_requests: u64,
    /// Inflate requests the memserver refused.
    pub inflate_refused: u64,
    /// Pages the device acknowledged as inflated.
    pub pages_inflated: u64,
    /// Blocks given back to the memserver without ballooning them.
    pub blocks_returned: u64,
    /// `Deflate` requests sent.
    pub deflate_requests: u64,
    /// Pages the memserver took back (`Deflated`).
    pub pages_deflated: u64,
    /// Deflate requests the memserver refused.
    pub deflate_refused: u64,
    /// `StatsRequest` sent.
    pub stats_requests: u64,
    /// `Stats` answers handed to the device.
    pub stats_updates: u64,
    /// Driver restarts after a device failure.
    pub device_restarts: u64,
    /// Restarts that failed (retried on the next event).
    pub restart_failures: u64,
    /// Times the balloon could not grow because the block list was full.
    pub ballooned_full: u64,
    /// `Reclaim` requests from the memserver (it ran out of memory).
    pub reclaim_requests: u64,
    /// `Reclaim` requests ignored: the device did not offer DEFLATE_ON_OOM.
    pub reclaim_ignored: u64,
    /// Device resets by the watchdog (requests outstanding, no completion
    /// for a whole period).
    pub watchdog_resets: u64,
    /// Blocks refused because they lie outside the zones the balloon was
    /// given ([`BalloonPd::set_zones`](super::BalloonPd::set_zones)):
    /// reported or inflated frames that are not guest RAM never reach the
    /// device.
    pub foreign_blocks: u64,
    /// `MoreToInflate` hints (a VM filled its balloon after an inflate
    /// fell short): each lets the balloon ask again.
    pub more_to_inflate: u64,
    /// `Release` windows handled (a VM took pages back from its balloon).
    pub releases: u64,
}
