//! Clients of the memory server.
//!
//! - [`client`]: the client library. [`client::MemClient`] speaks the
//!   request/response rings of `memserver-api` with tags, a bounded window of
//!   requests in flight, and the ring signalling protocol; [`client::FreeBatch`]
//!   batches frees.
//! - [`params`]: the guest workload's parameters and their text form
//!   (`GUEST_PARAMS` on the host platform).
//! - [`ram`]: the guest's view of its RAM region and the per-page pattern
//!   that proves data survived.
//! - [`owned`]: which pages the guest owns (a byte per page, no heap).
//! - [`workload`]: the workload state machine (bulk, fragmented, churn),
//!   advanced by notifications; no platform calls, tested against a fake
//!   memory server.
//!
//! The guest PD (`src/main.rs`, binary `guest`) wires these to its regions
//! `ram`, `req`, `resp`, its `ram_paddr` and its channels to the memserver
//! and the timer.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod client;
pub mod owned;
pub mod params;
pub mod ram;
pub mod workload;

/// Bytes per page.
pub const PAGE_SIZE: u64 = 4096;
/// Bytes per MiB.
pub const MIB: u64 = 1 << 20;
/// Pages per MiB.
pub const PAGES_PER_MIB: u64 = MIB / PAGE_SIZE;
