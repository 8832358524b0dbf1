//! The memory server: the core behind the client rings and the balloon rings.
//!
//! [`Server`] takes events (a client's notification, the balloon's, the
//! timer's) and works through the rings; it returns a [`Wake`] saying whom to
//! notify and whether to arm the timer. It has no platform calls, so the PD
//! shell (`main.rs`) is a few lines and every rule here is tested on the host.
//!
//! Rules kept here:
//! - Peers are hostile. A malformed request gets an error response and
//!   changes nothing; a ring index moved illegally is counted and that
//!   client's ring is left alone until its next notification; the other
//!   clients are served as before.
//! - Flow control: a request is only taken off a client's ring when there is
//!   room for its response, and a balloon request only when there is room
//!   for the answer after the report batches still waiting to go out. A peer
//!   that does not consume its responses stalls only itself.
//! - Report batches are never dropped: a batch the `to_balloon` ring cannot
//!   take yet waits in `pending` (at most `MAX_IN_FLIGHT`, the core's own
//!   limit) and goes out when the balloon frees a slot.

use crate::{Actions, BatchId, Block, Error, MAX_IN_FLIGHT, MAX_ZONES, MemCore, Tunables, ZoneId};
use heapless::{Deque, Vec};
use memserver_api::{
    self as api, BATCH, ClientError, ClientRequest, ClientResponse, ClientStats, FromBalloon,
    MemStats, RefuseReason, Request, Response, SLOT_SIZE, ToBalloon, TunableKey, TunableRefusal,
};
use pd_ring::{Consumer, Misbehaviour, Producer, RingError};

mod control;
mod vmm;
pub use control::ControlPort;
pub use vmm::{NESTED_BATCH, VmmCounters, VmmPort};

/// Most clients one server has (one zone each).
pub const MAX_CLIENTS: usize = MAX_ZONES;

/// What the PD shell must do after an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake {
    /// Bit `i`: notify client `i` (its response ring has news, or it waits
    /// for room in its request ring).
    pub clients: u64,
    /// Notify the balloon.
    pub balloon: bool,
    /// Notify the VMM (its answer ring has news, or it waits for room).
    pub vmm: bool,
    /// Arm the one-shot timer for this many nanoseconds.
    pub arm_timer_ns: Option<u64>,
}

/// Counters: the server's metrics and the tests' oracles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests handled, well-formed or not.
    pub requests: u64,
    /// Error responses sent (bad requests, refused frees, no memory).
    pub errors: u64,
    /// Requests that did not decode.
    pub malformed: u64,
    /// Illegal ring index moves or slot lengths seen from clients.
    pub client_misbehaviour: u64,
    /// The same from the balloon.
    pub balloon_misbehaviour: u64,
    /// Report batches handed to the balloon ring.
    pub batches_sent: u64,
    /// Report completions with `ok`.
    pub completions_ok: u64,
    /// `SetTunable` requests taken, and refused.
    pub tunables_set: u64,
    pub tunables_refused: u64,
    /// Report completions that failed (device error or reset).
    pub completions_failed: u64,
    /// Balloon messages refused (unknown batch, bad deflate, malformed).
    pub balloon_refused: u64,
    /// Pages handed to the balloon (inflate) and returned (deflate).
    pub inflated_pages: u64,
    /// See `inflated_pages`.
    pub deflated_pages: u64,
    /// `Reclaim` requests sent: allocations failed while pages were
    /// ballooned.
    pub reclaims: u64,
    /// `DeviceReset`s taken (each failed the batches the balloon held).
    pub device_resets: u64,
}

/// A client: the zone it owns and its two rings.
#[derive(Debug)]
pub struct ClientPort<'a> {
    /// The zone of this client's RAM.
    pub zone: ZoneId,
    /// Requests, written by the client.
    pub req: Consumer<'a>,
    /// Responses, written by the server.
    pub resp: Producer<'a>,
}

