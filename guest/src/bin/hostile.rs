//! The hostile guest PD (`hostile.elf`, test-only; issue 8). It takes a
//! guest's place (same regions and channels, found by its PD name in the
//! guests' layout table) and, round after round, while a well-behaved guest
//! runs its workload, it:
//!
//! - frees blocks it never got, blocks of the other zone, double-frees,
//!   misaligned and wrong-order frees, and a batch mixing good and bad
//!   blocks;
//! - sends garbage bytes, messages of a future protocol version, and values
//!   out of range (order 11, a frame beyond `MAX_PFN`);
//! - moves its ring indices illegally: its request ring's producer index
//!   (ahead by more than the capacity, and backwards) and its response
//!   ring's consumer index (beyond the producer, and backwards), restoring
//!   them afterwards and checking it is served again;
//! - floods its request ring.
//!
//! It counts every answer by kind and logs one machine-parsable line per
//! attack kind and a summary (`HOSTILE|INFO: attack=... sent=N answered=N
//! errors=N expected=N ...`, `HOSTILE|INFO: done ...`). Responses come back
//! in request order (one ring, served in order), so each answer is matched
//! with what was sent by a FIFO; tagged answers must carry the tag sent.
//!
//! Parameters (host platform: `HOSTILE_PARAMS`, e.g.
//! `rounds=5,pause_ms=100,flood=256`; Microkit: the defaults).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../pd_layout.rs"]
#[allow(dead_code)]
mod guests;

use core::cell::UnsafeCell;
use core::convert::Infallible;
use core::fmt::Write as _;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use guests::{LAYOUTS, Layout};
use heapless::{Deque, String};
use memserver_api::{
    Block, ClientError, ClientRequest, ClientResponse, Request, Response, SLOT_SIZE, VERSION,
};
use pd::{Channel, ChannelSet, Handler};
use pd_ring::{Consumer, HEADER_SIZE, Producer, RingError};

/// Byte offset of the ring header's `tail` (pd-ring's `RingHeader`: the
/// producer's fields in the first 64-byte line, the consumer's in the next).
const TAIL_OFFSET: usize = 64;
const _: () = assert!(TAIL_OFFSET < HEADER_SIZE);

/// What a request was (one counter set each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A request a good client would send (allocations, the first free of a
    /// double free, the recovery check): not an attack.
    Legit,
    NeverGot,
    OtherZone,
    DoubleFree,
    Misaligned,
    WrongOrder,
    MixedBatch,
    Garbage,
    FutureVersion,
    OutOfRange,
    Flood,
}

