//! The guest workload: a state machine advanced by notifications.
//!
//! A guest PD cannot block in its handler, so every event (a response from
//! the memserver, the timer's notification) calls [`Workload::advance`],
//! which does all it can without waiting and says what to wait for next.
//! The run is a short program of operations per [`Pattern`]:
//!
//! - bulk: live set, allocate (4 MiB, else 2 MiB blocks), hold, free all,
//!   hold, verify the live set.
//! - fragmented: live set, allocate (orders 0..=3), hold, free every other
//!   block, hold, free the rest, hold, verify.
//! - churn: live set, `rounds` x (allocate mixed orders, free all), hold,
//!   verify.
//! - trace: live set, follow a recorded memory curve ([`trace_text`]), free
//!   all, hold, verify.
//!
//! Every page the guest owns holds [`crate::ram::pattern`]; blocks are
//! verified before they are freed, and the live set at the end, so a page
//! the host discarded while the guest owned it is logged as an `ERROR`.
//! Each phase ends with a machine-parsable line (`phase=... t_ns=...`, see
//! [`Workload::advance`]) for `tools demo`'s timeline.
//!
//! Server errors: `NoMemory` (and `Busy`/`Overloaded`) back off with a timer
//! (10 ms doubling to 1 s) and retry; after [`MAX_RETRIES`] consecutive
//! failures an allocation phase continues with what it got (a `WARN`).
//! Other refusals are logged as errors and counted; a response that breaks
//! the protocol (undecodable, unknown tag, ring misbehaviour) stops the run
//! (`phase=failed`).

use crate::client::{FreeBatch, MemClient, MemError, Notify};
use crate::owned::{OwnedPages, Set};
use crate::params::{Curve, Params, Pattern};
use crate::ram::RamWindow;
use crate::{MIB, PAGE_SIZE, PAGES_PER_MIB};
use core::fmt;
use memserver_api::{Block, ClientError, ClientRequest, ClientResponse, MAX_ORDER, Response};

/// Consecutive failed allocations before a phase continues without.
pub const MAX_RETRIES: u32 = 8;
/// First back-off after `NoMemory`.
pub const BACKOFF_MIN_NS: u64 = 10_000_000;
/// Longest back-off.
pub const BACKOFF_MAX_NS: u64 = 1_000_000_000;
/// Data-mismatch errors logged one by one; later ones are only counted.
const MAX_MISMATCH_LOGS: u64 = 8;

/// The memory curves the `trace` pattern follows: `t_ms,rss_kib` rows,
/// recorded from a real `cargo build` and a real C++ build, by g++ and by
/// clang++ (how: `guest/traces/README.md`).
pub const TRACE_CARGO_BUILD: &str = include_str!("../traces/cargo-build-regex.csv");
pub const TRACE_CPPCHECK_BUILD: &str = include_str!("../traces/cppcheck-build.csv");
pub const TRACE_CPPCHECK_CLANG_BUILD: &str = include_str!("../traces/cppcheck-clang-build.csv");

/// The rows of `curve`.
pub fn trace_text(curve: Curve) -> &'static str {
    match curve {
        Curve::CargoBuild => TRACE_CARGO_BUILD,
        Curve::CppcheckBuild => TRACE_CPPCHECK_BUILD,
        Curve::CppcheckClangBuild => TRACE_CPPCHECK_CLANG_BUILD,
    }
}

/// The `(t_ms, rss_kib)` points of `curve` (header and malformed rows
/// skipped).
fn trace_points(curve: Curve) -> impl Iterator<Item = (u64, u64)> {
    trace_text(curve).lines().filter_map(|l| {
        let (t, kib) = l.split_once(',')?;
        Some((t.trim().parse().ok()?, kib.trim().parse().ok()?))
    })
}

