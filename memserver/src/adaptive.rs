//! The `adaptive` reporting policy: Linux's worker, isolation, drain and
//! watermark (`reporting.rs`), with three rules of its own about *when* and
//! *how much* to report.
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
//! 1. **Quiet for the delay: everything in one pass.** A zone quiet for at
//!    least `delay_ns` gets no budget: the pass isolates every unreported
//!    block of order >= `reporting_order`, paced only by the device's
//!    completions (`max_in_flight` batches at a time).
//! 2. **Busy: wait, and back off.** A zone that allocated more than
//!    `busy_pages` since the last look is not visited, and the worker looks
//!    again every `delay_ns / 4` until it has stayed quiet for the delay.
//!    If a zone starts allocating during a pass, its walk stops at once
//!    (as Linux's budget running out: the list is rotated and the state
//!    stays REQUESTED). Memory a workload is cycling through is thus not
//!    discarded only to be faulted back in.
//!
//!    **Hysteresis under churn.** A workload that cycles its memory can
//!    still pause longer than the delay (touching, verifying) and get the
//!    blocks it will reuse a moment later reported, so the host discards
//!    them and the guest faults them back in. So a zone that turns busy
//!    again after a batch of it was sent, before it stayed quiet for its
//!    delay once more, doubles the quiet time it needs (`delay_ns <<
//!    backoff`, `backoff` up to `backoff_max`); a report that sticks (the
//!    zone stays quiet for that long after it) halves it again. Linux has
//!    no such signal; the cost is bounded: a zone needs at most
//!    `delay_ns << backoff_max` of quiet.
//! 3. **Ageing: quiet long enough, small blocks too.** Once a zone has
//!    stayed quiet for `age_ns`, the walk starts at `quiet_order` instead
//!    of `reporting_order`, so memory freed in small blocks (a fragmented
//!    heap) comes back too. Small frees request reporting (the free path's
//!    notify order is `quiet_order`, still one compare), and the worker
//!    keeps ticking while a zone above its watermark holds unreported
//!    blocks, so nothing free is left behind.
//!
//! Safety is Linux's, unchanged: blocks are isolated and drained by the
//! same code, so isolated blocks are never allocatable, drained blocks go
//! back at the tail and are marked Reported only when unmerged, and a zone
//! below its watermark is skipped. The policy only decides which zones and
//! orders a pass visits and how many batches it may send.

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
    /// `quiet_ns` when a batch of the zone was last sent, until the zone
    /// turns busy (the report was churn: back off) or stays quiet for its
    /// delay after it (the report stuck: come back).
    reported_at: Option<u64>,
}

/// Per-zone activity as the adaptive policy sees it.
#[derive(Debug)]
pub(crate) struct Ages {
    zones: [ZoneAge; MAX_ZONES],
    /// The interval the armed timer measures.
    armed_ns: u64,
}

/// What a pass does with a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Busy (or not quiet for the delay yet): skip it this pass.
    Defer,
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
                reported_at: None,
            }; MAX_ZONES],
            armed_ns: 0,
        }
    }

    /// The allocation path: `pages` left zone `z`'s free lists.
    #[inline(always)]
    pub(crate) fn allocated(&mut self, z: usize, pages: u64) {
        let a = &mut self.zones[z];
        a.allocated = a.allocated.wrapping_add(pages);
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

    /// Is a report still on probation (its zone neither turned busy nor
    /// stayed quiet for its delay since)? The worker keeps looking until
    /// it knows: an allocation long after the report is not churn, and
    /// the core has no clock but its timer.
    fn watching(&self) -> bool {
        self.zones.iter().any(|a| a.reported_at.is_some())
    }

    /// Look at every zone: a busy one restarts its quiet time (and backs
    /// off if it was reported since it was last busy), a quiet one adds
    /// `elapsed_ns` to it (and comes back one step once a report of it
    /// stuck for its delay).
    fn look(&mut self, tun: &Tunables, elapsed_ns: u64) {
        for z in 0..MAX_ZONES {
            let busy = self.busy(z, tun);
            let need = self.need_ns(z, tun);
            let a = &mut self.zones[z];
            if busy {
                a.quiet_ns = 0;
                if a.reported_at.take().is_some() {
                    a.backoff = (a.backoff + 1).min(tun.backoff_max);
                }
            } else {
                a.quiet_ns = a.quiet_ns.saturating_add(elapsed_ns);
                if let Some(at) = a.reported_at
                    && a.quiet_ns >= at.saturating_add(need)
                {
                    a.reported_at = None;
                    a.backoff = a.backoff.saturating_sub(1);
                }
            }
            a.mark = a.allocated;
        }
    }

    /// A batch of zone `z`'s blocks goes to the device.
    pub(crate) fn sent(&mut self, z: usize) {
        let a = &mut self.zones[z];
        a.reported_at.get_or_insert(a.quiet_ns);
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

    /// Rules 1-3 for zone `z` at the start of its walk.
    pub(crate) fn plan(&self, z: usize, tun: &Tunables) -> Plan {
        let q = self.zones[z].quiet_ns;
        if q < self.need_ns(z, tun) {
            Plan::Defer
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
