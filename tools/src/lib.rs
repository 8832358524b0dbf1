//! Host-side tools as a library: the host platform launcher ([`host`]), for
//! `tools run`, `tools demo` and tests; the Microkit image builder
//! ([`image`]) and the QEMU runner ([`qemu`]) with the memory [`timeline`];
//! the bare platform's image and verdict ([`bare`]).

pub mod bare;
pub mod bench;
pub mod demo;
pub mod host;
pub mod image;
pub mod policy_bench;
pub mod qemu;
pub mod timeline;
