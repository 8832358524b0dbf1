//! The driver against the device model, with a thread playing the device.
//! Counters on both sides are the oracles; waits are bounded.

use balloon::model::{
    BalloonDevice, DeviceConfig, DeviceThread, DmaWindow, EventFd, Fault, GuestRam, HostHal,
    SharedRegion, SharedTransport,
};
use balloon::{
    BalloonAction, BalloonFeatures, BalloonOp, Block, Config, DeflateReason, Error, QueueKind,
    QueueLayout, Stats, VirtIOBalloon,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RAM_BASE: u64 = 0x4000_0000;
const RAM_PFN: u64 = RAM_BASE >> 12;
const MIB: u64 = 1 << 20;

type Driver = VirtIOBalloon<HostHal, SharedTransport>;

struct Rig {
    // Dropped first: the driver resets the device while its thread still runs.
    drv: Driver,
    dev: DeviceThread,
    irq: EventFd,
    ram: Arc<GuestRam>,
}

fn try_rig(cfg: DeviceConfig, drv_cfg: Config, ram: u64) -> Result<Rig, Error> {
    let dma = HostHal::install_default().expect("dma window");
    let regs = Arc::new(SharedRegion::create("regs", 4096).expect("regs"));
    let ram = Arc::new(GuestRam::create(RAM_BASE, ram as usize).expect("ram"));
    let irq = EventFd::new().expect("eventfd");
    let bell = EventFd::new().expect("eventfd");
    let irq2 = irq.clone();
    let device = BalloonDevice::new(
        regs.clone(),
        dma,
        ram.clone(),
        cfg,
        Box::new(move || irq2.signal()),
    )
    .expect("device");
    let dev = DeviceThread::spawn(device, bell.clone());
    let transport =
        SharedTransport::new(regs, Box::new(move |_| bell.signal())).expect("transport");
    let drv = VirtIOBalloon::with_config(transport, drv_cfg)?;
    Ok(Rig { drv, dev, irq, ram })
}

fn rig(cfg: DeviceConfig) -> Rig {
    try_rig(cfg, Config::default(), 64 * MIB).expect("driver init")
}

impl Rig {
    /// Services interrupts until `f` gives a value; fails after 10 s.
    fn wait_for<R>(&mut self, what: &str, mut f: impl FnMut(&mut Driver) -> Option<R>) -> R {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = f(&mut self.drv) {
                return r;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.irq.wait(Some(Duration::from_millis(50)));
            self.drv.ack_interrupt();
        }
    }

    /// Collects `n` report completions.
    fn reports(&mut self, n: usize) -> BTreeMap<u32, Result<(), Error>> {
        let mut out = BTreeMap::new();
        while out.len() < n {
            let (id, r) = self.wait_for("report completion", |d| d.poll_reports());
            assert!(out.insert(id, r).is_none(), "batch {id} returned twice");
        }
        out
    }

    fn wait_device(&mut self, what: &str, mut f: impl FnMut(&BalloonDevice) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f(&self.dev.device()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.dev.kick();
            self.irq.wait(Some(Duration::from_millis(20)));
        }
    }
}

fn blocks(first_pfn: u64, n: u64, order: u8) -> Vec<Block> {
    (0..n)
        .map(|i| Block {
            pfn: first_pfn + (i << order),
            order,
        })
        .collect()
}

#[test]
fn reported_memory_leaves_the_memfd() {
    let mut r = rig(DeviceConfig::default());
    assert_eq!(r.drv.queue_indices().reporting, Some(3), "QEMU layout");
    assert_eq!(r.drv.report_capacity(), 32, "QEMU's reporting queue size");
    assert!(!r.drv.features().contains(BalloonFeatures::PAGE_POISON));
    assert!(r.ram.touch(RAM_BASE, 16 * MIB));
    let before = r.ram.ranges()[0].region.allocated_bytes().unwrap();
    assert!(before >= 16 * MIB, "touched pages are allocated: {before}");

    // Four 2 MiB blocks (order 9) = 8 MiB.
    let batch = blocks(RAM_PFN, 4, 9);
    r.drv.submit_report(7, &batch).unwrap();
    let done = r.reports(1);
    assert_eq!(done[&7], Ok(()));

    let after = r.ram.ranges()[0].region.allocated_bytes().unwrap();
    assert_eq!(before - after, 8 * MIB, "exactly the reported 8 MiB left");
    assert!(!r.ram.ranges()[0].region.has_data(0, 8 * MIB).unwrap());
    assert!(r.ram.ranges()[0].region.has_data(8 * MIB, 8 * MIB).unwrap());

    let c = r.dev.device().counters();
    assert_eq!(c.reports, 1);
    assert_eq!(c.ranges_discarded, 4);
    assert_eq!(c.bytes_discarded, 8 * MIB);
    let m = r.drv.metrics();
    assert_eq!(m.reports_submitted, 1);
    assert_eq!(m.reports_completed, 1);
    assert_eq!(m.blocks_reported, 4);
    assert_eq!(m.pages_reported, 2048);
    assert_eq!(m.errors.total(), 0);
}

#[test]
fn several_batches_in_flight_and_queue_limits() {
    let mut r = rig(DeviceConfig::default());
    r.dev.device().set_hold_reports(true);
    for id in 1..=3u32 {
        let first = RAM_PFN + u64::from(id) * 512;
        r.drv.submit_report(id, &blocks(first, 8, 0)).unwrap();
    }
    assert_eq!(r.drv.reports_in_flight(), 3);
    assert_eq!(r.drv.report_free_descriptors(), 8);
    // Rejected requests change nothing.
    assert_eq!(
        r.drv.submit_report(4, &blocks(RAM_PFN, 9, 0)),
        Err(Error::QueueFull)
    );
    assert_eq!(
        r.drv.submit_report(2, &blocks(RAM_PFN, 1, 0)),
        Err(Error::DuplicateBatch(2))
    );
    let bad = Block {
        pfn: RAM_PFN + 1,
        order: 9,
    };
    assert_eq!(
        r.drv.submit_report(5, &[bad]),
        Err(Error::InvalidBlock(bad))
    );
    assert_eq!(r.drv.submit_report(6, &[]), Err(Error::Empty));
    assert_eq!(r.drv.reports_in_flight(), 3);
    assert_eq!(r.drv.metrics().reports_submitted, 3);
    assert_eq!(r.dev.device().counters().reports, 0);

    r.dev.device().set_hold_reports(false);
    r.dev.kick();
    let done = r.reports(3);
    assert!(done.values().all(|x| x.is_ok()), "{done:?}");
    assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(r.drv.report_free_descriptors(), 32);
    assert_eq!(r.dev.device().counters().reports, 3);

    // The ring wraps: many more batches than its size.
    for round in 0..40u32 {
        r.drv
            .submit_report(100 + round, &blocks(RAM_PFN, 16, 0))
            .unwrap();
        r.drv
            .submit_report(200 + round, &blocks(RAM_PFN + 16, 16, 0))
            .unwrap();
        let done = r.reports(2);
        assert!(done.values().all(|x| x.is_ok()));
    }
    assert_eq!(r.drv.metrics().reports_completed, 83);
}

#[test]
fn ranges_outside_ram_are_skipped_not_fatal() {
    let mut r = rig(DeviceConfig::default());
    // Beyond the 64 MiB of RAM.
    let outside = Block {
        pfn: RAM_PFN + ((128 * MIB) >> 12),
        order: 0,
    };
    r.drv.submit_report(1, &[outside]).unwrap();
    assert_eq!(r.reports(1)[&1], Ok(()));
    let c = r.dev.device().counters();
    assert_eq!((c.ranges_skipped, c.bytes_discarded), (1, 0));
}

fn hint_offered() -> BalloonFeatures {
    DeviceConfig::default().offered | BalloonFeatures::FREE_PAGE_HINT
}

fn report_one(r: &mut Rig) {
    assert!(r.ram.touch(RAM_BASE, 2 * MIB));
    r.drv.submit_report(1, &blocks(RAM_PFN, 1, 9)).unwrap();
    assert_eq!(r.reports(1)[&1], Ok(()));
    assert_eq!(r.dev.device().counters().bytes_discarded, 2 * MIB);
}

#[test]
fn offered_layout_with_hinting_offered_uses_queue_4() {
    let cfg = DeviceConfig {
        offered: hint_offered(),
        ..DeviceConfig::default()
    };
    let mut r = rig(cfg);
    assert!(!r.drv.features().contains(BalloonFeatures::FREE_PAGE_HINT));
    assert_eq!(r.drv.queue_indices().reporting, Some(4));
    report_one(&mut r);
}

#[test]
fn dense_layout_device_and_driver() {
    let cfg = DeviceConfig {
        offered: hint_offered(),
        layout: QueueLayout::Dense,
        ..DeviceConfig::default()
    };
    let drv_cfg = Config {
        layout: QueueLayout::Dense,
        reporting_queue_size: None,
    };
    let mut r = try_rig(cfg, drv_cfg, 64 * MIB).unwrap();
    assert_eq!(r.drv.queue_indices().reporting, Some(3));
    report_one(&mut r);
}

#[test]
fn legacy_ring_layout() {
    let cfg = DeviceConfig {
        legacy: true,
        ..DeviceConfig::default()
    };
    let mut r = rig(cfg);
    report_one(&mut r);
}

#[test]
fn reporting_queue_size_picks_the_layout() {
    // QEMU numbering with hinting offered, but the driver guesses Dense: the
    // size-32 cross-check moves it to queue 4.
    let cfg = DeviceConfig {
        offered: hint_offered(),
        ..DeviceConfig::default()
    };
    let drv_cfg = Config {
        layout: QueueLayout::Dense,
        reporting_queue_size: Some(32),
    };
    let mut r = try_rig(cfg, drv_cfg, 64 * MIB).unwrap();
    assert_eq!(r.drv.queue_indices().reporting, Some(4));
    report_one(&mut r);

    // A device whose sizes match neither layout, where the layouts
    // disagree, is refused.
    let cfg = DeviceConfig {
        offered: hint_offered(),
        layout: QueueLayout::Dense,
        ..DeviceConfig::default()
    };
    let drv_cfg = Config {
        layout: QueueLayout::Offered,
        reporting_queue_size: Some(32),
    };
    assert_eq!(
        try_rig(cfg, drv_cfg, 64 * MIB).err(),
        Some(Error::QueueLayoutMismatch {
            index: 4,
            max_size: 128
        })
    );
}

#[test]
fn inflate_and_deflate_follow_the_target() {
    let mut r = rig(DeviceConfig::default());
    assert!(r.ram.touch(RAM_BASE, 4 * MIB));
    let before = r.ram.ranges()[0].region.allocated_bytes().unwrap();

    r.dev.device().set_target(300);
    r.wait_for("config change", |d| d.take_config_changed().then_some(()));
    assert_eq!(r.drv.balloon_action(), Ok(BalloonAction::Inflate(300)));
    let pfns: Vec<u64> = (0..300).map(|i| RAM_PFN + i).collect();
    r.drv.inflate(1, &pfns).unwrap();
    assert_eq!(r.drv.inflate(2, &pfns), Err(Error::QueueFull));
    assert_eq!(r.drv.balloon_action(), Ok(BalloonAction::None));
    let done = r.wait_for("inflate", |d| d.poll_balloon());
    assert_eq!(
        (done.id, done.op, done.pages, done.result),
        (1, BalloonOp::Inflate, 300, Ok(()))
    );
    assert_eq!(r.drv.actual(), 300);
    assert_eq!(
        r.dev.device().actual(),
        300,
        "actual published in config space"
    );
    assert_eq!(r.dev.device().counters().pages_inflated, 300);
    let after = r.ram.ranges()[0].region.allocated_bytes().unwrap();
    assert_eq!(before - after, 300 * 4096, "inflated pages discarded");

    r.dev.device().set_target(100);
    r.wait_for("config change", |d| d.take_config_changed().then_some(()));
    assert_eq!(r.drv.balloon_action(), Ok(BalloonAction::Deflate(200)));
    r.drv
        .deflate(3, &pfns[..200], DeflateReason::Target)
        .unwrap();
    let done = r.wait_for("deflate", |d| d.poll_balloon());
    assert_eq!(
        (done.op, done.pages, done.result),
        (BalloonOp::Deflate, 200, Ok(()))
    );
    assert_eq!(r.drv.actual(), 100);
    assert_eq!(r.dev.device().actual(), 100);
    assert_eq!(r.drv.balloon_action(), Ok(BalloonAction::None));
    assert_eq!(r.drv.metrics().pages_inflated, 300);
    assert_eq!(r.drv.metrics().pages_deflated, 200);
    assert_eq!(r.dev.device().counters().pages_deflated, 200);
    // Deflating more than the balloon holds is refused without a change.
    assert_eq!(
        r.drv.deflate(4, &pfns[..101], DeflateReason::Target),
        Err(Error::DeflateExceedsBalloon {
            requested: 101,
            held: 100
        })
    );
    assert_eq!(
        r.drv.inflate(5, &[1u64 << 40]),
        Err(Error::PfnTooLarge(1 << 40))
    );

    // Whole blocks, as the memserver hands them over: 1024 pages at once.
    let block = Block {
        pfn: RAM_PFN + 1024,
        order: 10,
    };
    r.drv.inflate_block(6, block).unwrap();
    let done = r.wait_for("inflate block", |d| d.poll_balloon());
    assert_eq!((done.id, done.pages, done.result), (6, 1024, Ok(())));
    assert_eq!(r.drv.actual(), 1124);
    r.drv
        .deflate_block(7, block, DeflateReason::Target)
        .unwrap();
    let done = r.wait_for("deflate block", |d| d.poll_balloon());
    assert_eq!((done.id, done.pages, done.result), (7, 1024, Ok(())));
    assert_eq!(r.dev.device().actual(), 100);
    let bad = Block {
        pfn: RAM_PFN + 1,
        order: 1,
    };
    assert_eq!(r.drv.inflate_block(8, bad), Err(Error::InvalidBlock(bad)));
}

#[test]
fn deflate_on_oom_needs_the_feature() {
    let mut r = rig(DeviceConfig {
        offered: BalloonFeatures::STATS_VQ
            | BalloonFeatures::REPORTING
            | BalloonFeatures::MUST_TELL_HOST
            | BalloonFeatures::VERSION_1,
        ..DeviceConfig::default()
    });
    assert!(r.drv.must_tell_host());
    r.drv.inflate(1, &[RAM_PFN]).unwrap();
    r.wait_for("inflate", |d| d.poll_balloon());
    assert_eq!(
        r.drv.deflate(2, &[RAM_PFN], DeflateReason::Oom),
        Err(Error::OomDeflateNotNegotiated)
    );

    let mut r = rig(DeviceConfig::default());
    assert!(!r.drv.must_tell_host());
    r.drv.inflate(1, &[RAM_PFN, RAM_PFN + 1]).unwrap();
    r.wait_for("inflate", |d| d.poll_balloon());
    r.drv.deflate(2, &[RAM_PFN], DeflateReason::Oom).unwrap();
    let done = r.wait_for("deflate", |d| d.poll_balloon());
    assert_eq!(done.result, Ok(()));
    assert_eq!(r.drv.actual(), 1);
}

#[test]
fn stats_are_refilled_when_the_device_asks() {
    let mut r = rig(DeviceConfig::default());
    r.wait_device("first stats buffer", |d| d.last_stats().is_some());
    assert_eq!(r.dev.device().last_stats(), Some(Stats::default()));
    let s = Stats {
        free: 5 * MIB,
        total: 64 * MIB,
        available: 6 * MIB,
        major_faults: 3,
        ..Stats::default()
    };
    // Not asked yet: the numbers are kept for the next request.
    r.drv.set_stats(Stats::default()).unwrap();
    assert_eq!(r.drv.metrics().stats_updates, 0);
    assert!(r.dev.device().request_stats());
    r.wait_for("stats request", |d| {
        d.poll_reports();
        d.take_stats_request().then_some(())
    });
    assert_eq!(r.drv.metrics().stats_requests, 1);
    r.drv.set_stats(s).unwrap();
    assert_eq!(r.drv.metrics().stats_updates, 1);
    r.wait_device("fresh stats", |d| d.last_stats() == Some(s));
    assert_eq!(r.dev.device().counters().stats_received, 2);
}

/// Two batches in flight, the device misbehaves on the first completion:
/// every batch comes back exactly once, the failed ones with the error, and
/// the driver recovers after `restart`.
fn hostile(fault: Fault, expect: [Result<(), Error>; 2]) {
    let mut r = rig(DeviceConfig::default());
    assert!(r.ram.touch(RAM_BASE, 8 * MIB));
    r.dev.device().set_hold_reports(true);
    r.drv.submit_report(1, &blocks(RAM_PFN, 2, 9)).unwrap();
    r.drv
        .submit_report(2, &blocks(RAM_PFN + 1024, 2, 9))
        .unwrap();
    {
        let mut d = r.dev.device();
        d.inject(QueueKind::Reporting, fault);
        d.set_hold_reports(false);
    }
    r.dev.kick();
    let done = r.reports(2);
    assert_eq!(done[&1], expect[0], "{fault:?}");
    assert_eq!(done[&2], expect[1], "{fault:?}");
    assert_eq!(r.dev.device().counters().faults, 1);
    let m = *r.drv.metrics();
    let failed = expect.iter().filter(|x| x.is_err()).count() as u64;
    assert_eq!(m.reports_failed, failed);
    assert_eq!(m.reports_completed, 2 - failed);
    assert_eq!(r.drv.reports_in_flight(), 0);

    let fatal = fault != Fault::BadUsedLength;
    assert_eq!(r.drv.is_broken(), fatal);
    if fatal {
        assert_eq!(m.device_resets, 1);
        assert_eq!(
            r.drv.submit_report(3, &blocks(RAM_PFN, 1, 0)),
            Err(Error::Broken)
        );
        r.drv.restart().unwrap();
    }
    r.drv.submit_report(3, &blocks(RAM_PFN, 1, 0)).unwrap();
    assert_eq!(r.reports(1)[&3], Ok(()));
}

#[test]
fn hostile_bad_used_id() {
    let e = Err(Error::BadUsedId {
        queue: QueueKind::Reporting,
        id: 39,
    });
    hostile(Fault::BadUsedId, [e, e]);
}

#[test]
fn hostile_bad_used_length_fails_only_that_batch() {
    let e = Err(Error::BadUsedLength {
        queue: QueueKind::Reporting,
        len: u32::MAX,
    });
    hostile(Fault::BadUsedLength, [e, Ok(())]);
}

#[test]
fn hostile_completion_not_in_flight() {
    let e = Err(Error::NotInFlight {
        queue: QueueKind::Reporting,
        id: 0,
    });
    hostile(Fault::DuplicateCompletion, [Ok(()), e]);
}

#[test]
fn hostile_used_index_jump() {
    let e = Err(Error::UsedIndexJump {
        queue: QueueKind::Reporting,
        delta: 33,
    });
    hostile(Fault::UsedIndexJump, [e, e]);
}

#[test]
fn hostile_reset() {
    hostile(Fault::Reset, [Err(Error::DeviceReset); 2]);
}

#[test]
fn hostile_needs_reset() {
    hostile(Fault::NeedsReset, [Err(Error::DeviceReset); 2]);
}

#[test]
fn hostile_inflate_completion_gives_pages_back() {
    let mut r = rig(DeviceConfig::default());
    r.dev.device().inject(QueueKind::Inflate, Fault::BadUsedId);
    r.drv.inflate(9, &[RAM_PFN, RAM_PFN + 1]).unwrap();
    let done = r.wait_for("inflate failure", |d| d.poll_balloon());
    assert_eq!(done.id, 9);
    assert!(done.result.is_err(), "{done:?}");
    assert_eq!(r.drv.actual(), 0, "failed pages are not in the balloon");
    assert!(r.drv.is_broken());
    assert_eq!(r.drv.metrics().balloon_requests_failed, 1);
    r.drv.restart().unwrap();
    r.drv.inflate(10, &[RAM_PFN]).unwrap();
    assert_eq!(r.wait_for("inflate", |d| d.poll_balloon()).result, Ok(()));
    assert_eq!(r.drv.actual(), 1);
}

/// The device sees the driver's memory only through its own mappings of the
/// memfds (as a device process would): second mappings at other addresses.
#[test]
fn device_on_separate_mappings() {
    let dup = |f: &SharedRegion| rustix::io::dup(f.fd().expect("memfd")).expect("dup");
    let dma = HostHal::install_default().expect("dma window");
    let regs = Arc::new(SharedRegion::create("regs", 4096).unwrap());
    let ram = Arc::new(GuestRam::create(RAM_BASE, (16 * MIB) as usize).unwrap());

    let dev_dma = DmaWindow {
        region: Arc::new(SharedRegion::map(dup(&dma.region), dma.region.len()).unwrap()),
        paddr: dma.paddr,
    };
    assert_ne!(dev_dma.region.as_ptr(), dma.region.as_ptr());
    let dev_regs = Arc::new(SharedRegion::map(dup(&regs), 4096).unwrap());
    let dev_ram = Arc::new(
        GuestRam::map(dup(&ram.ranges()[0].region), RAM_BASE, (16 * MIB) as usize).unwrap(),
    );

    let irq = EventFd::new().unwrap();
    let bell = EventFd::new().unwrap();
    let irq2 = irq.clone();
    let device = BalloonDevice::new(
        dev_regs,
        dev_dma,
        dev_ram,
        DeviceConfig::default(),
        Box::new(move || irq2.signal()),
    )
    .unwrap();
    let dev = DeviceThread::spawn(device, bell.clone());
    let transport = SharedTransport::new(regs, Box::new(move |_| bell.signal())).unwrap();
    let drv = VirtIOBalloon::with_config(transport, Config::default()).unwrap();
    let mut r = Rig { drv, dev, irq, ram };
    report_one(&mut r);
    assert!(!r.ram.ranges()[0].region.has_data(0, 2 * MIB).unwrap());
}

mod model_check {
    //! The driver against the device model stepped in one thread, driven by
    //! random operations and faults: every submitted batch comes back exactly
    //! once, whatever the device does.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Clone, Debug)]
    enum Op {
        Submit(u8),
        Device,
        Hold(bool),
        Fault(Fault),
        Poll,
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u8..=40).prop_map(Op::Submit),
            3 => Just(Op::Device),
            1 => any::<bool>().prop_map(Op::Hold),
            1 => prop_oneof![
                Just(Fault::BadUsedId),
                Just(Fault::BadUsedLength),
                Just(Fault::DuplicateCompletion),
                Just(Fault::UsedIndexJump),
                Just(Fault::Reset),
                Just(Fault::NeedsReset),
            ]
            .prop_map(Op::Fault),
            3 => Just(Op::Poll),
            1 => Just(Op::Restart),
        ]
    }

    fn stepped() -> (Driver, BalloonDevice) {
        let dma = HostHal::install_default().unwrap();
        let regs = Arc::new(SharedRegion::create("regs", 4096).unwrap());
        let ram = Arc::new(GuestRam::create(RAM_BASE, MIB as usize).unwrap());
        let dev = BalloonDevice::new(
            regs.clone(),
            dma,
            ram,
            DeviceConfig::default(),
            Box::new(|| {}),
        )
        .unwrap();
        let t = SharedTransport::new(regs, Box::new(|_| {})).unwrap();
        (VirtIOBalloon::new(t).unwrap(), dev)
    }

    fn drain(drv: &mut Driver, outstanding: &mut BTreeSet<u32>, returned: &mut u64) {
        while let Some((id, _)) = drv.poll_reports() {
            assert!(
                outstanding.remove(&id),
                "batch {id} unknown or returned twice"
            );
            *returned += 1;
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn every_batch_returns_exactly_once(ops in proptest::collection::vec(op(), 1..80)) {
            let (mut drv, mut dev) = stepped();
            let mut outstanding = BTreeSet::new();
            let mut next_id = 0u32;
            let mut returned = 0u64;
            for op in ops {
                match op {
                    Op::Submit(n) => {
                        next_id += 1;
                        let free = drv.report_free_descriptors();
                        let r = drv.submit_report(next_id, &blocks(RAM_PFN, u64::from(n), 0));
                        match r {
                            Ok(()) => { outstanding.insert(next_id); }
                            Err(Error::QueueFull) => prop_assert!(usize::from(n) > free),
                            Err(Error::Broken) => prop_assert!(drv.is_broken()),
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Device => { for _ in 0..4 { if !dev.process() { break; } } }
                    Op::Hold(h) => dev.set_hold_reports(h),
                    Op::Fault(f) => dev.inject(QueueKind::Reporting, f),
                    Op::Poll => drain(&mut drv, &mut outstanding, &mut returned),
                    Op::Restart => if drv.is_broken() { drv.restart().unwrap() },
                }
            }
            // Let everything finish: a healthy device, a restarted driver.
            dev.set_hold_reports(false);
            for _ in 0..4 {
                drain(&mut drv, &mut outstanding, &mut returned);
                if drv.is_broken() {
                    drv.restart().unwrap();
                }
                while dev.process() {}
            }
            drain(&mut drv, &mut outstanding, &mut returned);
            prop_assert!(outstanding.is_empty(), "lost batches {:?}", outstanding);
            let m = *drv.metrics();
            prop_assert_eq!(m.reports_completed + m.reports_failed, returned);
            prop_assert_eq!(m.reports_submitted, returned);
            prop_assert_eq!(drv.report_free_descriptors(), drv.report_capacity());
        }
    }
}

mod hostile_driver {
    //! The device model serves PDs on the host platform, so it must survive
    //! a driver that scribbles on its rings: garbage descriptors, loops,
    //! wild addresses and indices are counted, never a panic.
    use super::*;
    use balloon::model::RegisterFile;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn garbage_rings_do_not_crash_the_device(
            queue in 0usize..4,
            words in proptest::collection::vec((0usize..600, any::<u64>()), 1..64),
        ) {
            let dma = HostHal::install_default().unwrap();
            let regs = Arc::new(SharedRegion::create("regs", 4096).unwrap());
            let ram = Arc::new(GuestRam::create(RAM_BASE, MIB as usize).unwrap());
            let mut dev = BalloonDevice::new(
                regs.clone(),
                dma.clone(),
                ram,
                DeviceConfig::default(),
                Box::new(|| {}),
            )
            .unwrap();
            let t = SharedTransport::new(regs.clone(), Box::new(|_| {})).unwrap();
            let drv: Driver = VirtIOBalloon::new(t).unwrap();
            // SAFETY: the page is a RegisterFile (created by the device) and is
            // only accessed through atomics.
            let rf = unsafe { &*regs.as_ptr().cast::<RegisterFile>() };
            let q = &rf.queues[queue];
            let desc = q.desc.load(std::sync::atomic::Ordering::Acquire);
            // Scribble 8-byte words over the descriptor table and avail ring
            // (they share the queue's first DMA page).
            let base = (desc - dma.paddr) as usize;
            for (i, v) in words {
                let p = dma.region.as_ptr().wrapping_add(base + 8 * (i % 512)).cast::<u64>();
                // SAFETY: inside the queue's first DMA page; the device thread
                // does not run (the device is stepped here).
                unsafe { p.write_volatile(v) };
            }
            for _ in 0..8 {
                dev.process();
            }
            // The next driver (after the reset `drop` does) gets a working device.
            drop(drv);
            let t = SharedTransport::new(regs, Box::new(|_| {})).unwrap();
            let mut drv: Driver = VirtIOBalloon::new(t).unwrap();
            drv.submit_report(1, &blocks(RAM_PFN, 1, 0)).unwrap();
            let before = dev.counters().reports;
            while dev.process() {}
            prop_assert_eq!(drv.poll_reports(), Some((1, Ok(()))));
            prop_assert_eq!(dev.counters().reports, before + 1);
        }
    }
}

#[test]
fn reports_completed_out_of_order_are_matched_by_id() {
    let mut r = rig(DeviceConfig::default());
    r.dev.device().set_hold_reports(true);
    for id in 1..=3u32 {
        let first = RAM_PFN + u64::from(id) * 512;
        r.drv.submit_report(id, &blocks(first, 8, 0)).unwrap();
    }
    r.wait_device("three reports waiting", |d| d.reports_waiting() == 3);
    {
        let mut d = r.dev.device();
        d.set_reverse_reports();
        d.set_hold_reports(false);
    }
    r.dev.kick();
    // The device returns 3, 2, 1 (VIRTIO 1.2 §2.7.8 allows any order); the
    // driver answers each batch once, by its id, and frees its descriptors.
    let mut order = Vec::new();
    while order.len() < 3 {
        let (id, res) = r.wait_for("report completion", |d| d.poll_reports());
        assert_eq!(res, Ok(()));
        order.push(id);
    }
    assert_eq!(order, vec![3, 2, 1]);
    assert_eq!(r.dev.device().reports_waiting(), 0);
    assert_eq!(r.dev.device().counters().faults, 1);
    assert_eq!(r.dev.device().counters().reports, 3);
    assert_eq!(r.drv.report_free_descriptors(), 32);
    // The next report is processed in order again.
    r.drv.submit_report(9, &blocks(RAM_PFN, 1, 0)).unwrap();
    assert_eq!(
        r.reports(1).into_iter().collect::<Vec<_>>(),
        vec![(9, Ok(()))]
    );
}

/// Issue 16: the PD on PCI (x86_64) confirms the reporting queue's index by
/// its size (QEMU's 32): a device that numbers densely with a 32-entry
/// reporting queue and hinting offered has it at 3, where QEMU's numbering
/// would say 4. `Config::PCI` is what the x86_64 PD uses.
#[test]
fn the_pci_config_confirms_the_reporting_index_by_its_size() {
    let cfg = DeviceConfig {
        offered: hint_offered(),
        layout: QueueLayout::Dense,
        reporting_queue_size: Some(32),
        ..DeviceConfig::default()
    };
    let mut r = try_rig(cfg, Config::PCI, 64 * MIB).unwrap();
    assert_eq!(r.drv.queue_indices().reporting, Some(3));
    report_one(&mut r);
    // On QEMU's numbering it confirms queue 4.
    let cfg = DeviceConfig {
        offered: hint_offered(),
        ..DeviceConfig::default()
    };
    let mut r = try_rig(cfg, Config::PCI, 64 * MIB).unwrap();
    assert_eq!(r.drv.queue_indices().reporting, Some(4));
    report_one(&mut r);
    // A device whose queue sizes say nothing (all 128) but whose two
    // numberings agree is taken as it is: no choice to confirm (Cloud
    // Hypervisor-like on PCI).
    let cfg = DeviceConfig {
        layout: QueueLayout::Dense,
        ..DeviceConfig::default()
    };
    let mut r = try_rig(cfg, Config::PCI, 64 * MIB).unwrap();
    assert_eq!(r.drv.queue_indices().reporting, Some(3));
    report_one(&mut r);
}
