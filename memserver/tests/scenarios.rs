//! One scenario per Linux page-reporting behaviour of issue 2 / DESIGN §2.

mod common;

use common::*;
use memserver::{Block, BlockState, MAX_ORDER, ReportingState, Tunables};

const GIB_PAGES: u32 = 262_144;

/// Tunables for small zones: report order-10 blocks (which never merge, so
/// list order is easy to follow), `cap` per batch, no watermark.
fn small(cap: u16, divisor: u32) -> Tunables {
    Tunables {
        reporting_order: MAX_ORDER,
        capacity: cap,
        budget_divisor: divisor,
        low_watermark_pages: 0,
        ..Tunables::default()
    }
}

#[test]
fn defaults_are_linux_values() {
    let t = Tunables::default();
    assert_eq!(t.reporting_order, 9);
    assert_eq!(t.delay_ns, 2_000_000_000);
    assert_eq!(t.capacity, 32);
    assert_eq!(t.budget_divisor, 16);
    assert_eq!(t.max_in_flight, 1);
    assert!(t.validate().is_ok());
}

/// Reporting starts by itself: everything free (of at least the reporting
/// order) is reported after the first delay, in as many passes as the
/// budget needs. Uses Linux's defaults on a 1 GiB zone with unaligned edges.
#[test]
fn everything_free_is_reported_after_boot() {
    let (mut c, acts) = core(&[zone(0x40003, GIB_PAGES)], Some(Tunables::default()));
    assert_eq!(
        acts.arm_timer_ns(),
        Some(2_000_000_000),
        "boot arms the delay"
    );
    assert!(
        acts.batches().is_empty(),
        "nothing reported before the delay"
    );
    assert_eq!(c.reporting_state(), ReportingState::Requested);
    assert_eq!(c.stats().reported_pages, 0);

    let passes = run_until_idle(&mut c, 64);
    // 255 order-10 blocks: budget ceil(255 / 512) = 1, and Linux's
    // `budget < 0` check lets a list send budget + 1 = 2 batches (64
    // blocks) per pass, so 4 passes; the order-9 edge blocks go with them.
    assert_eq!(passes, 4);
    let s = c.stats();
    let big: u64 = (9..=MAX_ORDER as usize)
        .map(|o| s.free_blocks[o] << o)
        .sum();
    assert_eq!(s.reported_pages, big, "every block of order >= 9 reported");
    assert!(s.reported_pages > s.total_pages - 2048);
    assert_eq!(s.isolated_pages, 0);
    // Blocks below the reporting order are never reported.
    let small_reported = (0..9u8)
        .flat_map(|o| c.free_list(Z0, o).unwrap().collect::<Vec<_>>())
        .filter(|(_, r)| *r)
        .count();
    assert_eq!(small_reported, 0);
}

/// Freeing a block of at least reporting_order from IDLE arms the timer for
/// the delay; further frees while REQUESTED do not arm again; smaller
/// frees do not request at all.
#[test]
fn delay_is_armed_only_on_idle_to_requested() {
    let tun = Tunables {
        low_watermark_pages: 0,
        capacity: 4,
        ..Tunables::default()
    };
    let (mut c, _) = core(&[zone(0, 8192)], Some(tun));
    let a = c.alloc(Z0, 9).unwrap();
    let b = c.alloc(Z0, 3).unwrap();
    // Keep b's buddy allocated so freeing b cannot merge up to order 9
    // (a merged free requests with the merged order, as Linux).
    let _b_buddy = c.alloc(Z0, 3).unwrap();
    let d = c.alloc(Z0, 9).unwrap();
    run_until_idle(&mut c, 8);
    assert_eq!(c.reporting_state(), ReportingState::Idle);

    let acts = c.free(Z0, b, 3).unwrap();
    assert!(acts.is_empty(), "order 3 < reporting order: no request");
    assert_eq!(c.reporting_state(), ReportingState::Idle);

    let acts = c.free(Z0, a, 9).unwrap();
    assert_eq!(acts.arm_timer_ns(), Some(2_000_000_000));
    assert_eq!(c.reporting_state(), ReportingState::Requested);
    let acts = c.free(Z0, d, 9).unwrap();
    assert!(acts.is_empty(), "only IDLE -> REQUESTED arms");

    // Nothing is reported until the timer fires.
    assert_eq!(c.stats().isolated_pages, 0);
    let acts = c.timer_expired();
    assert_eq!(acts.batches().len(), 1);
}

