//! Nested reporting: the free pages a VM's own OS reports, checked and
//! paced by the memserver (DESIGN §1, the paragraph on VMs; issue 14).
//!
//! A VM's RAM is a *delegated* zone: the guest OS is its own allocator, so
//! the memserver never allocates from it and keeps no free lists for it.
//! Linux inside the VM reports free blocks to the VMM's virtio-balloon; the
//! VMM sends each report here as page ranges. [`Nested`] checks every range
//! before anything is taken (inside the zone, page-aligned by construction,
//! not empty, not overlapping a range already in flight, at most
//! [`MAX_REPORTS`] reports at once), cuts the ranges into aligned blocks the
//! balloon can carry, hands them out as the memserver's policy asks
//! ([`Nested::take`]), and says when a whole report is done
//! ([`Nested::block_done`]) so the VMM can give the buffers back to Linux.
//!
//! The VMM is a client like any other: hostile. A bad report is refused
//! whole and changes nothing; a completion the balloon invents is ignored.

use core::fmt;
use memserver_api::{Block, MAX_ORDER};

/// Reports of one VM in flight at once. Linux has one (page_reporting
/// waits for each); a few more let a VMM pipeline, and a bound keeps a
/// hostile one from holding the memserver's memory.
pub const MAX_REPORTS: usize = 4;
/// Ranges in one report: Linux's PAGE_REPORTING_CAPACITY.
pub const MAX_RANGES: usize = 32;
/// Blocks one range may cut into. Linux reports blocks of its buddy
/// allocator (order 9 or 10 here), one block each; a range that needs more
/// than this is refused rather than trusted.
pub const MAX_BLOCKS_PER_RANGE: usize = 64;
/// Blocks of one report.
const MAX_BLOCKS: usize = MAX_RANGES * 2;

/// A guest-physical page range the VM reported free (absolute PFNs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    pub pfn: u64,
    pub pages: u64,
}

impl PageRange {
    fn end(&self) -> Option<u64> {
        self.pfn.checked_add(self.pages)
    }
}

/// Why a report was refused (nothing of it was taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NestedError {
    /// No ranges, or more than [`MAX_RANGES`].
    BadLength(usize),
    /// A range of zero pages.
    Empty { pfn: u64 },
    /// A range (partly) outside the VM's zone.
    OutsideZone { pfn: u64, pages: u64 },
    /// A range overlapping another of the same report or one in flight.
    Overlap { pfn: u64 },
    /// A range that cuts into more than [`MAX_BLOCKS_PER_RANGE`] blocks,
    /// or a report into more blocks than one report holds.
    TooFragmented { pfn: u64 },
    /// [`MAX_REPORTS`] reports are in flight already.
    Busy,
    /// A report with this id is in flight.
    DuplicateId(u32),
}

impl fmt::Display for NestedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NestedError::BadLength(n) => {
                write!(f, "a report of {n} ranges (1..={MAX_RANGES} allowed)")
            }
            NestedError::Empty { pfn } => write!(f, "an empty range at pfn {pfn:#x}"),
            NestedError::OutsideZone { pfn, pages } => {
                write!(
                    f,
                    "range {pfn:#x}+{pages:#x} pages lies outside the VM's zone"
                )
            }
            NestedError::Overlap { pfn } => {
                write!(f, "range at pfn {pfn:#x} overlaps one already reported")
            }
            NestedError::TooFragmented { pfn } => {
                write!(f, "range at pfn {pfn:#x} cuts into too many blocks")
            }
            NestedError::Busy => write!(f, "{MAX_REPORTS} reports of this VM are in flight"),
            NestedError::DuplicateId(id) => write!(f, "report {id} is already in flight"),
        }
    }
}

/// Cut `r` into the largest naturally aligned blocks of at most
/// [`MAX_ORDER`] (what the balloon's reporting queue carries, and what the
/// host discards at its page size); `None` when more than `max` are needed.
pub fn blocks_of(r: PageRange, max: usize, out: &mut impl Extend<Block>) -> Option<usize> {
    let mut pfn = r.pfn;
    let end = r.end()?;
    let mut n = 0;
    while pfn < end {
        let align = if pfn == 0 {
            MAX_ORDER
        } else {
            pfn.trailing_zeros().min(u32::from(MAX_ORDER)) as u8
        };
        let left = end - pfn;
        let fit = (63 - left.leading_zeros()).min(u32::from(MAX_ORDER)) as u8;
        let order = align.min(fit);
        n += 1;
        if n > max {
            return None;
        }
        out.extend(core::iter::once(Block { pfn, order }));
        pfn += 1u64 << order;
    }
    Some(n)
}