/// The balloon driver's two rings.
#[derive(Debug)]
pub struct BalloonPort<'a> {
    /// Server -> balloon.
    pub to: Producer<'a>,
    /// Balloon -> server.
    pub from: Consumer<'a>,
}

/// The memory server.
#[derive(Debug)]
pub struct Server<'a, 'm> {
    core: MemCore<'m>,
    clients: Vec<ClientPort<'a>, MAX_CLIENTS>,
    balloon: BalloonPort<'a>,
    /// Batches the core sent that the balloon ring could not take yet.
    pending: Deque<BatchId, MAX_IN_FLIGHT>,
    counters: Counters,
    wake: Wake,
    /// A `Reclaim` is out and unanswered: don't ask again until the balloon
    /// deflates or changes course.
    reclaim_asked: bool,
    /// The tunables the PD was configured with (`None`: reporting off);
    /// the device's limits are applied over these.
    configured: Option<Tunables>,
    /// The latest `DeviceLimits` (blocks per report, 0: no REPORTING).
    device_cap: Option<u16>,
    /// `device_cap` is in force in the core (set_tunables is refused while
    /// a pass runs, so it may wait for the pass to end).
    limits_applied: bool,
    /// The PD could not arm the timer: the delay's expiry is run at the
    /// next event instead ([`Server::timer_unavailable`]).
    timer_overdue: bool,
    /// The VMM's rings and its VM's nested reports, in a system with a VM.
    vmm: Option<vmm::VmmLink<'a>>,
}

fn client_error(e: Error) -> ClientError {
    match e {
        Error::BadOrder => ClientError::InvalidOrder,
        Error::NoSuchZone | Error::OutOfZone => ClientError::WrongZone,
        Error::Misaligned => ClientError::Misaligned,
        Error::NoMemory => ClientError::NoMemory,
        Error::WrongOrder => ClientError::WrongOrder,
        // A client can only hold allocated blocks: a free, isolated or
        // ballooned block, or the middle of one, is not its to free.
        Error::NotBlockHead | Error::AlreadyFree | Error::Isolated | Error::Ballooned => {
            ClientError::NotAllocated
        }
        _ => ClientError::Malformed,
    }
}

impl<'a, 'm> Server<'a, 'm> {
    /// A server over `core` (its zones in the order of `clients`' zone ids)
    /// and the rings. `boot` are the actions [`MemCore::new`] returned (the
    /// boot-time report request); they come back in the first [`Wake`].
    pub fn new(
        core: MemCore<'m>,
        clients: impl IntoIterator<Item = ClientPort<'a>>,
        balloon: BalloonPort<'a>,
        boot: Actions,
    ) -> Result<Self, Error> {
        let core_tunables = core.tunables();
        let mut s = Server {
            core,
            clients: Vec::new(),
            balloon,
            pending: Deque::new(),
            counters: Counters::default(),
            wake: Wake::default(),
            reclaim_asked: false,
            configured: core_tunables,
            device_cap: None,
            limits_applied: true,
            timer_overdue: false,
            vmm: None,
        };
        for c in clients {
            s.core.zone_spec(c.zone)?;
            s.clients.push(c).map_err(|_| Error::TooManyZones)?;
        }
        // Ask both kinds of peer to signal when they produce.
        s.apply(&boot);
        // Peers may have produced before the server started: serve what is
        // there, which also asks each ring for a signal (with the re-check).
        s.serve_all();
        s.serve_balloon();
        Ok(s)
    }

    /// The core, to read statistics and check invariants.
    pub fn core(&self) -> &MemCore<'m> {
        &self.core
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Number of clients.
    pub fn nr_clients(&self) -> usize {
        self.clients.len()
    }

    /// Take the accumulated wake-ups (call after a round of events).
    pub fn take_wake(&mut self) -> Wake {
        core::mem::take(&mut self.wake)
    }

