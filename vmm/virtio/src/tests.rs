//! The balloon behind the virtio-mmio transport, driven as Linux's
//! virtio_mmio and virtio_balloon drivers drive it, and as a hostile guest
//! would.

use crate::balloon::{self, Balloon, Event, F_REPORTING, F_STATS_VQ, QUEUES, Range};
use crate::mmio::{INT_CONFIG_CHANGE, INT_USED_BUFFER, MmioTransport, VERSION_1, reg, status};
use crate::queue::tests::{AVAIL, BASE, DATA, DESC, Driver, USED, ram};
use crate::{GuestMemory, SliceMemory};
use std::vec::Vec;

type Dev = MmioTransport<Balloon, QUEUES>;

/// Rings of queue `q` in their own 16 KiB of the test RAM.
fn rings(q: u64) -> (u64, u64, u64) {
    let o = 0x8_0000 + q * 0x4000;
    (DESC + o, AVAIL + o, USED + o)
}

/// Probe, negotiate `want` and set up every queue the features give, as
/// virtio_mmio's `vm_setup_vq` does.
fn probe(dev: &mut Dev, m: &mut SliceMemory, want: u64) -> u64 {
    assert_eq!(dev.read(reg::MAGIC_VALUE, 4), crate::mmio::MAGIC);
    assert_eq!(dev.read(reg::VERSION, 4), 2);
    assert_eq!(dev.read(reg::DEVICE_ID, 4), balloon::DEVICE_ID);
    dev.write(reg::STATUS, 4, status::ACKNOWLEDGE | status::DRIVER, m);
    dev.write(reg::DEVICE_FEATURES_SEL, 4, 0, m);
    let lo = u64::from(dev.read(reg::DEVICE_FEATURES, 4));
    dev.write(reg::DEVICE_FEATURES_SEL, 4, 1, m);
    let hi = u64::from(dev.read(reg::DEVICE_FEATURES, 4));
    let features = (lo | hi << 32) & want;
    dev.write(reg::DRIVER_FEATURES_SEL, 4, 0, m);
    dev.write(reg::DRIVER_FEATURES, 4, features as u32, m);
    dev.write(reg::DRIVER_FEATURES_SEL, 4, 1, m);
    dev.write(reg::DRIVER_FEATURES, 4, (features >> 32) as u32, m);
    dev.write(
        reg::STATUS,
        4,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        m,
    );
    assert_ne!(dev.read(reg::STATUS, 4) & status::FEATURES_OK, 0);
    for q in 0..4u32 {
        dev.write(reg::QUEUE_SEL, 4, q, m);
        let max = dev.read(reg::QUEUE_NUM_MAX, 4);
        if max == 0 {
            continue;
        }
        let (d, a, u) = rings(u64::from(q));
        dev.write(reg::QUEUE_NUM, 4, 16, m);
        for (lo, hi, v) in [
            (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, d),
            (reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH, a),
            (reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, u),
        ] {
            dev.write(lo, 4, v as u32, m);
            dev.write(hi, 4, (v >> 32) as u32, m);
        }
        dev.write(reg::QUEUE_READY, 4, 1, m);
        assert_eq!(dev.read(reg::QUEUE_READY, 4), 1, "queue {q}");
    }
    dev.write(
        reg::STATUS,
        4,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        m,
    );
    features
}

/// A driver for queue `q` whose rings are at [`rings`]`(q)`.
fn qdriver(q: u64) -> Driver {
    Driver::at(16, rings(q))
}

fn notify(dev: &mut Dev, m: &mut SliceMemory, q: u32) {
    dev.write(reg::QUEUE_NOTIFY, 4, q, m);
}

const ALL: u64 = VERSION_1 | F_STATS_VQ | F_REPORTING | balloon::F_DEFLATE_ON_OOM;

