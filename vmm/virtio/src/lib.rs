//! The VMM's virtio devices, device side (VIRTIO 1.2), for guests that are
//! hostile.
//!
//! - [`queue`]: the device side of a split virtqueue. Every index,
//!   descriptor, length and chain the guest writes is checked before use; a
//!   bad one is a [`QueueError`], never a panic or an access outside guest
//!   RAM.
//! - [`mmio`]: the virtio-mmio version 2 register file (§4.2.2), which
//!   decodes the guest's trapped loads and stores and dispatches to a
//!   [`mmio::Device`].
//! - [`balloon`]: a virtio-balloon (§5.5) with free page reporting,
//!   statistics, inflate and deflate, whose guest requests come out as
//!   [`balloon::Event`]s for the VMM to pass on (to the memserver).
//!
//! Guest memory is reached only through [`GuestMemory`], so the whole crate
//! runs on the host in tests, and in the VMM over its mapping of guest RAM.
//! rust-vmm's `virtio-queue` does this job with `std`; a PD has none.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod balloon;
pub mod mmio;
pub mod queue;

#[cfg(test)]
mod tests;

pub use queue::{Buffer, Chain, DeviceQueue, QueueError};

/// An access outside guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    pub gpa: u64,
    pub len: u64,
}

impl core::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#x}+{:#x} is outside guest RAM", self.gpa, self.len)
    }
}

/// The guest's physical memory as the device may touch it: guest RAM only.
/// Implementations copy (volatile, in the VMM): the guest may change the
/// bytes at any time, so nothing read is trusted twice.
pub trait GuestMemory {
    /// Whether `[gpa, gpa + len)` lies in guest RAM (false on overflow).
    fn contains(&self, gpa: u64, len: u64) -> bool;
    /// Copy `buf.len()` bytes from `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange>;
    /// Copy `buf` to `gpa`.
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), OutOfRange>;
}

/// Little-endian helpers over [`GuestMemory`].
pub(crate) trait GuestMemoryExt: GuestMemory {
    fn read_u16(&self, gpa: u64) -> Result<u16, OutOfRange> {
        let mut b = [0; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    fn read_u32(&self, gpa: u64) -> Result<u32, OutOfRange> {
        let mut b = [0; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn read_u64(&self, gpa: u64) -> Result<u64, OutOfRange> {
        let mut b = [0; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

impl<M: GuestMemory + ?Sized> GuestMemoryExt for M {}

/// Guest RAM as one slice at guest-physical `base`: for tests, and for a
/// VMM that has guest RAM mapped as ordinary memory it alone writes while
/// the guest is stopped.
#[derive(Debug)]
pub struct SliceMemory<'a> {
    pub base: u64,
    pub ram: &'a mut [u8],
}

impl SliceMemory<'_> {
    fn range(&self, gpa: u64, len: u64) -> Result<core::ops::Range<usize>, OutOfRange> {
        let bad = OutOfRange { gpa, len };
        let off = gpa.checked_sub(self.base).ok_or(bad)?;
        let end = off.checked_add(len).ok_or(bad)?;
        if end > self.ram.len() as u64 {
            return Err(bad);
        }
        Ok(off as usize..end as usize)
    }
}

impl GuestMemory for SliceMemory<'_> {
    fn contains(&self, gpa: u64, len: u64) -> bool {
        self.range(gpa, len).is_ok()
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let r = self.range(gpa, buf.len() as u64)?;
        buf.copy_from_slice(&self.ram[r]);
        Ok(())
    }
    fn write(&mut self, gpa: u64, buf: &[u8]) -> Result<(), OutOfRange> {
        let r = self.range(gpa, buf.len() as u64)?;
        self.ram[r].copy_from_slice(buf);
        Ok(())
    }
}
