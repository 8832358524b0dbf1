//! The `adaptive` reporting policy: Linux's worker, isolation, drain and
//! watermark (`reporting.rs`), and rules of its own about *which* free
//! blocks to report and *when*.
//!
//! Linux paces every zone the same way whatever it is doing: a full delay
//! after a request, then 1/16 of each free list per pass, a delay apart,
//! taken from the list heads. So 1 GiB freed at once needs ~5 passes
//! (~10 s); blocks freed below `reporting_order` never come back; and what
//! a pass reports are the blocks freed last, which LIFO free lists hand
//! out first: a workload that cycles its memory faults them back in. The
//! signals Linux lacks are how long each free block has stayed free, and
//! whether the zone is still using its memory. This policy measures both:
//! the free path stamps each block with the worker's *epoch* (a count of
//! its looks, kept in a tail frame's unused links, `meta.rs`), the worker
//! remembers when each recent epoch began by its own clock (the timer
//! intervals that expired: the core has no other clock, and idle time is
//! not counted, so an age is never overestimated), and the allocation path
//! counts pages allocated per zone (one add). The worker looks every
//! `delay_ns / 4` (a *tick*) while a zone holds unreported blocks or a
//! report is on probation, and a request arms a tick, not the delay (the
//! boot pass alone waits the delay, as Linux's: the guests starting
//! meanwhile take memory that is not discarded). A
//! zone is *quiet* while it allocates at most `busy_pages` between two
//! looks; its quiet time is the sum of the ticks it stayed quiet.
//!
//! Each zone *needs* `delay_ns << backoff` (rule 2; one delay unless it
//! churned).
//!
//! 0. **Cold blocks, whatever the zone does.** At every tick, a zone not
//!    quiet for its needed time has its blocks of `reporting_order` and up
//!    that have stayed free for a quarter of that (one tick, unless backed
//!    off) reported, without budget and not stopped by allocations. A
//!    block that stayed free that long while the zone went on allocating
//!    is not the next one allocated (the lists are LIFO), and a build's
//!    memory curve, whose compilers exit and start all along, keeps its
//!    free memory for seconds at a time: a cargo build keeps 1 % less
//!    host memory than under Linux this way, and a C++ build 3 % less
//!    (Linux reports the freshest blocks once per delay; waiting for the
//!    whole zone to go quiet, this policy kept 4-17 % *more* than Linux).
//!    What was freed in the last tick is passed over: the likeliest to be
//!    allocated again. A block freed next to a reported buddy merges with
//!    it (the merged block is unreported, as in Linux, and young again)
//!    but goes to the tail of its list instead of the head: part of it is
//!    discarded, and the allocator then takes its order's fully resident
//!    blocks first, so a cycling workload keeps to the pages it has
//!    instead of wandering, merge by merge, into the cold ones
//!    (`merge_insert`).
//! 1. **Quiet for the needed time: everything in one pass.** A zone quiet
//!    for its needed time gets every unreported block of order >=
//!    `reporting_order` reported, the youngest too, paced only by the
//!    device's completions (`max_in_flight` batches at a time). If the
//!    zone starts allocating during such a pass, its walk stops at once
//!    (as Linux's budget running out: the list is rotated and the state
//!    stays REQUESTED) and rule 0 takes over.
//! 2. **Churn: back off.** A workload that cycles its memory slower than
//!    a tick gets the blocks it will reuse a moment later reported, so
//!    the host discards them and the guest faults them back in. The
//!    allocation path counts the reported pages each zone takes back (the
//!    drop of the zone's reported pages across an allocation: one
//!    subtract). A report starts a *probation* of the zone's needed time;
//!    a zone that takes back more than `churn_pages_per_s` over it backs
//!    off one step, and one more per doubling of that rate, each step
//!    doubling its needed time (and so rule 0's age and rule
//!    1's quiet time), up to `backoff_max` steps; a probation that ends
//!    without it comes back one step. Each page taken back costs a guest
//!    fault and a zeroed host page; the default (128 MiB/s) lets a build's
//!    compilers take back what they take (at most ~140 MiB/s over any two
//!    seconds on the recorded C++ build, ~40 MiB/s on the cargo build, by
//!    `guest/traces/age_model.py`) and stops a workload cycling hundreds
//!    of MiB a second. While backed off, rule 1 too passes over blocks
//!    younger than rule 0's age. A batch of memory no client has held
//!    since boot starts no probation: the first allocations take the boot
//!    report back whatever the policy does.
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
    /// Rule 2: the zone needs `delay_ns << backoff`.
    backoff: u8,
    /// Reported pages the zone allocated since boot (wrapping): churn.
    refaulted: u64,
    /// A batch of the zone was sent less than its needed time ago, and
    /// the zone has not taken back more than `churn_pages_per_s` allows
    /// since (rule 2).
    probation: bool,
    /// Time since the batch that started the probation.
    since_report_ns: u64,
    /// `refaulted` when the probation started.
    probation_mark: u64,
}

