//! The balloon PD's core against the real memserver (`memserver::server`)
//! over real rings, and the device model on its own thread woken by the
//! futex doorbell. The test thread plays both PDs' event loops; the
//! memserver's timer fires at once (simulated time). Counters on all three
//! sides are the oracles; every wait is bounded.

use balloon::model::host::HostDevice;
use balloon::model::{
    BalloonDevice, DeviceConfig, EventFd, Fault, GuestRam, HostHal, RamRange, SharedRegion,
    SharedTransport,
};
use balloon::shell::{BalloonPd, Level, MAX_REPORTS};
use balloon::{QueueKind, VirtIOBalloon};
use memserver::server::{BalloonPort, ClientPort, Server};
use memserver::{MemCore, Tunables, ZoneId, ZoneSpec, metadata_bytes};
use memserver_api::{
    self as api, Block, FromBalloon, MemStats, RefuseReason, SLOT_SIZE, ToBalloon,
};
use pd_ring::{Consumer, Producer, RingMemory, ring_words};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CAP: usize = 64;
type Ring = RingMemory<{ ring_words(CAP, SLOT_SIZE) }>;

/// Room for the ballooned blocks, as the PD gives it the least.
fn block_list() -> &'static mut [u64] {
    Box::leak(vec![0u64; balloon::shell::MAX_BALLOONED].into_boxed_slice())
}

fn ring() -> &'static Ring {
    Box::leak(Box::new(Ring::new()))
}

const MIB: u64 = 1 << 20;
/// Two guests of 128 MiB each, as two RAM ranges (two memfds).
const ZONE_PAGES: u32 = 32768;
const ZONES: [ZoneSpec; 2] = [
    ZoneSpec {
        base_pfn: 0x40000,
        pages: ZONE_PAGES,
        owner: 0,
    },
    ZoneSpec {
        base_pfn: 0x80000,
        pages: ZONE_PAGES,
        owner: 1,
    },
];
const TOTAL_PAGES: u64 = 2 * ZONE_PAGES as u64;

fn tunables() -> Tunables {
    Tunables {
        reporting_order: 9,
        delay_ns: 1_000_000,
        capacity: 8,
        budget_divisor: 1,
        low_watermark_pages: 0,
        max_in_flight: 8,
        ..Tunables::default()
    }
}

fn log(level: Level, args: std::fmt::Arguments<'_>) {
    eprintln!("BALLOON|{level:?}: {args}");
}

type Pd = BalloonPd<'static, HostHal, SharedTransport>;

struct Device {
    dev: HostDevice,
    irq: EventFd,
    ram: Arc<GuestRam>,
}

/// The device on its thread, and a driver over a futex-doorbell transport.
fn device(cfg: DeviceConfig) -> (Device, VirtIOBalloon<HostHal, SharedTransport>) {
    let dma = HostHal::install_default().expect("dma window");
    let regs = Arc::new(SharedRegion::create("regs", 4096).expect("regs"));
    let ranges = ZONES
        .iter()
        .map(|z| RamRange {
            region: SharedRegion::create("ram", z.pages as usize * 4096).expect("ram"),
            base: z.base_pfn << 12,
        })
        .collect();
    let ram = Arc::new(GuestRam::from_ranges(ranges).expect("ram ranges"));
    let irq = EventFd::new().expect("eventfd");
    let irq2 = irq.clone();
    let model = BalloonDevice::new(
        regs.clone(),
        dma,
        ram.clone(),
        cfg,
        Box::new(move || irq2.signal()),
    )
    .expect("device");
    let dev = HostDevice::spawn(model, regs.clone(), ram.clone()).expect("device thread");
    let transport = SharedTransport::with_futex_doorbell(regs).expect("transport");
    let drv = VirtIOBalloon::new(transport).expect("driver init");
    (Device { dev, irq, ram }, drv)
}

struct Sys {
    // Dropped first: the driver resets the device while its thread runs.
    pd: Pd,
    server: Server<'static, 'static>,
    d: Device,
    timer: bool,
    /// The balloon asked for its watchdog timer (fired by the test).
    watchdog: bool,
    /// A guest of zone 0: its request producer and response consumer.
    guest: (Producer<'static>, Consumer<'static>),
    /// The same for a guest of zone 1.
    guest1: (Producer<'static>, Consumer<'static>),
}

fn sys() -> Sys {
    sys_with(DeviceConfig::default())
}

fn sys_with(cfg: DeviceConfig) -> Sys {
    let meta = Box::leak(vec![0u8; metadata_bytes(&ZONES)].into_boxed_slice());
    let (core, boot) = MemCore::new(&ZONES, meta, Some(tunables())).expect("core");
    let (to, from) = (ring(), ring());
    let port = BalloonPort {
        to: to.producer(SLOT_SIZE).unwrap(),
        from: from.consumer(SLOT_SIZE).unwrap(),
    };
    let (req, resp) = (ring(), ring());
    let client = ClientPort {
        zone: ZoneId(0),
        req: req.consumer(SLOT_SIZE).unwrap(),
        resp: resp.producer(SLOT_SIZE).unwrap(),
    };
    let guest = (
        req.producer(SLOT_SIZE).unwrap(),
        resp.consumer(SLOT_SIZE).unwrap(),
    );
    let (req1, resp1) = (ring(), ring());
    let client1 = ClientPort {
        zone: ZoneId(1),
        req: req1.consumer(SLOT_SIZE).unwrap(),
        resp: resp1.producer(SLOT_SIZE).unwrap(),
    };
    let guest1 = (
        req1.producer(SLOT_SIZE).unwrap(),
        resp1.consumer(SLOT_SIZE).unwrap(),
    );
    let server = Server::new(core, [client, client1], port, boot).expect("server");
    let (d, drv) = device(cfg);
    let pd = BalloonPd::new(
        drv,
        to.consumer(SLOT_SIZE).unwrap(),
        from.producer(SLOT_SIZE).unwrap(),
        block_list(),
        log,
    );
    Sys {
        pd,
        server,
        d,
        timer: false,
        watchdog: false,
        guest,
        guest1,
    }
}

