//! The VM balloon's bookkeeping, by example and against a model.

extern crate std;

use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::vec;
use std::vec::Vec;

const BASE: u64 = 0x4_0000;
const PAGES: u64 = 4096;

fn zone() -> PageRange {
    PageRange {
        pfn: BASE,
        pages: PAGES,
    }
}

fn maps() -> (Vec<u64>, Vec<u64>) {
    let w = bitmap_words(PAGES);
    (vec![0; w], vec![0; w])
}

fn r(page: u64, pages: u64) -> PageRange {
    PageRange {
        pfn: BASE + page,
        pages,
    }
}

fn take_all(b: &mut VmBalloon<'_>, max: u64) -> Vec<Block> {
    let mut out = Vec::new();
    b.take(max, 64, &mut out);
    out
}

#[test]
fn inflated_pages_are_handed_out_as_aligned_blocks_once() {
    let (mut h, mut p) = maps();
    let mut b = VmBalloon::new(zone(), &mut h, &mut p).unwrap();
    assert_eq!(b.want_more(512), Some(512));
    assert_eq!(b.inflated(&[r(0, 256)]), Ok(256));
    assert_eq!(b.inflated(&[r(256, 256)]), Ok(256));
    let blocks = take_all(&mut b, 1 << 20);
    assert_eq!(
        blocks,
        [Block {
            pfn: BASE,
            order: 9
        }]
    );
    assert!(take_all(&mut b, 1 << 20).is_empty(), "handed out twice");
    assert_eq!(
        (b.held_pages(), b.passed_pages(), b.unpassed_pages()),
        (512, 512, 0)
    );
    b.check_invariants().unwrap();
}

#[test]
fn hostile_messages_change_nothing() {
    let (mut h, mut p) = maps();
    let mut b = VmBalloon::new(zone(), &mut h, &mut p).unwrap();
    b.inflated(&[r(10, 1)]).unwrap();
    let before = (b.held_pages(), b.passed_pages(), b.owed_pages());
    let outside = PageRange {
        pfn: BASE - 1,
        pages: 2,
    };
    let past_end = r(PAGES - 1, 2);
    let wraps = PageRange {
        pfn: u64::MAX,
        pages: 2,
    };
    assert_eq!(b.inflated(&[]), Err(VmRefuse::BadLength));
    assert_eq!(b.inflated(&[r(0, 0)]), Err(VmRefuse::Empty));
    assert_eq!(b.inflated(&[outside]), Err(VmRefuse::OutsideRam));
    assert_eq!(b.inflated(&[past_end]), Err(VmRefuse::OutsideRam));
    assert_eq!(b.inflated(&[wraps]), Err(VmRefuse::OutsideRam));
    assert_eq!(b.inflated(&[r(0, 257)]), Err(VmRefuse::TooManyPages));
    // Page 10 is held already; the valid first range is not taken either.
    assert_eq!(
        b.inflated(&[r(0, 4), r(10, 1)]),
        Err(VmRefuse::BalloonState)
    );
    assert_eq!(
        b.inflated(&[r(20, 2), r(21, 1)]),
        Err(VmRefuse::BalloonState)
    );
    assert_eq!(b.deflated(&[r(10, 2)]), Err(VmRefuse::BalloonState));
    assert_eq!(
        b.deflated(&[r(10, 1), r(10, 1)]),
        Err(VmRefuse::BalloonState)
    );
    assert_eq!((b.held_pages(), b.passed_pages(), b.owed_pages()), before);
    assert_eq!(b.counters.refused, 10);
    // Blocks the outer balloon never had are not taken back.
    assert!(!b.can_return(&Block {
        pfn: BASE + 10,
        order: 0
    }));
    assert_eq!(
        b.returned(&Block {
            pfn: BASE + 10,
            order: 0
        }),
        (0, 0)
    );
    b.check_invariants().unwrap();
}

#[test]
fn a_vm_deflating_passed_pages_owes_them_until_the_outer_balloon_returns_some() {
    let (mut h, mut p) = maps();
    let mut b = VmBalloon::new(zone(), &mut h, &mut p).unwrap();
    b.want_more(8);
    b.inflated(&[r(0, 8)]).unwrap();
    assert_eq!(
        take_all(&mut b, 8),
        [Block {
            pfn: BASE,
            order: 3
        }]
    );
    // The outer balloon returns the upper half (a deflate for its target):
    // still held, so free to hand out again, and the VM's target follows.
    assert_eq!(
        b.returned(&Block {
            pfn: BASE + 4,
            order: 2
        }),
        (4, 0)
    );
    assert_eq!(b.settle(), Some(4));
    // The VM deflates pages 0..4 instead (its choice): they are owed.
    assert_eq!(b.deflated(&[r(0, 4)]), Ok(4));
    assert_eq!(b.owed_pages(), 4);
    // The outer balloon gives pages 0..2 back: two owed pages paid.
    assert_eq!(
        b.returned(&Block {
            pfn: BASE,
            order: 1
        }),
        (0, 2)
    );
    assert_eq!(b.owed_pages(), 2);
    // The VM inflates page 2 again: no longer owed.
    b.inflated(&[r(2, 1)]).unwrap();
    assert_eq!(b.owed_pages(), 1);
    b.check_invariants().unwrap();
}

