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
//! # Watchdog
//!
//! A device that stops answering (a report, inflate or deflate never
//! completed, a reset without an interrupt) would hold the memserver's
//! batches isolated for as long as nothing else happens. With a watchdog
//! period set ([`BalloonPd::set_watchdog`]), the core asks for a timer
//! ([`Wake::arm_timer_ns`]) whenever requests are on the device; on expiry
//! ([`BalloonPd::watchdog_expired`]) it looks at the device as on any
//! event, and if requests are still outstanding with no completion since
//! the timer was armed, it resets the device (the device may not touch
//! the rings after a reset, VIRTIO 1.2 §2.1), fails those requests as a
//! device error would (batches back to the memserver unreported), and
//! restarts the driver. QEMU completes every request within its handler,
//! so a period of seconds only ever fires on a broken device.

use crate::defs::{BalloonFeatures, Block, BlockExt, Error, MAX_ORDER, PAGE_SIZE, Stats};
use crate::driver::{BalloonAction, BalloonDone, BalloonOp, DeflateReason, VirtIOBalloon};
use core::fmt;
use heapless::{Deque, Vec};
use memserver_api::{self as api, BATCH, FromBalloon, MemStats, SLOT_SIZE, ToBalloon};
use pd_ring::{Consumer, Misbehaviour, Producer, RingError};
use virtio_drivers::{Hal, transport::Transport};

/// Report batches tracked at once (waiting locally, on the device, or
/// answered and waiting for ring room).
pub const MAX_REPORTS: usize = 16;

/// Ballooned blocks tracked (largest blocks first, so 512 blocks hold at
/// least 2 MiB and at most 2 GiB).
pub const MAX_BALLOONED: usize = 512;

/// Splits one deflate may need (one per order) plus one.
const SPLIT_HEADROOM: usize = MAX_ORDER as usize + 1;

/// Most zones the balloon is told (as the memserver's MAX_ZONES).
pub const MAX_ZONES: usize = 16;

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
    /// given ([`BalloonPd::set_zones`]): reported or inflated frames that
    /// are not guest RAM never reach the device.
    pub foreign_blocks: u64,
}

/// What the PD shell must do after [`BalloonPd::run`].
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct Wake {
    /// Notify the memserver.
    pub memserver: bool,
    /// Arm the one-shot timer for this many nanoseconds, then call
    /// [`BalloonPd::watchdog_expired`] when it fires.
    pub arm_timer_ns: Option<u64>,
}

/// A block in 8 bytes (`pfn << 8 | order`), so the lists that live in the
/// PD's stack frame stay small. Every block here came through
/// `memserver_api::decode`, so `pfn <= MAX_PFN < 2^40` and the order fits.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
struct Packed(u64);

impl Packed {
    fn new(b: Block) -> Self {
        Self(b.pfn << 8 | u64::from(b.order))
    }

    fn get(self) -> Block {
        Block {
            pfn: self.0 >> 8,
            order: self.0 as u8,
        }
    }

    fn pages(self) -> u64 {
        self.get().pages()
    }
}

/// A deflate in progress: blocks leave the device first (unless they were
/// never ballooned there), then go back to the memserver.
#[derive(Debug)]
struct Deflation {
    req: u32,
    blocks: Vec<Block, BATCH>,
    /// `blocks[..posted]` are done on the device side.
    posted: usize,
    /// `blocks[posted]` is on the deflate queue.
    in_device: bool,
    /// The `Deflate` message is waiting for ring room.
    queued: bool,
    /// The `Deflate` message is queued or sent.
    sent: bool,
    /// Why the host is told (the balloon target, or the guest's OOM).
    reason: DeflateReason,
}

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
    /// Blocks in the balloon (acknowledged by the device).
    ballooned: Vec<Packed, MAX_BALLOONED>,
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

fn to_stats(m: &MemStats) -> Stats {
    Stats {
        free: m.free_pages.saturating_mul(PAGE_SIZE),
        total: m.total_pages.saturating_mul(PAGE_SIZE),
        available: m.available_pages.saturating_mul(PAGE_SIZE),
        ..Stats::default()
    }
}