const KINDS: [Kind; 11] = [
    Kind::Legit,
    Kind::NeverGot,
    Kind::OtherZone,
    Kind::DoubleFree,
    Kind::Misaligned,
    Kind::WrongOrder,
    Kind::MixedBatch,
    Kind::Garbage,
    Kind::FutureVersion,
    Kind::OutOfRange,
    Kind::Flood,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Legit => "legit",
            Kind::NeverGot => "never_got",
            Kind::OtherZone => "other_zone",
            Kind::DoubleFree => "double_free",
            Kind::Misaligned => "misaligned",
            Kind::WrongOrder => "wrong_order",
            Kind::MixedBatch => "mixed_batch",
            Kind::Garbage => "garbage",
            Kind::FutureVersion => "future_version",
            Kind::OutOfRange => "out_of_range",
            Kind::Flood => "flood",
        }
    }

    /// Whether `body` is the answer this kind must get (the memserver's
    /// error mapping, memserver/src/server.rs `client_error`).
    fn expected(self, body: &ClientResponse) -> bool {
        use ClientError as E;
        match (self, body) {
            (Kind::Legit, r) => !matches!(
                r,
                ClientResponse::Error(_) | ClientResponse::BatchFailed { .. }
            ),
            (Kind::NeverGot | Kind::DoubleFree | Kind::Flood, ClientResponse::Error(e)) => {
                *e == E::NotAllocated
            }
            (Kind::OtherZone, ClientResponse::Error(e)) => *e == E::WrongZone,
            (Kind::Misaligned, ClientResponse::Error(e)) => *e == E::Misaligned,
            (Kind::WrongOrder, ClientResponse::Error(e)) => *e == E::WrongOrder,
            (Kind::Garbage, ClientResponse::Error(e)) => *e == E::Malformed,
            (Kind::FutureVersion, ClientResponse::Error(e)) => *e == E::UnsupportedVersion,
            (Kind::OutOfRange, ClientResponse::Error(e)) => {
                matches!(e, E::InvalidOrder | E::WrongZone)
            }
            (
                Kind::MixedBatch,
                ClientResponse::BatchFailed {
                    freed: 1,
                    failed: 2,
                    first: 0,
                    ..
                },
            ) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Count {
    sent: u64,
    answered: u64,
    /// Error answers (`Error` or `BatchFailed`).
    errors: u64,
    /// Answers of exactly the expected kind.
    expected: u64,
    /// Error answers by kind: `ClientError` in declaration order, then
    /// `BatchFailed`.
    by_error: [u64; ERRORS.len()],
}

/// Names of the error answers, in the order of `Count::by_error`.
const ERRORS: [&str; 11] = [
    "NoMemory",
    "InvalidOrder",
    "NotAllocated",
    "WrongZone",
    "Misaligned",
    "WrongOrder",
    "Busy",
    "Malformed",
    "UnsupportedVersion",
    "Overloaded",
    "BatchFailed",
];

fn error_index(body: &ClientResponse) -> Option<usize> {
    use ClientError as E;
    Some(match body {
        ClientResponse::Error(e) => match e {
            E::NoMemory => 0,
            E::InvalidOrder => 1,
            E::NotAllocated => 2,
            E::WrongZone => 3,
            E::Misaligned => 4,
            E::WrongOrder => 5,
            E::Busy => 6,
            E::Malformed => 7,
            E::UnsupportedVersion => 8,
            E::Overloaded => 9,
        },
        ClientResponse::BatchFailed { .. } => 10,
        _ => return None,
    })
}

/// The script of one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Allocate the blocks the attacks use.
    Setup,
    /// Bad frees, garbage, future versions, out-of-range values.
    Attacks,
    /// Request producer index moved illegally (`ahead`: more than the
    /// capacity ahead; else backwards); waits for the deadline.
    ScribbleReq {
        ahead: bool,
    },
    /// Response consumer index moved illegally, with a request waiting.
    ScribbleResp {
        ahead: bool,
    },
    /// After a scribble: a Stats request must be answered again.
    Recover,
    /// More requests than the ring holds, pushed as fast as room appears.
    Flood,
    /// Give back what the round allocated.
    Cleanup,
    /// Wait before the next round.
    Pause,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Params {
    rounds: u32,
    pause_ms: u64,
    flood: u32,
    /// Scribbled indices stay this long before they are restored.
    scribble_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            rounds: 5,
            pause_ms: 200,
            flood: 256,
            scribble_ms: 20,
        }
    }
}

impl Params {
    /// `key=value` pairs, comma-separated; unknown keys or bad numbers are
    /// refused (this PD is a test instrument: a typo must not go unnoticed).
    /// Microkit has no environment: the defaults apply there.
    #[cfg_attr(target_os = "none", allow(dead_code))]
    fn parse(text: &str) -> Result<Params, &str> {
        let mut p = Params::default();
        for kv in text.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or(kv)?;
            let n: u64 = v.parse().map_err(|_| kv)?;
            match k {
                "rounds" => p.rounds = u32::try_from(n).map_err(|_| kv)?,
                "pause_ms" => p.pause_ms = n,
                "flood" => p.flood = u32::try_from(n).map_err(|_| kv)?,
                "scribble_ms" => p.scribble_ms = n,
                _ => return Err(kv),
            }
        }
        Ok(p)
    }
}

struct Hostile {
    params: Params,
    log: pd::Log,
    req: Producer<'static>,
    resp: Consumer<'static>,
    /// Raw headers of the two rings, to scribble on.
    req_head: &'static AtomicU32,
    resp_tail: &'static AtomicU32,
    memserver: Channel,
    timer: Channel,
    /// First frame and size of our zone (our RAM region).
    base: u64,
    pages: u64,
    round: u32,
    step: Step,
    /// Messages of the current step sent so far.
    index: u32,
    /// What is in flight, in order: kind and the tag an answer must carry
    /// (`None`: the server cannot read one).
    fifo: Deque<(Kind, Option<u32>), 512>,
    next_tag: u32,
    /// Blocks the setup allocated this round: A (order 9, double-freed),
    /// B (order 9, misaligned / wrong-order target, freed at cleanup),
    /// C (order 0, the good block of the mixed batch).
    held: [Option<Block>; 3],
    counts: [Count; KINDS.len()],
    /// Answers whose tag did not match the request sent, or that came with
    /// nothing in flight, or that did not decode.
    bad_answers: u64,
    /// Ring errors our handles saw (the server moving an index illegally).
    ring_errors: u64,
    /// Illegal index moves made, and how many were followed by a served
    /// recovery request.
    scribbles: u64,
    recovered: u64,
    deadline: u64,
    /// A scribbled index to put back at `deadline`.
    deadline_restore: Option<Restore>,
    rng: u64,
    timer_errors: u64,
    last_now: u64,
}