impl Sys {
    /// One round of both event loops.
    fn step(&mut self) {
        self.server.balloon_notified();
        if std::mem::take(&mut self.timer) {
            self.server.timer_expired();
        }
        if self.server.take_wake().arm_timer_ns.is_some() {
            self.timer = true;
        }
        let irq = self.d.irq.wait(Some(Duration::from_millis(2)));
        if self.pd.run(irq).arm_timer_ns.is_some() {
            self.watchdog = true;
        }
    }

    /// The balloon's watchdog timer fires (simulated time: whenever the
    /// test says); whether it was armed.
    fn fire_watchdog(&mut self) -> bool {
        let armed = std::mem::take(&mut self.watchdog);
        if self.pd.watchdog_expired().arm_timer_ns.is_some() {
            self.watchdog = true;
        }
        armed
    }

    fn until(&mut self, what: &str, mut cond: impl FnMut(&mut Sys) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.step();
        }
    }

    /// The guest asks for one page; the memserver's answer.
    fn guest_alloc(&mut self) -> api::ClientResponse {
        self.guest_alloc_in(0)
    }

    /// The guest of zone `z` asks for one page; the memserver's answer.
    fn guest_alloc_in(&mut self, z: usize) -> api::ClientResponse {
        let mut buf = [0u8; SLOT_SIZE];
        let req = api::Request {
            tag: 1,
            body: api::ClientRequest::Alloc { order: 0 },
        };
        let bytes = api::encode(&req, &mut buf).unwrap();
        let g = if z == 0 {
            &mut self.guest
        } else {
            &mut self.guest1
        };
        g.0.push(bytes).unwrap();
        self.server.client_notified(z);
        let g = if z == 0 {
            &mut self.guest
        } else {
            &mut self.guest1
        };
        let n = g.1.pop(&mut buf).unwrap().expect("a response");
        api::decode::<api::Response>(&buf[..n]).unwrap().body
    }

    fn mem(&self) -> memserver::Stats {
        self.server.core().stats()
    }

    /// Reporting has settled: nothing isolated or in flight anywhere and
    /// every free page reported.
    fn settled(&mut self) -> bool {
        let s = self.mem();
        s.isolated_pages == 0
            && s.reported_pages + s.ballooned_pages == TOTAL_PAGES
            && self.pd.is_idle()
    }

    /// Reporting settles with every batch answered once, at least `failed`
    /// of them failed, and everything reported in the end. (The model's
    /// device thread may still be mid-round when the driver resets it,
    /// which can fail the restarted queues once more: the books must
    /// balance either way.)
    fn settle_after_failures(&mut self, failed: u64) {
        self.until("reporting to settle", Sys::settled);
        self.check_books();
        let c = self.server.counters();
        assert!(
            c.completions_failed >= failed,
            "failed: {}",
            c.completions_failed
        );
        assert_eq!(c.completions_ok + c.completions_failed, c.batches_sent);
        assert_eq!(self.mem().reported_pages, TOTAL_PAGES);
        // The restarts re-sent the device's limits; none read a broken
        // device's capacity (0) and stopped reporting.
        assert!(!self.server.reporting_stopped_by_device());
        assert_eq!(self.server.core().tunables(), Some(tunables()));
    }

    /// Every batch the memserver sent was answered exactly once.
    fn check_books(&self) {
        let c = self.server.counters();
        let p = self.pd.counters();
        assert_eq!(c.batches_sent, p.reports_received);
        assert_eq!(c.completions_ok, p.reports_ok);
        assert_eq!(c.completions_failed, p.reports_failed);
        // Only inflates the memserver had no memory for were refused.
        assert_eq!(c.balloon_refused, p.inflate_refused + p.deflate_refused);
        assert_eq!(p.deflate_refused, 0);
        assert_eq!(c.balloon_misbehaviour, 0);
        assert_eq!(p.malformed + p.unexpected + p.ring_misbehaviour, 0);
        self.server
            .core()
            .check_invariants()
            .expect("memserver invariants");
    }
}

#[test]
fn reports_flow_both_ways_and_ram_leaves_both_memfds() {
    let mut s = sys();
    // Guests touched 8 MiB of each RAM range before reporting started.
    for z in &ZONES {
        assert!(s.d.ram.touch(z.base_pfn << 12, 8 * MIB));
    }
    let held = s.d.dev.held_bytes().unwrap();
    assert!(held >= 16 * MIB, "touched memory is held: {held}");
    s.until("reporting to settle", Sys::settled);
    s.check_books();
    let c = s.server.counters();
    assert!(c.batches_sent >= 8, "batches: {}", c.batches_sent);
    assert_eq!(c.completions_failed, 0);
    // What the memserver counts as reported, the device discarded.
    let dev = s.d.dev.counters();
    assert_eq!(dev.bytes_discarded, s.mem().reported_pages * 4096);
    assert_eq!(dev.bytes_discarded, TOTAL_PAGES * 4096);
    assert_eq!(dev.ranges_skipped, 0);
    assert_eq!(dev.reports, c.batches_sent);
    // Each memfd gave its touched pages back.
    for r in s.d.ram.ranges() {
        assert_eq!(
            r.region.allocated_bytes().unwrap(),
            0,
            "range {:#x}",
            r.base
        );
    }
    assert_eq!(s.d.dev.held_bytes().unwrap(), 0);
    assert_eq!(s.pd.driver().metrics().pages_reported, TOTAL_PAGES);
}

