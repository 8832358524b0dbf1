//! One scenario per rule of the adaptive policy (memserver/src/adaptive.rs),
//! each beside what Linux's rules do with the same events. Counters are the
//! oracles; time is the worker's own timer, fired by hand.

mod common;

use common::*;
use memserver::{Actions, Block, BlockState, MAX_ORDER, MemCore, Policy, ReportingState, Tunables};

const GIB_PAGES: u32 = 262_144;

fn adaptive() -> Tunables {
    Tunables::adaptive()
}

fn linux() -> Tunables {
    Tunables::default()
}

/// Pages of free blocks of at least `order`, and of them the Reported ones.
fn free_and_reported(c: &MemCore<'_>, order: u8) -> (u64, u64) {
    let s = c.zone_stats(Z0).unwrap();
    let free = (usize::from(order)..=usize::from(MAX_ORDER))
        .map(|o| s.free_blocks[o] << o)
        .sum();
    (free, s.reported_pages)
}

/// Boot, then allocate all of zone 0 in order-10 blocks (a guest touching
/// its RAM) and settle reporting, so the next events start from a quiet,
/// fully allocated zone.
fn booted_and_allocated(tun: Tunables, pages: u32) -> (MemCore<'static>, Vec<u64>) {
    let (mut c, _) = core(&[zone(0x40000, pages)], Some(tun));
    let mut held = Vec::new();
    while let Ok(pfn) = c.alloc(Z0, MAX_ORDER) {
        held.push(pfn);
    }
    run_until_idle(&mut c, 64);
    (c, held)
}

/// [`booted_and_allocated`], then half of the zone freed and reported
/// (cold after a tick); the blocks of the half still held.
fn half_reported(tun: Tunables) -> (MemCore<'static>, Vec<u64>) {
    let (mut c, held) = booted_and_allocated(tun, GIB_PAGES);
    let (keep, give) = held.split_at(held.len() / 2);
    for &pfn in give {
        c.free(Z0, pfn, MAX_ORDER).unwrap();
    }
    ticks_until_reported(&mut c, tun, 8);
    (c, keep.to_vec())
}

/// Fire the worker's timer until every free block of `reporting_order` and
/// up is reported (at most `max` times); how many times it took.
fn ticks_until_reported(c: &mut MemCore<'_>, tun: Tunables, max: u32) -> u32 {
    let mut ticks = 0;
    loop {
        run_pass(c, true);
        ticks += 1;
        let (free, reported) = free_and_reported(c, tun.reporting_order);
        if reported == free {
            return ticks;
        }
        assert!(ticks < max, "never reported");
    }
}

/// Rule 0: 1 GiB freed at once comes back in two ticks (half a delay):
/// the first tick after the request sees it freed a moment ago (only the
/// block whose free armed the timer is older), the second a tick old.
/// Linux's budget needs four passes, a delay apart.
#[test]
fn freed_memory_is_reported_once_it_stayed_free_for_a_tick() {
    for (tun, want_passes) in [(adaptive(), 2), (linux(), 4)] {
        let (mut c, held) = booted_and_allocated(tun, GIB_PAGES);
        let mut first = Actions::default();
        for pfn in held {
            first.merge(&c.free(Z0, pfn, MAX_ORDER).unwrap());
        }
        let first_look = match tun.policy {
            Policy::Adaptive => tun.delay_ns / 4,
            Policy::Linux => tun.delay_ns,
        };
        assert_eq!(first.arm_timer_ns(), Some(first_look), "{:?}", tun.policy);
        let passes_before = c.reporting_stats().passes;
        let (done, _) = run_pass(&mut c, true);
        let (free, reported) = free_and_reported(&c, 0);
        if tun.policy == Policy::Adaptive {
            assert_eq!(done.len(), 1, "only the first block is a tick old");
            run_pass(&mut c, true);
            let (free, reported) = free_and_reported(&c, 0);
            assert_eq!(reported, free, "everything back after two ticks");
        } else {
            assert!(reported < free / 2, "Linux: a budget's worth per pass");
        }
        // Passes that reported something; the adaptive worker then looks
        // a tick at a time until the report stuck for the delay.
        let mut passes = if tun.policy == Policy::Adaptive { 2 } else { 1 };
        let mut reporting_passes = passes;
        while c.reporting_state() != ReportingState::Idle {
            assert!(passes < 64, "reporting did not settle");
            let (done, _) = run_pass(&mut c, true);
            reporting_passes += usize::from(!done.is_empty());
            passes += 1;
        }
        assert_eq!(reporting_passes, want_passes, "{:?}", tun.policy);
        if tun.policy == Policy::Adaptive {
            assert_eq!(passes, 1 + 4, "the first report's probation: four ticks");
        }
        assert_eq!(c.reporting_stats().passes - passes_before, passes as u64);
        assert_eq!(c.stats().reported_pages, c.stats().free_pages);
    }
}