/// A request while the worker is ACTIVE does not arm the timer, but the
/// pass re-arms it when it ends.
#[test]
fn request_during_active_reruns() {
    let (mut c, _) = core(&[zone(0, 8 * 1024)], Some(small(2, 16)));
    let held = c.alloc(Z0, 10).unwrap();
    let acts = c.timer_expired();
    assert_eq!(acts.batches().len(), 1);
    assert_eq!(c.reporting_state(), ReportingState::Active);

    let acts = c.free(Z0, held, 10).unwrap();
    assert!(acts.is_empty(), "no timer while ACTIVE");
    assert_eq!(c.reporting_state(), ReportingState::Requested);

    let mut end = Default::default();
    complete_all(&mut c, true, &mut end);
    assert_eq!(
        end.arm_timer_ns(),
        Some(2_000_000_000),
        "re-run after the pass"
    );
    assert!(c.timer_armed());

    // Without a request during the pass, it ends IDLE and arms nothing.
    let (_, end) = run_pass(&mut c, true);
    assert_eq!(end.arm_timer_ns(), None);
    assert_eq!(c.reporting_state(), ReportingState::Idle);
    assert!(!c.timer_armed());
}

/// Running out of budget on a free list leaves REQUESTED, so the rest is
/// reported by a later pass after the delay.
#[test]
fn budget_exhaustion_leaves_requested() {
    // 10 order-10 blocks, capacity 2, divisor 16: budget ceil(10/32) = 1,
    // so the list sends 2 batches (Linux checks `budget < 0`) and stops.
    let (mut c, _) = core(&[zone(0, 10 * 1024)], Some(small(2, 16)));
    let (done, acts) = run_pass(&mut c, true);
    assert_eq!(done.len(), 4, "two full batches of two");
    assert_eq!(c.reporting_stats().budget_exhausted, 1);
    assert_eq!(c.reporting_state(), ReportingState::Requested);
    assert_eq!(acts.arm_timer_ns(), Some(2_000_000_000));
    assert_eq!(c.stats().reported_pages, 4 * 1024);

    let (done, _) = run_pass(&mut c, true);
    assert_eq!(done.len(), 4);
    let (done, _) = run_pass(&mut c, true);
    assert_eq!(done.len(), 2, "the partial last batch is sent too");
    assert_eq!(c.reporting_state(), ReportingState::Idle);
    assert_eq!(c.stats().reported_pages, 10 * 1024);
}

/// A failed report returns its blocks unmarked; they are tried again
/// after the delay and reported then.
#[test]
fn failed_report_is_retried_later() {
    let (mut c, _) = core(&[zone(0, 4 * 1024)], Some(small(4, 16)));
    let acts = c.timer_expired();
    let id = acts.batches()[0];
    let first = c.batch(id).unwrap().to_vec();
    assert_eq!(first.len(), 4);
    let acts = c.report_completed(id, false).unwrap();
    c.check_invariants().unwrap();
    for b in &first {
        assert_eq!(
            c.block_of(b.pfn),
            Some((*b, BlockState::Free { reported: false }))
        );
    }
    assert_eq!(c.reporting_stats().batches_failed, 1);
    assert_eq!(
        acts.arm_timer_ns(),
        Some(2_000_000_000),
        "retry after the delay"
    );
    assert_eq!(c.reporting_state(), ReportingState::Requested);

    let (done, _) = run_pass(&mut c, true);
    let mut a: Vec<_> = done.iter().map(|b| b.pfn).collect();
    let mut b: Vec<_> = first.iter().map(|b| b.pfn).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same blocks are reported on retry");
    assert_eq!(c.stats().reported_pages, 4 * 1024);
    assert_eq!(c.reporting_state(), ReportingState::Idle);
}

