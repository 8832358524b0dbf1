//! A VM's balloon, as the memserver sees it (issue 14): the outer host's
//! balloon target reaches the VM. When the outer balloon wants more than
//! the native zones can give, the memserver raises the VM's balloon target
//! (the VMM sets its device's `num_pages` and interrupts the guest); the
//! pages the VM's OS puts in its balloon are handed to the outer balloon as
//! blocks; a deflate by the outer host lowers the VM's target, and the VM's
//! own deflates (toward a lower target, or on OOM) come back here.
//!
//! Two bits per page of the VM's RAM:
//! - *held*: the VM's OS has the page in its balloon (it inflated it and has
//!   not deflated it);
//! - *passed*: the outer balloon holds the page (handed out by
//!   [`VmBalloon::take`], not yet returned by [`VmBalloon::returned`]).
//!
//! Only held pages are handed out, so the outer host never discards a page
//! the VM uses. The VM's OS chooses which pages it deflates, and the outer
//! balloon which blocks it returns: the two need not agree. A page the VM
//! takes back while the outer balloon still holds it is *owed*: the server
//! asks the outer balloon to release the aligned window of
//! [`RELEASE_PAGES`] around it (every block it passed there lies inside
//! one), and the VMM holds the VM's deflate until none of its pages is
//! passed, so the VM never writes a page the outer host may still
//! discard. What the release returns that the VM still holds is free to
//! hand out again.
//!
//! The VMM is hostile: a message naming a page outside the VM's RAM, an
//! inflate of a held page, a deflate of a page not held, or more than
//! [`VM_BALLOON_PAGES`] pages is refused whole and changes nothing. Work per
//! message is bounded by that page count.

use crate::nested::PageRange;
use memserver_api::{Block, MAX_ORDER, VM_BALLOON_PAGES, VmRefuse, VmStats};

/// The window released around an owed page: a block of [`MAX_ORDER`],
/// the largest the memserver hands out, so every block passed that holds
/// the page lies inside it (blocks are naturally aligned).
pub const RELEASE_PAGES: u64 = 1 << MAX_ORDER;

/// `u64` words of bitmap needed for `pages` pages (per bitmap).
pub const fn bitmap_words(pages: u64) -> usize {
    pages.div_ceil(64) as usize
}

/// What the VM's balloon counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmBalloonCounters {
    /// Pages the VM's OS inflated and deflated.
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    /// Pages handed to the outer balloon, and returned by it.
    pub passed_pages: u64,
    pub returned_pages: u64,
    /// Messages refused.
    pub refused: u64,
    /// Pages the VM took back while the outer balloon held them.
    pub owed_pages: u64,
    /// Target changes sent to the VMM.
    pub targets_set: u64,
    /// Statistics taken.
    pub stats_updates: u64,
    /// Passed pages the outer balloon said it did not hold.
    pub forgotten_pages: u64,
}

/// The memserver's view of one VM's balloon.
#[derive(Debug)]
pub struct VmBalloon<'a> {
    zone: PageRange,
    held: &'a mut [u64],
    passed: &'a mut [u64],
    held_pages: u64,
    passed_pages: u64,
    /// `passed && !held`.
    owed_pages: u64,
    /// Pages asked of the VM's OS (its device's `num_pages`).
    target: u64,
    /// Where [`VmBalloon::take`] looks next (a page index).
    cursor: u64,
    /// The VM's latest statistics.
    stats: Option<VmStats>,
    pub counters: VmBalloonCounters,
}