#[derive(Debug, Clone)]
struct Report {
    id: u32,
    ranges: heapless::Vec<PageRange, MAX_RANGES>,
    blocks: heapless::Vec<Block, MAX_BLOCKS>,
    /// Blocks handed out so far (a prefix of `blocks`).
    taken: usize,
    /// Blocks the balloon finished, and whether any failed.
    done: usize,
    failed: bool,
    /// Which blocks are done (by index), so a duplicate completion counts once.
    done_mask: u64,
}

/// What nested reporting counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NestedCounters {
    pub reports: u64,
    pub refused: u64,
    pub reported_pages: u64,
    pub failed_reports: u64,
    /// Completions for blocks not in flight (ignored).
    pub stray_completions: u64,
}

/// The nested reports of one VM.
#[derive(Debug, Clone)]
pub struct Nested {
    zone: PageRange,
    reports: heapless::Vec<Report, MAX_REPORTS>,
    pub counters: NestedCounters,
}

impl Nested {
    /// Nested reporting for the VM whose RAM is `zone`.
    pub fn new(zone: PageRange) -> Self {
        Nested {
            zone,
            reports: heapless::Vec::new(),
            counters: NestedCounters::default(),
        }
    }

    /// The VM's zone.
    pub fn zone(&self) -> PageRange {
        self.zone
    }

    /// Reports in flight.
    pub fn in_flight(&self) -> usize {
        self.reports.len()
    }

    /// Pages of the reports in flight.
    pub fn in_flight_pages(&self) -> u64 {
        self.reports
            .iter()
            .flat_map(|r| r.ranges.iter())
            .map(|r| r.pages)
            .sum()
    }

    /// Whether `r` overlaps a range of a report in flight.
    pub fn in_flight_overlaps(&self, r: &PageRange) -> bool {
        self.overlaps(r, &[])
    }

    fn overlaps(&self, r: &PageRange, own: &[PageRange]) -> bool {
        let end = r.pfn + r.pages;
        self.reports
            .iter()
            .flat_map(|x| x.ranges.iter())
            .chain(own)
            .any(|o| r.pfn < o.pfn + o.pages && o.pfn < end)
    }

    /// Take report `id` of `ranges`, or refuse it whole.
    pub fn submit(&mut self, id: u32, ranges: &[PageRange]) -> Result<(), NestedError> {
        let r = self.check(id, ranges);
        if r.is_err() {
            self.counters.refused += 1;
        }
        r
    }

    fn check(&mut self, id: u32, ranges: &[PageRange]) -> Result<(), NestedError> {
        if ranges.is_empty() || ranges.len() > MAX_RANGES {
            return Err(NestedError::BadLength(ranges.len()));
        }
        if self.reports.iter().any(|r| r.id == id) {
            return Err(NestedError::DuplicateId(id));
        }
        if self.reports.is_full() {
            return Err(NestedError::Busy);
        }
        let zone_end = self.zone.pfn + self.zone.pages;
        let mut report = Report {
            id,
            ranges: heapless::Vec::new(),
            blocks: heapless::Vec::new(),
            taken: 0,
            done: 0,
            failed: false,
            done_mask: 0,
        };
        for r in ranges {
            if r.pages == 0 {
                return Err(NestedError::Empty { pfn: r.pfn });
            }
            let inside = r.pfn >= self.zone.pfn && r.end().is_some_and(|e| e <= zone_end);
            if !inside {
                return Err(NestedError::OutsideZone {
                    pfn: r.pfn,
                    pages: r.pages,
                });
            }
            if self.overlaps(r, &report.ranges) {
                return Err(NestedError::Overlap { pfn: r.pfn });
            }
            let mut cut: heapless::Vec<Block, MAX_BLOCKS_PER_RANGE> = heapless::Vec::new();
            let fits = blocks_of(*r, MAX_BLOCKS_PER_RANGE, &mut cut).is_some()
                && report.blocks.extend_from_slice(&cut).is_ok();
            if !fits {
                return Err(NestedError::TooFragmented { pfn: r.pfn });
            }
            // Cannot fail: at most MAX_RANGES ranges, checked above.
            let _ = report.ranges.push(*r);
        }
        self.counters.reports += 1;
        // Cannot fail: not full, checked above.
        let _ = self.reports.push(report);
        Ok(())
    }

    /// Blocks not yet handed to the balloon.
    pub fn pending_blocks(&self) -> usize {
        self.reports.iter().map(|r| r.blocks.len() - r.taken).sum()
    }

    /// Hand out up to `max` blocks, oldest report first, for the
    /// memserver's next report batch.
    pub fn take(&mut self, max: usize, out: &mut impl Extend<Block>) -> usize {
        let mut n = 0;
        for r in &mut self.reports {
            while n < max && r.taken < r.blocks.len() {
                out.extend(core::iter::once(r.blocks[r.taken]));
                r.taken += 1;
                n += 1;
            }
        }
        n
    }

