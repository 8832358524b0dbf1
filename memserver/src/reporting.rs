//! The free page reporting worker: Linux's `mm/page_reporting.c` as an
//! event-driven state machine.
//!
//! Linux runs one pass in a kernel thread and blocks in `report()`. Here the
//! batch goes to another PD and comes back later, so a pass is a cursor
//! (zone, order, budget) that stops when the in-flight limit is reached and
//! resumes on [`MemCore::report_completed`]. The batch's blocks stay
//! isolated (off the free lists, not allocatable) until then.
//!
//! States (Linux `PAGE_REPORTING_{IDLE,REQUESTED,ACTIVE}`):
//! IDLE → REQUESTED (a qualifying free; arms the timer) → ACTIVE (timer
//! expired, pass running) → IDLE, or REQUESTED again when frees came during
//! the pass or a budget ran out; the end of the pass then re-arms the timer.
//! Only the IDLE → REQUESTED edge arms the timer from a free.

use crate::adaptive::{Ages, Plan};
use crate::core::MemCore;
use crate::meta::{KIND_FREE, KIND_ISOLATED, NIL, REPORTED, kind_of, order_of, state};
use crate::{
    Block, Error, InvariantViolation, MAX_CAPACITY, MAX_IN_FLIGHT, MAX_ORDER, Policy, Tunables,
    ZoneId,
};

/// Identifies one report batch until its completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BatchId(pub u32);

/// Linux's reporting state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportingState {
    /// Nothing to do; the next qualifying free arms the timer.
    Idle,
    /// Reporting requested: either the timer is armed, or a pass is running
    /// and will re-arm the timer when it ends.
    Requested,
    /// A pass is running and nothing was requested since it started.
    Active,
}

/// What the platform must do after an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions {
    arm_timer_ns: Option<u64>,
    sends: [BatchId; MAX_IN_FLIGHT],
    nr_sends: u8,
}

impl Actions {
    /// Arm the (one-shot) timer to call [`MemCore::timer_expired`] after
    /// this many nanoseconds.
    pub fn arm_timer_ns(&self) -> Option<u64> {
        self.arm_timer_ns
    }

    /// Batches to send to the reporting device, in order; read each one's
    /// entries with [`MemCore::batch`].
    pub fn batches(&self) -> &[BatchId] {
        &self.sends[..usize::from(self.nr_sends)]
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.arm_timer_ns.is_none() && self.nr_sends == 0
    }

    /// Fold `other` (a later event's actions) into `self`.
    pub fn merge(&mut self, other: &Actions) {
        if other.arm_timer_ns.is_some() {
            self.arm_timer_ns = other.arm_timer_ns;
        }
        for b in other.batches() {
            self.push_send(*b);
        }
    }

    fn push_send(&mut self, id: BatchId) {
        // At most max_in_flight batches can be sent before a completion, so
        // this never overflows; if it would, the id is still in flight and
        // readable through `MemCore::in_flight`.
        if usize::from(self.nr_sends) < MAX_IN_FLIGHT {
            self.sends[usize::from(self.nr_sends)] = id;
            self.nr_sends += 1;
        }
    }
}

/// Counters of the worker (oracles for tests and the PD's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportingStats {
    /// Passes started (timer expiries acted on).
    pub passes: u64,
    /// Batches handed to the device.
    pub batches_sent: u64,
    /// Batches completed with `ok = false`.
    pub batches_failed: u64,
    /// Blocks and pages the host acknowledged.
    pub blocks_reported: u64,
    /// Pages the host acknowledged.
    pub pages_reported: u64,
    /// Blocks marked Reported on drain (acknowledged and not merged).
    pub blocks_marked: u64,
    /// Zones skipped by the watermark check.
    pub watermark_skips: u64,
    /// Free lists that ran out of budget.
    pub budget_exhausted: u64,
    /// Timer expiries with no timer armed (ignored).
    pub spurious_timers: u64,
    /// Adaptive: zones a pass left alone because they were busy or not
    /// quiet for the delay yet.
    pub busy_defers: u64,
    /// Adaptive: free lists whose walk stopped because the zone allocated
    /// again during the pass.
    pub back_offs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    id: BatchId,
    zone: u16,
    len: u16,
    in_flight: bool,
    entries: [Block; MAX_CAPACITY],
}

