//! The Microkit-shaped PD runtime: one way to write a protection domain, two
//! ways to run it.
//!
//! The API follows rust-sel4's `sel4-microkit`: a [`Handler`] with
//! [`Handler::notified`] and [`Handler::protected`], [`Channel`] with
//! [`Channel::notify`], [`Channel::pp_call`], [`Channel::irq_ack`] (and their
//! deferred forms: a [`DeferredActionSlot`] the handler keeps and hands over in
//! [`Handler::take_deferred_action`]), [`MessageInfo`] plus message registers, memory regions
//! looked up by their `system.xml` names ([`RegionDecl`]), [`debug_print!`],
//! and the entry macro [`main!`].
//!
//! Backends, chosen at compile time:
//! - `target_os = "none"`: Microkit 2.3.0 / seL4 16.0.0 MCS (`microkit` module),
//!   aarch64 and x86_64.
//! - feature `bare` on `target_os = "none"`: every PD is a module of one
//!   image without seL4, booted by QEMU (`bare` module, DESIGN §5.3).
//! - feature `host` on Linux: the PD is a process started by `tools run`
//!   (`host` module).
//! - otherwise (unit tests of cores): no platform; platform calls panic.
//!
//! Channel ids and region names come from `system.xml` through the module that
//! `sdf::build` generates for each PD (see `sdf::codegen` for the naming rule).
//!
//! # Writing a PD crate
//!
//! - `Cargo.toml`: depend on `pd`; build-depend on `sdf`; give the crate a
//!   feature `host = ["pd/host"]` for the host platform.
//! - `build.rs`: `sdf::build::pd("../system.xml", "mypd").unwrap_or_else(|e| panic!("{e}"));`
//!   (generates the config module; on `*-unknown-none` also passes the linker
//!   script, link address 0x200000, to the crate's binaries).
//! - `src/main.rs`:
//!
//! ```text
//! #![cfg_attr(target_os = "none", no_std, no_main)]
//! mod config { pd::config!("mypd"); }
//! struct My;
//! impl pd::Handler for My {
//!     type Error = core::convert::Infallible;
//!     fn notified(&mut self, chs: pd::ChannelSet) -> Result<(), Self::Error> {
//!         if chs.contains(config::channel::MEMSERVER) { /* look at the rings */ }
//!         Ok(())
//!     }
//! }
//! fn init() -> My { My }
//! pd::main!(init);
//! ```
//!
//! - Microkit: `cargo build --target aarch64-unknown-none` (or x86_64) gives
//!   the ELF for `<program_image>`; add `--features pd/release-kernel` for a
//!   release seL4 kernel. Host: `cargo build --features host`, then
//!   `tools run system.xml` (`mypd.elf` runs the host binary `mypd`).
//!
//! The test PDs in `examples/pingpong` (binaries `ping`, `pong`, `crasher`)
//! are complete examples.
#![no_std]

#[cfg(any(feature = "host", test))]
extern crate std;

mod calls;
mod channel;
mod debug;
mod defer;

pub mod log_page;
mod region;
pub mod vm;

pub use calls::{get_mr, set_mr};
pub use channel::{
    Channel, ChannelSet, IoPort, IoPortError, MAX_CHANNELS, MSG_MAX_LENGTH, MessageInfo,
};
#[doc(hidden)]
pub use debug::print_fmt as __debug_print_fmt;
pub use debug::{Log, debug_write};
pub use defer::{
    DeferredAction, DeferredActionInterface, DeferredActionSlot, DeferredActionSlotFull,
};
pub mod handler;
pub use handler::{Handler, NoHandler, PPC_UNSUPPORTED_LABEL};
pub use region::{PaddrSource, PhysAddr, Region, RegionDecl, SetVar};

#[cfg(all(target_os = "none", not(feature = "bare")))]
pub mod microkit;

#[cfg(all(target_os = "none", feature = "bare"))]
pub mod bare;

#[cfg(all(feature = "host", not(target_os = "none")))]
pub mod host;

#[cfg(not(any(target_os = "none", feature = "host")))]
mod null;

/// The platform backend compiled in.
pub(crate) mod sys {
    #[cfg(all(target_os = "none", feature = "bare"))]
    pub(crate) use crate::bare::sys::*;
    #[cfg(all(feature = "host", not(target_os = "none")))]
    pub(crate) use crate::host::sys::*;
    #[cfg(all(target_os = "none", not(feature = "bare")))]
    pub(crate) use crate::microkit::sys::*;
    #[cfg(not(any(target_os = "none", feature = "host")))]
    pub(crate) use crate::null::*;
}

/// This PD's name: patched into `microkit_name` by the Microkit tool, or
/// given by the launcher on the host.
pub fn pd_name() -> &'static str {
    sys::pd_name()
}

/// Does the platform hand the PDs their memory regions untouched, so that
/// the host behind it backs none of their pages until a PD writes one?
/// True on the host platform (fresh memfds); false under Microkit (seL4
/// zeroes every frame of a region) and on the bare platform (QEMU's DTB
/// and firmware may write RAM before the image runs).
pub const REGIONS_UNTOUCHED_AT_BOOT: bool = sys::REGIONS_UNTOUCHED_AT_BOOT;

/// Include the configuration module `sdf::build` generated for PD `$pd`:
/// `mod config { pd::config!("memserver"); }`.
#[macro_export]
macro_rules! config {
    ($pd:literal) => {
        include!(concat!(env!("OUT_DIR"), "/pd_", $pd, ".rs"));
    };
}

/// Declare the PD's entry point: `pd::main!(init);` with `fn init() -> impl Handler`.
///
/// The PD's crate root must start with
/// `#![cfg_attr(target_os = "none", no_std, no_main)]`; the source is then the
/// same for every platform. On Microkit this defines the function `_start`
/// jumps to; on the host it defines `fn main`.
#[macro_export]
macro_rules! main {
    ($init:expr) => {
        $crate::__pd_entry!($init);
    };
}

// The bare platform: the PD is a module of one image; the image starts it
// through this function (see `bare`).
#[cfg(all(target_os = "none", feature = "bare"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __pd_entry {
    ($init:expr) => {
        pub(crate) fn __pd_bare_init() -> impl $crate::Handler {
            ($init)()
        }
    };
}

#[cfg(all(target_os = "none", not(feature = "bare")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __pd_entry {
    ($init:expr) => {
        #[unsafe(export_name = "__pd_main")]
        extern "C" fn __pd_main() -> ! {
            $crate::microkit::run($init)
        }
    };
}

#[cfg(all(feature = "host", not(target_os = "none")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __pd_entry {
    ($init:expr) => {
        fn main() {
            $crate::host::run($init)
        }
    };
}

#[cfg(not(any(target_os = "none", feature = "host")))]
#[doc(hidden)]
#[macro_export]
macro_rules! __pd_entry {
    ($init:expr) => {
        fn main() {
            // Built for Linux without the pd crate's `host` feature: there is
            // no platform to run on. Say so instead of failing to compile, so
            // `cargo test` of a workspace still builds every binary.
            let _ = $init;
            ::std::eprintln!("this PD was built without a platform: enable pd/host or build for a *-unknown-none target");
            ::std::process::exit(2);
        }
    };
}
