//! A virtio-drivers `Hal` over one DMA region known by its virtual address,
//! physical address and size: the balloon PD's `balloon_dma` region on
//! Microkit (vaddr from `setvar_vaddr`, paddr from the `balloon_dma_paddr`
//! setvar). No platform calls: just page bookkeeping, so it is tested on the
//! host.
//!
//! `Hal` has no `self`, so the region is process-global: [`RegionHal::init`]
//! once before the driver is built. Pages are handed out first-fit from a
//! bitmap and given back on `dma_dealloc`, so a driver restart (which frees
//! and reallocates its queues) reuses the same pages.
//! `share` translates buffers inside the region and refuses anything else:
//! the driver only shares its own DMA pages (DESIGN §3: the balloon never
//! maps guest RAM).

use core::fmt;
use core::ptr::NonNull;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

const PAGE: usize = 4096;
/// Pages the allocator manages (16 MiB); a larger region's rest is unused.
pub const MAX_PAGES: usize = 4096;

/// Why a region cannot be used.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum DmaError {
    /// `init` was called before.
    AlreadyInitialised,
    /// Null, unaligned, empty or a physical address of 0 (virtio-drivers
    /// reads paddr 0 as an allocation failure).
    BadRegion,
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyInitialised => write!(f, "DMA region already set"),
            Self::BadRegion => write!(f, "DMA region unusable (null, unaligned, empty or paddr 0)"),
        }
    }
}

#[derive(Debug)]
struct State {
    vaddr: usize,
    paddr: u64,
    pages: usize,
    used: [u64; MAX_PAGES / 64],
}

impl State {
    fn is_used(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, v: bool) {
        if v {
            self.used[i / 64] |= 1 << (i % 64);
        } else {
            self.used[i / 64] &= !(1 << (i % 64));
        }
    }

    fn translate(&self, vaddr: usize, len: usize) -> Option<u64> {
        let off = vaddr.checked_sub(self.vaddr)?;
        (off.checked_add(len)? <= self.pages * PAGE).then_some(self.paddr + off as u64)
    }
}

static STATE: spin::Mutex<Option<State>> = spin::Mutex::new(None);

/// The device's register window for transports that find it by physical
/// address (virtio-pci's BARs): (vaddr, paddr, size).
static MMIO: spin::Mutex<Option<(usize, u64, usize)>> = spin::Mutex::new(None);

/// The `Hal` over the PD's DMA region.
#[derive(Debug)]
pub struct RegionHal;

impl RegionHal {
    /// Sets the region (once).
    ///
    /// # Safety
    /// `[vaddr, vaddr + size)` must be mapped read-write for the rest of the
    /// program, used by nothing but this allocator, and be the memory the
    /// device sees at `[paddr, paddr + size)`.
    pub unsafe fn init(vaddr: usize, paddr: u64, size: usize) -> Result<(), DmaError> {
        if vaddr == 0
            || paddr == 0
            || size < PAGE
            || !vaddr.is_multiple_of(PAGE)
            || !paddr.is_multiple_of(PAGE as u64)
        {
            return Err(DmaError::BadRegion);
        }
        let mut s = STATE.lock();
        if s.is_some() {
            return Err(DmaError::AlreadyInitialised);
        }
        *s = Some(State {
            vaddr,
            paddr,
            pages: (size / PAGE).min(MAX_PAGES),
            used: [0; MAX_PAGES / 64],
        });
        Ok(())
    }

    /// Sets the device's register window (once): virtio-pci's transport asks
    /// [`Hal::mmio_phys_to_virt`] for its BARs by physical address.
    ///
    /// # Safety
    /// `[vaddr, vaddr + size)` must be mapped uncached for the rest of the
    /// program and be the device registers at `[paddr, paddr + size)`.
    pub unsafe fn map_mmio(vaddr: usize, paddr: u64, size: usize) -> Result<(), DmaError> {
        if vaddr == 0 || size == 0 {
            return Err(DmaError::BadRegion);
        }
        let mut m = MMIO.lock();
        if m.is_some() {
            return Err(DmaError::AlreadyInitialised);
        }
        *m = Some((vaddr, paddr, size));
        Ok(())
    }

    /// The physical address of `[vaddr, vaddr + len)`, if inside the region.
    pub fn translate(vaddr: usize, len: usize) -> Option<u64> {
        STATE.lock().as_ref()?.translate(vaddr, len)
    }