    /// Give back every block handed out and not finished (the balloon's
    /// batch failed before the device saw it): they go out again.
    pub fn untake(&mut self, block: Block) -> bool {
        for r in &mut self.reports {
            if let Some(i) = r.blocks[..r.taken].iter().position(|b| *b == block)
                && r.done_mask & (1 << i) == 0
            {
                // Move it to the end of the taken prefix, then shrink it.
                r.blocks[i..r.taken].rotate_left(1);
                r.taken -= 1;
                return true;
            }
        }
        false
    }

    /// The balloon finished `block` (`ok`: the host has it). When that
    /// completes a report: its id and whether every block of it went
    /// through, for the VMM to answer Linux.
    pub fn block_done(&mut self, block: Block, ok: bool) -> Option<(u32, bool)> {
        let (ri, bi) = self.reports.iter().enumerate().find_map(|(ri, r)| {
            r.blocks[..r.taken]
                .iter()
                .enumerate()
                .position(|(i, b)| *b == block && r.done_mask & (1 << i) == 0)
                .map(|bi| (ri, bi))
        })?;
        let r = &mut self.reports[ri];
        r.done_mask |= 1 << bi;
        r.done += 1;
        r.failed |= !ok;
        if r.done < r.blocks.len() {
            return None;
        }
        let r = self.reports.remove(ri);
        if r.failed {
            self.counters.failed_reports += 1;
        } else {
            self.counters.reported_pages += r.ranges.iter().map(|x| x.pages).sum::<u64>();
        }
        Some((r.id, !r.failed))
    }