/// A zone whose free memory is below low watermark + capacity << order is
/// skipped; other zones are still reported.
#[test]
fn watermark_skips_a_short_zone() {
    let tun = Tunables {
        reporting_order: MAX_ORDER,
        capacity: 2,
        low_watermark_pages: 1024,
        ..Tunables::default()
    };
    // Threshold = 1024 + (2 << 10) = 3072 pages.
    let (mut c, _) = core(&[zone(0, 2 * 1024), zone(1 << 20, 4 * 1024)], Some(tun));
    let (done, _) = run_pass(&mut c, true);
    assert_eq!(c.reporting_stats().watermark_skips, 1);
    assert!(done.iter().all(|b| b.pfn >= 1 << 20), "zone 0 skipped");
    assert_eq!(c.zone_stats(Z0).unwrap().reported_pages, 0);
    assert_eq!(c.zone_stats(Z1).unwrap().reported_pages, 4 * 1024);

    // Allocating zone 1 below the threshold stops its reporting too.
    let x = c.alloc(Z1, 10).unwrap();
    let _ = c.alloc(Z1, 10).unwrap();
    let _ = c.alloc(Z1, 10).unwrap();
    c.free(Z1, x, 10).unwrap(); // requests (order 10); zone 1 has 2048 free
    let (done, _) = run_pass(&mut c, true);
    assert!(done.is_empty());
    assert_eq!(c.reporting_stats().watermark_skips, 3);
}

/// Issue 16: the watermark holds counting everything isolated, not only at
/// the zone's entry. With several batches in flight (or blocks larger than
/// the reporting order) the worker isolated the zone down to zero free
/// pages; as Linux's `__isolate_free_page`, every isolation now keeps the
/// zone's free pages at or above the low watermark.
#[test]
fn watermark_holds_with_every_batch_in_flight() {
    let tun = Tunables {
        reporting_order: 9,
        capacity: 2,
        low_watermark_pages: 1024,
        max_in_flight: 4,
        ..Tunables::default()
    };
    // 8 MiB: threshold 1024 + (2 << 9) = 2048 pages, all free, so the
    // zone is visited; its two order-10 blocks fill one batch and would
    // take all of it. A free of order 9 requests the pass.
    let (mut c, _) = core(&[zone(0, 2048)], Some(tun));
    let held = c.alloc(Z0, 9).unwrap();
    c.free(Z0, held, 9).unwrap();
    assert!(c.timer_armed());
    let _ = c.timer_expired();
    c.check_invariants().unwrap();
    let s = c.zone_stats(Z0).unwrap();
    assert!(
        s.free_pages >= tun.low_watermark_pages,
        "{} pages isolated, {} left free, watermark {}",
        s.isolated_pages,
        s.free_pages,
        tun.low_watermark_pages
    );
    assert!(s.isolated_pages > 0, "something was still reported");
    // Allocation still gets the watermark's worth while the host holds
    // the rest.
    for _ in 0..2 {
        c.alloc(Z0, 9).unwrap();
    }
}

