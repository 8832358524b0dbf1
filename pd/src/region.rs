//! Memory regions and the symbols the Microkit tool patches.

use core::cell::UnsafeCell;

/// An 8-byte variable the Microkit tool writes into the image before boot
/// (`setvar_vaddr`, `setvar_size`, `<setvar region_paddr>`). The generated
/// config module places each in `.data` under the symbol's name.
#[repr(transparent)]
#[derive(Debug)]
pub struct SetVar(UnsafeCell<u64>);

// SAFETY: the value is written by the Microkit tool in the ELF file, before
// the PD runs; at run time it is only read.
unsafe impl Sync for SetVar {}

impl SetVar {
    /// Zero until patched.
    pub const fn new() -> Self {
        SetVar(UnsafeCell::new(0))
    }

    /// The patched value. Volatile so the compiler cannot fold the
    /// initializer (0) in: the value changes in the file, not in the program.
    pub fn get(&self) -> u64 {
        // SAFETY: the pointer is valid and aligned (it is our own static) and
        // nothing writes it at run time.
        unsafe { self.0.get().read_volatile() }
    }
}

impl Default for SetVar {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a region's physical address comes from.
#[derive(Debug, Clone, Copy)]
pub enum PaddrSource {
    /// The PD has no business knowing it.
    Unknown,
    /// The region's `phys_addr` in `system.xml`.
    Fixed(u64),
    /// A `<setvar region_paddr>` of this PD.
    SetVar(&'static SetVar),
}

/// A `<map>` of this PD, as generated from `system.xml`.
#[derive(Debug, Clone, Copy)]
pub struct RegionDecl {
    /// The memory region's name.
    pub name: &'static str,
    /// Where Microkit maps it (host: the launcher's mapping is used instead).
    pub vaddr: u64,
    pub size: u64,
    pub writable: bool,
    pub paddr: PaddrSource,
}

/// A mapped memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub vaddr: u64,
    pub size: u64,
    /// Known when the region has a `phys_addr` or the PD has a `setvar` for it.
    pub paddr: Option<u64>,
}

impl Region {
    /// The start as a pointer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.vaddr as usize as *mut u8
    }
}

impl RegionDecl {
    /// The region as mapped in this PD. On the host, a region the launcher did
    /// not map means `system.xml` and the binary disagree: that stops the PD.
    pub fn get(&self) -> Region {
        let paddr = match self.paddr {
            PaddrSource::Unknown => None,
            PaddrSource::Fixed(p) => Some(p),
            PaddrSource::SetVar(v) => Some(v.get()),
        };
        crate::sys::region(self, paddr)
    }
}

/// A physical address told by `<setvar region_paddr>` (of a region this PD
/// need not map).
#[derive(Debug, Clone, Copy)]
pub struct PhysAddr {
    pub region: &'static str,
    pub size: u64,
    pub var: &'static SetVar,
}

impl PhysAddr {
    /// The region's physical address.
    pub fn get(&self) -> u64 {
        crate::sys::paddr(self)
    }
}
