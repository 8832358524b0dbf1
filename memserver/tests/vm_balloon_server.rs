//! The outer host's balloon target reaching a VM, through the server and
//! real rings (issue 14): the balloon and the VMM are played by the test.

mod common;

use common::vmm::{Sys, VM, sys};
use memserver_api::{Block, FromBalloon, FromVmm, ToBalloon, ToVmm, VmRange, VmRefuse, VmStats};

fn ranges(r: &[(u64, u64)]) -> heapless::Vec<VmRange, 32> {
    r.iter()
        .map(|&(page, pages)| VmRange { page, pages })
        .collect()
}

/// The blocks of every `Inflated` among `msgs`, and whether the last said
/// `last`.
fn inflated(msgs: &[ToBalloon]) -> (Vec<Block>, bool) {
    let mut blocks = Vec::new();
    let mut last = false;
    for m in msgs {
        if let ToBalloon::Inflated {
            blocks: b, last: l, ..
        } = m
        {
            blocks.extend(b.iter().copied());
            last = *l;
        }
    }
    (blocks, last)
}

fn in_vm(b: &Block) -> bool {
    b.pfn >= VM.pfn && b.pfn + b.pages() <= VM.pfn + VM.pages
}

/// Inflate the outer balloon past what the native zone has: the VM is
/// asked for the rest, its pages go to the balloon when it asks again.
/// The VM's blocks the balloon got.
fn inflate_into_the_vm(s: &mut Sys, vm_pages: u64) -> Vec<Block> {
    inflate_native_and_vm(s, vm_pages).1
}

/// As [`inflate_into_the_vm`]: the native blocks and the VM's.
fn inflate_native_and_vm(s: &mut Sys, vm_pages: u64) -> (Vec<Block>, Vec<Block>) {
    let native_free = s.server.core().stats().free_pages;
    let want = native_free + vm_pages;
    let mut got = 0;
    let mut native = Vec::new();
    let mut req = 1;
    // The native zone first (a message holds at most 32 blocks).
    loop {
        s.balloon(FromBalloon::Inflate {
            req,
            pages: (want - got) as u32,
        });
        req += 1;
        let msgs = s.balloon_got();
        let (blocks, last) = inflated(&msgs);
        assert!(blocks.iter().all(|b| !in_vm(b)), "the VM gave nothing yet");
        got += blocks.iter().map(Block::pages).sum::<u64>();
        native.extend(blocks.iter().copied());
        if last || blocks.is_empty() {
            break;
        }
    }
    assert_eq!(got, native_free, "every free native page first");
    // Short: the VM's target is the rest.
    assert_eq!(
        s.answers(),
        [ToVmm::BalloonTarget {
            pages: vm_pages as u32
        }]
    );
    // The VM's OS fills its balloon 256 pages at a time.
    for k in 0..vm_pages / 256 {
        s.vmm(&FromVmm::Inflated {
            ranges: ranges(&[(k * 256, 256)]),
        });
        let msgs = s.balloon_got();
        // Told once that there is more, after the first pages came.
        assert_eq!(
            msgs,
            if k == 0 {
                vec![ToBalloon::MoreToInflate]
            } else {
                vec![]
            }
        );
    }
    assert!(
        s.answers().is_empty(),
        "inflates are answered only when refused"
    );
    s.balloon(FromBalloon::Inflate {
        req,
        pages: vm_pages as u32,
    });
    let (blocks, last) = inflated(&s.balloon_got());
    assert!(last);
    assert!(blocks.iter().all(in_vm));
    assert_eq!(blocks.iter().map(Block::pages).sum::<u64>(), vm_pages);
    (native, blocks)
}

#[test]
fn the_outer_target_reaches_the_vm_and_its_pages_reach_the_balloon() {
    let mut s = sys(true);
    let blocks = inflate_into_the_vm(&mut s, 1024);
    // Contiguous inflates come out as large aligned blocks.
    assert_eq!(
        blocks,
        [Block {
            pfn: VM.pfn,
            order: 10
        }]
    );
    let b = s.server.vm_balloon().unwrap();
    assert_eq!(
        (b.held_pages(), b.passed_pages(), b.target()),
        (1024, 1024, 1024)
    );
    b.check_invariants().unwrap();
    // The native zone is untouched by any of it: nothing of it is free.
    assert_eq!(s.server.core().stats().free_pages, 0);
}