/// Before handing a full batch over, the list is rotated so the first
/// unprocessed block is the head: the walk resumes there, past the
/// Reported blocks it already skipped.
#[test]
fn rotation_resumes_at_first_unprocessed_block() {
    let (mut c, _) = core(&[zone(0, 5 * 1024)], Some(small(2, 16)));
    run_until_idle(&mut c, 8);
    assert_eq!(c.stats().reported_pages, 5 * 1024);
    // Take three blocks from the head and free them: [U2 U1 U0 R3 R4].
    let u: Vec<u64> = (0..3).map(|_| c.alloc(Z0, 10).unwrap()).collect();
    for p in &u {
        c.free(Z0, *p, 10).unwrap();
    }
    // First pass fails: U2 U1 sent, U0 head; the failure puts U2 U1 back
    // unreported at the tail: [U0 R3 R4 U2 U1].
    let acts = c.timer_expired();
    c.report_completed(acts.batches()[0], false).unwrap();
    let list: Vec<_> = c.free_list(Z0, 10).unwrap().collect();
    assert_eq!(
        list.iter().map(|x| x.1).collect::<Vec<_>>(),
        [false, true, true, false, false]
    );
    // Retry: isolate U0, skip R3 R4, isolate U2; the batch is full when U1
    // comes, so U1 becomes the head before the batch goes out.
    let acts = c.timer_expired();
    assert_eq!(acts.batches().len(), 1);
    let list: Vec<_> = c.free_list(Z0, 10).unwrap().collect();
    assert_eq!(list.len(), 3);
    assert_eq!(
        list[0],
        (u[1], false),
        "first unprocessed block is the head"
    );
    assert!(
        list[1].1 && list[2].1,
        "the skipped Reported blocks follow it"
    );
    let mut end = Default::default();
    let done = complete_all(&mut c, true, &mut end);
    assert_eq!(done.len(), 3);
    assert_eq!(c.stats().reported_pages, 5 * 1024);
}

/// Drained blocks go back at the tail and allocation takes the head, so it
/// prefers blocks the host has not discarded.
#[test]
fn drained_blocks_go_to_tail_and_allocation_prefers_unreported() {
    let (mut c, _) = core(&[zone(0, 5 * 1024)], Some(small(2, 16)));
    let acts = c.timer_expired();
    let sent = c.batch(acts.batches()[0]).unwrap().to_vec();
    assert_eq!(sent.len(), 2);
    c.report_completed(acts.batches()[0], true).unwrap();
    // The pass went on with the next batch; stop here and look at the list
    // after the first drain: the reported ones sit at the tail.
    let list: Vec<_> = c.free_list(Z0, 10).unwrap().collect();
    let tail: Vec<_> = list[list.len() - 2..].to_vec();
    assert_eq!(tail, vec![(sent[0].pfn, true), (sent[1].pfn, true)]);
    let mut end = Default::default();
    complete_all(&mut c, true, &mut end);
    // One unreported block remains (budget ran out); allocation takes it
    // before any reported one.
    let unreported: Vec<_> = c
        .free_list(Z0, 10)
        .unwrap()
        .filter(|x| !x.1)
        .map(|x| x.0)
        .collect();
    assert_eq!(unreported.len(), 1);
    let got = c.alloc(Z0, 10).unwrap();
    assert_eq!(got, unreported[0]);
    // The next allocation takes a reported block and clears Reported.
    let before = c.stats().reported_pages;
    let got = c.alloc(Z0, 10).unwrap();
    assert_eq!(c.block_of(got).unwrap().1, BlockState::Allocated);
    assert_eq!(c.stats().reported_pages, before - 1024);
    c.check_invariants().unwrap();
}

/// Merging clears Reported: freeing the buddy of a Reported block yields
/// one unreported block of the next order.
#[test]
fn merge_clears_reported() {
    let tun = Tunables {
        reporting_order: 9,
        capacity: 1,
        low_watermark_pages: 0,
        ..Tunables::default()
    };
    let (mut c, _) = core(&[zone(0, 1024)], Some(tun));
    let a = c.alloc(Z0, 9).unwrap();
    let (done, _) = run_pass(&mut c, true);
    assert_eq!(
        done,
        vec![Block {
            pfn: a ^ 512,
            order: 9
        }]
    );
    assert_eq!(c.stats().reported_pages, 512);
    c.free(Z0, a, 9).unwrap();
    assert_eq!(
        c.block_of(0),
        Some((
            Block { pfn: 0, order: 10 },
            BlockState::Free { reported: false }
        ))
    );
    assert_eq!(c.stats().reported_pages, 0);
    c.check_invariants().unwrap();
}