/// Per-zone activity as the adaptive policy sees it.
#[derive(Debug)]
pub(crate) struct Ages {
    zones: [ZoneAge; MAX_ZONES],
    /// The interval the armed timer measures.
    armed_ns: u64,
    /// The worker's looks so far: the free path stamps each block with it
    /// (meta.rs). Starts at 1 and skips 0 when it wraps: blocks seeded at
    /// boot carry [`Ages::BOOT_EPOCH`].
    epoch: u32,
    /// The worker's clock: the sum of the timer intervals that expired
    /// (time the worker was idle is not counted, so an age read from it
    /// is never overestimated).
    clock_ns: u64,
    /// `clock_ns` when each of the last [`EPOCHS`] epochs began.
    epoch_start_ns: [u64; EPOCHS],
}

/// Epochs whose start the worker remembers; a block freed before the
/// oldest of them is at least as old as that epoch.
const EPOCHS: usize = 128;

/// What a pass does with a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Rule 0: not quiet for its needed time: report the blocks of
    /// `reporting_order` and up that have stayed free for at least
    /// `min_age_ns`, without budget and whatever the zone allocates.
    Cold { min_age_ns: u64 },
    /// Rules 1 and 3: report every unreported block from `first_order` up,
    /// without budget, until the zone allocates again; a zone backed off
    /// for churn only those free for at least `min_age_ns`.
    Report {
        first_order: u8,
        min_age_ns: Option<u64>,
    },
}

impl Ages {
    /// The stamp of memory no client has held since boot.
    pub(crate) const BOOT_EPOCH: u32 = 0;

    pub(crate) const fn new() -> Ages {
        Ages {
            zones: [ZoneAge {
                allocated: 0,
                mark: 0,
                quiet_ns: 0,
                backoff: 0,
                refaulted: 0,
                probation: false,
                since_report_ns: 0,
                probation_mark: 0,
            }; MAX_ZONES],
            armed_ns: 0,
            epoch: 1,
            clock_ns: 0,
            epoch_start_ns: [0; EPOCHS],
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
    /// reported pages since it started than `churn_pages_per_s` allows
    /// over its needed time backs off one step, and one more per doubling
    /// beyond it (churn: the host discarded what the guest takes back,
    /// faster than the refaults are worth); one that went its needed time
    /// without doing so comes back one step.
    fn look(&mut self, tun: &Tunables, elapsed_ns: u64) {
        self.clock_ns = self.clock_ns.saturating_add(elapsed_ns);
        self.epoch = self.epoch.wrapping_add(1).max(1);
        self.epoch_start_ns[self.epoch as usize % EPOCHS] = self.clock_ns;
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
                let allowed = tun.churn_pages(need);
                if taken > allowed {
                    // One step, and one more per doubling of the rate
                    // beyond it: a cycle of hundreds of MiB a second is
                    // slowed at once, not over as many probations.
                    let mut steps = 1u8;
                    while steps < tun.backoff_max && taken > allowed.saturating_mul(1 << steps) {
                        steps += 1;
                    }
                    a.probation = false;
                    a.backoff = a.backoff.saturating_add(steps).min(tun.backoff_max);
                } else if a.since_report_ns >= need {
                    a.probation = false;
                    a.backoff = a.backoff.saturating_sub(1);
                }
            }
            a.mark = a.allocated;
        }
    }

    /// A batch of zone `z` goes to the device: a probation starts unless
    /// one runs.
    pub(crate) fn sent(&mut self, z: usize) {
        let a = &mut self.zones[z];
        if !a.probation {
            a.probation = true;
            a.since_report_ns = 0;
            a.probation_mark = a.refaulted;
        }
    }

    /// The free path's stamp (meta.rs).
    #[inline(always)]
    pub(crate) fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Has a block stamped `freed` (the epoch it was freed in) stayed free
    /// for at least `min_age_ns` of the worker's clock? It was freed before
    /// the next epoch began, so that start bounds its age from below; a
    /// block older than the epochs remembered is as old as the oldest.
    pub(crate) fn cold(&self, freed: u32, min_age_ns: u64) -> bool {
        if freed == self.epoch {
            return min_age_ns == 0;
        }
        let back = self.epoch.wrapping_sub(freed) as usize;
        let after = if back >= EPOCHS {
            self.epoch.wrapping_sub(EPOCHS as u32 - 1)
        } else {
            // The epoch after u32::MAX is 1 (0 is the boot stamp).
            freed.wrapping_add(1).max(1)
        };
        let freed_by = self.epoch_start_ns[after as usize % EPOCHS];
        self.clock_ns.saturating_sub(freed_by) >= min_age_ns
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
        // Rule 0's age, and rule 1's while backed off for churn: a tick, or
        // once the zone churned, its whole needed time.
        let backed_off = a.backoff.min(tun.backoff_max) > 0;
        let min_age_ns = if backed_off { need } else { Self::tick_ns(tun) };
        if q < need {
            Plan::Cold { min_age_ns }
        } else {
            Plan::Report {
                first_order: if q >= tun.age_ns {
                    tun.lowest_order()
                } else {
                    tun.reporting_order
                },
                min_age_ns: backed_off.then_some(min_age_ns),
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
