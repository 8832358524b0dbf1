//! Report throughput through the driver and the device model, against the
//! raw discard speed of the host measured in the same run (DESIGN §6).
//! Each iteration touches 64 MiB of guest RAM (not timed), then discards it:
//! raw = 32 fallocate(PUNCH_HOLE) calls of 2 MiB; driver = one batch of 32
//! order-9 blocks through the reporting ring to the device thread and back.
//! And what a discard costs when the guest takes the memory again: 64 MiB
//! written a page at a time after the punch, against while resident.

use balloon::model::host::HostDevice;
use balloon::model::{
    BalloonDevice, DeviceConfig, DeviceThread, EventFd, GuestRam, HostHal, SharedRegion,
    SharedTransport,
};
use balloon::{Block, Config, VirtIOBalloon};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::time::Duration;

const RAM_BASE: u64 = 0x4000_0000;
const BYTES: u64 = 64 << 20;

fn bench(c: &mut Criterion) {
    let dma = HostHal::install_default().unwrap();
    let regs = Arc::new(SharedRegion::create("regs", 4096).unwrap());
    let ram = Arc::new(GuestRam::create(RAM_BASE, BYTES as usize).unwrap());
    let irq = EventFd::new().unwrap();
    let bell = EventFd::new().unwrap();
    let irq2 = irq.clone();
    let device = BalloonDevice::new(
        regs.clone(),
        dma,
        ram.clone(),
        DeviceConfig::default(),
        Box::new(move || irq2.signal()),
    )
    .unwrap();
    let _dev = DeviceThread::spawn(device, bell.clone());
    let transport = SharedTransport::new(regs, Box::new(move |_| bell.signal())).unwrap();
    let mut drv = VirtIOBalloon::<HostHal, _>::with_config(transport, Config::default()).unwrap();
    let blocks: Vec<Block> = (0..32)
        .map(|i| Block {
            pfn: (RAM_BASE >> 12) + i * 512,
            order: 9,
        })
        .collect();

    let mut g = c.benchmark_group("discard_64MiB");
    g.throughput(Throughput::Bytes(BYTES));
    g.bench_function("raw_punch_hole", |b| {
        b.iter_batched(
            || assert!(ram.touch(RAM_BASE, BYTES)),
            |()| {
                for i in 0..32u64 {
                    ram.ranges()[0].region.punch_hole(i << 21, 2 << 20).unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    // What a discard costs the guest that takes the memory again: the
    // same 64 MiB written a byte per page after the punch (a fault and a
    // zeroed page each), against written while resident.
    g.bench_function("refault_after_punch_hole", |b| {
        b.iter_batched(
            || {
                assert!(ram.touch(RAM_BASE, BYTES));
                ram.ranges()[0].region.punch_hole(0, BYTES).unwrap();
            },
            |()| assert!(ram.touch(RAM_BASE, BYTES)),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("touch_resident", |b| {
        b.iter_batched(
            || assert!(ram.touch(RAM_BASE, BYTES)),
            |()| assert!(ram.touch(RAM_BASE, BYTES)),
            BatchSize::PerIteration,
        )
    });
    let mut batch = 0u32;
    g.bench_function("driver_report_batch", |b| {
        b.iter_batched(
            || assert!(ram.touch(RAM_BASE, BYTES)),
            |()| {
                batch = batch.wrapping_add(1);
                drv.submit_report(batch, &blocks).unwrap();
                loop {
                    if let Some((id, r)) = drv.poll_reports() {
                        assert_eq!((id, r), (batch, Ok(())));
                        break;
                    }
                    assert!(irq.wait(Some(Duration::from_secs(5))), "device stalled");
                    drv.ack_interrupt();
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    // Fixed cost of one batch: a single 4 KiB block (notify, device wake-up,
    // used ring, interrupt, poll).
    let one = [Block {
        pfn: RAM_BASE >> 12,
        order: 0,
    }];
    c.bench_function("report_roundtrip_4KiB", |b| {
        b.iter(|| {
            batch = batch.wrapping_add(1);
            drv.submit_report(batch, &one).unwrap();
            loop {
                if let Some((id, r)) = drv.poll_reports() {
                    assert_eq!((id, r), (batch, Ok(())));
                    break;
                }
                assert!(irq.wait(Some(Duration::from_secs(5))), "device stalled");
                drv.ack_interrupt();
            }
        })
    });
}

/// The same 4 KiB round trip with the host platform's signalling: the
/// futex doorbell in the register page and `HostDevice`'s thread.
fn bench_futex(c: &mut Criterion) {
    let dma = HostHal::install_default().unwrap();
    let regs = Arc::new(SharedRegion::create("regs", 4096).unwrap());
    let ram = Arc::new(GuestRam::create(RAM_BASE, 2 << 20).unwrap());
    let irq = EventFd::new().unwrap();
    let irq2 = irq.clone();
    let device = BalloonDevice::new(
        regs.clone(),
        dma,
        ram.clone(),
        DeviceConfig::default(),
        Box::new(move || irq2.signal()),
    )
    .unwrap();
    let _dev = HostDevice::spawn(device, regs.clone(), ram).unwrap();
    let transport = SharedTransport::with_futex_doorbell(regs).unwrap();
    let mut drv = VirtIOBalloon::<HostHal, _>::new(transport).unwrap();
    let one = [Block {
        pfn: RAM_BASE >> 12,
        order: 0,
    }];
    let mut batch = 0u32;
    c.bench_function("report_roundtrip_4KiB_futex_doorbell", |b| {
        b.iter(|| {
            batch = batch.wrapping_add(1);
            drv.submit_report(batch, &one).unwrap();
            loop {
                if let Some((id, r)) = drv.poll_reports() {
                    assert_eq!((id, r), (batch, Ok(())));
                    break;
                }
                assert!(irq.wait(Some(Duration::from_secs(5))), "device stalled");
                drv.ack_interrupt();
            }
        })
    });
}

criterion_group!(benches, bench, bench_futex);
criterion_main!(benches);
