//! Helpers shared by the integration tests.
#![allow(dead_code)]

use memserver::{
    Actions, BatchId, Block, BlockState, MemCore, ReportingState, Tunables, ZoneId, ZoneSpec,
    metadata_bytes,
};

/// A core over `zones` with metadata leaked for the test's lifetime.
pub fn core(zones: &[ZoneSpec], tun: Option<Tunables>) -> (MemCore<'static>, Actions) {
    let meta = Box::leak(vec![0u8; metadata_bytes(zones)].into_boxed_slice());
    let (c, a) = MemCore::new(zones, meta, tun).expect("valid zones");
    c.check_invariants().expect("invariants after new");
    (c, a)
}

pub fn zone(base_pfn: u64, pages: u32) -> ZoneSpec {
    ZoneSpec {
        base_pfn,
        pages,
        owner: 0,
    }
}

pub const Z0: ZoneId = ZoneId(0);
pub const Z1: ZoneId = ZoneId(1);

/// Complete every batch in flight with `ok`, collecting what they held
/// and the actions that followed. Returns the completed entries.
pub fn complete_all(c: &mut MemCore<'_>, ok: bool, acts: &mut Actions) -> Vec<Block> {
    let mut done = Vec::new();
    loop {
        let ids: Vec<BatchId> = c.in_flight().collect();
        if ids.is_empty() {
            return done;
        }
        for id in ids {
            done.extend_from_slice(c.batch(id).expect("in flight"));
            let a = c.report_completed(id, ok).expect("known batch");
            acts.merge(&a);
            c.check_invariants().expect("invariants after completion");
        }
    }
}

/// Fire the timer and complete every batch of the pass with `ok`.
/// Returns the blocks the pass reported and the actions at its end.
pub fn run_pass(c: &mut MemCore<'_>, ok: bool) -> (Vec<Block>, Actions) {
    assert!(c.timer_armed(), "a pass needs the timer armed");
    let mut acts = c.timer_expired();
    c.check_invariants().expect("invariants after timer");
    let done = complete_all(c, ok, &mut acts);
    assert!(!c.pass_running());
    (done, acts)
}

/// Run passes (firing the timer whenever it is armed) until IDLE.
/// Returns how many passes ran.
pub fn run_until_idle(c: &mut MemCore<'_>, max_passes: usize) -> usize {
    let mut n = 0;
    while c.reporting_state() != ReportingState::Idle {
        assert!(n < max_passes, "reporting did not settle");
        run_pass(c, true);
        n += 1;
    }
    n
}

/// Everything observable about the core, to assert that a refused
/// request changed nothing.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub stats: memserver::Stats,
    pub zones: Vec<memserver::ZoneStats>,
    pub reporting: memserver::ReportingStats,
    pub state: ReportingState,
    pub timer_armed: bool,
    pub in_flight: Vec<(BatchId, Vec<Block>)>,
    pub blocks: Vec<(Block, BlockState)>,
    pub lists: Vec<Vec<(u64, bool)>>,
}

pub fn snapshot(c: &MemCore<'_>) -> Snapshot {
    let mut blocks = Vec::new();
    let mut lists = Vec::new();
    let mut zones = Vec::new();
    for z in 0..c.nr_zones() {
        let id = ZoneId(z as u16);
        zones.push(c.zone_stats(id).unwrap());
        let spec = c.zone_spec(id).unwrap();
        let mut pfn = spec.base_pfn;
        while pfn < spec.base_pfn + u64::from(spec.pages) {
            let (b, s) = c.block_of(pfn).expect("every frame is in a block");
            assert_eq!(b.pfn, pfn, "block walk");
            blocks.push((b, s));
            pfn += b.pages();
        }
        for o in 0..=memserver::MAX_ORDER {
            lists.push(c.free_list(id, o).unwrap().collect());
        }
    }
    let mut in_flight: Vec<_> = c
        .in_flight()
        .map(|id| (id, c.batch(id).unwrap().to_vec()))
        .collect();
    in_flight.sort_by_key(|(id, _)| id.0);
    Snapshot {
        stats: c.stats(),
        zones,
        reporting: c.reporting_stats(),
        state: c.reporting_state(),
        timer_armed: c.timer_armed(),
        in_flight,
        blocks,
        lists,
    }
}
pub mod vmm;