fn slot(kind: Kind) -> usize {
    KINDS.iter().position(|&k| k == kind).unwrap_or(0)
}

/// Unsigned LEB128, as postcard encodes integers.
fn varint(out: &mut heapless::Vec<u8, SLOT_SIZE>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            let _ = out.push(byte);
            return;
        }
        let _ = out.push(byte | 0x80);
    }
}

/// Variant indices of `ClientRequest` on the wire (declaration order).
const ALLOC: u8 = 0;
const FREE: u8 = 1;

impl Hostile {
    fn now(&mut self) -> u64 {
        match timer::client::now(self.timer) {
            Ok(t) => self.last_now = self.last_now.max(t),
            Err(_) => self.timer_errors += 1,
        }
        self.last_now
    }

    fn wait_ms(&mut self, ms: u64) {
        let ns = ms * 1_000_000;
        self.deadline = self.now() + ns;
        if timer::client::set_timeout(self.timer, ns).is_err() {
            self.timer_errors += 1;
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64: reproducible garbage.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn other_zone(&self) -> u64 {
        // The launcher places guest RAM regions one after the other in
        // system.xml's order, so the other guest's zone is just below ours
        // (guest1) or just above (guest0); try the side that exists.
        if self.base >= self.pages {
            self.base - self.pages
        } else {
            self.base + self.pages
        }
    }

    fn holds(&self, pfn: u64, order: u8) -> bool {
        let end = pfn + (1 << order);
        self.held
            .iter()
            .flatten()
            .any(|b| b.pfn < end && pfn < b.pfn + b.pages())
    }

    /// A block of our zone we never got (order 10, from the top down).
    /// Buddies are aligned absolutely, not to the zone's base: Microkit
    /// puts guest RAM at 2 MiB boundaries (0x60600000), so the zone's own
    /// offsets would make misaligned blocks (found booting on seL4).
    fn never_got(&self, k: u64) -> Block {
        let first = self.base.next_multiple_of(1024);
        let top = (self.base + self.pages) & !1023;
        let blocks = top.saturating_sub(first) / 1024;
        let mut k = k % blocks.max(1);
        loop {
            let pfn = top - 1024 * (k + 1);
            if !self.holds(pfn, 10) || k == 0 {
                return Block { pfn, order: 10 };
            }
            k -= 1;
        }
    }

    fn encode(&mut self, body: ClientRequest) -> Option<(heapless::Vec<u8, SLOT_SIZE>, u32)> {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1);
        let mut buf = [0u8; SLOT_SIZE];
        let bytes = memserver_api::encode(&Request { tag, body }, &mut buf).ok()?;
        heapless::Vec::from_slice(bytes).ok().map(|v| (v, tag))
    }

    /// The `i`th message of the current step: kind, bytes, tag to expect.
    /// `None`: the step has sent everything.
    #[allow(clippy::type_complexity)]
    fn message(&mut self, i: u32) -> Option<(Kind, heapless::Vec<u8, SLOT_SIZE>, Option<u32>)> {
        let [a, b, c] = self.held;
        let tagged = |s: &mut Self, kind, body| s.encode(body).map(|(v, t)| (kind, v, Some(t)));
        let free = |pfn, order| ClientRequest::Free(Block { pfn, order });
        match self.step {
            Step::Setup => match i {
                0 | 1 => tagged(self, Kind::Legit, ClientRequest::Alloc { order: 9 }),
                2 => tagged(self, Kind::Legit, ClientRequest::Alloc { order: 0 }),
                _ => None,
            },
            Step::Attacks => {
                let other = self.other_zone();
                match i {
                    0..4 => {
                        let blk = self.never_got(u64::from(i) + 4 * u64::from(self.round));
                        tagged(self, Kind::NeverGot, ClientRequest::Free(blk))
                    }
                    // A page inside a block we never got: not a block head.
                    4 => {
                        let blk = self.never_got(u64::from(self.round));
                        tagged(self, Kind::NeverGot, free(blk.pfn + 8, 0))
                    }
                    // The other guest's zone: where its allocator starts
                    // handing out 4 MiB and 2 MiB blocks, and a page.
                    5 => tagged(self, Kind::OtherZone, free(other, 10)),
                    6 => tagged(self, Kind::OtherZone, free(other + 1024, 10)),
                    7 => tagged(self, Kind::OtherZone, free(other + 512, 9)),
                    8 => tagged(self, Kind::OtherZone, free(other + 7, 0)),
                    // Double free: a good free, then the same block again.
                    9 => {
                        let a = a?;
                        tagged(self, Kind::Legit, ClientRequest::Free(a))
                    }
                    10 | 11 => {
                        let a = a?;
                        tagged(self, Kind::DoubleFree, ClientRequest::Free(a))
                    }
                    // Misaligned, but inside B (a range past the zone's
                    // end would be refused as WrongZone first).
                    12 => tagged(self, Kind::Misaligned, free(b?.pfn + 1, 1)),
                    13 => tagged(self, Kind::Misaligned, free(b?.pfn + 4, 3)),
                    14 => tagged(self, Kind::WrongOrder, free(b?.pfn, 8)),
                    15 => tagged(self, Kind::WrongOrder, free(b?.pfn, 0)),
                    // One good block between two bad ones: the good one is
                    // freed, the others refused (the first at index 0).
                    16 => {
                        let mut v = heapless::Vec::new();
                        let _ = v.push(self.never_got(u64::from(self.round) + 1));
                        let _ = v.push(c?);
                        let _ = v.push(Block {
                            pfn: other,
                            order: 10,
                        });
                        tagged(self, Kind::MixedBatch, ClientRequest::FreeBatch(v))
                    }
                    17..33 => {
                        // A version byte, a tag, a variant that does not
                        // exist, then random bytes; or nothing at all.
                        let mut v = heapless::Vec::new();
                        if i != 17 {
                            let _ = v.push(VERSION);
                            let t = self.rand() as u32;
                            varint(&mut v, u64::from(t));
                            let _ = v.push(4 + (self.rand() % 120) as u8);
                            let n = self.rand() % 200;
                            for _ in 0..n {
                                let r = self.rand() as u8;
                                let _ = v.push(r);
                            }
                        }
                        Some((Kind::Garbage, v, None))
                    }
                    33..37 => {
                        // A well-formed request of a later version, and
                        // random bytes after a version byte we don't speak.
                        let mut v = if i == 33 {
                            let (v, _) = self.encode(ClientRequest::Stats)?;
                            v
                        } else {
                            let mut v = heapless::Vec::new();
                            for _ in 0..(1 + self.rand() % 64) {
                                let r = self.rand() as u8;
                                let _ = v.push(r);
                            }
                            v
                        };
                        v[0] = VERSION.wrapping_add(1 + (i as u8 - 33) * 50);
                        if v[0] == VERSION {
                            v[0] = VERSION + 1;
                        }
                        Some((Kind::FutureVersion, v, None))
                    }
                    37 | 38 => {
                        // Alloc order 11 / 200 and a frame beyond MAX_PFN:
                        // values the encoder refuses, written by hand.
                        let mut v = heapless::Vec::new();
                        let _ = v.push(VERSION);
                        varint(&mut v, u64::from(self.next_tag));
                        self.next_tag = self.next_tag.wrapping_add(1);
                        let _ = v.push(ALLOC);
                        let _ = v.push(if i == 37 { 11 } else { 200 });
                        Some((Kind::OutOfRange, v, None))
                    }
                    39 => {
                        let mut v = heapless::Vec::new();
                        let _ = v.push(VERSION);
                        varint(&mut v, u64::from(self.next_tag));
                        self.next_tag = self.next_tag.wrapping_add(1);
                        let _ = v.push(FREE);
                        varint(&mut v, 1 << 45);
                        let _ = v.push(0);
                        Some((Kind::OutOfRange, v, None))
                    }
                    _ => None,
                }
            }
            Step::Recover if i == 0 => tagged(self, Kind::Legit, ClientRequest::Stats),
            Step::Flood if i < self.params.flood => {
                let blk = self.never_got(u64::from(i));
                tagged(self, Kind::Flood, ClientRequest::Free(blk))
            }
            Step::Cleanup if i == 0 => tagged(self, Kind::Legit, ClientRequest::Free(b?)),
            _ => None,
        }
    }

    /// Take every answer there is and match it with what was sent.
    fn drain(&mut self) {
        let mut buf = [0u8; SLOT_SIZE];
        loop {
            let n = match self.resp.pop(&mut buf) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(_) => {
                    self.ring_errors += 1;
                    break;
                }
            };
            let Ok(r) = memserver_api::decode_response(&buf[..n]) else {
                self.bad_answers += 1;
                continue;
            };
            self.answer(r);
        }
        if self.resp.needs_notify() {
            self.memserver.notify();
        }
    }