const EMPTY_SLOT: Slot = Slot {
    id: BatchId(0),
    zone: 0,
    len: 0,
    in_flight: false,
    entries: [Block { pfn: 0, order: 0 }; MAX_CAPACITY],
};

#[derive(Debug, Clone, Copy)]
struct Pass {
    zone: usize,
    in_zone: bool,
    order: u8,
    /// Budget of the current free list; `None` before it is computed.
    budget: Option<i64>,
    /// A report failed: isolate nothing more, end when the rest completes.
    failed: bool,
}

#[derive(Debug)]
pub(crate) struct Worker {
    tun: Option<Tunables>,
    state: ReportingState,
    timer_armed: bool,
    pass: Option<Pass>,
    next_id: u32,
    /// The batch being filled (Linux's scatterlist): `slots[..]` hold the
    /// ones in flight.
    fill: Slot,
    slots: [Slot; MAX_IN_FLIGHT],
    stats: ReportingStats,
    /// The adaptive policy's view of each zone's activity.
    pub(crate) ages: Ages,
}

impl Worker {
    pub(crate) fn new(tun: Option<Tunables>) -> Worker {
        Worker {
            tun,
            state: ReportingState::Idle,
            timer_armed: false,
            pass: None,
            next_id: 1,
            fill: EMPTY_SLOT,
            slots: [EMPTY_SLOT; MAX_IN_FLIGHT],
            stats: ReportingStats::default(),
            ages: Ages::new(),
        }
    }

    pub(crate) fn low_watermark(&self) -> u64 {
        self.tun.unwrap_or_default().low_watermark_pages
    }

    fn arm(&mut self, acts: &mut Actions) {
        if let Some(t) = self.tun {
            self.arm_ns(t.delay_ns, acts);
        }
    }

    fn arm_ns(&mut self, ns: u64, acts: &mut Actions) {
        if let Some(t) = &self.tun {
            self.timer_armed = true;
            acts.arm_timer_ns = Some(ns);
            self.ages.armed(t, ns);
        }
    }

    /// Linux's `page_reporting_register` starts an initial flush.
    pub(crate) fn boot(&mut self, acts: &mut Actions) {
        self.request(acts);
    }

    /// Linux's `__page_reporting_request`: only IDLE → REQUESTED arms.
    fn request(&mut self, acts: &mut Actions) {
        if self.tun.is_none() {
            return;
        }
        match self.state {
            ReportingState::Idle => {
                self.state = ReportingState::Requested;
                self.arm(acts);
            }
            ReportingState::Active => self.state = ReportingState::Requested,
            ReportingState::Requested => {}
        }
    }

