//! Where the image lives in QEMU's RAM (`-m 2G`). Shared with `build.rs`,
//! which links the image and carves the regions from the pool.

/// RAM of the aarch64 `virt` machine with `-m 2G`: 0x4000_0000..0xC000_0000.
/// The image is linked at [`AARCH64_IMAGE`]; QEMU puts the DTB at the start
/// of RAM.
pub const AARCH64_IMAGE: u64 = 0x4020_0000;
/// Regions are carved from here to the end of RAM.
pub const AARCH64_POOL: (u64, u64) = (0x4800_0000, 0xC000_0000);
/// x86_64 `pc` with `-m 2G`: RAM 0..0x8000_0000; the image at 2 MiB.
pub const X86_64_IMAGE: u64 = 0x20_0000;
/// Regions are carved from here to the end of RAM.
pub const X86_64_POOL: (u64, u64) = (0x0800_0000, 0x8000_0000);