/// Rule 2's churn signal is reported memory taken back faster than
/// `churn_pages_per_s` (128 MiB/s, 256 MiB over the delay), not allocation
/// as such: right after 512 MiB was reported, a zone that allocates 64 MiB
/// that was never reported (a build growing) keeps its pace, and so does
/// one that takes 64 MiB of the reported memory back (a build's next step
/// after a fall: the report saved the rest); one that takes 320 MiB of it
/// back (a cycle) backs off: its blocks must stay free for its whole
/// needed time, twice the delay, instead of a tick.
#[test]
fn only_taking_back_reported_memory_fast_is_churn() {
    let mut ticks_to_report = Vec::new();
    for (take_reported, blocks) in [(false, 16), (true, 16), (true, 80)] {
        let tun = adaptive();
        let (mut c, keep) = half_reported(tun);
        if !take_reported {
            // Free 64 MiB more: at the heads of the lists, where the next
            // allocations come from.
            for &pfn in &keep[..16] {
                c.free(Z0, pfn, MAX_ORDER).unwrap();
            }
        }
        let reported = c.stats().reported_pages;
        let cycle: Vec<u64> = (0..blocks)
            .map(|_| c.alloc(Z0, MAX_ORDER).unwrap())
            .collect();
        let taken = reported - c.stats().reported_pages;
        assert_eq!(
            taken,
            if take_reported {
                blocks << MAX_ORDER
            } else {
                0
            },
            "reported pages taken"
        );
        for pfn in cycle {
            c.free(Z0, pfn, MAX_ORDER).unwrap();
        }
        ticks_to_report.push(ticks_until_reported(&mut c, tun, 64));
        c.check_invariants().unwrap();
    }
    // A tick old at the second tick; backed off, eight ticks old (two
    // delays) at the ninth.
    assert_eq!(ticks_to_report, [2, 2, 9]);
}

/// Rule 2 reads take-back as churn only of memory a client freed: the boot
/// pass reports memory nobody has held yet, and a guest's first touch of
/// all of it takes it back whatever the policy does. Its next free comes
/// back a tick later, as in a zone that never churned; a second cycle of
/// the same memory is churn.
#[test]
fn taking_back_the_boot_report_is_not_churn() {
    let tun = adaptive();
    let (mut c, boot) = core(&[zone(0x40000, GIB_PAGES)], Some(tun));
    assert!(boot.arm_timer_ns().is_some(), "the boot pass is requested");
    let (done, _) = run_pass(&mut c, true);
    assert!(!done.is_empty(), "boot memory is cold");
    let mut ticks = Vec::new();
    for _round in 0..2 {
        let held: Vec<u64> = std::iter::from_fn(|| c.alloc(Z0, MAX_ORDER).ok()).collect();
        assert_eq!(c.stats().reported_pages, 0, "everything taken back");
        for pfn in held {
            c.free(Z0, pfn, MAX_ORDER).unwrap();
        }
        ticks.push(ticks_until_reported(&mut c, tun, 64));
    }
    // A tick old at the second tick. Then 1 GiB taken back, four times
    // what 128 MiB/s allows over the delay: backed off two steps, so four
    // delays old (16 ticks) at the seventeenth.
    assert_eq!(ticks, [2, 17]);
    c.check_invariants().unwrap();
}

