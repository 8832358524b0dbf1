//! The virtio-balloon driver PD and a device model for tests and the host platform.
//!
//! - [`VirtIOBalloon`]: the driver core (no_std, generic over virtio-drivers'
//!   `Hal` and `Transport`): free page reporting, inflate/deflate, stats.
//! - [`layout`]: which queue index is which (QEMU and Linux disagree).
//! - `model` (feature `std`): a virtio-balloon device on the device side of
//!   real split virtqueues in shared memory, a shared-memory `Transport`, and
//!   a host `Hal`, for tests and the host platform.
#![cfg_attr(not(any(feature = "std", test)), no_std)]

pub mod defs;
pub mod driver;
pub mod layout;
pub mod metrics;
mod report_ring;

#[cfg(feature = "std")]
pub mod model;

pub use defs::{BalloonFeatures, Block, Error, QueueKind, Stats};
pub use driver::{BalloonAction, BalloonDone, BalloonOp, Config, DeflateReason, VirtIOBalloon};
pub use layout::{QueueIndices, QueueLayout, queue_indices};
pub use metrics::{ErrorCounts, Metrics};
