//! The `adaptive` reporting policy: Linux's worker, isolation, drain and
//! watermark (`reporting.rs`), Linux's pacing as a floor, and three rules
//! of its own about *when* and *how much more* to report.
//!
//! Linux paces every zone the same way whatever it is doing: a full delay
//! before each pass and 1/16 of each free list per pass, so 1 GiB freed at
//! once needs ~5 passes (~10 s), and blocks freed below `reporting_order`
//! never come back. The signal Linux lacks is whether the zone is still
//! using its memory. This policy measures it: the allocation path counts
//! pages allocated per zone (one add), and the worker looks at the count at
//! every timer arm and expiry. A zone is *quiet* while it allocates at most
//! `busy_pages` between two looks; its quiet time is the sum of the timer
//! intervals over which it stayed quiet (the core has no clock; the timer
//! it arms is its clock, and a pass's own duration is not counted, so the
//! quiet time is never overestimated).
//!
//! 0. **Never behind Linux, unless it churns.** A zone that no rule below
//!    reports is still walked Linux's way once per `delay_ns` of the
//!    worker's timer (its *paced* clock, restarted by every walk of the
//!    zone): from `reporting_order`, 1/`budget_divisor` of each free list,
//!    not stopped by allocations. A workload whose size moves slowly (a
//!    build) is busy at almost every look; without this floor it would
//!    keep its freed memory longer than under Linux. Only a zone backed
//!    off for churn (rule 2) waits longer: `delay_ns << backoff`. (The
//!    walk reports only cold blocks, below, but a cycle slower than the
//!    delay leaves part of itself free for a whole visit: on seL4, where a
//!    round of the churn scenario takes ~1 s, walking such a zone at
//!    Linux's pace cost +19.6 % against reporting off.)
//!    Unlike Linux, the walk passes over blocks freed since the zone's
//!    previous visit: the free path stamps each block with the worker's
//!    epoch (a count of its looks, kept in a tail frame's unused links,
//!    `meta.rs`), and a busy zone's freshest free blocks are the ones it
//!    allocates next (the lists are LIFO). Linux's walk starts at the
//!    heads, so it reports exactly those, and a workload cycling its
//!    memory faults them back in; what stayed free through a whole visit
//!    interval while the zone allocated is cold, and that is what the
//!    paced walk reports. A block freed next to a reported buddy merges
//!    with it (the merged block is unreported, as in Linux) but goes to
//!    the tail of its list instead of the head: part of it is discarded,
//!    and the allocator then takes its order's fully resident blocks
//!    first, so a cycling workload keeps to the pages it has instead of
//!    wandering, merge by merge, into the cold ones (`merge_insert`).
//! 1. **Quiet for the delay: everything in one pass.** A zone quiet for at
//!    least `delay_ns` gets no budget: the pass isolates every unreported
//!    block of order >= `reporting_order`, paced only by the device's
//!    completions (`max_in_flight` batches at a time).
//! 2. **Busy: nothing beyond Linux's pass, and back off.** A zone that
//!    allocated more than `busy_pages` since the last look gets rule 0 at
//!    most, and the worker looks again every `delay_ns / 4` until it has
//!    stayed quiet for the delay.
//!    If a zone starts allocating during an unbudgeted pass, its walk
//!    stops at once (as Linux's budget running out: the list is rotated
//!    and the state stays REQUESTED). Memory a workload is cycling through
//!    is thus not discarded only to be faulted back in, beyond what Linux
//!    itself would discard.
//!
//!    **Hysteresis under churn.** A workload that cycles its memory can
//!    still pause longer than the delay (touching, verifying) and get the
//!    blocks it will reuse a moment later reported, so the host discards
//!    them and the guest faults them back in. The allocation path counts
//!    the reported pages it takes back (the drop of the zone's reported
//!    pages across an allocation: one subtract). A zone that, after a
//!    batch of it was sent and before its needed time passed, takes back
//!    more than `busy_pages` of them *and* at least half of what it
//!    reported meanwhile doubles that time (`delay_ns << backoff`,
//!    `backoff` up to `backoff_max`) for rules 0, 1 and 3; a report that
//!    sticks that long halves it again. Allocation as such is not churn:
//!    a zone growing into memory that was never reported keeps its pace,
//!    and so does one that takes back a small part of a large report (a
//!    build's next step after a steep fall: the report saved most of what
//!    it discarded). A cycle takes back all it had reported.
//!    Linux has no such signal; the cost is bounded: a zone needs at most
//!    `delay_ns << backoff_max`. While backed off, every walk of the zone
//!    (not only rule 0's) passes over blocks freed since its previous
//!    visit.
//! 3. **Ageing: quiet long enough, small blocks too.** Once a zone has
//!    stayed quiet for `age_ns`, the walk starts at `quiet_order` instead
//!    of `reporting_order`, so memory freed in small blocks (a fragmented
//!    heap) comes back too. Small frees request reporting (the free path's
//!    notify order is `quiet_order`, still one compare), and the worker
//!    keeps ticking while a zone above its watermark holds unreported
//!    blocks, so nothing free is left behind.
//! 4. **Know what the host holds, and reuse it first.** Linux's Reported
//!    flag is lost whenever a block leaves its list: a split Reported
//!    block's halves look resident, so the allocator hands them out as
//!    readily as memory the guest just freed, and a workload faults
//!    discarded memory back in while resident free memory waits (and is
//!    reported again later, for nothing). Under this policy the flag means
//!    "the host has discarded all of it" and stays exact where the core
//!    can know it (`MemCore::take_block`, `merge_insert`, `drain`):
//!    a split Reported block's halves stay Reported at their lists' tails;
//!    a drained block whose buddies were all Reported is marked whole; and
//!    when the fitting order has only Reported blocks at its head,
//!    allocation splits the smallest larger unreported block, or takes its
//!    own list's tail when that is a block merged with a discarded buddy
//!    (partly resident), before it takes discarded memory. On a platform
//!    that leaves RAM untouched at boot (the host platform,
//!    `pd::REGIONS_UNTOUCHED_AT_BOOT`) every block starts Reported
//!    (`MemCore::boot_memory_untouched`), so memory nobody has touched is
//!    taken last too. A churning workload then keeps to the pages it has:
//!    it faults in nothing after its first round.
//!
//! Safety is Linux's: blocks are isolated and drained by the same code, so
//! isolated blocks are never allocatable, drained blocks go back at the
//! tail, and a zone below its watermark is skipped. The Reported flag is
//! only ever on free memory the host has discarded (rule 4 keeps more of
//! it than Linux, never less precise: `memserver/tests/model.rs` checks it
//! page by page). The policy decides which zones and orders a pass
//! visits, how many batches it may send, and which free block an
//! allocation takes.

