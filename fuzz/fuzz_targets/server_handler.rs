//! The memory server's request handlers (`memserver::server::Server`) fed
//! by two hostile clients and a hostile balloon: raw bytes, well-formed
//! requests about blocks they got or never got, completions and deflates
//! of batches and blocks real or invented, and scribbles on every header
//! word a peer owns, interleaved with timer expiries. After every step the
//! core's invariants hold (every frame in exactly one state, counters add
//! up) and nothing panics.
#![no_main]

use core::sync::atomic::Ordering;
use libfuzzer_sys::fuzz_target;
use memserver::server::{BalloonPort, ClientPort, Server};
use memserver::{MemCore, Tunables, ZoneId, ZoneSpec, metadata_bytes};
use memserver_api::{
    self as api, BATCH, Block, ClientRequest, ClientResponse, FromBalloon, Request, SLOT_SIZE,
    ToBalloon, TunableKey,
};
use pd_ring::{Consumer, Producer, RingMemory, ring_words};

const CAP: usize = 8;
type Ring = RingMemory<{ ring_words(CAP, SLOT_SIZE) }>;

/// Two zones of 4 MiB (the core's smallest useful size: two order-10 blocks
/// each would be 8 MiB; small zones keep each step cheap).
const ZONES: [ZoneSpec; 2] = [
    ZoneSpec {
        base_pfn: 0x40000,
        pages: 1024,
        owner: 0,
    },
    ZoneSpec {
        base_pfn: 0x50000,
        pages: 1024,
        owner: 1,
    },
];

struct Client<'a> {
    req: Producer<'a>,
    resp: Consumer<'a>,
    req_mem: &'a Ring,
    resp_mem: &'a Ring,
    got: Vec<Block>,
    tag: u32,
}

/// Reads fuzz bytes, zero when they run out.
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
}

