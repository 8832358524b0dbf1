//! Single-producer single-consumer rings of fixed-size slots in shared memory.
//!
//! A ring lives in one memory region mapped into two protection domains: the
//! producer's and the consumer's. Each side builds its handle from the region
//! base, the region length and the slot payload size *it knows itself* (from
//! its own `system.xml` and the protocol crate); nothing about the geometry is
//! read from shared memory, so a peer cannot make us index out of bounds.
//!
//! # Layout
//!
//! ```text
//! offset 0    RingHeader (128 bytes, see the field docs for who writes what)
//! offset 128  slot 0, slot 1, ... slot capacity-1
//!             slot = 8-byte length word (u32 length, upper half must be 0)
//!                    + payload rounded up to 8 bytes
//! ```
//!
//! `capacity` is the largest power of two of slots that fits, at most 2^31.
//! Indices are free-running `u32` counters (like sDDF's queues and virtio's
//! `idx`): slot = index & (capacity - 1); `head - tail` (wrapping) is the
//! number of full slots. All-zero memory is a valid empty ring with no signal
//! requested, so a freshly mapped (zeroed) Microkit region or memfd needs no
//! initialisation handshake.
//!
//! # Memory ordering
//!
//! - The producer writes a slot (relaxed atomic stores), then publishes it
//!   with a `Release` store of `head`. The consumer reads `head` with
//!   `Acquire`, then reads the slot: it sees the bytes written before the
//!   publish.
//! - The consumer copies a slot out, then frees it with a `Release` store of
//!   `tail`. The producer reads `tail` with `Acquire` before reusing a slot,
//!   so it never overwrites bytes still being read.
//! - Shared memory is only ever touched through atomics (`AtomicU32` for the
//!   header, `AtomicU64` words for slots), never through `&mut` or plain
//!   loads: a hostile peer may write any word at any time, and the worst it
//!   can achieve is garbage *values*, which are validated.
//!
//! # Signalling protocol (sDDF "process, publish, re-check, notify")
//!
//! Notifications coalesce and carry no data: the ring is the state, a
//! notification only says "look". Each direction has a flag in the header:
//! `consumer_signal` (consumer: "signal me when you produce") and
//! `producer_signal` (producer: "signal me when you consume", set when it
//! found the ring full). A flag is set by the side that will wait and cleared
//! by the side that sends the notification.
//!
//! Waiting side (consumer shown; the producer waiting for space is the mirror
//! image with [`Producer::request_signal`] and [`Producer::free_slots`]):
//!
//! ```text
//! loop {
//!     while let Some(n) = consumer.pop(&mut buf)? { handle(&buf[..n]) }  // process
//!     if consumer.needs_notify() { notify(producer) }  // it was waiting for space
//!     consumer.request_signal();                      // set flag, SeqCst fence
//!     if consumer.is_empty()? { break }               // re-check, then wait
//! }
//! wait for a notification
//! ```
//!
//! Notifying side: publish (push), then `if producer.needs_notify() {
//! notify(consumer) }`. `needs_notify` issues a `SeqCst` fence before it reads
//! the flag. The two fences make this Dekker's pattern: either the waiter's
//! re-check sees the new `head`, or the producer's flag read sees the request
//! and notifies. Either way no wakeup is lost; the loom tests in
//! `tests/loom.rs` check this, and that dropping the re-check loses one.
//!
//! # Example
//!
//! ```
//! use pd_ring::{RingError, RingMemory, ring_words};
//!
//! // In a PD: `unsafe { Producer::from_raw(region_vaddr, region_size, 512) }`.
//! let mem = RingMemory::<{ ring_words(4, 512) }>::new();
//! let mut tx = mem.producer(512).unwrap();
//! let mut rx = mem.consumer(512).unwrap();
//!
//! rx.request_signal(); // the consumer found nothing and will wait
//! tx.push(b"hello").unwrap();
//! assert!(tx.needs_notify()); // so the producer must notify it, once
//! assert!(!tx.needs_notify());
//!
//! let mut buf = [0u8; 512];
//! assert_eq!(rx.pop(&mut buf), Ok(Some(5)));
//! assert_eq!(&buf[..5], b"hello");
//! assert_eq!(rx.pop(&mut buf), Ok(None));
//! assert_eq!(tx.push(&[0; 513]), Err(RingError::TooLarge { len: 513, max: 512 }));
//! ```
//!
//! # Hostile peers
//!
//! Each handle keeps a private shadow of its own index and of the last peer
//! index it accepted. A peer index that moved backwards, or past what is
//! possible (the consumer beyond the producer, the producer more than
//! `capacity` ahead of the consumer), or a slot length larger than the slot,
//! is reported as [`RingError::PeerMisbehaviour`]. The handle stays usable:
//! an illegal index changes nothing (every call re-validates, so a peer that
//! restores a legal index is served again); a slot with an illegal length is
//! consumed (it is a malformed message, and skipping it keeps the ring from
//! being wedged) and reported. Nothing here panics on peer data.
#![no_std]