    /// Pages allocated now.
    pub fn pages_in_use() -> usize {
        STATE
            .lock()
            .as_ref()
            .map_or(0, |s| s.used.iter().map(|w| w.count_ones() as usize).sum())
    }
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned pages of the region that
// no other allocation holds (tracked in the bitmap) with the physical
// address the device sees for them; `share` only translates, and refuses
// memory outside the region.
unsafe impl Hal for RegionHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let mut guard = STATE.lock();
        let Some(s) = guard.as_mut() else {
            return (0, NonNull::dangling());
        };
        let mut start = 0;
        while pages > 0 && start + pages <= s.pages {
            match (start..start + pages).find(|&i| s.is_used(i)) {
                Some(i) => start = i + 1,
                None => {
                    (start..start + pages).for_each(|i| s.set(i, true));
                    let v = (s.vaddr + start * PAGE) as *mut u8;
                    // SAFETY: these pages lie inside the region (start + pages
                    // <= s.pages) and are ours alone now (marked used).
                    unsafe { v.write_bytes(0, pages * PAGE) };
                    let p = s.paddr + (start * PAGE) as u64;
                    return (p, NonNull::new(v).unwrap_or(NonNull::dangling()));
                }
            }
        }
        // paddr 0: virtio-drivers turns it into Error::DmaError.
        (0, NonNull::dangling())
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let mut guard = STATE.lock();
        let Some(s) = guard.as_mut() else {
            return -1;
        };
        let Some(first) = paddr.checked_sub(s.paddr).map(|o| o as usize / PAGE) else {
            return -1;
        };
        if first.checked_add(pages).is_none_or(|end| end > s.pages) {
            return -1;
        }
        (first..first + pages).for_each(|i| s.set(i, false));
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // The register window (virtio-pci's BARs), then the DMA region; the
        // MMIO transport is built from its own mapping and never asks.
        let window = *MMIO.lock();
        if let Some((v, p, len)) = window
            && let Some(off) = paddr.checked_sub(p).and_then(|o| usize::try_from(o).ok())
            && off.checked_add(size).is_some_and(|end| end <= len)
            && let Some(ptr) = NonNull::new((v + off) as *mut u8)
        {
            return ptr;
        }
        let guard = STATE.lock();
        let v = guard.as_ref().and_then(|s| {
            let off = usize::try_from(paddr.checked_sub(s.paddr)?).ok()?;
            (off.checked_add(size)? <= s.pages * PAGE).then_some(s.vaddr + off)
        });
        match v.and_then(|v| NonNull::new(v as *mut u8)) {
            Some(p) => p,
            None => panic!("RegionHal: physical address {paddr:#x} outside the DMA region"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let vaddr = buffer.as_ptr().cast::<u8>() as usize;
        match Self::translate(vaddr, buffer.len()) {
            Some(p) => p,
            // Our own invariant: the driver shares nothing but DMA pages.
            None => panic!("RegionHal: buffer at {vaddr:#x} outside the DMA region"),
        }
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_translates_frees_and_refuses_outside() {
        let mem = std::vec![0u8; 20 * PAGE];
        let base = (mem.as_ptr() as usize).next_multiple_of(PAGE);
        // SAFETY: 16 pages of `mem`, which outlives the test's use of them.
        unsafe { RegionHal::init(base, 0x4000_0000, 16 * PAGE) }.unwrap();
        // SAFETY: as above.
        let again = unsafe { RegionHal::init(base, 0x4000_0000, 16 * PAGE) };
        assert_eq!(again, Err(DmaError::AlreadyInitialised));
        let (p1, v1) = RegionHal::dma_alloc(4, BufferDirection::Both);
        let (p2, v2) = RegionHal::dma_alloc(8, BufferDirection::Both);
        assert_eq!((p1, v1.as_ptr() as usize), (0x4000_0000, base));
        assert_eq!((p2, v2.as_ptr() as usize), (0x4000_4000, base + 4 * PAGE));
        assert_eq!(RegionHal::pages_in_use(), 12);
        // 5 pages do not fit the 4 left: refused with paddr 0.
        assert_eq!(RegionHal::dma_alloc(5, BufferDirection::Both).0, 0);
        assert_eq!(RegionHal::translate(base + 100, 10), Some(0x4000_0064));
        assert_eq!(RegionHal::translate(base + 16 * PAGE - 4, 8), None);
        assert_eq!(RegionHal::translate(base - 1, 1), None);
        // SAFETY: p1/v1 came from dma_alloc(4).
        assert_eq!(unsafe { RegionHal::dma_dealloc(p1, v1, 4) }, 0);
        // The freed pages are reused (a driver restart needs this).
        assert_eq!(
            RegionHal::dma_alloc(3, BufferDirection::Both).0,
            0x4000_0000
        );
        // SAFETY: not a page of the region: refused, nothing freed.
        assert_eq!(unsafe { RegionHal::dma_dealloc(0x1000, v1, 1) }, -1);
        let outside = NonNull::from(&mem[..]);
        let r = std::panic::catch_unwind(|| {
            // SAFETY: share only translates; this buffer starts before the region.
            unsafe { RegionHal::share(outside, BufferDirection::DriverToDevice) }
        });
        assert!(
            r.is_err(),
            "a buffer reaching outside the region is refused"
        );
    }
}
