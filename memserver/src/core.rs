//! The buddy allocator: zones, free lists, alloc/free, balloon, statistics
//! and the allocator's conservation check. It holds the reporting worker's
//! state (`worker.rs`) and tells it about qualifying frees; the pass that
//! reports (`reporting.rs`) builds on this module, not the reverse.

use crate::adaptive::Ages;
use crate::meta::{
    KIND_ALLOC, KIND_BALLOONED, KIND_FREE, KIND_ISOLATED, KIND_TAIL, NIL, REPORTED, Slot,
    get_epoch, get_next, get_prev, kind_of, order_of, set_epoch, set_next, set_prev, state,
};
use crate::worker::{Actions, Worker};
use crate::{
    BYTES_PER_PAGE, Block, Error, InvariantViolation, MAX_ORDER, MAX_ZONES, NR_ORDERS, Pfn,
    Tunables, ZoneId, ZoneSpec, metadata_bytes,
};

/// Where one block stands, as [`MemCore::block_of`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// Handed out by [`MemCore::alloc`].
    Allocated,
    /// On a free list; `reported` is Linux's PageReported.
    Free {
        /// The host has discarded it and it has not left the free lists since.
        reported: bool,
    },
    /// Off the free lists, in a report batch the host holds.
    Isolated,
    /// Taken by the balloon (inflate).
    Ballooned,
}

/// Counters of one zone, maintained incrementally (O(1) to read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ZoneStats {
    /// Frames in the zone.
    pub total_pages: u64,
    /// Pages on the free lists (reported or not; isolated excluded, as
    /// Linux's NR_FREE_PAGES).
    pub free_pages: u64,
    /// Free blocks per order.
    pub free_blocks: [u64; NR_ORDERS],
    /// Free pages marked Reported.
    pub reported_pages: u64,
    /// Free blocks marked Reported, per order.
    pub reported_blocks: [u64; NR_ORDERS],
    /// Pages isolated in report batches.
    pub isolated_pages: u64,
    /// Pages in the balloon.
    pub ballooned_pages: u64,
    /// Pages allocated to the zone's owner.
    pub allocated_pages: u64,
}

/// Counters of all zones together.
pub type Stats = ZoneStats;

