//! Property test, for each policy (`linux` and `adaptive`): random sequences of alloc / free / bad free / timer /
//! report completion (ok or failed) / inflate / deflate against a per-page
//! model. After every step: the core's conservation check, every frame's
//! state equal to the model's, counters equal to the model's counts, and
//! Reported only on memory the host has discarded: under `linux`, only on
//! blocks a successful report drained unmerged; under `adaptive`, on any
//! block every page of which a successful report drained and that has not
//! left the free lists since (the policy keeps the flag through splits and
//! merges of discarded memory).

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use memserver::{
    Actions, BatchId, Block, BlockState, Error, MAX_ORDER, MemCore, Policy, ReportingState,
    Tunables, ZoneId, ZoneSpec,
};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum P {
    Free,
    Alloc,
    Isolated,
    Ballooned,
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { zone: u8, order: u8 },
    Free { pick: usize },
    BadFree { zone: u8, off: u32, order: u8 },
    Timer,
    Complete { pick: usize, ok: bool },
    BogusComplete { id: u32 },
    Inflate { zone: u8, pages: u16 },
    Deflate { pick: usize, sub: u8, at: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3u8, 0..=MAX_ORDER).prop_map(|(zone, order)| Op::Alloc { zone, order }),
        5 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        1 => (0..3u8, 0..4000u32, 0..12u8).prop_map(|(zone, off, order)| Op::BadFree { zone, off, order }),
        2 => Just(Op::Timer),
        3 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, ok)| Op::Complete { pick, ok }),
        1 => any::<u32>().prop_map(|id| Op::BogusComplete { id }),
        1 => (0..2u8, 1..2000u16).prop_map(|(zone, pages)| Op::Inflate { zone, pages }),
        2 => (any::<usize>(), 0..=MAX_ORDER, any::<u16>()).prop_map(|(pick, sub, at)| Op::Deflate { pick, sub, at }),
    ]
}

fn tunables(policy: Policy) -> impl Strategy<Value = Option<Tunables>> {
    let adaptive = (0..=MAX_ORDER, 0..10u64, 0..64u64, 0..=8u8, 0..100_000u64);
    prop_oneof![
        1 => Just(None),
        6 => ((0..=MAX_ORDER, 1..6u16, 1..4u32, 0..200u64, 1..4u8), adaptive).prop_map(
            move |(
                (reporting_order, capacity, budget_divisor, low_watermark_pages, max_in_flight),
                (quiet_order, age_delays, busy_pages, backoff_max, churn_pages_per_s),
            )| {
                let t = Tunables::default();
                Some(Tunables {
                    reporting_order,
                    capacity,
                    budget_divisor,
                    low_watermark_pages,
                    max_in_flight,
                    policy,
                    quiet_order,
                    // From below one delay (small blocks with the first
                    // quiet pass) to ten.
                    age_ns: t.delay_ns / 2 * age_delays + 1,
                    busy_pages,
                    // Hysteresis from none to its range's end.
                    backoff_max,
                    // From any take-back being churn to none in these runs.
                    churn_pages_per_s,
                    ..t
                })
            }
        ),
    ]
}

/// Lowest order the tunables' policy reports.
fn lowest_order(t: &Tunables) -> u8 {
    match t.policy {
        Policy::Linux => t.reporting_order,
        Policy::Adaptive => t.quiet_order.min(t.reporting_order),
    }
}

struct Model {
    zones: Vec<ZoneSpec>,
    pages: Vec<Vec<P>>,
    allocs: Vec<(usize, Block)>,
    balloon: Vec<(usize, Block)>,
    /// Blocks a successful report drained and that have not left the free
    /// lists since (as far as the model can tell): the only blocks that may
    /// be Reported.
    may_be_reported: HashSet<(usize, Block)>,
    /// Per page: a successful report drained it and it has not left the
    /// free lists since (the host has it discarded).
    discarded: Vec<Vec<bool>>,
    tun: Option<Tunables>,
}

impl Model {
    fn set(&mut self, z: usize, b: Block, p: P) {
        let base = self.zones[z].base_pfn;
        for pfn in b.pfn..b.pfn + b.pages() {
            self.pages[z][(pfn - base) as usize] = p;
        }
        if p != P::Free {
            self.set_discarded(z, b, false);
            // Pages leaving the free lists drop any Reported block they are in.
            self.may_be_reported.retain(|(rz, rb)| {
                *rz != z || rb.pfn + rb.pages() <= b.pfn || b.pfn + b.pages() <= rb.pfn
            });
        }
    }

    /// Record whether the host has discarded the pages of `b`.
    fn set_discarded(&mut self, z: usize, b: Block, discarded: bool) {
        let base = self.zones[z].base_pfn;
        for pfn in b.pfn..b.pfn + b.pages() {
            self.discarded[z][(pfn - base) as usize] = discarded;
        }
    }

