//! The balloon PD's core: the driver between the memserver's rings and the
//! device, with no platform calls (the PD's `main.rs` wires channels,
//! regions and the IRQ to it; tests drive it against the real memserver).
//!
//! On every event ([`BalloonPd::run`]) it works through everything, because
//! notifications only say "look" (docs/architecture.md):
//!
//! 1. the device: ack the interrupt, collect report completions (each
//!    becomes one `ReportDone`), inflate/deflate completions, a stats
//!    request, a config change; a broken device is restarted;
//! 2. the `to_balloon` ring: `Report` batches (queued locally while the
//!    reporting queue is full), `Inflated` blocks, `Deflated`/`Refused`
//!    answers, `Stats`;
//! 3. posts what waits: report batches, one inflate and one deflate block at
//!    a time on the device (one request in flight per direction);
//! 4. the balloon target: when nothing is in flight, ask the memserver for
//!    pages (`Inflate`) or pick ballooned blocks to give back (deflate);
//! 5. the `from_balloon` ring: answers wait in bounded queues until it has
//!    room; a `ReportDone` is never dropped.
//!
//! # Protocol choices
//!
//! - A device reset fails every batch in flight: each is answered once with
//!   `ReportDone { ok: false }`; `DeviceReset` is never sent (the memserver
//!   would fail those batches a second time, as unknown ids).
//! - A `Report` is only taken off the ring when its answer has room: at most
//!   [`MAX_REPORTS`] batches are tracked (waiting, on the device, or
//!   answered but not yet pushed), twice the memserver's own limit (8).
//! - Deflate tells the host first and gives the blocks back to the memserver
//!   after the device used the PFN array (MUST_TELL_HOST order, as Linux's
//!   `leak_balloon`). A deflate the device failed (reset) is posted again
//!   after the restart, so `actual` and the memserver never disagree.
//!   Inflated blocks the device failed, or that cannot be posted, go back to
//!   the memserver with a `Deflate` that skips the device.
//! - Ballooned blocks are tracked in a bounded list ([`MAX_BALLOONED`]).
//!   A deflate of fewer pages than a block splits it into buddy halves. The
//!   balloon stops growing while the list could not take one more
//!   `Inflated` message plus a deflate's splits (counted in
//!   `Counters::ballooned_full`, logged once): it then stays below the
//!   host's target. A deflate that finds no room to split gives the whole
//!   block back (the balloon ends below the target rather than above it).
//! - A malformed `ToBalloon`, or an answer to nothing we asked, is counted
//!   and ignored; nothing changes.
//!
//! The files split the core by concern: `events` (the loop), `messages`
//! (the rings), `reports` (free page reporting), `inflate_deflate`,
//! `stats`, `watchdog`, `zones`, `counters`, `log`, and `packed` (blocks in
//! 8 bytes).

mod counters;
mod events;
mod inflate_deflate;
mod log;
mod messages;
mod packed;
mod reports;
mod stats;
mod watchdog;
mod zones;

pub use counters::Counters;
pub use events::Wake;
pub use inflate_deflate::MAX_BALLOONED;
pub use log::{Level, LogFn};
pub use reports::MAX_REPORTS;
pub use zones::MAX_ZONES;

use crate::defs::Block;
use crate::driver::VirtIOBalloon;
use core::fmt;
use heapless::{Deque, Vec};
use inflate_deflate::Deflation;
use inflate_deflate::MAX_RELEASES;
use memserver_api::BATCH;
use packed::{BlockList, Packed};
use pd_ring::{Consumer, Producer};
use virtio_drivers::{Hal, transport::Transport};