#[cfg(test)]
extern crate std;

mod sync;

use core::fmt;

pub use sync::{AtomicU32, AtomicU64};
use sync::{Ordering, fence};

/// Bytes of the [`RingHeader`] at the start of a region.
pub const HEADER_SIZE: usize = 128;

/// Largest slot payload accepted (keeps the length in a `u32` and the slot
/// arithmetic far from overflow).
pub const MAX_SLOT_PAYLOAD: usize = 1 << 24;

/// Largest capacity: indices are `u32`, so `head - tail` must stay below 2^32.
pub const MAX_CAPACITY: u32 = 1 << 31;

/// The shared header. Every field is written by one side only, except the
/// two signal flags, which one side sets and the other clears.
///
/// The producer's and the consumer's fields sit in different 64-byte lines so
/// the two sides do not fight over one cache line.
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    /// Producer index: number of slots ever published (free-running).
    /// Written by the producer only (`Release`), read by the consumer.
    pub head: AtomicU32,
    /// Non-zero: the consumer asks to be notified when a slot is published.
    /// Set by the consumer, cleared by the producer when it notifies.
    pub consumer_signal: AtomicU32,
    /// Reserved, zero. Written by nobody.
    reserved0: [AtomicU32; 14],
    /// Consumer index: number of slots ever consumed (free-running).
    /// Written by the consumer only (`Release`), read by the producer.
    pub tail: AtomicU32,
    /// Non-zero: the producer found the ring full and asks to be notified
    /// when a slot is freed. Set by the producer, cleared by the consumer
    /// when it notifies.
    pub producer_signal: AtomicU32,
    /// Reserved, zero. Written by nobody.
    reserved1: [AtomicU32; 14],
}

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<RingHeader>() == HEADER_SIZE);

impl RingHeader {
    #[cfg(not(loom))]
    const fn new() -> Self {
        Self {
            head: AtomicU32::new(0),
            consumer_signal: AtomicU32::new(0),
            reserved0: [const { AtomicU32::new(0) }; 14],
            tail: AtomicU32::new(0),
            producer_signal: AtomicU32::new(0),
            reserved1: [const { AtomicU32::new(0) }; 14],
        }
    }

    #[cfg(loom)]
    fn new() -> Self {
        Self {
            head: AtomicU32::new(0),
            consumer_signal: AtomicU32::new(0),
            reserved0: core::array::from_fn(|_| AtomicU32::new(0)),
            tail: AtomicU32::new(0),
            producer_signal: AtomicU32::new(0),
            reserved1: core::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// Why a region cannot hold a ring. Only returned by constructors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometryError {
    /// The region base is null or not 8-byte aligned.
    Misaligned,
    /// Slot payload is 0 or above [`MAX_SLOT_PAYLOAD`].
    BadSlotSize(usize),
    /// The region cannot hold the header and one slot.
    TooSmall {
        /// Region length in bytes.
        len: usize,
    },
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned => write!(f, "ring region is null or not 8-byte aligned"),
            Self::BadSlotSize(n) => {
                write!(
                    f,
                    "slot payload of {n} bytes (must be 1..={MAX_SLOT_PAYLOAD})"
                )
            }
            Self::TooSmall { len } => {
                write!(
                    f,
                    "ring region of {len} bytes cannot hold the header and one slot"
                )
            }
        }
    }
}

