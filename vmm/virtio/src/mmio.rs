//! The virtio-mmio transport, version 2 (VIRTIO 1.2 §4.2.2): the register
//! file a guest driver reads and writes through trapped loads and stores,
//! dispatching to a [`Device`].
//!
//! The guest is hostile: registers are 32-bit and aligned (config space
//! takes 8, 16 and 32-bit accesses), any other access reads 0 and is
//! counted; a driver that accepts features the device did not offer, or
//! lacks VERSION_1, does not get FEATURES_OK; a queue whose rings are bad
//! does not become ready; a bad chain puts the device into
//! DEVICE_NEEDS_RESET (§2.1.2) with a configuration-change interrupt, and
//! it takes no more chains until the driver resets it. Nothing the guest
//! writes reaches another guest or the VMM's own state.

use crate::GuestMemory;
use crate::queue::{DeviceQueue, QueueError};

/// Register offsets (§4.2.2).
pub mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// "virt", little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// Our vendor id: "eS4L".
pub const VENDOR: u32 = 0x4c34_5365;
/// The size of the register window.
pub const WINDOW: u64 = 0x200;

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// InterruptStatus bits (§4.2.2).
pub const INT_USED_BUFFER: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

/// VIRTIO_F_VERSION_1.
pub const VERSION_1: u64 = 1 << 32;

/// What a device behind the transport provides.
pub trait Device {
    /// The virtio device id (§5).
    fn device_id(&self) -> u32;
    /// The features offered (VERSION_1 among them).
    fn features(&self) -> u64;
    /// QueueNumMax of queue `q` once `negotiated` (0: no such queue).
    fn queue_max(&self, q: usize, negotiated: u64) -> u16;
    /// Read config space at `offset` (any bytes past the device's config
    /// read as 0).
    fn config_read(&self, offset: u64, data: &mut [u8]);
    /// The driver wrote config space at `offset`.
    fn config_write(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK with `negotiated` features.
    fn activate(&mut self, negotiated: u64);
    /// The device was reset: drop everything in flight.
    fn reset(&mut self);
    /// The driver notified queue `q`: take what it offers. `Ok(true)` when
    /// used buffers were returned (the transport raises the interrupt).
    fn notify(
        &mut self,
        q: usize,
        queues: &mut [DeviceQueue],
        mem: &mut dyn GuestMemory,
    ) -> Result<bool, QueueError>;
}

/// What the transport counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Accesses of a wrong size or offset.
    pub bad_accesses: u64,
    /// Feature sets refused at FEATURES_OK.
    pub bad_features: u64,
    /// Queues that could not be made ready.
    pub bad_queues: u64,
    /// Chains or completions refused ([`QueueError`]s): each puts the
    /// device into DEVICE_NEEDS_RESET.
    pub queue_errors: u64,
    /// Device resets (by the driver).
    pub resets: u64,
    /// Interrupts the VMM should inject.
    pub interrupts: u64,
}

/// A virtio-mmio version 2 device with `N` queues.
#[derive(Debug)]
pub struct MmioTransport<D, const N: usize> {
    pub device: D,
    queues: [DeviceQueue; N],
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
    /// The last queue error, for the VMM's log.
    pub last_error: Option<QueueError>,
    pub counters: Counters,
}

