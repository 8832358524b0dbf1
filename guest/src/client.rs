//! The client library: requests to the memory server over the `req` ring,
//! responses from the `resp` ring, one notification channel.
//!
//! # Protocol
//!
//! - Every request carries a tag; the response echoes it. The client keeps
//!   at most [`MemClient::window`] requests in flight (half the request
//!   ring, never more than the response ring holds), so the server always
//!   has room for the answers and never has to refuse with `Overloaded`.
//! - Signalling (pd-ring's protocol, sDDF style): after publishing a
//!   request the client notifies the memserver only if the memserver asked
//!   (its `consumer_signal` flag); after taking a response it notifies if the
//!   memserver found the response ring full. Before waiting, the client asks
//!   for a signal and re-checks ([`MemClient::prepare_wait`]).
//! - The memserver is a server and the guest can't block inside its
//!   handler: [`MemClient::send`] and [`MemClient::poll`] never wait.
//!
//! A response that does not decode, that answers no request in flight, or a
//! ring index the memserver moved illegally is an error ([`MemError`]); the
//! client stays usable.

use core::fmt;
use heapless::Vec;
use memserver_api::{
    BATCH, Block, ClientRequest, DecodeError, EncodeError, Request, Response, SLOT_SIZE,
};
use pd_ring::{Consumer, GeometryError, Producer, RingError};

/// Most requests in flight, whatever the rings hold.
pub const MAX_IN_FLIGHT: usize = 64;

/// Something that can signal the memory server: its channel in a PD, a
/// counter in tests.
pub trait Notify {
    /// Signal the server.
    fn notify(&self);
}

impl Notify for pd::Channel {
    fn notify(&self) {
        pd::Channel::notify(*self)
    }
}

/// Client errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemError {
    /// No room now: the window of requests in flight or the request ring is
    /// full. Wait for responses and retry.
    WouldBlock,
    /// The request could not be encoded (a value out of range).
    Encode(EncodeError),
    /// The memserver broke the ring protocol (see `pd_ring::Misbehaviour`).
    Ring(RingError),
    /// A response did not decode.
    Decode(DecodeError),
    /// A response whose tag is not in flight (or is missing).
    UnexpectedTag(Option<u32>),
    /// A ring region cannot hold a ring of our slot size.
    Geometry(GeometryError),
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::WouldBlock => write!(f, "no room for another request now"),
            MemError::Encode(e) => write!(f, "request not encodable: {e}"),
            MemError::Ring(e) => write!(f, "ring: {e}"),
            MemError::Decode(e) => write!(f, "response not decodable: {e}"),
            MemError::UnexpectedTag(Some(t)) => {
                write!(f, "response with tag {t}, which is not in flight")
            }
            MemError::UnexpectedTag(None) => write!(
                f,
                "untagged error response: the server could not read a request"
            ),
            MemError::Geometry(e) => write!(f, "ring region: {e}"),
        }
    }
}

/// Counters (test oracles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCounters {
    pub sent: u64,
    pub received: u64,
    /// Notifications sent to the server.
    pub notifies: u64,
    /// Responses refused (decode errors, unexpected tags, bad ring state).
    pub bad_responses: u64,
}

/// A memserver client over one request and one response ring. `T` is the
/// caller's context for each request in flight, given back with its response.
#[derive(Debug)]
pub struct MemClient<'a, N, T: Copy = ()> {
    req: Producer<'a>,
    resp: Consumer<'a>,
    server: N,
    next_tag: u32,
    /// `(tag, context)` of the request in flight whose tag is `i` modulo
    /// MAX_IN_FLIGHT: tags are sequential and at most `window` are in flight,
    /// so a slot is reused only once its request is answered.
    in_flight: [Option<(u32, T)>; MAX_IN_FLIGHT],
    count: usize,
    window: usize,
    waiting_for_space: bool,
    counters: ClientCounters,
}

impl<'a, N: Notify, T: Copy> MemClient<'a, N, T> {
    /// A client over handles the caller built (slot payload: `SLOT_SIZE`).
    pub fn new(req: Producer<'a>, resp: Consumer<'a>, server: N) -> Self {
        // Half the request ring: a server that serves at most a ring's
        // worth of requests per event (a fairness budget, as the memserver
        // does) then always drains our window within one event and re-arms
        // its signal, instead of stopping on its budget with requests left
        // and no signal requested (which would stall us: we notify only when
        // asked).
        let window = MAX_IN_FLIGHT
            .min((req.capacity() as usize / 2).max(1))
            .min(resp.capacity() as usize);
        MemClient {
            req,
            resp,
            server,
            next_tag: 0,
            in_flight: [None; MAX_IN_FLIGHT],
            count: 0,
            window,
            waiting_for_space: false,
            counters: ClientCounters::default(),
        }
    }

    /// A client over the guest's `req` and `resp` regions.
    ///
    /// # Safety
    /// Each region must be valid for reads and writes of its length for
    /// `'a`, shared only with the memserver, and accessed by nobody else in
    /// this PD (pd-ring's `from_raw` contract).
    pub unsafe fn from_regions(
        req: (*mut u8, usize),
        resp: (*mut u8, usize),
        server: N,
    ) -> Result<Self, MemError> {
        // SAFETY: forwarded from this function's contract.
        let p =
            unsafe { Producer::from_raw(req.0, req.1, SLOT_SIZE) }.map_err(MemError::Geometry)?;
        // SAFETY: as above.
        let c =
            unsafe { Consumer::from_raw(resp.0, resp.1, SLOT_SIZE) }.map_err(MemError::Geometry)?;
        Ok(Self::new(p, c, server))
    }