/// Rule 2's hysteresis: a zone that takes reported pages back right after
/// a report (churn) needs its blocks free for `delay << step` before they
/// are reported again: one step, and one more per doubling of the allowed
/// rate, up to `backoff_max`; once a report sticks for that long, it needs
/// one step less. With `backoff_max = 0` its blocks are reported a tick
/// after they were freed whatever it did.
#[test]
fn churning_zone_backs_off_and_comes_back() {
    for backoff_max in [0u8, 2] {
        let tun = Tunables {
            backoff_max,
            capacity: 4,
            // 16 MiB/s, 32 MiB over the delay: 256 MiB taken back is eight
            // times that at no back-off (three steps), twice at two.
            churn_pages_per_s: 4096,
            ..adaptive()
        };
        let (mut c, _keep) = half_reported(tun);
        // Three rounds of churn: each reallocates 256 MiB of what was just
        // reported and frees it, then stays quiet.
        for round in 1..=3u32 {
            let cycle: Vec<u64> = (0..64).map(|_| c.alloc(Z0, MAX_ORDER).unwrap()).collect();
            for pfn in cycle {
                c.free(Z0, pfn, MAX_ORDER).unwrap();
            }
            // The report is on probation: the worker is still looking,
            // a quarter delay at a time.
            assert!(c.timer_armed(), "round {round}: still looking");
            let ticks = ticks_until_reported(&mut c, tun, 4 << 8);
            // The first tick sees the churn; the blocks are then a tick
            // old a tick later, or `delay << step` old (4 << step ticks).
            let step = u32::from(backoff_max.min(3));
            let want = if step == 0 { 2 } else { 1 + (4 << step) };
            assert_eq!(ticks, want, "round {round}, backoff_max {backoff_max}");
        }
        // Quiet from now: the reports stick and the zone comes back one
        // step per report, to one delay; the worker then goes idle.
        run_until_idle(&mut c, 256);
        let (free, reported) = free_and_reported(&c, tun.reporting_order);
        assert_eq!(reported, free);
        c.check_invariants().unwrap();
    }
}

/// Rule 0's walk passes over what was freed in the last tick. The
/// workload holds a 64 MiB working set that it frees just before each of
/// the worker's looks and allocates again just after (a cycle), and 64 MiB
/// it freed once and never touches again. Linux's walk starts at the list
/// heads, where the cycle's blocks are, so the cycle keeps taking reported
/// memory back; the adaptive policy reports the cold 64 MiB and never the
/// cycle.
#[test]
fn busy_zone_reports_what_stays_free_not_what_it_cycles() {
    for tun in [adaptive(), linux()] {
        let (mut c, mut keep) = half_reported(tun);
        let first_cycle = keep.split_off(keep.len() - 16);
        let cold = keep.split_off(keep.len() - 16);
        for &pfn in &cold {
            c.free(Z0, pfn, MAX_ORDER).unwrap();
        }
        // The cycle is running: it allocated since the worker's last look.
        for &pfn in &first_cycle {
            c.free(Z0, pfn, MAX_ORDER).unwrap();
        }
        let mut cycle: Vec<u64> = (0..16).map(|_| c.alloc(Z0, MAX_ORDER).unwrap()).collect();
        let mut taken_back = 0;
        for _ in 0..32 {
            for &pfn in &cycle {
                c.free(Z0, pfn, MAX_ORDER).unwrap();
            }
            run_pass(&mut c, true);
            let reported = c.stats().reported_pages;
            cycle = (0..16).map(|_| c.alloc(Z0, MAX_ORDER).unwrap()).collect();
            taken_back += reported - c.stats().reported_pages;
            c.check_invariants().unwrap();
        }
        if tun.policy == Policy::Adaptive {
            // LIFO: unreported, the cycle got its own blocks back each time.
            cycle.sort_unstable();
            let mut first = first_cycle;
            first.sort_unstable();
            assert_eq!(cycle, first);
        }
        let cold_reported = c
            .free_list(Z0, MAX_ORDER)
            .unwrap()
            .filter(|&(pfn, reported)| reported && cold.contains(&pfn))
            .count();
        if tun.policy == Policy::Adaptive {
            assert_eq!(taken_back, 0, "the cycle was never reported");
            assert_eq!(cold_reported, cold.len(), "the cold blocks were");
            assert!(c.reporting_stats().young_skips > 0);
        } else {
            assert!(taken_back >= 16 << MAX_ORDER, "Linux reports the cycle");
        }
    }
}