fn bit(map: &[u64], i: u64) -> bool {
    map[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set(map: &mut [u64], i: u64, on: bool) {
    let w = &mut map[(i / 64) as usize];
    if on {
        *w |= 1 << (i % 64);
    } else {
        *w &= !(1 << (i % 64));
    }
}

impl<'a> VmBalloon<'a> {
    /// The balloon of the VM whose RAM is `zone`; `held` and `passed` are
    /// its bitmaps, [`bitmap_words`] each (zeroed here). `None` when they
    /// are too small.
    pub fn new(zone: PageRange, held: &'a mut [u64], passed: &'a mut [u64]) -> Option<Self> {
        let words = bitmap_words(zone.pages);
        if held.len() < words || passed.len() < words {
            return None;
        }
        held.fill(0);
        passed.fill(0);
        Some(VmBalloon {
            zone,
            held,
            passed,
            held_pages: 0,
            passed_pages: 0,
            owed_pages: 0,
            target: 0,
            cursor: 0,
            stats: None,
            counters: VmBalloonCounters::default(),
        })
    }

    /// The VM's RAM.
    pub fn zone(&self) -> PageRange {
        self.zone
    }

    /// Pages in the VM's balloon (held).
    pub fn held_pages(&self) -> u64 {
        self.held_pages
    }

    /// Pages the outer balloon holds.
    pub fn passed_pages(&self) -> u64 {
        self.passed_pages
    }

    /// Held pages not handed out yet.
    pub fn unpassed_pages(&self) -> u64 {
        self.held_pages - (self.passed_pages - self.owed_pages)
    }

    /// Pages the VM uses that the outer balloon still holds.
    pub fn owed_pages(&self) -> u64 {
        self.owed_pages
    }

    /// The target last asked of the VM.
    pub fn target(&self) -> u64 {
        self.target
    }

    /// The VM's latest statistics.
    pub fn stats(&self) -> Option<VmStats> {
        self.stats
    }

    /// Page indices of `ranges` (absolute frames), checked: inside the
    /// zone, not empty, at most [`VM_BALLOON_PAGES`] pages in all.
    fn check_ranges(&self, ranges: &[PageRange]) -> Result<(), VmRefuse> {
        if ranges.is_empty() {
            return Err(VmRefuse::BadLength);
        }
        let mut total = 0u64;
        for r in ranges {
            if r.pages == 0 {
                return Err(VmRefuse::Empty);
            }
            let inside = r.pfn >= self.zone.pfn
                && r.pfn
                    .checked_add(r.pages)
                    .is_some_and(|e| e <= self.zone.pfn + self.zone.pages);
            if !inside {
                return Err(VmRefuse::OutsideRam);
            }
            total = total.saturating_add(r.pages);
            if total > VM_BALLOON_PAGES {
                return Err(VmRefuse::TooManyPages);
            }
        }
        Ok(())
    }

    /// The page indices of `ranges` (checked: inside the zone based at
    /// frame `base`).
    fn pages_of(base: u64, ranges: &[PageRange]) -> impl Iterator<Item = u64> + '_ {
        ranges
            .iter()
            .flat_map(move |r| (r.pfn - base)..(r.pfn - base + r.pages))
    }

    /// Whether some page occurs twice in `ranges` (checked ranges).
    fn repeats(ranges: &[PageRange]) -> bool {
        ranges.iter().enumerate().any(|(i, a)| {
            ranges[..i]
                .iter()
                .any(|b| a.pfn < b.pfn + b.pages && b.pfn < a.pfn + a.pages)
        })
    }

    fn refuse(&mut self, why: VmRefuse) -> Result<u64, VmRefuse> {
        self.counters.refused += 1;
        Err(why)
    }

    /// The VM's OS inflated `ranges`: held from now. Every page must be
    /// in the zone and not held. Returns the pages taken.
    pub fn inflated(&mut self, ranges: &[PageRange]) -> Result<u64, VmRefuse> {
        if let Err(e) = self.check_ranges(ranges) {
            return self.refuse(e);
        }
        let base = self.zone.pfn;
        if Self::repeats(ranges) || Self::pages_of(base, ranges).any(|i| bit(self.held, i)) {
            return self.refuse(VmRefuse::BalloonState);
        }
        let mut n = 0;
        for i in Self::pages_of(base, ranges) {
            set(self.held, i, true);
            if bit(self.passed, i) {
                // Owed, and back in the balloon: consistent again.
                self.owed_pages -= 1;
            }
            n += 1;
        }
        self.held_pages += n;
        self.counters.inflated_pages += n;
        Ok(n)
    }

    /// The VM's OS deflated `ranges`: every page must be held. Returns the
    /// pages that became owed (the outer balloon still holds them).
    pub fn deflated(&mut self, ranges: &[PageRange]) -> Result<u64, VmRefuse> {
        if let Err(e) = self.check_ranges(ranges) {
            return self.refuse(e);
        }
        let base = self.zone.pfn;
        if Self::repeats(ranges) || Self::pages_of(base, ranges).any(|i| !bit(self.held, i)) {
            return self.refuse(VmRefuse::BalloonState);
        }
        let (mut n, mut owed) = (0, 0);
        for i in Self::pages_of(base, ranges) {
            set(self.held, i, false);
            owed += u64::from(bit(self.passed, i));
            n += 1;
        }
        self.held_pages -= n;
        self.owed_pages += owed;
        self.counters.deflated_pages += n;
        self.counters.owed_pages += owed;
        Ok(owed)
    }

    /// Whether page `i` may be handed out: held, not passed.
    fn passable(&self, i: u64) -> bool {
        bit(self.held, i) && !bit(self.passed, i)
    }

    /// Hand up to `max_pages` held pages not yet passed to the outer
    /// balloon, as naturally aligned blocks (at most `max_blocks`, each at
    /// most [`MAX_ORDER`]) appended to `out`. Returns the pages handed.
    pub fn take(&mut self, max_pages: u64, max_blocks: usize, out: &mut impl Extend<Block>) -> u64 {
        let mut taken = 0;
        let mut blocks = 0;
        let total = self.zone.pages;
        if total == 0 {
            return 0;
        }
        let mut scanned = 0;
        while taken < max_pages
            && blocks < max_blocks
            && self.unpassed_pages() > 0
            && scanned < total
        {
            let i = self.cursor % total;
            if !self.passable(i) {
                self.cursor = (i + 1) % total;
                scanned += 1;
                continue;
            }
            // The largest aligned block of such pages starting at `i`.
            let pfn = self.zone.pfn + i;
            let mut order = 0u8;
            while order < MAX_ORDER {
                let next = order + 1;
                let size = 1u64 << next;
                if !pfn.is_multiple_of(size) || i + size > total || size > max_pages - taken {
                    break;
                }
                let all = (i + (1 << order)..i + size).all(|j| self.passable(j));
                if !all {
                    break;
                }
                order = next;
            }
            let n = 1u64 << order;
            for j in i..i + n {
                set(self.passed, j, true);
            }
            self.passed_pages += n;
            taken += n;
            blocks += 1;
            out.extend(core::iter::once(Block { pfn, order }));
            self.cursor = (i + n) % total;
            scanned += n;
        }
        self.counters.passed_pages += taken;
        taken
    }

    /// Whether `b` may come back from the outer balloon: inside the zone,
    /// aligned, and every page of it passed.
    pub fn can_return(&self, b: &Block) -> bool {
        let Some(i) = b.pfn.checked_sub(self.zone.pfn) else {
            return false;
        };
        b.order <= MAX_ORDER
            && b.pfn.is_multiple_of(b.pages())
            && i + b.pages() <= self.zone.pages
            && (i..i + b.pages()).all(|j| bit(self.passed, j))
    }

    /// The outer balloon gave `b` back ([`VmBalloon::can_return`] said
    /// so). Returns `(still_held, owed_paid)`: pages of it the VM still
    /// holds (free to hand out again), and owed pages settled.
    pub fn returned(&mut self, b: &Block) -> (u64, u64) {
        if !self.can_return(b) {
            return (0, 0);
        }
        let i = b.pfn - self.zone.pfn;
        let (mut held, mut paid) = (0, 0);
        for j in i..i + b.pages() {
            set(self.passed, j, false);
            if bit(self.held, j) {
                held += 1;
            } else {
                paid += 1;
            }
        }
        self.passed_pages -= b.pages();
        self.owed_pages -= paid;
        self.counters.returned_pages += b.pages();
        (held, paid)
    }

    /// The first page of `r` (absolute frames) that the outer balloon
    /// holds, if any.
    pub fn first_passed(&self, r: &PageRange) -> Option<u64> {
        let start = r.pfn.max(self.zone.pfn);
        let end = (r.pfn.saturating_add(r.pages)).min(self.zone.pfn + self.zone.pages);
        (start..end).find(|&pfn| bit(self.passed, pfn - self.zone.pfn))
    }

    /// The outer balloon says it holds nothing of `r` (it answered a
    /// release of `r` with no block): its pages are no longer passed.
    /// Returns the pages this changed.
    pub fn forget_passed(&mut self, r: &PageRange) -> u64 {
        let start = r.pfn.max(self.zone.pfn);
        let end = (r.pfn.saturating_add(r.pages)).min(self.zone.pfn + self.zone.pages);
        let mut n = 0;
        for pfn in start..end {
            let i = pfn - self.zone.pfn;
            if bit(self.passed, i) {
                set(self.passed, i, false);
                self.passed_pages -= 1;
                if !bit(self.held, i) {
                    self.owed_pages -= 1;
                }
                n += 1;
            }
        }
        self.counters.forgotten_pages += n;
        n
    }

    /// The outer balloon wants `shortfall` pages more than anything could
    /// give now: the new target for the VM, when it grows.
    pub fn want_more(&mut self, shortfall: u64) -> Option<u32> {
        let want = self
            .held_pages
            .saturating_add(shortfall)
            .min(self.zone.pages);
        self.set_target(want.max(self.target))
    }

    /// The outer balloon returned pages: the VM keeps in its balloon only
    /// what the outer one still holds. The new target, when it changed.
    pub fn settle(&mut self) -> Option<u32> {
        let held_and_passed = self.passed_pages - self.owed_pages;
        self.set_target(held_and_passed.min(self.target))
    }

    fn set_target(&mut self, pages: u64) -> Option<u32> {
        if pages == self.target {
            return None;
        }
        self.target = pages;
        self.counters.targets_set += 1;
        Some(u32::try_from(pages).unwrap_or(u32::MAX))
    }

    /// The VM's statistics, clamped to its RAM.
    pub fn take_stats(&mut self, s: VmStats) {
        let clamp = |v: Option<u64>| v.map(|v| v.min(self.zone.pages));
        self.stats = Some(VmStats {
            total_pages: clamp(s.total_pages),
            free_pages: clamp(s.free_pages),
            available_pages: clamp(s.available_pages),
        });
        self.counters.stats_updates += 1;
    }

    /// Check the counts against the bitmaps (tests).
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let (mut held, mut passed, mut owed) = (0, 0, 0);
        for i in 0..self.zone.pages {
            let (h, p) = (bit(self.held, i), bit(self.passed, i));
            held += u64::from(h);
            passed += u64::from(p);
            owed += u64::from(p && !h);
        }
        if held != self.held_pages {
            return Err("held count");
        }
        if passed != self.passed_pages {
            return Err("passed count");
        }
        if owed != self.owed_pages {
            return Err("owed count");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