impl<D: Device, const N: usize> MmioTransport<D, N> {
    pub fn new(device: D) -> Self {
        MmioTransport {
            device,
            queues: core::array::from_fn(|_| DeviceQueue::new(0)),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            last_error: None,
            counters: Counters::default(),
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features both sides agreed (valid once FEATURES_OK).
    pub fn negotiated(&self) -> u64 {
        self.driver_features
    }

    /// Whether the interrupt line is up (InterruptStatus is not 0): the VMM
    /// injects the IRQ while it is, and again after an acknowledgement
    /// that leaves it up.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_status != 0
    }

    fn raise(&mut self, bits: u32) {
        if self.interrupt_status & bits != bits {
            self.counters.interrupts += 1;
        }
        self.interrupt_status |= bits;
    }

    /// The device's configuration changed (e.g. the balloon's target):
    /// bump the generation and raise the config interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK != 0 {
            self.raise(INT_CONFIG_CHANGE);
        }
    }

    fn failed(&mut self, e: QueueError) {
        self.counters.queue_errors += 1;
        self.last_error = Some(e);
        self.status |= status::DEVICE_NEEDS_RESET;
        self.raise(INT_CONFIG_CHANGE);
    }

    fn usable(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// Run `f` on the device and its queues (a completion the VMM got from
    /// elsewhere, e.g. the memserver finished a report). Nothing runs on a
    /// device that is not live; an error needs a reset, as the guest's own.
    pub fn with_queues(
        &mut self,
        mem: &mut dyn GuestMemory,
        f: impl FnOnce(&mut D, &mut [DeviceQueue], &mut dyn GuestMemory) -> Result<bool, QueueError>,
    ) -> Result<(), QueueError> {
        if !self.usable() {
            return Err(QueueError::NotReady);
        }
        match f(&mut self.device, &mut self.queues, mem) {
            Ok(used) => {
                if used {
                    self.raise(INT_USED_BUFFER);
                }
                Ok(())
            }
            Err(e) => {
                self.failed(e);
                Err(e)
            }
        }
    }

    fn reset(&mut self) {
        self.counters.resets += 1;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
    }

    fn queue(&mut self) -> Option<&mut DeviceQueue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A load of `size` bytes (1, 2, 4) at `offset` in the window.
    pub fn read(&mut self, offset: u64, size: u8) -> u32 {
        if offset >= reg::CONFIG {
            let mut b = [0u8; 4];
            match size {
                1 | 2 | 4 if offset.is_multiple_of(u64::from(size)) => {
                    self.device
                        .config_read(offset - reg::CONFIG, &mut b[..usize::from(size)]);
                    return u32::from_le_bytes(b);
                }
                _ => {
                    self.counters.bad_accesses += 1;
                    return 0;
                }
            }
        }
        if size != 4 || !offset.is_multiple_of(4) {
            self.counters.bad_accesses += 1;
            return 0;
        }
        let negotiated = self.driver_features;
        match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => 2,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => VENDOR,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => {
                let q = self.queue_sel as usize;
                if q < N {
                    u32::from(self.device.queue_max(q, negotiated))
                } else {
                    0
                }
            }
            reg::QUEUE_READY => self.queue().map_or(0, |q| u32::from(q.is_ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                self.counters.bad_accesses += 1;
                0
            }
        }
    }

    /// A store of `size` bytes (1, 2, 4) of `value` at `offset`.
    pub fn write(&mut self, offset: u64, size: u8, value: u32, mem: &mut dyn GuestMemory) {
        if offset >= reg::CONFIG {
            match size {
                1 | 2 | 4 if offset.is_multiple_of(u64::from(size)) => {
                    let b = value.to_le_bytes();
                    self.device
                        .config_write(offset - reg::CONFIG, &b[..usize::from(size)]);
                }
                _ => self.counters.bad_accesses += 1,
            }
            return;
        }
        if size != 4 || !offset.is_multiple_of(4) {
            self.counters.bad_accesses += 1;
            return;
        }
        let v = u64::from(value);
        // Queue registers may only change while the queue is not ready.
        let set_queue = |t: &mut Self, f: &mut dyn FnMut(&mut DeviceQueue)| match t.queue() {
            Some(q) if !q.is_ready() => f(q),
            _ => t.counters.bad_accesses += 1,
        };
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 {
                    self.counters.bad_accesses += 1;
                    return;
                }
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                    _ => self.counters.bad_accesses += 1,
                }
            }
            reg::QUEUE_SEL => self.queue_sel = value,
            reg::QUEUE_NUM => set_queue(self, &mut |q| q.size = value as u16),
            reg::QUEUE_DESC_LOW => set_queue(self, &mut |q| q.desc = (q.desc & !0xffff_ffff) | v),
            reg::QUEUE_DESC_HIGH => {
                set_queue(self, &mut |q| q.desc = (q.desc & 0xffff_ffff) | (v << 32))
            }
            reg::QUEUE_DRIVER_LOW => {
                set_queue(self, &mut |q| q.avail = (q.avail & !0xffff_ffff) | v)
            }
            reg::QUEUE_DRIVER_HIGH => {
                set_queue(self, &mut |q| q.avail = (q.avail & 0xffff_ffff) | (v << 32))
            }
            reg::QUEUE_DEVICE_LOW => set_queue(self, &mut |q| q.used = (q.used & !0xffff_ffff) | v),
            reg::QUEUE_DEVICE_HIGH => {
                set_queue(self, &mut |q| q.used = (q.used & 0xffff_ffff) | (v << 32))
            }
            reg::QUEUE_READY => {
                let sel = self.queue_sel as usize;
                let max = if sel < N {
                    self.device.queue_max(sel, self.driver_features)
                } else {
                    0
                };
                let Some(q) = self.queues.get_mut(sel) else {
                    self.counters.bad_accesses += 1;
                    return;
                };
                if value == 0 {
                    q.disable();
                } else if max == 0 {
                    self.counters.bad_queues += 1;
                } else {
                    // QueueNumMax follows the negotiated features.
                    let mut fresh = DeviceQueue::new(max);
                    (fresh.size, fresh.desc, fresh.avail, fresh.used) =
                        (q.size, q.desc, q.avail, q.used);
                    *q = fresh;
                    if q.enable(mem).is_err() {
                        self.counters.bad_queues += 1;
                    }
                }
            }
            reg::QUEUE_NOTIFY => {
                let q = value as usize;
                if q >= N || !self.usable() {
                    self.counters.bad_accesses += 1;
                    return;
                }
                match self.device.notify(q, &mut self.queues, mem) {
                    Ok(true) => self.raise(INT_USED_BUFFER),
                    Ok(false) => {}
                    Err(e) => self.failed(e),
                }
            }
            reg::INTERRUPT_ACK => self.interrupt_status &= !value,
            reg::STATUS => self.write_status(value),
            _ => self.counters.bad_accesses += 1,
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value & !status::DEVICE_NEEDS_RESET;
        // FEATURES_OK only for a subset of what was offered, with VERSION_1
        // (a version 2 transport is a modern device, §4.2.2.2).
        if value & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0 || self.driver_features & VERSION_1 == 0 {
                self.counters.bad_features += 1;
                value &= !status::FEATURES_OK;
            }
        }
        if value & status::DRIVER_OK != 0 && self.status & status::DRIVER_OK == 0 {
            if value & status::FEATURES_OK == 0 {
                self.counters.bad_features += 1;
                value &= !status::DRIVER_OK;
            } else {
                self.device.activate(self.driver_features);
            }
        }
        // Bits are only ever added until a reset (§2.1.2), and
        // DEVICE_NEEDS_RESET stays.
        self.status |= value;
    }
}