#[test]
fn the_target_grows_by_the_shortfall_and_settles_to_what_the_outer_balloon_holds() {
    let (mut h, mut p) = maps();
    let mut b = VmBalloon::new(zone(), &mut h, &mut p).unwrap();
    assert_eq!(b.want_more(100), Some(100));
    // Asked again for the same shortfall while the VM inflates: no change.
    b.inflated(&[r(0, 40)]).unwrap();
    assert_eq!(b.want_more(60), None);
    assert_eq!(
        b.want_more(PAGES * 2),
        Some(PAGES as u32),
        "capped at the VM's RAM"
    );
    assert_eq!(
        take_all(&mut b, 40).iter().map(Block::pages).sum::<u64>(),
        40
    );
    assert_eq!(b.settle(), Some(40));
    b.check_invariants().unwrap();
}

#[test]
fn too_small_bitmaps_are_refused() {
    let mut h = vec![0u64; 1];
    let mut p = vec![0u64; 1];
    assert!(VmBalloon::new(zone(), &mut h, &mut p).is_none());
}

#[test]
fn stats_are_clamped_to_the_vm() {
    let (mut h, mut p) = maps();
    let mut b = VmBalloon::new(zone(), &mut h, &mut p).unwrap();
    b.take_stats(VmStats {
        total_pages: Some(u64::MAX),
        free_pages: Some(7),
        available_pages: None,
    });
    let s = b.stats().unwrap();
    assert_eq!(s.total_pages, Some(PAGES));
    assert_eq!(s.free_pages, Some(7));
    assert_eq!(s.available_pages, None);
}

#[derive(Debug, Clone)]
enum Op {
    Inflate(u64, u64),
    Deflate(u64, u64),
    Take(u64),
    Return(u64, u8),
}

fn op() -> impl Strategy<Value = Op> {
    let page = 0..PAGES + 8;
    prop_oneof![
        (page.clone(), 1u64..300).prop_map(|(a, n)| Op::Inflate(a, n)),
        (page.clone(), 1u64..300).prop_map(|(a, n)| Op::Deflate(a, n)),
        (1u64..2000).prop_map(Op::Take),
        (page, 0u8..4).prop_map(|(a, o)| Op::Return(a, o)),
    ]
}

proptest! {
    /// Against a model of two page sets: a refused message changes
    /// nothing, a taken one does what it says, only held pages are ever
    /// handed out, and the counts match the bitmaps.
    #[test]
    fn matches_a_model(ops in proptest::collection::vec(op(), 1..80)) {
        let (mut h, mut p) = maps();
        let mut b = VmBalloon::new(zone(), &mut h, &mut p).unwrap();
        let mut held = BTreeSet::new();
        let mut passed = BTreeSet::new();
        for o in ops {
            match o {
                Op::Inflate(a, n) => {
                    let pages: Vec<u64> = (a..a + n).collect();
                    let ok = a + n <= PAGES && n <= 256 && pages.iter().all(|x| !held.contains(x));
                    prop_assert_eq!(b.inflated(&[r(a, n)]).is_ok(), ok);
                    if ok { held.extend(pages); }
                }
                Op::Deflate(a, n) => {
                    let pages: Vec<u64> = (a..a + n).collect();
                    let ok = a + n <= PAGES && n <= 256 && pages.iter().all(|x| held.contains(x));
                    prop_assert_eq!(b.deflated(&[r(a, n)]).is_ok(), ok);
                    if ok { for x in pages { held.remove(&x); } }
                }
                Op::Take(max) => {
                    let mut out = Vec::new();
                    let n = b.take(max, 32, &mut out);
                    prop_assert!(n <= max);
                    prop_assert_eq!(out.iter().map(Block::pages).sum::<u64>(), n);
                    for blk in out {
                        prop_assert_eq!(blk.pfn % blk.pages(), 0);
                        for x in blk.pfn - BASE..blk.pfn - BASE + blk.pages() {
                            prop_assert!(held.contains(&x), "handed out a page the VM uses");
                            prop_assert!(passed.insert(x), "handed out twice");
                        }
                    }
                }
                Op::Return(a, order) => {
                    let blk = Block { pfn: BASE + a, order };
                    let ok = (BASE + a).is_multiple_of(blk.pages())
                        && a + blk.pages() <= PAGES
                        && (a..a + blk.pages()).all(|x| passed.contains(&x));
                    prop_assert_eq!(b.can_return(&blk), ok);
                    if ok {
                        let (still, paid) = b.returned(&blk);
                        let range = a..a + blk.pages();
                        prop_assert_eq!(still, range.clone().filter(|x| held.contains(x)).count() as u64);
                        prop_assert_eq!(paid, blk.pages() - still);
                        for x in range { passed.remove(&x); }
                    }
                }
            }
            b.check_invariants().map_err(TestCaseError::fail)?;
            prop_assert_eq!(b.held_pages(), held.len() as u64);
            prop_assert_eq!(b.passed_pages(), passed.len() as u64);
            prop_assert_eq!(b.owed_pages(), passed.difference(&held).count() as u64);
        }
    }
}