/// Rule 0 whatever the zone does: a zone that allocates 64 MiB and frees
/// it again between every two looks (busy) still has the half of its
/// memory it freed reported in full once it stayed free for a tick, and
/// never the cycle's blocks, which were freed a moment before each look;
/// Linux's first pass, a delay after the free, sends a budget's worth.
#[test]
fn busy_zone_has_its_cold_blocks_reported_without_budget() {
    // 64 MiB allocated and freed (the guest cycles memory): the zone is
    // busy at the worker's next look. The blocks come back LIFO.
    let cycle = |c: &mut MemCore<'_>| {
        let blocks: Vec<u64> = (0..16).map(|_| c.alloc(Z0, MAX_ORDER).unwrap()).collect();
        for &pfn in &blocks {
            c.free(Z0, pfn, MAX_ORDER).unwrap();
        }
        blocks
    };
    let first_passes = |tun: Tunables| {
        let (mut c, held) = booted_and_allocated(tun, GIB_PAGES);
        for &pfn in &held[held.len() / 2..] {
            c.free(Z0, pfn, MAX_ORDER).unwrap();
        }
        cycle(&mut c);
        let (first, _) = run_pass(&mut c, true);
        let blocks = cycle(&mut c);
        let (second, _) = run_pass(&mut c, true);
        (c, first, second, blocks)
    };
    // Linux's first pass, a delay after the free.
    let (_, linux_first, _, _) = first_passes(linux());
    let linux_reported: u64 = linux_first.iter().map(|b| b.pages()).sum();
    assert!(linux_reported > 0);
    let tun = adaptive();
    let (c, first, second, cycled) = first_passes(tun);
    // The first tick: only the block whose free armed the timer is a tick
    // old.
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(c.reporting_stats().young_skips > 0);
    assert!(!second.is_empty());
    let (free, reported) = free_and_reported(&c, MAX_ORDER);
    let cycle_pages = (cycled.len() as u64) << MAX_ORDER;
    assert_eq!(reported, free - cycle_pages, "everything but the cycle");
    assert!(
        reported > linux_reported,
        "Linux's first pass: a budget's worth, {linux_reported} pages"
    );
    for pfn in cycled {
        let (_, st) = c.block_of(pfn).unwrap();
        assert_eq!(st, BlockState::Free { reported: false }, "{pfn:#x}");
    }
    c.check_invariants().unwrap();
}

/// Rule 1 during a pass: a zone quiet for the delay has everything free
/// reported, what it freed a moment ago too; if it allocates again while
/// a batch is with the host, its walk stops at once and the rest waits for
/// rule 0 (or the zone to be quiet again). A trickle below `busy_pages`
/// does not stop it.
#[test]
fn allocation_during_a_pass_backs_off() {
    let tun = Tunables {
        capacity: 4,
        ..adaptive()
    };
    for (alloc_order, backs_off) in [(0u8, false), (MAX_ORDER, true)] {
        let (mut c, mut held) = booted_and_allocated(tun, GIB_PAGES);
        // 32 MiB freed and reported (above the zone's threshold): its
        // probation keeps the worker looking, a tick at a time, while the
        // zone stays quiet.
        for pfn in held.split_off(held.len() - 8) {
            c.free(Z0, pfn, MAX_ORDER).unwrap();
        }
        for _ in 0..4 {
            run_pass(&mut c, true);
        }
        assert!(c.timer_armed());
        // Quiet for the delay at the next look: the rest, freed now.
        for pfn in held {
            c.free(Z0, pfn, MAX_ORDER).unwrap();
        }
        let acts = c.timer_expired();
        assert_eq!(acts.batches().len(), 1, "one batch in flight");
        // 1 page, or 1 GiB / 256 * 3 = 12 MiB > busy_pages (8 MiB).
        for _ in 0..3 {
            c.alloc(Z0, alloc_order).unwrap();
        }
        let id = acts.batches()[0];
        let more = c.report_completed(id, true).unwrap();
        let stats = c.reporting_stats();
        if backs_off {
            assert!(more.batches().is_empty(), "walk stopped");
            assert_eq!(stats.back_offs, 1);
            assert_eq!(c.reporting_state(), ReportingState::Requested);
            assert!(!c.pass_running());
            assert!(c.stats().reported_pages < c.stats().free_pages / 2);
        } else {
            assert_eq!(more.batches().len(), 1, "a trickle does not stop it");
            assert_eq!(stats.back_offs, 0);
        }
        c.check_invariants().unwrap();
    }
}