    /// The PD could not arm the timer for the last [`Wake::arm_timer_ns`]
    /// (the timer PD refused or is gone). Not fatal: reporting degrades to
    /// running the worker at the next event of any kind (a free, a
    /// completion, a balloon message) instead of after the delay, one pass
    /// per event, so allocation is never stalled by a broken timer and
    /// freed memory still goes back.
    pub fn timer_unavailable(&mut self) {
        self.timer_overdue = true;
    }

    /// Run a delay expiry the timer could not deliver.
    fn run_overdue(&mut self) {
        if core::mem::take(&mut self.timer_overdue) {
            self.timer_expired();
        }
    }

    /// Client `i` notified: serve its ring.
    pub fn client_notified(&mut self, i: usize) {
        self.run_overdue();
        if i < self.clients.len() {
            self.serve_client(i);
        }
    }

    /// Serve every client (e.g. after a notification whose sender is unknown).
    pub fn serve_all(&mut self) {
        self.run_overdue();
        for i in 0..self.clients.len() {
            self.serve_client(i);
        }
    }

    /// The balloon notified: completions, requests, and room for batches.
    pub fn balloon_notified(&mut self) {
        self.run_overdue();
        self.flush_pending();
        self.serve_balloon();
        self.flush_pending();
        self.apply_limits();
        self.pump_nested();
    }

    /// The reporting delay expired.
    pub fn timer_expired(&mut self) {
        self.timer_overdue = false;
        let acts = self.core.timer_expired();
        self.apply(&acts);
        self.apply_limits();
    }

    /// The device does not offer REPORTING (the balloon's latest
    /// `DeviceLimits` said 0), so reporting is stopped until a device
    /// restart brings limits that allow it.
    pub fn reporting_stopped_by_device(&self) -> bool {
        self.limits_applied && self.device_cap == Some(0) && self.configured.is_some()
    }

    /// The device's blocks per report, once the balloon said.
    pub fn device_report_capacity(&self) -> Option<u16> {
        self.device_cap
    }

    /// Put the device's limits into the policy (DESIGN §2: the device's
    /// queue size may lower the capacity; Linux's driver registers
    /// reporting only when the device offers it): the configured tunables
    /// with the capacity lowered to the device's, or reporting off for a
    /// device without REPORTING, which would fail every batch and be
    /// retried after every delay, forever. Waits for a running pass to end
    /// (the core refuses new tunables meanwhile).
    /// Also puts tunables set at run time into force, the same way
    /// (before the device's limits are known, as configured).
    fn apply_limits(&mut self) {
        let Some(conf) = self.configured else {
            return;
        };
        if self.limits_applied || self.core.pass_running() {
            return;
        }
        let want = match self.device_cap {
            None => Some(conf),
            Some(0) => None,
            Some(cap) => Some(Tunables {
                capacity: conf.capacity.min(cap),
                ..conf
            }),
        };
        if self.core.tunables() != want {
            match self.core.set_tunables(want) {
                Ok(acts) => self.apply(&acts),
                // Busy: tried again after the next event.
                Err(_) => return,
            }
        }
        self.limits_applied = true;
    }

    /// Set one reporting tunable while running (the control message
    /// [`FromBalloon::SetTunable`]): range-checked against the configured
    /// tunables; a refused value changes nothing. The device's limits
    /// still apply over it, and it is put into force once no pass runs,
    /// so the worker uses it from its next pass.
    pub fn set_tunable(&mut self, key: TunableKey, value: u64) -> Result<(), TunableRefusal> {
        let r = match self.configured {
            None => Err(TunableRefusal::ReportingOff),
            Some(mut t) => t
                .set(key, value)
                .map(|()| t)
                .map_err(|_| TunableRefusal::OutOfRange),
        };
        match r {
            Ok(t) => {
                self.counters.tunables_set += 1;
                self.configured = Some(t);
                self.limits_applied = false;
                self.apply_limits();
                Ok(())
            }
            Err(e) => {
                self.counters.tunables_refused += 1;
                Err(e)
            }
        }
    }

