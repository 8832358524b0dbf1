//! Messages between clients, the memory server and the balloon driver.
//!
//! Every message travels in one ring slot (`pd-ring`) of [`SLOT_SIZE`]
//! payload bytes, encoded as one version byte ([`VERSION`]) followed by the
//! postcard encoding of the message. Postcard is compact (varints) and has no
//! self-description, so the version byte is what lets a peer running an older
//! or newer protocol be told apart from garbage.
//!
//! # Decoding rules (peers are hostile)
//!
//! - An empty slot is [`DecodeError::Empty`]; a first byte other than
//!   [`VERSION`] is [`DecodeError::UnsupportedVersion`] and nothing after it is
//!   interpreted (a future version may lay things out differently).
//! - Bytes left after the message are [`DecodeError::TrailingBytes`]: one
//!   message per slot, so extra bytes mean the peer and we disagree.
//! - Values postcard accepts but the protocol cannot are rejected after
//!   decoding, so no consumer ever shifts by a huge order or adds past the
//!   end of the physical address space: an order above [`MAX_ORDER`] is
//!   [`DecodeError::OutOfRange`]`(`[`RangeError::Order`]`)`, a block whose
//!   frames reach past [`MAX_PFN`] is [`RangeError::Pfn`], a response without
//!   a tag that is not an error is [`RangeError::UntaggedSuccess`]. Alignment
//!   and ownership of blocks are *not* checked here: those are the memory
//!   server's answers ([`ClientError::Misaligned`], [`ClientError::WrongZone`]
//!   ...), which it can only give to a request it decoded.
//! - Encoding applies the same range checks, so we never send what a peer
//!   must reject.
//!
//! # Tags and malformed requests
//!
//! Clients tag requests; the response carries the tag back. A request that
//! cannot be decoded still gets an answer (DESIGN: a malformed message yields
//! an error response): [`Response::to_malformed`] recovers the tag when the
//! version byte and the tag itself are intact (the tag is the first field of
//! [`Request`]), and otherwise answers with `tag: None`. Hence
//! [`Response::tag`] is an `Option<u32>`: `None` only ever comes with
//! [`ClientResponse::Error`]. The same holds for [`ToBalloon::Refused`]'s
//! `req`.
//!
//! # Example: the memory server's side of one slot
//!
//! ```
//! use memserver_api::*;
//!
//! fn answer(slot: &[u8], out: &mut [u8; SLOT_SIZE]) -> usize {
//!     let response = match decode_request(slot) {
//!         Ok(Request { tag, body: ClientRequest::Alloc { order } }) => Response {
//!             tag: Some(tag),
//!             body: ClientResponse::Allocated(Block { pfn: 0x800, order }),
//!         },
//!         Ok(Request { tag, .. }) => Response {
//!             tag: Some(tag),
//!             body: ClientResponse::Error(ClientError::Busy),
//!         },
//!         Err(e) => Response::to_malformed(slot, e),
//!     };
//!     encode(&response, out).expect("responses fit a slot").len()
//! }
//!
//! let mut slot = [0u8; SLOT_SIZE];
//! let req = Request { tag: 9, body: ClientRequest::Alloc { order: 9 } };
//! let n = encode(&req, &mut slot).unwrap().len();
//! let mut out = [0u8; SLOT_SIZE];
//! let m = answer(&slot[..n], &mut out);
//! assert_eq!(
//!     decode_response(&out[..m]).unwrap().body,
//!     ClientResponse::Allocated(Block { pfn: 0x800, order: 9 })
//! );
//! // A future version: an untagged UnsupportedVersion error.
//! let m = answer(&[2, 9, 0, 9], &mut out);
//! assert_eq!(
//!     decode_response(&out[..m]),
//!     Ok(Response { tag: None, body: ClientResponse::Error(ClientError::UnsupportedVersion) })
//! );
//! ```
#![no_std]

#[cfg(test)]
extern crate std;

use core::fmt;
use heapless::Vec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Protocol version, the first byte of every encoded message.
pub const VERSION: u8 = 1;

/// Payload bytes per ring slot. Every message's largest encoding fits (tested).
pub const SLOT_SIZE: usize = 512;

/// Largest block order: 2^10 pages = 4 MiB, as Linux's MAX_ORDER.
pub const MAX_ORDER: u8 = 10;

/// Blocks per batch message (DESIGN §2: report batch capacity 32).
pub const BATCH: usize = 32;

/// Largest encoded message (version byte included): a full
/// [`ToBalloon::Inflated`]: 1 version + 1 variant + 5 `req` varint + 1 length
/// + 32 × (6-byte `pfn` varint + 1 order) + 1 `last`. Checked by a test.
pub const MAX_ENCODED_LEN: usize = 1 + 1 + 5 + 1 + BATCH * 7 + 1;

const _: () = assert!(MAX_ENCODED_LEN <= SLOT_SIZE);

/// Largest page frame number: 4 KiB frames of a 52-bit physical address
/// space (the architectural maximum on both aarch64 and x86_64).
pub const MAX_PFN: u64 = (1 << 40) - 1;