/// A block the inflate/deflate queues can carry: valid, with le32 PFNs.
fn postable(b: &Block) -> bool {
    b.is_valid() && b.pfn + b.pages() <= 1 << 32
}

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    /// The core over an initialised driver and the two rings.
    pub fn new(drv: VirtIOBalloon<H, T>, to: Consumer<'a>, from: Producer<'a>, log: LogFn) -> Self {
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
            to_inflate: Deque::new(),
            inflating: None,
            giveback: Vec::new(),
            deflation: None,
            ballooned: Vec::new(),
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

    /// The zones whose frames may go to the device: `(first PFN, pages)`
    /// each, from the system description (the PD's setvars), not from the
    /// memserver, whose messages are checked against them. A reported or
    /// inflated block outside every zone is refused and counted
    /// ([`Counters::foreign_blocks`]): the device would discard whatever
    /// memory the frame number names. Zones past [`MAX_ZONES`] are
    /// ignored (fewer frames allowed, never more).
    pub fn set_zones(&mut self, zones: &[(u64, u64)]) {
        self.zones = Some(
            zones
                .iter()
                .take(MAX_ZONES)
                .map(|&(pfn, pages)| (pfn, pfn.saturating_add(pages)))
                .collect(),
        );
    }

    /// Whether `b` lies inside one zone (true when no zones were given).
    fn in_zones(&self, b: &Block) -> bool {
        let Some(zones) = &self.zones else {
            return true;
        };
        let end = b.pfn.saturating_add(b.pages());
        zones
            .iter()
            .any(|&(first, last)| b.pfn >= first && end <= last)
    }

    /// Turn the watchdog on with this period (`None` or 0: off, the
    /// default).
    pub fn set_watchdog(&mut self, period_ns: Option<u64>) {
        self.watchdog_ns = period_ns.filter(|&ns| ns > 0);
    }

    /// Requests the device holds: report batches, the inflate or the
    /// deflate on its queue (not the stats buffer, which a device keeps
    /// until it wants the next statistics).
    fn device_busy(&self) -> bool {
        self.reports_in_device > 0
            || self.inflating.is_some()
            || self.deflation.as_ref().is_some_and(|d| d.in_device)
    }

    /// The watchdog's timer fired: an event like any other, and if the
    /// device still holds requests and completed none since the timer was
    /// armed, it is reset and the driver restarted.
    pub fn watchdog_expired(&mut self) -> Wake {
        let armed = self.watchdog_armed.take();
        let mut wake = self.run(false);
        if let Some(seen) = armed
            && self.device_busy()
            && self.device_completions == seen
        {
            self.counters.watchdog_resets += 1;
            self.warn(format_args!(
                "device stalled: requests outstanding with no completion for {} ms; resetting it",
                self.watchdog_ns.unwrap_or(0) / 1_000_000
            ));
            self.drv.abandon();
            // Armed again (if the restarted device holds requests) from
            // the completions counted after the reset.
            self.watchdog_armed = None;
            let again = self.run(false);
            wake.memserver |= again.memserver;
            wake.arm_timer_ns = again.arm_timer_ns;
        }
        wake
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The driver (features, metrics, `actual`).
    pub fn driver(&self) -> &VirtIOBalloon<H, T> {
        &self.drv
    }

    /// Blocks in the balloon.
    pub fn ballooned(&self) -> impl Iterator<Item = Block> + '_ {
        self.ballooned.iter().map(|p| p.get())
    }

    /// Pages in the balloon by our own bookkeeping.
    pub fn ballooned_pages(&self) -> u64 {
        self.ballooned.iter().map(|p| p.pages()).sum()
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
            && !self.stats_outstanding
    }

    fn info(&self, args: fmt::Arguments<'_>) {
        (self.log)(Level::Info, args)
    }

    fn warn(&self, args: fmt::Arguments<'_>) {
        (self.log)(Level::Warn, args)
    }

    fn error(&self, args: fmt::Arguments<'_>) {
        (self.log)(Level::Error, args)
    }

    fn req_id(&mut self) -> u32 {
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        id
    }

    fn tracked_reports(&self) -> usize {
        self.reports.len() + self.reports_in_device + self.done_out.len()
    }

    /// Handles an event: `irq` when the device's interrupt arrived (it is
    /// acknowledged at the device here; the shell acks the IRQ channel).
    /// Any event runs the whole loop (see the module docs).
    pub fn run(&mut self, irq: bool) -> Wake {
        let mut wake = Wake::default();
        if irq {
            self.drv.ack_interrupt();
        }
        self.drain_device();
        if self.drv.take_config_changed() {
            // A new target: the memserver may have memory again.
            self.inflate_stalled = false;
            if let Ok(t) = self.drv.target() {
                self.info(format_args!(
                    "target {} pages, balloon {} pages",
                    t,
                    self.drv.actual()
                ));
            }
        }
        if self.drv.is_broken() {
            self.restart();
        }
        self.drain_ring(&mut wake);
        self.submit_reports();
        self.pump_inflate();
        self.pump_deflate();
        self.rebalance();
        if self.drv.take_stats_request() {
            self.stats_wanted = true;
        }
        if self.stats_wanted && !self.stats_outstanding {
            self.stats_wanted = false;
            self.stats_outstanding = true;
            self.counters.stats_requests += 1;
            self.stats_queued = true;
        }
        self.flush(&mut wake);
        // Also while a restart keeps failing: it is retried on each event,
        // and the timer makes one.
        if let Some(ns) = self.watchdog_ns
            && self.watchdog_armed.is_none()
            && (self.device_busy() || self.drv.is_broken())
        {
            self.watchdog_armed = Some(self.device_completions);
            wake.arm_timer_ns = Some(ns);
        }
        wake
    }

    /// Collects completions. A failure found while polling the balloon
    /// queues fails report batches too, so reports are drained again.
    fn drain_device(&mut self) {
        self.drain_reports();
        while let Some(done) = self.drv.poll_balloon() {
            self.balloon_done(done);
        }
        self.drain_reports();
    }

    fn drain_reports(&mut self) {
        while let Some((batch, result)) = self.drv.poll_reports() {
            self.device_completions += 1;
            self.reports_in_device = self.reports_in_device.saturating_sub(1);
            self.answer(batch, result.is_ok());
        }
    }

    fn answer(&mut self, batch: u32, ok: bool) {
        if ok {
            self.counters.reports_ok += 1;
        } else {
            self.counters.reports_failed += 1;
        }
        // Room is reserved: a batch is taken off the ring only while fewer
        // than MAX_REPORTS are tracked, and each stage holds each batch once.
        if self.done_out.push_back((batch, ok)).is_err() {
            self.error(format_args!("answer for batch {batch} lost: queue full"));
        }
    }

    fn balloon_done(&mut self, done: BalloonDone) {
        self.device_completions += 1;
        match (done.op, done.result) {
            (BalloonOp::Inflate, Ok(())) => {
                if let Some(b) = self.inflating.take() {
                    self.counters.pages_inflated += b.pages();
                    // Room is kept by `rebalance` (SPLIT_HEADROOM + BATCH).
                    if self.ballooned.push(Packed::new(b)).is_err() {
                        self.error(format_args!("ballooned block {:#x} untracked", b.pfn));
                    }
                    if self.to_inflate.is_empty() {
                        self.info(format_args!("balloon at {} pages", self.drv.actual()));
                    }
                }
            }
            (BalloonOp::Inflate, Err(e)) => {
                // Not ballooned: the memserver takes the pages back.
                if let Some(b) = self.inflating.take() {
                    self.warn(format_args!("inflate of {:#x} failed: {e}", b.pfn));
                    let _ = self.giveback.push(b);
                }
            }
            (BalloonOp::Deflate, result) => {
                if let Some(d) = self.deflation.as_mut() {
                    d.in_device = false;
                    // A failed deflate (device reset) is posted again after
                    // the restart: `actual` still counts the pages.
                    if result.is_ok() {
                        d.posted += 1;
                    }
                }
            }
        }
    }

    fn restart(&mut self) {
        match self.drv.restart() {
            Ok(()) => {
                self.counters.device_restarts += 1;
                self.restart_failing = false;
                // The device may offer something else now.
                self.limits_queued = true;
                self.info(format_args!(
                    "device failed; restarted the driver (batches failed so far: {})",
                    self.counters.reports_failed
                ));
            }
            Err(e) => {
                self.counters.restart_failures += 1;
                if !self.restart_failing {
                    self.error(format_args!("device restart failed: {e}"));
                }
                self.restart_failing = true;
            }
        }
    }

    /// Takes messages off `to_balloon` while their answers have room.
    fn drain_ring(&mut self, wake: &mut Wake) {
        let mut buf = [0u8; SLOT_SIZE];
        while self.tracked_reports() < MAX_REPORTS {
            match self.to.pop(&mut buf) {
                Ok(Some(n)) => {
                    self.counters.messages += 1;
                    match api::decode_to_balloon(&buf[..n]) {
                        Ok(msg) => self.handle(msg),
                        Err(e) => {
                            self.counters.malformed += 1;
                            self.warn(format_args!("malformed message ignored: {e}"));
                        }
                    }
                }
                Ok(None) => {
                    // Process, request a signal, re-check (pd-ring's protocol).
                    self.to.request_signal();
                    match self.to.is_empty() {
                        Ok(false) => continue,
                        Ok(true) => break,
                        Err(_) => {
                            self.counters.ring_misbehaviour += 1;
                            break;
                        }
                    }
                }
                Err(RingError::PeerMisbehaviour(Misbehaviour::BadLength { .. })) => {
                    // The slot was consumed: a malformed message.
                    self.counters.messages += 1;
                    self.counters.malformed += 1;
                    self.counters.ring_misbehaviour += 1;
                }
                Err(_) => {
                    self.counters.ring_misbehaviour += 1;
                    break;
                }
            }
        }
        if self.to.needs_notify() {
            wake.memserver = true;
        }
    }

    fn handle(&mut self, msg: ToBalloon) {
        match msg {
            ToBalloon::Report { batch, blocks } => self.report(batch, blocks),
            ToBalloon::Inflated { req, blocks, last } => self.inflated(req, &blocks, last),
            ToBalloon::Deflated { req, pages } => match &self.deflation {
                Some(d) if d.sent && d.req == req => {
                    self.counters.pages_deflated += u64::from(pages);
                    self.deflation = None;
                    self.info(format_args!("deflated {pages} pages"));
                }
                _ => self.unexpected(format_args!("Deflated for unknown request {req}")),
            },
            ToBalloon::Refused { req, reason } => {
                if req.is_some() && req == self.ask.map(|a| a.0) {
                    self.ask = None;
                    self.counters.inflate_refused += 1;
                    self.inflate_stalled = true;
                    self.info(format_args!("inflate refused: {reason}"));
                } else if let Some(d) = self.deflation.as_ref().filter(|d| d.sent)
                    && req == Some(d.req)
                {
                    // The memserver says these are not ballooned: our lists
                    // disagree. The pages are lost to both; say so loudly.
                    self.counters.deflate_refused += 1;
                    self.error(format_args!(
                        "deflate of {} blocks refused: {reason}",
                        d.blocks.len()
                    ));
                    self.deflation = None;
                } else {
                    self.unexpected(format_args!("Refused({reason}) for request {req:?}"));
                }
            }
            ToBalloon::Reclaim {
                pages,
                first_pfn,
                end_pfn,
            } => {
                self.counters.reclaim_requests += 1;
                if self
                    .drv
                    .features()
                    .contains(BalloonFeatures::DEFLATE_ON_OOM)
                {
                    // One request at a time (the memserver asks again
                    // after a deflate): the latest zone wins.
                    self.oom_pages = pages;
                    self.oom_range = (first_pfn, end_pfn);
                } else {
                    // Without DEFLATE_ON_OOM the host must be asked first
                    // (MUST_TELL_HOST) and may refuse: the pages stay.
                    self.counters.reclaim_ignored += 1;
                }
            }
            // The answer to a run-time tunable change (FromBalloon::SetTunable).
            ToBalloon::TunableSet {
                key,
                value,
                refused,
            } => match refused {
                None => self.info(format_args!("tunable {}={value} set", key.name())),
                Some(why) => self.info(format_args!(
                    "tunable {}={value} refused: {why}",
                    key.name()
                )),
            },
            ToBalloon::Stats(m) => {
                self.stats_outstanding = false;
                self.counters.stats_updates += 1;
                // Broken device: the numbers are kept for the next buffer.
                let _ = self.drv.set_stats(to_stats(&m));
            }
        }
    }

    fn unexpected(&mut self, args: fmt::Arguments<'_>) {
        self.counters.unexpected += 1;
        self.warn(format_args!("ignored: {args}"));
    }

    fn report(&mut self, batch: u32, blocks: Vec<Block, BATCH>) {
        self.counters.reports_received += 1;
        if self.reports.iter().any(|(b, _)| *b == batch) {
            // Answering would complete the first batch of that id early.
            return self.unexpected(format_args!("duplicate batch {batch}"));
        }
        let foreign = blocks.iter().filter(|b| !self.in_zones(b)).count();
        if foreign > 0 {
            // Not guest RAM: the host would discard whatever it names.
            self.counters.foreign_blocks += foreign as u64;
            self.warn(format_args!(
                "batch {batch} refused: {foreign} blocks outside the balloon's zones"
            ));
            return self.answer(batch, false);
        }
        let cap = self.drv.report_capacity();
        if blocks.is_empty() || blocks.len() > cap || !blocks.iter().all(BlockExt::is_valid) {
            // It can never be posted: fail it now, as a device would.
            self.warn(format_args!(
                "batch {batch} refused ({} blocks, queue holds {cap})",
                blocks.len()
            ));
            return self.answer(batch, false);
        }
        let packed = blocks.iter().map(|b| Packed::new(*b)).collect();
        // Room: tracked < MAX_REPORTS was checked before the pop.
        if self.reports.push_back((batch, packed)).is_err() {
            self.answer(batch, false);
        }
    }

    fn submit_reports(&mut self) {
        while let Some((batch, packed)) = self.reports.front() {
            let batch = *batch;
            let blocks: Vec<Block, BATCH> = packed.iter().map(|p| p.get()).collect();
            match self.drv.submit_report(batch, &blocks) {
                Ok(()) => {
                    self.reports.pop_front();
                    self.reports_in_device += 1;
                }
                Err(Error::QueueFull | Error::Broken) => {
                    // Waits for a completion or a restart.
                    self.counters.reports_waited += 1;
                    return;
                }
                Err(Error::DuplicateBatch(_)) => {
                    self.reports.pop_front();
                    self.unexpected(format_args!("duplicate batch {batch}"));
                }
                Err(e) => {
                    self.reports.pop_front();
                    self.warn(format_args!("batch {batch} failed: {e}"));
                    self.answer(batch, false);
                }
            }
        }
    }

    fn inflated(&mut self, req: u32, blocks: &[Block], last: bool) {
        let Some((asked_req, asked)) = self.ask else {
            return self.unexpected(format_args!("Inflated for unknown request {req}"));
        };
        if asked_req != req {
            return self.unexpected(format_args!("Inflated for unknown request {req}"));
        }
        self.ask = None;
        let mut got = 0u64;
        for (i, b) in blocks.iter().enumerate() {
            // A frame we already hold, or twice in one message, is a
            // memserver bug or a hostile one: taking it would count its
            // pages twice in `actual`, and giving it back would free the
            // copy we still hold. Ignore it (issue 8, found by fuzzing).
            if !self.in_zones(b) {
                // Not guest RAM: never posted, never tracked, never given
                // back (the memserver cannot own it).
                self.counters.foreign_blocks += 1;
                self.warn(format_args!(
                    "Inflated block {:#x} order {} is outside the balloon's zones",
                    b.pfn, b.order
                ));
                continue;
            }
            if self.holds(b) || blocks[..i].iter().any(|o| overlaps(o, b)) {
                self.unexpected(format_args!(
                    "Inflated block {:#x} order {} overlaps one the balloon holds",
                    b.pfn, b.order
                ));
                continue;
            }
            got += b.pages();
            // `to_inflate` is empty when we ask and a message holds at most
            // BATCH blocks, so both pushes have room.
            let _ = if postable(b) {
                self.to_inflate.push_back(*b)
            } else {
                self.giveback.push(*b)
            };
        }
        if last && got < u64::from(asked) {
            // The memserver has no more above its watermark.
            self.inflate_stalled = true;
        }
    }

    /// Whether `b` overlaps a block the balloon holds in any state.
    fn holds(&self, b: &Block) -> bool {
        self.ballooned.iter().any(|p| overlaps(&p.get(), b))
            || self.to_inflate.iter().any(|o| overlaps(o, b))
            || self.inflating.as_ref().is_some_and(|o| overlaps(o, b))
            || self.giveback.iter().any(|o| overlaps(o, b))
            || self
                .deflation
                .as_ref()
                .is_some_and(|d| d.blocks.iter().any(|o| overlaps(o, b)))
    }

    fn pump_inflate(&mut self) {
        if self.inflating.is_some() {
            return;
        }
        let Some(&b) = self.to_inflate.front() else {
            return;
        };
        let id = self.req_id();
        match self.drv.inflate_block(id, b) {
            Ok(()) => {
                self.to_inflate.pop_front();
                self.inflating = Some(b);
            }
            Err(Error::QueueFull | Error::Broken) => {}
            Err(e) => {
                self.to_inflate.pop_front();
                self.warn(format_args!("inflate of {:#x} not posted: {e}", b.pfn));
                let _ = self.giveback.push(b);
            }
        }
    }

    fn pump_deflate(&mut self) {
        let Some(d) = self.deflation.as_mut() else {
            return;
        };
        if d.in_device || d.queued || d.sent {
            return;
        }
        if d.posted < d.blocks.len() {
            let b = d.blocks[d.posted];
            let id = self.next_req;
            self.next_req = self.next_req.wrapping_add(1).max(1);
            match self.drv.deflate_block(id, b, d.reason) {
                Ok(()) => d.in_device = true,
                Err(Error::QueueFull | Error::Broken) => {}
                Err(e) => {
                    // The device cannot be told (e.g. `actual` disagrees);
                    // the memserver still gets the block back.
                    d.posted += 1;
                    let (pfn, n) = (b.pfn, d.blocks.len());
                    self.warn(format_args!("deflate of {pfn:#x} not posted ({n}): {e}"));
                }
            }
            return;
        }
        d.queued = true;
        self.counters.deflate_requests += 1;
    }

    /// Starts the next inflate or deflate when nothing is under way.
    fn rebalance(&mut self) {
        let busy = self.ask.is_some()
            || !self.to_inflate.is_empty()
            || self.inflating.is_some()
            || self.deflation.is_some();
        if busy || self.drv.is_broken() {
            return;
        }
        if !self.giveback.is_empty() {
            let blocks = core::mem::take(&mut self.giveback);
            self.counters.blocks_returned += blocks.len() as u64;
            let req = self.req_id();
            self.deflation = Some(Deflation {
                req,
                posted: blocks.len(),
                blocks,
                in_device: false,
                queued: false,
                sent: false,
                reason: DeflateReason::Target,
            });
            self.pump_deflate();
            return;
        }
        if self.oom_pages > 0 && !self.ballooned.is_empty() {
            // Deflate on OOM (VIRTIO 1.2 5.5.6.1): the guest's need wins
            // over the target. Don't re-inflate until the host sets a new
            // target, or the two would fight (Linux's fill also waits for a
            // config change). Only the short zone's blocks help it.
            let pages = core::mem::take(&mut self.oom_pages);
            self.inflate_stalled = true;
            let (first, end) = self.oom_range;
            self.info(format_args!(
                "deflating {pages} pages on OOM from frames {first:#x}..{end:#x}"
            ));
            self.start_deflate(u64::from(pages), DeflateReason::Oom, Some((first, end)));
            return;
        }
        match self.drv.balloon_action() {
            Ok(BalloonAction::Inflate(pages)) if !self.inflate_stalled => {
                if self.ballooned.len() + BATCH + SPLIT_HEADROOM > MAX_BALLOONED {
                    self.counters.ballooned_full += 1;
                    if !self.full_logged {
                        self.full_logged = true;
                        self.error(format_args!(
                            "balloon list full ({MAX_BALLOONED} blocks): not growing"
                        ));
                    }
                    return;
                }
                let req = self.req_id();
                self.ask = Some((req, pages));
                self.ask_queued = true;
                self.counters.inflate_requests += 1;
            }
            Ok(BalloonAction::Deflate(pages)) => {
                self.start_deflate(u64::from(pages), DeflateReason::Target, None)
            }
            _ => {}
        }
    }

    /// Picks ballooned blocks worth `pages` (at most BATCH blocks),
    /// splitting a block into buddy halves when all are larger than what is
    /// left.
    /// With `within` (`first..end` PFN), only blocks inside it.
    fn start_deflate(&mut self, pages: u64, reason: DeflateReason, within: Option<(u64, u64)>) {
        let inside = |p: &Packed| {
            within.is_none_or(|(first, end)| {
                let b = p.get();
                b.pfn >= first && b.pfn.saturating_add(b.pages()) <= end
            })
        };
        let mut chosen: Vec<Block, BATCH> = Vec::new();
        let mut left = pages;
        while left > 0 && !chosen.is_full() {
            let fits = (0..self.ballooned.len())
                .filter(|&i| inside(&self.ballooned[i]) && self.ballooned[i].pages() <= left)
                .max_by_key(|&i| self.ballooned[i].pages());
            if let Some(i) = fits {
                let b = self.ballooned.swap_remove(i).get();
                left -= b.pages();
                let _ = chosen.push(b);
                continue;
            }
            let Some(i) = (0..self.ballooned.len())
                .filter(|&i| inside(&self.ballooned[i]))
                .min_by_key(|&i| self.ballooned[i].pages())
            else {
                break;
            };
            // Every block is larger than `left` (so of order >= 1).
            let b = self.ballooned[i].get();
            let half = Block {
                pfn: b.pfn,
                order: b.order - 1,
            };
            let upper = Block {
                pfn: b.pfn + half.pages(),
                order: half.order,
            };
            if self.ballooned.push(Packed::new(upper)).is_err() {
                // No room to split: give the whole block back.
                let _ = chosen.push(self.ballooned.swap_remove(i).get());
                break;
            }
            self.ballooned[i] = Packed::new(half);
        }
        if chosen.is_empty() {
            return;
        }
        let req = self.req_id();
        self.deflation = Some(Deflation {
            req,
            blocks: chosen,
            posted: 0,
            in_device: false,
            queued: false,
            sent: false,
            reason,
        });
        self.pump_deflate();
    }

    /// Pushes answers, then requests, while `from_balloon` has room.
    fn flush(&mut self, wake: &mut Wake) {
        let mut buf = [0u8; SLOT_SIZE];
        loop {
            let msg = if let Some(&(batch, ok)) = self.done_out.front() {
                FromBalloon::ReportDone { batch, ok }
            } else if self.limits_ready() {
                FromBalloon::DeviceLimits {
                    report_capacity: u16::try_from(self.drv.report_capacity()).unwrap_or(u16::MAX),
                }
            } else if let (true, Some((req, pages))) = (self.ask_queued, self.ask) {
                FromBalloon::Inflate { req, pages }
            } else if let Some(d) = self.deflation.as_ref().filter(|d| d.queued) {
                FromBalloon::Deflate {
                    req: d.req,
                    blocks: d.blocks.clone(),
                }
            } else if self.stats_queued {
                FromBalloon::StatsRequest
            } else {
                break;
            };
            // Every FromBalloon fits a slot (memserver-api tests the largest).
            let Ok(bytes) = api::encode(&msg, &mut buf) else {
                self.error(format_args!("unencodable message dropped: {msg:?}"));
                self.pop_out();
                continue;
            };
            match self.from.push(bytes) {
                Ok(()) => self.pop_out(),
                Err(RingError::Full) => {
                    // Wait for the memserver to consume; re-check first.
                    self.from.request_signal();
                    if matches!(self.from.free_slots(), Ok(n) if n > 0) {
                        self.from.cancel_signal();
                        continue;
                    }
                    break;
                }
                Err(_) => {
                    self.counters.ring_misbehaviour += 1;
                    break;
                }
            }
        }
        if self.from.needs_notify() {
            wake.memserver = true;
        }
    }

    /// `DeviceLimits` can go: queued, and the device is up (a broken one
    /// has no queues, so its capacity would read 0 and stop reporting; the
    /// restart queues the limits again).
    fn limits_ready(&self) -> bool {
        self.limits_queued && !self.drv.is_broken()
    }

    /// Marks the message `flush` just pushed as sent (same order).
    fn pop_out(&mut self) {
        if self.done_out.pop_front().is_some() {
            return;
        }
        if self.limits_ready() {
            self.limits_queued = false;
        } else if self.ask_queued && self.ask.is_some() {
            self.ask_queued = false;
        } else if let Some(d) = self.deflation.as_mut().filter(|d| d.queued) {
            d.queued = false;
            d.sent = true;
        } else {
            self.stats_queued = false;
        }
    }
}

/// Whether two blocks share a frame.
fn overlaps(a: &Block, b: &Block) -> bool {
    a.pfn < b.pfn.saturating_add(b.pages()) && b.pfn < a.pfn.saturating_add(a.pages())
}
