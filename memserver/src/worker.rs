//! The reporting worker's state and what it hands the platform: Linux's
//! `PAGE_REPORTING_{IDLE,REQUESTED,ACTIVE}`, the timer, the batch being
//! filled and the batches in flight, their counters, and the [`Actions`] an
//! event returns.
//!
//! The buddy allocator ([`MemCore`](crate::MemCore), `core.rs`) holds a
//! [`Worker`] and tells it about qualifying frees; the pass that isolates
//! and drains blocks (`reporting.rs`) drives it. This module depends on
//! neither.

use crate::adaptive::Ages;
use crate::{Block, InvariantViolation, MAX_CAPACITY, MAX_IN_FLIGHT, Policy, Tunables};

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

    pub(crate) fn push_send(&mut self, id: BatchId) {
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
    /// Adaptive: free lists whose walk stopped because the zone allocated
    /// again during the pass.
    pub back_offs: u64,
    /// Adaptive: free blocks a walk passed over because they had not
    /// stayed free long enough (rule 0's walk of a zone not quiet for its
    /// needed time, or any walk of a zone backed off for churn).
    pub young_skips: u64,
}

/// One report batch: the one being filled, or one in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    pub(crate) id: BatchId,
    pub(crate) zone: u16,
    pub(crate) len: u16,
    pub(crate) in_flight: bool,
    pub(crate) entries: [Block; MAX_CAPACITY],
}

impl Slot {
    /// The blocks of the batch.
    pub(crate) fn blocks(&self) -> &[Block] {
        &self.entries[..usize::from(self.len)]
    }

    /// The pages of the batch's blocks.
    pub(crate) fn pages(&self) -> u64 {
        self.blocks().iter().map(Block::pages).sum()
    }
}

const EMPTY_SLOT: Slot = Slot {
    id: BatchId(0),
    zone: 0,
    len: 0,
    in_flight: false,
    entries: [Block { pfn: 0, order: 0 }; MAX_CAPACITY],
};

/// The cursor of a running pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pass {
    pub(crate) zone: usize,
    pub(crate) in_zone: bool,
    pub(crate) order: u8,
    /// Budget of the current free list; `None` before it is computed.
    pub(crate) budget: Option<i64>,
    /// A report failed: isolate nothing more, end when the rest completes.
    pub(crate) failed: bool,
    /// The adaptive policy walks the current zone for its cold blocks
    /// (rule 0, `adaptive.rs`): not stopped by allocations.
    pub(crate) cold: bool,
    /// The adaptive policy skips blocks of the current zone that have been
    /// free for less than this (rule 0, and rule 1 of a zone backed off for
    /// churn: `Ages::plan`).
    pub(crate) min_age_ns: Option<u64>,
}

/// The worker's state, held by [`MemCore`](crate::MemCore); the pass that
/// acts on the free lists is `reporting.rs`.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) tun: Option<Tunables>,
    pub(crate) state: ReportingState,
    pub(crate) timer_armed: bool,
    pub(crate) pass: Option<Pass>,
    pub(crate) next_id: u32,
    /// The batch being filled (Linux's scatterlist): `slots[..]` hold the
    /// ones in flight.
    pub(crate) fill: Slot,
    pub(crate) slots: [Slot; MAX_IN_FLIGHT],
    pub(crate) stats: ReportingStats,
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

    /// Does the allocator keep track of what the host has discarded beyond
    /// Linux's rule (the adaptive policy)? Then a freed block that merged
    /// with a reported buddy goes to the tail of its list
    /// (`MemCore::merge_insert`), a split Reported block's halves stay
    /// Reported, a drained block whose buddies were all Reported is marked
    /// whole, and allocation splits resident memory before it takes a
    /// discarded block (`MemCore::take_block`).
    pub(crate) fn keeps_reported_exact(&self) -> bool {
        self.tun.is_some_and(|t| t.policy == Policy::Adaptive)
    }

    pub(crate) fn low_watermark(&self) -> u64 {
        self.tun.unwrap_or_default().low_watermark_pages
    }

    pub(crate) fn arm_ns(&mut self, ns: u64, acts: &mut Actions) {
        if let Some(t) = &self.tun {
            self.timer_armed = true;
            acts.arm_timer_ns = Some(ns);
            self.ages.armed(t, ns);
        }
    }

    /// Linux's `page_reporting_register` starts an initial flush, a delay
    /// later whatever the policy: the guests starting meanwhile take what
    /// they need first from memory that is not discarded, instead of
    /// faulting the boot report back in.
    pub(crate) fn boot(&mut self, acts: &mut Actions) {
        if let Some(t) = self.tun {
            self.request_in(t.delay_ns, acts);
        }
    }

    /// Linux's `__page_reporting_request`. Linux's pass runs the delay
    /// later; the adaptive policy looks a tick later (its rules wait for
    /// the delay themselves, by the zone's quiet time and the blocks'
    /// ages).
    pub(crate) fn request(&mut self, acts: &mut Actions) {
        if let Some(t) = self.tun {
            let ns = match t.policy {
                Policy::Linux => t.delay_ns,
                Policy::Adaptive => Ages::tick_ns(&t),
            };
            self.request_in(ns, acts);
        }
    }

    /// Only IDLE → REQUESTED arms the timer, for `ns`.
    fn request_in(&mut self, ns: u64, acts: &mut Actions) {
        match self.state {
            ReportingState::Idle => {
                self.state = ReportingState::Requested;
                self.arm_ns(ns, acts);
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

    pub(crate) fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.in_flight).count()
    }

    /// The free path's notify order for this state: the lowest order a
    /// free must tell the worker about, `u8::MAX` when reporting is off or
    /// already REQUESTED (a request would change nothing).
    pub(crate) fn notify_order(&self) -> u8 {
        match (self.tun, self.state) {
            (Some(t), ReportingState::Idle | ReportingState::Active) => t.lowest_order(),
            _ => u8::MAX,
        }
    }

    /// The worker's own invariants: timer, state, pass and batches agree.
    pub(crate) fn check_state(&self) -> Result<(), InvariantViolation> {
        let bad = |what, zone, pfn| Err(InvariantViolation { what, zone, pfn });
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