impl ZoneStats {
    fn add(&mut self, o: &ZoneStats) {
        self.total_pages += o.total_pages;
        self.free_pages += o.free_pages;
        for (a, b) in self.free_blocks.iter_mut().zip(o.free_blocks.iter()) {
            *a += *b;
        }
        self.reported_pages += o.reported_pages;
        for (a, b) in self
            .reported_blocks
            .iter_mut()
            .zip(o.reported_blocks.iter())
        {
            *a += *b;
        }
        self.isolated_pages += o.isolated_pages;
        self.ballooned_pages += o.ballooned_pages;
        self.allocated_pages += o.allocated_pages;
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FreeList {
    pub(crate) head: u32,
    pub(crate) tail: u32,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Zone {
    pub(crate) base: Pfn,
    pub(crate) pages: u32,
    pub(crate) owner: u32,
    /// Global index of the zone's first frame in the metadata.
    pub(crate) first: u32,
    pub(crate) lists: [FreeList; NR_ORDERS],
    pub(crate) stats: ZoneStats,
}

impl Zone {
    const EMPTY: Zone = Zone {
        base: 0,
        pages: 0,
        owner: 0,
        first: 0,
        lists: [FreeList {
            head: NIL,
            tail: NIL,
        }; NR_ORDERS],
        stats: ZoneStats {
            total_pages: 0,
            free_pages: 0,
            free_blocks: [0; NR_ORDERS],
            reported_pages: 0,
            reported_blocks: [0; NR_ORDERS],
            isolated_pages: 0,
            ballooned_pages: 0,
            allocated_pages: 0,
        },
    };

    #[inline(always)]
    fn end(&self) -> Pfn {
        self.base + u64::from(self.pages)
    }

    #[inline(always)]
    pub(crate) fn gidx(&self, pfn: Pfn) -> u32 {
        // Callers have checked pfn is inside the zone.
        self.first + (pfn - self.base) as u32
    }

    #[inline(always)]
    pub(crate) fn pfn(&self, g: u32) -> Pfn {
        self.base + u64::from(g - self.first)
    }

    /// Is the block `(pfn, order)` entirely inside the zone?
    #[inline(always)]
    fn contains(&self, pfn: Pfn, order: u8) -> bool {
        pfn >= self.base
            && pfn
                .checked_add(1u64 << order)
                .is_some_and(|e| e <= self.end())
    }
}

/// The memory server's core: buddy allocator over a set of zones plus the
/// free page reporting worker.
///
/// Every operation either succeeds or returns an [`Error`] having changed
/// nothing. Operations that may need the platform to act return
/// [`Actions`] (arm the timer, send report batches).
#[derive(Debug)]
pub struct MemCore<'m> {
    pub(crate) meta: &'m mut [Slot],
    pub(crate) zones: [Zone; MAX_ZONES],
    pub(crate) nr_zones: usize,
    /// Smallest merged order whose free must tell the worker; `u8::MAX`
    /// when reporting is off or already REQUESTED (a request would change
    /// nothing). Kept here, next to the zones, so the free path costs one
    /// compare whether reporting is on or off (Linux guards
    /// `page_reporting_notify_free` with a static key for this). Updated by
    /// [`Self::sync_notify`] after every worker state change.
    pub(crate) notify_order: u8,
    pub(crate) worker: Worker,
}

impl<'m> MemCore<'m> {
    /// Build the core over `zones`, with metadata in `meta` (at least
    /// [`metadata_bytes`]`(zones)` bytes; its contents are overwritten).
    /// `reporting`: `Some` enables free page reporting with these tunables.
    ///
    /// Every frame starts free and unreported. With reporting enabled the
    /// returned [`Actions`] arm the timer: as Linux does on registration,
    /// everything free is reported after the first delay.
    pub fn new(
        zones: &[ZoneSpec],
        meta: &'m mut [u8],
        reporting: Option<Tunables>,
    ) -> Result<(Self, Actions), Error> {
        if zones.len() > MAX_ZONES {
            return Err(Error::TooManyZones);
        }
        let mut total: u64 = 0;
        for (i, z) in zones.iter().enumerate() {
            if z.pages == 0 || z.base_pfn.checked_add(u64::from(z.pages)).is_none() {
                return Err(Error::EmptyZone);
            }
            for o in &zones[..i] {
                let (a0, a1) = (z.base_pfn, z.base_pfn + u64::from(z.pages));
                let (b0, b1) = (o.base_pfn, o.base_pfn + u64::from(o.pages));
                if a0 < b1 && b0 < a1 {
                    return Err(Error::ZonesOverlap);
                }
            }
            total += u64::from(z.pages);
        }
        // NIL is u32::MAX, so every global index must be below it.
        if total >= u64::from(NIL) {
            return Err(Error::TooManyPages);
        }
        let needed = metadata_bytes(zones);
        if meta.len() < needed {
            return Err(Error::MetadataTooSmall { needed });
        }
        if let Some(t) = &reporting {
            t.validate()?;
        }
        let (slots, _) = meta[..needed].as_chunks_mut::<BYTES_PER_PAGE>();
        let mut core = MemCore {
            meta: slots,
            zones: [Zone::EMPTY; MAX_ZONES],
            nr_zones: zones.len(),
            notify_order: u8::MAX,
            worker: Worker::new(reporting),
        };
        for s in core.meta.iter_mut() {
            *s = [
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                state(KIND_TAIL, 0),
            ];
        }
        let mut first = 0u32;
        for (i, spec) in zones.iter().enumerate() {
            let z = &mut core.zones[i];
            z.base = spec.base_pfn;
            z.pages = spec.pages;
            z.owner = spec.owner;
            z.first = first;
            z.stats.total_pages = u64::from(spec.pages);
            first += spec.pages;
            // Seed with the largest aligned blocks that fit: greedy seeding
            // leaves no two free buddies unmerged.
            let end = z.end();
            let mut pfn = z.base;
            while pfn < end {
                let mut o = (pfn.trailing_zeros() as u8).min(MAX_ORDER);
                while pfn + (1u64 << o) > end {
                    o -= 1;
                }
                let g = core.zones[i].gidx(pfn);
                core.meta[g as usize][8] = state(KIND_FREE, o);
                core.stamp(g, o, Ages::BOOT_EPOCH);
                core.list_add(i, o, g, true);
                pfn += 1u64 << o;
            }
        }
        let mut acts = Actions::default();
        core.worker.boot(&mut acts);
        core.sync_notify();
        Ok((core, acts))
    }

    /// The platform leaves the zones' RAM untouched at boot
    /// (`pd::REGIONS_UNTOUCHED_AT_BOOT`: the host platform's fresh memfds;
    /// not seL4, whose kernel zeroes every frame it hands out, nor the bare
    /// platform, unchecked), so the host backs none of it yet. Under the
    /// adaptive policy, flag every free block Reported, as a report would:
    /// allocation then knows the memory a guest freed (resident) from
    /// memory nobody has touched, and reuses the former first
    /// (`take_block`). Linux, the control, cannot know this and reports
    /// the untouched memory at boot; so does this core under `linux`, or
    /// when called after anything was allocated (then it does nothing).
    pub fn boot_memory_untouched(&mut self) {
        if !self.worker.keeps_reported_exact() {
            return;
        }
        for z in 0..self.nr_zones {
            let s = &self.zones[z].stats;
            if s.free_pages != s.total_pages || s.reported_pages != 0 {
                continue;
            }
            for o in 0..=MAX_ORDER {
                let mut g = self.zones[z].lists[usize::from(o)].head;
                while g != NIL {
                    self.mark_reported(z, g, o);
                    g = self.next_of(g);
                }
            }
        }
    }

    /// Number of zones.
    pub fn nr_zones(&self) -> usize {
        self.nr_zones
    }

    /// The spec a zone was created with.
    pub fn zone_spec(&self, zone: ZoneId) -> Result<ZoneSpec, Error> {
        let z = self.zone(zone)?;
        let z = &self.zones[z];
        Ok(ZoneSpec {
            base_pfn: z.base,
            pages: z.pages,
            owner: z.owner,
        })
    }

    /// The zone holding `pfn`, if any.
    pub fn zone_of(&self, pfn: Pfn) -> Option<ZoneId> {
        self.zones[..self.nr_zones]
            .iter()
            .position(|z| z.contains(pfn, 0))
            .map(|i| ZoneId(i as u16))
    }

    #[inline(always)]
    pub(crate) fn zone(&self, zone: ZoneId) -> Result<usize, Error> {
        let z = usize::from(zone.0);
        if z < self.nr_zones {
            Ok(z)
        } else {
            Err(Error::NoSuchZone)
        }
    }

    #[inline(always)]
    pub(crate) fn st(&self, g: u32) -> u8 {
        self.meta[g as usize][8]
    }

    #[inline(always)]
    pub(crate) fn set_st(&mut self, g: u32, st: u8) {
        self.meta[g as usize][8] = st;
    }

    #[inline(always)]
    pub(crate) fn next_of(&self, g: u32) -> u32 {
        get_next(&self.meta[g as usize])
    }

    /// Record that free block `g` of order `o` was freed at worker epoch
    /// `epoch` (meta.rs; nothing for order 0).
    #[inline(always)]
    fn stamp(&mut self, g: u32, o: u8, epoch: u32) {
        if o >= 1 {
            set_epoch(&mut self.meta[g as usize + 1], epoch);
        }
    }

    /// The worker epoch at which free block `g` of order `o` was freed;
    /// `None` for order 0.
    #[inline(always)]
    pub(crate) fn freed_epoch(&self, g: u32, o: u8) -> Option<u32> {
        (o >= 1).then(|| get_epoch(&self.meta[g as usize + 1]))
    }

    /// Put free block `g` (state already FREE, order `o`) on its list.
    /// `tail`: Linux puts blocks back from reporting at the tail so that
    /// allocation, which takes the head, prefers unreported memory.
    #[inline(always)]
    pub(crate) fn list_add(&mut self, z: usize, o: u8, g: u32, tail: bool) {
        let l = self.zones[z].lists[usize::from(o)];
        if tail {
            set_next(&mut self.meta[g as usize], NIL);
            set_prev(&mut self.meta[g as usize], l.tail);
            if l.tail == NIL {
                self.zones[z].lists[usize::from(o)].head = g;
            } else {
                set_next(&mut self.meta[l.tail as usize], g);
            }
            self.zones[z].lists[usize::from(o)].tail = g;
        } else {
            set_next(&mut self.meta[g as usize], l.head);
            set_prev(&mut self.meta[g as usize], NIL);
            if l.head == NIL {
                self.zones[z].lists[usize::from(o)].tail = g;
            } else {
                set_prev(&mut self.meta[l.head as usize], g);
            }
            self.zones[z].lists[usize::from(o)].head = g;
        }
        let s = &mut self.zones[z].stats;
        s.free_blocks[usize::from(o)] += 1;
        s.free_pages += 1u64 << o;
    }

    /// Take free block `g` of order `o` off its list. As Linux's
    /// `del_page_from_free_list`, this clears Reported: a block that leaves
    /// the free lists (allocation, split, merge, isolation) is no longer
    /// known to be discarded once it comes back.
    #[inline(always)]
    pub(crate) fn list_del(&mut self, z: usize, o: u8, g: u32) {
        let (n, p) = {
            let s = &self.meta[g as usize];
            (get_next(s), get_prev(s))
        };
        if p == NIL {
            self.zones[z].lists[usize::from(o)].head = n;
        } else {
            set_next(&mut self.meta[p as usize], n);
        }
        if n == NIL {
            self.zones[z].lists[usize::from(o)].tail = p;
        } else {
            set_prev(&mut self.meta[n as usize], p);
        }
        let st = self.st(g);
        let s = &mut self.zones[z].stats;
        s.free_blocks[usize::from(o)] -= 1;
        s.free_pages -= 1u64 << o;
        if st & REPORTED != 0 {
            s.reported_pages -= 1u64 << o;
            s.reported_blocks[usize::from(o)] -= 1;
            self.set_st(g, st & !REPORTED);
        }
    }

    /// Make `g` the head of list `(z, o)`, keeping the cyclic order
    /// (Linux's `list_rotate_to_front`).
    pub(crate) fn list_rotate_to_front(&mut self, z: usize, o: u8, g: u32) {
        let l = self.zones[z].lists[usize::from(o)];
        if l.head == g {
            return;
        }
        let p = get_prev(&self.meta[g as usize]);
        set_next(&mut self.meta[l.tail as usize], l.head);
        set_prev(&mut self.meta[l.head as usize], l.tail);
        set_prev(&mut self.meta[g as usize], NIL);
        set_next(&mut self.meta[p as usize], NIL);
        self.zones[z].lists[usize::from(o)] = FreeList { head: g, tail: p };
    }

    /// Take a block of exactly `order` from zone `z`, splitting a larger one
    /// if needed, and give its head the state `kind`.
    ///
    /// `resident_first` (allocation under the adaptive policy): when the
    /// fitting list's head is Reported (no fully resident block of that
    /// order), split the smallest larger block whose head is unreported
    /// instead, or else take the list's tail if it is unreported (a block
    /// merged with a discarded buddy, partly resident), so the guest reuses
    /// memory the host still backs before it faults discarded memory back
    /// in. Linux takes the smallest fitting block's head whatever it is.
    #[inline]
    fn take_block(
        &mut self,
        z: usize,
        order: u8,
        kind: u8,
        resident_first: bool,
    ) -> Result<u32, Error> {
        let zone = &self.zones[z];
        let head = |o: u8| zone.lists[usize::from(o)].head;
        let mut o = order;
        while head(o) == NIL {
            if o == MAX_ORDER {
                return Err(Error::NoMemory);
            }
            o += 1;
        }
        // Allocation takes the head: unreported blocks are there, as drained
        // ones go to the tail.
        let mut g = head(o);
        if resident_first && self.st(g) & REPORTED != 0 {
            let tail = zone.lists[usize::from(o)].tail;
            if let Some(r) = (o + 1..=MAX_ORDER).find(|&r| {
                let h = head(r);
                h != NIL && self.st(h) & REPORTED == 0
            }) {
                o = r;
                g = head(r);
            } else if self.st(tail) & REPORTED == 0 {
                // A block merged with a discarded buddy waits at the tail
                // (`merge_insert`): part of it is resident.
                g = tail;
            }
        }
        let discarded = self.st(g) & REPORTED != 0 && self.worker.keeps_reported_exact();
        self.list_del(z, o, g);
        while o > order {
            // Split: the upper half goes back as a free block. Linux's
            // halves are unreported (the flag is lost with the block); the
            // adaptive policy keeps it, at the tail: the host still has
            // the half discarded, and it is not reported again.
            o -= 1;
            let b = g + (1u32 << o);
            self.set_st(b, state(KIND_FREE, o));
            // The half was free as long as the block it came from.
            let epoch = get_epoch(&self.meta[g as usize + 1]);
            self.stamp(b, o, epoch);
            self.list_add(z, o, b, discarded);
            if discarded {
                self.mark_reported(z, b, o);
            }
        }
        self.set_st(g, state(kind, order));
        Ok(g)
    }

    /// Flag free block `g` of order `o`, on its list, Reported.
    #[inline]
    pub(crate) fn mark_reported(&mut self, z: usize, g: u32, o: u8) {
        self.set_st(g, state(KIND_FREE, o) | REPORTED);
        let s = &mut self.zones[z].stats;
        s.reported_pages += 1u64 << o;
        s.reported_blocks[usize::from(o)] += 1;
    }

    /// Free block `g` of order `o` into zone `z`, merging with free buddies.
    /// Returns the merged block and whether every buddy it took in was
    /// Reported (true when it took in none). `tail`: see
    /// [`Self::list_add`].
    #[inline]
    pub(crate) fn merge_insert(
        &mut self,
        z: usize,
        mut g: u32,
        mut o: u8,
        tail: bool,
    ) -> (u32, u8, bool) {
        let zone = self.zones[z];
        let mut pfn = zone.pfn(g);
        let mut took_reported = false;
        let mut all_reported = true;
        while o < MAX_ORDER {
            let bpfn = pfn ^ (1u64 << o);
            if !zone.contains(bpfn, o) {
                break;
            }
            let bg = zone.gidx(bpfn);
            let bst = self.st(bg);
            if kind_of(bst) != KIND_FREE || order_of(bst) != o {
                break;
            }
            took_reported |= bst & REPORTED != 0;
            all_reported &= bst & REPORTED != 0;
            // Merging takes the buddy off its list, which clears its Reported.
            self.list_del(z, o, bg);
            if bg < g {
                self.set_st(g, state(KIND_TAIL, 0));
                g = bg;
                pfn = bpfn;
            } else {
                self.set_st(bg, state(KIND_TAIL, 0));
            }
            o += 1;
        }
        self.set_st(g, state(KIND_FREE, o));
        let epoch = self.worker.ages.epoch();
        self.stamp(g, o, epoch);
        // Adaptive: a block that took in a reported buddy is partly
        // discarded by the host. At the tail, the allocator takes its
        // order's fully resident blocks first, so a workload cycling its
        // memory keeps to the pages it has instead of wandering into
        // discarded ones (faulting them back in) whenever a free merges
        // with a cold buddy. Linux keeps it at the head (the control).
        let tail = tail || (took_reported && self.worker.keeps_reported_exact());
        self.list_add(z, o, g, tail);
        (g, o, all_reported)
    }

    /// Recompute the free path's notify order from the worker's state.
    pub(crate) fn sync_notify(&mut self) {
        self.notify_order = self.worker.notify_order();
    }

    /// Allocate a block of `order` pages in `zone`; returns its first frame.
    pub fn alloc(&mut self, zone: ZoneId, order: u8) -> Result<Pfn, Error> {
        let z = self.zone(zone)?;
        if order > MAX_ORDER {
            return Err(Error::BadOrder);
        }
        let reported = self.zones[z].stats.reported_pages;
        let resident_first = self.worker.keeps_reported_exact();
        let g = self.take_block(z, order, KIND_ALLOC, resident_first)?;
        let s = &mut self.zones[z].stats;
        s.allocated_pages += 1u64 << order;
        // Reported pages the allocation took: the adaptive policy's churn
        // signal (under linux a split Reported block loses the flag whole;
        // under adaptive only the allocated part does, `take_block`).
        let refaulted = reported - s.reported_pages;
        self.worker.ages.allocated(z, 1u64 << order, refaulted);
        Ok(self.zones[z].pfn(g))
    }

    /// Validate that `(pfn, order)` names a whole block in zone `z`; returns
    /// its global index and state byte.
    fn check_block(&self, z: usize, pfn: Pfn, order: u8) -> Result<(u32, u8), Error> {
        if order > MAX_ORDER {
            return Err(Error::BadOrder);
        }
        let zone = &self.zones[z];
        if !zone.contains(pfn, order) {
            return Err(Error::OutOfZone);
        }
        if pfn & ((1u64 << order) - 1) != 0 {
            return Err(Error::Misaligned);
        }
        let g = zone.gidx(pfn);
        Ok((g, self.st(g)))
    }

    /// Free a block that [`Self::alloc`] handed out. Freeing a block of at
    /// least the reporting order (after merging) requests reporting, as
    /// Linux's `page_reporting_notify_free`; the returned [`Actions`] may
    /// then arm the timer.
    pub fn free(&mut self, zone: ZoneId, pfn: Pfn, order: u8) -> Result<Actions, Error> {
        let z = self.zone(zone)?;
        let (g, st) = self.check_block(z, pfn, order)?;
        match kind_of(st) {
            KIND_ALLOC if order_of(st) == order => {}
            KIND_ALLOC => return Err(Error::WrongOrder),
            KIND_FREE => return Err(Error::AlreadyFree),
            KIND_ISOLATED => return Err(Error::Isolated),
            KIND_BALLOONED => return Err(Error::Ballooned),
            _ => return Err(Error::NotBlockHead),
        }
        self.zones[z].stats.allocated_pages -= 1u64 << order;
        let (_, merged, _) = self.merge_insert(z, g, order, false);
        let mut acts = Actions::default();
        if merged >= self.notify_order {
            self.worker.freed(merged, &mut acts);
            self.sync_notify();
        }
        Ok(acts)
    }

    /// Inflate: take up to `max_pages` free pages of `zone` for the balloon,
    /// largest blocks first, never leaving the zone below the low watermark
    /// (so the balloon cannot starve allocation; with reporting off, the
    /// default tunables' watermark applies). Writes the blocks to
    /// `out` and returns how many it wrote (0 when nothing can be taken).
    pub fn take_for_balloon(
        &mut self,
        zone: ZoneId,
        max_pages: u64,
        out: &mut [Block],
    ) -> Result<usize, Error> {
        let z = self.zone(zone)?;
        let low = self.worker.low_watermark();
        let mut n = 0;
        let mut taken = 0u64;
        while n < out.len() {
            let avail = self.zones[z].stats.free_pages.saturating_sub(low);
            let want = (max_pages - taken).min(avail);
            if want == 0 {
                break;
            }
            let cap = (63 - want.leading_zeros() as u8).min(MAX_ORDER);
            // Largest first: `cap` if some free block can be split to it,
            // else the largest free block smaller than `cap`.
            let zl = &self.zones[z].lists;
            let order = if (cap..=MAX_ORDER).any(|o| zl[usize::from(o)].head != NIL) {
                cap
            } else {
                match (0..cap).rev().find(|&o| zl[usize::from(o)].head != NIL) {
                    Some(o) => o,
                    None => break,
                }
            };
            let g = self.take_block(z, order, KIND_BALLOONED, false)?;
            self.zones[z].stats.ballooned_pages += 1u64 << order;
            out[n] = Block {
                pfn: self.zones[z].pfn(g),
                order,
            };
            n += 1;
            taken += 1u64 << order;
        }
        Ok(n)
    }

    /// Deflate: give `block` back from the balloon to the free lists. The
    /// block may be any aligned part of a block [`Self::take_for_balloon`]
    /// returned (the driver deflates in pages); the rest stays ballooned.
    /// As Linux's deflate frees pages normally, the block comes back
    /// unreported and may request reporting.
    pub fn return_from_balloon(&mut self, zone: ZoneId, block: Block) -> Result<Actions, Error> {
        let z = self.zone(zone)?;
        let (_, _) = self.check_block(z, block.pfn, block.order)?;
        let zone_c = self.zones[z];
        // Find the head of the block containing the range: the first head
        // met walking up the alignments (blocks partition the zone).
        let mut found = None;
        for j in block.order..=MAX_ORDER {
            let h = block.pfn & !((1u64 << j) - 1);
            if h < zone_c.base {
                break;
            }
            let st = self.st(zone_c.gidx(h));
            if kind_of(st) != KIND_TAIL {
                let k = order_of(st);
                if kind_of(st) == KIND_BALLOONED
                    && k >= j
                    && h + (1u64 << k) >= block.pfn + block.pages()
                {
                    found = Some((h, k));
                }
                break;
            }
        }
        let Some((mut h, mut k)) = found else {
            return Err(Error::NotBallooned);
        };
        // Split the ballooned block down to the returned part; the other
        // halves stay ballooned.
        while k > block.order {
            k -= 1;
            let half = 1u64 << k;
            if block.pfn >= h + half {
                self.set_st(zone_c.gidx(h), state(KIND_BALLOONED, k));
                h += half;
            } else {
                self.set_st(zone_c.gidx(h + half), state(KIND_BALLOONED, k));
            }
        }
        self.zones[z].stats.ballooned_pages -= block.pages();
        let (_, merged, _) = self.merge_insert(z, zone_c.gidx(block.pfn), block.order, false);
        let mut acts = Actions::default();
        if merged >= self.notify_order {
            self.worker.freed(merged, &mut acts);
            self.sync_notify();
        }
        Ok(acts)
    }

    /// The block containing `pfn` and its state, or `None` when `pfn` is in
    /// no zone. O(MAX_ORDER).
    pub fn block_of(&self, pfn: Pfn) -> Option<(Block, BlockState)> {
        let z = usize::from(self.zone_of(pfn)?.0);
        let zone = &self.zones[z];
        for j in 0..=MAX_ORDER {
            let h = pfn & !((1u64 << j) - 1);
            if h < zone.base {
                return None;
            }
            let st = self.st(zone.gidx(h));
            let bs = match kind_of(st) {
                KIND_TAIL => continue,
                KIND_FREE => BlockState::Free {
                    reported: st & REPORTED != 0,
                },
                KIND_ALLOC => BlockState::Allocated,
                KIND_ISOLATED => BlockState::Isolated,
                _ => BlockState::Ballooned,
            };
            return Some((
                Block {
                    pfn: h,
                    order: order_of(st),
                },
                bs,
            ));
        }
        None
    }

    /// The free list of `(zone, order)` from head (taken first by
    /// allocation) to tail, as `(pfn, reported)`. For tests and diagnostics.
    pub fn free_list(
        &self,
        zone: ZoneId,
        order: u8,
    ) -> Result<impl Iterator<Item = (Pfn, bool)> + '_, Error> {
        let z = self.zone(zone)?;
        if order > MAX_ORDER {
            return Err(Error::BadOrder);
        }
        let zone = &self.zones[z];
        let mut g = zone.lists[usize::from(order)].head;
        Ok(core::iter::from_fn(move || {
            if g == NIL {
                return None;
            }
            let item = (zone.pfn(g), self.st(g) & REPORTED != 0);
            g = self.next_of(g);
            Some(item)
        }))
    }

    /// Counters of one zone.
    pub fn zone_stats(&self, zone: ZoneId) -> Result<ZoneStats, Error> {
        Ok(self.zones[self.zone(zone)?].stats)
    }

    /// Counters of all zones (sum over at most [`MAX_ZONES`] zones).
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for z in &self.zones[..self.nr_zones] {
            s.add(&z.stats);
        }
        s
    }

