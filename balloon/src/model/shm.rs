//! Shared memory: a memfd mapped MAP_SHARED, so the driver and the device can
//! be threads of one process or separate processes (pass the fd).

use super::ModelError;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FallocateFlags, MemfdFlags, SeekFrom};
use rustix::mm::{MapFlags, ProtFlags};
use std::ptr::NonNull;

/// A memfd and its shared mapping, or (from [`SharedRegion::from_mapping`])
/// a mapping someone else made and keeps, such as a region `pd`'s host
/// backend mapped for this PD.
#[derive(Debug)]
pub struct SharedRegion {
    /// `None` for a borrowed mapping: no fd, and not ours to unmap.
    fd: Option<OwnedFd>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, not tied to a thread; every
// access through it is volatile or atomic and the users' protocols order them.
unsafe impl Send for SharedRegion {}
// SAFETY: as above; `&SharedRegion` only hands out raw pointers.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Creates a zeroed memfd of `len` bytes (a multiple of 4 KiB) and maps it.
    pub fn create(name: &str, len: usize) -> Result<Self, ModelError> {
        if len == 0 || !len.is_multiple_of(4096) {
            return Err(ModelError::BadSize(len));
        }
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        Self::map(fd, len)
    }

    /// Maps an existing memfd of `len` bytes (e.g. received from another process).
    pub fn map(fd: OwnedFd, len: usize) -> Result<Self, ModelError> {
        let st = rustix::fs::fstat(&fd)?;
        if (st.st_size as u64) < len as u64 || len == 0 {
            return Err(ModelError::BadSize(len));
        }
        // SAFETY: a fresh shared mapping of a file we hold; the kernel picks
        // the address, so nothing else in the process is aliased.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(ModelError::BadSize(len))?;
        Ok(Self {
            fd: Some(fd),
            ptr,
            len,
        })
    }

    /// Wraps a shared mapping made elsewhere (not unmapped on drop). It has
    /// no fd, so [`Self::punch_hole`], [`Self::allocated_bytes`] and
    /// [`Self::has_data`] fail with [`ModelError::NoFd`].
    ///
    /// # Safety
    /// `ptr` must be page-aligned and valid for reads and writes of `len`
    /// bytes for as long as the region is used, and every access to that
    /// memory by anyone must be atomic or volatile (it is shared memory).
    pub unsafe fn from_mapping(ptr: *mut u8, len: usize) -> Result<Self, ModelError> {
        let ptr = NonNull::new(ptr).ok_or(ModelError::BadSize(len))?;
        if len == 0 || !(ptr.as_ptr() as usize).is_multiple_of(4096) {
            return Err(ModelError::BadSize(len));
        }
        Ok(Self { fd: None, ptr, len })
    }

    /// The memfd (`None` for a borrowed mapping).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|f| f.as_fd())
    }

    fn own_fd(&self) -> Result<&OwnedFd, ModelError> {
        self.fd.as_ref().ok_or(ModelError::NoFd)
    }

    /// Start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: `create` refuses 0).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Gives `len` bytes at `offset` back to the host, keeping the size, as
    /// QEMU's `ram_block_discard_range` does for a memfd-backed RAM block.
    pub fn punch_hole(&self, offset: u64, len: u64) -> Result<(), ModelError> {
        rustix::fs::fallocate(
            self.own_fd()?,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        )?;
        Ok(())
    }

    /// Bytes the memfd really holds (st_blocks * 512).
    pub fn allocated_bytes(&self) -> Result<u64, ModelError> {
        Ok(rustix::fs::fstat(self.own_fd()?)?.st_blocks as u64 * 512)
    }

    /// Whether any byte in `[offset, offset + len)` is backed by data
    /// (lseek SEEK_DATA), i.e. the range was not all discarded.
    pub fn has_data(&self, offset: u64, len: u64) -> Result<bool, ModelError> {
        match rustix::fs::seek(self.own_fd()?, SeekFrom::Data(offset)) {
            Ok(pos) => Ok(pos < offset + len),
            // ENXIO: no data at or after offset.
            Err(rustix::io::Errno::NXIO) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        if self.fd.is_none() {
            // Borrowed: the owner unmaps it.
            return;
        }
        // SAFETY: we mapped exactly this range in `map` and nothing refers to
        // it once the region (held in an Arc by its users) is dropped.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
