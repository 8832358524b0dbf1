//! Every refused request returns its error and changes nothing.

mod common;

use common::*;
use memserver::{BatchId, Block, Error, MAX_ORDER, MemCore, Tunables, ZoneId, ZoneSpec};

/// A core in a busy state: allocations of several orders, a batch in
/// flight (so isolated blocks exist), ballooned blocks, Reported blocks.
fn busy() -> (MemCore<'static>, Vec<(u64, u8)>, BatchId, Vec<Block>) {
    let tun = Tunables {
        reporting_order: 9,
        capacity: 2,
        low_watermark_pages: 0,
        ..Tunables::default()
    };
    // Zone 0 starts unaligned; zone 1 sits elsewhere.
    let (mut c, _) = core(&[zone(0x1003, 6000), zone(0x10000, 4096)], Some(tun));
    run_until_idle(&mut c, 16);
    let mut allocs = Vec::new();
    for o in [0u8, 3, 5, 9, 10] {
        allocs.push((c.alloc(Z0, o).unwrap(), o));
    }
    let mut balloon = [Block::default(); 4];
    let n = c.take_for_balloon(Z0, 1500, &mut balloon).unwrap();
    assert!(n > 0);
    // Free an order-10 block to request a pass and start it: a batch goes
    // in flight.
    let (p10, _) = allocs.pop().unwrap();
    c.free(Z0, p10, 10).unwrap();
    let acts = c.timer_expired();
    let id = acts.batches()[0];
    assert!(c.stats().isolated_pages > 0);
    assert!(c.stats().reported_pages > 0);
    c.check_invariants().unwrap();
    (c, allocs, id, balloon[..n].to_vec())
}