/// What a misbehaving peer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// The peer's index moved backwards from the last value accepted.
    IndexBackwards {
        /// The value read.
        seen: u32,
        /// The last value accepted.
        last: u32,
    },
    /// The peer's index is beyond what is possible: the consumer past the
    /// producer, or the producer more than `capacity` past the consumer.
    IndexOutOfRange {
        /// The value read.
        seen: u32,
        /// Our own index.
        own: u32,
    },
    /// A slot's length word exceeds the slot payload size. The slot was
    /// consumed.
    BadLength {
        /// The length word read.
        len: u64,
    },
}

/// Errors of ring operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// No free slot (producer). Request a signal and re-check, or retry later.
    Full,
    /// The message is larger than a slot's payload.
    TooLarge {
        /// Message length.
        len: usize,
        /// Slot payload size.
        max: usize,
    },
    /// The caller's buffer is shorter than the message; nothing was consumed.
    BufferTooSmall {
        /// Message length.
        needed: usize,
    },
    /// The peer broke the protocol; see [`Misbehaviour`].
    PeerMisbehaviour(Misbehaviour),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => write!(f, "ring full"),
            Self::TooLarge { len, max } => {
                write!(f, "message of {len} bytes exceeds the {max}-byte slot")
            }
            Self::BufferTooSmall { needed } => {
                write!(f, "buffer too small for a {needed}-byte message")
            }
            Self::PeerMisbehaviour(Misbehaviour::IndexBackwards { seen, last }) => {
                write!(f, "peer index moved backwards: {seen} after {last}")
            }
            Self::PeerMisbehaviour(Misbehaviour::IndexOutOfRange { seen, own }) => {
                write!(f, "peer index {seen} impossible with own index {own}")
            }
            Self::PeerMisbehaviour(Misbehaviour::BadLength { len }) => {
                write!(f, "peer wrote slot length {len} beyond the slot")
            }
        }
    }
}

/// Words (u64) per slot: one length word plus the payload rounded up.
const fn stride_words(slot_payload: usize) -> usize {
    1 + slot_payload.div_ceil(8)
}

/// Number of `u64` slot words for `capacity` slots of `slot_payload` bytes:
/// the `WORDS` parameter of [`RingMemory`].
pub const fn ring_words(capacity: usize, slot_payload: usize) -> usize {
    capacity * stride_words(slot_payload)
}

/// Bytes a region needs for `capacity` slots of `slot_payload` bytes.
pub const fn region_size(capacity: usize, slot_payload: usize) -> usize {
    HEADER_SIZE + 8 * ring_words(capacity, slot_payload)
}

/// The part of the ring both handles share, with the geometry this side
/// computed itself.
#[derive(Debug)]
struct Shared<'a> {
    header: &'a RingHeader,
    words: &'a [AtomicU64],
    /// Power of two, `1..=MAX_CAPACITY`.
    capacity: u32,
    /// Words per slot; `capacity * stride <= words.len()`.
    stride: usize,
    payload: usize,
}

impl<'a> Shared<'a> {
    fn new(
        header: &'a RingHeader,
        words: &'a [AtomicU64],
        slot_payload: usize,
    ) -> Result<Self, GeometryError> {
        if slot_payload == 0 || slot_payload > MAX_SLOT_PAYLOAD {
            return Err(GeometryError::BadSlotSize(slot_payload));
        }
        let stride = stride_words(slot_payload);
        let slots = words.len() / stride;
        if slots == 0 {
            return Err(GeometryError::TooSmall {
                len: HEADER_SIZE + 8 * words.len(),
            });
        }
        let fit = u32::try_from(slots).unwrap_or(u32::MAX).min(MAX_CAPACITY);
        // Largest power of two <= fit (fit >= 1).
        let capacity = 1u32 << (31 - fit.leading_zeros());
        Ok(Self {
            header,
            words,
            capacity,
            stride,
            payload: slot_payload,
        })
    }

    /// Word `k` of the slot for free-running index `index`.
    fn word(&self, index: u32, k: usize) -> &AtomicU64 {
        let slot = (index & (self.capacity - 1)) as usize;
        // Own invariant (checked at construction): slot < capacity,
        // k < stride, capacity * stride <= words.len(); so this never panics.
        &self.words[slot * self.stride + k]
    }
}

/// The producer's handle on a ring.
#[derive(Debug)]
pub struct Producer<'a> {
    shared: Shared<'a>,
    /// Private shadow of `head`: never read back from shared memory.
    head: u32,
    /// Last `tail` accepted from the consumer.
    tail: u32,
    misbehaviours: u32,
}