#[test]
fn a_full_reporting_queue_makes_batches_wait_locally() {
    let mut s = sys();
    s.d.dev.device().set_hold_reports(true);
    // 64 order-10 blocks in batches of 8, all 8 in flight at the memserver,
    // but QEMU's reporting queue has 32 descriptors: 4 batches wait here.
    s.until("the reporting queue to fill", |s| {
        s.pd.driver().report_free_descriptors() == 0 && s.pd.counters().reports_received == 8
    });
    assert_eq!(s.pd.driver().reports_in_flight(), 4);
    assert!(s.pd.counters().reports_waited > 0);
    assert_eq!(s.pd.counters().reports_ok, 0);
    s.d.dev.device().set_hold_reports(false);
    s.d.dev.kick();
    s.until("reporting to settle", Sys::settled);
    s.check_books();
    assert_eq!(s.server.counters().completions_failed, 0);
    assert_eq!(s.mem().reported_pages, TOTAL_PAGES);
}

#[test]
fn inflate_to_a_target_and_deflate_back() {
    let mut s = sys();
    s.until("reporting to settle", Sys::settled);
    // Not a power of two: deflating part of it splits blocks.
    let target = 5000;
    s.d.dev.set_target(target);
    s.until("the balloon to reach the target", |s| {
        s.pd.driver().actual() == target && s.pd.is_idle()
    });
    assert_eq!(s.d.dev.actual(), target);
    assert_eq!(s.pd.ballooned_pages(), u64::from(target));
    assert_eq!(s.mem().ballooned_pages, u64::from(target));
    assert_eq!(s.d.dev.counters().pages_inflated, u64::from(target));
    s.d.dev.set_target(1234);
    s.until("the balloon to shrink", |s| {
        s.pd.driver().actual() == 1234 && s.pd.is_idle()
    });
    assert_eq!(s.mem().ballooned_pages, 1234);
    assert_eq!(s.pd.ballooned_pages(), 1234);
    s.d.dev.set_target(0);
    s.until("the balloon to empty", |s| {
        s.pd.driver().actual() == 0 && s.pd.is_idle() && s.mem().ballooned_pages == 0
    });
    let p = s.pd.counters();
    assert_eq!(p.pages_inflated, u64::from(target));
    assert_eq!(p.pages_deflated, u64::from(target));
    assert_eq!(p.inflate_refused + p.deflate_refused + p.blocks_returned, 0);
    assert_eq!(s.pd.ballooned().count(), 0);
    let dev = s.d.dev.counters();
    assert_eq!(dev.pages_inflated - dev.pages_deflated, 0);
    assert_eq!(s.server.counters().inflated_pages, u64::from(target));
    assert_eq!(s.server.counters().deflated_pages, u64::from(target));
    s.check_books();
    // The pages are free again and get reported again.
    s.until("reporting to settle", Sys::settled);
}

#[test]
fn inflate_beyond_free_memory_stops_where_the_memserver_says() {
    let mut s = sys();
    s.until("reporting to settle", Sys::settled);
    s.d.dev.set_target(u32::MAX / 2);
    s.until("the memserver to run out", |s| {
        s.mem().ballooned_pages == TOTAL_PAGES && s.pd.is_idle()
    });
    // The last request was refused; no more are sent until the target changes.
    let asked = s.pd.counters().inflate_requests;
    assert!(s.pd.counters().inflate_refused >= 1);
    for _ in 0..20 {
        s.step();
    }
    assert_eq!(s.pd.counters().inflate_requests, asked);
    assert_eq!(s.pd.driver().actual() as u64, TOTAL_PAGES);
    s.d.dev.set_target(0);
    s.until("the balloon to empty", |s| {
        s.pd.driver().actual() == 0 && s.pd.is_idle() && s.mem().ballooned_pages == 0
    });
    s.check_books();
}

#[test]
fn stats_come_from_the_memserver() {
    let mut s = sys();
    s.until("reporting to settle", Sys::settled);
    s.d.dev.set_target(512);
    s.until("the balloon to reach the target", |s| {
        s.pd.driver().actual() == 512 && s.pd.is_idle()
    });
    s.until("the device to hold the stats buffer", |s| {
        s.d.dev.request_stats()
    });
    s.until("fresh statistics", |s| {
        s.d.dev.last_stats().is_some_and(|st| st.total != 0) && s.pd.is_idle()
    });
    let st = s.d.dev.last_stats().unwrap();
    let m = s.server.mem_stats();
    assert_eq!(st.total, TOTAL_PAGES * 4096);
    assert_eq!(st.free, m.free_pages * 4096);
    assert_eq!(st.available, m.available_pages * 4096);
    assert_eq!(st.free, (TOTAL_PAGES - 512) * 4096);
    let p = s.pd.counters();
    assert_eq!((p.stats_requests, p.stats_updates), (1, 1));
    s.check_books();
}

#[test]
fn a_device_reset_mid_batch_fails_each_batch_once_and_loses_nothing() {
    let mut s = sys();
    s.d.dev.device().set_hold_reports(true);
    s.until("batches on the device", |s| {
        s.pd.driver().reports_in_flight() == 4 && s.pd.counters().reports_received == 8
    });
    // The device resets itself on its next reporting completion.
    s.d.dev.device().inject(QueueKind::Reporting, Fault::Reset);
    s.d.dev.device().set_hold_reports(false);
    s.d.dev.kick();
    s.until("the driver to restart", |s| {
        s.pd.counters().device_restarts >= 1
    });
    // The 4 batches on the device failed (once each); the memserver
    // reported their blocks again later.
    s.settle_after_failures(4);
    assert_eq!(s.mem().free_pages, TOTAL_PAGES);
}