/// The curve's time-weighted mean over its peak (0..=1): a replay scaled
/// to `mib` holds, on average, this fraction of `mib` (besides its live
/// set), which is the least host memory any reporting policy can leave it
/// with (every freed page given back the moment it is freed).
pub fn trace_mean_of_peak(curve: Curve) -> f64 {
    let (mut area, mut peak, mut first, mut prev) = (0u128, 0u64, None, None::<(u64, u64)>);
    for (t, kib) in trace_points(curve) {
        if let Some((t0, k0)) = prev {
            area += u128::from(k0) * u128::from(t.saturating_sub(t0));
        }
        first.get_or_insert(t);
        peak = peak.max(kib);
        prev = Some((t, kib));
    }
    let span = prev
        .zip(first)
        .map_or(0, |((t, _), t0)| t.saturating_sub(t0));
    if span == 0 || peak == 0 {
        return 0.0;
    }
    area as f64 / span as f64 / peak as f64
}

/// A trace step smaller than this is not worth a request.
const TRACE_SLACK_PAGES: u64 = PAGES_PER_MIB;

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// What the workload needs from its PD: the time and a log.
pub trait Host {
    /// Now in ns (the timer's `GET_TIME`).
    fn now_ns(&mut self) -> u64;
    /// One log line (without prefix or newline).
    fn log(&mut self, level: Level, args: fmt::Arguments<'_>);
}

/// What each request in flight was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctx {
    Alloc {
        order: u8,
        set: Set,
    },
    /// Frees of the blocks marked freeing in page indices `from..to`.
    Free {
        from: u32,
        to: u32,
        pages: u32,
        count: u16,
    },
}

/// The client type the workload drives.
pub type Client<'a, N> = MemClient<'a, N, Ctx>;

/// What to wait for before calling [`Workload::advance`] again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for a notification: from the memserver when `memserver` (a
    /// signal was requested), and arm the timer for `timer_ns` if given.
    Wait {
        memserver: bool,
        timer_ns: Option<u64>,
    },
    /// The run is over (done or failed); nothing more will happen.
    Finished,
}

/// Counters: what happened (test oracles, and the `phase=done` line).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub allocs: u64,
    pub alloc_pages: u64,
    pub freed_blocks: u64,
    pub freed_pages: u64,
    pub no_memory: u64,
    /// Refusals and misbehaviour of the server (other than `NoMemory`).
    pub server_errors: u64,
    /// Blocks the server handed out that were not ours to take.
    pub bad_blocks: u64,
    /// Pages whose data was wrong when verified.
    pub mismatched_pages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// 4 MiB blocks, 2 MiB once those run out.
    Big,
    /// Orders 0..=3.
    Small,
    /// Orders 0..=3, 9 and 10.
    Mixed,
}

const SMALL: [u8; 4] = [0, 1, 2, 3];
const MIXED: [u8; 6] = [0, 9, 3, 10, 1, 2];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    AllocLive,
    Alloc(Plan),
    /// Free the blocks of the sets in the mask (bit = `Set as u8`).
    Free {
        sets: u8,
        name: &'static str,
    },
    Hold,
    /// Follow the recorded curve ([`trace_text`]).
    Trace,
    /// Repeat from op `back_to` until `rounds` rounds are done.
    Repeat {
        back_to: usize,
    },
    VerifyLive,
    Done,
}

const MAX_OPS: usize = 10;

fn program(p: Pattern) -> ([Op; MAX_OPS], usize) {
    let ab = (1 << Set::A as u8) | (1 << Set::B as u8);
    let list: &[Op] = match p {
        Pattern::Bulk => &[
            Op::AllocLive,
            Op::Alloc(Plan::Big),
            Op::Hold,
            Op::Free {
                sets: ab,
                name: "freed",
            },
            Op::Hold,
            Op::VerifyLive,
            Op::Done,
        ],
        Pattern::Fragmented => &[
            Op::AllocLive,
            Op::Alloc(Plan::Small),
            Op::Hold,
            Op::Free {
                sets: 1 << Set::A as u8,
                name: "freed_half",
            },
            Op::Hold,
            Op::Free {
                sets: 1 << Set::B as u8,
                name: "freed",
            },
            Op::Hold,
            Op::VerifyLive,
            Op::Done,
        ],
        Pattern::Churn => &[
            Op::AllocLive,
            Op::Alloc(Plan::Mixed),
            Op::Free {
                sets: ab,
                name: "freed",
            },
            Op::Repeat { back_to: 1 },
            Op::Hold,
            Op::VerifyLive,
            Op::Done,
        ],
        Pattern::Trace => &[
            Op::AllocLive,
            Op::Trace,
            Op::Free {
                sets: ab,
                name: "freed",
            },
            Op::Hold,
            Op::VerifyLive,
            Op::Done,
        ],
    };
    let mut ops = [Op::Done; MAX_OPS];
    ops[..list.len()].copy_from_slice(list);
    (ops, list.len())
}

