//! The device model as the host platform runs it: a virtio-balloon device on
//! its own thread, over memfds the launcher (`tools`) created for the
//! `virtio_mmio`, `balloon_dma` and guest RAM regions.
//!
//! Signalling needs no extra fd: the driver (the balloon PD process) rings
//! the futex doorbell in the register page ([`super::regs::ring_futex_doorbell`])
//! and the device thread sleeps on it with FUTEX_WAIT; the device raises its
//! interrupt through the launcher's closure (the PD's IRQ eventfd).
//!
//! Order: start the device before the balloon PD, so the register page has
//! the device's magic when the driver looks.

use super::regs::{register_file, ring_futex_doorbell, wait_futex_doorbell};
use super::{BalloonDevice, DeviceConfig, DeviceCounters, DmaWindow, GuestRam, Irq, ModelError};
use super::{RamRange, SharedRegion};
use crate::defs::Stats;
use rustix::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of the register page (the `virtio_mmio` region is one page).
pub const REGS_SIZE: usize = 4096;

/// The device thread re-checks its queues at least this often, in case a
/// doorbell was rung while it was busy (a FUTEX_WAIT value check closes that
/// race already; this is the belt to those braces and how `stop` is noticed).
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// A memfd and the guest-physical range it backs.
#[derive(Debug, Clone, Copy)]
pub struct Memfd<'a> {
    /// The memfd (duplicated; the caller keeps its own).
    pub fd: BorrowedFd<'a>,
    /// Guest-physical base.
    pub paddr: u64,
    /// Bytes.
    pub len: usize,
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd, ModelError> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// The device on its own thread.
#[derive(Debug)]
pub struct HostDevice {
    device: Arc<Mutex<BalloonDevice>>,
    regs: Arc<SharedRegion>,
    ram: Arc<GuestRam>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl HostDevice {
    /// Maps the regions, initialises the register page and starts the
    /// device thread.
    ///
    /// - `regs`: the `virtio_mmio` memfd (one page);
    /// - `dma`: the `balloon_dma` memfd at the paddr the launcher gave the
    ///   balloon PD (its `balloon_dma_paddr`);
    /// - `ram`: each guest RAM memfd at its paddr; reports and inflates
    ///   outside all of them are skipped and counted (`ranges_skipped`);
    /// - `raise_irq`: raises the balloon PD's IRQ (the launcher's
    ///   `IrqLine::raise`).
    pub fn start(
        regs: BorrowedFd<'_>,
        dma: Memfd<'_>,
        ram: &[Memfd<'_>],
        raise_irq: Irq,
        config: DeviceConfig,
    ) -> Result<Self, ModelError> {
        let regs = Arc::new(SharedRegion::map(dup(regs)?, REGS_SIZE)?);
        let dma = DmaWindow {
            region: Arc::new(SharedRegion::map(dup(dma.fd)?, dma.len)?),
            paddr: dma.paddr,
        };
        let ranges = ram
            .iter()
            .map(|m| {
                Ok(RamRange {
                    region: SharedRegion::map(dup(m.fd)?, m.len)?,
                    base: m.paddr,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let ram = Arc::new(GuestRam::from_ranges(ranges)?);
        let device = BalloonDevice::new(regs.clone(), dma, ram.clone(), config, raise_irq)?;
        Self::spawn(device, regs, ram)
    }

    /// Runs an already built device (its register page `regs`) on a thread
    /// woken by the futex doorbell. For tests that build the regions
    /// themselves.
    pub fn spawn(
        device: BalloonDevice,
        regs: Arc<SharedRegion>,
        ram: Arc<GuestRam>,
    ) -> Result<Self, ModelError> {
        if register_file(&regs).is_none() {
            return Err(ModelError::BadSize(regs.len()));
        }
        let device = Arc::new(Mutex::new(device));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, r, s) = (device.clone(), regs.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("balloon-device".into())
            .spawn(move || device_loop(&d, &r, &s))
            .map_err(|_| ModelError::Spawn)?;
        Ok(Self {
            device,
            regs,
            ram,
            stop,
            handle: Some(handle),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BalloonDevice> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the device (fault injection, hold flags; tests).
    pub fn device(&self) -> MutexGuard<'_, BalloonDevice> {
        self.lock()
    }

    /// Sets the balloon target in 4 KiB pages (QMP `balloon`): a config
    /// change interrupt.
    pub fn set_target(&self, pages: u32) {
        self.lock().set_target(pages);
    }

    /// Asks the driver for fresh statistics (QEMU's stats timer); false if
    /// the driver has not given a stats buffer yet.
    pub fn request_stats(&self) -> bool {
        self.lock().request_stats()
    }

    /// The statistics the driver sent last.
    pub fn last_stats(&self) -> Option<Stats> {
        self.lock().last_stats()
    }

    /// The driver's `actual` (pages in the balloon).
    pub fn actual(&self) -> u32 {
        self.lock().actual()
    }

    /// Counters: bytes discarded, reports, inflated/deflated pages, skipped
    /// ranges, ...
    pub fn counters(&self) -> DeviceCounters {
        self.lock().counters()
    }

    /// Bytes the guest RAM memfds really hold (st_blocks * 512, summed).
    pub fn held_bytes(&self) -> Result<u64, ModelError> {
        self.ram.allocated_bytes()
    }

    /// Wakes the device thread (after changing hold flags or faults).
    pub fn kick(&self) {
        if let Some(r) = register_file(&self.regs) {
            ring_futex_doorbell(r);
        }
    }

    /// Stops the thread and waits for it. Idempotent; also done on drop.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.kick();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for HostDevice {
    fn drop(&mut self) {
        self.stop();
    }
}

fn device_loop(device: &Mutex<BalloonDevice>, regs: &SharedRegion, stop: &AtomicBool) {
    let Some(r) = register_file(regs) else {
        return;
    };
    while !stop.load(Ordering::Acquire) {
        // Read the word before processing: a ring during processing changes
        // it, so the wait below returns at once and nothing is missed.
        let seen = r.doorbell.load(Ordering::Acquire);
        {
            let mut dev = device.lock().unwrap_or_else(|e| e.into_inner());
            // Doorbells coalesce: process until a round finds nothing.
            while dev.process() {}
        }
        wait_futex_doorbell(r, seen, IDLE_WAIT);
    }
}