/// Splitting clears Reported: the half left free is unreported.
#[test]
fn split_clears_reported() {
    let (mut c, _) = core(&[zone(0, 1024)], Some(small(1, 16)));
    let (done, _) = run_pass(&mut c, true);
    assert_eq!(done.len(), 1);
    assert_eq!(c.stats().reported_pages, 1024);
    let p = c.alloc(Z0, 9).unwrap();
    assert_eq!(
        c.block_of(p ^ 512).unwrap().1,
        BlockState::Free { reported: false }
    );
    assert_eq!(c.stats().reported_pages, 0);
}

/// A block that merged while isolated is not marked on drain (Linux marks
/// only a block still free with the same order).
#[test]
fn drained_block_that_merges_is_not_marked() {
    let tun = Tunables {
        reporting_order: 9,
        capacity: 1,
        low_watermark_pages: 0,
        ..Tunables::default()
    };
    let (mut c, _) = core(&[zone(0, 1024)], Some(tun));
    let a = c.alloc(Z0, 9).unwrap();
    let acts = c.timer_expired();
    let id = acts.batches()[0];
    assert_eq!(
        c.batch(id).unwrap(),
        &[Block {
            pfn: a ^ 512,
            order: 9
        }]
    );
    // Free the buddy while the other half is isolated: no merge yet, and
    // no new timer (ACTIVE -> REQUESTED).
    let acts = c.free(Z0, a, 9).unwrap();
    assert!(acts.arm_timer_ns().is_none());
    assert_eq!(c.block_of(a).unwrap().0.order, 9);
    let acts = c.report_completed(id, true).unwrap();
    assert_eq!(
        c.block_of(0),
        Some((
            Block { pfn: 0, order: 10 },
            BlockState::Free { reported: false }
        ))
    );
    assert_eq!(c.reporting_stats().blocks_reported, 1);
    assert_eq!(c.reporting_stats().blocks_marked, 0);
    // The batch was the zone's leftover, sent after the walk had passed
    // order 10; the free during ACTIVE re-requested, so the pass ends by
    // re-arming and the next pass reports the merged block.
    assert_eq!(acts.arm_timer_ns(), Some(2_000_000_000));
    let (done, _) = run_pass(&mut c, true);
    assert_eq!(done, vec![Block { pfn: 0, order: 10 }]);
    assert_eq!(c.stats().reported_pages, 1024);
}

/// Isolated blocks are not allocatable while the host holds them.
#[test]
fn isolated_blocks_are_not_allocatable() {
    let (mut c, _) = core(&[zone(0, 2 * 1024)], Some(small(2, 16)));
    let acts = c.timer_expired();
    assert_eq!(c.batch(acts.batches()[0]).unwrap().len(), 2);
    assert_eq!(c.stats().isolated_pages, 2048);
    assert_eq!(c.alloc(Z0, 0), Err(memserver::Error::NoMemory));
    let mut end = Default::default();
    complete_all(&mut c, true, &mut end);
    assert!(c.alloc(Z0, 0).is_ok());
}

/// The in-flight limit: with 1 (Linux) the next batch waits for the
/// completion; with 2, two go out at once.
#[test]
fn in_flight_limit() {
    for limit in [1u8, 2, 3] {
        let tun = Tunables {
            max_in_flight: limit,
            budget_divisor: 1,
            ..small(1, 1)
        };
        let (mut c, _) = core(&[zone(0, 8 * 1024)], Some(tun));
        let acts = c.timer_expired();
        assert_eq!(acts.batches().len(), usize::from(limit));
        assert_eq!(c.in_flight().count(), usize::from(limit));
        let id = acts.batches()[0];
        let acts = c.report_completed(id, true).unwrap();
        assert_eq!(acts.batches().len(), 1, "one completion frees one slot");
        assert_eq!(c.in_flight().count(), usize::from(limit));
    }
}