fn refused<T: std::fmt::Debug>(
    c: &mut MemCore<'static>,
    want: Error,
    op: impl FnOnce(&mut MemCore<'static>) -> Result<T, Error>,
) {
    let before = snapshot(c);
    let got = op(c);
    assert_eq!(got.unwrap_err(), want);
    assert_eq!(snapshot(c), before, "a refused request changed state");
    c.check_invariants().unwrap();
    // Every error has a message.
    assert!(!want.to_string().is_empty());
}

#[test]
fn free_refusals() {
    let (mut c, allocs, id, balloon) = busy();
    let (p0, _) = allocs[0];
    let (p3, _) = allocs[1];
    let (p9, _) = allocs[3];
    let isolated = c.batch(id).unwrap()[0];
    let z1 = c.zone_spec(Z1).unwrap();

    refused(&mut c, Error::NoSuchZone, |c| c.free(ZoneId(2), p0, 0));
    refused(&mut c, Error::BadOrder, |c| c.free(Z0, p0, MAX_ORDER + 1));
    refused(&mut c, Error::BadOrder, |c| c.free(Z0, p0, 255));
    // Another zone's block, or outside every zone.
    refused(&mut c, Error::OutOfZone, |c| c.free(Z1, p0, 0));
    refused(&mut c, Error::OutOfZone, |c| c.free(Z0, z1.base_pfn, 0));
    refused(&mut c, Error::OutOfZone, |c| c.free(Z0, 0, 0));
    refused(&mut c, Error::OutOfZone, |c| c.free(Z0, u64::MAX, 0));
    refused(&mut c, Error::OutOfZone, |c| c.free(Z0, u64::MAX - 3, 2));
    // A block straddling the zone's end.
    refused(&mut c, Error::OutOfZone, |c| c.free(Z0, 0x1003 + 5999, 1));
    refused(&mut c, Error::Misaligned, |c| c.free(Z0, p3 + 1, 3));
    refused(&mut c, Error::Misaligned, |c| c.free(Z0, p9 + 8, 9));
    refused(&mut c, Error::WrongOrder, |c| c.free(Z0, p3, 2));
    refused(&mut c, Error::WrongOrder, |c| c.free(Z0, p9, 8));
    refused(&mut c, Error::NotBlockHead, |c| c.free(Z0, p9 + 256, 8));
    refused(&mut c, Error::Isolated, |c| {
        c.free(Z0, isolated.pfn, isolated.order)
    });
    refused(&mut c, Error::Ballooned, |c| {
        c.free(Z0, balloon[0].pfn, balloon[0].order)
    });
    // Free blocks: never allocated, and double free.
    let (fb, _) = c
        .free_list(Z0, 0)
        .unwrap()
        .chain(c.free_list(Z0, 1).unwrap())
        .next()
        .unwrap();
    let fo = c.block_of(fb).unwrap().0.order;
    refused(&mut c, Error::AlreadyFree, |c| c.free(Z0, fb, fo));
    c.free(Z0, p0, 0).unwrap();
    let merged = c.block_of(p0).unwrap().0;
    if merged.pfn == p0 {
        refused(&mut c, Error::AlreadyFree, |c| c.free(Z0, p0, merged.order));
    } else {
        refused(&mut c, Error::NotBlockHead, |c| c.free(Z0, p0, 0));
    }
}

#[test]
fn alloc_refusals() {
    let (mut c, _, _, _) = busy();
    refused(&mut c, Error::NoSuchZone, |c| c.alloc(ZoneId(7), 0));
    refused(&mut c, Error::NoSuchZone, |c| c.alloc(ZoneId(u16::MAX), 0));
    refused(&mut c, Error::BadOrder, |c| c.alloc(Z0, MAX_ORDER + 1));
    // Exhaust zone 1 of order-10 blocks, then ask for one more.
    while c.alloc(Z1, 10).is_ok() {}
    refused(&mut c, Error::NoMemory, |c| c.alloc(Z1, 10));
}

#[test]
fn completion_refusals() {
    let (mut c, _, id, _) = busy();
    refused(&mut c, Error::UnknownBatch, |c| {
        c.report_completed(BatchId(id.0 + 1), true)
    });
    refused(&mut c, Error::UnknownBatch, |c| {
        c.report_completed(BatchId(0), false)
    });
    refused(&mut c, Error::UnknownBatch, |c| {
        c.report_completed(BatchId(u32::MAX), true)
    });
    c.report_completed(id, true).unwrap();
    // A second completion of the same batch is unknown.
    refused(&mut c, Error::UnknownBatch, |c| {
        c.report_completed(id, true)
    });
}

#[test]
fn deflate_refusals() {
    let (mut c, allocs, id, balloon) = busy();
    let b = balloon[0];
    let isolated = c.batch(id).unwrap()[0];
    let (p3, _) = allocs[1];
    refused(&mut c, Error::NoSuchZone, |c| {
        c.return_from_balloon(ZoneId(3), b)
    });
    refused(&mut c, Error::OutOfZone, |c| c.return_from_balloon(Z1, b));
    refused(&mut c, Error::BadOrder, |c| {
        c.return_from_balloon(
            Z0,
            Block {
                pfn: b.pfn,
                order: 11,
            },
        )
    });
    if b.order > 0 {
        refused(&mut c, Error::Misaligned, |c| {
            c.return_from_balloon(
                Z0,
                Block {
                    pfn: b.pfn + 1,
                    order: b.order,
                },
            )
        });
    }
    // Larger than the ballooned block.
    if b.order < MAX_ORDER && b.pfn % (2u64 << b.order) == 0 {
        refused(&mut c, Error::NotBallooned, |c| {
            c.return_from_balloon(
                Z0,
                Block {
                    pfn: b.pfn,
                    order: b.order + 1,
                },
            )
        });
    }
    refused(&mut c, Error::NotBallooned, |c| {
        c.return_from_balloon(Z0, Block { pfn: p3, order: 3 })
    });
    refused(&mut c, Error::NotBallooned, |c| {
        c.return_from_balloon(Z0, isolated)
    });
    let (fb, _) = c
        .free_list(Z0, 0)
        .unwrap()
        .chain(c.free_list(Z0, 1).unwrap())
        .next()
        .unwrap();
    refused(&mut c, Error::NotBallooned, |c| {
        c.return_from_balloon(Z0, Block { pfn: fb, order: 0 })
    });
    c.return_from_balloon(Z0, b).unwrap();
    refused(&mut c, Error::NotBallooned, |c| {
        c.return_from_balloon(Z0, b)
    });
    refused(&mut c, Error::NoSuchZone, |c| {
        let mut out = [Block::default(); 2];
        c.take_for_balloon(ZoneId(9), 10, &mut out)
    });
}

#[test]
fn tunables_refusals() {
    let (mut c, _, _, _) = busy();
    let bad = [
        Tunables {
            reporting_order: 11,
            ..Tunables::default()
        },
        Tunables {
            delay_ns: 0,
            ..Tunables::default()
        },
        Tunables {
            capacity: 0,
            ..Tunables::default()
        },
        Tunables {
            capacity: 129,
            ..Tunables::default()
        },
        Tunables {
            budget_divisor: 0,
            ..Tunables::default()
        },
        Tunables {
            max_in_flight: 0,
            ..Tunables::default()
        },
        Tunables {
            max_in_flight: 9,
            ..Tunables::default()
        },
        Tunables {
            low_watermark_pages: u64::MAX,
            ..Tunables::default()
        },
    ];
    for t in bad {
        assert!(matches!(t.validate(), Err(Error::BadTunable(_))), "{t:?}");
        refused(&mut c, t.validate().unwrap_err(), |c| {
            c.set_tunables(Some(t))
        });
        let zones = [zone(0, 1024)];
        let mut meta = vec![0u8; memserver::metadata_bytes(&zones)];
        assert!(matches!(
            MemCore::new(&zones, &mut meta, Some(t)),
            Err(Error::BadTunable(_))
        ));
    }
    // A pass is running in busy(): tunables cannot change under it.
    refused(&mut c, Error::ReportingBusy, |c| {
        c.set_tunables(Some(Tunables::default()))
    });
}

#[test]
fn construction_refusals() {
    let mut meta = vec![0u8; 1 << 20];
    let z = |base, pages| ZoneSpec {
        base_pfn: base,
        pages,
        owner: 1,
    };
    let cases: &[(&[ZoneSpec], Error)] = &[
        (&[z(0, 0)], Error::EmptyZone),
        (&[z(u64::MAX - 10, 100)], Error::EmptyZone),
        (&[z(0, 100), z(50, 100)], Error::ZonesOverlap),
        (&[z(100, 100), z(0, 101)], Error::ZonesOverlap),
        (
            &[z(0, 200_000)],
            Error::MetadataTooSmall { needed: 1_800_000 },
        ),
        (&[z(0, u32::MAX)], Error::TooManyPages),
    ];
    for (zones, want) in cases {
        assert_eq!(MemCore::new(zones, &mut meta, None).unwrap_err(), *want);
    }
    const TOO_MANY: usize = memserver::MAX_ZONES + 1;
    let many = [z(0, 1); TOO_MANY];
    assert_eq!(
        MemCore::new(&many, &mut meta, None).unwrap_err(),
        Error::TooManyZones
    );
}
