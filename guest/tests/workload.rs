//! The workload state machine against a fake memory server: an in-process
//! loop that answers the request ring from a simple page-granular allocator,
//! zeroes freed pages like a host discarding reported memory, and can be
//! told to misbehave.

use guest::PAGE_SIZE;
use guest::client::Notify;
use guest::owned::Set;
use guest::params::Params;
use guest::ram::RamWindow;
use guest::workload::{Client, Host, Level, Next, Workload};
use memserver_api::{
    Block, ClientError, ClientRequest, ClientResponse, Response, SLOT_SIZE, decode_request, encode,
};
use pd_ring::{Consumer, Producer, RingMemory, ring_words};
use std::cell::Cell;
use std::fmt;

const W: usize = ring_words(64, SLOT_SIZE);
const RAM_PADDR: u64 = 0x4000_0000;

struct Count<'c>(&'c Cell<u32>);
impl Notify for Count<'_> {
    fn notify(&self) {
        self.0.set(self.0.get() + 1);
    }
}

/// Page-aligned fake RAM.
struct Ram {
    mem: Vec<u64>,
    pages: u64,
}

impl Ram {
    fn new(mib: u64) -> Self {
        let pages = mib * 256;
        Ram {
            mem: vec![0u64; ((pages + 1) * PAGE_SIZE / 8) as usize],
            pages,
        }
    }
    fn base(&mut self) -> *mut u8 {
        let raw = self.mem.as_mut_ptr().cast::<u8>();
        raw.wrapping_add(raw.align_offset(PAGE_SIZE as usize))
    }
    fn window(&mut self) -> RamWindow {
        // SAFETY: `pages` pages from the aligned base lie inside `mem`; the
        // tests access them only through the window and through `zero`,
        // never while holding a reference, and `mem` outlives the window.
        unsafe { RamWindow::new(self.base(), RAM_PADDR, self.pages * PAGE_SIZE) }.unwrap()
    }
}

#[derive(Default)]
struct Faults {
    /// Answer the next N allocations with NoMemory.
    no_memory_next: u32,
    /// Refuse order-10 allocations (no 4 MiB block free).
    no_order_10: bool,
    /// Zero this page index when the first free arrives (a host that
    /// discards a page the guest still owns).
    corrupt_on_first_free: Option<u64>,
    /// Hand out this block once, on the Nth allocation (not from the pool).
    bogus_block: Option<(u64, Block)>,
    /// Answer the next N frees with Busy.
    busy_frees: u32,
}

struct Server<'a> {
    req: Consumer<'a>,
    resp: Producer<'a>,
    base: *mut u8,
    pages: u64,
    /// Order of the block allocated at each page index (head only).
    heads: Vec<Option<u8>>,
    used: Vec<bool>,
    allocs: u64,
    faults: Faults,
    notifies: u32,
    discarded_pages: u64,
}