    /// Has the host discarded every page of `b`?
    fn all_discarded(&self, z: usize, b: Block) -> bool {
        let base = self.zones[z].base_pfn;
        (b.pfn..b.pfn + b.pages()).all(|pfn| self.discarded[z][(pfn - base) as usize])
    }

    /// Does the policy keep Reported only on blocks drained unmerged
    /// (Linux's rule)?
    fn linux_rule(&self) -> bool {
        self.tun.is_none_or(|t| t.policy == Policy::Linux)
    }

    fn all(&self, z: usize, b: Block, p: P) -> bool {
        let base = self.zones[z].base_pfn;
        (b.pfn..b.pfn + b.pages()).all(|pfn| self.pages[z][(pfn - base) as usize] == p)
    }

    /// Is there an aligned all-free range of `order` in the zone?
    fn fits(&self, z: usize, order: u8) -> bool {
        let spec = self.zones[z];
        let n = 1u64 << order;
        let mut pfn = spec.base_pfn.next_multiple_of(n);
        while pfn + n <= spec.base_pfn + u64::from(spec.pages) {
            if self.all(z, Block { pfn, order }, P::Free) {
                return true;
            }
            pfn += n;
        }
        false
    }
}

/// Take the actions' batches: check them against the model and mark their
/// blocks isolated.
fn take_batches(
    c: &MemCore<'_>,
    m: &mut Model,
    acts: &Actions,
    reported_before: &HashSet<(u64, u8)>,
) {
    let t = m.tun.expect("batches only with reporting on");
    for id in acts.batches() {
        let entries = c.batch(*id).expect("sent batch is in flight");
        assert!(!entries.is_empty() && entries.len() <= usize::from(t.capacity));
        let z = c.batch_zone(*id).unwrap().0 as usize;
        for b in entries {
            assert!(
                b.order >= lowest_order(&t),
                "only orders the policy reports"
            );
            assert_eq!(b.pfn % b.pages(), 0);
            assert!(
                !reported_before.contains(&(b.pfn, b.order)),
                "Reported blocks are skipped"
            );
            assert!(
                m.all(z, *b, P::Free),
                "batch holds a block that was not free"
            );
            m.set(z, *b, P::Isolated);
        }
    }
}

fn reported_set(c: &MemCore<'_>) -> HashSet<(u64, u8)> {
    let mut s = HashSet::new();
    for z in 0..c.nr_zones() {
        for o in 0..=MAX_ORDER {
            for (pfn, r) in c.free_list(ZoneId(z as u16), o).unwrap() {
                if r {
                    s.insert((pfn, o));
                }
            }
        }
    }
    s
}

fn check(c: &MemCore<'_>, m: &Model) {
    c.check_invariants().unwrap();
    let mut total = memserver::Stats::default();
    for (z, spec) in m.zones.iter().enumerate() {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for (i, p) in m.pages[z].iter().enumerate() {
            let pfn = spec.base_pfn + i as u64;
            let (b, s) = c.block_of(pfn).unwrap();
            let want = match s {
                BlockState::Allocated => P::Alloc,
                BlockState::Free { .. } => P::Free,
                BlockState::Isolated => P::Isolated,
                BlockState::Ballooned => P::Ballooned,
            };
            assert_eq!(*p, want, "pfn {pfn:#x} in zone {z}");
            if let BlockState::Free { reported: true } = s {
                assert!(
                    m.all_discarded(z, b),
                    "{b:?} Reported, but not all of it was reported since it was last used"
                );
                assert!(
                    !m.linux_rule() || m.may_be_reported.contains(&(z, b)),
                    "{b:?} Reported without a report of it whole"
                );
            }
            *counts
                .entry(match p {
                    P::Free => "free",
                    P::Alloc => "alloc",
                    P::Isolated => "iso",
                    P::Ballooned => "bal",
                })
                .or_default() += 1;
        }
        let s = c.zone_stats(ZoneId(z as u16)).unwrap();
        assert_eq!(s.free_pages, counts.get("free").copied().unwrap_or(0));
        assert_eq!(s.allocated_pages, counts.get("alloc").copied().unwrap_or(0));
        assert_eq!(s.isolated_pages, counts.get("iso").copied().unwrap_or(0));
        assert_eq!(s.ballooned_pages, counts.get("bal").copied().unwrap_or(0));
        total.free_pages += s.free_pages;
        total.reported_pages += s.reported_pages;
    }
    assert_eq!(c.stats().free_pages, total.free_pages);
    assert_eq!(c.stats().reported_pages, total.reported_pages);
    if m.tun.is_none() {
        assert_eq!(c.reporting_state(), ReportingState::Idle);
        assert_eq!(c.in_flight().count(), 0);
    }
}