#[test]
fn an_outer_deflate_lowers_the_vms_target_and_owed_pages_are_released_first() {
    let mut s = sys(true);
    inflate_into_the_vm(&mut s, 1024);
    // The host gives back the upper half of the VM's block.
    let upper = Block {
        pfn: VM.pfn + 512,
        order: 9,
    };
    s.balloon(FromBalloon::Deflate {
        req: 50,
        blocks: [upper].into_iter().collect(),
    });
    assert_eq!(
        s.balloon_got(),
        [ToBalloon::Deflated {
            req: 50,
            pages: 512
        }]
    );
    assert_eq!(s.answers(), [ToVmm::BalloonTarget { pages: 512 }]);
    // Linux deflates 256 of the lower pages instead (its choice): the
    // outer balloon still holds them, so the deflate waits while the window
    // around them is released.
    s.vmm(&FromVmm::Deflated {
        id: 3,
        ranges: ranges(&[(0, 256)]),
    });
    assert!(
        s.answers().is_empty(),
        "done while the host holds the pages"
    );
    assert_eq!(
        s.balloon_got(),
        [ToBalloon::Release {
            first_pfn: VM.pfn,
            end_pfn: VM.pfn + 1024
        }]
    );
    let b = s.server.vm_balloon().unwrap();
    assert_eq!(
        (b.held_pages(), b.passed_pages(), b.owed_pages()),
        (768, 512, 256)
    );
    // The balloon releases what it holds in the window: pages 0..512.
    s.balloon(FromBalloon::Released {
        req: 51,
        blocks: [Block {
            pfn: VM.pfn,
            order: 9,
        }]
        .into_iter()
        .collect(),
    });
    assert_eq!(
        s.balloon_got(),
        [ToBalloon::Deflated {
            req: 51,
            pages: 512
        }]
    );
    // Now the VM may use its pages; its target stays (a release is not the
    // host's deflate), and the 768 pages it still holds can go out again.
    assert_eq!(s.answers(), [ToVmm::DeflateDone { id: 3 }]);
    let b = s.server.vm_balloon().unwrap();
    assert_eq!(
        (b.passed_pages(), b.owed_pages(), b.unpassed_pages()),
        (0, 0, 768)
    );
    assert_eq!(b.target(), 512);
    b.check_invariants().unwrap();
}

#[test]
fn a_deflate_of_pages_the_host_never_had_is_done_at_once() {
    let mut s = sys(true);
    s.vmm(&FromVmm::Inflated {
        ranges: ranges(&[(0, 256)]),
    });
    s.vmm(&FromVmm::Deflated {
        id: 1,
        ranges: ranges(&[(0, 256)]),
    });
    assert_eq!(s.answers(), [ToVmm::DeflateDone { id: 1 }]);
    assert!(s.balloon_got().is_empty());
}

#[test]
fn a_release_the_balloon_answers_empty_forgets_the_window() {
    let mut s = sys(true);
    inflate_into_the_vm(&mut s, 256);
    s.vmm(&FromVmm::Deflated {
        id: 4,
        ranges: ranges(&[(0, 16)]),
    });
    assert!(matches!(
        s.balloon_got().as_slice(),
        [ToBalloon::Release { .. }]
    ));
    s.balloon(FromBalloon::Released {
        req: 60,
        blocks: heapless::Vec::new(),
    });
    assert_eq!(s.answers(), [ToVmm::DeflateDone { id: 4 }]);
    let b = s.server.vm_balloon().unwrap();
    assert_eq!((b.passed_pages(), b.counters.forgotten_pages), (0, 256));
    b.check_invariants().unwrap();
}