/// Rule 3: blocks freed below the reporting order (every other page of
/// 32 MiB) come back once the zone stayed quiet for `age_ns`, never before,
/// and never under Linux's rules.
#[test]
fn small_blocks_come_back_after_ageing() {
    // Small batches keep the zone's watermark threshold below 16 MiB.
    for tun in [adaptive(), linux()].map(|t| Tunables { capacity: 4, ..t }) {
        let (mut c, held) = booted_and_allocated(tun, 16384);
        // Split 32 MiB into pages, settle, and free every other one.
        for &pfn in &held[..8] {
            c.free(Z0, pfn, MAX_ORDER).unwrap();
        }
        let mut pages = Vec::new();
        while let Ok(pfn) = c.alloc(Z0, 0) {
            pages.push(pfn);
        }
        run_until_idle(&mut c, 64);
        let freed: Vec<u64> = pages.iter().copied().filter(|p| p % 2 == 0).collect();
        let mut acts = Actions::default();
        for &pfn in &freed {
            acts.merge(&c.free(Z0, pfn, 0).unwrap());
        }
        let small = freed.len() as u64;
        if tun.policy == Policy::Linux {
            assert_eq!(acts.arm_timer_ns(), None, "small frees do not request");
            assert_eq!(c.reporting_state(), ReportingState::Idle);
            continue;
        }
        assert_eq!(
            acts.arm_timer_ns(),
            Some(tun.delay_ns / 4),
            "small frees request"
        );
        // A tick later, not aged yet: nothing small is reported.
        let (done, _) = run_pass(&mut c, true);
        assert!(done.iter().all(|b| b.order >= tun.reporting_order));
        let mut elapsed = tun.delay_ns / 4;
        while c.zone_stats(Z0).unwrap().reported_pages < small {
            assert!(c.timer_armed(), "the worker keeps looking");
            let (done, _) = run_pass(&mut c, true);
            elapsed += tun.delay_ns / 4;
            if !done.is_empty() {
                assert!(elapsed >= tun.age_ns, "aged before reported");
                assert!(done.iter().all(|b| b.order == 0));
            }
        }
        assert_eq!(elapsed, tun.age_ns);
        run_until_idle(&mut c, 8);
        c.check_invariants().unwrap();
    }
}

/// The system's default is the adaptive policy with Linux's numbers.
#[test]
fn adaptive_defaults() {
    let t = Tunables::adaptive();
    assert_eq!(t.policy, Policy::Adaptive);
    assert_eq!(
        Tunables {
            policy: Policy::Linux,
            ..t
        },
        Tunables::default()
    );
    assert_eq!(t.quiet_order, 0);
    assert_eq!(t.age_ns, 2 * t.delay_ns);
    assert!(t.validate().is_ok());
}

/// A free that merges with a reported buddy makes a block the host has
/// partly discarded. The adaptive policy puts it at the tail of its list,
/// so the next allocation of that order takes a fully resident block and
/// faults nothing back in; Linux puts it at the head and the allocation
/// takes it (a churning workload wanders into discarded memory that way).
#[test]
fn a_block_merged_with_a_reported_buddy_is_allocated_last() {
    for (tun, takes_merged) in [(adaptive(), false), (linux(), true)] {
        let (mut c, _) = core(&[zone(0x40000, GIB_PAGES)], Some(tun));
        let mut held = Vec::new();
        while let Ok(pfn) = c.alloc(Z0, MAX_ORDER - 1) {
            held.push(pfn);
        }
        run_until_idle(&mut c, 64);
        held.sort_unstable();
        // Order-9 buddies: (lower, upper) halves of each order-10 block.
        let pairs: Vec<(u64, u64)> = held.chunks(2).map(|p| (p[0], p[1])).collect();
        assert!(
            pairs
                .iter()
                .all(|&(lo, hi)| hi == lo + 512 && lo % 1024 == 0)
        );
        // The lower halves of the first 128 pairs are freed and reported
        // (the zone quiet for the delay); their buddies stay allocated.
        for &(lo, _) in &pairs[..128] {
            c.free(Z0, lo, MAX_ORDER - 1).unwrap();
        }
        while c.timer_armed() {
            run_pass(&mut c, true);
        }
        assert_eq!(c.zone_stats(Z0).unwrap().reported_pages, 128 * 512);
        // A fully resident order-10 block: both halves of pair 200 freed.
        let (lo, hi) = pairs[200];
        c.free(Z0, lo, MAX_ORDER - 1).unwrap();
        c.free(Z0, hi, MAX_ORDER - 1).unwrap();
        // Then pair 0's upper half, which merges with its reported buddy.
        c.free(Z0, pairs[0].1, MAX_ORDER - 1).unwrap();
        c.check_invariants().unwrap();
        let got = c.alloc(Z0, MAX_ORDER).unwrap();
        let merged = pairs[0].0;
        assert_eq!(
            got == merged,
            takes_merged,
            "{:?}: took {got:#x}",
            tun.policy
        );
        assert_eq!(got, if takes_merged { merged } else { lo });
        c.check_invariants().unwrap();
    }
}