    /// A completion for a block this VM does not have in flight.
    pub fn stray(&mut self) {
        self.counters.stray_completions += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use proptest::prelude::*;
    use std::vec::Vec;

    const ZONE: PageRange = PageRange {
        pfn: 0x8_0000,
        pages: 0x2_0000,
    };

    fn r(pfn: u64, pages: u64) -> PageRange {
        PageRange { pfn, pages }
    }

    #[test]
    fn linux_blocks_go_out_whole_and_come_back_as_one_report() {
        let mut n = Nested::new(ZONE);
        // Two order-9 blocks, as Linux reports them.
        n.submit(7, &[r(0x8_0200, 512), r(0x8_0800, 512)]).unwrap();
        assert_eq!(n.pending_blocks(), 2);
        let mut out = Vec::new();
        assert_eq!(n.take(1, &mut out), 1);
        assert_eq!(n.take(8, &mut out), 1);
        assert_eq!(
            out,
            [
                Block {
                    pfn: 0x8_0200,
                    order: 9
                },
                Block {
                    pfn: 0x8_0800,
                    order: 9
                }
            ]
        );
        assert_eq!(n.block_done(out[1], true), None);
        // The same completion again is not a second block.
        assert_eq!(n.block_done(out[1], true), None);
        assert_eq!(n.block_done(out[0], true), Some((7, true)));
        assert_eq!(n.in_flight(), 0);
        assert_eq!(n.counters.reported_pages, 1024);
    }

    #[test]
    fn a_bad_report_is_refused_whole_and_changes_nothing() {
        let mut n = Nested::new(ZONE);
        n.submit(1, &[r(0x8_0000, 512)]).unwrap();
        let before = n.in_flight_pages();
        for (ranges, want) in [
            (Vec::new(), NestedError::BadLength(0)),
            (
                std::vec![r(0x8_1000, 0)],
                NestedError::Empty { pfn: 0x8_1000 },
            ),
            (
                std::vec![r(0x8_1000, 512), r(0x7_ff00, 512)],
                NestedError::OutsideZone {
                    pfn: 0x7_ff00,
                    pages: 512,
                },
            ),
            (
                std::vec![r(0x9_ff00, 512)],
                NestedError::OutsideZone {
                    pfn: 0x9_ff00,
                    pages: 512,
                },
            ),
            (
                std::vec![r(u64::MAX - 3, 8)],
                NestedError::OutsideZone {
                    pfn: u64::MAX - 3,
                    pages: 8,
                },
            ),
            (
                std::vec![r(0x8_0100, 512)],
                NestedError::Overlap { pfn: 0x8_0100 },
            ),
            (
                std::vec![r(0x8_1000, 512), r(0x8_1100, 16)],
                NestedError::Overlap { pfn: 0x8_1100 },
            ),
        ] {
            assert_eq!(n.submit(2, &ranges), Err(want));
        }
        assert_eq!(
            n.submit(1, &[r(0x8_4000, 8)]),
            Err(NestedError::DuplicateId(1))
        );
        let many: Vec<PageRange> = (0..33).map(|i| r(0x8_8000 + i * 16, 16)).collect();
        assert_eq!(n.submit(3, &many), Err(NestedError::BadLength(33)));
        assert_eq!((n.in_flight(), n.in_flight_pages()), (1, before));
        for id in 10..13 {
            n.submit(id, &[r(0x8_4000 + u64::from(id) * 0x400, 512)])
                .unwrap();
        }
        assert_eq!(n.submit(20, &[r(0x9_0000, 512)]), Err(NestedError::Busy));
        assert_eq!(n.counters.refused, 10);
    }

    #[test]
    fn a_failed_block_fails_its_report_and_stray_completions_are_ignored() {
        let mut n = Nested::new(ZONE);
        n.submit(3, &[r(0x8_0000, 1024)]).unwrap();
        let mut out = Vec::new();
        n.take(4, &mut out);
        assert_eq!(
            out,
            [Block {
                pfn: 0x8_0000,
                order: 10
            }]
        );
        assert_eq!(
            n.block_done(
                Block {
                    pfn: 0x9_0000,
                    order: 10
                },
                true
            ),
            None
        );
        assert_eq!(n.block_done(out[0], false), Some((3, false)));
        assert_eq!(n.counters.failed_reports, 1);
        assert_eq!(n.counters.reported_pages, 0);
    }

    #[test]
    fn untaken_blocks_go_out_again() {
        let mut n = Nested::new(ZONE);
        n.submit(3, &[r(0x8_0000, 512), r(0x8_0400, 512)]).unwrap();
        let mut out = Vec::new();
        n.take(2, &mut out);
        assert!(n.untake(out[0]));
        assert!(!n.untake(out[0]));
        let mut again = Vec::new();
        n.take(2, &mut again);
        assert_eq!(again, [out[0]]);
        assert_eq!(n.block_done(out[1], true), None);
        assert_eq!(n.block_done(out[0], true), Some((3, true)));
    }

    proptest! {
        /// Any range cuts into aligned blocks of at most MAX_ORDER that
        /// tile it exactly.
        #[test]
        fn blocks_tile_the_range_exactly(pfn in 0u64..1 << 30, pages in 1u64..1 << 14) {
            let mut out = Vec::new();
            let n = blocks_of(r(pfn, pages), usize::MAX, &mut out).unwrap();
            prop_assert_eq!(n, out.len());
            let mut at = pfn;
            for b in &out {
                prop_assert_eq!(b.pfn, at);
                prop_assert!(b.order <= MAX_ORDER);
                prop_assert_eq!(b.pfn % (1 << b.order), 0);
                at += 1 << b.order;
            }
            prop_assert_eq!(at, pfn + pages);
            // Greedy largest-first: never two blocks that could merge
            // within MAX_ORDER where the first is aligned for it.
            prop_assert!(n <= 2 * (usize::from(MAX_ORDER) + 1) + (pages >> MAX_ORDER) as usize);
        }

        /// Random reports, takes and completions: blocks handed out are
        /// always inside the zone and never overlap one another, every
        /// report completes exactly once, and pages are conserved.
        #[test]
        fn nested_reports_conserve_pages(ops in proptest::collection::vec((0u8..3, 0u64..64, 1u64..4, any::<bool>()), 1..200)) {
            let mut n = Nested::new(ZONE);
            let mut out: Vec<Block> = Vec::new();
            let mut next_id = 0u32;
            let mut completed = std::collections::BTreeSet::new();
            for (op, slot, k, ok) in ops {
                match op {
                    0 => {
                        let ranges: Vec<PageRange> = (0..k).map(|i| r(ZONE.pfn + (slot * 4 + i) * 512, 512)).collect();
                        let _ = n.submit(next_id, &ranges);
                        next_id += 1;
                    }
                    1 => { n.take(k as usize, &mut out); }
                    _ => {
                        if !out.is_empty() {
                            let b = out.remove((slot as usize) % out.len());
                            if let Some((id, _)) = n.block_done(b, ok) {
                                prop_assert!(completed.insert(id), "report {} completed twice", id);
                            }
                        }
                    }
                }
                for (i, a) in out.iter().enumerate() {
                    prop_assert!(a.pfn >= ZONE.pfn && a.pfn + a.pages() <= ZONE.pfn + ZONE.pages);
                    for b in &out[i + 1..] {
                        prop_assert!(a.pfn + a.pages() <= b.pfn || b.pfn + b.pages() <= a.pfn);
                    }
                }
                prop_assert!(n.in_flight() <= MAX_REPORTS);
            }
        }
    }
}
