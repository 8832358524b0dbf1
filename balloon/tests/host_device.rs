//! `HostDevice` as the launcher uses it: the device maps its own copies of
//! the memfds (as it would in the launcher process), the driver side uses
//! separate mappings (as the balloon PD process does: `from_mapping` over
//! what pd's host backend mapped), the doorbell is the futex in the
//! register page and the IRQ an eventfd. One process, two sets of mappings.

use balloon::model::host::{HostDevice, Memfd};
use balloon::model::{
    DeviceConfig, DmaWindow, EventFd, GuestRam, HostHal, ModelError, RamRange, SharedRegion,
    SharedTransport,
};
use balloon::{Block, VirtIOBalloon};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const DMA_PADDR: u64 = 0x2000_0000;
/// Two guest RAM regions at their own pseudo-physical bases, with a hole.
const RAM: [(u64, u64); 2] = [(0x4000_0000, 16 * MIB), (0x6000_0000, 8 * MIB)];

#[test]
fn launcher_style_device_with_futex_doorbell_and_eventfd_irq() {
    // The launcher's memfds (here mapped once for the "PD" side).
    let regs = SharedRegion::create("virtio_mmio", 4096).unwrap();
    let dma = SharedRegion::create("balloon_dma", 2 * MIB as usize).unwrap();
    let ram: Vec<SharedRegion> = RAM
        .iter()
        .map(|&(_, len)| SharedRegion::create("guest_ram", len as usize).unwrap())
        .collect();
    let irq = EventFd::new().unwrap();
    let irq2 = irq.clone();
    let ram_fds: Vec<Memfd<'_>> = RAM
        .iter()
        .zip(&ram)
        .map(|(&(paddr, len), r)| Memfd {
            fd: r.fd().unwrap(),
            paddr,
            len: len as usize,
        })
        .collect();
    let mut dev = HostDevice::start(
        regs.fd().unwrap(),
        Memfd {
            fd: dma.fd().unwrap(),
            paddr: DMA_PADDR,
            len: dma.len(),
        },
        &ram_fds,
        Box::new(move || irq2.signal()),
        DeviceConfig::default(),
    )
    .unwrap();

    // The PD side: its own mappings, no fds needed for signalling.
    // SAFETY: `regs` stays mapped until the end of the test, after the
    // driver is dropped; all accesses are atomic.
    let transport = unsafe { SharedTransport::from_mapping(regs.as_ptr(), regs.len()) }.unwrap();
    let dma_ptr = dma.as_ptr();
    let dma_len = dma.len();
    HostHal::install(DmaWindow {
        // SAFETY: `dma` outlives the driver (dropped at the end of the test).
        region: Arc::new(unsafe { SharedRegion::from_mapping(dma_ptr, dma_len) }.unwrap()),
        paddr: DMA_PADDR,
    })
    .unwrap();
    let mut drv: VirtIOBalloon<HostHal, SharedTransport> = VirtIOBalloon::new(transport).unwrap();

    // Guests touch all their RAM: the host holds it.
    for (r, &(_, len)) in ram.iter().zip(&RAM) {
        for o in (0..len).step_by(4096) {
            // Stays inside the mapping: `o < len`.
            let p = r.as_ptr().wrapping_add(o as usize);
            // SAFETY: inside the mapping; nobody else writes it now.
            unsafe { p.write_volatile(1) };
        }
    }
    assert_eq!(dev.held_bytes().unwrap(), 24 * MIB);

    // One batch over both ranges, plus a block in the hole between them.
    let mut blocks = Vec::new();
    blocks.extend((0..8).map(|i| Block {
        pfn: (RAM[0].0 >> 12) + 512 * i,
        order: 9,
    }));
    blocks.extend((0..4).map(|i| Block {
        pfn: (RAM[1].0 >> 12) + 512 * i,
        order: 9,
    }));
    blocks.push(Block {
        pfn: 0x5000_0000 >> 12,
        order: 9,
    });
    drv.submit_report(1, &blocks).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        if let Some(d) = drv.poll_reports() {
            break d;
        }
        assert!(Instant::now() < deadline, "no report completion");
        irq.wait(Some(Duration::from_millis(50)));
        drv.ack_interrupt();
    };
    assert_eq!(done, (1, Ok(())));
    let c = dev.counters();
    assert_eq!(c.reports, 1);
    assert_eq!(c.ranges_discarded, 12);
    assert_eq!(c.ranges_skipped, 1, "the block outside all RAM is skipped");
    assert_eq!(c.bytes_discarded, 24 * MIB);
    // Each discard went to its own memfd.
    for r in &ram {
        assert_eq!(r.allocated_bytes().unwrap(), 0);
    }
    assert_eq!(dev.held_bytes().unwrap(), 0);

    // The target reaches the driver as a config interrupt.
    dev.set_target(300);
    assert!(irq.wait(Some(Duration::from_secs(10))));
    drv.ack_interrupt();
    assert!(drv.take_config_changed());
    assert_eq!(drv.target().unwrap(), 300);

    drop(drv);
    dev.stop();
    dev.stop();
}

#[test]
fn guest_ram_ranges_must_not_overlap() {
    let a = SharedRegion::create("a", 2 * MIB as usize).unwrap();
    let b = SharedRegion::create("b", 2 * MIB as usize).unwrap();
    let r = GuestRam::from_ranges(vec![
        RamRange {
            region: a,
            base: 0x4010_0000,
        },
        RamRange {
            region: b,
            base: 0x4000_0000,
        },
    ]);
    assert_eq!(r.err(), Some(ModelError::Overlap(0x4010_0000)));
}

#[test]
fn a_range_straddling_two_ram_regions_is_in_neither() {
    let a = SharedRegion::create("a", 2 * MIB as usize).unwrap();
    let b = SharedRegion::create("b", 2 * MIB as usize).unwrap();
    let ram = GuestRam::from_ranges(vec![
        RamRange {
            region: a,
            base: 0x4000_0000,
        },
        RamRange {
            region: b,
            base: 0x4020_0000,
        },
    ])
    .unwrap();
    assert!(ram.locate(0x4010_0000, 2 * MIB).is_none());
    let (r, off) = ram.locate(0x4030_0000, MIB).unwrap();
    assert_eq!((r.base, off), (0x4020_0000, MIB));
    assert!(!ram.touch(0x4010_0000, 2 * MIB));
}
