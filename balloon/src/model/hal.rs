//! A virtio-drivers `Hal` for the host platform.
//!
//! "DMA memory" is one shared memfd at a known guest-physical base (the
//! window). The driver allocates pages from it; the device maps the same memfd
//! and translates guest-physical addresses back. `Hal` has no `self`, so the
//! window is process-global: install it once (the launcher passes the memfd),
//! or let tests share a default one.

use super::{ModelError, SharedRegion};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// Guest-physical base of the default window (DESIGN §4 uses 0x1000_0000 for DMA on x86_64).
pub const DEFAULT_DMA_PADDR: u64 = 0x1000_0000;
/// Size of the default window.
pub const DEFAULT_DMA_SIZE: usize = 64 << 20;
const PAGE: usize = 4096;

/// The DMA window: a shared region and its guest-physical base.
#[derive(Clone, Debug)]
pub struct DmaWindow {
    /// The memory.
    pub region: Arc<SharedRegion>,
    /// Its guest-physical base.
    pub paddr: u64,
}

impl DmaWindow {
    /// Driver virtual address → guest-physical address.
    pub fn virt_to_phys(&self, vaddr: usize, len: usize) -> Option<u64> {
        let base = self.region.as_ptr() as usize;
        let off = vaddr.checked_sub(base)?;
        (off.checked_add(len)? <= self.region.len()).then_some(self.paddr + off as u64)
    }
}

struct Pool {
    window: DmaWindow,
    used: Vec<bool>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
static DEFAULT: OnceLock<DmaWindow> = OnceLock::new();

/// The host platform's `Hal`.
#[derive(Debug)]
pub struct HostHal;

impl HostHal {
    /// Installs the window (once per process).
    pub fn install(window: DmaWindow) -> Result<(), ModelError> {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.is_some() {
            return Err(ModelError::AlreadyInstalled);
        }
        let pages = window.region.len() / PAGE;
        *pool = Some(Pool {
            window,
            used: vec![false; pages],
        });
        Ok(())
    }

    /// Installs (first call) and returns a default window for tests: a
    /// DEFAULT_DMA_SIZE memfd at DEFAULT_DMA_PADDR.
    pub fn install_default() -> Result<DmaWindow, ModelError> {
        if let Some(w) = DEFAULT.get() {
            return Ok(w.clone());
        }
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pool.as_ref() {
            return Ok(p.window.clone());
        }
        let window = DmaWindow {
            region: Arc::new(SharedRegion::create("balloon-dma", DEFAULT_DMA_SIZE)?),
            paddr: DEFAULT_DMA_PADDR,
        };
        *pool = Some(Pool {
            window: window.clone(),
            used: vec![false; DEFAULT_DMA_SIZE / PAGE],
        });
        let _ = DEFAULT.set(window.clone());
        Ok(window)
    }

    /// The installed window.
    pub fn window() -> Option<DmaWindow> {
        POOL.lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| p.window.clone())
    }

    /// Pages allocated now.
    pub fn pages_in_use() -> usize {
        POOL.lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |p| p.used.iter().filter(|u| **u).count())
    }

    fn translate(vaddr: usize, len: usize) -> PhysAddr {
        let pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        pool.as_ref()
            .and_then(|p| p.window.virt_to_phys(vaddr, len))
            // Our own invariant: the driver only shares buffers from its DMA pages.
            .expect("HostHal: buffer outside the DMA window")
    }
}

// SAFETY: `dma_alloc` returns page-aligned, zeroed, non-overlapping pages of
// the mapped window (tracked in `used`) and a physical address the device
// model translates back to the same memory.
unsafe impl Hal for HostHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pool) = guard.as_mut() else {
            return (0, NonNull::dangling());
        };
        let n = pool.used.len();
        let mut start = 0;
        while start + pages <= n {
            match pool.used[start..start + pages].iter().position(|u| *u) {
                Some(i) => start += i + 1,
                None => {
                    pool.used[start..start + pages].fill(true);
                    let off = start * PAGE;
                    // SAFETY: `off + pages * PAGE <= len` of the mapping.
                    let v = unsafe { pool.window.region.as_ptr().add(off) };
                    // SAFETY: these pages are ours alone now (marked used).
                    unsafe { v.write_bytes(0, pages * PAGE) };
                    return (
                        pool.window.paddr + off as u64,
                        NonNull::new(v).unwrap_or(NonNull::dangling()),
                    );
                }
            }
        }
        (0, NonNull::dangling())
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pool) = guard.as_mut() else {
            return -1;
        };
        let Some(first) = paddr
            .checked_sub(pool.window.paddr)
            .map(|o| o as usize / PAGE)
        else {
            return -1;
        };
        match pool.used.get_mut(first..first + pages) {
            Some(s) => {
                s.fill(false);
                0
            }
            None => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // The host transport has no MMIO BARs; only the DMA window translates.
        let w = Self::window().expect("HostHal: no DMA window");
        let off = paddr
            .checked_sub(w.paddr)
            .filter(|o| *o as usize + size <= w.region.len())
            .expect("HostHal: address outside the DMA window");
        // SAFETY: in bounds of the mapping (checked above).
        NonNull::new(unsafe { w.region.as_ptr().add(off as usize) }).expect("non-null mapping")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        Self::translate(buffer.as_ptr().cast::<u8>() as usize, buffer.len())
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