/// A buddy block: `1 << order` pages starting at frame `pfn`. The
/// memserver's core uses this type too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Block {
    /// Guest-physical frame number (`paddr >> 12`).
    pub pfn: u64,
    /// Log2 of the number of pages, `0..=MAX_ORDER`.
    pub order: u8,
}

impl Block {
    /// Pages in the block (saturating for out-of-range orders).
    pub fn pages(&self) -> u64 {
        1u64.checked_shl(u32::from(self.order)).unwrap_or(u64::MAX)
    }

    fn check(&self) -> Result<(), RangeError> {
        if self.order > MAX_ORDER {
            return Err(RangeError::Order(self.order));
        }
        // Last frame = pfn + pages - 1 must be a frame of the address space.
        match self.pfn.checked_add(self.pages() - 1) {
            Some(last) if last <= MAX_PFN => Ok(()),
            _ => Err(RangeError::Pfn(self.pfn)),
        }
    }
}

fn check_blocks(blocks: &[Block]) -> Result<(), RangeError> {
    blocks.iter().try_for_each(Block::check)
}

/// A client's request to the memory server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client, echoed in the response. First field on the
    /// wire, so it can be recovered from a request whose body is malformed.
    pub tag: u32,
    /// What is asked.
    pub body: ClientRequest,
}

/// Request bodies.
#[allow(
    clippy::large_enum_variant,
    reason = "no allocator on the PDs: a batch lives inline (~520 bytes), like the slot it came from"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Allocate one block of `1 << order` pages from the client's zone.
    Alloc {
        /// `0..=MAX_ORDER`.
        order: u8,
    },
    /// Free one block previously allocated to this client.
    Free(Block),
    /// Free up to [`BATCH`] blocks; each is handled as a `Free`.
    FreeBatch(Vec<Block, BATCH>),
    /// The client's zone statistics.
    Stats,
}

/// The memory server's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's tag; `None` when the request was too damaged to read
    /// it (then `body` is an error).
    pub tag: Option<u32>,
    /// The answer.
    pub body: ClientResponse,
}

/// Response bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The block allocated by `Alloc`.
    Allocated(Block),
    /// Every block of a `Free` / `FreeBatch` was freed.
    Freed {
        /// Blocks freed.
        count: u16,
    },
    /// Some blocks of a `FreeBatch` were refused; the others were freed.
    BatchFailed {
        /// Blocks freed.
        freed: u16,
        /// Blocks refused.
        failed: u16,
        /// Index in the batch of the first refused block.
        first: u16,
        /// Why the first refused block was refused.
        error: ClientError,
    },
    /// Answer to `Stats`.
    Stats(ClientStats),
    /// The request failed and changed nothing.
    Error(ClientError),
}

/// Why the memory server refused a client request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientError {
    /// No free block of that order in the client's zone.
    NoMemory,
    /// Order above the maximum (or below what the zone serves).
    InvalidOrder,
    /// The block is not allocated to this client (includes double frees).
    NotAllocated,
    /// The block lies outside this client's zone.
    WrongZone,
    /// `pfn` is not aligned to `1 << order`.
    Misaligned,
    /// The block was allocated with another order.
    WrongOrder,
    /// The block is held by the host (isolated for reporting, or ballooned);
    /// retry later.
    Busy,
    /// The request could not be decoded.
    Malformed,
    /// The request was of a protocol version this server does not speak.
    UnsupportedVersion,
    /// The response ring was full; the request was not processed.
    Overloaded,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoMemory => "no free block of that order",
            Self::InvalidOrder => "invalid block order",
            Self::NotAllocated => "block not allocated to this client",
            Self::WrongZone => "block outside the client's zone",
            Self::Misaligned => "block frame number not aligned to its order",
            Self::WrongOrder => "block allocated with another order",
            Self::Busy => "block held by the host, retry later",
            Self::Malformed => "malformed request",
            Self::UnsupportedVersion => "unsupported protocol version",
            Self::Overloaded => "server overloaded",
        })
    }
}

impl From<DecodeError> for ClientError {
    /// The error to answer an undecodable request with.
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnsupportedVersion(_) => Self::UnsupportedVersion,
            DecodeError::OutOfRange(RangeError::Order(_)) => Self::InvalidOrder,
            // Frames past the physical address space belong to no zone.
            DecodeError::OutOfRange(RangeError::Pfn(_)) => Self::WrongZone,
            DecodeError::Empty
            | DecodeError::Malformed
            | DecodeError::TrailingBytes
            | DecodeError::OutOfRange(RangeError::UntaggedSuccess) => Self::Malformed,
        }
    }
}

/// A client's view of its zone, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStats {
    /// Pages in the client's zone.
    pub total_pages: u64,
    /// Pages allocated to the client.
    pub allocated_pages: u64,
    /// Free pages, including those held by the host.
    pub free_pages: u64,
    /// Free pages the host has discarded (Reported).
    pub reported_pages: u64,
    /// Free pages isolated for a report in flight or in the balloon.
    pub busy_pages: u64,
    /// Requests refused with an error so far.
    pub errors: u64,
}

