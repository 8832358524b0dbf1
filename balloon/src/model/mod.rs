//! A virtio-balloon device model, a shared-memory transport and a host `Hal`
//! (feature `std`), for tests and the host platform.
//!
//! Memory: the register page, the driver's DMA window and guest RAM are each a
//! memfd mapped MAP_SHARED, so the device can run in a thread (tests) or in
//! another process (the launcher passes the fds). Signals: the driver rings a
//! doorbell callback on queue notify / status change; the device calls an
//! interrupt callback. [`EventFd`] and [`DeviceThread`] wire them with eventfds.

mod device;
mod hal;
pub mod host;
mod regs;
mod shm;
mod transport;

pub use device::{BalloonDevice, DeviceConfig, DeviceCounters, Fault, GuestRam, Irq, RamRange};
pub use hal::{DEFAULT_DMA_PADDR, DEFAULT_DMA_SIZE, DmaWindow, HostHal};
pub use regs::{
    MAGIC, MAX_QUEUES, RegisterFile, STATUS_DOORBELL, ring_futex_doorbell, wait_futex_doorbell,
};
pub use shm::SharedRegion;
pub use transport::{Doorbell, SharedTransport};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::fd::OwnedFd;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Errors of the model and host platform pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelError {
    /// A system call failed.
    Io(rustix::io::Errno),
    /// A region of an unusable size.
    BadSize(usize),
    /// The register page was not initialised by a device.
    BadMagic,
    /// The HostHal window is already installed.
    AlreadyInstalled,
    /// The region is a borrowed mapping without a memfd.
    NoFd,
    /// Two guest RAM ranges overlap in guest-physical space.
    Overlap(u64),
    /// A thread could not be started.
    Spawn,
}

impl From<rustix::io::Errno> for ModelError {
    fn from(e: rustix::io::Errno) -> Self {
        Self::Io(e)
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "system call failed: {e}"),
            Self::BadSize(n) => write!(f, "unusable region size {n}"),
            Self::BadMagic => write!(f, "register page has no device"),
            Self::AlreadyInstalled => write!(f, "DMA window already installed"),
            Self::NoFd => write!(f, "region has no memfd (a borrowed mapping)"),
            Self::Overlap(p) => write!(f, "guest RAM ranges overlap at {p:#x}"),
            Self::Spawn => write!(f, "could not start the device thread"),
        }
    }
}

impl std::error::Error for ModelError {}

/// An eventfd used as a doorbell or an interrupt line.
#[derive(Debug, Clone)]
pub struct EventFd(Arc<OwnedFd>);

impl EventFd {
    /// A new non-blocking eventfd.
    pub fn new() -> Result<Self, ModelError> {
        Ok(Self(Arc::new(rustix::event::eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?)))
    }

    /// Signals it.
    pub fn signal(&self) {
        // EAGAIN only when the counter would overflow: it is signalled anyway.
        let _ = rustix::io::write(&*self.0, &1u64.to_ne_bytes());
    }

    /// Waits until signalled or `timeout` passes; clears it. True if signalled.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let ts = timeout.map(|t| rustix::event::Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        });
        let mut fds = [PollFd::new(&*self.0, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(n) if n > 0 => {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&*self.0, &mut buf);
                true
            }
            _ => false,
        }
    }

    /// The fd, e.g. to pass to another process.
    pub fn fd(&self) -> &OwnedFd {
        &self.0
    }
}

/// Runs a [`BalloonDevice`] in a thread that wakes on a doorbell eventfd.
#[derive(Debug)]
pub struct DeviceThread {
    device: Arc<Mutex<BalloonDevice>>,
    doorbell: EventFd,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Starts the thread. The driver's transport must signal `doorbell`.
    pub fn spawn(device: BalloonDevice, doorbell: EventFd) -> Self {
        let device = Arc::new(Mutex::new(device));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, bell, s) = (device.clone(), doorbell.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                bell.wait(None);
                // Doorbells coalesce: process until a round finds nothing.
                let mut dev = d.lock().unwrap_or_else(|e| e.into_inner());
                while dev.process() {}
            }
        });
        Self {
            device,
            doorbell,
            stop,
            handle: Some(handle),
        }
    }

    /// Locks the device (to set the target, inject faults, read counters).
    pub fn device(&self) -> MutexGuard<'_, BalloonDevice> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the device thread (after changing hold flags).
    pub fn kick(&self) {
        self.doorbell.signal();
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.doorbell.signal();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
