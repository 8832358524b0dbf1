//! Nested reporting through the server, behind real rings: a VMM and a
//! balloon played by the test, the VMM well-behaved and hostile.

mod common;

use common::vmm::{VM, sys};
use memserver::nested::MAX_REPORTS;
use memserver_api::{self as api, Block, FromBalloon, ToVmm, VmRefuse};

#[test]
fn a_report_goes_to_the_balloon_and_its_completion_back_to_the_vmm() {
    let mut s = sys(true);
    let native = s.server.core().stats();
    // 2 MiB at page 512 and 4 MiB at page 2048 of the VM's RAM.
    s.report(7, &[(512, 512), (2048, 1024)]);
    assert!(s.answers().is_empty(), "answered before the host had it");
    let blocks = s.complete_all(true);
    let pages: u64 = blocks.iter().map(Block::pages).sum();
    assert_eq!(pages, 1536);
    assert!(
        blocks
            .iter()
            .all(|b| b.pfn >= VM.pfn && b.pfn + b.pages() <= VM.pfn + VM.pages)
    );
    assert!(blocks.contains(&Block {
        pfn: VM.pfn + 512,
        order: 9
    }));
    assert_eq!(s.answers(), vec![ToVmm::ReportDone { id: 7, ok: true }]);
    let c = s.server.vmm_counters().unwrap();
    assert_eq!(c.nested.reports, 1);
    assert_eq!(c.nested.reported_pages, 1536);
    // The native zone did not move.
    assert_eq!(s.server.core().stats(), native);
}

#[test]
fn one_nested_batch_is_in_flight_at_a_time() {
    let mut s = sys(true);
    // 16 blocks of 2 MiB, 8 per batch (the device's capacity).
    let ranges: Vec<(u64, u64)> = (0..16).map(|i| (i * 1024, 512)).collect();
    s.report(1, &ranges);
    let first = s.batches();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1.len(), 8);
    s.balloon(FromBalloon::ReportDone {
        batch: first[0].0,
        ok: true,
    });
    assert!(s.answers().is_empty(), "half a report is not done");
    let second = s.batches();
    assert_eq!(second.len(), 1);
    s.balloon(FromBalloon::ReportDone {
        batch: second[0].0,
        ok: true,
    });
    assert_eq!(s.answers(), vec![ToVmm::ReportDone { id: 1, ok: true }]);
}

#[test]
fn hostile_reports_are_refused_and_change_nothing() {
    let mut s = sys(true);
    let native = s.server.core().stats();
    let refused = |id, reason| ToVmm::Refused {
        id: Some(id),
        reason,
    };
    // Past the VM's RAM, straddling its end, empty, overlapping itself.
    s.report(1, &[(VM.pages, 512)]);
    s.report(2, &[(VM.pages - 256, 512)]);
    s.report(3, &[(0, 0)]);
    s.report(4, &[(0, 512), (256, 512)]);
    // A page index that takes the frame past the physical address space.
    s.report(5, &[(api::MAX_PFN - 1024, 512)]);
    assert_eq!(
        s.answers(),
        vec![
            refused(1, VmRefuse::OutsideRam),
            refused(2, VmRefuse::OutsideRam),
            refused(3, VmRefuse::Empty),
            refused(4, VmRefuse::Overlap),
            refused(5, VmRefuse::OutsideRam),
        ]
    );
    // Garbage and another version.
    s.to_server.push(&[1, 0xff, 0xff, 0xff]).unwrap();
    s.to_server.push(&[9, 0, 1]).unwrap();
    s.server.vmm_notified();
    assert_eq!(
        s.answers(),
        vec![
            ToVmm::Refused {
                id: None,
                reason: VmRefuse::Malformed
            },
            ToVmm::Refused {
                id: None,
                reason: VmRefuse::UnsupportedVersion
            },
        ]
    );
    // A flood: MAX_REPORTS in flight, then Busy; a reused id refused.
    for id in 0..MAX_REPORTS as u32 {
        s.report(100 + id, &[(u64::from(id) * 1024, 512)]);
    }
    s.report(100, &[(8192, 512)]);
    s.report(200, &[(9216, 512)]);
    assert_eq!(
        s.answers(),
        vec![
            refused(100, VmRefuse::DuplicateId),
            refused(200, VmRefuse::Busy)
        ]
    );
    assert_eq!(s.batches().len(), 1, "no more than one batch in flight");
    assert_eq!(s.server.core().stats(), native);
    s.server.core().check_invariants().unwrap();
}

#[test]
fn a_completion_the_balloon_invents_is_refused() {
    let mut s = sys(true);
    s.report(1, &[(0, 512)]);
    let b = s.batches();
    s.balloon(FromBalloon::ReportDone {
        batch: b[0].0 ^ 1,
        ok: true,
    });
    assert!(s.answers().is_empty());
    assert_eq!(s.server.counters().balloon_refused, 1);
    s.balloon(FromBalloon::ReportDone {
        batch: b[0].0,
        ok: true,
    });
    assert_eq!(s.answers(), vec![ToVmm::ReportDone { id: 1, ok: true }]);
}

#[test]
fn a_device_reset_fails_the_nested_batch() {
    let mut s = sys(true);
    s.report(3, &[(0, 512)]);
    assert_eq!(s.batches().len(), 1);
    s.balloon(FromBalloon::DeviceReset);
    assert_eq!(s.answers(), vec![ToVmm::ReportDone { id: 3, ok: false }]);
    assert_eq!(s.server.vmm_counters().unwrap().nested.failed_reports, 1);
    // The VM may report the same pages again.
    s.report(4, &[(0, 512)]);
    assert_eq!(s.batches().len(), 1);
}

#[test]
fn without_reporting_every_report_is_refused_at_once() {
    let mut s = sys(false);
    s.report(1, &[(0, 512)]);
    assert_eq!(
        s.answers(),
        vec![ToVmm::Refused {
            id: Some(1),
            reason: VmRefuse::NoReporting
        }]
    );
    assert!(s.batches().is_empty());
    // And a device that stops reporting fails what was not sent.
    let mut s = sys(true);
    s.report(1, &[(0, 512)]);
    s.report(2, &[(1024, 512)]);
    assert_eq!(s.batches().len(), 1);
    s.balloon(FromBalloon::DeviceLimits { report_capacity: 0 });
    assert_eq!(s.answers(), vec![ToVmm::ReportDone { id: 2, ok: false }]);
}
