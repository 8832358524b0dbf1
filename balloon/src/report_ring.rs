//! A small split-virtqueue writer that posts device-writable descriptors by
//! PHYSICAL address, for the free page reporting queue.
//!
//! Why not virtio-drivers' `VirtQueue`: its `add` takes `&[u8]`/`&mut [u8]`
//! slices and asks `Hal::share` for their physical address. A reported block
//! is guest RAM that the balloon PD never maps (the memserver works on PFNs
//! only, DESIGN §1 and §3), so there is no virtual address to build a slice
//! from, and a slice over unmapped memory is undefined behaviour even if it is
//! never read. The reporting queue only needs (address, length) pairs that the
//! device writes to (VIRTIO 1.2 §5.5.6.4), so we write the descriptors
//! ourselves and use `Transport::queue_set` to hand the ring to the device.
//!
//! Ring memory comes from `Hal::dma_alloc` (the driver's own DMA region), laid
//! out as VIRTIO 1.2 §2.7: descriptor table (16 B each), available ring
//! (flags, idx, ring[N], used_event), used ring (flags, idx, ring[N] of
//! {le32 id, le32 len}, avail_event). The legacy layout (§2.7.2 "Legacy
//! Interfaces") puts everything in one allocation, used ring page-aligned.
//!
//! Who writes what: the driver writes descriptors, avail.ring and avail.idx;
//! the device writes used.ring and used.idx. The driver never trusts what it
//! reads back: it keeps shadow copies of every descriptor it posted and of
//! both indices, and checks every used element against them.

use crate::defs::{Block, BlockExt, Error, QueueKind, REPORT_RING_MAX};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, Ordering, fence};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr, transport::Transport};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// used.flags bit: the device asks not to be notified (§2.7.10).
const USED_F_NO_NOTIFY: u16 = 1;

/// A descriptor as the driver wrote it (trusted copy).
#[derive(Copy, Clone, Debug, Default)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A descriptor as laid out in the table (§2.7.5), little-endian fields.
#[repr(C)]
#[derive(Copy, Clone)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// A used ring element (§2.7.8), little-endian fields.
#[repr(C)]
#[derive(Copy, Clone)]
struct RawUsed {
    id: u32,
    len: u32,
}

/// A chain in flight: the batch it carries.
#[derive(Copy, Clone, Debug)]
struct Chain {
    batch_id: u32,
    descs: u16,
    bytes: u64,
    pages: u64,
}

/// What a used element meant.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub(crate) struct Completion {
    pub batch_id: u32,
    pub result: Result<(), Error>,
    pub blocks: u16,
    pub pages: u64,
}

/// One DMA allocation owned by the ring, freed on drop.
#[derive(Debug)]
pub(crate) struct DmaPages<H: Hal> {
    pub(crate) paddr: PhysAddr,
    pub(crate) vaddr: NonNull<u8>,
    pages: usize,
    _hal: core::marker::PhantomData<H>,
}

impl<H: Hal> DmaPages<H> {
    pub(crate) fn new(pages: usize, dir: BufferDirection) -> Result<Self, Error> {
        let (paddr, vaddr) = H::dma_alloc(pages, dir);
        if paddr == 0 {
            return Err(Error::Virtio(virtio_drivers::Error::DmaError));
        }
        Ok(Self {
            paddr,
            vaddr,
            pages,
            _hal: core::marker::PhantomData,
        })
    }
}

impl<H: Hal> Drop for DmaPages<H> {
    fn drop(&mut self) {
        // SAFETY: allocated by `H::dma_alloc` in `new` with these values, freed once here.
        let _ = unsafe { H::dma_dealloc(self.paddr, self.vaddr, self.pages) };
    }
}

/// The reporting ring.
#[derive(Debug)]
pub(crate) struct ReportRing<H: Hal> {
    queue_idx: u16,
    size: u16,
    _dma: (DmaPages<H>, Option<DmaPages<H>>),
    desc: NonNull<u8>,
    avail: NonNull<u8>,
    used: NonNull<u8>,
    desc_shadow: [Desc; REPORT_RING_MAX],
    chains: [Option<Chain>; REPORT_RING_MAX],
    free_head: u16,
    num_free: u16,
    in_flight: u16,
    avail_idx: u16,
    last_used_idx: u16,
}

fn part_sizes(size: usize) -> (usize, usize, usize) {
    (16 * size, 2 * (3 + size), 2 * 3 + 8 * size)
}

fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_SIZE)
}