/// Memory server → balloon driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToBalloon {
    /// Report these free blocks to the host (one reporting-queue chain).
    /// Answered by [`FromBalloon::ReportDone`] with the same `batch`.
    Report {
        /// Batch id.
        batch: u32,
        /// Up to [`BATCH`] isolated free blocks.
        blocks: Vec<Block, BATCH>,
    },
    /// Blocks taken for an `Inflate` request, to give to the host. A large
    /// inflation comes in several messages; `last` marks the final one.
    Inflated {
        /// The request's id.
        req: u32,
        /// Blocks now owned by the balloon.
        blocks: Vec<Block, BATCH>,
        /// No more messages for this request.
        last: bool,
    },
    /// Blocks of a `Deflate` request were taken back by the server.
    Deflated {
        /// The request's id.
        req: u32,
        /// Pages returned to the free lists.
        pages: u32,
    },
    /// A statistics snapshot (answer to `StatsRequest`).
    Stats(MemStats),
    /// A request was refused. `req` is `None` when the request was too
    /// damaged to read its id.
    Refused {
        /// The request's id.
        req: Option<u32>,
        /// Why.
        reason: RefuseReason,
    },
    /// The answer to [`FromBalloon::SetTunable`]: `refused` is `None`
    /// when the value was taken (the worker uses it from its next pass).
    TunableSet {
        /// The key asked for.
        key: TunableKey,
        /// The value asked for.
        value: u64,
        /// Why it was refused, if it was; nothing changed then.
        refused: Option<TunableRefusal>,
    },
    /// The memory server could not satisfy an allocation while pages are in
    /// the balloon: give up to `pages` of them back (with a `Deflate`), if
    /// the device allows it (VIRTIO_BALLOON_F_DEFLATE_ON_OOM, as Linux's
    /// OOM notifier does). Unanswered when it does not.
    Reclaim {
        /// Pages wanted.
        pages: u32,
        /// The short zone's frames, `first_pfn..end_pfn`: only ballooned
        /// blocks inside it help (a zone is one client's RAM).
        first_pfn: u64,
        /// See `first_pfn` (exclusive).
        end_pfn: u64,
    },
    /// Give back, through the device, every ballooned block inside frames
    /// `first_pfn..end_pfn` (then a `Deflate` naming them, empty when there
    /// are none): pages of a VM whose OS took some of them back from its
    /// own balloon. Not an OOM deflate: the host is told first, whatever
    /// the device negotiated.
    Release {
        /// First frame.
        first_pfn: u64,
        /// End frame (exclusive).
        end_pfn: u64,
    },
    /// Memory for the balloon came free after an `Inflated` that fell
    /// short (a VM's OS filled its balloon toward the target the
    /// memserver set): ask again for what the target still wants.
    MoreToInflate,
}

/// Balloon driver → memory server.
#[allow(
    clippy::large_enum_variant,
    reason = "no allocator on the PDs: a batch lives inline (~520 bytes), like the slot it came from"
)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromBalloon {
    /// The host returned the report chain of `batch`; `ok` false when the
    /// device failed it (the blocks go back unreported, DESIGN §2).
    ReportDone {
        /// Batch id from [`ToBalloon::Report`].
        batch: u32,
        /// Whether the host processed the report.
        ok: bool,
    },
    /// The host's target grew: take `pages` pages for the balloon.
    Inflate {
        /// Request id, echoed by the answers.
        req: u32,
        /// Pages wanted.
        pages: u32,
    },
    /// The host's target shrank: these ballooned blocks come back.
    Deflate {
        /// Request id, echoed by the answer.
        req: u32,
        /// Blocks previously sent in [`ToBalloon::Inflated`].
        blocks: Vec<Block, BATCH>,
    },
    /// Send a [`ToBalloon::Stats`] snapshot (stats virtqueue, VIRTIO 1.2
    /// §5.5.6.3).
    StatsRequest,
    /// The device was reset: every report in flight has failed.
    DeviceReset,
    /// The device's limits, sent when the driver has (re)started it: the
    /// most blocks one report can carry (its reporting queue size), 0 when
    /// the device does not offer REPORTING. The memserver lowers its batch
    /// capacity to it, or stops reporting until the next limits.
    DeviceLimits {
        /// Blocks per report, 0: no reporting.
        report_capacity: u16,
    },
    /// Set one reporting tunable while the system runs (as Linux's
    /// `page_reporting_order` module parameter). Range-checked; answered
    /// by [`ToBalloon::TunableSet`]. The worker uses the new value from
    /// its next pass; a refused value changes nothing.
    SetTunable {
        /// Which tunable.
        key: TunableKey,
        /// Its new value, in the unit the key's name says (`policy`: 0
        /// linux, 1 adaptive).
        value: u64,
    },
    /// The answer to [`ToBalloon::Release`]: the ballooned blocks of its
    /// window, off the device (none when the balloon held none there).
    /// Answered as a [`FromBalloon::Deflate`] is; unlike one, it is not the
    /// host's deflate, and it tells the memserver what the balloon no
    /// longer holds in the window.
    Released {
        /// Request id, echoed by the answer.
        req: u32,
        /// Blocks previously sent in [`ToBalloon::Inflated`].
        blocks: Vec<Block, BATCH>,
    },
}