/// The consumer's handle on a ring.
#[derive(Debug)]
pub struct Consumer<'a> {
    shared: Shared<'a>,
    /// Private shadow of `tail`: never read back from shared memory.
    tail: u32,
    /// Last `head` accepted from the producer.
    head: u32,
    misbehaviours: u32,
}

/// Splits a raw region into header and slot words.
///
/// # Safety
/// `base` must be valid for reads and writes of `len` bytes for `'a`, and
/// every other access to the region during `'a` must be atomic or volatile
/// (the peer PD's, or another process's through a shared mapping).
#[cfg(not(loom))]
unsafe fn raw_parts<'a>(
    base: *mut u8,
    len: usize,
) -> Result<(&'a RingHeader, &'a [AtomicU64]), GeometryError> {
    if base.is_null() || !(base as usize).is_multiple_of(core::mem::align_of::<AtomicU64>()) {
        return Err(GeometryError::Misaligned);
    }
    if len < HEADER_SIZE {
        return Err(GeometryError::TooSmall { len });
    }
    // SAFETY: base is non-null and 8-aligned (checked), valid for `len >=
    // HEADER_SIZE` bytes for 'a (caller). RingHeader is repr(C) of AtomicU32
    // only, which have the layout of u32 and accept any bit pattern, and all
    // mutation goes through atomics, so a shared reference is sound.
    let header = unsafe { &*(base.cast::<RingHeader>()) };
    let words = (len - HEADER_SIZE) / 8;
    // Stays inside the region (len >= HEADER_SIZE), so no unsafe `add`.
    let first = base.wrapping_add(HEADER_SIZE).cast::<AtomicU64>();
    // SAFETY: `first` is 8-aligned (HEADER_SIZE is a multiple of 8) and
    // `words * 8` bytes past it lie inside the region (caller); the slice
    // holds AtomicU64 (layout of u64, any bit pattern valid).
    let slots = unsafe { core::slice::from_raw_parts(first, words) };
    Ok((header, slots))
}

impl<'a> Producer<'a> {
    /// Builds the producer's handle over a shared region.
    ///
    /// # Safety
    /// `base` must be valid for reads and writes of `len` bytes for `'a`,
    /// and every other access to the region during `'a` must be atomic or
    /// volatile. At most one `Producer` should use a ring at a time (a second
    /// one only corrupts the protocol, not memory).
    #[cfg(not(loom))]
    pub unsafe fn from_raw(
        base: *mut u8,
        len: usize,
        slot_payload: usize,
    ) -> Result<Self, GeometryError> {
        // SAFETY: forwarded from this function's contract.
        let (header, words) = unsafe { raw_parts(base, len)? };
        Self::new(header, words, slot_payload)
    }

    fn new(
        header: &'a RingHeader,
        words: &'a [AtomicU64],
        slot_payload: usize,
    ) -> Result<Self, GeometryError> {
        let shared = Shared::new(header, words, slot_payload)?;
        // Start from what the region says (zero when fresh) so a restarted
        // producer joins a ring that the consumer has been draining. A bogus
        // tail is caught below because it is checked against `head`.
        let head = header.head.load(Ordering::Relaxed);
        let tail = header.tail.load(Ordering::Acquire);
        let (head, tail) = if head.wrapping_sub(tail) <= shared.capacity {
            (head, tail)
        } else {
            (tail, tail)
        };
        Ok(Self {
            shared,
            head,
            tail,
            misbehaviours: 0,
        })
    }

    /// Slots in the ring (a power of two).
    pub fn capacity(&self) -> u32 {
        self.shared.capacity
    }

    /// Largest message in bytes.
    pub fn max_len(&self) -> usize {
        self.shared.payload
    }

    /// How many times the consumer was caught misbehaving.
    pub fn misbehaviours(&self) -> u32 {
        self.misbehaviours
    }

