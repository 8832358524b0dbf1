//! The register file of the shared-memory transport: one 4 KiB page that both
//! the driver (through [`super::SharedTransport`]) and the device model map.
//!
//! It mirrors virtio-mmio v2's registers, with each queue's registers laid out
//! side by side instead of behind QueueSel. Every field is an atomic; the
//! comment says which side writes it. Signalling: the driver writes registers,
//! then rings the doorbell (queue notify); the device sets ISR bits, then
//! raises its interrupt. Doorbells and interrupts carry no state; each side
//! re-reads the page after every wake-up.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};

/// "vbal", written by the device when it creates the page.
pub const MAGIC: u32 = 0x6c61_6276;
/// Queues the page can describe.
pub const MAX_QUEUES: usize = 8;
/// Bytes of device config space.
pub const CONFIG_SIZE: usize = 64;
/// Doorbell value meaning "status changed" rather than a queue notify.
pub const STATUS_DOORBELL: u16 = u16::MAX;

/// One queue's registers.
#[repr(C)]
#[derive(Debug, Default)]
pub struct QueueRegs {
    /// Device: largest size it accepts; 0 = no such queue.
    pub max_size: AtomicU32,
    /// Driver: size chosen.
    pub size: AtomicU32,
    /// Driver: 1 when the addresses below are valid (QueueReady).
    pub ready: AtomicU32,
    /// Padding to keep the u64s aligned.
    pub _pad: AtomicU32,
    /// Driver: guest-physical address of the descriptor table.
    pub desc: AtomicU64,
    /// Driver: guest-physical address of the available ring.
    pub driver: AtomicU64,
    /// Driver: guest-physical address of the used ring.
    pub device: AtomicU64,
}

/// The register page.
#[repr(C)]
#[derive(Debug)]
pub struct RegisterFile {
    /// Device: [`MAGIC`].
    pub magic: AtomicU32,
    /// Device: virtio device id (5).
    pub device_id: AtomicU32,
    /// Device: features offered.
    pub device_features: AtomicU64,
    /// Driver: features accepted.
    pub driver_features: AtomicU64,
    /// Driver writes the status; the device may write 0 (it reset) or set
    /// DEVICE_NEEDS_RESET.
    pub status: AtomicU32,
    /// Device sets bits (1 = used buffer, 2 = config change); driver reads and clears.
    pub isr: AtomicU32,
    /// Device: bumped around every config-space change.
    pub config_generation: AtomicU32,
    /// Driver: bumped on every reset (status 0), so the device drops its
    /// queue state even if it never saw the 0.
    pub reset_epoch: AtomicU32,
    /// Device: non-zero if queues must use the legacy contiguous layout.
    pub legacy: AtomicU32,
    /// Driver: bit n set when queue n was notified; device clears.
    pub notify_pending: AtomicU32,
    /// Driver: bumped on every doorbell when the futex doorbell is used
    /// ([`ring_futex_doorbell`]); the device sleeps on it with FUTEX_WAIT.
    /// Needs no fd, so a PD process and the launcher's device thread share
    /// it through the register page alone.
    pub doorbell: AtomicU32,
    /// Padding to keep the queue registers 8-byte aligned.
    pub _pad: AtomicU32,
    /// Per-queue registers.
    pub queues: [QueueRegs; MAX_QUEUES],
    /// Device config space (balloon: le32 num_pages, le32 actual, ...).
    /// num_pages is written by the device, actual by the driver.
    pub config: [AtomicU8; CONFIG_SIZE],
}

const _: () = assert!(size_of::<RegisterFile>() <= 4096);

/// Reads a le32 from config space.
pub fn config_u32(r: &RegisterFile, offset: usize) -> u32 {
    use std::sync::atomic::Ordering::Acquire;
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = r.config[offset + i].load(Acquire);
    }
    u32::from_le_bytes(b)
}

/// Writes a le32 to config space.
pub fn set_config_u32(r: &RegisterFile, offset: usize, v: u32) {
    use std::sync::atomic::Ordering::Release;
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        r.config[offset + i].store(*x, Release);
    }
}

/// Rings the futex doorbell: bump the word, then FUTEX_WAKE. A shared (not
/// PRIVATE) futex, keyed on the page, so it wakes a waiter in another
/// process that maps the same memfd.
pub fn ring_futex_doorbell(r: &RegisterFile) {
    use std::sync::atomic::Ordering::AcqRel;
    r.doorbell.fetch_add(1, AcqRel);
    // Fails only for a bad address, which a mapped page is not.
    let _ = rustix::thread::futex::wake(&r.doorbell, rustix::thread::futex::Flags::empty(), 1);
}

/// Sleeps until the doorbell word differs from `seen` or `timeout` passes.
/// The value check is atomic with the sleep (FUTEX_WAIT), so a ring between
/// the caller's load and this call is never lost.
pub fn wait_futex_doorbell(r: &RegisterFile, seen: u32, timeout: std::time::Duration) {
    let ts = rustix::thread::futex::Timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()) as _,
    };
    // EAGAIN (value already changed), ETIMEDOUT and EINTR all mean "look again".
    let _ = rustix::thread::futex::wait(
        &r.doorbell,
        rustix::thread::futex::Flags::empty(),
        seen,
        Some(&ts),
    );
}

/// The register file at the start of `region`, if it is large enough.
pub(crate) fn register_file(region: &super::SharedRegion) -> Option<&RegisterFile> {
    if region.len() < size_of::<RegisterFile>() {
        return None;
    }
    // SAFETY: the region is at least one RegisterFile long (checked) and
    // page-aligned (mmap / `from_mapping`), lives as long as the borrow, and
    // is only ever accessed through atomics; any bit pattern (zeroed memory
    // included) is a valid RegisterFile of atomics.
    Some(unsafe { &*region.as_ptr().cast::<RegisterFile>() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SharedRegion;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Acquire;
    use std::time::{Duration, Instant};

    #[test]
    fn the_futex_doorbell_wakes_a_waiter_long_before_its_timeout() {
        let page = Arc::new(SharedRegion::create("regs", 4096).unwrap());
        let p2 = page.clone();
        let seen = register_file(&page).unwrap().doorbell.load(Acquire);
        let waiter = std::thread::spawn(move || {
            let r = register_file(&p2).unwrap();
            let start = Instant::now();
            // Loop on the value: a spurious wake-up is allowed by FUTEX_WAIT.
            while r.doorbell.load(Acquire) == seen && start.elapsed() < Duration::from_secs(60) {
                wait_futex_doorbell(r, seen, Duration::from_secs(60));
            }
            start.elapsed()
        });
        ring_futex_doorbell(register_file(&page).unwrap());
        let waited = waiter.join().unwrap();
        assert!(waited < Duration::from_secs(30), "woken after {waited:?}");
        assert_eq!(
            register_file(&page).unwrap().doorbell.load(Acquire),
            seen + 1
        );
    }
}