#[test]
fn reports_wait_for_the_vmm_and_come_back_with_an_interrupt() {
    let mut r = ram();
    let mut m = SliceMemory {
        base: BASE,
        ram: &mut r,
    };
    let mut dev = Dev::new(Balloon::new(true));
    let f = probe(&mut dev, &mut m, ALL);
    assert_eq!(f, ALL);
    let ix = dev.device.queues();
    assert_eq!((ix.stats, ix.reporting), (Some(2), Some(3)));
    let mut rq = qdriver(3);
    // Two blocks, as Linux reports them: whole pages, device-writable.
    let blocks = [
        (BASE + 0x4_0000, 0x1_0000u32, true),
        (BASE + 0x6_0000, 0x2_0000, true),
    ];
    let head = rq.add(&mut m, &blocks).unwrap();
    notify(&mut dev, &mut m, 3);
    assert!(
        !dev.interrupt_pending(),
        "nothing is back before the VMM says so"
    );
    let Some(Event::Report { head: h, ranges }) = dev.device.take_event() else {
        panic!("no report event");
    };
    assert_eq!(h, head);
    assert_eq!(
        ranges.as_slice(),
        [
            Range {
                gpa: BASE + 0x4_0000,
                len: 0x1_0000
            },
            Range {
                gpa: BASE + 0x6_0000,
                len: 0x2_0000
            }
        ]
    );
    assert!(rq.used(&m).is_empty());
    dev.with_queues(&mut m, |b, q, mem| b.complete_report(h, q, mem))
        .unwrap();
    assert_eq!(rq.used(&m), [(u32::from(head), 0)]);
    assert_eq!(dev.read(reg::INTERRUPT_STATUS, 4), INT_USED_BUFFER);
    dev.write(reg::INTERRUPT_ACK, 4, INT_USED_BUFFER, &mut m);
    assert!(!dev.interrupt_pending());
    // Completed twice: refused, and the device needs a reset.
    assert!(
        dev.with_queues(&mut m, |b, q, mem| b.complete_report(h, q, mem))
            .is_err()
    );
    assert_ne!(dev.read(reg::STATUS, 4) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(dev.device.counters.reports_done, 1);
}

#[test]
fn without_reporting_or_stats_the_queues_renumber_as_linux_does() {
    let mut r = ram();
    let mut m = SliceMemory {
        base: BASE,
        ram: &mut r,
    };
    let mut dev = Dev::new(Balloon::new(false));
    let f = probe(&mut dev, &mut m, ALL);
    assert_eq!(f & F_REPORTING, 0, "a control device does not offer it");
    assert_eq!(dev.device.queues().reporting, None);
    let mut dev = Dev::new(Balloon::new(true));
    probe(&mut dev, &mut m, VERSION_1 | F_REPORTING);
    let ix = dev.device.queues();
    assert_eq!((ix.stats, ix.reporting), (None, Some(2)));
}

#[test]
fn inflate_and_deflate_give_pfns_and_bad_arrays_are_dropped() {
    let mut r = ram();
    let mut m = SliceMemory {
        base: BASE,
        ram: &mut r,
    };
    let mut dev = Dev::new(Balloon::new(true));
    probe(&mut dev, &mut m, ALL);
    let mut iq = qdriver(0);
    let pfn0 = (BASE >> 12) as u32 + 0x40;
    let arr = DATA + 0x100;
    let words: Vec<u8> = [pfn0, pfn0 + 1, pfn0 + 2]
        .iter()
        .flat_map(|p| p.to_le_bytes())
        .collect();
    m.write(arr, &words).unwrap();
    let h = iq.add(&mut m, &[(arr, 12, false)]).unwrap();
    notify(&mut dev, &mut m, 0);
    let Some(Event::Inflate { pfns }) = dev.device.take_event() else {
        panic!("no inflate event")
    };
    assert_eq!(pfns.as_slice(), [pfn0, pfn0 + 1, pfn0 + 2]);
    assert_eq!(iq.used(&m), [(u32::from(h), 0)]);
    // A frame outside guest RAM, or an array of odd length: dropped,
    // returned, counted; no event.
    m.write(arr, &0xdead_beefu32.to_le_bytes()).unwrap();
    iq.add(&mut m, &[(arr, 4, false)]);
    iq.add(&mut m, &[(arr + 4, 6, false)]);
    notify(&mut dev, &mut m, 0);
    assert_eq!(dev.device.take_event(), None);
    assert_eq!(iq.used(&m).len(), 2);
    assert_eq!(dev.device.counters.bad_pfn_arrays, 2);
    assert_eq!(dev.device.counters.inflated_pages, 3);
    assert_eq!(dev.read(reg::STATUS, 4) & status::DEVICE_NEEDS_RESET, 0);
    // A deflate is held until the VMM completes it.
    let mut dq = qdriver(1);
    m.write(arr, &words).unwrap();
    let h = dq.add(&mut m, &[(arr, 12, false)]).unwrap();
    notify(&mut dev, &mut m, 1);
    let Some(Event::Deflate { head, pfns }) = dev.device.take_event() else {
        panic!("no deflate event")
    };
    assert_eq!(
        (head, pfns.as_slice()),
        (h, [pfn0, pfn0 + 1, pfn0 + 2].as_slice())
    );
    assert!(dq.used(&m).is_empty(), "given back before the host let go");
    dev.with_queues(&mut m, |d, q, mem| d.complete_deflate(head, q, mem))
        .unwrap();
    assert_eq!(dq.used(&m), [(u32::from(h), 0)]);
}

#[test]
fn the_target_reaches_the_guest_with_a_config_interrupt() {
    let mut r = ram();
    let mut m = SliceMemory {
        base: BASE,
        ram: &mut r,
    };
    let mut dev = Dev::new(Balloon::new(true));
    probe(&mut dev, &mut m, ALL);
    let gen0 = dev.read(reg::CONFIG_GENERATION, 4);
    dev.device.set_target(4096);
    dev.config_changed();
    assert_eq!(dev.read(reg::INTERRUPT_STATUS, 4), INT_CONFIG_CHANGE);
    assert_ne!(dev.read(reg::CONFIG_GENERATION, 4), gen0);
    assert_eq!(dev.read(reg::CONFIG, 4), 4096);
    dev.write(reg::CONFIG + 4, 4, 1000, &mut m);
    assert_eq!(dev.device.actual(), 1000);
    // num_pages is the device's: a write is refused and counted.
    dev.write(reg::CONFIG, 4, 7, &mut m);
    assert_eq!(dev.read(reg::CONFIG, 4), 4096);
    assert_eq!(dev.read(reg::CONFIG + 4, 2), 1000);
    assert_eq!(dev.device.counters.bad_config_writes, 1);
}

#[test]
fn stats_are_held_until_asked_for_again() {
    let mut r = ram();
    let mut m = SliceMemory {
        base: BASE,
        ram: &mut r,
    };
    let mut dev = Dev::new(Balloon::new(true));
    probe(&mut dev, &mut m, ALL);
    let mut sq = qdriver(2);
    let buf = DATA + 0x400;
    let mut e = Vec::new();
    for (tag, v) in [(4u16, 100u64 << 20), (5, 512 << 20)] {
        e.extend(tag.to_le_bytes());
        e.extend(v.to_le_bytes());
    }
    m.write(buf, &e).unwrap();
    let h = sq.add(&mut m, &[(buf, 20, false)]).unwrap();
    notify(&mut dev, &mut m, 2);
    assert_eq!(
        dev.device.take_event(),
        Some(Event::Stats(
            heapless::Vec::from_slice(&[(4, 100 << 20), (5, 512 << 20)]).unwrap()
        ))
    );
    assert!(sq.used(&m).is_empty(), "held");
    dev.with_queues(&mut m, |b, q, mem| b.request_stats(q, mem))
        .unwrap();
    assert_eq!(sq.used(&m), [(u32::from(h), 0)]);
}

#[test]
fn a_hostile_chain_needs_a_reset_and_touches_no_other_state() {
    let mut r = ram();
    let mut m = SliceMemory {
        base: BASE,
        ram: &mut r,
    };
    let mut dev = Dev::new(Balloon::new(true));
    probe(&mut dev, &mut m, ALL);
    let (d, a, _) = rings(3);
    // A chain that loops: 0 -> 1 -> 0.
    for (i, next) in [(0u64, 1u16), (1, 0)] {
        let at = d + 16 * i;
        m.write(at, &(BASE + 0x4_0000).to_le_bytes()).unwrap();
        m.write(at + 8, &4096u32.to_le_bytes()).unwrap();
        m.write(at + 12, &3u16.to_le_bytes()).unwrap(); // NEXT | WRITE
        m.write(at + 14, &next.to_le_bytes()).unwrap();
    }
    m.write(a + 4, &0u16.to_le_bytes()).unwrap();
    m.write(a + 2, &1u16.to_le_bytes()).unwrap();
    notify(&mut dev, &mut m, 3);
    assert_ne!(dev.read(reg::STATUS, 4) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(dev.read(reg::INTERRUPT_STATUS, 4), INT_CONFIG_CHANGE);
    assert_eq!(dev.counters.queue_errors, 1);
    assert_eq!(dev.device.take_event(), None);
    // Nothing more is taken until the driver resets the device.
    notify(&mut dev, &mut m, 3);
    assert_eq!(dev.counters.queue_errors, 1);
    // Features not offered, or no VERSION_1: no FEATURES_OK.
    dev.write(reg::STATUS, 4, 0, &mut m);
    assert_eq!(dev.read(reg::STATUS, 4), 0);
    dev.write(reg::DRIVER_FEATURES_SEL, 4, 0, &mut m);
    dev.write(reg::DRIVER_FEATURES, 4, 1 << 3, &mut m); // FREE_PAGE_HINT
    dev.write(reg::STATUS, 4, status::FEATURES_OK, &mut m);
    assert_eq!(dev.read(reg::STATUS, 4) & status::FEATURES_OK, 0);
    // Registers of the wrong size or offset read 0 and are counted.
    let bad = dev.counters.bad_accesses;
    assert_eq!(dev.read(reg::MAGIC_VALUE, 2), 0);
    assert_eq!(dev.read(reg::MAGIC_VALUE + 1, 4), 0);
    assert_eq!(dev.read(0x0f0, 4), 0);
    assert_eq!(dev.counters.bad_accesses, bad + 3);
    // After the reset the device works again.
    dev.write(reg::STATUS, 4, 0, &mut m);
    probe(&mut dev, &mut m, ALL);
    let mut rq = qdriver(3);
    rq.add(&mut m, &[(BASE + 0x4_0000, 4096, true)]);
    notify(&mut dev, &mut m, 3);
    assert!(matches!(
        dev.device.take_event(),
        Some(Event::Report { .. })
    ));
}

#[test]
fn a_report_that_is_not_whole_pages_is_dropped_not_passed_on() {
    let mut r = ram();
    let mut m = SliceMemory {
        base: BASE,
        ram: &mut r,
    };
    let mut dev = Dev::new(Balloon::new(true));
    probe(&mut dev, &mut m, ALL);
    let mut rq = qdriver(3);
    for bufs in [
        [(BASE + 0x4_0000, 4095u32, true)],
        [(BASE + 0x4_0800, 4096, true)],
        [(BASE + 0x4_0000, 4096, false)],
        [(BASE + 0x4_0000, 0, true)],
    ] {
        rq.add(&mut m, &bufs);
    }
    notify(&mut dev, &mut m, 3);
    assert_eq!(dev.device.take_event(), None);
    assert_eq!(rq.used(&m).len(), 4);
    assert_eq!(dev.device.counters.bad_reports, 4);
    assert_eq!(dev.read(reg::INTERRUPT_STATUS, 4), INT_USED_BUFFER);
}

#[test]
fn events_that_do_not_fit_wait_in_the_ring() {
    let mut r = ram();
    let mut m = SliceMemory {
        base: BASE,
        ram: &mut r,
    };
    let mut dev = Dev::new(Balloon::new(true));
    probe(&mut dev, &mut m, ALL);
    let mut rq = qdriver(3);
    for i in 0..balloon::EVENTS as u64 + 3 {
        rq.add(&mut m, &[(BASE + 0x4_0000 + 0x1000 * i, 4096, true)]);
    }
    notify(&mut dev, &mut m, 3);
    let mut n = 0;
    while dev.device.take_event().is_some() {
        n += 1;
    }
    assert_eq!(n, balloon::EVENTS);
    dev.with_queues(&mut m, |b, q, mem| b.resume(q, mem))
        .unwrap();
    while dev.device.take_event().is_some() {
        n += 1;
    }
    assert_eq!(n, balloon::EVENTS + 3);
}