    /// The tunables the PD is configured with, run-time changes included
    /// (before the device's limits; `None`: reporting off).
    pub fn configured_tunables(&self) -> Option<Tunables> {
        self.configured
    }

    fn apply(&mut self, acts: &Actions) {
        if let Some(ns) = acts.arm_timer_ns() {
            self.wake.arm_timer_ns = Some(ns);
        }
        for &id in acts.batches() {
            // The core never has more than MAX_IN_FLIGHT batches out, and
            // each stays in `pending` at most until it is pushed.
            let pushed = self.pending.push_back(id);
            debug_assert!(pushed.is_ok(), "more batches pending than in flight");
        }
        self.flush_pending();
    }

    /// Push waiting batches while the balloon ring has room.
    fn flush_pending(&mut self) {
        while let Some(&id) = self.pending.front() {
            let Some(blocks) = self.core.batch(id) else {
                // Completed (or failed by a reset) before it went out.
                self.pending.pop_front();
                continue;
            };
            // Capacity is at most MAX_CAPACITY = BATCH (Tunables::validate):
            // a batch always fits one message, so the device sees every
            // block the completion will mark Reported.
            let Ok(v) = Vec::<Block, BATCH>::from_slice(blocks) else {
                unreachable!("a batch larger than BATCH: capacity is validated");
            };
            match self.send_balloon(&ToBalloon::Report {
                batch: id.0,
                blocks: v,
            }) {
                Ok(()) => {
                    self.pending.pop_front();
                    self.counters.batches_sent += 1;
                }
                Err(RingError::Full) => {
                    self.balloon.to.request_signal();
                    // Re-check: the balloon may have consumed meanwhile.
                    if matches!(self.balloon.to.free_slots(), Ok(n) if n > 0) {
                        self.balloon.to.cancel_signal();
                        continue;
                    }
                    return;
                }
                Err(_) => {
                    self.counters.balloon_misbehaviour += 1;
                    return;
                }
            }
        }
    }

    fn send_balloon(&mut self, msg: &ToBalloon) -> Result<(), RingError> {
        let mut buf = [0u8; SLOT_SIZE];
        // Every ToBalloon fits a slot (memserver-api tests the largest).
        let bytes = api::encode(msg, &mut buf).map_err(|_| RingError::TooLarge {
            len: SLOT_SIZE + 1,
            max: SLOT_SIZE,
        })?;
        self.balloon.to.push(bytes)?;
        if self.balloon.to.needs_notify() {
            self.wake.balloon = true;
        }
        Ok(())
    }

    fn serve_balloon(&mut self) {
        let mut buf = [0u8; SLOT_SIZE];
        loop {
            // Room for an answer after the batches that wait to go out.
            let room = match self.balloon.to.free_slots() {
                Ok(n) => n as usize,
                Err(_) => {
                    self.counters.balloon_misbehaviour += 1;
                    return;
                }
            };
            if room <= self.pending.len() {
                // Wait for the balloon to consume; re-check so a slot freed
                // meanwhile is not missed.
                self.balloon.to.request_signal();
                match self.balloon.to.free_slots() {
                    Ok(n) if n as usize > self.pending.len() => {
                        self.balloon.to.cancel_signal();
                        continue;
                    }
                    _ => return,
                }
            }
            match self.balloon.from.pop(&mut buf) {
                Ok(Some(n)) => {
                    let msg = api::decode::<FromBalloon>(&buf[..n]);
                    self.handle_balloon(msg);
                }
                Ok(None) => {
                    if self.balloon.from.needs_notify() {
                        self.wake.balloon = true;
                    }
                    self.balloon.from.request_signal();
                    match self.balloon.from.is_empty() {
                        Ok(false) => continue,
                        Ok(true) => return,
                        Err(_) => {
                            self.counters.balloon_misbehaviour += 1;
                            return;
                        }
                    }
                }
                Err(RingError::PeerMisbehaviour(m)) => {
                    self.counters.balloon_misbehaviour += 1;
                    if !matches!(m, Misbehaviour::BadLength { .. }) {
                        return;
                    }
                }
                Err(_) => {
                    self.counters.balloon_misbehaviour += 1;
                    return;
                }
            }
        }
    }