/// A reporting tunable, by the name the memserver's command line uses
/// (`memserver::params`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TunableKey {
    /// `order`: the reporting order, 0..=MAX_ORDER.
    Order,
    /// `delay_ms`: the reporting delay.
    DelayMs,
    /// `capacity`: blocks per report (the device's queue size still caps
    /// it).
    Capacity,
    /// `budget_divisor`: Linux's per-pass budget divisor.
    BudgetDivisor,
    /// `watermark_pages`: the low watermark.
    WatermarkPages,
    /// `in_flight`: report batches in flight.
    InFlight,
    /// `policy`: 0 linux, 1 adaptive.
    Policy,
    /// `quiet_order`: adaptive, lowest order reported once aged.
    QuietOrder,
    /// `age_ms`: adaptive, quiet time before small blocks are reported.
    AgeMs,
    /// `busy_pages`: adaptive, pages per look a quiet zone may allocate.
    BusyPages,
    /// `backoff_max`: adaptive, most back-off steps of a churning zone.
    BackoffMax,
    /// `churn_pages_per_s`: adaptive, reported pages per second a zone may
    /// take back before it counts as churning.
    ChurnPagesPerS,
}

impl TunableKey {
    /// Every key, in the order of their names' table.
    pub const ALL: [TunableKey; 12] = [
        Self::Order,
        Self::DelayMs,
        Self::Capacity,
        Self::BudgetDivisor,
        Self::WatermarkPages,
        Self::InFlight,
        Self::Policy,
        Self::QuietOrder,
        Self::AgeMs,
        Self::BusyPages,
        Self::BackoffMax,
        Self::ChurnPagesPerS,
    ];

    /// The key's name on command lines.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Order => "order",
            Self::DelayMs => "delay_ms",
            Self::Capacity => "capacity",
            Self::BudgetDivisor => "budget_divisor",
            Self::WatermarkPages => "watermark_pages",
            Self::InFlight => "in_flight",
            Self::Policy => "policy",
            Self::QuietOrder => "quiet_order",
            Self::AgeMs => "age_ms",
            Self::BusyPages => "busy_pages",
            Self::BackoffMax => "backoff_max",
            Self::ChurnPagesPerS => "churn_pages_per_s",
        }
    }

    /// The key named `name`.
    pub fn from_name(name: &str) -> Option<TunableKey> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// `key=value` as a command line writes it (`policy` by name:
    /// `policy=linux`, `delay_ms=250`).
    pub const fn pair(self, value: u64) -> TunablePair {
        TunablePair { key: self, value }
    }
}

/// Why a `key=value` text is not a tunable ([`parse_tunable_pair`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairError<'a> {
    /// No `=` in it.
    NotAPair(&'a str),
    /// No tunable has this name.
    UnknownKey(&'a str),
    /// The value is not a number (or, for `policy`, not a policy's name).
    BadValue { key: TunableKey, value: &'a str },
}

impl fmt::Display for PairError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAPair(text) => write!(f, "'{text}' is not key=value"),
            Self::UnknownKey(key) => {
                write!(f, "unknown tunable '{key}' (known:")?;
                for (i, k) in TunableKey::ALL.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{}", k.name())?;
                }
                f.write_str(")")
            }
            Self::BadValue {
                key: TunableKey::Policy,
                value,
            } => write!(f, "bad policy '{value}' (linux or adaptive)"),
            Self::BadValue { key, value } => {
                write!(f, "bad value '{value}' for '{}'", key.name())
            }
        }
    }
}

/// One `key=value` as an operator types it (`policy` by name:
/// `policy=linux`; every other value a decimal number). Only the syntax is
/// checked here: the range is the memserver's to check, against the other
/// tunables. One parser for every console (the host platform's launcher
/// and `tools tunable`, the console PD on seL4 and the bare platform).
pub fn parse_tunable_pair(text: &str) -> Result<(TunableKey, u64), PairError<'_>> {
    let (key, value) = text.split_once('=').ok_or(PairError::NotAPair(text))?;
    let (key, value) = (key.trim(), value.trim());
    let key = TunableKey::from_name(key).ok_or(PairError::UnknownKey(key))?;
    let bad = PairError::BadValue { key, value };
    let value = match (key, value) {
        (TunableKey::Policy, "linux") => 0,
        (TunableKey::Policy, "adaptive") => 1,
        (TunableKey::Policy, _) => return Err(bad),
        _ => value.parse().map_err(|_| bad)?,
    };
    Ok((key, value))
}

/// A tunable and its value, shown as `key=value` ([`TunableKey::pair`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunablePair {
    key: TunableKey,
    value: u64,
}

impl fmt::Display for TunablePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.key.name();
        match (self.key, self.value) {
            (TunableKey::Policy, 0) => write!(f, "{name}=linux"),
            (TunableKey::Policy, 1) => write!(f, "{name}=adaptive"),
            (_, value) => write!(f, "{name}={value}"),
        }
    }
}

/// Why the memserver refused a [`FromBalloon::SetTunable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TunableRefusal {
    /// The value is out of the key's range (or out of range together with
    /// the other tunables).
    OutOfRange,
    /// Reporting is configured off: there is nothing to tune.
    ReportingOff,
}

impl fmt::Display for TunableRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OutOfRange => "value out of range",
            Self::ReportingOff => "reporting is off",
        })
    }
}