#[test]
fn a_device_reset_during_a_deflate_posts_it_again() {
    let mut s = sys();
    s.until("reporting to settle", Sys::settled);
    s.d.dev.set_target(2048);
    s.until("the balloon to reach the target", |s| {
        s.pd.driver().actual() == 2048 && s.pd.is_idle()
    });
    s.d.dev.device().inject(QueueKind::Deflate, Fault::Reset);
    s.d.dev.set_target(0);
    s.until("the balloon to empty", |s| {
        s.pd.driver().actual() == 0 && s.pd.is_idle() && s.mem().ballooned_pages == 0
    });
    assert!(s.pd.counters().device_restarts >= 1);
    assert_eq!(s.pd.counters().pages_deflated, 2048);
    // The device saw the failed request's PFNs before it reset, then again.
    assert!(s.d.dev.counters().pages_deflated > 2048);
    s.check_books();
}

/// The rings without a memserver: the test writes `ToBalloon` itself.
struct Raw {
    pd: Pd,
    to: Producer<'static>,
    from: Consumer<'static>,
    d: Device,
}

fn raw() -> Raw {
    let (to, from) = (ring(), ring());
    let (d, drv) = device(DeviceConfig::default());
    let pd = BalloonPd::new(
        drv,
        to.consumer(SLOT_SIZE).unwrap(),
        from.producer(SLOT_SIZE).unwrap(),
        block_list(),
        log,
    );
    let mut r = Raw {
        pd,
        to: to.producer(SLOT_SIZE).unwrap(),
        from: from.consumer(SLOT_SIZE).unwrap(),
        d,
    };
    // The first thing the balloon says: the device's limits (QEMU's
    // reporting queue holds 32).
    r.pd.run(false);
    assert_eq!(
        r.received(),
        vec![FromBalloon::DeviceLimits {
            report_capacity: 32
        }]
    );
    r
}

impl Raw {
    fn send(&mut self, m: &ToBalloon) {
        let mut buf = [0u8; SLOT_SIZE];
        self.to.push(api::encode(m, &mut buf).unwrap()).unwrap();
    }

    fn received(&mut self) -> Vec<FromBalloon> {
        let mut buf = [0u8; SLOT_SIZE];
        let mut out = Vec::new();
        while let Some(n) = self.from.pop(&mut buf).unwrap() {
            out.push(api::decode_from_balloon(&buf[..n]).unwrap());
        }
        out
    }

    /// Runs the PD until it sends something or `rounds` pass.
    fn run_for(&mut self, rounds: usize) -> Vec<FromBalloon> {
        let mut out = Vec::new();
        for _ in 0..rounds {
            let irq = self.d.irq.wait(Some(Duration::from_millis(2)));
            self.pd.run(irq);
            out.extend(self.received());
        }
        out
    }

    fn until_message(&mut self) -> FromBalloon {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let irq = self.d.irq.wait(Some(Duration::from_millis(5)));
            self.pd.run(irq);
            if let Some(m) = self.received().pop() {
                return m;
            }
            assert!(Instant::now() < deadline, "no message from the balloon");
        }
    }
}

fn batch(pfn: u64, n: u64) -> heapless::Vec<Block, 32> {
    (0..n)
        .map(|i| Block {
            pfn: pfn + 512 * i,
            order: 9,
        })
        .collect()
}

#[test]
fn malformed_and_unexpected_messages_are_counted_and_change_nothing() {
    let mut r = raw();
    r.to.push(&[]).unwrap();
    r.to.push(&[2, 0, 1]).unwrap(); // another protocol version
    r.to.push(&[api::VERSION, 0xff, 0xff]).unwrap(); // no such variant
    r.to.push(&[api::VERSION, 0, 5, 1, 0x80]).unwrap(); // truncated Report
    // Well-formed, but answers nothing we asked.
    r.send(&ToBalloon::Inflated {
        req: 77,
        blocks: batch(0x40000, 2),
        last: true,
    });
    r.send(&ToBalloon::Deflated { req: 9, pages: 512 });
    r.send(&ToBalloon::Refused {
        req: Some(3),
        reason: RefuseReason::NoMemory,
    });
    r.send(&ToBalloon::Refused {
        req: None,
        reason: RefuseReason::Malformed,
    });
    assert_eq!(r.run_for(10), vec![]);
    let c = r.pd.counters();
    assert_eq!(c.messages, 8);
    assert_eq!(c.malformed, 4);
    assert_eq!(c.unexpected, 4);
    assert!(r.pd.is_idle());
    assert_eq!(r.pd.ballooned().count(), 0);
    assert_eq!(r.pd.driver().actual(), 0);
    assert_eq!(r.d.dev.counters().pages_inflated, 0);
    assert_eq!(r.d.dev.counters().reports, 0);
    // And it still serves a good batch.
    r.send(&ToBalloon::Report {
        batch: 5,
        blocks: batch(0x40000, 4),
    });
    assert_eq!(
        r.until_message(),
        FromBalloon::ReportDone { batch: 5, ok: true }
    );
    assert_eq!(r.d.dev.counters().ranges_discarded, 4);
}

#[test]
fn batches_that_cannot_be_posted_are_failed_at_once() {
    let mut r = raw();
    // Misaligned (decodes: alignment is the driver's check).
    r.send(&ToBalloon::Report {
        batch: 1,
        blocks: [Block {
            pfn: 0x40001,
            order: 9,
        }]
        .into_iter()
        .collect(),
    });
    r.send(&ToBalloon::Report {
        batch: 2,
        blocks: heapless::Vec::new(),
    });
    let got = r.run_for(5);
    assert_eq!(
        got,
        vec![
            FromBalloon::ReportDone {
                batch: 1,
                ok: false
            },
            FromBalloon::ReportDone {
                batch: 2,
                ok: false
            },
        ]
    );
    assert_eq!(r.d.dev.counters().reports, 0);
}