    fn refuse(&mut self, req: Option<u32>, reason: RefuseReason) {
        self.counters.balloon_refused += 1;
        // Room was checked before the request was taken.
        let _ = self.send_balloon(&ToBalloon::Refused { req, reason });
    }

    fn handle_balloon(&mut self, msg: Result<FromBalloon, api::DecodeError>) {
        match msg {
            Err(e) => self.refuse(None, e.into()),
            Ok(FromBalloon::ReportDone { batch, ok }) => {
                if self.nested_report_done(batch, ok) {
                    return;
                }
                let id = BatchId(batch);
                if self.pending.iter().any(|&p| p == id) {
                    // The balloon cannot complete what it was never sent.
                    return self.refuse(Some(batch), RefuseReason::UnknownId);
                }
                match self.core.report_completed(id, ok) {
                    Ok(acts) => {
                        if ok {
                            self.counters.completions_ok += 1;
                        } else {
                            self.counters.completions_failed += 1;
                        }
                        self.apply(&acts);
                    }
                    Err(_) => self.refuse(Some(batch), RefuseReason::UnknownId),
                }
            }
            Ok(FromBalloon::Inflate { req, pages }) => {
                self.reclaim_asked = false;
                self.inflate(req, u64::from(pages));
            }
            Ok(FromBalloon::Deflate { req, blocks }) => {
                self.reclaim_asked = false;
                self.deflate(req, &blocks, false);
            }
            Ok(FromBalloon::Released { req, blocks }) => self.deflate(req, &blocks, true),
            Ok(FromBalloon::StatsRequest) => {
                let s = self.mem_stats();
                let _ = self.send_balloon(&ToBalloon::Stats(s));
                self.vm_stats_request();
            }
            Ok(FromBalloon::DeviceLimits { report_capacity }) => {
                self.device_cap = Some(report_capacity);
                self.limits_applied = false;
                self.apply_limits();
                if report_capacity == 0 {
                    self.nested_fail_unsent();
                }
                self.pump_nested();
            }
            Ok(FromBalloon::SetTunable { key, value }) => {
                let refused = self.set_tunable(key, value).err();
                let _ = self.send_balloon(&ToBalloon::TunableSet {
                    key,
                    value,
                    refused,
                });
            }
            Ok(FromBalloon::DeviceReset) => {
                // The device forgot every request: the batches it held come
                // back unreported (retried later, as a failed report).
                //
                // Trust: the memserver cannot see the device, so it takes
                // the balloon's word that the device was reset *before* the
                // message (VIRTIO 1.2 §2.1: a reset device no longer
                // touches the rings), so the host can no longer discard
                // these blocks once they are allocated again. A balloon
                // that lied could make the host discard memory a guest
                // owns; that is the trust the system gives the only PD
                // that drives the device (it also carries every report).
                // What can be checked is: only batches handed to the
                // balloon are failed (those still waiting in `pending`
                // never reached it and go out later), each once, and a
                // reset with no such batch is refused and changes nothing.
                let mut ids: Vec<BatchId, MAX_IN_FLIGHT> = Vec::new();
                for id in self.core.in_flight() {
                    if !self.pending.iter().any(|&p| p == id) {
                        let _ = ids.push(id);
                    }
                }
                let nested = self.nested_device_reset();
                if ids.is_empty() && !nested {
                    return self.refuse(None, RefuseReason::UnknownId);
                }
                self.counters.device_resets += 1;
                for id in ids {
                    if let Ok(acts) = self.core.report_completed(id, false) {
                        self.counters.completions_failed += 1;
                        self.apply(&acts);
                    }
                }
            }
        }
    }