use crate::core::MemCore;
use crate::{MAX_ORDER, MAX_ZONES, Tunables};

#[derive(Debug, Clone, Copy, Default)]
struct ZoneAge {
    /// Pages allocated in the zone since boot (wrapping).
    allocated: u64,
    /// `allocated` at the worker's last look.
    mark: u64,
    /// How long the zone has stayed quiet, by the worker's timer.
    quiet_ns: u64,
    /// Hysteresis: the zone needs `delay_ns << backoff` of quiet.
    backoff: u8,
    /// Time since the zone's last Linux-paced visit (rule 0), busy or not.
    paced_ns: u64,
    /// Reported pages the zone allocated since boot (wrapping): churn.
    refaulted: u64,
    /// A batch of the zone was sent, and the zone has neither allocated
    /// reported pages since (the report was churn: back off) nor gone its
    /// needed quiet time without doing so (the report stuck: come back).
    probation: bool,
    /// Time since the batch that started the probation.
    since_report_ns: u64,
    /// Pages of the batches sent since the probation started.
    probation_reported: u64,
    /// `refaulted` when the probation started.
    probation_mark: u64,
    /// The epoch of the zone's last visit (any plan but `Defer`).
    visit_epoch: u32,
}

/// Per-zone activity as the adaptive policy sees it.
#[derive(Debug)]
pub(crate) struct Ages {
    zones: [ZoneAge; MAX_ZONES],
    /// The interval the armed timer measures.
    armed_ns: u64,
    /// The worker's looks so far: the clock of the free path's stamps
    /// (meta.rs). Starts at 1; blocks seeded at boot carry 0.
    epoch: u32,
}