#[test]
fn answers_wait_for_ring_room_and_none_is_dropped() {
    let mut r = raw();
    // The memserver does not consume: the from ring (64 slots) fills up.
    // With MAX_REPORTS tracked the PD stops taking batches off its ring, so
    // every answer it owes has a place to wait.
    let n = (CAP + 2 * MAX_REPORTS) as u32;
    let mut sent = 0;
    let mut answered = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.len() < n as usize {
        while sent < n && r.to.free_slots().unwrap() > 0 {
            r.send(&ToBalloon::Report {
                batch: sent,
                blocks: batch(0x40000 + 1024 * u64::from(sent % 32), 1),
            });
            sent += 1;
        }
        let irq = r.d.irq.wait(Some(Duration::from_millis(2)));
        r.pd.run(irq);
        // Consume only once the ring is full, to exercise the wait.
        if r.from.available().unwrap() == CAP as u32 || sent == n {
            for m in r.received() {
                let FromBalloon::ReportDone { batch, ok } = m else {
                    panic!("unexpected {m:?}");
                };
                assert!(ok);
                assert!(answered.insert(batch), "batch {batch} answered twice");
            }
        }
        assert!(Instant::now() < deadline, "answers: {}", answered.len());
    }
    assert_eq!(r.pd.counters().reports_ok, u64::from(n));
}