/// State of the current operation (reset when it starts).
#[derive(Debug, Clone, Copy, Default)]
struct OpState {
    started: bool,
    target_pages: u64,
    got_pages: u64,
    requested_pages: u64,
    blocks: u64,
    next_order: usize,
    fallback: bool,
    backoff_until: Option<u64>,
    backoff_ns: u64,
    retries: u32,
    gave_up: bool,
    cursor: usize,
    frees_in_flight: u32,
    retry_sweep: bool,
    freed_pages: u64,
    hold_until: u64,
    /// Free: stop once this many pages were sent (trace steps).
    free_budget: Option<u64>,
    free_sent: u64,
    trace: TraceState,
}

/// Where a trace replay is.
#[derive(Debug, Clone, Copy, Default)]
struct TraceState {
    /// Next point of [`TRACE`].
    step: usize,
    /// Timer time the replay started.
    t0: u64,
    /// The curve's peak, KiB (scaled to `mib`).
    peak_kib: u64,
    /// Allocating (`Some(true)`) or freeing (`Some(false)`) towards the
    /// current point; `None` between points.
    moving: Option<bool>,
    /// Longest a point was reached after its (scaled) time, ns.
    late_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Finished,
}

/// The workload.
#[derive(Debug)]
pub struct Workload<'s> {
    params: Params,
    owned: OwnedPages<'s>,
    ops: [Op; MAX_OPS],
    n_ops: usize,
    pc: usize,
    round: u32,
    st: OpState,
    state: RunState,
    failed: bool,
    live_ok: Option<bool>,
    counters: Counters,
}

fn mib(pages: u64) -> u64 {
    pages / PAGES_PER_MIB
}