    /// Answer an inflate request with at most `BATCH` blocks, taken from the
    /// zones with the most free memory first. `last` says the memserver
    /// gives no more for this request; otherwise the balloon asks again for
    /// the rest. One message per request keeps the work per event bounded.
    fn inflate(&mut self, req: u32, pages: u64) {
        let mut out = [Block::default(); BATCH];
        let mut n = 0;
        let mut taken = 0u64;
        let mut zones: Vec<ZoneId, MAX_ZONES> = (0..self.core.nr_zones())
            .map(|z| ZoneId(z as u16))
            .collect();
        zones.sort_unstable_by_key(|&z| {
            core::cmp::Reverse(self.core.zone_stats(z).map_or(0, |s| s.free_pages))
        });
        for z in zones {
            if n == BATCH || taken >= pages {
                break;
            }
            if let Ok(k) = self.core.take_for_balloon(z, pages - taken, &mut out[n..]) {
                taken += out[n..n + k].iter().map(Block::pages).sum::<u64>();
                n += k;
            }
        }
        let mut blocks: Vec<Block, BATCH> = Vec::from_slice(&out[..n]).unwrap_or_default();
        if taken < pages && n < BATCH {
            // The native zones are short: the VM's balloon, if there is
            // one, gives what it holds and is asked for the rest.
            taken += self.vm_inflate(pages - taken, BATCH, &mut blocks);
            n = blocks.len();
        }
        if n == 0 && pages > 0 {
            return self.refuse(Some(req), RefuseReason::NoMemory);
        }
        self.counters.inflated_pages += taken;
        // `last` when satisfied, or when fewer than a full message could be
        // taken (nothing more is free above the watermark).
        let last = taken >= pages || n < BATCH;
        let _ = self.send_balloon(&ToBalloon::Inflated { req, blocks, last });
    }

    /// Deflate (`released`: the answer to a [`ToBalloon::Release`], not the
    /// host's deflate): all or nothing, so a bad entry changes nothing.
    fn deflate(&mut self, req: u32, blocks: &[api::Block], released: bool) {
        for (i, b) in blocks.iter().enumerate() {
            // The range must be an aligned part of one ballooned block (or
            // pages of a VM the outer balloon holds), and no two entries
            // may overlap.
            let inside = match self.core.block_of(b.pfn) {
                Some((c, crate::BlockState::Ballooned)) => {
                    b.pfn & (b.pages() - 1) == 0 && b.pfn + b.pages() <= c.pfn + c.pages()
                }
                _ => self.vm_can_return(b),
            };
            let ok = inside && blocks[..i].iter().all(|o| !overlaps(o, b));
            if !ok {
                return self.refuse(Some(req), RefuseReason::NotBallooned);
            }
        }
        let mut pages = self.vm_returned(blocks, released);
        let mut acts = Actions::default();
        for b in blocks {
            let Some(z) = self.core.zone_of(b.pfn) else {
                continue;
            };
            match self.core.return_from_balloon(z, *b) {
                Ok(a) => {
                    pages += b.pages();
                    acts.merge(&a);
                }
                // block_of said Ballooned; a range that straddles the
                // ballooned block is refused by the core and stays put.
                Err(_) => self.counters.balloon_refused += 1,
            }
        }
        self.counters.deflated_pages += pages;
        self.apply(&acts);
        let _ = self.send_balloon(&ToBalloon::Deflated {
            req,
            pages: u32::try_from(pages).unwrap_or(u32::MAX),
        });
    }

