//! The boot stubs: from QEMU's entry to `bare_main` with a stack, zeroed
//! `.bss` and an identity map, plus the [`pd::bare::Platform`] of each
//! machine (console, interrupt polling, power off).

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::platform;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::platform;

/// Volatile 32-bit MMIO helpers (device registers, identity mapped).
pub(crate) mod mmio {
    /// # Safety
    /// `addr` must be a mapped, 4-byte aligned device register.
    #[allow(dead_code, reason = "x86_64 reads no device register")]
    pub unsafe fn read32(addr: usize) -> u32 {
        // SAFETY: as the caller promises.
        unsafe { (addr as *const u32).read_volatile() }
    }

    /// # Safety
    /// As [`read32`], and writing `v` must be harmless to the program.
    pub unsafe fn write32(addr: usize, v: u32) {
        // SAFETY: as the caller promises.
        unsafe { (addr as *mut u32).write_volatile(v) }
    }
}