impl<'s> Workload<'s> {
    /// A workload for RAM of `ram_pages` pages; `storage` holds one byte per
    /// page (see [`OwnedPages`]) and must have at least `ram_pages` bytes.
    pub fn new(params: Params, storage: &'s mut [u8], ram_pages: u64) -> Self {
        let (ops, n_ops) = program(params.pattern);
        Workload {
            params,
            owned: OwnedPages::new(storage, usize::try_from(ram_pages).unwrap_or(usize::MAX)),
            ops,
            n_ops,
            pc: 0,
            round: 0,
            st: OpState::default(),
            state: RunState::Running,
            failed: false,
            live_ok: None,
            counters: Counters::default(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether the run is over.
    pub fn is_finished(&self) -> bool {
        self.state == RunState::Finished
    }

    /// Whether the run stopped on a protocol error.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The live set's verdict, once verified.
    pub fn live_ok(&self) -> Option<bool> {
        self.live_ok
    }

    /// Pages the guest owns now in `set`.
    pub fn owned_pages(&self, set: Set) -> u64 {
        self.owned.pages_in(set)
    }

    /// Do everything possible now; then ask the memserver for a signal if
    /// waiting on it (re-checking, so no response is missed) and say what to
    /// wait for.
    ///
    /// Log lines (INFO unless said): `phase=start ...`, `phase=live_touched
    /// live_mib=N blocks=N`, `phase=touched mib=N blocks=N`, `phase=held
    /// ms=N`, `phase=freed_half|freed mib=N blocks=N`, `phase=round n=N
    /// of=N`, `phase=verified ok|failed live_mib=N bad_pages=N`, `phase=done
    /// allocs=N freed_mib=N errors=N`, `phase=failed reason=...` (ERROR);
    /// each ends with `t_ns=<timer time>`.
    pub fn advance<N: Notify>(
        &mut self,
        client: &mut Client<'_, N>,
        ram: &RamWindow,
        host: &mut impl Host,
    ) -> Next {
        // Bounded: each round either consumed a response or found none.
        loop {
            let next = self.step(client, ram, host);
            let Next::Wait {
                memserver: true, ..
            } = next
            else {
                return next;
            };
            match client.prepare_wait() {
                Ok(true) => return next,
                Ok(false) => continue,
                Err(e) => return self.fail(host, e),
            }
        }
    }

    fn fail(&mut self, host: &mut impl Host, e: MemError) -> Next {
        self.failed = true;
        self.state = RunState::Finished;
        let t = host.now_ns();
        host.log(
            Level::Error,
            format_args!("phase=failed reason=\"{e}\" t_ns={t}"),
        );
        Next::Finished
    }

    fn step<N: Notify>(
        &mut self,
        client: &mut Client<'_, N>,
        ram: &RamWindow,
        host: &mut impl Host,
    ) -> Next {
        if self.state == RunState::Finished {
            return Next::Finished;
        }
        loop {
            match client.poll() {
                Ok(Some((resp, ctx))) => self.on_response(resp, ctx, ram, host),
                Ok(None) => break,
                Err(e) => return self.fail(host, e),
            }
        }
        loop {
            if self.pc >= self.n_ops {
                self.state = RunState::Finished;
                return Next::Finished;
            }
            let op = self.ops[self.pc];
            if !self.st.started {
                self.st = OpState {
                    started: true,
                    ..OpState::default()
                };
                self.start(op, host);
            }
            let wait = match op {
                Op::AllocLive => self.run_alloc(client, host, None, Set::Live),
                Op::Alloc(plan) => self.run_alloc(client, host, Some(plan), Set::A),
                Op::Free { sets, .. } => self.run_free(client, ram, host, sets),
                Op::Trace => self.run_trace(client, ram, host),
                Op::Hold => {
                    let now = host.now_ns();
                    if now >= self.st.hold_until {
                        Ok(())
                    } else {
                        Err(Next::Wait {
                            memserver: false,
                            timer_ns: Some(self.st.hold_until - now),
                        })
                    }
                }
                Op::Repeat { .. } | Op::VerifyLive | Op::Done => Ok(()),
            };
            match wait {
                Err(Next::Finished) => return Next::Finished,
                Err(next) => return next,
                Ok(()) => self.finish(op, ram, host),
            }
            if self.state == RunState::Finished {
                return Next::Finished;
            }
        }
    }

    fn start(&mut self, op: Op, host: &mut impl Host) {
        match op {
            Op::AllocLive => {
                self.st.target_pages = self.params.live_mib * PAGES_PER_MIB;
                if self.pc == 0 {
                    let t = host.now_ns();
                    host.log(
                        Level::Info,
                        format_args!(
                            "phase=start {} ram_mib={} t_ns={t}",
                            self.params,
                            self.owned.pages() as u64 * PAGE_SIZE / MIB
                        ),
                    );
                }
            }
            Op::Alloc(_) => self.st.target_pages = self.params.mib * PAGES_PER_MIB,
            Op::Hold => {
                self.st.hold_until = host
                    .now_ns()
                    .saturating_add(self.params.hold_ms * 1_000_000)
            }
            Op::Trace => {
                let t0 = host.now_ns();
                let (n, peak) = trace_points(self.params.curve)
                    .fold((0, 0), |(n, p), (_, k)| (n + 1, p.max(k)));
                self.st.trace = TraceState {
                    t0,
                    peak_kib: peak.max(1),
                    ..TraceState::default()
                };
                host.log(
                    Level::Info,
                    format_args!(
                        "phase=trace_start points={n} peak_mib={} speed={} t_ns={t0}",
                        self.params.mib, self.params.speed
                    ),
                );
            }
            _ => {}
        }
    }

    fn finish(&mut self, op: Op, ram: &RamWindow, host: &mut impl Host) {
        let t = host.now_ns();
        let st = self.st;
        let mut next_pc = self.pc + 1;
        match op {
            Op::AllocLive => host.log(
                Level::Info,
                format_args!(
                    "phase=live_touched live_mib={} blocks={} t_ns={t}",
                    mib(st.got_pages),
                    st.blocks
                ),
            ),
            Op::Alloc(_) => host.log(
                Level::Info,
                format_args!(
                    "phase=touched mib={} blocks={} t_ns={t}",
                    mib(st.got_pages),
                    st.blocks
                ),
            ),
            Op::Free { name, .. } => host.log(
                Level::Info,
                format_args!(
                    "phase={name} mib={} blocks={} t_ns={t}",
                    mib(st.freed_pages),
                    st.blocks
                ),
            ),
            Op::Hold => host.log(
                Level::Info,
                format_args!("phase=held ms={} t_ns={t}", self.params.hold_ms),
            ),
            Op::Trace => host.log(
                Level::Info,
                format_args!(
                    "phase=traced steps={} late_ms={} t_ns={t}",
                    st.trace.step,
                    st.trace.late_ns / 1_000_000
                ),
            ),
            Op::Repeat { back_to } => {
                self.round += 1;
                host.log(
                    Level::Info,
                    format_args!(
                        "phase=round n={} of={} t_ns={t}",
                        self.round, self.params.rounds
                    ),
                );
                if self.round < self.params.rounds {
                    next_pc = back_to;
                }
            }
            Op::VerifyLive => {
                let bad = self.verify_set(ram, host, Set::Live);
                self.live_ok = Some(bad == 0);
                let live_mib = mib(self.owned.pages_in(Set::Live));
                let t = host.now_ns();
                if bad == 0 {
                    host.log(
                        Level::Info,
                        format_args!("phase=verified ok live_mib={live_mib} bad_pages=0 t_ns={t}"),
                    );
                } else {
                    host.log(
                        Level::Error,
                        format_args!(
                            "phase=verified failed live_mib={live_mib} bad_pages={bad} t_ns={t}"
                        ),
                    );
                }
            }
            Op::Done => {
                let c = self.counters;
                host.log(
                    Level::Info,
                    format_args!(
                        "phase=done allocs={} freed_mib={} no_memory={} errors={} t_ns={t}",
                        c.allocs,
                        mib(c.freed_pages),
                        c.no_memory,
                        c.server_errors + c.bad_blocks + c.mismatched_pages
                    ),
                );
                self.state = RunState::Finished;
            }
        }
        self.pc = next_pc;
        self.st.started = false;
    }

    /// Verify every block of `set`; pages with wrong data.
    fn verify_set(&mut self, ram: &RamWindow, host: &mut impl Host, set: Set) -> u64 {
        let mut bad = 0;
        let mut i = 0;
        while let Some(o) = self.owned.next_from(i) {
            i = o.index + (1 << o.order);
            if o.set == set {
                bad += self.verify_block(ram, host, OwnedPages::block(ram.base_pfn(), &o));
            }
        }
        bad
    }

    fn verify_block(&mut self, ram: &RamWindow, host: &mut impl Host, b: Block) -> u64 {
        let v = ram.verify(b);
        if v.bad_pages > 0 {
            if self.counters.mismatched_pages < MAX_MISMATCH_LOGS
                && let Some(m) = v.first
            {
                host.log(
                    Level::Error,
                    format_args!(
                        "data mismatch in owned block pfn={:#x} order={}: {} bad pages ({} zeroed, i.e. discarded while owned); first at pfn={:#x} word={} expected={:#x} found={:#x}",
                        b.pfn, b.order, v.bad_pages, v.zero_pages, m.pfn, m.word, m.expected, m.found
                    ),
                );
            }
            self.counters.mismatched_pages += v.bad_pages;
        }
        v.bad_pages
    }

    fn order_for(&self, plan: Option<Plan>, remaining: u64) -> u8 {
        let mut order = match plan {
            None | Some(Plan::Small) => SMALL[self.st.next_order % SMALL.len()],
            Some(Plan::Mixed) => MIXED[self.st.next_order % MIXED.len()],
            Some(Plan::Big) if self.st.fallback => MAX_ORDER - 1,
            Some(Plan::Big) => MAX_ORDER,
        };
        // Do not overshoot the target by more than needed.
        while order > 0 && (1u64 << order) > remaining {
            order -= 1;
        }
        order
    }

    fn backoff(&mut self, host: &mut impl Host) {
        self.st.retries += 1;
        self.st.backoff_ns = (self.st.backoff_ns * 2).clamp(BACKOFF_MIN_NS, BACKOFF_MAX_NS);
        self.st.backoff_until = Some(host.now_ns().saturating_add(self.st.backoff_ns));
    }

    fn run_alloc<N: Notify>(
        &mut self,
        client: &mut Client<'_, N>,
        host: &mut impl Host,
        plan: Option<Plan>,
        set: Set,
    ) -> Result<(), Next> {
        if self.st.retries > MAX_RETRIES && !self.st.gave_up {
            self.st.gave_up = true;
            host.log(
                Level::Warn,
                format_args!(
                    "memserver out of memory after {} retries: continuing with {} of {} MiB",
                    MAX_RETRIES,
                    mib(self.st.got_pages),
                    mib(self.st.target_pages)
                ),
            );
        }
        let mut timer_ns = None;
        if let Some(until) = self.st.backoff_until {
            let now = host.now_ns();
            if now < until {
                timer_ns = Some(until - now);
            } else {
                self.st.backoff_until = None;
            }
        }
        while timer_ns.is_none()
            && !self.st.gave_up
            && self.st.got_pages + self.st.requested_pages < self.st.target_pages
            && client.can_send()
        {
            let remaining = self.st.target_pages - self.st.got_pages - self.st.requested_pages;
            let order = self.order_for(plan, remaining);
            // Alternate groups by allocation order, so "every other block"
            // (fragmented) interleaves with its neighbours.
            let set = if set == Set::Live || self.st.next_order.is_multiple_of(2) {
                set
            } else {
                Set::B
            };
            match client.send(ClientRequest::Alloc { order }, Ctx::Alloc { order, set }) {
                Ok(_) => {
                    self.st.requested_pages += 1 << order;
                    self.st.next_order += 1;
                }
                Err(MemError::WouldBlock) => break,
                Err(e) => return Err(self.fail(host, e)),
            }
        }
        let done = (self.st.gave_up || self.st.got_pages >= self.st.target_pages)
            && self.st.requested_pages == 0;
        if done {
            Ok(())
        } else {
            // Waiting on responses, or on ring space after a full ring:
            // either way the memserver must be asked to signal.
            Err(Next::Wait {
                memserver: true,
                timer_ns,
            })
        }
    }

    fn run_free<N: Notify>(
        &mut self,
        client: &mut Client<'_, N>,
        ram: &RamWindow,
        host: &mut impl Host,
        sets: u8,
    ) -> Result<(), Next> {
        let mut timer_ns = None;
        if let Some(until) = self.st.backoff_until {
            let now = host.now_ns();
            if now < until {
                timer_ns = Some(until - now);
            } else {
                self.st.backoff_until = None;
            }
        }
        let end = self.owned.pages();
        let spent =
            |st: &OpState, more: u64| st.free_budget.is_some_and(|b| st.free_sent + more >= b);
        while timer_ns.is_none() && self.st.cursor < end && !spent(&self.st, 0) && client.can_send()
        {
            let from = self.st.cursor;
            let mut batch = FreeBatch::new();
            while !batch.is_full() && !spent(&self.st, batch.pages()) {
                let Some(o) = self.owned.next_from(self.st.cursor) else {
                    self.st.cursor = end;
                    break;
                };
                self.st.cursor = o.index + (1 << o.order);
                if o.freeing || sets & (1 << o.set as u8) == 0 {
                    continue;
                }
                let b = OwnedPages::block(ram.base_pfn(), &o);
                // Verify before giving it back: afterwards it is not ours.
                self.verify_block(ram, host, b);
                self.owned.set_freeing(o.index, true);
                let _ = batch.push(b);
            }
            if batch.is_empty() {
                break;
            }
            let (pages, count) = (batch.pages() as u32, batch.len() as u16);
            let blocks = batch.clone();
            let Some(req) = batch.take() else { break };
            let ctx = Ctx::Free {
                from: from as u32,
                to: self.st.cursor as u32,
                pages,
                count,
            };
            match client.send(req, ctx) {
                Ok(_) => {
                    self.st.frees_in_flight += 1;
                    self.st.free_sent += u64::from(pages);
                }
                Err(e) => {
                    // Not sent: the blocks stay ours, unmarked; sweep again
                    // from where this batch started.
                    for b in blocks.blocks() {
                        self.owned
                            .set_freeing((b.pfn - ram.base_pfn()) as usize, false);
                    }
                    self.st.cursor = from;
                    if e == MemError::WouldBlock {
                        break;
                    }
                    return Err(self.fail(host, e));
                }
            }
        }
        if (self.st.cursor >= end || spent(&self.st, 0)) && self.st.frees_in_flight == 0 {
            // A trace step's refused frees are retried by the next step.
            if !self.st.retry_sweep || self.st.free_budget.is_some() {
                return Ok(());
            }
            // Some batches were refused for now: sweep again (no frees in
            // flight, so the ranges of new batches cannot overlap old ones).
            self.st.retry_sweep = false;
            self.st.cursor = 0;
            return self.run_free(client, ram, host, sets);
        }
        Err(Next::Wait {
            memserver: true,
            timer_ns,
        })
    }

    /// Follow the recorded curve ([`trace_text`]): at each point's
    /// (scaled) time, allocate or free towards its level, then wait for
    /// the next point.
    fn run_trace<N: Notify>(
        &mut self,
        client: &mut Client<'_, N>,
        ram: &RamWindow,
        host: &mut impl Host,
    ) -> Result<(), Next> {
        let ab = (1 << Set::A as u8) | (1 << Set::B as u8);
        loop {
            match self.st.trace.moving {
                Some(true) => self.run_alloc(client, host, Some(Plan::Mixed), Set::A)?,
                Some(false) => self.run_free(client, ram, host, ab)?,
                None => {}
            }
            self.st.trace.moving = None;
            let tr = self.st.trace;
            let Some((t_ms, kib)) = trace_points(self.params.curve).nth(tr.step) else {
                return Ok(());
            };
            let now = host.now_ns();
            let due = tr.t0 + t_ms * 1_000_000 / u64::from(self.params.speed);
            if now < due {
                return Err(Next::Wait {
                    memserver: false,
                    timer_ns: Some(due - now),
                });
            }
            self.st.trace.late_ns = tr.late_ns.max(now - due);
            self.st.trace.step += 1;
            let want = (u128::from(kib) * u128::from(self.params.mib * PAGES_PER_MIB)
                / u128::from(tr.peak_kib)) as u64;
            let have = self.owned.pages_in(Set::A) + self.owned.pages_in(Set::B);
            // A fresh operation state for the move (the trace's own kept).
            let trace = self.st.trace;
            self.st = OpState {
                started: true,
                trace,
                ..OpState::default()
            };
            if want > have + TRACE_SLACK_PAGES {
                self.st.got_pages = have;
                self.st.target_pages = want;
                self.st.trace.moving = Some(true);
            } else if have > want + TRACE_SLACK_PAGES {
                self.st.free_budget = Some(have - want);
                self.st.trace.moving = Some(false);
            }
        }
    }

    /// Forget (`remove`) or unmark the blocks being freed in `from..to`.
    fn settle_frees(&mut self, from: u32, to: u32, remove: bool) {
        let mut i = from as usize;
        while i < (to as usize).min(self.owned.pages()) {
            let Some(o) = self.owned.next_from(i) else {
                break;
            };
            if o.index >= to as usize {
                break;
            }
            i = o.index + (1 << o.order);
            if o.freeing {
                if remove {
                    self.owned.remove(o.index);
                } else {
                    self.owned.set_freeing(o.index, false);
                }
            }
        }
    }

    fn on_response(&mut self, resp: Response, ctx: Ctx, ram: &RamWindow, host: &mut impl Host) {
        match ctx {
            Ctx::Alloc { order, set } => {
                self.st.requested_pages = self.st.requested_pages.saturating_sub(1 << order);
                match resp.body {
                    ClientResponse::Allocated(b) => self.on_allocated(b, order, set, ram, host),
                    ClientResponse::Error(
                        ClientError::NoMemory | ClientError::Busy | ClientError::Overloaded,
                    ) => {
                        self.counters.no_memory += 1;
                        if order == MAX_ORDER {
                            // No 4 MiB block left: 2 MiB ones still serve bulk
                            // (several order-10 requests may have been in
                            // flight; none of them is a reason to wait).
                            self.st.fallback = true;
                        } else {
                            self.backoff(host);
                        }
                    }
                    other => {
                        self.counters.server_errors += 1;
                        self.st.gave_up = true;
                        host.log(
                            Level::Error,
                            format_args!("alloc of order {order} refused: {other:?}"),
                        );
                    }
                }
            }
            Ctx::Free {
                from,
                to,
                pages,
                count,
            } => {
                self.st.frees_in_flight = self.st.frees_in_flight.saturating_sub(1);
                match resp.body {
                    ClientResponse::Freed { count: n } => {
                        self.settle_frees(from, to, true);
                        self.st.freed_pages += u64::from(pages);
                        self.st.blocks += u64::from(count);
                        self.counters.freed_pages += u64::from(pages);
                        self.counters.freed_blocks += u64::from(count);
                        if n != count {
                            self.counters.server_errors += 1;
                            host.log(
                                Level::Error,
                                format_args!("freed {n} blocks of a batch of {count}"),
                            );
                        }
                    }
                    ClientResponse::Error(ClientError::Busy | ClientError::Overloaded) => {
                        // Not processed: keep the blocks and try again later.
                        self.settle_frees(from, to, false);
                        self.st.retry_sweep = true;
                        self.backoff(host);
                    }
                    other => {
                        // Refused: the pages are given up either way (the
                        // server says they are not ours, or some were freed).
                        self.settle_frees(from, to, true);
                        self.counters.server_errors += 1;
                        host.log(
                            Level::Error,
                            format_args!(
                                "free of {count} blocks ({pages} pages) refused: {other:?}"
                            ),
                        );
                    }
                }
            }
        }
    }

    fn on_allocated(
        &mut self,
        b: Block,
        order: u8,
        set: Set,
        ram: &RamWindow,
        host: &mut impl Host,
    ) {
        let index = ram.index_of(b).and_then(|i| usize::try_from(i).ok());
        // Buddy blocks are aligned in absolute frame numbers.
        let ok = b.order == order
            && b.pfn.is_multiple_of(1u64 << order)
            && index.is_some_and(|i| self.owned.insert(i, order, set));
        if !ok {
            // Not ours to touch: outside our RAM, overlapping a block we
            // own, or not what we asked for. Never written, never freed.
            self.counters.bad_blocks += 1;
            host.log(
                Level::Error,
                format_args!("memserver gave block pfn={:#x} order={} for an order-{order} request: not usable, ignored", b.pfn, b.order),
            );
            return;
        }
        ram.fill(b);
        self.st.got_pages += b.pages();
        self.st.blocks += 1;
        self.st.retries = 0;
        self.st.backoff_ns = 0;
        self.counters.allocs += 1;
        self.counters.alloc_pages += b.pages();
    }
}