    /// Deflate on OOM: an allocation failed while pages are in the balloon,
    /// so ask the balloon to give some back (it does when the device
    /// negotiated DEFLATE_ON_OOM). The client got NoMemory and retries; at
    /// least 2 MiB is asked so a retry has a chance. At most one request is
    /// out at a time.
    ///
    /// Only the short zone's ballooned pages help its client (a zone is one
    /// client's RAM), so the request names the zone's frames, and nothing
    /// is asked when none of them is ballooned.
    fn ask_reclaim(&mut self, zone: ZoneId, order: u8) {
        let Ok(spec) = self.core.zone_spec(zone) else {
            return;
        };
        let ballooned = self.core.zone_stats(zone).map_or(0, |s| s.ballooned_pages);
        if self.reclaim_asked || ballooned == 0 {
            return;
        }
        let pages = (1u32 << order).max(512);
        let msg = ToBalloon::Reclaim {
            pages,
            first_pfn: spec.base_pfn,
            end_pfn: spec.base_pfn + u64::from(spec.pages),
        };
        if self.send_balloon(&msg).is_ok() {
            self.reclaim_asked = true;
            self.counters.reclaims += 1;
        }
    }

    /// The statistics the balloon publishes on the stats queue: the
    /// native zones', plus a VM's as its OS last gave them (its RAM, its
    /// free and available memory, its pages the outer balloon holds).
    pub fn mem_stats(&self) -> MemStats {
        let s = self.core.stats();
        let mut m = MemStats {
            total_pages: s.total_pages,
            free_pages: s.free_pages,
            // Free memory the guests can get without waiting for the host:
            // isolated blocks come back when their report completes.
            available_pages: s.free_pages + s.isolated_pages,
            reported_pages: s.reported_pages,
            isolated_pages: s.isolated_pages,
            ballooned_pages: s.ballooned_pages,
            reports_done: self.counters.completions_ok,
            reports_failed: self.counters.completions_failed,
        };
        if let Some(vm) = self.vm_balloon() {
            let st = vm.stats().unwrap_or_default();
            m.total_pages += st.total_pages.unwrap_or(vm.zone().pages);
            m.free_pages += st.free_pages.unwrap_or(0);
            m.available_pages += st.available_pages.or(st.free_pages).unwrap_or(0);
            m.ballooned_pages += vm.passed_pages();
        }
        m
    }

    fn serve_client(&mut self, i: usize) {
        let mut buf = [0u8; SLOT_SIZE];
        // Serve until the client's request ring is empty or its response
        // ring is full; both end in a signal request plus a re-check, so the
        // client's next push or pop wakes the server and nothing stalls.
        // (A budget that stopped earlier would leave requests that no
        // notification ever comes back for.) The response ring bounds the
        // work per event: a client that does not read its responses gets at
        // most one ring's worth, and on one core the server outranks the
        // guests, so they cannot drain it meanwhile.
        loop {
            let c = &mut self.clients[i];
            match c.resp.free_slots() {
                Ok(0) => {
                    // Wait for the client to consume responses.
                    c.resp.request_signal();
                    if !matches!(c.resp.free_slots(), Ok(n) if n > 0) {
                        break;
                    }
                    c.resp.cancel_signal();
                }
                Ok(_) => {}
                Err(_) => {
                    self.counters.client_misbehaviour += 1;
                    break;
                }
            }
            let c = &mut self.clients[i];
            match c.req.pop(&mut buf) {
                Ok(Some(n)) => {
                    let resp = self.handle_request(i, &buf[..n]);
                    self.respond(i, &resp);
                }
                Ok(None) => {
                    c.req.request_signal();
                    match c.req.is_empty() {
                        Ok(false) => continue,
                        Ok(true) => break,
                        Err(_) => {
                            self.counters.client_misbehaviour += 1;
                            break;
                        }
                    }
                }
                Err(RingError::PeerMisbehaviour(m)) => {
                    self.counters.client_misbehaviour += 1;
                    if let Misbehaviour::BadLength { .. } = m {
                        // The slot was consumed: answer it as malformed.
                        self.counters.requests += 1;
                        self.counters.malformed += 1;
                        let r = Response {
                            tag: None,
                            body: ClientResponse::Error(ClientError::Malformed),
                        };
                        self.respond(i, &r);
                    } else {
                        break;
                    }
                }
                Err(_) => {
                    self.counters.client_misbehaviour += 1;
                    break;
                }
            }
        }
        let c = &mut self.clients[i];
        if c.req.needs_notify() {
            self.wake.clients |= 1 << i;
        }
    }

