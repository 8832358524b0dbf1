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
use crate::worker::{Actions, BatchId, Pass, ReportingState, ReportingStats, Slot};
use crate::{Block, Error, InvariantViolation, MAX_ORDER, Policy, Tunables, ZoneId};

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
            cold: false,
            min_age_ns: None,
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
            w.stats.pages_reported += slot.pages();
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

    /// Entries of a batch in flight.
    pub fn batch(&self, id: BatchId) -> Option<&[Block]> {
        self.worker
            .slots
            .iter()
            .find(|s| s.in_flight && s.id == id)
            .map(Slot::blocks)
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
        for b in slot.blocks() {
            let g = self.zones[z].gidx(b.pfn);
            self.zones[z].stats.isolated_pages -= b.pages();
            let (mg, mo, all_reported) = self.merge_insert(z, g, b.order, true);
            // Linux marks only a block that did not merge: a merged block
            // is a new, larger block the host has not seen as a whole. The
            // adaptive policy also marks one whose every buddy was
            // Reported: the host has discarded all of it.
            let merged = mg != g || mo != b.order;
            if ok && (!merged || (all_reported && self.worker.keeps_reported_exact())) {
                self.mark_reported(z, mg, mo);
                self.worker.stats.blocks_marked += 1;
            }
        }
    }

    /// Hand the filled batch to the device.
    fn send(&mut self, acts: &mut Actions) {
        // Adaptive: a batch of memory no client has held since boot (its
        // blocks still carry the boot stamp) starts no probation: the
        // first allocations take such memory back whatever the policy
        // does, which is no sign of churn.
        let z = usize::from(self.worker.fill.zone);
        let freed_by_clients = self.worker.fill.blocks().iter().any(|b| {
            let g = self.zones[z].gidx(b.pfn);
            self.freed_epoch(g, b.order) != Some(Ages::BOOT_EPOCH)
        });
        let w = &mut self.worker;
        let Some(si) = w.slots.iter().position(|s| !s.in_flight) else {
            return; // callers check the in-flight limit first
        };
        let id = BatchId(w.next_id);
        w.next_id = w.next_id.wrapping_add(1).max(1);
        if freed_by_clients {
            w.ages.sent(z);
        }
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
                p.cold = false;
                p.min_age_ns = None;
                if tun.policy == Policy::Adaptive {
                    match self.worker.ages.plan(p.zone, &tun) {
                        Plan::Cold { min_age_ns } => {
                            p.cold = true;
                            p.min_age_ns = Some(min_age_ns);
                        }
                        Plan::Report {
                            first_order,
                            min_age_ns,
                        } => {
                            p.order = first_order;
                            p.min_age_ns = min_age_ns;
                        }
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
            // Keep looking while a zone holds unreported blocks (not free
            // long enough yet, not aged yet, or drained blocks that merged)
            // or a report is on probation, a tick at a time rather than a
            // full delay.
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
        // The next pass runs the delay later: this is Linux's path, or a
        // failed report under either policy.
        if failed || w.state == ReportingState::Requested {
            w.state = ReportingState::Requested;
            if let Some(t) = w.tun {
                w.arm_ns(t.delay_ns, acts);
            }
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
                    // No budget (adaptive.rs).
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
            // Adaptive, a zone not quiet for its needed time or backed off
            // for churn: a block freed a moment ago is the likeliest to be
            // allocated again (the lists are LIFO, and Linux's walk starts
            // at their heads); reporting it would only have it faulted back
            // in. What has stayed free for half the needed time is cold.
            if let (Some(age), Some(freed)) = (p.min_age_ns, self.freed_epoch(g, o))
                && !self.worker.ages.cold(freed, age)
            {
                self.worker.stats.young_skips += 1;
                g = next;
                continue;
            }
            debug_assert!(kind_of(st) == KIND_FREE && order_of(st) == o);
            // Adaptive: the zone allocates again, back off as from an
            // exhausted budget.
            let resumed =
                tun.policy == Policy::Adaptive && !p.cold && self.worker.ages.resumed(z, tun);
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

impl MemCore<'_> {
    /// Conservation check, O(pages): every frame is in exactly one block and
    /// one state; the free lists match the per-page states; no two free
    /// buddies of equal order are left unmerged; Reported only on free
    /// blocks; isolated blocks are exactly those of the report batches; the
    /// counters equal a recount; the worker's state is consistent.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.check_allocator()?;
        let bad = |what, zone, pfn| Err(InvariantViolation { what, zone, pfn });
        let mut isolated = [0u64; crate::MAX_ZONES];
        let w = &self.worker;
        let batches = w
            .slots
            .iter()
            .filter(|s| s.in_flight)
            .chain(core::iter::once(&w.fill));
        for s in batches {
            let z = usize::from(s.zone);
            for b in s.blocks() {
                if z >= self.nr_zones {
                    return bad("batch names no zone", z, b.pfn);
                }
                let zone = &self.zones[z];
                if b.pfn < zone.base || b.pfn - zone.base >= u64::from(zone.pages) {
                    return bad("batch entry outside its zone", z, b.pfn);
                }
                if self.st(zone.gidx(b.pfn)) != state(KIND_ISOLATED, b.order) {
                    return bad("batch entry is not an isolated block", z, b.pfn);
                }
                isolated[z] += b.pages();
            }
        }
        for (z, zone) in self.zones[..self.nr_zones].iter().enumerate() {
            if zone.stats.isolated_pages != isolated[z] {
                return bad("isolated pages outside report batches", z, 0);
            }
        }
        self.worker.check_state()
    }
}