impl Server<'_> {
    fn zero(&mut self, index: u64, pages: u64) {
        // SAFETY: index..index+pages lie inside the fake RAM (checked by the
        // callers against `self.pages`); no reference to it is held.
        unsafe {
            std::ptr::write_bytes(
                self.base.wrapping_add((index * PAGE_SIZE) as usize),
                0,
                (pages * PAGE_SIZE) as usize,
            )
        };
    }

    fn alloc(&mut self, order: u8) -> ClientResponse {
        self.allocs += 1;
        if let Some((n, b)) = self.faults.bogus_block
            && n == self.allocs
        {
            return ClientResponse::Allocated(b);
        }
        if self.faults.no_memory_next > 0 {
            self.faults.no_memory_next -= 1;
            return ClientResponse::Error(ClientError::NoMemory);
        }
        if order == 10 && self.faults.no_order_10 {
            return ClientResponse::Error(ClientError::NoMemory);
        }
        let n = 1u64 << order;
        let mut i = 0;
        while i + n <= self.pages {
            if (i..i + n).all(|p| !self.used[p as usize]) {
                (i..i + n).for_each(|p| self.used[p as usize] = true);
                self.heads[i as usize] = Some(order);
                return ClientResponse::Allocated(Block {
                    pfn: RAM_PADDR / PAGE_SIZE + i,
                    order,
                });
            }
            i += n;
        }
        ClientResponse::Error(ClientError::NoMemory)
    }

    fn free(&mut self, b: Block) -> Result<(), ClientError> {
        let i = b
            .pfn
            .checked_sub(RAM_PADDR / PAGE_SIZE)
            .filter(|i| *i < self.pages)
            .ok_or(ClientError::WrongZone)?;
        if self.heads[i as usize] != Some(b.order) {
            return Err(ClientError::NotAllocated);
        }
        self.heads[i as usize] = None;
        (i..i + b.pages()).for_each(|p| self.used[p as usize] = false);
        // The host discards freed memory: it reads back as zeros.
        self.zero(i, b.pages());
        self.discarded_pages += b.pages();
        Ok(())
    }

    /// Answer every request; how many.
    fn serve(&mut self) -> usize {
        let mut buf = [0u8; SLOT_SIZE];
        let mut n = 0;
        loop {
            let len = match self.req.pop(&mut buf).unwrap() {
                Some(len) => len,
                None => {
                    self.req.request_signal();
                    if self.req.is_empty().unwrap() {
                        break;
                    }
                    continue;
                }
            };
            n += 1;
            let r = decode_request(&buf[..len]).unwrap();
            if let (ClientRequest::FreeBatch(_), Some(page)) =
                (&r.body, self.faults.corrupt_on_first_free)
            {
                self.faults.corrupt_on_first_free = None;
                self.zero(page, 1);
            }
            let body = match r.body {
                ClientRequest::Alloc { order } => self.alloc(order),
                ClientRequest::FreeBatch(_) | ClientRequest::Free(_)
                    if self.faults.busy_frees > 0 =>
                {
                    self.faults.busy_frees -= 1;
                    ClientResponse::Error(ClientError::Busy)
                }
                ClientRequest::Free(b) => match self.free(b) {
                    Ok(()) => ClientResponse::Freed { count: 1 },
                    Err(e) => ClientResponse::Error(e),
                },
                ClientRequest::FreeBatch(bs) => {
                    let results: Vec<_> = bs.iter().map(|b| self.free(*b)).collect();
                    let failed: Vec<_> = results
                        .iter()
                        .enumerate()
                        .filter_map(|(i, r)| r.err().map(|e| (i, e)))
                        .collect();
                    match failed.first() {
                        None => ClientResponse::Freed {
                            count: bs.len() as u16,
                        },
                        Some(&(first, error)) => ClientResponse::BatchFailed {
                            freed: (bs.len() - failed.len()) as u16,
                            failed: failed.len() as u16,
                            first: first as u16,
                            error,
                        },
                    }
                }
                ClientRequest::Stats => ClientResponse::Error(ClientError::Malformed),
            };
            let mut out = [0u8; SLOT_SIZE];
            self.resp
                .push(
                    encode(
                        &Response {
                            tag: Some(r.tag),
                            body,
                        },
                        &mut out,
                    )
                    .unwrap(),
                )
                .unwrap();
        }
        if n > 0 && self.resp.needs_notify() {
            self.notifies += 1;
        }
        n
    }

    fn allocated_pages(&self) -> u64 {
        self.used.iter().filter(|u| **u).count() as u64
    }
}

#[derive(Default)]
struct TestHost {
    now: u64,
    lines: Vec<(Level, String)>,
}

impl Host for TestHost {
    fn now_ns(&mut self) -> u64 {
        self.now
    }
    fn log(&mut self, level: Level, args: fmt::Arguments<'_>) {
        self.lines.push((level, args.to_string()));
    }
}

impl TestHost {
    fn phases(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|(_, l)| {
                l.strip_prefix("phase=")
                    .map(|r| r.split(' ').next().unwrap_or("").to_string())
            })
            .collect()
    }
    fn errors(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|(l, _)| *l == Level::Error)
            .map(|(_, s)| s.as_str())
            .collect()
    }
    fn line(&self, phase: &str) -> &str {
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .find(|l| l.starts_with(&format!("phase={phase} ")))
            .unwrap_or("")
    }
}

struct Outcome {
    host: TestHost,
    server_allocated: u64,
    server_notifies: u32,
    client_notifies: u32,
    discarded: u64,
    counters: guest::workload::Counters,
    live_ok: Option<bool>,
    failed: bool,
    owned_live: u64,
    owned_work: u64,
}