impl<H: Hal> ReportRing<H> {
    /// Allocates the ring and hands it to the device as queue `queue_idx`.
    /// The size is the device's maximum, capped at REPORT_RING_MAX and
    /// rounded down to a power of two (split rings need one, §2.7).
    pub(crate) fn new<T: Transport>(transport: &mut T, queue_idx: u16) -> Result<Self, Error> {
        if transport.queue_used(queue_idx) {
            return Err(Error::Virtio(virtio_drivers::Error::AlreadyUsed));
        }
        let max = transport.max_queue_size(queue_idx);
        if max == 0 {
            return Err(Error::QueueMissing(queue_idx));
        }
        let capped = (max as usize).min(REPORT_RING_MAX);
        let size = 1usize << (usize::BITS - 1 - capped.leading_zeros());
        let (d, a, u) = part_sizes(size);
        let (dma, desc_p, avail_p, used_p, desc, avail, used);
        if transport.requires_legacy_layout() {
            let first = pages_for(d + a);
            let one = DmaPages::<H>::new(first + pages_for(u), BufferDirection::Both)?;
            desc_p = one.paddr;
            avail_p = one.paddr + d as u64;
            used_p = one.paddr + (first * PAGE_SIZE) as u64;
            desc = one.vaddr;
            // SAFETY: offsets are within the allocation of `first + pages_for(u)` pages.
            avail = unsafe { one.vaddr.add(d) };
            // SAFETY: as above; the used ring starts on the page after desc+avail.
            used = unsafe { one.vaddr.add(first * PAGE_SIZE) };
            dma = (one, None);
        } else {
            let drv = DmaPages::<H>::new(pages_for(d + a), BufferDirection::DriverToDevice)?;
            let dev = DmaPages::<H>::new(pages_for(u), BufferDirection::DeviceToDriver)?;
            desc_p = drv.paddr;
            avail_p = drv.paddr + d as u64;
            used_p = dev.paddr;
            desc = drv.vaddr;
            // SAFETY: the avail ring follows the descriptor table inside `drv`.
            avail = unsafe { drv.vaddr.add(d) };
            used = dev.vaddr;
            dma = (drv, Some(dev));
        }
        transport.queue_set(queue_idx, size as u32, desc_p, avail_p, used_p);
        let mut ring = Self {
            queue_idx,
            size: size as u16,
            _dma: dma,
            desc,
            avail,
            used,
            desc_shadow: [Desc::default(); REPORT_RING_MAX],
            chains: [None; REPORT_RING_MAX],
            free_head: 0,
            num_free: size as u16,
            in_flight: 0,
            avail_idx: 0,
            last_used_idx: 0,
        };
        ring.reset_free_list();
        Ok(ring)
    }

    fn reset_free_list(&mut self) {
        for i in 0..self.size {
            self.desc_shadow[usize::from(i)] = Desc {
                next: i + 1,
                ..Desc::default()
            };
        }
        self.free_head = 0;
        self.num_free = self.size;
    }

    /// Queue size (= the most blocks one batch can carry).
    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub(crate) fn free_descriptors(&self) -> u16 {
        self.num_free
    }

    /// Batches in flight.
    pub(crate) fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Whether `batch_id` is in flight.
    pub(crate) fn has_batch(&self, batch_id: u32) -> bool {
        self.chains.iter().flatten().any(|c| c.batch_id == batch_id)
    }

    fn write_desc(&mut self, i: u16) {
        let d = self.desc_shadow[usize::from(i)];
        let raw = RawDesc {
            addr: d.addr.to_le(),
            len: d.len.to_le(),
            flags: d.flags.to_le(),
            next: d.next.to_le(),
        };
        let p = self.desc.as_ptr().wrapping_add(16 * usize::from(i));
        // SAFETY: `i < size`, so the 16-byte descriptor lies inside the table,
        // which is 16-byte aligned (page-aligned DMA). The device only reads
        // descriptors that are published through avail.idx, and this one is not.
        unsafe { p.cast::<RawDesc>().write_volatile(raw) };
    }

    fn avail_idx_atomic(&self) -> &AtomicU16 {
        let p = self.avail.as_ptr().wrapping_add(2).cast::<u16>();
        // SAFETY: avail.idx is at offset 2 of the avail ring, 2-byte aligned,
        // in DMA memory that lives as long as `self`; it is only accessed atomically.
        unsafe { AtomicU16::from_ptr(p) }
    }

    fn used_atomic(&self, offset: usize) -> &AtomicU16 {
        let p = self.used.as_ptr().wrapping_add(offset).cast::<u16>();
        // SAFETY: offsets 0 (flags) and 2 (idx) of the used ring, 2-byte
        // aligned, in DMA memory owned by `self`; only accessed atomically.
        unsafe { AtomicU16::from_ptr(p) }
    }

