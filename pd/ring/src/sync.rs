//! The atomics the ring is built from: core's normally, loom's under
//! `--cfg loom` so the model checker sees every shared access.

#[cfg(not(loom))]
pub use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