fn run(params: &str, ram_mib: u64, faults: Faults) -> Outcome {
    let params = Params::parse(params).unwrap();
    let mut ram = Ram::new(ram_mib);
    let window = ram.window();
    let req = Box::new(RingMemory::<W>::new());
    let resp = Box::new(RingMemory::<W>::new());
    let notified = Cell::new(0);
    let mut client: Client<'_, Count<'_>> = Client::new(
        req.producer(SLOT_SIZE).unwrap(),
        resp.consumer(SLOT_SIZE).unwrap(),
        Count(&notified),
    );
    let pages = window.pages();
    let mut server = Server {
        req: req.consumer(SLOT_SIZE).unwrap(),
        resp: resp.producer(SLOT_SIZE).unwrap(),
        base: ram.base(),
        pages,
        heads: vec![None; pages as usize],
        used: vec![false; pages as usize],
        allocs: 0,
        faults,
        notifies: 0,
        discarded_pages: 0,
    };
    let mut storage = vec![0u8; pages as usize];
    let mut wl = Workload::new(params, &mut storage, pages);
    let mut host = TestHost {
        now: 1_000,
        ..TestHost::default()
    };
    let mut finished = false;
    for _ in 0..100_000 {
        match wl.advance(&mut client, &window, &mut host) {
            Next::Finished => {
                finished = true;
                break;
            }
            Next::Wait {
                memserver,
                timer_ns,
            } => {
                let served = server.serve();
                if served == 0 {
                    // Nothing from the server: only the timer can wake us.
                    assert!(
                        !memserver || client.in_flight() == 0,
                        "waits on the server, which has nothing to do"
                    );
                    let ns = timer_ns.expect("waits for nothing: the run would hang");
                    host.now += ns;
                }
            }
        }
    }
    assert!(finished, "the run did not finish");
    assert_eq!(client.in_flight(), 0);
    Outcome {
        server_allocated: server.allocated_pages(),
        server_notifies: server.notifies,
        client_notifies: notified.get(),
        discarded: server.discarded_pages,
        counters: wl.counters(),
        live_ok: wl.live_ok(),
        failed: wl.failed(),
        owned_live: wl.owned_pages(Set::Live),
        owned_work: wl.owned_pages(Set::A) + wl.owned_pages(Set::B),
        host,
    }
}

#[test]
fn bulk_frees_everything_but_the_live_set() {
    let o = run(
        "pattern=bulk,mib=16,live_mib=2,hold_ms=100",
        32,
        Faults::default(),
    );
    assert_eq!(
        o.host.phases(),
        [
            "start",
            "live_touched",
            "touched",
            "held",
            "freed",
            "held",
            "verified",
            "done"
        ]
    );
    assert!(o.host.errors().is_empty(), "{:?}", o.host.errors());
    assert_eq!(o.live_ok, Some(true));
    assert_eq!(
        o.server_allocated,
        2 * 256,
        "only the live set is still allocated"
    );
    assert_eq!((o.owned_live, o.owned_work), (512, 0));
    assert_eq!(o.counters.freed_pages, 16 * 256);
    assert_eq!(o.discarded, 16 * 256);
    // 16 MiB in 4 MiB blocks.
    assert!(
        o.host.line("touched").contains("mib=16 blocks=4"),
        "{}",
        o.host.line("touched")
    );
    assert!(
        o.host
            .line("verified")
            .starts_with("phase=verified ok live_mib=2")
    );
    // Both holds took the hold time on the timer's clock.
    assert!(o.host.now >= 1_000 + 2 * 100_000_000);
    // The signalling protocol ran both ways.
    assert!(o.server_notifies > 0 && o.client_notifies > 0);
    for (_, l) in &o.host.lines {
        if l.starts_with("phase=") {
            assert!(l.contains(" t_ns="), "phase line without time: {l}");
        }
    }
}