/// The balloon PD's core.
pub struct BalloonPd<'a, H: Hal, T: Transport> {
    drv: VirtIOBalloon<H, T>,
    /// memserver -> balloon (we consume).
    to: Consumer<'a>,
    /// balloon -> memserver (we produce).
    from: Producer<'a>,
    log: LogFn,
    /// Batches waiting for room in the reporting queue.
    reports: Deque<(u32, Vec<Packed, BATCH>), MAX_REPORTS>,
    /// Batches on the device.
    reports_in_device: usize,
    /// Answers waiting for room in `from`.
    done_out: Deque<(u32, bool), MAX_REPORTS>,
    /// The outstanding `Inflate` request: (req, pages).
    ask: Option<(u32, u32)>,
    /// `ask` is waiting for ring room.
    ask_queued: bool,
    /// A `StatsRequest` is waiting for ring room.
    stats_queued: bool,
    /// `DeviceLimits` is waiting for ring room (after every (re)start).
    limits_queued: bool,
    /// The memserver said it has no more: no new `Inflate` until the
    /// host changes the target.
    inflate_stalled: bool,
    /// Blocks from `Inflated` waiting for the inflate queue.
    to_inflate: Deque<Block, BATCH>,
    /// The block on the inflate queue.
    inflating: Option<Block>,
    /// Blocks to give back without the device (failed or unpostable inflates).
    giveback: Vec<Block, BATCH>,
    deflation: Option<Deflation>,
    /// Pages the memserver asked back because it ran out (deflate on OOM).
    oom_pages: u32,
    /// The short zone's frames (`first..end` PFN): only blocks there help.
    oom_range: (u64, u64),
    /// Windows (`first..end` PFN) to release through the device: a VM's
    /// OS took pages there back from its own balloon (`ToBalloon::Release`).
    releases: Deque<(u64, u64), MAX_RELEASES>,
    /// Blocks in the balloon (acknowledged by the device).
    ballooned: BlockList<'a>,
    stats_wanted: bool,
    stats_outstanding: bool,
    next_req: u32,
    /// The last restart failed (log once per streak).
    restart_failing: bool,
    /// `ballooned_full` was logged.
    full_logged: bool,
    /// The frames that may go to the device, `[first, end)` PFN ranges
    /// (the guests' RAM from the system description); `None` until
    /// [`BalloonPd::set_zones`] is called (ring-protocol tests only).
    zones: Option<Vec<(u64, u64), MAX_ZONES>>,
    /// The watchdog period, if any.
    watchdog_ns: Option<u64>,
    /// The watchdog's timer is armed; `device_completions` then.
    watchdog_armed: Option<u64>,
    /// Completions the device gave (reports, inflates, deflates).
    device_completions: u64,
    counters: Counters,
}

impl<H: Hal, T: Transport> fmt::Debug for BalloonPd<'_, H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalloonPd")
            .field("counters", &self.counters)
            .field("ballooned", &self.ballooned.len())
            .finish_non_exhaustive()
    }
}

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    /// The core over an initialised driver and the two rings; `ballooned`
    /// is the room for the list of ballooned blocks (a word each, at least
    /// [`MAX_BALLOONED`]; its contents are overwritten).
    pub fn new(
        drv: VirtIOBalloon<H, T>,
        to: Consumer<'a>,
        from: Producer<'a>,
        ballooned: &'a mut [u64],
        log: LogFn,
    ) -> Self {
        let mut s = Self {
            drv,
            to,
            from,
            log,
            reports: Deque::new(),
            reports_in_device: 0,
            done_out: Deque::new(),
            ask_queued: false,
            stats_queued: false,
            // The memserver learns the device's limits first thing.
            limits_queued: true,
            ask: None,
            inflate_stalled: false,
            oom_pages: 0,
            oom_range: (0, 0),
            releases: Deque::new(),
            to_inflate: Deque::new(),
            inflating: None,
            giveback: Vec::new(),
            deflation: None,
            ballooned: BlockList::new(ballooned),
            stats_wanted: false,
            stats_outstanding: false,
            next_req: 1,
            restart_failing: false,
            full_logged: false,
            zones: None,
            watchdog_ns: None,
            watchdog_armed: None,
            device_completions: 0,
            counters: Counters::default(),
        };
        // Ask the memserver to signal when it produces.
        s.to.request_signal();
        s
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The driver (features, metrics, `actual`).
    pub fn driver(&self) -> &VirtIOBalloon<H, T> {
        &self.drv
    }

    /// Nothing in flight: no batch tracked, no inflate or deflate under way,
    /// nothing waiting to be sent.
    pub fn is_idle(&self) -> bool {
        self.tracked_reports() == 0
            && !self.ask_queued
            && !self.stats_queued
            && self.ask.is_none()
            && self.to_inflate.is_empty()
            && self.inflating.is_none()
            && self.giveback.is_empty()
            && self.deflation.is_none()
            && self.releases.is_empty()
            && !self.stats_outstanding
    }

    pub(super) fn req_id(&mut self) -> u32 {
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        id
    }
}