#[test]
fn stats_convert_pages_to_bytes() {
    let mut r = raw();
    r.until_stats_buffer();
    assert!(r.d.dev.request_stats());
    assert_eq!(r.until_message(), FromBalloon::StatsRequest);
    r.send(&ToBalloon::Stats(MemStats {
        total_pages: 1000,
        free_pages: 300,
        available_pages: 200,
        ..MemStats::default()
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.d.dev.last_stats().is_none_or(|s| s.total == 0) {
        assert!(Instant::now() < deadline, "stats never reached the device");
        r.run_for(1);
    }
    let st = r.d.dev.last_stats().unwrap();
    assert_eq!(
        (st.total, st.free, st.available),
        (1000 * 4096, 300 * 4096, 200 * 4096)
    );
}

impl Raw {
    fn until_stats_buffer(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.d.dev.counters().stats_received == 0 {
            assert!(Instant::now() < deadline, "no stats buffer");
            self.run_for(1);
        }
    }
}

#[test]
fn the_core_fits_comfortably_on_the_pd_stack() {
    // pd::microkit::run keeps the handler on the stack (system.xml gives
    // the balloon 64 KiB); the core must leave most of it free.
    let size = std::mem::size_of::<Pd>();
    eprintln!("BalloonPd: {size} bytes");
    assert!(size < 24 * 1024, "BalloonPd is {size} bytes");
}

#[test]
fn the_balloon_stops_growing_when_its_block_list_is_full() {
    use balloon::shell::MAX_BALLOONED;
    let mut r = raw();
    r.d.dev.set_target(100_000);
    let mut next_pfn = 0x40000;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Answer every Inflate with 32 single pages until the PD stops asking.
    loop {
        assert!(Instant::now() < deadline, "the PD kept asking");
        let got = r.run_for(3);
        let mut asked = false;
        for m in got {
            let FromBalloon::Inflate { req, .. } = m else {
                panic!("unexpected {m:?}");
            };
            asked = true;
            let blocks = (0..32)
                .map(|i| Block {
                    pfn: next_pfn + i,
                    order: 0,
                })
                .collect();
            next_pfn += 32;
            r.send(&ToBalloon::Inflated {
                req,
                blocks,
                last: false,
            });
        }
        if !asked && r.pd.is_idle() && r.pd.counters().ballooned_full > 0 {
            break;
        }
    }
    let n = r.pd.ballooned().count();
    assert!(
        n <= MAX_BALLOONED && n + 32 + 11 > MAX_BALLOONED,
        "{n} blocks"
    );
    assert_eq!(r.pd.driver().actual() as usize, n);
    assert_eq!(r.d.dev.actual() as usize, n);
    // It stays below the target and asks for nothing more.
    assert_eq!(r.run_for(10), vec![]);
    assert_eq!(r.pd.counters().inflate_requests as usize, n / 32);
}

/// Deflate on OOM: the balloon holds everything, a guest's allocation
/// fails, the memserver asks the balloon, which deflates with the OOM reason
/// (the device offers DEFLATE_ON_OOM) and does not re-inflate until the
/// host sets a new target.
#[test]
fn an_out_of_memory_guest_gets_ballooned_pages_back() {
    let mut s = sys();
    s.until("reporting to settle", Sys::settled);
    s.d.dev.set_target(TOTAL_PAGES as u32);
    s.until("the balloon to take everything", |s| {
        s.mem().ballooned_pages == TOTAL_PAGES && s.pd.is_idle()
    });
    let actual = s.pd.driver().actual();
    assert_eq!(
        s.guest_alloc(),
        api::ClientResponse::Error(api::ClientError::NoMemory)
    );
    assert_eq!(s.server.counters().reclaims, 1);
    s.until("the balloon to deflate on OOM", |s| {
        s.pd.counters().reclaim_requests == 1
            && s.mem().ballooned_pages <= TOTAL_PAGES - 512
            && s.pd.is_idle()
    });
    assert!(matches!(s.guest_alloc(), api::ClientResponse::Allocated(_)));
    let dev = s.d.dev.counters();
    assert!(dev.pages_deflated >= 512, "device told: {dev:?}");
    assert!(s.pd.driver().actual() < actual);
    // No fight: the target still says "everything", but the balloon waits
    // for the host to set a new one.
    let asked = s.pd.counters().inflate_requests;
    for _ in 0..20 {
        s.step();
    }
    assert_eq!(s.pd.counters().inflate_requests, asked);
    s.check_books();
}

#[test]
fn without_deflate_on_oom_the_balloon_keeps_its_pages() {
    let mut cfg = DeviceConfig::default();
    cfg.offered.remove(balloon::BalloonFeatures::DEFLATE_ON_OOM);
    let mut s = sys_with(cfg);
    s.until("reporting to settle", Sys::settled);
    s.d.dev.set_target(TOTAL_PAGES as u32);
    s.until("the balloon to take everything", |s| {
        s.mem().ballooned_pages == TOTAL_PAGES && s.pd.is_idle()
    });
    assert_eq!(
        s.guest_alloc(),
        api::ClientResponse::Error(api::ClientError::NoMemory)
    );
    s.until("the request to be seen", |s| {
        s.pd.counters().reclaim_requests == 1
    });
    for _ in 0..20 {
        s.step();
    }
    assert_eq!(s.pd.counters().reclaim_ignored, 1);
    assert_eq!(s.mem().ballooned_pages, TOTAL_PAGES);
    s.check_books();
}

/// A memserver that hands out a frame twice (in one message, or again in a
/// later one) does not get it counted twice: the copies are ignored and
/// counted as unexpected (found by the `balloon_pd` fuzz target).
#[test]
fn inflated_frames_already_held_are_ignored() {
    let mut r = raw();
    r.d.dev.set_target(2048);
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent < 2 {
        assert!(Instant::now() < deadline, "the PD did not ask twice");
        for m in r.run_for(3) {
            let FromBalloon::Inflate { req, .. } = m else {
                panic!("unexpected {m:?}");
            };
            // First: one 2 MiB block, plus a page inside it. Second: the
            // same block again, plus a new one.
            let blocks = if sent == 0 {
                [(0x40000, 9), (0x40000, 0)]
            } else {
                [(0x40000, 9), (0x40200, 9)]
            };
            r.send(&ToBalloon::Inflated {
                req,
                blocks: blocks
                    .into_iter()
                    .map(|(pfn, order)| Block { pfn, order })
                    .collect(),
                last: false,
            });
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.pd.driver().actual() < 1024 {
        assert!(
            Instant::now() < deadline,
            "the balloon did not reach 1024 pages"
        );
        r.run_for(1);
    }
    let mut held: Vec<_> = r.pd.ballooned().map(|b| (b.pfn, b.order)).collect();
    held.sort_unstable();
    assert_eq!(held, vec![(0x40000, 9), (0x40200, 9)]);
    assert_eq!(r.pd.counters().unexpected, 2);
    assert_eq!(r.pd.driver().actual(), 1024);
    assert_eq!(r.d.dev.counters().pages_inflated, 1024);
}

/// A system whose balloon has a 1 s watchdog and whose device holds the
/// first 4 report batches; the watchdog is armed by them.
fn held_with_watchdog() -> Sys {
    let mut s = sys();
    s.pd.set_watchdog(Some(1_000_000_000));
    s.d.dev.device().set_hold_reports(true);
    s.until("batches on the device", |s| {
        s.pd.driver().reports_in_flight() == 4
    });
    assert!(s.watchdog, "requests on the device arm the watchdog");
    s
}

/// A device that takes report batches and never completes them: without a
/// watchdog they would stay isolated until some other event; with it, one
/// period with requests outstanding and no completion resets the device,
/// the batches come back unreported, and the restarted device reports them.
/// A device that reset without a word is seen at the watchdog's event (its
/// status says so) and restarted the same way.
fn stalled_device_is_reset_by_the_watchdog(fault: Option<Fault>) {
    let mut s = held_with_watchdog();
    // Wedged: the device takes a batch and answers nothing (or resets
    // without a word), so no event ever comes; without a fault it just
    // keeps holding them.
    if let Some(f) = fault {
        s.d.dev.device().inject(QueueKind::Reporting, f);
        s.d.dev.device().set_hold_reports(false);
        s.d.dev.kick();
        // Only the device runs meanwhile: the balloon has no event.
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.d.dev.counters().faults == 0 {
            assert!(Instant::now() < deadline, "timed out waiting for the fault");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let isolated = s.mem().isolated_pages;
    assert!(isolated > 0);
    assert_eq!(s.pd.counters().watchdog_resets, 0);
    assert!(s.fire_watchdog());
    assert!(s.pd.counters().device_restarts >= 1);
    let errors = s.pd.driver().metrics().errors;
    if fault == Some(Fault::SilentReset) {
        // Seen by looking, not by waiting: no stall.
        assert_eq!(s.pd.counters().watchdog_resets, 0);
        assert_eq!((errors.device_reset, errors.stalled), (1, 0));
    } else {
        assert_eq!(s.pd.counters().watchdog_resets, 1);
        assert_eq!((errors.device_reset, errors.stalled), (0, 1));
    }
    s.d.dev.device().set_hold_reports(false);
    s.d.dev.kick();
    s.settle_after_failures(4);
}

#[test]
fn a_device_that_loses_batches_is_reset_by_the_watchdog() {
    stalled_device_is_reset_by_the_watchdog(Some(Fault::Lose));
}

#[test]
fn a_device_that_resets_silently_is_noticed_by_the_watchdog() {
    stalled_device_is_reset_by_the_watchdog(Some(Fault::SilentReset));
}

#[test]
fn a_device_that_holds_batches_is_reset_by_the_watchdog() {
    stalled_device_is_reset_by_the_watchdog(None);
}

/// A device that completed something since the watchdog was armed is
/// slow, not stalled; and an idle device arms nothing.
#[test]
fn completions_hold_the_watchdog_off() {
    let mut s = held_with_watchdog();
    // The device answers late, but answers: everything gets reported
    // before the timer fires.
    s.d.dev.device().set_hold_reports(false);
    s.d.dev.kick();
    s.until("reporting to settle", Sys::settled);
    assert!(s.pd.counters().reports_ok >= 8);
    assert!(s.fire_watchdog());
    assert_eq!(s.pd.counters().watchdog_resets, 0);
    assert_eq!(s.pd.counters().device_restarts, 0);
    // Idle: not armed again, by the expiry or by later events.
    assert!(!s.watchdog);
    for _ in 0..5 {
        s.step();
    }
    assert!(!s.watchdog);
    s.check_books();
}

/// Issue 16: only frames of the zones the balloon was given go to the
/// device. A report or an inflated block outside them is refused and
/// counted; the device sees nothing of it.
#[test]
fn frames_outside_the_given_zones_never_reach_the_device() {
    let mut r = raw();
    // One zone: 0x40000..0x48000 (128 MiB).
    r.pd.set_zones(&[(0x40000, 0x8000)]);
    // Inside, then straddling the end, then far outside (below 2^40, so
    // it decodes).
    r.send(&ToBalloon::Report {
        batch: 1,
        blocks: batch(0x40000, 2),
    });
    r.send(&ToBalloon::Report {
        batch: 2,
        blocks: batch(0x47e00, 2),
    });
    r.send(&ToBalloon::Report {
        batch: 3,
        blocks: batch(0xff_0000_0000, 1),
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 3 {
        got.extend(r.run_for(1));
        assert!(Instant::now() < deadline, "answers: {got:?}");
    }
    got.sort_by_key(|m| match m {
        FromBalloon::ReportDone { batch, .. } => *batch,
        _ => u32::MAX,
    });
    assert_eq!(
        got,
        vec![
            FromBalloon::ReportDone { batch: 1, ok: true },
            FromBalloon::ReportDone {
                batch: 2,
                ok: false
            },
            FromBalloon::ReportDone {
                batch: 3,
                ok: false
            },
        ]
    );
    assert_eq!(r.d.dev.counters().reports, 1);
    assert_eq!(r.d.dev.counters().ranges_discarded, 2);
    assert_eq!(r.pd.counters().foreign_blocks, 2);
}

/// Issue 16: the device's limits reach the policy. A device that does not
/// offer REPORTING stops reporting (it used to fail every batch and retry
/// every delay, forever); the timer is no longer armed once the balloon
/// has told the memserver.
#[test]
fn without_reporting_the_memserver_stops_instead_of_retrying_forever() {
    let mut s = sys_with(DeviceConfig {
        offered: balloon::BalloonFeatures::STATS_VQ | balloon::BalloonFeatures::VERSION_1,
        ..DeviceConfig::default()
    });
    // The balloon tells the memserver the device's limits; reporting
    // stops (bounded wait for the condition).
    s.until("reporting to stop", |s| {
        s.server.core().tunables().is_none() && !s.server.core().pass_running()
    });
    // From then on no pass runs however long the loops go: the failed
    // count stays, and the timer is not armed again.
    let failed = s.server.counters().completions_failed;
    for _ in 0..50 {
        s.step();
    }
    assert!(!s.timer, "the memserver's timer is armed again");
    assert_eq!(s.server.counters().completions_failed, failed);
    assert!(s.server.core().tunables().is_none(), "reporting stopped");
    assert!(s.server.reporting_stopped_by_device());
    assert_eq!(s.mem().isolated_pages, 0);
    s.check_books();
}

/// Issue 16: deflate on OOM gives back pages of the zone that is short,
/// not whichever blocks the balloon holds: the other guest's zone keeps
/// its ballooned pages, and the short guest gets memory.
#[test]
fn deflate_on_oom_gives_back_the_short_zones_pages() {
    let mut s = sys();
    s.until("reporting to settle", Sys::settled);
    // Half first, then the rest, so the balloon holds one zone's blocks
    // after the other's.
    s.d.dev.set_target(ZONE_PAGES);
    s.until("the balloon to take half", |s| {
        s.mem().ballooned_pages == u64::from(ZONE_PAGES) && s.pd.is_idle()
    });
    s.d.dev.set_target(TOTAL_PAGES as u32);
    s.until("the balloon to take everything", |s| {
        s.mem().ballooned_pages == TOTAL_PAGES && s.pd.is_idle()
    });
    // Both guests run out; each zone gets its own pages back.
    for z in [0, 1] {
        let short = s
            .server
            .core()
            .zone_stats(ZoneId(z as u16))
            .unwrap()
            .ballooned_pages;
        assert_eq!(
            s.guest_alloc_in(z),
            api::ClientResponse::Error(api::ClientError::NoMemory)
        );
        let other = s
            .server
            .core()
            .zone_stats(ZoneId(1 - z as u16))
            .unwrap()
            .ballooned_pages;
        s.until("the balloon to deflate on OOM", |s| {
            s.server
                .core()
                .zone_stats(ZoneId(z as u16))
                .unwrap()
                .ballooned_pages
                < short
                && s.pd.is_idle()
        });
        assert_eq!(
            s.server
                .core()
                .zone_stats(ZoneId(1 - z as u16))
                .unwrap()
                .ballooned_pages,
            other,
            "zone {z} was short; the other zone keeps its ballooned pages"
        );
        assert!(matches!(
            s.guest_alloc_in(z),
            api::ClientResponse::Allocated(_)
        ));
    }
    s.check_books();
}

/// Issue 16: hypervisor-agnostic. Against every device profile of the
/// model (QEMU's and the shapes of other VMMs' devices), the driver and
/// the memserver report everything, learn the device's batch limit, and
/// follow the balloon target up and down, with the books balanced.
#[test]
fn every_device_profile_passes_the_end_to_end_checks() {
    for (name, cfg) in DeviceConfig::profiles() {
        println!("profile {name}");
        let mut s = sys_with(cfg);
        s.until("reporting to settle", Sys::settled);
        let queue = s.pd.driver().report_capacity() as u16;
        if let Some(size) = cfg.reporting_queue_size {
            assert_eq!(u32::from(queue), size, "{name}");
        }
        assert_eq!(s.server.device_report_capacity(), Some(queue), "{name}");
        assert_eq!(
            s.server.core().tunables().map(|t| t.capacity),
            Some(tunables().capacity.min(queue)),
            "{name}: the queue size lowers the capacity"
        );
        assert_eq!(
            s.pd.driver().queue_indices().stats.is_some(),
            cfg.offered.contains(balloon::BalloonFeatures::STATS_VQ),
            "{name}"
        );
        let target = 5000;
        s.d.dev.set_target(target);
        s.until("the balloon to reach the target", |s| {
            s.pd.driver().actual() == target && s.pd.is_idle()
        });
        assert_eq!(s.mem().ballooned_pages, u64::from(target), "{name}");
        s.d.dev.set_target(0);
        s.until("the balloon to empty", |s| {
            s.pd.driver().actual() == 0 && s.pd.is_idle() && s.mem().ballooned_pages == 0
        });
        s.check_books();
        s.until("reporting to settle again", Sys::settled);
        let c = s.server.counters();
        assert_eq!(c.completions_failed, 0, "{name}");
        assert_eq!(s.d.dev.counters().ranges_skipped, 0, "{name}");
    }
}

/// An inflate that fell short stalls the balloon until the memserver says
/// more came (a VM filled its balloon): then it asks again, for the rest.
#[test]
fn more_to_inflate_resumes_a_stalled_inflate() {
    let mut r = raw();
    r.d.dev.set_target(1024);
    let FromBalloon::Inflate { req, pages } = r.until_message() else {
        panic!("no inflate");
    };
    assert_eq!(pages, 1024);
    // Half now, and no more for the moment.
    r.send(&ToBalloon::Inflated {
        req,
        blocks: batch(0x40000, 1),
        last: true,
    });
    let quiet = r.run_for(20);
    assert!(
        quiet
            .iter()
            .all(|m| !matches!(m, FromBalloon::Inflate { .. })),
        "asked again while stalled: {quiet:?}"
    );
    r.send(&ToBalloon::MoreToInflate);
    let FromBalloon::Inflate { pages, .. } = r.until_message() else {
        panic!("no inflate after MoreToInflate");
    };
    assert_eq!(pages, 512);
    assert_eq!(r.pd.counters().more_to_inflate, 1);
}

/// A release window: every ballooned block inside it leaves the device and
/// goes back in one `Released`; blocks outside stay; an empty window is
/// answered with an empty `Released`, so the memserver never waits forever.
/// The host's own deflate that follows is a `Deflate`: the memserver must
/// not take it for the answer to a release.
#[test]
fn a_release_gives_back_exactly_the_blocks_in_its_window() {
    let mut r = raw();
    r.d.dev.set_target(2048);
    let FromBalloon::Inflate { req, .. } = r.until_message() else {
        panic!("no inflate");
    };
    // Four 2 MiB blocks: two in the window 0x40000..0x40400, two after.
    r.send(&ToBalloon::Inflated {
        req,
        blocks: batch(0x40000, 4),
        last: true,
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.pd.ballooned_pages() < 2048 {
        r.run_for(1);
        assert!(Instant::now() < deadline, "not inflated");
    }
    r.send(&ToBalloon::Release {
        first_pfn: 0x40000,
        end_pfn: 0x40400,
    });
    let FromBalloon::Released { req, blocks } = r.until_message() else {
        panic!("no answer to the release");
    };
    let mut got: Vec<Block> = blocks.to_vec();
    got.sort_by_key(|b| b.pfn);
    assert_eq!(got, batch(0x40000, 2).to_vec());
    assert_eq!(
        r.d.dev.counters().pages_deflated,
        1024,
        "told to the device first"
    );
    r.send(&ToBalloon::Deflated { req, pages: 1024 });
    // Below its target again, the balloon asks; the memserver has nothing.
    let FromBalloon::Inflate { req, .. } = r.until_message() else {
        panic!("no inflate after the release");
    };
    r.send(&ToBalloon::Refused {
        req: Some(req),
        reason: RefuseReason::NoMemory,
    });
    r.run_for(2);
    assert_eq!(r.pd.ballooned_pages(), 1024);
    // Nothing of it is left in that window now.
    r.send(&ToBalloon::Release {
        first_pfn: 0x40000,
        end_pfn: 0x40400,
    });
    let FromBalloon::Released { req, blocks } = r.until_message() else {
        panic!("no answer to an empty release");
    };
    assert!(blocks.is_empty());
    r.send(&ToBalloon::Deflated { req, pages: 0 });
    r.run_for(2);
    assert_eq!(r.pd.ballooned_pages(), 1024);
    assert_eq!(r.pd.counters().releases, 2);
    // The host wants its memory back: a deflate, not a release's answer.
    r.d.dev.set_target(0);
    let FromBalloon::Deflate { req, blocks } = r.until_message() else {
        panic!("no deflate for the host's target");
    };
    let mut got: Vec<Block> = blocks.to_vec();
    got.sort_by_key(|b| b.pfn);
    assert_eq!(got, batch(0x40400, 2).to_vec());
    r.send(&ToBalloon::Deflated { req, pages: 1024 });
    r.run_for(2);
    assert_eq!(r.pd.ballooned_pages(), 0);
}