    fn answer(&mut self, r: Response) {
        let Some((kind, tag)) = self.fifo.pop_front() else {
            self.bad_answers += 1;
            return;
        };
        if tag.is_some() && r.tag != tag {
            self.bad_answers += 1;
        }
        let c = &mut self.counts[slot(kind)];
        c.answered += 1;
        if let Some(e) = error_index(&r.body) {
            c.errors += 1;
            c.by_error[e] += 1;
        }
        if kind.expected(&r.body) {
            c.expected += 1;
        }
        match (self.step, r.body) {
            (Step::Setup, ClientResponse::Allocated(b)) => {
                if let Some(h) = self.held.iter_mut().find(|h| h.is_none()) {
                    *h = Some(b);
                }
            }
            // Stats are only asked after a scribble: served again.
            (_, ClientResponse::Stats(_)) => self.recovered += 1,
            _ => {}
        }
    }

    /// How many messages the current step sends.
    fn step_len(&self) -> u32 {
        match self.step {
            Step::Setup => 3,
            Step::Attacks => 40,
            Step::Recover | Step::Cleanup => 1,
            Step::Flood => self.params.flood,
            _ => 0,
        }
    }

    /// Push the step's messages while the ring has room.
    fn send(&mut self) {
        let mut pushed = false;
        while !self.fifo.is_full() && self.index < self.step_len() {
            let Some((kind, bytes, tag)) = self.message(self.index) else {
                // It needs a block the setup did not get: skipped.
                self.index += 1;
                continue;
            };
            match self.req.push(&bytes) {
                Ok(()) => {
                    pushed = true;
                    self.index += 1;
                    self.counts[slot(kind)].sent += 1;
                    let _ = self.fifo.push_back((kind, tag));
                }
                Err(RingError::Full) => {
                    // Flooding: the tag was used, the message not sent;
                    // it is built again (new tag) when room appears.
                    self.req.request_signal();
                    break;
                }
                Err(_) => {
                    self.ring_errors += 1;
                    break;
                }
            }
        }
        if pushed {
            // A hostile client notifies whenever it likes.
            self.memserver.notify();
        }
    }