    /// Reads and validates the consumer's index: it may only move forward,
    /// up to our own `head`.
    fn observe_tail(&mut self) -> Result<u32, RingError> {
        let seen = self.shared.header.tail.load(Ordering::Acquire);
        let used = self.head.wrapping_sub(seen);
        let used_before = self.head.wrapping_sub(self.tail);
        if used > used_before {
            self.misbehaviours = self.misbehaviours.wrapping_add(1);
            // Either behind the last accepted value or ahead of head.
            let m = if self.tail.wrapping_sub(seen) <= self.shared.capacity {
                Misbehaviour::IndexBackwards {
                    seen,
                    last: self.tail,
                }
            } else {
                Misbehaviour::IndexOutOfRange {
                    seen,
                    own: self.head,
                }
            };
            return Err(RingError::PeerMisbehaviour(m));
        }
        self.tail = seen;
        Ok(used)
    }

    /// Free slots now, after validating the consumer's index.
    pub fn free_slots(&mut self) -> Result<u32, RingError> {
        let used = self.observe_tail()?;
        Ok(self.shared.capacity - used)
    }

    /// Copies `bytes` into the next slot and publishes it.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), RingError> {
        if bytes.len() > self.shared.payload {
            return Err(RingError::TooLarge {
                len: bytes.len(),
                max: self.shared.payload,
            });
        }
        // Only read the consumer's index when our last view says full.
        if self.head.wrapping_sub(self.tail) >= self.shared.capacity
            && self.observe_tail()? >= self.shared.capacity
        {
            return Err(RingError::Full);
        }
        let index = self.head;
        self.shared
            .word(index, 0)
            .store(bytes.len() as u64, Ordering::Relaxed);
        for (k, chunk) in bytes.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.shared
                .word(index, 1 + k)
                .store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        self.head = index.wrapping_add(1);
        // Publish: the slot's stores happen-before any Acquire load of head
        // that sees this value.
        self.shared.header.head.store(self.head, Ordering::Release);
        Ok(())
    }

    /// After publishing: does the consumer want a notification? If so the
    /// request is cleared (the caller must then notify).
    pub fn needs_notify(&mut self) -> bool {
        // Orders our head store before the flag load (pairs with the fence
        // in `Consumer::request_signal`): no lost wakeup.
        fence(Ordering::SeqCst);
        let flag = &self.shared.header.consumer_signal;
        flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::Relaxed) != 0
    }

    /// Asks the consumer to notify us when it frees a slot. Re-check with
    /// [`Producer::free_slots`] before waiting.
    pub fn request_signal(&mut self) {
        self.shared
            .header
            .producer_signal
            .store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Withdraws a request made with [`Producer::request_signal`].
    pub fn cancel_signal(&mut self) {
        self.shared
            .header
            .producer_signal
            .store(0, Ordering::Relaxed);
    }
}

impl<'a> Consumer<'a> {
    /// Builds the consumer's handle over a shared region.
    ///
    /// # Safety
    /// As for [`Producer::from_raw`].
    #[cfg(not(loom))]
    pub unsafe fn from_raw(
        base: *mut u8,
        len: usize,
        slot_payload: usize,
    ) -> Result<Self, GeometryError> {
        // SAFETY: forwarded from this function's contract.
        let (header, words) = unsafe { raw_parts(base, len)? };
        Self::new(header, words, slot_payload)
    }

    fn new(
        header: &'a RingHeader,
        words: &'a [AtomicU64],
        slot_payload: usize,
    ) -> Result<Self, GeometryError> {
        let shared = Shared::new(header, words, slot_payload)?;
        let tail = header.tail.load(Ordering::Relaxed);
        Ok(Self {
            shared,
            tail,
            head: tail,
            misbehaviours: 0,
        })
    }

    /// Slots in the ring (a power of two).
    pub fn capacity(&self) -> u32 {
        self.shared.capacity
    }

    /// Largest message in bytes.
    pub fn max_len(&self) -> usize {
        self.shared.payload
    }

    /// How many times the producer was caught misbehaving.
    pub fn misbehaviours(&self) -> u32 {
        self.misbehaviours
    }

    fn misbehaved(&mut self, m: Misbehaviour) -> RingError {
        self.misbehaviours = self.misbehaviours.wrapping_add(1);
        RingError::PeerMisbehaviour(m)
    }