/// The host's deflate of native blocks that comes while a release is out
/// is not its answer (seen on seL4: taken for an empty answer, it made the
/// server forget the window's pages the balloon still held, and the real
/// answer was refused as "not in the balloon").
#[test]
fn a_hosts_deflate_while_a_release_is_out_is_not_its_answer() {
    let mut s = sys(true);
    let (native, _) = inflate_native_and_vm(&mut s, 256);
    s.vmm(&FromVmm::Deflated {
        id: 5,
        ranges: ranges(&[(0, 16)]),
    });
    let [ToBalloon::Release { first_pfn, end_pfn }] = s.balloon_got()[..] else {
        panic!("no release");
    };
    // The host lowers its target: a native block comes back first.
    let first = native[0];
    s.balloon(FromBalloon::Deflate {
        req: 70,
        blocks: [first].into_iter().collect(),
    });
    assert_eq!(
        s.balloon_got(),
        [ToBalloon::Deflated {
            req: 70,
            pages: first.pages() as u32
        }]
    );
    assert!(s.answers().is_empty(), "the VM's deflate still waits");
    let b = s.server.vm_balloon().unwrap();
    assert_eq!(
        (b.passed_pages(), b.counters.forgotten_pages),
        (256, 0),
        "the window's pages are still the balloon's"
    );
    // The answer: the VM's block in the window, accepted.
    let vm_block = Block {
        pfn: VM.pfn,
        order: 8,
    };
    assert!(vm_block.pfn >= first_pfn && vm_block.pfn + vm_block.pages() <= end_pfn);
    s.balloon(FromBalloon::Released {
        req: 71,
        blocks: [vm_block].into_iter().collect(),
    });
    assert_eq!(
        s.balloon_got(),
        [ToBalloon::Deflated {
            req: 71,
            pages: 256
        }]
    );
    assert_eq!(s.answers(), [ToVmm::DeflateDone { id: 5 }]);
    let b = s.server.vm_balloon().unwrap();
    assert_eq!((b.passed_pages(), b.owed_pages()), (0, 0));
    b.check_invariants().unwrap();
}

#[test]
fn a_hostile_vmm_is_refused_and_nothing_moves() {
    let mut s = sys(true);
    inflate_into_the_vm(&mut s, 512);
    let before = s.server.vm_balloon().unwrap().passed_pages();
    let bad = [
        (
            FromVmm::Inflated {
                ranges: ranges(&[(0, 1)]),
            },
            VmRefuse::BalloonState,
        ),
        (
            FromVmm::Deflated {
                id: 1,
                ranges: ranges(&[(4000, 1)]),
            },
            VmRefuse::BalloonState,
        ),
        (
            FromVmm::Inflated {
                ranges: ranges(&[(VM.pages, 1)]),
            },
            VmRefuse::OutsideRam,
        ),
        (
            FromVmm::Inflated {
                ranges: ranges(&[(2048, 257)]),
            },
            VmRefuse::TooManyPages,
        ),
        (
            FromVmm::Inflated {
                ranges: ranges(&[(2048, 0)]),
            },
            VmRefuse::Empty,
        ),
    ];
    for (msg, reason) in bad {
        s.vmm(&msg);
        let id = matches!(msg, FromVmm::Deflated { .. }).then_some(1);
        assert_eq!(
            s.answers(),
            [ToVmm::BalloonRefused { id, reason }],
            "{msg:?}"
        );
    }
    // A page in a nested report in flight is not the guest's to inflate.
    s.report(9, &[(2048, 512)]);
    s.vmm(&FromVmm::Inflated {
        ranges: ranges(&[(2100, 1)]),
    });
    assert_eq!(
        s.answers(),
        [ToVmm::BalloonRefused {
            id: None,
            reason: VmRefuse::Overlap
        }]
    );
    // A deflate by the balloon of VM pages it never had is refused whole.
    s.balloon_got();
    s.balloon(FromBalloon::Deflate {
        req: 77,
        blocks: [Block {
            pfn: VM.pfn + 2048,
            order: 0,
        }]
        .into_iter()
        .collect(),
    });
    assert!(matches!(
        s.balloon_got().as_slice(),
        [ToBalloon::Refused { req: Some(77), .. }]
    ));
    let b = s.server.vm_balloon().unwrap();
    assert_eq!(b.passed_pages(), before);
    b.check_invariants().unwrap();
}

#[test]
fn the_vms_statistics_feed_the_outer_hosts() {
    let mut s = sys(true);
    // Before the VM's OS says anything, its RAM counts as total only.
    let native = s.server.core().stats();
    assert_eq!(
        s.server.mem_stats().total_pages,
        native.total_pages + VM.pages
    );
    assert_eq!(s.server.mem_stats().free_pages, native.free_pages);
    s.vmm(&FromVmm::Stats(VmStats {
        total_pages: Some(VM.pages),
        free_pages: Some(1000),
        available_pages: Some(3000),
    }));
    s.balloon(FromBalloon::StatsRequest);
    let msgs = s.balloon_got();
    let [ToBalloon::Stats(m)] = msgs.as_slice() else {
        panic!("{msgs:?}");
    };
    assert_eq!(m.total_pages, native.total_pages + VM.pages);
    assert_eq!(m.free_pages, native.free_pages + 1000);
    assert_eq!(
        m.available_pages,
        native.free_pages + native.isolated_pages + 3000
    );
    // And the VM is asked for fresh figures.
    assert_eq!(s.answers(), [ToVmm::StatsRequest]);
}