    fn next_step(&mut self) {
        self.index = 0;
        self.step = match self.step {
            Step::Setup => Step::Attacks,
            Step::Attacks => {
                self.scribble_req(true);
                Step::ScribbleReq { ahead: true }
            }
            Step::ScribbleReq { ahead: true } => {
                self.scribble_req(false);
                Step::ScribbleReq { ahead: false }
            }
            Step::ScribbleReq { ahead: false } => {
                self.scribble_resp(true);
                Step::ScribbleResp { ahead: true }
            }
            Step::ScribbleResp { ahead: true } => {
                self.scribble_resp(false);
                Step::ScribbleResp { ahead: false }
            }
            Step::ScribbleResp { ahead: false } => Step::Recover,
            Step::Recover => Step::Flood,
            Step::Flood => Step::Cleanup,
            Step::Cleanup => {
                self.held = [None; 3];
                self.round += 1;
                if self.round >= self.params.rounds {
                    self.report();
                    Step::Done
                } else {
                    let ms = self.params.pause_ms;
                    self.wait_ms(ms);
                    Step::Pause
                }
            }
            Step::Pause => Step::Setup,
            Step::Done => Step::Done,
        };
    }

    /// Move the request ring's producer index illegally, notify, and come
    /// back after the deadline to restore it.
    fn scribble_req(&mut self, ahead: bool) {
        let real = self.req_head.load(Ordering::Relaxed);
        let bad = if ahead {
            real.wrapping_add(self.req.capacity() + 3)
        } else {
            real.wrapping_sub(3)
        };
        self.req_head.store(bad, Ordering::Release);
        self.scribbles += 1;
        self.memserver.notify();
        self.deadline_restore = Some(Restore::ReqHead(real));
        let ms = self.params.scribble_ms;
        self.wait_ms(ms);
    }

