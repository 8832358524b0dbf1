//! The virtio-balloon driver PD and a device model for tests and the host platform.
//!
//! - [`VirtIOBalloon`]: the driver core (no_std, generic over virtio-drivers'
//!   `Hal` and `Transport`): free page reporting, inflate/deflate, stats.
//! - [`shell::BalloonPd`]: the PD's core (no_std, no platform calls): the
//!   driver between the memserver's rings (`memserver-api` messages) and the
//!   device; `src/main.rs` only wires channels, regions and the IRQ to it.
//! - [`dma::RegionHal`]: a `Hal` over one DMA region (Microkit).
//! - [`layout`]: which queue index is which (QEMU and Linux disagree).
//! - `model` (Linux only): a virtio-balloon device on the device side of
//!   real split virtqueues in shared memory, a shared-memory `Transport`, a
//!   host `Hal`, and `model::host::HostDevice`, the device thread the host
//!   platform's launcher runs over the PDs' memfds.
//!
//! The core modules never use std; the crate is std only on Linux, for
//! `model` (the `std` feature is kept as a no-op for callers that ask for it).
//!
//! # How a PD shell drives the driver
//!
//! [`shell::BalloonPd::run`] is this sequence. Notifications only say "look"
//! (docs/architecture.md), so on every device interrupt it runs it whole:
//!
//! 1. `ack_interrupt()` (QEMU sets 0x3 for a config change, so never trust
//!    the bits to skip a ring);
//! 2. `poll_reports()` until `None`: each `(batch, result)` becomes a
//!    `ReportDone` for the memserver; an `Err` means the blocks go back
//!    unreported;
//! 3. `poll_balloon()` until `None`: inflate/deflate completions;
//! 4. `take_stats_request()`: fetch the memserver's numbers, `set_stats()`;
//! 5. `take_config_changed()`: `balloon_action()` says how many pages to
//!    inflate or deflate; `inflate()` / `deflate()` post PFN arrays;
//! 6. `is_broken()`: the device misbehaved or reset; everything in flight has
//!    already failed (step 2/3 hand it back); `restart()`.
//!
//! On a memserver notification it turns each report batch into
//! `submit_report(batch, &blocks)`; a batch that waits for queue room
//! (`QueueFull`) is kept, one that can never be posted is answered as failed
//! at once.
#![cfg_attr(not(any(target_os = "linux", test)), no_std)]

pub mod defs;
pub mod dma;
pub mod driver;
pub mod layout;
pub mod metrics;
mod report_ring;
pub mod shell;

#[cfg(target_os = "linux")]
pub mod model;

pub use defs::{BalloonFeatures, Block, BlockExt, Error, QueueKind, Stats};
pub use driver::{BalloonAction, BalloonDone, BalloonOp, Config, DeflateReason, VirtIOBalloon};
pub use layout::{QueueIndices, QueueLayout, queue_indices};
pub use metrics::{ErrorCounts, Metrics};
pub use shell::BalloonPd;