    fn respond(&mut self, i: usize, r: &Response) {
        if matches!(
            r.body,
            ClientResponse::Error(_) | ClientResponse::BatchFailed { .. }
        ) {
            self.counters.errors += 1;
        }
        let mut buf = [0u8; SLOT_SIZE];
        let c = &mut self.clients[i];
        // Every Response fits a slot, and room was checked before the request
        // was taken off the ring.
        if let Ok(bytes) = api::encode(r, &mut buf)
            && c.resp.push(bytes).is_err()
        {
            self.counters.client_misbehaviour += 1;
        }
        if c.resp.needs_notify() {
            self.wake.clients |= 1 << i;
        }
    }

    fn handle_request(&mut self, i: usize, bytes: &[u8]) -> Response {
        self.counters.requests += 1;
        let zone = self.clients[i].zone;
        let Request { tag, body } = match api::decode_request(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.counters.malformed += 1;
                return Response {
                    tag: None,
                    body: ClientResponse::Error(e.into()),
                };
            }
        };
        let body = match body {
            ClientRequest::Alloc { order } => match self.core.alloc(zone, order) {
                Ok(pfn) => ClientResponse::Allocated(api::Block { pfn, order }),
                Err(Error::NoMemory) => {
                    self.ask_reclaim(zone, order);
                    ClientResponse::Error(ClientError::NoMemory)
                }
                Err(e) => ClientResponse::Error(client_error(e)),
            },
            ClientRequest::Free(b) => match self.core.free(zone, b.pfn, b.order) {
                Ok(acts) => {
                    self.apply(&acts);
                    ClientResponse::Freed { count: 1 }
                }
                Err(e) => ClientResponse::Error(client_error(e)),
            },
            ClientRequest::FreeBatch(blocks) => {
                // Each block is freed or refused on its own; a refused one
                // changes nothing.
                let (mut freed, mut failed, mut first) = (0u16, 0u16, None);
                for (k, b) in blocks.iter().enumerate() {
                    match self.core.free(zone, b.pfn, b.order) {
                        Ok(acts) => {
                            freed += 1;
                            self.apply(&acts);
                        }
                        Err(e) => {
                            failed += 1;
                            first.get_or_insert((k as u16, client_error(e)));
                        }
                    }
                }
                match first {
                    None => ClientResponse::Freed { count: freed },
                    Some((first, error)) => ClientResponse::BatchFailed {
                        freed,
                        failed,
                        first,
                        error,
                    },
                }
            }
            ClientRequest::Stats => {
                let s = self.core.zone_stats(zone).unwrap_or_default();
                ClientResponse::Stats(ClientStats {
                    total_pages: s.total_pages,
                    allocated_pages: s.allocated_pages,
                    free_pages: s.free_pages,
                    reported_pages: s.reported_pages,
                    busy_pages: s.isolated_pages + s.ballooned_pages,
                    errors: self.counters.errors,
                })
            }
        };
        Response {
            tag: Some(tag),
            body,
        }
    }
}

fn overlaps(a: &api::Block, b: &api::Block) -> bool {
    let (a0, a1) = (a.pfn, a.pfn.saturating_add(a.pages()));
    let (b0, b1) = (b.pfn, b.pfn.saturating_add(b.pages()));
    a0 < b1 && b0 < a1
}