    /// A block of `order` (after merging) came onto the free lists.
    #[inline]
    pub(crate) fn freed(&mut self, order: u8, acts: &mut Actions) {
        if let Some(t) = &self.tun
            && order >= t.lowest_order()
        {
            self.request(acts);
        }
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.in_flight).count()
    }

    pub(crate) fn check(&self, core: &MemCore<'_>) -> Result<(), InvariantViolation> {
        let bad = |what, zone, pfn| Err(InvariantViolation { what, zone, pfn });
        let mut isolated = [0u64; crate::MAX_ZONES];
        let batches = self
            .slots
            .iter()
            .filter(|s| s.in_flight)
            .chain(core::iter::once(&self.fill));
        for s in batches {
            let z = usize::from(s.zone);
            for b in &s.entries[..usize::from(s.len)] {
                if z >= core.nr_zones {
                    return bad("batch names no zone", z, b.pfn);
                }
                let zone = &core.zones[z];
                if b.pfn < zone.base || b.pfn - zone.base >= u64::from(zone.pages) {
                    return bad("batch entry outside its zone", z, b.pfn);
                }
                if core.st(zone.gidx(b.pfn)) != state(KIND_ISOLATED, b.order) {
                    return bad("batch entry is not an isolated block", z, b.pfn);
                }
                isolated[z] += b.pages();
            }
        }
        for (z, zone) in core.zones[..core.nr_zones].iter().enumerate() {
            if zone.stats.isolated_pages != isolated[z] {
                return bad("isolated pages outside report batches", z, 0);
            }
        }
        if self.timer_armed && (self.state != ReportingState::Requested || self.pass.is_some()) {
            return bad("timer armed outside REQUESTED", 0, 0);
        }
        if self.pass.is_none() && self.state != ReportingState::Idle && !self.timer_armed {
            return bad("reporting requested but nothing scheduled", 0, 0);
        }
        if self.pass.is_some() && self.state == ReportingState::Idle {
            return bad("pass running while IDLE", 0, 0);
        }
        if self.pass.is_none() && (self.in_flight() != 0 || self.fill.len != 0) {
            return bad("batches outside a pass", 0, 0);
        }
        Ok(())
    }
}