/// What a pass does with a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Busy (or not quiet for the delay yet), and paced a moment ago: skip
    /// it this pass.
    Defer,
    /// Rule 0: not quiet, but a delay since its last paced visit: Linux's
    /// pass (from `reporting_order`, 1/`budget_divisor` of each list).
    Paced,
    /// Report every unreported block from this order up, without budget.
    Report { first_order: u8 },
}

impl Ages {
    pub(crate) const fn new() -> Ages {
        Ages {
            zones: [ZoneAge {
                allocated: 0,
                mark: 0,
                quiet_ns: 0,
                backoff: 0,
                paced_ns: 0,
                refaulted: 0,
                probation: false,
                since_report_ns: 0,
                probation_reported: 0,
                probation_mark: 0,
                visit_epoch: 0,
            }; MAX_ZONES],
            armed_ns: 0,
            epoch: 1,
        }
    }

    /// The allocation path: `pages` left zone `z`'s free lists, taking
    /// the Reported flag off `refaulted` pages.
    #[inline(always)]
    pub(crate) fn allocated(&mut self, z: usize, pages: u64, refaulted: u64) {
        let a = &mut self.zones[z];
        a.allocated = a.allocated.wrapping_add(pages);
        a.refaulted = a.refaulted.wrapping_add(refaulted);
    }

    fn busy(&self, z: usize, tun: &Tunables) -> bool {
        let a = &self.zones[z];
        a.allocated.wrapping_sub(a.mark) > tun.busy_pages
    }

    /// The quiet time zone `z` needs before it is reported: the delay,
    /// doubled per step of back-off.
    pub(crate) fn need_ns(&self, z: usize, tun: &Tunables) -> u64 {
        let shift = self.zones[z].backoff.min(tun.backoff_max);
        tun.delay_ns.saturating_mul(1u64 << shift)
    }

    /// Is a report still on probation? The worker keeps looking until it
    /// knows: the core has no clock but its timer.
    fn watching(&self) -> bool {
        self.zones.iter().any(|a| a.probation)
    }

    /// Look at every zone: a busy one restarts its quiet time; a quiet one
    /// adds `elapsed_ns` to it. A zone on probation that took back more
    /// than `busy_pages` reported pages since it started, and at least
    /// half of what it reported since, backs off one step (churn: the host
    /// discarded what the guest takes back); one that went its needed time
    /// without doing so comes back one step.
    fn look(&mut self, tun: &Tunables, elapsed_ns: u64) {
        self.epoch = self.epoch.wrapping_add(1);
        for z in 0..MAX_ZONES {
            let busy = self.busy(z, tun);
            let need = self.need_ns(z, tun);
            let a = &mut self.zones[z];
            if busy {
                a.quiet_ns = 0;
            } else {
                a.quiet_ns = a.quiet_ns.saturating_add(elapsed_ns);
            }
            if a.probation {
                a.since_report_ns = a.since_report_ns.saturating_add(elapsed_ns);
                let taken = a.refaulted.wrapping_sub(a.probation_mark);
                if taken > tun.busy_pages && taken.saturating_mul(2) >= a.probation_reported {
                    a.probation = false;
                    a.backoff = (a.backoff + 1).min(tun.backoff_max);
                } else if a.since_report_ns >= need {
                    a.probation = false;
                    a.backoff = a.backoff.saturating_sub(1);
                }
            }
            a.paced_ns = a.paced_ns.saturating_add(elapsed_ns);
            a.mark = a.allocated;
        }
    }