    /// Requests that may be in flight at once.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.count
    }

    /// Whether [`MemClient::send`] has room (the ring may still be full if
    /// the server is slow to consume).
    pub fn can_send(&self) -> bool {
        self.count < self.window && self.in_flight[self.slot(self.next_tag)].is_none()
    }

    /// The counters.
    pub fn counters(&self) -> ClientCounters {
        self.counters
    }

    fn slot(&self, tag: u32) -> usize {
        tag as usize % MAX_IN_FLIGHT
    }

    /// Publish a request; returns its tag. Never waits: `WouldBlock` when the
    /// window or the ring is full (then the server is asked to signal when it
    /// consumes).
    pub fn send(&mut self, body: ClientRequest, ctx: T) -> Result<u32, MemError> {
        if !self.can_send() {
            return Err(MemError::WouldBlock);
        }
        let tag = self.next_tag;
        let mut buf = [0u8; SLOT_SIZE];
        let bytes =
            memserver_api::encode(&Request { tag, body }, &mut buf).map_err(MemError::Encode)?;
        match self.req.push(bytes) {
            Ok(()) => {}
            Err(RingError::Full) => {
                // Only a server that stopped consuming gets here (the window
                // is at most the ring's capacity): ask to be told when it
                // consumes, and re-check so the signal is not missed.
                self.req.request_signal();
                self.waiting_for_space = true;
                return Err(MemError::WouldBlock);
            }
            Err(e) => return Err(MemError::Ring(e)),
        }
        let slot = self.slot(tag);
        self.in_flight[slot] = Some((tag, ctx));
        self.count += 1;
        self.next_tag = tag.wrapping_add(1);
        self.counters.sent += 1;
        // The first request always notifies: a server that started after
        // us may have armed its signal flag without re-checking the ring
        // (a lost wake-up at boot); a spare notification costs nothing.
        if self.req.needs_notify() || self.counters.sent == 1 {
            self.notify();
        }
        Ok(tag)
    }

    fn notify(&mut self) {
        self.counters.notifies += 1;
        self.server.notify();
    }

    /// Take the next response, with the context its request was sent with.
    /// `Ok(None)`: nothing there now.
    pub fn poll(&mut self) -> Result<Option<(Response, T)>, MemError> {
        let mut buf = [0u8; SLOT_SIZE];
        let popped = self.resp.pop(&mut buf);
        // Whatever was taken frees a slot: tell a server that waits for one.
        if self.resp.needs_notify() {
            self.notify();
        }
        let n = match popped {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.counters.bad_responses += 1;
                return Err(MemError::Ring(e));
            }
        };
        let resp = memserver_api::decode_response(&buf[..n]).map_err(|e| {
            self.counters.bad_responses += 1;
            MemError::Decode(e)
        })?;
        if let Some(tag) = resp.tag {
            let slot = self.slot(tag);
            if let Some((t, ctx)) = self.in_flight[slot]
                && t == tag
            {
                self.in_flight[slot] = None;
                self.count -= 1;
                self.counters.received += 1;
                return Ok(Some((resp, ctx)));
            }
        }
        self.counters.bad_responses += 1;
        Err(MemError::UnexpectedTag(resp.tag))
    }

    /// Call before waiting for a notification: asks the server to signal
    /// (a response, or ring space when a send found it full) and re-checks.
    /// `Ok(true)`: safe to wait. `Ok(false)`: something is already there;
    /// poll again instead of waiting.
    pub fn prepare_wait(&mut self) -> Result<bool, MemError> {
        self.resp.request_signal();
        if !self.resp.is_empty().map_err(MemError::Ring)? {
            return Ok(false);
        }
        if self.waiting_for_space {
            self.req.request_signal();
            if self.req.free_slots().map_err(MemError::Ring)? > 0 {
                self.waiting_for_space = false;
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Frees collected into `FreeBatch` requests of up to `BATCH` blocks (one
/// ring slot, one response for up to 32 blocks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreeBatch {
    blocks: Vec<Block, BATCH>,
}

impl FreeBatch {
    /// An empty batch.
    pub const fn new() -> Self {
        FreeBatch { blocks: Vec::new() }
    }

    /// Add a block; gives it back when the batch is full.
    pub fn push(&mut self, b: Block) -> Result<(), Block> {
        self.blocks.push(b)
    }

    /// Blocks in the batch.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Whether another block would not fit.
    pub fn is_full(&self) -> bool {
        self.blocks.is_full()
    }

    /// Pages in the batch.
    pub fn pages(&self) -> u64 {
        self.blocks.iter().map(Block::pages).sum()
    }

    /// The blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The request freeing the batch, leaving it empty (`None` if empty).
    pub fn take(&mut self) -> Option<ClientRequest> {
        if self.blocks.is_empty() {
            return None;
        }
        Some(ClientRequest::FreeBatch(core::mem::take(&mut self.blocks)))
    }
}

#[cfg(test)]
mod tests;