    /// Reads and validates the producer's index: it may only move forward,
    /// at most `capacity` past our own `tail`. Returns the full slots.
    fn observe_head(&mut self) -> Result<u32, RingError> {
        let seen = self.shared.header.head.load(Ordering::Acquire);
        let avail = seen.wrapping_sub(self.tail);
        if avail > self.shared.capacity {
            return Err(self.misbehaved(Misbehaviour::IndexOutOfRange {
                seen,
                own: self.tail,
            }));
        }
        // Within [tail, tail + capacity]; it must also not be behind the
        // last accepted head (which is itself in [tail, tail + capacity]).
        if seen.wrapping_sub(self.head) > avail {
            return Err(self.misbehaved(Misbehaviour::IndexBackwards {
                seen,
                last: self.head,
            }));
        }
        self.head = seen;
        Ok(avail)
    }

    /// Full slots now, after validating the producer's index.
    pub fn available(&mut self) -> Result<u32, RingError> {
        self.observe_head()
    }

    /// Whether no slot is published (validates the producer's index).
    pub fn is_empty(&mut self) -> Result<bool, RingError> {
        Ok(self.observe_head()? == 0)
    }

    /// Copies the next message into `buf` and frees its slot. `Ok(None)`
    /// when the ring is empty.
    pub fn pop(&mut self, buf: &mut [u8]) -> Result<Option<usize>, RingError> {
        if self.head == self.tail && self.observe_head()? == 0 {
            return Ok(None);
        }
        let index = self.tail;
        let len = self.shared.word(index, 0).load(Ordering::Relaxed);
        if len > self.shared.payload as u64 {
            // A malformed message: consume it so the ring keeps moving.
            self.release(index);
            return Err(self.misbehaved(Misbehaviour::BadLength { len }));
        }
        let len = len as usize;
        if buf.len() < len {
            return Err(RingError::BufferTooSmall { needed: len });
        }
        for (k, chunk) in buf[..len].chunks_mut(8).enumerate() {
            let w = self.shared.word(index, 1 + k).load(Ordering::Relaxed);
            chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
        }
        self.release(index);
        Ok(Some(len))
    }

    fn release(&mut self, index: u32) {
        self.tail = index.wrapping_add(1);
        // Our slot reads happen-before the producer's reuse of the slot.
        self.shared.header.tail.store(self.tail, Ordering::Release);
    }

    /// After consuming: does the producer want a notification (it found the
    /// ring full)? If so the request is cleared (the caller must notify).
    pub fn needs_notify(&mut self) -> bool {
        // Orders our tail store before the flag load (pairs with the fence
        // in `Producer::request_signal`).
        fence(Ordering::SeqCst);
        let flag = &self.shared.header.producer_signal;
        flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::Relaxed) != 0
    }

    /// Asks the producer to notify us when it publishes. Re-check with
    /// [`Consumer::is_empty`] before waiting.
    pub fn request_signal(&mut self) {
        self.shared
            .header
            .consumer_signal
            .store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Withdraws a request made with [`Consumer::request_signal`].
    pub fn cancel_signal(&mut self) {
        self.shared
            .header
            .consumer_signal
            .store(0, Ordering::Relaxed);
    }
}

/// Ring memory owned by Rust: for tests, for the host platform's in-process
/// use, and for loom (which needs its own atomics, not raw memory).
/// `WORDS` is the number of `u64` slot words; see [`ring_words`].
#[repr(C, align(64))]
#[derive(Debug)]
pub struct RingMemory<const WORDS: usize> {
    header: RingHeader,
    words: [AtomicU64; WORDS],
}

impl<const WORDS: usize> RingMemory<WORDS> {
    /// Zeroed memory: an empty ring.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            header: RingHeader::new(),
            words: [const { AtomicU64::new(0) }; WORDS],
        }
    }

    /// Zeroed memory: an empty ring.
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            header: RingHeader::new(),
            words: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The header, to play a (hostile) peer in tests.
    pub fn header(&self) -> &RingHeader {
        &self.header
    }

    /// The slot words, to play a (hostile) peer in tests.
    pub fn words(&self) -> &[AtomicU64] {
        &self.words
    }

    /// A producer handle for slots of `slot_payload` bytes.
    pub fn producer(&self, slot_payload: usize) -> Result<Producer<'_>, GeometryError> {
        Producer::new(&self.header, &self.words, slot_payload)
    }

    /// A consumer handle for slots of `slot_payload` bytes.
    pub fn consumer(&self, slot_payload: usize) -> Result<Consumer<'_>, GeometryError> {
        Consumer::new(&self.header, &self.words, slot_payload)
    }
}

impl<const WORDS: usize> Default for RingMemory<WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