/// Why the server refused a balloon request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefuseReason {
    /// Not enough free memory above the watermark to inflate.
    NoMemory,
    /// Deflate named a block that is not in the balloon.
    NotBallooned,
    /// A request with that id is still being served.
    Busy,
    /// The message could not be decoded.
    Malformed,
    /// The message was of an unsupported protocol version.
    UnsupportedVersion,
    /// The batch or report id is unknown (e.g. a duplicate completion).
    UnknownId,
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoMemory => "not enough free memory",
            Self::NotBallooned => "block is not in the balloon",
            Self::Busy => "request already in progress",
            Self::Malformed => "malformed message",
            Self::UnsupportedVersion => "unsupported protocol version",
            Self::UnknownId => "unknown request or batch id",
        })
    }
}

impl From<DecodeError> for RefuseReason {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnsupportedVersion(_) => Self::UnsupportedVersion,
            _ => Self::Malformed,
        }
    }
}

/// Memory statistics for the balloon's stats queue, in pages. Enough to
/// fill VIRTIO_BALLOON_S_MEMFREE (free_pages), S_MEMTOT (total_pages) and
/// S_AVAIL (available_pages), converted to bytes by the driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemStats {
    /// Pages managed by the server (all zones).
    pub total_pages: u64,
    /// Pages on the free lists, allocatable now (Reported ones included;
    /// isolated and ballooned ones excluded, as Linux's NR_FREE_PAGES).
    pub free_pages: u64,
    /// Pages the guests can get without the host giving memory back:
    /// `free_pages + isolated_pages` (isolated blocks return to the free
    /// lists when their report completes). Ballooned pages excluded.
    pub available_pages: u64,
    /// Of `free_pages`, those marked Reported (the host has discarded
    /// them).
    pub reported_pages: u64,
    /// Pages in report batches in flight (off the free lists).
    pub isolated_pages: u64,
    /// Pages given to the balloon.
    pub ballooned_pages: u64,
    /// Reports completed successfully.
    pub reports_done: u64,
    /// Reports the device failed.
    pub reports_failed: u64,
}

/// A value postcard can carry but the protocol forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// A block order above [`MAX_ORDER`].
    Order(u8),
    /// A block reaching past [`MAX_PFN`] (the block's first frame given).
    Pfn(u64),
    /// A response with no tag whose body is not an error.
    UntaggedSuccess,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Order(o) => write!(f, "block order {o} above {MAX_ORDER}"),
            Self::Pfn(p) => write!(f, "block at frame {p:#x} beyond the address space"),
            Self::UntaggedSuccess => write!(f, "untagged response that is not an error"),
        }
    }
}

/// Why bytes could not be decoded into a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// No bytes at all.
    Empty,
    /// The version byte is not [`VERSION`].
    UnsupportedVersion(u8),
    /// Postcard could not decode the message (bad tag, varint, bool, length
    /// above [`BATCH`], truncated...).
    Malformed,
    /// Bytes left after a complete message.
    TrailingBytes,
    /// Decoded, but a value is outside the protocol's range.
    OutOfRange(RangeError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty message"),
            Self::UnsupportedVersion(v) => {
                write!(f, "protocol version {v}, expected {VERSION}")
            }
            Self::Malformed => write!(f, "malformed message"),
            Self::TrailingBytes => write!(f, "trailing bytes after the message"),
            Self::OutOfRange(e) => write!(f, "value out of range: {e}"),
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small.
    BufferTooSmall,
    /// A value is outside the protocol's range; nothing sent.
    OutOfRange(RangeError),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall => write!(f, "output buffer too small for the message"),
            Self::OutOfRange(e) => write!(f, "value out of range: {e}"),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A protocol message: one of [`Request`], [`Response`], [`ToBalloon`],
/// [`FromBalloon`], [`FromVmm`], [`ToVmm`], [`FromControl`], [`ToControl`].
pub trait Message: Serialize + DeserializeOwned + sealed::Sealed {
    /// Checks the values postcard cannot (see the crate docs).
    fn check(&self) -> Result<(), RangeError>;
}

impl sealed::Sealed for Request {}
impl Message for Request {
    fn check(&self) -> Result<(), RangeError> {
        match &self.body {
            ClientRequest::Alloc { order } if *order > MAX_ORDER => Err(RangeError::Order(*order)),
            ClientRequest::Alloc { .. } | ClientRequest::Stats => Ok(()),
            ClientRequest::Free(b) => b.check(),
            ClientRequest::FreeBatch(blocks) => check_blocks(blocks),
        }
    }
}

impl sealed::Sealed for Response {}
impl Message for Response {
    fn check(&self) -> Result<(), RangeError> {
        match (&self.tag, &self.body) {
            (None, ClientResponse::Error(_)) => Ok(()),
            (None, _) => Err(RangeError::UntaggedSuccess),
            (Some(_), ClientResponse::Allocated(b)) => b.check(),
            (Some(_), _) => Ok(()),
        }
    }
}

impl sealed::Sealed for ToBalloon {}
impl Message for ToBalloon {
    fn check(&self) -> Result<(), RangeError> {
        match self {
            Self::Report { blocks, .. } | Self::Inflated { blocks, .. } => check_blocks(blocks),
            Self::Deflated { .. }
            | Self::Stats(_)
            | Self::Refused { .. }
            | Self::Reclaim { .. }
            | Self::TunableSet { .. }
            | Self::Release { .. }
            | Self::MoreToInflate => Ok(()),
        }
    }
}

impl sealed::Sealed for FromBalloon {}
impl Message for FromBalloon {
    fn check(&self) -> Result<(), RangeError> {
        match self {
            Self::Deflate { blocks, .. } | Self::Released { blocks, .. } => check_blocks(blocks),
            Self::ReportDone { .. }
            | Self::Inflate { .. }
            | Self::StatsRequest
            | Self::DeviceReset
            | Self::DeviceLimits { .. }
            | Self::SetTunable { .. } => Ok(()),
        }
    }
}

/// Encodes `msg` as the version byte plus postcard into `out`; returns the
/// encoded bytes (a prefix of `out`).
pub fn encode<'a, M: Message>(msg: &M, out: &'a mut [u8]) -> Result<&'a [u8], EncodeError> {
    msg.check().map_err(EncodeError::OutOfRange)?;
    let (first, rest) = out.split_first_mut().ok_or(EncodeError::BufferTooSmall)?;
    *first = VERSION;
    let body = postcard::to_slice(msg, rest)
        .map_err(|_| EncodeError::BufferTooSmall)?
        .len();
    Ok(&out[..1 + body])
}