fn encode<M: api::Message>(m: &M, buf: &mut [u8; SLOT_SIZE]) -> usize {
    api::encode(m, buf).map(|b| b.len()).unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let tun = Tunables {
        low_watermark_pages: u64::from(input.byte()) * 4,
        capacity: 1 + u16::from(input.byte() % 8),
        max_in_flight: 1 + input.byte() % 4,
        reporting_order: 5 + input.byte() % 6,
        ..Tunables::default()
    };
    let mut meta = vec![0u8; metadata_bytes(&ZONES)];
    // Client 0's request and response rings, client 1's, then the
    // balloon's to and from rings.
    let mems: Vec<Box<Ring>> = (0..6).map(|_| Box::new(Ring::new())).collect();
    let Ok((core, boot)) = MemCore::new(&ZONES, &mut meta, Some(tun)) else {
        return;
    };
    let mut ports = Vec::new();
    let mut clients = Vec::new();
    for z in 0..ZONES.len() {
        let (req_mem, resp_mem) = (&*mems[2 * z], &*mems[2 * z + 1]);
        ports.push(ClientPort {
            zone: ZoneId(z as u16),
            req: req_mem.consumer(SLOT_SIZE).unwrap(),
            resp: resp_mem.producer(SLOT_SIZE).unwrap(),
        });
        clients.push(Client {
            req: req_mem.producer(SLOT_SIZE).unwrap(),
            resp: resp_mem.consumer(SLOT_SIZE).unwrap(),
            req_mem,
            resp_mem,
            got: Vec::new(),
            tag: 0,
        });
    }
    let (to_mem, from_mem) = (&*mems[4], &*mems[5]);
    let balloon = BalloonPort {
        to: to_mem.producer(SLOT_SIZE).unwrap(),
        from: from_mem.consumer(SLOT_SIZE).unwrap(),
    };
    let mut to = to_mem.consumer(SLOT_SIZE).unwrap();
    let mut from = from_mem.producer(SLOT_SIZE).unwrap();
    let mut server = Server::new(core, ports, balloon, boot).unwrap();
    server.core().check_invariants().unwrap();
    let total = server.core().stats().total_pages;

    // What the balloon saw: report batch ids and ballooned blocks.
    let mut batches: Vec<u32> = Vec::new();
    let mut ballooned: Vec<Block> = Vec::new();
    let mut buf = [0u8; SLOT_SIZE];

    for _ in 0..256 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte();
        let k = usize::from(op >> 7);
        match op % 10 {
            0 => {
                // Raw bytes from a client.
                let n = usize::from(input.byte());
                let bytes = input.bytes(n).to_vec();
                let _ = clients[k].req.push(&bytes);
                server.client_notified(k);
            }
            1 => {
                // A well-formed request: alloc, free of a block it got
                // (maybe with another order or shifted), free of anything.
                let c = &mut clients[k];
                let a = input.byte();
                let body = match a % 5 {
                    0 => ClientRequest::Alloc { order: a % 12 },
                    1 | 2 if !c.got.is_empty() => {
                        let i = usize::from(input.byte()) % c.got.len();
                        let mut b = c.got[i];
                        if a % 5 == 2 {
                            b.pfn = b.pfn.wrapping_add(u64::from(input.byte() % 3));
                            b.order = input.byte() % 11;
                        } else {
                            c.got.swap_remove(i);
                        }
                        ClientRequest::Free(b)
                    }
                    3 => ClientRequest::FreeBatch(
                        c.got
                            .drain(..c.got.len().min(BATCH))
                            .collect(),
                    ),
                    _ => {
                        let base = ZONES[usize::from(a & 1)].base_pfn;
                        ClientRequest::Free(Block {
                            pfn: base + u64::from(input.u32() % 1100),
                            order: input.byte() % 11,
                        })
                    }
                };
                c.tag = c.tag.wrapping_add(1);
                let n = encode(&Request { tag: c.tag, body }, &mut buf);
                let _ = c.req.push(&buf[..n]);
                server.client_notified(k);
            }
            2 => {
                // A client reads its answers.
                let c = &mut clients[k];
                while let Ok(Some(n)) = c.resp.pop(&mut buf) {
                    if let Ok(r) = api::decode_response(&buf[..n])
                        && let ClientResponse::Allocated(b) = r.body
                    {
                        c.got.push(b);
                    }
                }
                if c.resp.needs_notify() {
                    server.client_notified(k);
                }
            }
            3 => {
                // Scribble a header word a peer writes: a client's request
                // head or response tail, the balloon's from head or to tail.
                let v = input.u32();
                let h = match input.byte() % 4 {
                    0 => &clients[k].req_mem.header().head,
                    1 => &clients[k].resp_mem.header().tail,
                    2 => &from_mem.header().head,
                    _ => &to_mem.header().tail,
                };
                h.store(v, Ordering::Release);
                server.serve_all();
                server.balloon_notified();
            }
            4 => {
                // Raw bytes from the balloon.
                let n = usize::from(input.byte());
                let bytes = input.bytes(n).to_vec();
                let _ = from.push(&bytes);
                server.balloon_notified();
            }
            5 => {
                // A well-formed balloon message about real or invented
                // batches and blocks.
                let a = input.byte();
                let msg = match a % 7 {
                    0 => FromBalloon::ReportDone {
                        batch: if batches.is_empty() || a & 0x80 != 0 {
                            input.u32()
                        } else {
                            batches.remove(usize::from(input.byte()) % batches.len())
                        },
                        ok: a & 0x40 != 0,
                    },
                    1 => FromBalloon::Inflate {
                        req: input.u32(),
                        pages: input.u32() % 4096,
                    },
                    2 => {
                        let mut v = heapless::Vec::new();
                        for _ in 0..(input.byte() % 4) {
                            let b = if ballooned.is_empty() || a & 0x80 != 0 {
                                Block {
                                    pfn: 0x40000 + u64::from(input.u32() % 0x11000),
                                    order: input.byte() % 11,
                                }
                            } else {
                                ballooned.swap_remove(usize::from(input.byte()) % ballooned.len())
                            };
                            let _ = v.push(b);
                        }
                        // A host's deflate, or the answer to a release.
                        let req = input.u32();
                        if a & 0x20 != 0 {
                            FromBalloon::Released { req, blocks: v }
                        } else {
                            FromBalloon::Deflate { req, blocks: v }
                        }
                    }
                    3 => FromBalloon::StatsRequest,
                    4 => FromBalloon::DeviceLimits {
                        report_capacity: u16::from(input.byte()),
                    },
                    // Run-time tunables: small values (mostly in range, so
                    // they change the worker mid-run) or any.
                    5 => FromBalloon::SetTunable {
                        key: TunableKey::ALL[usize::from(input.byte()) % TunableKey::ALL.len()],
                        value: if a & 0x80 != 0 {
                            u64::from(input.u32()) << 32 | u64::from(input.u32())
                        } else {
                            u64::from(input.byte() % 16)
                        },
                    },
                    _ => FromBalloon::DeviceReset,
                };
                let n = encode(&msg, &mut buf);
                let _ = from.push(&buf[..n]);
                server.balloon_notified();
            }
            6 => {
                // The balloon reads what the server sent.
                while let Ok(Some(n)) = to.pop(&mut buf) {
                    match api::decode_to_balloon(&buf[..n]) {
                        Ok(ToBalloon::Report { batch, .. }) => batches.push(batch),
                        Ok(ToBalloon::Inflated { blocks, .. }) => ballooned.extend(blocks),
                        _ => {}
                    }
                }
                if to.needs_notify() {
                    server.balloon_notified();
                }
            }
            7 => server.timer_expired(),
            8 => server.serve_all(),
            _ => {
                let _ = server.take_wake();
            }
        }
        let core = server.core();
        if let Err(e) = core.check_invariants() {
            panic!("invariants broken after op {op}: {e:?}");
        }
        let s = core.stats();
        assert_eq!(s.total_pages, total);
        assert_eq!(
            s.total_pages,
            s.free_pages + s.allocated_pages + s.isolated_pages + s.ballooned_pages
        );
    }
});