/// Frees of small blocks merging into a block of the reporting order
/// request reporting (Linux notifies with the merged order).
#[test]
fn merged_free_requests_reporting() {
    let tun = Tunables {
        low_watermark_pages: 0,
        ..Tunables::default()
    };
    let (mut c, _) = core(&[zone(0, 1024)], Some(tun));
    run_until_idle(&mut c, 4);
    let a = c.alloc(Z0, 8).unwrap();
    let b = c.alloc(Z0, 8).unwrap();
    assert!(c.free(Z0, a, 8).unwrap().is_empty());
    let acts = c.free(Z0, b, 8).unwrap();
    assert_eq!(acts.arm_timer_ns(), Some(2_000_000_000));
}

/// Spurious timer expiries are ignored and counted.
#[test]
fn spurious_timer_is_ignored() {
    let (mut c, _) = core(&[zone(0, 1024)], Some(small(1, 16)));
    run_until_idle(&mut c, 4);
    let before = snapshot(&c);
    assert!(c.timer_expired().is_empty());
    assert_eq!(c.reporting_stats().spurious_timers, 1);
    let mut after = snapshot(&c);
    after.reporting.spurious_timers = 0;
    assert_eq!(before, after);
}

/// With reporting off, nothing is ever requested.
#[test]
fn reporting_off() {
    let (mut c, acts) = core(&[zone(0, 4096)], None);
    assert!(acts.is_empty());
    let p = c.alloc(Z0, 10).unwrap();
    assert!(c.free(Z0, p, 10).unwrap().is_empty());
    assert!(c.timer_expired().is_empty());
    assert_eq!(c.reporting_state(), ReportingState::Idle);
    // Turning it on requests a pass, as a device registering does.
    let acts = c.set_tunables(Some(small(4, 16))).unwrap();
    assert_eq!(acts.arm_timer_ns(), Some(2_000_000_000));
    run_until_idle(&mut c, 4);
    assert_eq!(c.stats().reported_pages, 4096);
}

/// Balloon: inflate takes largest blocks first and stops at the watermark;
/// deflate returns pages (whole blocks or parts) unreported.
#[test]
fn balloon_inflate_deflate() {
    let tun = Tunables {
        low_watermark_pages: 1000,
        ..small(4, 16)
    };
    let (mut c, _) = core(&[zone(0, 4096)], Some(tun));
    let mut out = [Block::default(); 16];
    let n = c.take_for_balloon(Z0, 2049, &mut out).unwrap();
    assert_eq!(
        &out[..n],
        &[
            Block { pfn: 0, order: 10 },
            Block {
                pfn: 1024,
                order: 10
            },
            Block {
                pfn: 2048,
                order: 0
            },
        ]
    );
    assert_eq!(c.stats().ballooned_pages, 2049);
    // Only 4096 - 2049 - 1000 = 1047 more may go.
    let n = c.take_for_balloon(Z0, 100_000, &mut out).unwrap();
    let taken: u64 = out[..n].iter().map(Block::pages).sum();
    assert_eq!(taken, 1047);
    assert_eq!(c.stats().free_pages, 1000);
    assert_eq!(c.take_for_balloon(Z0, 1, &mut out), Ok(0));
    // Deflate one page out of the middle of the first block.
    c.return_from_balloon(Z0, Block { pfn: 37, order: 0 })
        .unwrap();
    assert_eq!(
        c.block_of(37).unwrap().1,
        BlockState::Free { reported: false }
    );
    assert_eq!(c.block_of(36).unwrap().1, BlockState::Ballooned);
    assert_eq!(
        c.block_of(512).unwrap(),
        (Block { pfn: 512, order: 9 }, BlockState::Ballooned)
    );
    c.check_invariants().unwrap();
    // Deflating the same page twice is refused.
    assert_eq!(
        c.return_from_balloon(Z0, Block { pfn: 37, order: 0 }),
        Err(memserver::Error::NotBallooned)
    );
    // Deflating a whole block requests reporting when big enough.
    let acts = c
        .return_from_balloon(
            Z0,
            Block {
                pfn: 1024,
                order: 10,
            },
        )
        .unwrap();
    assert_eq!(c.stats().ballooned_pages, 2049 + 1047 - 1 - 1024);
    let _ = acts;
    c.check_invariants().unwrap();
}