impl MemCore<'_> {
    /// The timer armed by an earlier [`Actions`] expired: start a reporting
    /// pass (Linux's `page_reporting_process`). Returns the batches to send
    /// and, if the pass already ended, maybe a new timer. An expiry with no
    /// timer armed is counted and ignored (notifications may be spurious).
    pub fn timer_expired(&mut self) -> Actions {
        let mut acts = Actions::default();
        let w = &mut self.worker;
        if w.tun.is_none() || !w.timer_armed {
            w.stats.spurious_timers += 1;
            return acts;
        }
        w.timer_armed = false;
        if let Some(t) = &w.tun {
            w.ages.expired(t);
        }
        w.state = ReportingState::Active;
        w.stats.passes += 1;
        w.pass = Some(Pass {
            zone: 0,
            in_zone: false,
            order: 0,
            budget: None,
            failed: false,
        });
        self.advance(&mut acts);
        self.sync_notify();
        acts
    }

    /// The device finished batch `id`: `ok` if the host took the pages.
    /// Drains the batch (Linux's `page_reporting_drain`): each block goes
    /// back to the *tail* of its free list, merging with free buddies, and
    /// is marked Reported only if `ok` and it is still a free block of the
    /// same order. A failed batch comes back unmarked; the pass stops and
    /// the worker retries after the delay. Then the pass continues.
    pub fn report_completed(&mut self, id: BatchId, ok: bool) -> Result<Actions, Error> {
        let Some(si) = self
            .worker
            .slots
            .iter()
            .position(|s| s.in_flight && s.id == id)
        else {
            return Err(Error::UnknownBatch);
        };
        let slot = self.worker.slots[si];
        self.worker.slots[si].in_flight = false;
        self.drain(&slot, ok);
        let w = &mut self.worker;
        if ok {
            w.stats.blocks_reported += u64::from(slot.len);
            w.stats.pages_reported += slot.entries[..usize::from(slot.len)]
                .iter()
                .map(Block::pages)
                .sum::<u64>();
        } else {
            w.stats.batches_failed += 1;
            if let Some(p) = &mut w.pass {
                p.failed = true;
            }
            // Linux stops the pass on a failed report; the half-filled
            // batch goes back unmarked too.
            let fill = w.fill;
            w.fill.len = 0;
            self.drain(&fill, false);
        }
        let mut acts = Actions::default();
        self.advance(&mut acts);
        self.sync_notify();
        Ok(acts)
    }

    /// Request a reporting pass, as Linux's `__page_reporting_request`
    /// (e.g. when the reporting device reconnects). Arms the timer only on
    /// IDLE -> REQUESTED; no-op when reporting is off.
    pub fn request_reporting(&mut self) -> Actions {
        let mut acts = Actions::default();
        self.worker.request(&mut acts);
        self.sync_notify();
        acts
    }

    /// Recompute the free path's notify order from the worker's state.
    pub(crate) fn sync_notify(&mut self) {
        self.notify_order = match (self.worker.tun, self.worker.state) {
            (Some(t), ReportingState::Idle | ReportingState::Active) => t.lowest_order(),
            _ => u8::MAX,
        };
    }

    /// Entries of a batch in flight.
    pub fn batch(&self, id: BatchId) -> Option<&[Block]> {
        self.worker
            .slots
            .iter()
            .find(|s| s.in_flight && s.id == id)
            .map(|s| &s.entries[..usize::from(s.len)])
    }

    /// Batches in flight, oldest id first not guaranteed.
    pub fn in_flight(&self) -> impl Iterator<Item = BatchId> + '_ {
        self.worker
            .slots
            .iter()
            .filter(|s| s.in_flight)
            .map(|s| s.id)
    }

    /// The worker's state.
    pub fn reporting_state(&self) -> ReportingState {
        self.worker.state
    }

    /// Is the worker's timer armed (a pass due when it expires)?
    pub fn timer_armed(&self) -> bool {
        self.worker.timer_armed
    }

    /// Is a reporting pass running (waiting for batch completions)?
    pub fn pass_running(&self) -> bool {
        self.worker.pass.is_some()
    }

    /// The worker's counters.
    pub fn reporting_stats(&self) -> ReportingStats {
        self.worker.stats
    }

    /// The reporting tunables, `None` when reporting is off.
    pub fn tunables(&self) -> Option<Tunables> {
        self.worker.tun
    }

    /// Replace the tunables (e.g. lower the capacity to the device's queue
    /// size). Refused while a pass runs. Turning reporting on from off
    /// requests a pass, as a device registering with Linux does.
    pub fn set_tunables(&mut self, tun: Option<Tunables>) -> Result<Actions, Error> {
        if let Some(t) = &tun {
            t.validate()?;
        }
        if self.worker.pass.is_some() {
            return Err(Error::ReportingBusy);
        }
        let mut acts = Actions::default();
        let was_on = self.worker.tun.is_some();
        self.worker.tun = tun;
        if tun.is_none() {
            self.worker.state = ReportingState::Idle;
            self.worker.timer_armed = false;
        } else if !was_on {
            self.worker.request(&mut acts);
        } else if self.worker.timer_armed
            && let Some(t) = tun
        {
            self.worker.arm_ns(t.delay_ns, &mut acts);
        }
        self.sync_notify();
        Ok(acts)
    }

    /// Put a batch's blocks back (Linux `page_reporting_drain`).
    fn drain(&mut self, slot: &Slot, ok: bool) {
        let z = usize::from(slot.zone);
        for b in &slot.entries[..usize::from(slot.len)] {
            let g = self.zones[z].gidx(b.pfn);
            self.zones[z].stats.isolated_pages -= b.pages();
            let (mg, mo) = self.merge_insert(z, g, b.order, true);
            // Mark only if the block did not merge: a merged block is a new,
            // larger block the host has not seen as a whole.
            if ok && mg == g && mo == b.order {
                self.set_st(g, state(KIND_FREE, b.order) | REPORTED);
                self.zones[z].stats.reported_pages += b.pages();
                self.zones[z].stats.reported_blocks[usize::from(b.order)] += 1;
                self.worker.stats.blocks_marked += 1;
            }
        }
    }

    /// Hand the filled batch to the device.
    fn send(&mut self, acts: &mut Actions) {
        let w = &mut self.worker;
        let Some(si) = w.slots.iter().position(|s| !s.in_flight) else {
            return; // callers check the in-flight limit first
        };
        let id = BatchId(w.next_id);
        w.next_id = w.next_id.wrapping_add(1).max(1);
        w.ages.sent(usize::from(w.fill.zone));
        w.slots[si] = w.fill;
        w.slots[si].id = id;
        w.slots[si].in_flight = true;
        w.fill.len = 0;
        w.stats.batches_sent += 1;
        acts.push_send(id);
    }

    /// Run the pass until it must wait for a completion or ends (Linux's
    /// `page_reporting_process` / `_process_zone`).
    fn advance(&mut self, acts: &mut Actions) {
        let Some(tun) = self.worker.tun else { return };
        let Some(mut p) = self.worker.pass else {
            return;
        };
        let limit = usize::from(tun.max_in_flight);
        loop {
            let in_flight = self.worker.in_flight();
            if p.failed || p.zone >= self.nr_zones {
                if in_flight == 0 {
                    self.end_pass(p.failed, acts);
                    return;
                }
                break;
            }
            if in_flight >= limit {
                break;
            }
            if !p.in_zone {
                // Skip a zone short of memory so reporting never starves
                // allocation (Linux: low watermark + capacity << order).
                if self.zones[p.zone].stats.free_pages < tun.zone_threshold() {
                    self.worker.stats.watermark_skips += 1;
                    p.zone += 1;
                    continue;
                }
                p.in_zone = true;
                p.order = tun.reporting_order;
                if tun.policy == Policy::Adaptive {
                    match self.worker.ages.plan(p.zone, &tun) {
                        Plan::Defer => {
                            self.worker.stats.busy_defers += 1;
                            p.in_zone = false;
                            p.zone += 1;
                            continue;
                        }
                        Plan::Report { first_order } => p.order = first_order,
                    }
                }
                p.budget = None;
                self.worker.fill.zone = p.zone as u16;
                continue;
            }
            if p.order > MAX_ORDER {
                // Linux reports the leftover entries before leaving the zone.
                if self.worker.fill.len > 0 {
                    self.send(acts);
                }
                p.in_zone = false;
                p.zone += 1;
                continue;
            }
            if self.cycle(&mut p, &tun, acts) {
                p.order += 1;
                p.budget = None;
            }
        }
        self.worker.pass = Some(p);
    }

    fn end_pass(&mut self, failed: bool, acts: &mut Actions) {
        if let Some(t) = self.worker.tun
            && t.policy == Policy::Adaptive
            && !failed
        {
            // Keep looking while a zone holds unreported blocks (busy, not
            // aged yet, or drained blocks that merged), paced by a tick
            // rather than a full delay; quiet zones are reported at once.
            self.worker.pass = None;
            if self.worker.state == ReportingState::Requested || self.adaptive_pending(&t) {
                self.worker.state = ReportingState::Requested;
                self.worker.arm_ns(Ages::tick_ns(&t), acts);
            } else {
                self.worker.state = ReportingState::Idle;
            }
            return;
        }
        let w = &mut self.worker;
        w.pass = None;
        // Linux goes IDLE unless requested meanwhile. After a failed report
        // it waits for the next qualifying free; we re-request instead so
        // the returned blocks are retried after the delay even if nothing
        // else is freed (the failure may be transient, e.g. a full ring).
        if failed || w.state == ReportingState::Requested {
            w.state = ReportingState::Requested;
            w.arm(acts);
        } else {
            w.state = ReportingState::Idle;
        }
    }

    /// One free list (Linux's `page_reporting_cycle`). Returns `true` when
    /// the list is done for this pass, `false` when it must wait for a
    /// completion (it resumes from the list head, which the rotation made
    /// the first unprocessed block).
    fn cycle(&mut self, p: &mut Pass, tun: &Tunables, acts: &mut Actions) -> bool {
        let (z, o) = (p.zone, p.order);
        let cap = usize::from(tun.capacity);
        let budget = match p.budget {
            Some(b) => b,
            None => {
                let nr = self.zones[z].stats.free_blocks[usize::from(o)];
                if nr == 0 {
                    return true;
                }
                let per = u64::from(tun.capacity) * u64::from(tun.budget_divisor);
                match tun.policy {
                    Policy::Linux => nr.div_ceil(per) as i64,
                    // Only quiet zones are walked: no budget (adaptive.rs).
                    Policy::Adaptive => i64::MAX,
                }
            }
        };
        p.budget = Some(budget);
        let mut g = self.zones[z].lists[usize::from(o)].head;
        while g != NIL {
            // Stop when only Reported blocks are left: the same as walking
            // to the end (nothing isolated, nothing rotated), without
            // touching their metadata. Drained blocks gather at the tail, so
            // this skips most of a long, mostly reported list.
            let s = &self.zones[z].stats;
            if s.free_blocks[usize::from(o)] == s.reported_blocks[usize::from(o)] {
                break;
            }
            let next = self.next_of(g);
            let st = self.st(g);
            if st & REPORTED != 0 {
                g = next;
                continue;
            }
            debug_assert!(kind_of(st) == KIND_FREE && order_of(st) == o);
            // Adaptive: the zone allocates again, back off as from an
            // exhausted budget.
            let resumed = tun.policy == Policy::Adaptive && self.worker.ages.resumed(z, tun);
            if resumed || p.budget.unwrap_or(0) < 0 {
                // As Linux (`budget < 0`): out of budget, leave the rest for
                // a later pass, starting at this block.
                self.worker.state = ReportingState::Requested;
                if resumed {
                    self.worker.stats.back_offs += 1;
                } else {
                    self.worker.stats.budget_exhausted += 1;
                }
                self.list_rotate_to_front(z, o, g);
                return true;
            }
            // The zone's threshold is checked once on entry; every
            // isolation also keeps its free pages (isolated ones excluded)
            // at the low watermark, as Linux's `__isolate_free_page`, or
            // batches in flight and blocks above the reporting order could
            // isolate the zone down to nothing. Leave the zone; when our
            // own batches hold the memory, try the rest after the delay
            // (as budget exhaustion does), once they are back.
            if usize::from(self.worker.fill.len) < cap
                && self.zones[z].stats.free_pages < tun.low_watermark_pages + (1u64 << o)
            {
                self.worker.stats.watermark_skips += 1;
                if self.worker.fill.len > 0 || self.worker.in_flight() > 0 {
                    self.worker.state = ReportingState::Requested;
                }
                p.order = MAX_ORDER;
                return true;
            }
            let fill = &mut self.worker.fill;
            if usize::from(fill.len) < cap {
                let pfn = self.zones[z].pfn(g);
                fill.entries[usize::from(fill.len)] = Block { pfn, order: o };
                fill.len += 1;
                self.list_del(z, o, g);
                self.set_st(g, state(KIND_ISOLATED, o));
                self.zones[z].stats.isolated_pages += 1u64 << o;
                g = next;
                continue;
            }
            // Batch full and another unreported block waits: make it the
            // head so the next walk starts there, then report.
            self.list_rotate_to_front(z, o, g);
            self.send(acts);
            p.budget = p.budget.map(|b| b - 1);
            if self.worker.in_flight() >= usize::from(tun.max_in_flight) {
                return false;
            }
            g = self.zones[z].lists[usize::from(o)].head;
        }
        true
    }
}

/// Zone of a batch's blocks (every batch holds blocks of one zone, as
/// Linux reports leftovers before leaving a zone).
impl MemCore<'_> {
    /// The zone whose blocks batch `id` holds.
    pub fn batch_zone(&self, id: BatchId) -> Option<ZoneId> {
        self.worker
            .slots
            .iter()
            .find(|s| s.in_flight && s.id == id)
            .map(|s| ZoneId(s.zone))
    }
}