#[test]
fn fragmented_frees_every_other_block_first() {
    let o = run(
        "pattern=fragmented,mib=8,live_mib=1,hold_ms=10",
        16,
        Faults::default(),
    );
    assert_eq!(
        o.host.phases(),
        [
            "start",
            "live_touched",
            "touched",
            "held",
            "freed_half",
            "held",
            "freed",
            "held",
            "verified",
            "done"
        ]
    );
    assert!(o.host.errors().is_empty(), "{:?}", o.host.errors());
    let half: u64 = o
        .host
        .line("freed_half")
        .split(' ')
        .find_map(|f| f.strip_prefix("blocks="))
        .unwrap()
        .parse()
        .unwrap();
    let rest: u64 = o
        .host
        .line("freed")
        .split(' ')
        .find_map(|f| f.strip_prefix("blocks="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        half > 0 && half.abs_diff(rest) <= 1,
        "half {half}, rest {rest}"
    );
    assert_eq!(o.server_allocated, 256);
    assert_eq!(o.counters.freed_pages, 8 * 256);
}

#[test]
fn churn_runs_its_rounds_and_leaves_only_the_live_set() {
    let o = run(
        "pattern=churn,mib=8,live_mib=1,hold_ms=0,rounds=3",
        16,
        Faults::default(),
    );
    let rounds = o.host.phases().iter().filter(|p| *p == "round").count();
    assert_eq!(rounds, 3);
    assert!(o.host.line("round").contains("n=1 of=3"));
    assert_eq!(o.counters.freed_pages, 3 * 8 * 256);
    assert_eq!(o.server_allocated, 256);
    assert_eq!(o.live_ok, Some(true));
    assert!(o.host.errors().is_empty(), "{:?}", o.host.errors());
}

/// The trace replays every recorded point, on time, reaches the curve's
/// peak (scaled to `mib`), goes up and down with it, and gives everything
/// back at the end.
#[test]
fn trace_follows_the_recorded_curve() {
    follows(guest::params::Curve::CargoBuild);
}

/// The curves' means over their peaks, as recorded (README): the floor
/// the footprint scenarios print.
#[test]
fn the_curves_means_are_what_they_hold() {
    use guest::params::Curve;
    use guest::workload::trace_mean_of_peak;
    let cargo = trace_mean_of_peak(Curve::CargoBuild);
    let cpp = trace_mean_of_peak(Curve::CppcheckBuild);
    let clang = trace_mean_of_peak(Curve::CppcheckClangBuild);
    assert!((0.70..0.72).contains(&cargo), "{cargo}");
    assert!((0.51..0.54).contains(&cpp), "{cpp}");
    assert!((0.63..0.66).contains(&clang), "{clang}");
}

/// The same for the C++ build's curve (`curve=cppcheck-build`).
#[test]
fn trace_follows_the_cpp_builds_curve() {
    follows(guest::params::Curve::CppcheckBuild);
}

/// And for the clang++ build's (`curve=cppcheck-clang-build`).
#[test]
fn trace_follows_the_clang_builds_curve() {
    follows(guest::params::Curve::CppcheckClangBuild);
}

fn follows(curve: guest::params::Curve) {
    let points = guest::workload::trace_text(curve).lines().count() - 1;
    let o = run(
        &format!(
            "pattern=trace,mib=16,live_mib=1,hold_ms=0,speed=1000,curve={}",
            curve.name()
        ),
        32,
        Faults::default(),
    );
    assert_eq!(
        o.host.phases(),
        [
            "start",
            "live_touched",
            "trace_start",
            "traced",
            "freed",
            "held",
            "verified",
            "done"
        ]
    );
    assert!(o.host.errors().is_empty(), "{:?}", o.host.errors());
    let traced = o.host.line("traced");
    assert!(
        traced.starts_with(&format!("phase=traced steps={points} late_ms=0 ")),
        "{traced}"
    );
    // Up to the peak (within a step's slack), and down again more than
    // once: more allocated over the run than the peak.
    assert!(o.counters.alloc_pages >= 256 + 15 * 256);
    assert!(o.counters.alloc_pages > 256 + 2 * 16 * 256);
    assert_eq!(o.counters.freed_pages, o.counters.alloc_pages - 256);
    assert_eq!((o.owned_live, o.owned_work), (256, 0));
    assert_eq!(o.live_ok, Some(true));
}

#[test]
fn no_memory_backs_off_and_retries() {
    let o = run(
        "pattern=bulk,mib=8,live_mib=0,hold_ms=0",
        16,
        Faults {
            no_memory_next: 3,
            ..Faults::default()
        },
    );
    assert_eq!(o.counters.no_memory, 3);
    assert!(
        o.host.line("touched").contains("mib=8"),
        "got everything after retrying"
    );
    // The two 4 MiB refusals only switch to 2 MiB blocks; the third
    // refusal backs off on the timer before retrying.
    assert!(
        o.host.now >= 1_000 + guest::workload::BACKOFF_MIN_NS,
        "now {}",
        o.host.now
    );
    assert_eq!(o.server_allocated, 0);
    assert!(o.host.errors().is_empty());
}

#[test]
fn running_out_of_memory_continues_with_what_it_got() {
    // 12 MiB of RAM for 12 MiB of work plus 2 MiB live.
    let o = run(
        "pattern=fragmented,mib=12,live_mib=2,hold_ms=0",
        12,
        Faults::default(),
    );
    assert!(
        o.host
            .lines
            .iter()
            .any(|(l, s)| *l == Level::Warn && s.contains("out of memory"))
    );
    assert_eq!(o.host.phases().last().map(String::as_str), Some("done"));
    assert!(
        o.host.line("touched").contains("mib=10"),
        "{}",
        o.host.line("touched")
    );
    assert_eq!(o.server_allocated, 2 * 256);
    assert_eq!(o.live_ok, Some(true));
    assert!(!o.failed);
}

#[test]
fn falls_back_to_2mib_blocks() {
    let o = run(
        "pattern=bulk,mib=8,live_mib=0,hold_ms=0",
        16,
        Faults {
            no_order_10: true,
            ..Faults::default()
        },
    );
    assert!(
        o.host.line("touched").contains("mib=8 blocks=4"),
        "{}",
        o.host.line("touched")
    );
    assert!(o.counters.no_memory >= 1);
    // Switching to 2 MiB blocks is not a reason to back off.
    assert_eq!(o.host.now, 1_000);
}

#[test]
fn a_discarded_live_page_is_reported_loudly() {
    // The server zeroes page 3 (in the live set's order-1 block at page 2)
    // when the bulk memory is freed: a host discarding owned memory.
    let o = run(
        "pattern=bulk,mib=4,live_mib=1,hold_ms=0",
        16,
        Faults {
            corrupt_on_first_free: Some(3),
            ..Faults::default()
        },
    );
    assert_eq!(o.live_ok, Some(false));
    let errors = o.host.errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("data mismatch") && e.contains("discarded while owned")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("phase=verified failed live_mib=1 bad_pages=1")),
        "{errors:?}"
    );
    assert_eq!(o.counters.mismatched_pages, 1);
}