/// Decodes one message from a slot's bytes (see the crate docs for the
/// rules).
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, DecodeError> {
    let (&version, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let (msg, trailing) =
        postcard::take_from_bytes::<M>(rest).map_err(|_| DecodeError::Malformed)?;
    if !trailing.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    msg.check().map_err(DecodeError::OutOfRange)?;
    Ok(msg)
}

/// [`decode`] for a client's request.
pub fn decode_request(bytes: &[u8]) -> Result<Request, DecodeError> {
    decode(bytes)
}

/// [`decode`] for the server's response.
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    decode(bytes)
}

/// [`decode`] for a memory server → balloon message.
pub fn decode_to_balloon(bytes: &[u8]) -> Result<ToBalloon, DecodeError> {
    decode(bytes)
}

/// [`decode`] for a balloon → memory server message.
pub fn decode_from_balloon(bytes: &[u8]) -> Result<FromBalloon, DecodeError> {
    decode(bytes)
}

/// The leading `u32` id of a (possibly malformed) version-[`VERSION`]
/// message: [`Request::tag`], or the `req` / `batch` of a balloon message
/// after its variant index (`skip_variant`). `None` when the version byte is
/// wrong or the id itself is damaged.
fn leading_id(bytes: &[u8], skip_variant: bool) -> Option<u32> {
    let rest = match bytes.split_first() {
        Some((&VERSION, rest)) => rest,
        _ => return None,
    };
    let rest = if skip_variant {
        postcard::take_from_bytes::<u32>(rest).ok()?.1
    } else {
        rest
    };
    postcard::take_from_bytes::<u32>(rest)
        .ok()
        .map(|(id, _)| id)
}

impl Response {
    /// The error response to a request that failed to decode with `error`:
    /// tagged with the request's tag when it can be read.
    pub fn to_malformed(bytes: &[u8], error: DecodeError) -> Self {
        Self {
            tag: leading_id(bytes, false),
            body: ClientResponse::Error(error.into()),
        }
    }
}

impl ToBalloon {
    /// The refusal of a balloon message that failed to decode with `error`,
    /// naming its `req` when the message is an `Inflate` or `Deflate` whose
    /// id is readable.
    pub fn refuse_malformed(bytes: &[u8], error: DecodeError) -> Self {
        // Variant indices of FromBalloon::Inflate and ::Deflate (declaration
        // order, as postcard encodes enum variants).
        const INFLATE: u32 = 2;
        const DEFLATE: u32 = 3;
        let variant = match bytes.split_first() {
            Some((&VERSION, rest)) => postcard::take_from_bytes::<u32>(rest).ok().map(|v| v.0),
            _ => None,
        };
        let req = match variant {
            Some(INFLATE | DEFLATE) => leading_id(bytes, true),
            _ => None,
        };
        Self::Refused {
            req,
            reason: error.into(),
        }
    }
}

/// Ranges in one VM report: Linux's `PAGE_REPORTING_CAPACITY`.
pub const VM_REPORT_RANGES: usize = 32;

/// Pages of a VM's RAM: `pages` pages from page `page` of it (counted
/// from the start of the VM's RAM, so the VMM never needs to know where
/// the RAM is physically).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRange {
    /// First page, from the start of the VM's RAM.
    pub page: u64,
    /// Pages, at least 1.
    pub pages: u64,
}

impl VmRange {
    fn check(&self) -> Result<(), RangeError> {
        // Both fit the physical address space, and so does their sum.
        match self.page.checked_add(self.pages) {
            Some(end) if end <= MAX_PFN + 1 => Ok(()),
            _ => Err(RangeError::Pfn(self.page)),
        }
    }
}