    /// Move the response ring's consumer index illegally, with a request
    /// waiting for an answer, and come back to restore it.
    fn scribble_resp(&mut self, ahead: bool) {
        let real = self.resp_tail.load(Ordering::Relaxed);
        let bad = if ahead {
            real.wrapping_add(1000)
        } else {
            real.wrapping_sub(5)
        };
        self.resp_tail.store(bad, Ordering::Release);
        self.scribbles += 1;
        // A request the server cannot answer while our index is illegal.
        if let Some((v, tag)) = self.encode(ClientRequest::Stats)
            && self.req.push(&v).is_ok()
        {
            self.counts[slot(Kind::Legit)].sent += 1;
            let _ = self.fifo.push_back((Kind::Legit, Some(tag)));
        }
        self.memserver.notify();
        self.deadline_restore = Some(Restore::RespTail(real));
        let ms = self.params.scribble_ms;
        self.wait_ms(ms);
    }

    fn advance(&mut self) {
        loop {
            if let Some(r) = self.deadline_restore {
                if self.now() < self.deadline {
                    return;
                }
                match r {
                    Restore::ReqHead(v) => self.req_head.store(v, Ordering::Release),
                    Restore::RespTail(v) => self.resp_tail.store(v, Ordering::Release),
                }
                self.deadline_restore = None;
                self.memserver.notify();
            }
            if self.step == Step::Pause {
                if self.now() < self.deadline {
                    return;
                }
                self.next_step();
            }
            self.drain();
            self.send();
            if !self.fifo.is_empty() {
                // Wait for answers: ask for a signal, then re-check.
                self.resp.request_signal();
                if matches!(self.resp.is_empty(), Ok(false)) {
                    continue;
                }
                return;
            }
            if self.index < self.step_len() || self.step == Step::Done {
                // Still something to send (the ring was full) or finished.
                return;
            }
            self.next_step();
            if self.step == Step::Done || self.deadline_restore.is_some() {
                return;
            }
            if self.step == Step::Pause {
                return;
            }
        }
    }

    fn report(&self) {
        let mut total = Count::default();
        for (k, c) in KINDS.iter().zip(&self.counts) {
            let mut kinds: String<256> = String::new();
            for (name, n) in ERRORS.iter().zip(c.by_error).filter(|(_, n)| *n > 0) {
                let sep = if kinds.is_empty() { "" } else { "," };
                let _ = write!(kinds, "{sep}{name}:{n}");
            }
            if kinds.is_empty() {
                let _ = kinds.push('-');
            }
            self.log.info(format_args!(
                "attack={} sent={} answered={} errors={} expected={} error_kinds={}",
                k.name(),
                c.sent,
                c.answered,
                c.errors,
                c.expected,
                kinds
            ));
            if *k != Kind::Legit {
                total.sent += c.sent;
                total.answered += c.answered;
                total.errors += c.errors;
                total.expected += c.expected;
            }
        }
        let mut line: String<256> = String::new();
        let _ = write!(
            line,
            "done rounds={} hostile_sent={} hostile_answered={} hostile_errors={} hostile_expected={} \
             scribbles={} recovered={} bad_answers={} ring_errors={} timer_errors={}",
            self.round,
            total.sent,
            total.answered,
            total.errors,
            total.expected,
            self.scribbles,
            self.recovered,
            self.bad_answers,
            self.ring_errors,
            self.timer_errors,
        );
        self.log.info(format_args!("{line}"));
    }
}

/// An index to put back when the deadline passes.
#[derive(Debug, Clone, Copy)]
enum Restore {
    ReqHead(u32),
    RespTail(u32),
}

/// A static handed out once (the PD's state lives in `.bss`, not on its
/// small stack).
struct Once<T>(UnsafeCell<MaybeUninit<T>>, AtomicBool);

// SAFETY: the value is reachable only through the one `&'static mut` that
// `put` hands out (guarded by the flag).
unsafe impl<T> Sync for Once<T> {}