fn run(tun: Option<Tunables>, ops: Vec<Op>) {
    let zones = vec![zone(5, 1500), zone(2048, 1024)];
    let (mut c, boot) = core(&zones, tun);
    assert_eq!(
        boot.arm_timer_ns().is_some(),
        tun.is_some(),
        "boot arms iff reporting on"
    );
    let mut m = Model {
        pages: zones
            .iter()
            .map(|z| vec![P::Free; z.pages as usize])
            .collect(),
        discarded: zones
            .iter()
            .map(|z| vec![false; z.pages as usize])
            .collect(),
        zones,
        allocs: Vec::new(),
        balloon: Vec::new(),
        may_be_reported: HashSet::new(),
        tun,
    };
    check(&c, &m);
    for op in ops {
        let reported_before = reported_set(&c);
        match op {
            Op::Alloc { zone, order } => match c.alloc(ZoneId(zone.into()), order) {
                Ok(pfn) => {
                    let z = usize::from(zone);
                    let b = Block { pfn, order };
                    assert!(m.all(z, b, P::Free));
                    m.set(z, b, P::Alloc);
                    m.allocs.push((z, b));
                }
                Err(Error::NoSuchZone) => assert!(usize::from(zone) >= m.zones.len()),
                Err(Error::NoMemory) => assert!(!m.fits(usize::from(zone), order)),
                Err(e) => panic!("alloc: {e}"),
            },
            Op::Free { pick } => {
                if m.allocs.is_empty() {
                    continue;
                }
                let (z, b) = m.allocs.swap_remove(pick % m.allocs.len());
                let acts = c.free(ZoneId(z as u16), b.pfn, b.order).unwrap();
                assert!(acts.batches().is_empty());
                m.set(z, b, P::Free);
            }
            Op::BadFree { zone, off, order } => {
                let z = usize::from(zone);
                let pfn = m.zones.get(z).map_or(0, |s| s.base_pfn) + u64::from(off);
                let b = Block { pfn, order };
                if let Some(i) = m.allocs.iter().position(|a| *a == (z, b)) {
                    c.free(ZoneId(zone.into()), pfn, order).unwrap();
                    m.allocs.swap_remove(i);
                    m.set(z, b, P::Free);
                } else {
                    let before = snapshot(&c);
                    assert!(c.free(ZoneId(zone.into()), pfn, order).is_err());
                    assert_eq!(snapshot(&c), before);
                }
            }
            Op::Timer => {
                let acts = c.timer_expired();
                if m.tun.is_some() {
                    take_batches(&c, &mut m, &acts, &reported_before);
                } else {
                    assert!(acts.is_empty());
                }
            }
            Op::Complete { pick, ok } => {
                let ids: Vec<BatchId> = c.in_flight().collect();
                if ids.is_empty() {
                    continue;
                }
                let id = ids[pick % ids.len()];
                let z = c.batch_zone(id).unwrap().0 as usize;
                let entries = c.batch(id).unwrap().to_vec();
                let acts = c.report_completed(id, ok).unwrap();
                for b in &entries {
                    m.set(z, *b, P::Free);
                    if ok {
                        m.set_discarded(z, *b, true);
                    }
                }
                // A failed completion also returns the half-filled batch:
                // every isolated page not in a batch still in flight is free.
                if !ok {
                    let still: HashSet<(u64, u8)> = c
                        .in_flight()
                        .flat_map(|i| {
                            c.batch(i)
                                .unwrap()
                                .iter()
                                .map(|b| (b.pfn, b.order))
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    for (zi, spec) in m.zones.clone().iter().enumerate() {
                        for i in 0..spec.pages as usize {
                            if m.pages[zi][i] == P::Isolated {
                                let pfn = spec.base_pfn + i as u64;
                                let (b, _) = c.block_of(pfn).unwrap();
                                if !still.contains(&(b.pfn, b.order)) {
                                    m.pages[zi][i] = P::Free;
                                }
                            }
                        }
                    }
                }
                // Drain rule: marked iff ok and still a free block of the
                // same order (not merged).
                for b in &entries {
                    let (cb, s) = c.block_of(b.pfn).unwrap();
                    if cb == *b && matches!(s, BlockState::Free { .. }) {
                        assert_eq!(s, BlockState::Free { reported: ok }, "drain of {b:?}");
                        if ok {
                            m.may_be_reported.insert((z, *b));
                        }
                    } else if m.linux_rule() {
                        // Merged (or, with in-flight > 1, taken by the pass
                        // again only if unreported): never Reported.
                        assert_ne!(s, BlockState::Free { reported: true });
                    } else if let BlockState::Free { reported: true } = s {
                        // Adaptive: a merged block is Reported only when the
                        // host has discarded all of it.
                        assert!(m.all_discarded(z, cb), "{cb:?} merged Reported");
                    }
                }
                // Later batches in this step's actions come from the
                // continued pass. (Blocks this step drained as Reported are
                // not in `reported_before`; the core's check that isolated
                // blocks carry no Reported flag covers them.)
                take_batches(&c, &mut m, &acts, &reported_before);
            }
            Op::BogusComplete { id } => {
                if c.in_flight().any(|i| i.0 == id) {
                    continue;
                }
                let before = snapshot(&c);
                assert_eq!(
                    c.report_completed(BatchId(id), true),
                    Err(Error::UnknownBatch)
                );
                assert_eq!(snapshot(&c), before);
            }
            Op::Inflate { zone, pages } => {
                let z = usize::from(zone);
                let low = m.tun.unwrap_or_default().low_watermark_pages;
                let free_before = c.zone_stats(ZoneId(zone.into())).unwrap().free_pages;
                let mut out = [Block::default(); 8];
                let n = c
                    .take_for_balloon(ZoneId(zone.into()), u64::from(pages), &mut out)
                    .unwrap();
                let got: u64 = out[..n].iter().map(Block::pages).sum();
                assert!(got <= u64::from(pages));
                if got > 0 {
                    assert!(
                        free_before - got >= low,
                        "balloon dipped below the watermark"
                    );
                }
                for b in &out[..n] {
                    assert!(m.all(z, *b, P::Free));
                    m.set(z, *b, P::Ballooned);
                    m.balloon.push((z, *b));
                }
            }
            Op::Deflate { pick, sub, at } => {
                if m.balloon.is_empty() {
                    continue;
                }
                let i = pick % m.balloon.len();
                let (z, b) = m.balloon.swap_remove(i);
                let so = sub.min(b.order);
                let n = 1u64 << (b.order - so);
                let part = Block {
                    pfn: b.pfn + (u64::from(at) % n) * (1 << so),
                    order: so,
                };
                let acts = c.return_from_balloon(ZoneId(z as u16), part).unwrap();
                assert!(acts.batches().is_empty());
                m.set(z, part, P::Free);
                // The rest of the block stays ballooned, split in buddies.
                let (mut h, mut k) = (b.pfn, b.order);
                while k > so {
                    k -= 1;
                    let half = 1u64 << k;
                    if part.pfn >= h + half {
                        m.balloon.push((z, Block { pfn: h, order: k }));
                        h += half;
                    } else {
                        m.balloon.push((
                            z,
                            Block {
                                pfn: h + half,
                                order: k,
                            },
                        ));
                    }
                }
            }
        }
        check(&c, &m);
    }
    // Drain everything: all batches complete, reporting settles, and with
    // reporting on every free block of the reporting order that passes the
    // watermark ends Reported or below it.
    if let Some(t) = m.tun {
        let settle = |c: &mut MemCore<'_>| {
            for _ in 0..1000 {
                if c.reporting_state() == ReportingState::Idle && !c.pass_running() {
                    break;
                }
                let mut acts = if c.timer_armed() {
                    c.timer_expired()
                } else {
                    Actions::default()
                };
                complete_all(c, true, &mut acts);
            }
            assert_eq!(
                c.reporting_state(),
                ReportingState::Idle,
                "reporting settles"
            );
            assert_eq!(c.stats().isolated_pages, 0);
            c.check_invariants().unwrap();
        };
        settle(&mut c);
        // As in Linux, blocks can be left unreported without a new request:
        // an allocation during a pass splits a block into halves at orders
        // the walk has passed, and a drained block can merge with a buddy
        // drained before it. Neither notifies. One request on a quiet
        // system then reports everything.
        let acts = c.request_reporting();
        let first_look = match t.policy {
            Policy::Linux => t.delay_ns,
            Policy::Adaptive => t.delay_ns / 4,
        };
        assert_eq!(acts.arm_timer_ns(), Some(first_look));
        settle(&mut c);
        for z in 0..2u16 {
            let s = c.zone_stats(ZoneId(z)).unwrap();
            // Every isolation keeps the watermark (issue 16), so a zone
            // whose free memory holds a full batch of the largest blocks
            // above it gets everything the policy reports down to its lowest
            // order reported.
            if s.free_pages >= t.low_watermark_pages + (u64::from(t.capacity) << MAX_ORDER) {
                let big: u64 = (usize::from(lowest_order(&t))..=usize::from(MAX_ORDER))
                    .map(|o| s.free_blocks[o] << o)
                    .sum();
                assert_eq!(
                    s.reported_pages, big,
                    "zone {z}: everything reportable reported"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn core_matches_model_linux(tun in tunables(Policy::Linux), ops in prop::collection::vec(op(), 1..120)) {
        run(tun, ops);
    }

    #[test]
    fn core_matches_model_adaptive(tun in tunables(Policy::Adaptive), ops in prop::collection::vec(op(), 1..120)) {
        run(tun, ops);
    }
}