#[test]
fn bogus_blocks_are_never_touched_nor_freed() {
    // The 2nd allocation returns a block outside the guest's RAM, the 3rd
    // one overlapping a block it already owns.
    let outside = Block {
        pfn: 0x1000,
        order: 0,
    };
    let o = run(
        "pattern=bulk,mib=4,live_mib=1,hold_ms=0",
        16,
        Faults {
            bogus_block: Some((2, outside)),
            ..Faults::default()
        },
    );
    assert_eq!(o.counters.bad_blocks, 1);
    assert!(o.host.errors().iter().any(|e| e.contains("pfn=0x1000")));
    assert_eq!(o.live_ok, Some(true));
    assert_eq!(o.server_allocated, 256);
    let overlapping = Block {
        pfn: RAM_PADDR / PAGE_SIZE,
        order: 0,
    };
    let o = run(
        "pattern=bulk,mib=4,live_mib=1,hold_ms=0",
        16,
        Faults {
            bogus_block: Some((3, overlapping)),
            ..Faults::default()
        },
    );
    assert_eq!(o.counters.bad_blocks, 1);
    assert_eq!(
        o.live_ok,
        Some(true),
        "the overlapping block was not written over the live one"
    );
}

#[test]
fn busy_frees_are_retried() {
    let o = run(
        "pattern=bulk,mib=8,live_mib=0,hold_ms=0",
        16,
        Faults {
            busy_frees: 2,
            ..Faults::default()
        },
    );
    assert_eq!(o.counters.freed_pages, 8 * 256);
    assert_eq!(o.server_allocated, 0);
    assert!(o.host.errors().is_empty(), "{:?}", o.host.errors());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Any pattern and size, with transient refusals from the server:
        /// the run finishes, gives back everything but the live set, logs no
        /// error, and the live data survives.
        #[test]
        fn every_run_gives_back_all_it_took(
            pattern in prop_oneof![Just("bulk"), Just("fragmented"), Just("churn")],
            mib in 1u64..6,
            live_mib in 0u64..2,
            rounds in 1u32..3,
            no_memory_next in 0u32..5,
            busy_frees in 0u32..3,
            no_order_10 in any::<bool>(),
        ) {
            let params = format!("pattern={pattern},mib={mib},live_mib={live_mib},rounds={rounds},hold_ms=5");
            let o = run(&params, 8, Faults { no_memory_next, busy_frees, no_order_10, ..Faults::default() });
            prop_assert!(o.host.errors().is_empty(), "{:?}", o.host.errors());
            prop_assert!(!o.failed);
            prop_assert_eq!(o.live_ok, Some(true));
            prop_assert_eq!(o.server_allocated, live_mib * 256);
            prop_assert_eq!((o.owned_live, o.owned_work), (live_mib * 256, 0));
            let runs = if pattern == "churn" { u64::from(rounds) } else { 1 };
            prop_assert_eq!(o.counters.freed_pages, runs * mib * 256);
            prop_assert_eq!(o.counters.alloc_pages, o.counters.freed_pages + live_mib * 256);
            let phases = o.host.phases();
            prop_assert_eq!(phases.last().map(String::as_str), Some("done"));
        }
    }
}