/// VMM → memory server (nested reporting, issue 14).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromVmm {
    /// The VM's OS reported these ranges of its RAM free (one chain of
    /// its balloon's reporting queue). Answered by [`ToVmm::ReportDone`]
    /// or [`ToVmm::Refused`] with the same `id`.
    Report {
        /// Chosen by the VMM; unique among its reports in flight.
        id: u32,
        /// 1..=[`VM_REPORT_RANGES`] ranges.
        ranges: Vec<VmRange, VM_REPORT_RANGES>,
    },
    /// The VM's OS put these pages in its balloon (its inflate queue),
    /// toward the target of [`ToVmm::BalloonTarget`]: they may go to the
    /// outer host. At most [`VM_BALLOON_PAGES`] pages in all. Answered
    /// only when refused ([`ToVmm::BalloonRefused`]).
    Inflated {
        /// 1..=[`VM_REPORT_RANGES`] ranges.
        ranges: Vec<VmRange, VM_REPORT_RANGES>,
    },
    /// The VM's OS takes these pages back from its balloon (its deflate
    /// queue): toward a lower target, or on its own when it ran out of
    /// memory (VIRTIO_BALLOON_F_DEFLATE_ON_OOM). At most
    /// [`VM_BALLOON_PAGES`] pages. Answered by [`ToVmm::DeflateDone`] once
    /// the outer host holds none of them (only then may the VM's OS use
    /// them: the VMM holds the chain until then), or refused.
    Deflated {
        /// Chosen by the VMM; unique among its deflates in flight.
        id: u32,
        /// 1..=[`VM_REPORT_RANGES`] ranges.
        ranges: Vec<VmRange, VM_REPORT_RANGES>,
    },
    /// The VM's OS's statistics (its stats queue), in pages.
    Stats(VmStats),
}

/// Pages one [`FromVmm::Inflated`] or [`FromVmm::Deflated`] may name:
/// Linux puts at most 256 frames in one chain
/// (VIRTIO_BALLOON_ARRAY_PFNS_MAX).
pub const VM_BALLOON_PAGES: u64 = 256;

/// What a VM's OS says of its memory on the balloon's stats queue
/// (VIRTIO 1.2 §5.5.6.3), in pages; `None` for a figure it did not give.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    /// VIRTIO_BALLOON_S_MEMTOT.
    pub total_pages: Option<u64>,
    /// VIRTIO_BALLOON_S_MEMFREE.
    pub free_pages: Option<u64>,
    /// VIRTIO_BALLOON_S_AVAIL.
    pub available_pages: Option<u64>,
}

/// Memory server → VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToVmm {
    /// Report `id` is done: the host has its pages (`ok`), or the device
    /// failed it. Either way the VMM gives the buffers back to the guest.
    ReportDone {
        /// The report's id.
        id: u32,
        /// Whether every range reached the host.
        ok: bool,
    },
    /// Report `id` was refused whole; nothing of it was taken. `None` when
    /// the message was too damaged to read its id.
    Refused {
        /// The report's id.
        id: Option<u32>,
        /// Why.
        reason: VmRefuse,
    },
    /// Set the VM's balloon target (its `num_pages`) and tell the VM's OS
    /// (a configuration-change interrupt): the outer host wants `pages`
    /// pages of the VM's RAM.
    BalloonTarget {
        /// Pages of the VM's RAM wanted in its balloon.
        pages: u32,
    },
    /// Deflate `id` is done: the outer host holds none of its pages, and
    /// the VM's OS may use them.
    DeflateDone {
        /// The deflate's id.
        id: u32,
    },
    /// Send the VM's statistics ([`FromVmm::Stats`]) when its OS next
    /// gives them (the stats queue's buffer goes back to the guest).
    StatsRequest,
    /// An [`FromVmm::Inflated`], [`FromVmm::Deflated`] or
    /// [`FromVmm::Stats`] was refused whole; nothing of it was taken.
    BalloonRefused {
        /// The deflate's id, for a refused `Deflated` whose id could be
        /// read.
        id: Option<u32>,
        /// Why.
        reason: VmRefuse,
    },
}

/// Why the memory server refused a VM's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRefuse {
    /// The message did not decode.
    Malformed,
    /// Another protocol version.
    UnsupportedVersion,
    /// No ranges, or more than [`VM_REPORT_RANGES`].
    BadLength,
    /// A range of no pages.
    Empty,
    /// A range (partly) outside the VM's RAM.
    OutsideRam,
    /// A range overlapping another of the report or one in flight.
    Overlap,
    /// A range cutting into more blocks than a report may carry.
    TooFragmented,
    /// Too many reports of this VM in flight.
    Busy,
    /// A report with this id is in flight.
    DuplicateId,
    /// The outer device does not take reports (no REPORTING, or the
    /// memserver runs with reporting off).
    NoReporting,
    /// More pages in one balloon message than [`VM_BALLOON_PAGES`].
    TooManyPages,
    /// An inflated page already in the VM's balloon, or a deflated page
    /// not in it.
    BalloonState,
    /// The memserver keeps no balloon for this VM.
    NoBalloon,
}