    /// Posts one chain for `blocks`; validates everything before touching the
    /// ring so that an error changes nothing.
    pub(crate) fn submit<T: Transport>(
        &mut self,
        transport: &mut T,
        batch_id: u32,
        blocks: &[Block],
    ) -> Result<(), Error> {
        if blocks.is_empty() {
            return Err(Error::Empty);
        }
        if let Some(b) = blocks.iter().find(|b| !b.is_valid()) {
            return Err(Error::InvalidBlock(*b));
        }
        if blocks.len() > usize::from(self.num_free) {
            return Err(Error::QueueFull);
        }
        if self.has_batch(batch_id) {
            return Err(Error::DuplicateBatch(batch_id));
        }
        let head = self.free_head;
        let mut i = head;
        let mut bytes = 0u64;
        let mut pages = 0u64;
        for (n, b) in blocks.iter().enumerate() {
            let last = n + 1 == blocks.len();
            let next = self.desc_shadow[usize::from(i)].next;
            // One descriptor per block: addr = pfn << 12, len = 4096 << order
            // (order <= MAX_ORDER, so the length fits u32).
            self.desc_shadow[usize::from(i)] = Desc {
                addr: b.paddr(),
                len: b.bytes() as u32,
                flags: DESC_F_WRITE | if last { 0 } else { DESC_F_NEXT },
                next: if last { 0 } else { next },
            };
            self.write_desc(i);
            bytes += b.bytes();
            pages += b.pages();
            if last {
                self.free_head = next;
            }
            i = next;
        }
        self.num_free -= blocks.len() as u16;
        self.chains[usize::from(head)] = Some(Chain {
            batch_id,
            descs: blocks.len() as u16,
            bytes,
            pages,
        });
        self.in_flight += 1;
        let slot = usize::from(self.avail_idx & (self.size - 1));
        let p = self.avail.as_ptr().wrapping_add(4 + 2 * slot).cast::<u16>();
        // SAFETY: avail.ring[slot] is at 4 + 2*slot < 2*(3+size), inside the
        // avail ring, 2-byte aligned; the device does not read this slot until
        // avail.idx is published below.
        unsafe { p.write_volatile(head.to_le()) };
        // Descriptors and the ring entry must be visible before the index
        // (§2.7.13 "Updating idx").
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.avail_idx_atomic()
            .store(self.avail_idx.to_le(), Ordering::Release);
        // The device may have suppressed notifications (§2.7.10); re-read
        // after publishing so a device that just went to sleep is woken.
        fence(Ordering::SeqCst);
        if self.used_atomic(0).load(Ordering::Acquire) & USED_F_NO_NOTIFY.to_le() == 0 {
            transport.notify(self.queue_idx);
        }
        Ok(())
    }

    fn free_chain(&mut self, head: u16, descs: u16) {
        let mut i = head;
        for _ in 1..descs {
            i = self.desc_shadow[usize::from(i)].next;
        }
        // The shadow is ours, so this walk follows what we wrote, never what
        // the device may have scribbled on the table.
        self.desc_shadow[usize::from(i)].next = self.free_head;
        self.free_head = head;
        self.num_free += descs;
        self.in_flight -= 1;
    }

    /// Takes the next used element. `Ok(None)` when there is none; `Err` for
    /// a violation that makes the whole ring untrustworthy (the caller then
    /// fails every batch in flight with `fail_all`).
    pub(crate) fn pop_used(&mut self) -> Result<Option<Completion>, Error> {
        let used_idx = u16::from_le(self.used_atomic(2).load(Ordering::Acquire));
        let delta = used_idx.wrapping_sub(self.last_used_idx);
        if delta == 0 {
            return Ok(None);
        }
        // The device can only return chains we made available and it has not
        // returned yet.
        if delta > self.in_flight {
            return Err(Error::UsedIndexJump {
                queue: QueueKind::Reporting,
                delta,
            });
        }
        let slot = usize::from(self.last_used_idx & (self.size - 1));
        let p = self
            .used
            .as_ptr()
            .wrapping_add(4 + 8 * slot)
            .cast::<RawUsed>();
        // SAFETY: used.ring[slot] is at 4 + 8*slot, inside the used ring,
        // 4-byte aligned; the device published it before moving used.idx,
        // which we read with Acquire above.
        let elem = unsafe { p.read_volatile() };
        let (id, len) = (u32::from_le(elem.id), u32::from_le(elem.len));
        if id >= u32::from(self.size) {
            return Err(Error::BadUsedId {
                queue: QueueKind::Reporting,
                id,
            });
        }
        let Some(chain) = self.chains[id as usize].take() else {
            return Err(Error::NotInFlight {
                queue: QueueKind::Reporting,
                id,
            });
        };
        self.last_used_idx = self.last_used_idx.wrapping_add(1);
        self.free_chain(id as u16, chain.descs);
        // The device writes nothing into reported pages (QEMU pushes len 0);
        // more than the chain holds is a lie and fails this batch only.
        let result = if u64::from(len) > chain.bytes {
            Err(Error::BadUsedLength {
                queue: QueueKind::Reporting,
                len,
            })
        } else {
            Ok(())
        };
        Ok(Some(Completion {
            batch_id: chain.batch_id,
            result,
            blocks: chain.descs,
            pages: chain.pages,
        }))
    }

    /// Forgets every chain (after a device reset) and calls `f` for each
    /// batch that was in flight.
    pub(crate) fn fail_all(&mut self, mut f: impl FnMut(u32, u16)) {
        for c in self.chains.iter_mut() {
            if let Some(chain) = c.take() {
                f(chain.batch_id, chain.descs);
            }
        }
        self.in_flight = 0;
        self.reset_free_list();
    }
}

// SAFETY: the ring's pointers refer to DMA memory owned by the ring itself;
// nothing ties them to a thread (virtio-drivers does the same for VirtQueue).
unsafe impl<H: Hal> Send for ReportRing<H> {}
