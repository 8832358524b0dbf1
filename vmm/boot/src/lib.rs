//! Booting Linux in a VM on arm64 (Linux's
//! `Documentation/arch/arm64/booting.rst`): the kernel `Image` header,
//! checked, and where the kernel, the initramfs and the device tree go in
//! guest RAM. Used by `tools` when it builds the VMM's image (so a bad
//! kernel or a layout that does not fit is refused before anything boots)
//! and by the VMM when it copies them into guest RAM.
//!
//! The rules kept:
//! - the Image is loaded at a 2 MiB-aligned base plus its `text_offset`,
//!   and occupies `image_size` bytes from there (more than the file: its
//!   BSS), so nothing else goes below `load + image_size`;
//! - the device tree is 8-byte aligned, at most 2 MiB, and here placed on a
//!   2 MiB boundary so it shares no 2 MiB block with anything else;
//! - the initramfs follows, page-aligned;
//! - everything lies inside guest RAM, with no overflow anywhere.
#![no_std]

#[cfg(test)]
extern crate std;

use core::fmt;

/// "ARM\x64" at offset 56 of an arm64 Image.
pub const MAGIC: [u8; 4] = *b"ARM\x64";
/// Bytes of the header read.
pub const HEADER_LEN: usize = 64;
/// The device tree's size limit (booting.rst).
pub const MAX_DTB: u64 = 2 << 20;
const SZ_2M: u64 = 2 << 20;
const PAGE: u64 = 4096;

/// The header fields that matter for loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset from a 2 MiB-aligned base where the Image must be loaded.
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address (0 in kernels
    /// before 3.17: then the file size and a guess are all there is, and
    /// such a kernel is refused here).
    pub image_size: u64,
    /// Bit 0: big-endian kernel (refused).
    pub flags: u64,
}

/// Why a kernel, initramfs or device tree cannot be booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// Shorter than the header, or no "ARM\x64" at 56.
    NotAnArm64Image,
    /// `image_size` is 0 (a pre-3.17 kernel) or smaller than the file.
    BadImageSize { image_size: u64, file: u64 },
    /// A big-endian kernel.
    BigEndian,
    /// A device tree over 2 MiB.
    DtbTooLarge(u64),
    /// Guest RAM's base is not 2 MiB-aligned.
    RamMisaligned(u64),
    /// The pieces do not fit guest RAM: what was needed and what there is.
    DoesNotFit { need: u64, ram: u64 },
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootError::NotAnArm64Image => {
                write!(
                    f,
                    "not an arm64 Linux Image (no \"ARM\\x64\" magic at offset 56)"
                )
            }
            BootError::BadImageSize { image_size, file } => write!(
                f,
                "Image header says image_size {image_size:#x} for a file of {file:#x} bytes"
            ),
            BootError::BigEndian => write!(f, "a big-endian kernel; the VM is little-endian"),
            BootError::DtbTooLarge(n) => {
                write!(
                    f,
                    "device tree of {n} bytes, more than the 2 MiB Linux accepts"
                )
            }
            BootError::RamMisaligned(b) => write!(f, "guest RAM at {b:#x} is not 2 MiB-aligned"),
            BootError::DoesNotFit { need, ram } => write!(
                f,
                "kernel, device tree and initramfs need {need:#x} bytes of guest RAM, it has {ram:#x}"
            ),
        }
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl ImageHeader {
    /// The header of `image` (the whole file), checked.
    pub fn parse(image: &[u8]) -> Result<ImageHeader, BootError> {
        if image.len() < HEADER_LEN || image[56..60] != MAGIC {
            return Err(BootError::NotAnArm64Image);
        }
        let h = ImageHeader {
            text_offset: le64(image, 8),
            image_size: le64(image, 16),
            flags: le64(image, 24),
        };
        if h.flags & 1 != 0 {
            return Err(BootError::BigEndian);
        }
        let file = image.len() as u64;
        if h.image_size == 0 || h.image_size < file {
            return Err(BootError::BadImageSize {
                image_size: h.image_size,
                file,
            });
        }
        Ok(h)
    }
}

/// Where each piece goes (guest-physical addresses) and the entry state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The kernel's load address: the entry point (`pc`).
    pub kernel: u64,
    /// The device tree (`x0`).
    pub dtb: u64,
    /// The initramfs and its end (for `/chosen`'s linux,initrd-start/end).
    pub initrd: u64,
    pub initrd_end: u64,
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x & !(a - 1))
}

