//! The timer PD: one-shot timeouts for its clients (the memory server's
//! reporting delay, the guests' pacing), in the style of sDDF's timer driver.
//!
//! # Protocol (protected procedure calls on the client's channel)
//!
//! A client is a channel of the timer PD (`system.xml` gives the memserver,
//! guest0 and guest1 one each). Each client has at most one pending
//! timeout; when it expires the timer *notifies* the client on that channel.
//! Notifications coalesce and carry nothing, so a client that wakes up asks
//! [`protocol::GET_TIME`] (or checks its own state) instead of counting them.
//!
//! | call label          | registers in         | reply (label 0)                       |
//! |---------------------|----------------------|---------------------------------------|
//! | 0 `GET_TIME`        | none                 | 1 register: mr0 = now, ns             |
//! | 1 `SET_TIMEOUT`     | mr0 = relative ns    | none; replaces this client's timeout  |
//! | 2 `CANCEL`          | none                 | 1 register: mr0 = 1 if one was pending|
//!
//! Time is nanoseconds of a monotonic clock with an unspecified epoch (the
//! counter's reset on hardware, `CLOCK_MONOTONIC` on the host platform). A
//! relative timeout of 0, or one that saturates, is legal: it expires at once
//! or never wraps. An unknown label or a wrong register count gets a reply
//! with a non-zero label ([`protocol::ProtocolError::reply_label`]) and
//! changes nothing; the timer never panics on a client's input.
//!
//! # Layout
//!
//! - [`timeouts`]: the no_std core, per-client deadlines and expiry.
//! - [`protocol`]: labels, call decoding, reply encoding.
//! - [`server`]: the core wired to a [`clock::Clock`], with the IRQ
//!   acknowledge order each trigger mode needs.
//! - [`clock`]: hardware backends (ARM generic timer, HPET) and, on Linux,
//!   the host platform's clock thread.
//! - [`client`]: what other PDs call (`timer::client::set_timeout(ch, ns)`).
#![no_std]

#[cfg(any(test, not(target_os = "none")))]
extern crate std;

pub mod client;
pub mod clock;
pub mod protocol;
pub mod server;
pub mod timeouts;

pub use clock::{Clock, Trigger};
pub use protocol::{CANCEL, GET_TIME, SET_TIMEOUT};
pub use server::Timer;
pub use timeouts::Timeouts;
