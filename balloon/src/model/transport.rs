//! A virtio-drivers `Transport` over the shared register page.

use super::regs::{
    MAGIC, MAX_QUEUES, RegisterFile, STATUS_DOORBELL, register_file, ring_futex_doorbell,
};
use super::{ModelError, SharedRegion};
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use virtio_drivers::PhysAddr;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Called with the queue index on a queue notify, or [`STATUS_DOORBELL`]
/// after a status change; typically writes the device's eventfd.
pub type Doorbell = Box<dyn FnMut(u16) + Send>;

/// The driver side of the shared-memory transport.
pub struct SharedTransport {
    regs: Arc<SharedRegion>,
    doorbell: Doorbell,
}

impl std::fmt::Debug for SharedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTransport")
            .field("regs", &self.regs)
            .finish_non_exhaustive()
    }
}

impl SharedTransport {
    /// Wraps a register page created by the device model (checks its magic).
    pub fn new(regs: Arc<SharedRegion>, doorbell: Doorbell) -> Result<Self, ModelError> {
        if regs.len() < size_of::<RegisterFile>() {
            return Err(ModelError::BadSize(regs.len()));
        }
        let t = Self { regs, doorbell };
        if t.r().magic.load(Acquire) != MAGIC {
            return Err(ModelError::BadMagic);
        }
        Ok(t)
    }

    /// Wraps a register page with the futex doorbell: each notify bumps
    /// the page's doorbell word and FUTEX_WAKEs the device
    /// ([`super::regs::wait_futex_doorbell`] on the other side). No fd is
    /// needed, which is what a PD process under the launcher has.
    pub fn with_futex_doorbell(regs: Arc<SharedRegion>) -> Result<Self, ModelError> {
        let bell = regs.clone();
        Self::new(
            regs,
            Box::new(move |_| {
                if let Some(r) = register_file(&bell) {
                    ring_futex_doorbell(r);
                }
            }),
        )
    }

    /// The transport over a register page already mapped into this process
    /// (the `virtio_mmio` region `pd`'s host backend mapped), with the futex
    /// doorbell.
    ///
    /// # Safety
    /// As [`SharedRegion::from_mapping`]: `ptr` page-aligned, valid for `len`
    /// bytes for the transport's life, shared memory accessed atomically.
    pub unsafe fn from_mapping(ptr: *mut u8, len: usize) -> Result<Self, ModelError> {
        // SAFETY: forwarded from this function's contract.
        let region = unsafe { SharedRegion::from_mapping(ptr, len)? };
        Self::with_futex_doorbell(Arc::new(region))
    }

    fn r(&self) -> &RegisterFile {
        // SAFETY: the region is at least one RegisterFile long (checked in
        // `new`), page-aligned, and only ever accessed through atomics; zeroed
        // memory is a valid RegisterFile.
        unsafe { &*self.regs.as_ptr().cast::<RegisterFile>() }
    }
}

impl Transport for SharedTransport {
    fn device_type(&self) -> DeviceType {
        // An unknown id reads as a type no balloon driver accepts.
        DeviceType::try_from(self.r().device_id.load(Acquire)).unwrap_or(DeviceType::Memory)
    }

    fn read_device_features(&mut self) -> u64 {
        self.r().device_features.load(Acquire)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.r().driver_features.store(driver_features, Release);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.r()
            .queues
            .get(usize::from(queue))
            .map_or(0, |q| q.max_size.load(Acquire))
    }

    fn notify(&mut self, queue: u16) {
        if usize::from(queue) < MAX_QUEUES {
            self.r().notify_pending.fetch_or(1 << queue, AcqRel);
        }
        (self.doorbell)(queue);
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.r().status.load(Acquire))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let r = self.r();
        if status.is_empty() {
            // Reset (§4.2.2.1 for mmio): the queues are gone.
            for q in &r.queues {
                q.ready.store(0, Release);
                q.size.store(0, Release);
            }
            r.driver_features.store(0, Release);
            r.isr.store(0, Release);
            r.reset_epoch.fetch_add(1, AcqRel);
        }
        r.status.store(status.bits(), Release);
        (self.doorbell)(STATUS_DOORBELL);
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        self.r().legacy.load(Acquire) != 0
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let Some(q) = self.r().queues.get(usize::from(queue)) else {
            return;
        };
        q.size.store(size, Release);
        q.desc.store(descriptors, Release);
        q.driver.store(driver_area, Release);
        q.device.store(device_area, Release);
        q.ready.store(1, Release);
    }

    fn queue_unset(&mut self, queue: u16) {
        if let Some(q) = self.r().queues.get(usize::from(queue)) {
            q.ready.store(0, Release);
            q.size.store(0, Release);
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.r()
            .queues
            .get(usize::from(queue))
            .is_some_and(|q| q.ready.load(Acquire) != 0)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::from_bits_retain(self.r().isr.swap(0, AcqRel))
    }

    fn read_config_generation(&self) -> u32 {
        self.r().config_generation.load(Acquire)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let n = size_of::<T>();
        let r = self.r();
        let bytes = r
            .config
            .get(offset..offset.saturating_add(n))
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        let mut buf = [0u8; super::regs::CONFIG_SIZE];
        for (b, a) in buf.iter_mut().zip(bytes) {
            *b = a.load(Acquire);
        }
        T::read_from_bytes(&buf[..n]).map_err(|_| virtio_drivers::Error::InvalidParam)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let src = value.as_bytes();
        let dst = self
            .r()
            .config
            .get(offset..offset.saturating_add(src.len()))
            .ok_or(virtio_drivers::Error::ConfigSpaceTooSmall)?;
        for (a, b) in dst.iter().zip(src) {
            a.store(*b, Release);
        }
        Ok(())
    }
}