/// The adaptive policy keeps the Reported flag through a split: the halves
/// the allocation did not take are still discarded by the host, so they
/// stay Reported and are not reported again, and only the allocated page
/// counts as taken back (the churn signal). Linux drops the flag with the
/// block: its halves look resident.
#[test]
fn the_halves_of_a_split_reported_block_stay_reported() {
    for (tun, kept) in [(adaptive(), true), (linux(), false)] {
        // Every free block Reported, the rest allocated.
        let (mut c, _) = half_reported(tun);
        while c.timer_armed() {
            run_pass(&mut c, true);
        }
        let s = c.zone_stats(Z0).unwrap();
        assert_eq!(s.reported_pages, s.free_pages);
        let pfn = c.alloc(Z0, 0).unwrap();
        let taken = s.reported_pages - c.zone_stats(Z0).unwrap().reported_pages;
        assert_eq!(taken, if kept { 1 } else { 1024 }, "{:?}", tun.policy);
        let (b, st) = c.block_of(pfn ^ 1).unwrap();
        assert_eq!(
            b,
            Block {
                pfn: pfn ^ 1,
                order: 0
            }
        );
        assert_eq!(st, BlockState::Free { reported: kept }, "{:?}", tun.policy);
        c.check_invariants().unwrap();
    }
}

/// When an order has only Reported blocks, the adaptive policy splits a
/// larger resident block rather than fault discarded memory back in;
/// Linux takes the smallest fitting block, whatever the host did with it.
#[test]
fn allocation_splits_resident_memory_before_it_takes_discarded_memory() {
    for (tun, resident) in [(adaptive(), true), (linux(), false)] {
        let (mut c, keep) = half_reported(tun);
        // A split leaves one block on every order below 10: the page
        // beside the allocated one is discarded (Reported under adaptive).
        let first = c.alloc(Z0, 0).unwrap();
        // One order-10 block the guest used comes back: resident.
        c.free(Z0, keep[0], MAX_ORDER).unwrap();
        let reported = c.zone_stats(Z0).unwrap().reported_pages;
        let got = c.alloc(Z0, 0).unwrap();
        if resident {
            assert_eq!(got, keep[0], "the resident block is split");
            assert_eq!(c.zone_stats(Z0).unwrap().reported_pages, reported);
        } else {
            assert_eq!(got, first ^ 1, "Linux takes the discarded page");
        }
        c.check_invariants().unwrap();
    }
}

/// On a platform that leaves RAM untouched at boot (the host platform's
/// memfds; `pd::REGIONS_UNTOUCHED_AT_BOOT`), the adaptive core starts with
/// every block Reported: its boot pass has nothing to report, and memory a
/// guest frees is allocated again before memory the host never backed.
/// Linux, the control, cannot know and reports all of it at boot.
#[test]
fn untouched_boot_memory_starts_reported_and_is_allocated_after_freed_memory() {
    for (tun, untouched) in [(adaptive(), true), (linux(), false)] {
        let (mut c, _) = core(&[zone(0x40000, GIB_PAGES)], Some(tun));
        c.boot_memory_untouched();
        let reported = c.zone_stats(Z0).unwrap().reported_pages;
        assert_eq!(reported, if untouched { u64::from(GIB_PAGES) } else { 0 });
        // The guest touches one page and frees it: it merges back with its
        // (discarded) buddies into a block that is partly resident.
        let page = c.alloc(Z0, 0).unwrap();
        c.free(Z0, page, 0).unwrap();
        c.check_invariants().unwrap();
        // Its next allocation takes that block again, not untouched memory
        // (under Linux, LIFO does the same here).
        assert_eq!(c.alloc(Z0, 0).unwrap(), page);
        // The boot pass, a delay after boot: the zone was quiet that long.
        let (done, _) = run_pass(&mut c, true);
        let boot_report: u64 = done.iter().map(|b| b.pages()).sum();
        if untouched {
            // Only what the split of the partly resident block left of the
            // reporting order: its upper half (its smaller halves are below
            // the order, and unreported, as the block was).
            assert_eq!(
                done,
                [Block {
                    pfn: page + 512,
                    order: 9
                }]
            );
        } else {
            // Linux's first pass: a budget's worth of the untouched
            // memory, sent to the host for nothing.
            assert!(boot_report >= u64::from(GIB_PAGES) / 16, "{boot_report}");
        }
        c.check_invariants().unwrap();
    }
}