impl<T> Once<T> {
    // The one `&mut` comes from a shared static by design; the flag makes it
    // unique (the pattern of `static_cell`).
    #[allow(clippy::mut_from_ref)]
    fn put(&'static self, v: T) -> Option<&'static mut T> {
        if self.1.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: first and only access (the flag was false).
        let slot = unsafe { &mut *self.0.get() };
        Some(slot.write(v))
    }
}

static HOSTILE: Once<Hostile> = Once(
    UnsafeCell::new(MaybeUninit::uninit()),
    AtomicBool::new(false),
);

struct HostilePd(Option<&'static mut Hostile>);

impl Handler for HostilePd {
    type Error = Infallible;

    fn notified(&mut self, channels: ChannelSet) -> Result<(), Infallible> {
        if let Some(h) = self.0.as_deref_mut()
            && (channels.contains(h.memserver) || channels.contains(h.timer))
        {
            h.advance();
        }
        Ok(())
    }
}

#[cfg(not(target_os = "none"))]
fn params(log: pd::Log) -> Result<Params, ()> {
    match std::env::var("HOSTILE_PARAMS") {
        Ok(t) => Params::parse(&t).map_err(|kv| {
            log.error(format_args!("bad HOSTILE_PARAMS \"{t}\" at \"{kv}\""));
        }),
        Err(_) => Ok(Params::default()),
    }
}

#[cfg(target_os = "none")]
fn params(_: pd::Log) -> Result<Params, ()> {
    Ok(Params::default())
}

fn start(layout: &Layout, log: pd::Log) -> Result<&'static mut Hostile, ()> {
    let params = params(log)?;
    // Its own ram_paddr setvar (see the same line in main.rs).
    let paddr = layout.ram_paddr.get();
    let (req, resp) = (layout.req.get(), layout.resp.get());
    // SAFETY: `req` is this PD's request ring region, mapped read-write for
    // the life of the PD and shared with the memserver only; this handle and
    // the header word below are the only accesses, all atomic.
    let p = unsafe { Producer::from_raw(req.as_ptr(), req.size as usize, SLOT_SIZE) };
    // SAFETY: as above, for the response ring region.
    let c = unsafe { Consumer::from_raw(resp.as_ptr(), resp.size as usize, SLOT_SIZE) };
    let (Ok(p), Ok(c)) = (p, c) else {
        log.error(format_args!("ring regions too small"));
        return Err(());
    };
    // Offsets 0 (`head`) and 64 (`tail`, inside the region: HEADER_SIZE is
    // 128) of a mapped, page-aligned ring region are 4-byte aligned u32
    // words of pd-ring's header, only ever accessed atomically.
    let tail_ptr = resp.as_ptr().wrapping_add(TAIL_OFFSET).cast::<AtomicU32>();
    // SAFETY: see above; valid for the life of the PD.
    let req_head = unsafe { &*req.as_ptr().cast::<AtomicU32>() };
    // SAFETY: see above.
    let resp_tail = unsafe { &*tail_ptr };
    let h = Hostile {
        params,
        log,
        req: p,
        resp: c,
        req_head,
        resp_tail,
        memserver: layout.memserver,
        timer: layout.timer,
        base: paddr >> 12,
        pages: layout.ram_bytes() >> 12,
        round: 0,
        step: Step::Setup,
        index: 0,
        fifo: Deque::new(),
        next_tag: 0x4000_0000,
        held: [None; 3],
        counts: [Count::default(); KINDS.len()],
        bad_answers: 0,
        ring_errors: 0,
        scribbles: 0,
        recovered: 0,
        deadline: 0,
        deadline_restore: None,
        rng: 0x9e37_79b9_7f4a_7c15,
        timer_errors: 0,
        last_now: 0,
    };
    log.info(format_args!(
        "start rounds={} flood={} zone_pfn={:#x} zone_pages={} other_zone_pfn={:#x}",
        params.rounds,
        params.flood,
        h.base,
        h.pages,
        h.other_zone()
    ));
    HOSTILE.put(h).ok_or(())
}

fn init() -> HostilePd {
    let name = pd::pd_name();
    let Some(layout) = LAYOUTS.iter().find(|l| l.name == name) else {
        pd::debug_println!("{name}|ERROR: no guest layout for PD '{name}' in system.xml");
        return HostilePd(None);
    };
    // Its own prefix, so its lines are told from a guest's.
    let log = pd::Log::new("HOSTILE");
    match start(layout, log) {
        Ok(h) => {
            h.advance();
            HostilePd(Some(h))
        }
        Err(()) => HostilePd(None),
    }
}

pd::main!(init);
