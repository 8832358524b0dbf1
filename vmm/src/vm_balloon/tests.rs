use super::*;
use memserver_api::VmRefuse;

const GPA: u64 = 0x4000_0000;
const SIZE: u64 = 0x1000_0000;
const FIRST: u32 = (GPA / PAGE_SIZE) as u32;

#[test]
fn runs_of_frames_become_ranges_of_pages() {
    let pfns = [FIRST + 10, FIRST + 11, FIRST + 12, FIRST + 5, FIRST + 4];
    let parts = ranges(&pfns, GPA, SIZE).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(
        parts[0].as_slice(),
        [
            VmRange { page: 10, pages: 3 },
            VmRange { page: 5, pages: 1 },
            VmRange { page: 4, pages: 1 },
        ]
    );
    // 256 scattered frames: 256 ranges in 8 messages.
    let scattered: Vec<u32> = (0..256).map(|i| FIRST + 2 * i).collect();
    let parts = ranges(&scattered, GPA, SIZE).unwrap();
    assert_eq!(parts.len(), MAX_PARTS);
    assert!(parts.iter().all(|p| p.len() == VM_REPORT_RANGES));
    for bad in [FIRST - 1, FIRST + (SIZE / PAGE_SIZE) as u32] {
        assert_eq!(ranges(&[FIRST, bad], GPA, SIZE), Err(NotRam(bad)));
    }
}

#[test]
fn a_deflate_is_given_back_once_every_part_is_answered() {
    let mut d = Deflates::default();
    let scattered: Vec<u32> = (0..64).map(|i| FIRST + 2 * i).collect();
    let parts = d.send(7, &scattered, GPA, SIZE).unwrap();
    assert_eq!(parts.len(), 2);
    let ids: Vec<u32> = parts
        .iter()
        .map(|p| match p {
            FromVmm::Deflated { id, .. } => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, [7 << 4, 7 << 4 | 1]);
    // The same head again while held: given back, not sent.
    assert_eq!(d.send(7, &scattered, GPA, SIZE), Err(None));
    assert_eq!(d.answer(&ToVmm::DeflateDone { id: ids[1] }), None);
    assert_eq!(d.answer(&ToVmm::DeflateDone { id: ids[1] }), None, "twice");
    assert_eq!(
        d.answer(&ToVmm::BalloonRefused {
            id: Some(ids[0]),
            reason: VmRefuse::BalloonState
        }),
        Some(7)
    );
    assert!(d.is_empty());
    assert_eq!(d.answer(&ToVmm::DeflateDone { id: ids[0] }), None);
    assert_eq!(d.counters.stray_answers, 2);
    assert_eq!(d.counters.refused_deflates, 1);
    // Answers for nothing held, or not deflate answers at all.
    assert_eq!(d.answer(&ToVmm::DeflateDone { id: u32::MAX }), None);
    assert_eq!(d.answer(&ToVmm::StatsRequest), None);
}

#[test]
fn a_chain_outside_the_ram_is_not_held() {
    let mut d = Deflates::default();
    assert_eq!(
        d.send(1, &[FIRST - 1], GPA, SIZE),
        Err(Some(NotRam(FIRST - 1)))
    );
    assert!(d.is_empty());
    assert_eq!(d.counters.not_ram, 1);
}

#[test]
fn stats_come_in_pages() {
    let m = stats(&[
        (tag::MEMTOT, 256 << 20),
        (tag::MEMFREE, 100 << 20),
        (9, 1),
        (tag::AVAIL, 200 << 20),
    ]);
    assert_eq!(
        m,
        FromVmm::Stats(VmStats {
            total_pages: Some(65536),
            free_pages: Some(25600),
            available_pages: Some(51200),
        })
    );
}
