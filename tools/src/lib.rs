//! Host-side tools as a library: the host platform launcher ([`host`]), for
//! `tools run`, `tools demo` and tests; the Microkit image builder
//! ([`image`]) and the QEMU runner ([`qemu`]) with the memory [`timeline`];
//! the bare platform's image and verdict ([`bare`]); the Linux guest VM's
//! Image and initramfs from Debian's packages, and its direct run under
//! QEMU ([`linux_guest`]).

pub mod bare;
pub mod bench;
pub mod console_session;
pub mod control_socket;
pub mod demo;
pub mod dtb;
pub mod host;
pub mod image;
pub mod linux_guest;
pub mod log_pages;
pub mod nested_bench;
pub mod pd_build;
pub mod policy_bench;
pub mod qemu;
pub mod sel4;
pub mod timeline;
pub mod vm_guest;