impl Layout {
    /// Lay out a kernel with header `h`, a device tree of `dtb_len` bytes
    /// and an initramfs of `initrd_len` bytes in guest RAM
    /// `[ram_base, ram_base + ram_size)`.
    pub fn new(
        h: &ImageHeader,
        dtb_len: u64,
        initrd_len: u64,
        ram_base: u64,
        ram_size: u64,
    ) -> Result<Layout, BootError> {
        if !ram_base.is_multiple_of(SZ_2M) {
            return Err(BootError::RamMisaligned(ram_base));
        }
        if dtb_len > MAX_DTB {
            return Err(BootError::DtbTooLarge(dtb_len));
        }
        let too_big = BootError::DoesNotFit {
            need: u64::MAX,
            ram: ram_size,
        };
        let kernel = ram_base.checked_add(h.text_offset).ok_or(too_big)?;
        let kernel_end = kernel.checked_add(h.image_size).ok_or(too_big)?;
        let dtb = align_up(kernel_end, SZ_2M).ok_or(too_big)?;
        let initrd = align_up(dtb.checked_add(dtb_len).ok_or(too_big)?, PAGE).ok_or(too_big)?;
        let initrd_end = initrd.checked_add(initrd_len).ok_or(too_big)?;
        let ram_end = ram_base.checked_add(ram_size).ok_or(too_big)?;
        if initrd_end > ram_end {
            return Err(BootError::DoesNotFit {
                need: initrd_end - ram_base,
                ram: ram_size,
            });
        }
        Ok(Layout {
            kernel,
            dtb,
            initrd,
            initrd_end,
        })
    }
}

/// The vCPU's state at the kernel's entry (booting.rst): EL1h with
/// interrupts masked (SPSR 0x3c5), `x0` the device tree, `x1..x3` zero.
pub const ENTRY_SPSR: u64 = 0x3c5;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    fn image(text_offset: u64, image_size: u64, len: usize) -> std::vec::Vec<u8> {
        let mut v = vec![0u8; len];
        v[8..16].copy_from_slice(&text_offset.to_le_bytes());
        v[16..24].copy_from_slice(&image_size.to_le_bytes());
        v[24..32].copy_from_slice(&2u64.to_le_bytes()); // 4 KiB pages, LE
        v[56..60].copy_from_slice(&MAGIC);
        v
    }

    #[test]
    fn a_kernel_is_laid_out_as_booting_rst_says() {
        let h = ImageHeader::parse(&image(0, 0x2a0_0000, 0x200_0000)).unwrap();
        let l = Layout::new(&h, 0x2000, 0x100_0000, 0x4000_0000, 256 << 20).unwrap();
        assert_eq!(l.kernel, 0x4000_0000);
        // Past image_size (0x2a0_0000), not the file, on a 2 MiB boundary.
        assert_eq!(l.dtb, 0x42a0_0000);
        assert_eq!(l.initrd, 0x42a0_2000);
        assert_eq!(l.initrd_end, 0x43a0_2000);
    }

    #[test]
    fn bad_kernels_and_layouts_are_refused() {
        assert_eq!(ImageHeader::parse(b"MZ"), Err(BootError::NotAnArm64Image));
        let mut elf = image(0, 0x1000, 0x1000);
        elf[56] = b'X';
        assert_eq!(ImageHeader::parse(&elf), Err(BootError::NotAnArm64Image));
        assert_eq!(
            ImageHeader::parse(&image(0, 0, 0x1000)),
            Err(BootError::BadImageSize {
                image_size: 0,
                file: 0x1000
            })
        );
        let mut be = image(0, 0x1000, 0x1000);
        be[24] = 1;
        assert_eq!(ImageHeader::parse(&be), Err(BootError::BigEndian));
        let h = ImageHeader::parse(&image(0x8_0000, 0x100_0000, 0x1000)).unwrap();
        assert_eq!(
            Layout::new(&h, 3 << 20, 0, 0x4000_0000, 1 << 30),
            Err(BootError::DtbTooLarge(3 << 20))
        );
        assert_eq!(
            Layout::new(&h, 0x1000, 0, 0x4010_0000, 1 << 30),
            Err(BootError::RamMisaligned(0x4010_0000))
        );
        assert!(matches!(
            Layout::new(&h, 0x1000, 64 << 20, 0x4000_0000, 64 << 20),
            Err(BootError::DoesNotFit {
                ram: 0x400_0000,
                ..
            })
        ));
        let huge = ImageHeader {
            text_offset: u64::MAX - 5,
            image_size: 10,
            flags: 0,
        };
        assert!(matches!(
            Layout::new(&huge, 0, 0, 0x4000_0000, 1 << 30),
            Err(BootError::DoesNotFit { .. })
        ));
    }

    proptest! {
        /// Any header, sizes and RAM: never a panic; a layout that is
        /// returned keeps every piece in RAM, in order, without overlap,
        /// with the alignment Linux needs.
        #[test]
        fn layouts_are_inside_ram_and_disjoint(
            text_offset in any::<u64>(), image_size in any::<u64>(),
            dtb_len in 0u64..4 << 20, initrd_len in any::<u64>(),
            base_2m in any::<u32>(), ram_size in any::<u64>(),
        ) {
            let h = ImageHeader { text_offset, image_size, flags: 0 };
            let base = u64::from(base_2m) * SZ_2M;
            if let Ok(l) = Layout::new(&h, dtb_len, initrd_len, base, ram_size) {
                prop_assert_eq!(l.kernel, base + text_offset);
                prop_assert!(l.kernel + image_size <= l.dtb);
                prop_assert_eq!(l.dtb % SZ_2M, 0);
                prop_assert!(l.dtb + dtb_len <= l.initrd);
                prop_assert_eq!(l.initrd % PAGE, 0);
                prop_assert!(l.initrd_end - base <= ram_size);
            }
        }
    }
}