    /// A batch of `pages` of zone `z` goes to the device: a probation
    /// starts unless one runs, and counts them.
    pub(crate) fn sent(&mut self, z: usize, pages: u64) {
        let a = &mut self.zones[z];
        if !a.probation {
            a.probation = true;
            a.since_report_ns = 0;
            a.probation_reported = 0;
            a.probation_mark = a.refaulted;
        }
        a.probation_reported = a.probation_reported.saturating_add(pages);
    }

    /// A pass walks zone `z` (any plan but `Defer`): its paced clock
    /// restarts, as Linux's delay does after a pass.
    /// Returns from which epoch on a block freed in the zone is too young
    /// to report: `Some` for a busy zone's paced walk (rule 0) and for a
    /// zone backed off for churn (rule 2), whose walks then skip blocks
    /// freed since the zone's previous visit.
    pub(crate) fn visited(&mut self, z: usize, paced: bool) -> Option<u32> {
        let a = &mut self.zones[z];
        a.paced_ns = 0;
        let young_from = (paced || a.backoff > 0).then_some(a.visit_epoch);
        a.visit_epoch = self.epoch;
        young_from
    }

    /// The free path's clock (meta.rs).
    #[inline(always)]
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Was a block freed at `freed` too young for a walk that skips
    /// blocks from `young_from` on? (Wrapping: epochs advance once per
    /// look, so 2^31 looks apart never meet.)
    pub(crate) fn too_young(freed: u32, young_from: u32) -> bool {
        (freed.wrapping_sub(young_from) as i32) >= 0
    }

    /// The timer is armed for `ns`. The time since the last look is not
    /// known (the worker may have been idle), so it counts as nothing; a
    /// zone that allocated since then starts its quiet time now.
    pub(crate) fn armed(&mut self, tun: &Tunables, ns: u64) {
        self.look(tun, 0);
        self.armed_ns = ns;
    }

    /// The armed timer expired: `armed_ns` passed.
    pub(crate) fn expired(&mut self, tun: &Tunables) {
        self.look(tun, self.armed_ns);
    }

    /// Rules 0-3 for zone `z` at the start of its walk.
    pub(crate) fn plan(&self, z: usize, tun: &Tunables) -> Plan {
        let a = &self.zones[z];
        let q = a.quiet_ns;
        let need = self.need_ns(z, tun);
        if q < need {
            if a.paced_ns >= need {
                Plan::Paced
            } else {
                Plan::Defer
            }
        } else if q >= tun.age_ns {
            Plan::Report {
                first_order: tun.lowest_order(),
            }
        } else {
            Plan::Report {
                first_order: tun.reporting_order,
            }
        }
    }

    /// Rule 2 during a pass: zone `z` allocates again, stop its walk.
    pub(crate) fn resumed(&self, z: usize, tun: &Tunables) -> bool {
        self.busy(z, tun)
    }

    /// How soon the worker looks again while something waits.
    pub(crate) fn tick_ns(tun: &Tunables) -> u64 {
        (tun.delay_ns / 4).max(1)
    }
}

impl MemCore<'_> {
    /// Does a zone above its watermark hold unreported free blocks of an
    /// order this policy reports, or is a report on probation? Then the
    /// worker keeps looking.
    pub(crate) fn adaptive_pending(&self, tun: &Tunables) -> bool {
        let lo = usize::from(tun.lowest_order());
        self.worker.ages.watching()
            || self.zones[..self.nr_zones].iter().any(|z| {
                let s = &z.stats;
                // Only blocks an isolation may take: every isolation keeps the
                // zone at the low watermark (issue 16), so a block that would
                // cross it is not pending, or the worker would tick forever.
                s.free_pages >= tun.zone_threshold()
                    && (lo..=usize::from(MAX_ORDER)).any(|o| {
                        s.free_blocks[o] > s.reported_blocks[o]
                            && s.free_pages >= tun.low_watermark_pages + (1u64 << o)
                    })
            })
    }
}
