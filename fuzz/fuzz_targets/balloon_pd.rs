//! The balloon PD's core (`balloon::shell::BalloonPd`) fed by a hostile
//! memserver: raw bytes and well-formed `ToBalloon` messages about real or
//! invented batches, requests and blocks, scribbles on the ring words the
//! memserver owns, interleaved with a faulty host: balloon targets, injected
//! device faults, held reports, and the watchdog's timer firing. The device
//! model runs synchronously on the driver's doorbell (no thread: each input
//! replays the same way).
//! After every step nothing has panicked and the balloon's own list holds
//! no block twice.
#![no_main]

use balloon::QueueKind;
use balloon::VirtIOBalloon;
use balloon::model::{BalloonDevice, DeviceConfig, Fault, GuestRam, HostHal, SharedRegion, SharedTransport};
use balloon::shell::{BalloonPd, Level};
use core::sync::atomic::Ordering;
use libfuzzer_sys::fuzz_target;
use memserver_api::{self as api, Block, FromBalloon, MemStats, RefuseReason, SLOT_SIZE, ToBalloon};
use pd_ring::{RingMemory, ring_words};
use std::sync::{Arc, Mutex};

const CAP: usize = 16;
type Ring = RingMemory<{ ring_words(CAP, SLOT_SIZE) }>;

/// Guest RAM the device knows: 8 MiB at 1 GiB.
const RAM_BASE: u64 = 0x4000_0000;
const RAM_PAGES: u64 = 2048;