    /// The allocator's part of [`Self::check_invariants`], O(pages): every
    /// frame is in exactly one block and one state; the free lists match the
    /// per-page states; no two free buddies of equal order are left
    /// unmerged; Reported only on free blocks; the counters equal a recount.
    pub(crate) fn check_allocator(&self) -> Result<(), InvariantViolation> {
        for (zi, zone) in self.zones[..self.nr_zones].iter().enumerate() {
            let bad = |what, pfn| InvariantViolation {
                what,
                zone: zi,
                pfn,
            };
            let mut count = ZoneStats {
                total_pages: u64::from(zone.pages),
                ..ZoneStats::default()
            };
            let mut pfn = zone.base;
            while pfn < zone.end() {
                let st = self.st(zone.gidx(pfn));
                let (k, o) = (kind_of(st), order_of(st));
                if k == KIND_TAIL || k > KIND_BALLOONED {
                    return Err(bad("frame covered by no block", pfn));
                }
                if o > MAX_ORDER || pfn & ((1u64 << o) - 1) != 0 || !zone.contains(pfn, o) {
                    return Err(bad("block misaligned or outside its zone", pfn));
                }
                if st & REPORTED != 0 && k != KIND_FREE {
                    return Err(bad("Reported on a block that is not free", pfn));
                }
                for t in pfn + 1..pfn + (1u64 << o) {
                    if self.st(zone.gidx(t)) != state(KIND_TAIL, 0) {
                        return Err(bad("frame in two blocks", t));
                    }
                }
                let pages = 1u64 << o;
                match k {
                    KIND_FREE => {
                        count.free_pages += pages;
                        count.free_blocks[usize::from(o)] += 1;
                        if st & REPORTED != 0 {
                            count.reported_pages += pages;
                            count.reported_blocks[usize::from(o)] += 1;
                        }
                        let b = pfn ^ pages;
                        if o < MAX_ORDER && zone.contains(b, o) {
                            let bst = self.st(zone.gidx(b));
                            if kind_of(bst) == KIND_FREE && order_of(bst) == o {
                                return Err(bad("free buddies left unmerged", pfn));
                            }
                        }
                    }
                    KIND_ALLOC => count.allocated_pages += pages,
                    KIND_ISOLATED => count.isolated_pages += pages,
                    _ => count.ballooned_pages += pages,
                }
                pfn += pages;
            }
            if count != zone.stats {
                return Err(bad("counters differ from a recount", 0));
            }
            for o in 0..=MAX_ORDER {
                let l = zone.lists[usize::from(o)];
                let mut prev = NIL;
                let mut g = l.head;
                let mut n = 0u64;
                while g != NIL {
                    if g < zone.first || g - zone.first >= zone.pages {
                        return Err(bad("free list links outside the zone", 0));
                    }
                    let p = zone.pfn(g);
                    let st = self.st(g);
                    if kind_of(st) != KIND_FREE || order_of(st) != o {
                        return Err(bad("free list holds a block of another state", p));
                    }
                    if get_prev(&self.meta[g as usize]) != prev {
                        return Err(bad("free list prev link broken", p));
                    }
                    n += 1;
                    if n > count.free_blocks[usize::from(o)] {
                        return Err(bad("free list longer than the free blocks", p));
                    }
                    prev = g;
                    g = self.next_of(g);
                }
                if prev != l.tail || n != count.free_blocks[usize::from(o)] {
                    return Err(bad("free list misses free blocks or its tail", 0));
                }
            }
        }
        Ok(())
    }
}