impl fmt::Display for VmRefuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed message",
            Self::UnsupportedVersion => "unsupported protocol version",
            Self::BadLength => "no ranges or too many",
            Self::Empty => "an empty range",
            Self::OutsideRam => "a range outside the VM's RAM",
            Self::Overlap => "a range overlapping one in flight",
            Self::TooFragmented => "a range cut into too many blocks",
            Self::Busy => "too many reports in flight",
            Self::DuplicateId => "a report id already in flight",
            Self::NoReporting => "the outer device takes no reports",
            Self::TooManyPages => "more pages than one balloon message carries",
            Self::BalloonState => "a page already in the balloon, or not in it",
            Self::NoBalloon => "no balloon is kept for this VM",
        })
    }
}

impl From<DecodeError> for VmRefuse {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::UnsupportedVersion(_) => Self::UnsupportedVersion,
            _ => Self::Malformed,
        }
    }
}

impl sealed::Sealed for FromVmm {}
impl Message for FromVmm {
    fn check(&self) -> Result<(), RangeError> {
        match self {
            Self::Report { ranges, .. }
            | Self::Inflated { ranges }
            | Self::Deflated { ranges, .. } => ranges.iter().try_for_each(VmRange::check),
            Self::Stats(_) => Ok(()),
        }
    }
}

impl sealed::Sealed for ToVmm {}
impl Message for ToVmm {
    fn check(&self) -> Result<(), RangeError> {
        Ok(())
    }
}

impl ToVmm {
    /// The refusal of a VMM message that failed to decode with `error`,
    /// naming its id when it is readable (the first field after the
    /// variant).
    pub fn refuse_malformed(bytes: &[u8], error: DecodeError) -> Self {
        // A `Report` (variant 0) and a `Deflated` (2) lead with their id;
        // a damaged message of another kind must not be taken for the
        // refusal of some report or deflate.
        const REPORT: u32 = 0;
        const DEFLATED: u32 = 2;
        let variant = match bytes.split_first() {
            Some((&VERSION, rest)) => postcard::take_from_bytes::<u32>(rest).ok().map(|v| v.0),
            _ => None,
        };
        match variant {
            Some(REPORT) | None => Self::Refused {
                id: leading_id(bytes, true),
                reason: error.into(),
            },
            Some(DEFLATED) => Self::BalloonRefused {
                id: leading_id(bytes, true),
                reason: error.into(),
            },
            Some(_) => Self::BalloonRefused {
                id: None,
                reason: error.into(),
            },
        }
    }
}

/// [`decode`] for a VMM → memory server message.
pub fn decode_from_vmm(bytes: &[u8]) -> Result<FromVmm, DecodeError> {
    decode(bytes)
}

/// [`decode`] for a memory server → VMM message.
pub fn decode_to_vmm(bytes: &[u8]) -> Result<ToVmm, DecodeError> {
    decode(bytes)
}

/// Operator → memory server, on the control port (a description's
/// `control_req` ring; the memory server answers on `control_resp`). The
/// operator's console drives it: on the host platform the launcher is
/// that console (`tools demo --set-tunable`). The same range checks as
/// the balloon's [`FromBalloon::SetTunable`] apply, and every request is
/// answered, a malformed one included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromControl {
    /// Set one reporting tunable while the system runs (as Linux's
    /// `page_reporting_order` module parameter); the worker uses it from
    /// its next pass; a refused value changes nothing.
    SetTunable {
        /// Which tunable.
        key: TunableKey,
        /// Its new value, in the unit the key's name says (`policy`: 0
        /// linux, 1 adaptive).
        value: u64,
    },
}

/// Memory server → operator: one answer per [`FromControl`] request, in
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToControl {
    /// The answer to [`FromControl::SetTunable`]: `refused` is `None`
    /// when the value is in force from the next pass.
    TunableSet {
        /// The key of the request.
        key: TunableKey,
        /// The value of the request.
        value: u64,
        /// Why nothing changed, if it did not.
        refused: Option<TunableRefusal>,
    },
    /// The request could not be decoded (`Malformed` or
    /// `UnsupportedVersion`); nothing changed.
    Refused {
        /// Why.
        reason: RefuseReason,
    },
}

/// One line, as the operator reads it: `delay_ms=250 set`, `order=11
/// refused: value out of range`, `request refused: malformed message`.
impl fmt::Display for ToControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToControl::TunableSet {
                key,
                value,
                refused: None,
            } => write!(f, "{} set", key.pair(*value)),
            ToControl::TunableSet {
                key,
                value,
                refused: Some(why),
            } => write!(f, "{} refused: {why}", key.pair(*value)),
            ToControl::Refused { reason } => write!(f, "request refused: {reason}"),
        }
    }
}

impl sealed::Sealed for FromControl {}
impl Message for FromControl {
    fn check(&self) -> Result<(), RangeError> {
        Ok(())
    }
}

impl sealed::Sealed for ToControl {}
impl Message for ToControl {
    fn check(&self) -> Result<(), RangeError> {
        Ok(())
    }
}

/// [`decode`] for an operator → memory server message.
pub fn decode_from_control(bytes: &[u8]) -> Result<FromControl, DecodeError> {
    decode(bytes)
}

/// [`decode`] for a memory server → operator message.
pub fn decode_to_control(bytes: &[u8]) -> Result<ToControl, DecodeError> {
    decode(bytes)
}

#[cfg(test)]
mod tests;