fn log(_: Level, _: std::fmt::Arguments<'_>) {}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn block(&mut self) -> Block {
        let order = self.byte() % 11;
        let pfn = if self.byte() & 1 == 0 {
            // Inside RAM, aligned.
            (RAM_BASE >> 12) + ((u64::from(self.u32()) % RAM_PAGES) & !((1 << order) - 1))
        } else {
            u64::from(self.u32())
        };
        Block { pfn, order }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let dma = HostHal::install_default().expect("dma window");
    let regs = Arc::new(SharedRegion::create("regs", 4096).expect("regs"));
    let ram = Arc::new(GuestRam::create(RAM_BASE, (RAM_PAGES * 4096) as usize).expect("ram"));
    let device = BalloonDevice::new(regs.clone(), dma, ram, DeviceConfig::default(), Box::new(|| {}))
        .expect("device");
    let device = Arc::new(Mutex::new(device));
    let d2 = device.clone();
    // The device works when the driver rings: synchronous and replayable.
    let transport = SharedTransport::new(
        regs,
        Box::new(move |_| {
            let mut d = d2.lock().unwrap_or_else(|e| e.into_inner());
            while d.process() {}
        }),
    )
    .expect("transport");
    let Ok(drv) = VirtIOBalloon::<HostHal, _>::new(transport) else {
        return;
    };
    let (to_mem, from_mem) = (Ring::new(), Ring::new());
    let mut to = to_mem.producer(SLOT_SIZE).unwrap();
    let mut from = from_mem.consumer(SLOT_SIZE).unwrap();
    let mut list = vec![0u64; balloon::shell::MAX_BALLOONED];
    let mut pd = BalloonPd::new(
        drv,
        to_mem.consumer(SLOT_SIZE).unwrap(),
        from_mem.producer(SLOT_SIZE).unwrap(),
        &mut list,
        log,
    );
    pd.set_watchdog(Some(1));
    let mut reqs: Vec<u32> = Vec::new();
    let mut buf = [0u8; SLOT_SIZE];
    let dev = || device.lock().unwrap_or_else(|e| e.into_inner());

    for _ in 0..128 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte();
        let mut irq = false;
        match op % 8 {
            0 => {
                let n = usize::from(input.byte());
                let bytes = input.bytes(n).to_vec();
                let _ = to.push(&bytes);
            }
            1 => {
                let a = input.byte();
                let req = if reqs.is_empty() || a & 0x80 != 0 {
                    input.u32()
                } else {
                    reqs[usize::from(input.byte()) % reqs.len()]
                };
                let mut blocks = heapless::Vec::new();
                for _ in 0..(input.byte() % 5) {
                    let _ = blocks.push(input.block());
                }
                let msg = match a % 8 {
                    0 => ToBalloon::Report {
                        batch: input.u32(),
                        blocks,
                    },
                    1 => ToBalloon::Inflated {
                        req,
                        blocks,
                        last: a & 0x40 != 0,
                    },
                    2 => ToBalloon::Deflated {
                        req,
                        pages: input.u32(),
                    },
                    3 => ToBalloon::Stats(MemStats {
                        total_pages: u64::from(input.u32()),
                        free_pages: u64::from(input.u32()),
                        ..MemStats::default()
                    }),
                    4 => ToBalloon::Refused {
                        req: if a & 0x20 != 0 { Some(req) } else { None },
                        reason: match input.byte() % 3 {
                            0 => RefuseReason::NoMemory,
                            1 => RefuseReason::NotBallooned,
                            _ => RefuseReason::UnknownId,
                        },
                    },
                    5 => ToBalloon::Reclaim {
                        pages: input.u32(),
                        first_pfn: u64::from(input.u32()),
                        end_pfn: u64::from(input.u32()),
                    },
                    6 => ToBalloon::Release {
                        first_pfn: u64::from(input.u32()),
                        end_pfn: u64::from(input.u32()),
                    },
                    _ => ToBalloon::MoreToInflate,
                };
                if let Ok(b) = api::encode(&msg, &mut buf) {
                    let _ = to.push(b);
                }
            }
            2 => {
                // The memserver reads the balloon's messages.
                while let Ok(Some(n)) = from.pop(&mut buf) {
                    if let Ok(
                        FromBalloon::Inflate { req, .. }
                        | FromBalloon::Deflate { req, .. }
                        | FromBalloon::Released { req, .. },
                    ) = api::decode_from_balloon(&buf[..n])
                    {
                        reqs.push(req);
                    }
                }
            }
            3 => {
                // The host's target: anything, absurd included.
                let t = match input.byte() % 4 {
                    0 => 0,
                    1 => u32::MAX,
                    _ => input.u32() % (2 * RAM_PAGES as u32),
                };
                dev().set_target(t);
                irq = true;
            }
            4 => {
                let kind = match input.byte() % 4 {
                    0 => QueueKind::Reporting,
                    1 => QueueKind::Inflate,
                    2 => QueueKind::Deflate,
                    _ => QueueKind::Stats,
                };
                let f = match input.byte() % 8 {
                    0 => Fault::BadUsedId,
                    1 => Fault::BadUsedLength,
                    2 => Fault::DuplicateCompletion,
                    3 => Fault::UsedIndexJump,
                    4 => Fault::Reset,
                    5 => Fault::NeedsReset,
                    6 => Fault::Lose,
                    _ => Fault::SilentReset,
                };
                dev().inject(kind, f);
            }
            5 => {
                let mut d = dev();
                let a = input.byte();
                d.set_hold_reports(a & 1 != 0);
                if a & 2 != 0 {
                    d.set_reverse_reports();
                }
                while d.process() {}
                irq = true;
            }
            6 => {
                // Scribble the memserver's words: to.head, from.tail.
                let v = input.u32();
                if input.byte() & 1 == 0 {
                    to_mem.header().head.store(v, Ordering::Release);
                } else {
                    from_mem.header().tail.store(v, Ordering::Release);
                }
            }
            _ => {
                if input.byte() & 1 == 0 {
                    let _ = dev().request_stats();
                    irq = true;
                } else {
                    // The watchdog's timer fires (armed or not).
                    let _ = pd.watchdog_expired();
                }
            }
        }
        let _ = pd.run(irq);
        // The balloon's list: no frame twice.
        let mut v: Vec<Block> = pd.ballooned().collect();
        v.sort_by_key(|b| b.pfn);
        for w in v.windows(2) {
            assert!(
                w[0].pfn + (1u64 << w[0].order) <= w[1].pfn,
                "overlapping ballooned blocks {:?} {:?}",
                w[0],
                w[1]
            );
        }
    }
});
