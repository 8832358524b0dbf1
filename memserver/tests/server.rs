//! The memory server behind real rings: clients and a balloon played by the
//! test, well-behaved and hostile.

use memserver::server::{BalloonPort, ClientPort, ControlPort, Server};
use memserver::{MemCore, Tunables, ZoneId, ZoneSpec, metadata_bytes};
use memserver_api::{
    self as api, Block, ClientError, ClientRequest, ClientResponse, FromBalloon, FromControl,
    RefuseReason, Request, Response, SLOT_SIZE, ToBalloon, ToControl, TunableKey, TunableRefusal,
};
use pd_ring::{Consumer, Producer, RingMemory, ring_words};

const CAP: usize = 8;
const W: usize = ring_words(CAP, SLOT_SIZE);
type Ring = RingMemory<W>;

fn ring() -> &'static Ring {
    Box::leak(Box::new(Ring::new()))
}

/// Two zones of 16 MiB.
const ZONES: [ZoneSpec; 2] = [
    ZoneSpec {
        base_pfn: 0x40000,
        pages: 4096,
        owner: 0,
    },
    ZoneSpec {
        base_pfn: 0x50000,
        pages: 4096,
        owner: 1,
    },
];

fn tunables() -> Tunables {
    Tunables {
        low_watermark_pages: 0,
        capacity: 4,
        ..Tunables::default()
    }
}

struct Peer {
    req: Producer<'static>,
    resp: Consumer<'static>,
    tag: u32,
}

struct Balloon {
    to: Consumer<'static>,
    from: Producer<'static>,
    from_mem: &'static Ring,
}

struct Sys {
    server: Server<'static, 'static>,
    clients: Vec<Peer>,
    client_mem: Vec<&'static Ring>,
    balloon: Balloon,
}

fn sys() -> Sys {
    sys_with(|_| {})
}

/// A system whose client rings get `before` applied to the client ends
/// before the server starts.
fn sys_with(before: impl FnOnce(&mut Vec<Peer>)) -> Sys {
    sys_full(tunables(), before)
}

/// A system with these tunables.
fn sys_tun(tun: Tunables) -> Sys {
    sys_full(tun, |_| {})
}

fn sys_full(tun: Tunables, before: impl FnOnce(&mut Vec<Peer>)) -> Sys {
    let meta = Box::leak(vec![0u8; metadata_bytes(&ZONES)].into_boxed_slice());
    let (core, boot) = MemCore::new(&ZONES, meta, Some(tun)).unwrap();
    let mut ports = Vec::new();
    let mut clients = Vec::new();
    let mut client_mem = Vec::new();
    for z in 0..ZONES.len() {
        let (req, resp) = (ring(), ring());
        client_mem.push(req);
        ports.push(ClientPort {
            zone: ZoneId(z as u16),
            req: req.consumer(SLOT_SIZE).unwrap(),
            resp: resp.producer(SLOT_SIZE).unwrap(),
        });
        clients.push(Peer {
            req: req.producer(SLOT_SIZE).unwrap(),
            resp: resp.consumer(SLOT_SIZE).unwrap(),
            tag: 0,
        });
    }
    let (to, from) = (ring(), ring());
    let port = BalloonPort {
        to: to.producer(SLOT_SIZE).unwrap(),
        from: from.consumer(SLOT_SIZE).unwrap(),
    };
    let balloon = Balloon {
        to: to.consumer(SLOT_SIZE).unwrap(),
        from: from.producer(SLOT_SIZE).unwrap(),
        from_mem: from,
    };
    before(&mut clients);
    let server = Server::new(core, ports, port, boot).unwrap();
    Sys {
        server,
        clients,
        client_mem,
        balloon,
    }
}

impl Sys {
    fn send(&mut self, c: usize, body: ClientRequest) -> u32 {
        let p = &mut self.clients[c];
        p.tag += 1;
        let mut buf = [0u8; SLOT_SIZE];
        let bytes = api::encode(&Request { tag: p.tag, body }, &mut buf).unwrap();
        p.req.push(bytes).unwrap();
        p.tag
    }

    fn send_raw(&mut self, c: usize, bytes: &[u8]) {
        self.clients[c].req.push(bytes).unwrap();
    }

    fn responses(&mut self, c: usize) -> Vec<Response> {
        let mut out = Vec::new();
        let mut buf = [0u8; SLOT_SIZE];
        while let Some(n) = self.clients[c].resp.pop(&mut buf).unwrap() {
            out.push(api::decode::<Response>(&buf[..n]).unwrap());
        }
        out
    }

    /// One request, served, one response.
    fn call(&mut self, c: usize, body: ClientRequest) -> ClientResponse {
        let tag = self.send(c, body);
        self.server.client_notified(c);
        let mut r = self.responses(c);
        assert_eq!(r.len(), 1, "{r:?}");
        let r = r.remove(0);
        assert_eq!(r.tag, Some(tag));
        r.body
    }

    fn alloc(&mut self, c: usize, order: u8) -> Block {
        match self.call(c, ClientRequest::Alloc { order }) {
            ClientResponse::Allocated(b) => b,
            other => panic!("alloc: {other:?}"),
        }
    }

    fn read_balloon_ring(&mut self) -> Vec<ToBalloon> {
        let mut out = Vec::new();
        let mut buf = [0u8; SLOT_SIZE];
        while let Some(n) = self.balloon.to.pop(&mut buf).unwrap() {
            out.push(api::decode::<ToBalloon>(&buf[..n]).unwrap());
        }
        out
    }

    fn balloon_says(&mut self, msg: FromBalloon) {
        let mut buf = [0u8; SLOT_SIZE];
        let bytes = api::encode(&msg, &mut buf).unwrap();
        self.balloon.from.push(bytes).unwrap();
        self.server.balloon_notified();
    }

    fn check(&self) {
        self.server.core().check_invariants().unwrap();
    }
}

fn reports(msgs: &[ToBalloon]) -> Vec<(u32, Vec<Block>)> {
    msgs.iter()
        .filter_map(|m| match m {
            ToBalloon::Report { batch, blocks } => Some((*batch, blocks.to_vec())),
            _ => None,
        })
        .collect()
}

#[test]
fn alloc_and_free_through_the_rings() {
    let mut s = sys();
    let b = s.alloc(0, 9);
    let z = ZONES[0];
    assert!(b.pfn >= z.base_pfn && b.pfn + 512 <= z.base_pfn + u64::from(z.pages));
    assert_eq!(
        s.server
            .core()
            .zone_stats(ZoneId(0))
            .unwrap()
            .allocated_pages,
        512
    );
    assert_eq!(
        s.call(0, ClientRequest::Free(b)),
        ClientResponse::Freed { count: 1 }
    );
    assert_eq!(
        s.server
            .core()
            .zone_stats(ZoneId(0))
            .unwrap()
            .allocated_pages,
        0
    );
    s.check();
}

#[test]
fn boot_reports_everything_free_after_the_delay() {
    let mut s = sys();
    assert_eq!(s.server.take_wake().arm_timer_ns, Some(2_000_000_000));
    let total: u64 = ZONES.iter().map(|z| u64::from(z.pages)).sum();
    let mut reported = 0;
    s.server.timer_expired();
    // Complete every batch until the worker has nothing left.
    for _ in 0..100 {
        let batches = reports(&s.read_balloon_ring());
        if batches.is_empty() {
            let w = s.server.take_wake();
            if w.arm_timer_ns.is_none() {
                break;
            }
            s.server.timer_expired();
            continue;
        }
        for (id, blocks) in batches {
            reported += blocks.iter().map(Block::pages).sum::<u64>();
            s.balloon_says(FromBalloon::ReportDone {
                batch: id,
                ok: true,
            });
        }
    }
    assert_eq!(reported, total);
    assert_eq!(s.server.core().stats().reported_pages, total);
    assert_eq!(
        s.server.counters().completions_ok,
        s.server.counters().batches_sent
    );
    s.check();
}

/// Issue 16: the largest capacity the tunables accept must fit one wire
/// batch, or the rest of the batch is dropped from the message while the
/// completion marks it Reported. Every page marked Reported is a page the
/// balloon was sent.
#[test]
fn the_largest_capacity_fits_a_wire_batch_and_only_what_was_sent_is_reported() {
    let mut s = sys_tun(Tunables {
        low_watermark_pages: 0,
        capacity: memserver::MAX_CAPACITY as u16,
        reporting_order: 0,
        ..Tunables::default()
    });
    // Fragment zone 0 so a batch can hold more than BATCH blocks: free
    // every other order-0 page of 256.
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(s.alloc(0, 0));
    }
    for b in held.iter().step_by(2) {
        s.call(0, ClientRequest::Free(*b));
    }
    s.read_balloon_ring();
    let mut sent = 0u64;
    s.server.timer_expired();
    for _ in 0..1000 {
        let batches = reports(&s.read_balloon_ring());
        if batches.is_empty() {
            if s.server.take_wake().arm_timer_ns.is_none() {
                break;
            }
            s.server.timer_expired();
            continue;
        }
        for (id, blocks) in batches {
            assert!(blocks.len() <= api::BATCH);
            sent += blocks.iter().map(Block::pages).sum::<u64>();
            s.balloon_says(FromBalloon::ReportDone {
                batch: id,
                ok: true,
            });
        }
    }
    assert_eq!(s.server.core().stats().reported_pages, sent);
    s.check();
}

#[test]
fn malformed_and_future_version_requests_get_errors_and_change_nothing() {
    let mut s = sys();
    let before = s.server.core().stats();
    s.send_raw(0, &[api::VERSION, 0xff, 0xff, 0xff]);
    s.send_raw(0, &[api::VERSION + 1, 0, 1, 0]);
    s.send_raw(0, &[]);
    s.server.client_notified(0);
    let r = s.responses(0);
    let errors: Vec<_> = r.iter().map(|r| (r.tag, r.body.clone())).collect();
    assert_eq!(
        errors,
        vec![
            (None, ClientResponse::Error(ClientError::Malformed)),
            (None, ClientResponse::Error(ClientError::UnsupportedVersion)),
            (None, ClientResponse::Error(ClientError::Malformed)),
        ]
    );
    assert_eq!(s.server.core().stats(), before);
    assert_eq!(s.server.counters().malformed, 3);
    s.check();
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    let mut s = sys();
    let mine = s.alloc(0, 3);
    let theirs = s.alloc(1, 3);
    let before = s.server.core().stats();
    let cases = [
        (theirs, ClientError::WrongZone),
        (
            Block {
                pfn: mine.pfn + 1,
                order: 0,
            },
            ClientError::NotAllocated,
        ),
        (
            Block {
                pfn: mine.pfn + 1,
                order: 3,
            },
            ClientError::Misaligned,
        ),
        (
            Block {
                pfn: mine.pfn,
                order: 2,
            },
            ClientError::WrongOrder,
        ),
        (
            Block {
                pfn: 0x10,
                order: 0,
            },
            ClientError::WrongZone,
        ),
    ];
    for (b, e) in cases {
        assert_eq!(
            s.call(0, ClientRequest::Free(b)),
            ClientResponse::Error(e),
            "{b:?}"
        );
        assert_eq!(s.server.core().stats(), before);
    }
    // Double free.
    assert_eq!(
        s.call(0, ClientRequest::Free(mine)),
        ClientResponse::Freed { count: 1 }
    );
    let before = s.server.core().stats();
    assert_eq!(
        s.call(0, ClientRequest::Free(mine)),
        ClientResponse::Error(ClientError::NotAllocated)
    );
    assert_eq!(s.server.core().stats(), before);
    s.check();
}

#[test]
fn a_batch_frees_the_good_blocks_and_refuses_the_bad() {
    let mut s = sys();
    let a = s.alloc(0, 0);
    let b = s.alloc(0, 1);
    let mut v = heapless::Vec::new();
    v.push(a).unwrap();
    v.push(Block {
        pfn: 0x50000,
        order: 0,
    })
    .unwrap();
    v.push(b).unwrap();
    v.push(a).unwrap();
    let r = s.call(0, ClientRequest::FreeBatch(v));
    assert_eq!(
        r,
        ClientResponse::BatchFailed {
            freed: 2,
            failed: 2,
            first: 1,
            error: ClientError::WrongZone
        }
    );
    assert_eq!(
        s.server
            .core()
            .zone_stats(ZoneId(0))
            .unwrap()
            .allocated_pages,
        0
    );
    s.check();
}

#[test]
fn a_client_moving_its_index_illegally_does_not_stop_the_other() {
    let mut s = sys();
    s.send(0, ClientRequest::Alloc { order: 0 });
    // Client 0 jumps its producer index far ahead of what it could have.
    s.client_mem[0]
        .header()
        .head
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    s.server.client_notified(0);
    assert!(s.responses(0).is_empty());
    assert!(s.server.counters().client_misbehaviour > 0);
    let b = s.alloc(1, 4);
    assert_eq!(
        s.call(1, ClientRequest::Free(b)),
        ClientResponse::Freed { count: 1 }
    );
    s.check();
}

#[test]
fn a_flooding_client_that_reads_no_responses_stalls_only_itself() {
    let mut s = sys();
    // Fill the request ring; serve; fill again: the response ring is full
    // after CAP responses, so the rest stays queued.
    for _ in 0..CAP {
        s.send(0, ClientRequest::Alloc { order: 0 });
    }
    s.server.client_notified(0);
    for _ in 0..CAP {
        s.send(0, ClientRequest::Alloc { order: 0 });
    }
    s.server.client_notified(0);
    assert_eq!(s.server.counters().requests, CAP as u64);
    // The good client is served meanwhile.
    let b = s.alloc(1, 2);
    assert_eq!(
        s.call(1, ClientRequest::Free(b)),
        ClientResponse::Freed { count: 1 }
    );
    // Once client 0 reads its responses, the rest is served.
    assert_eq!(s.responses(0).len(), CAP);
    s.server.client_notified(0);
    assert_eq!(s.responses(0).len(), CAP);
    assert_eq!(
        s.server
            .core()
            .zone_stats(ZoneId(0))
            .unwrap()
            .allocated_pages,
        2 * CAP as u64
    );
    s.check();
}

#[test]
fn batches_wait_for_room_in_the_balloon_ring_and_are_never_dropped() {
    let mut s = sys();
    s.server.take_wake();
    // Fill the balloon ring with stats answers the balloon does not read.
    let mut buf = [0u8; SLOT_SIZE];
    for _ in 0..CAP - 1 {
        let bytes = api::encode(&FromBalloon::StatsRequest, &mut buf).unwrap();
        s.balloon.from.push(bytes).unwrap();
    }
    s.server.balloon_notified();
    s.server.timer_expired();
    // The ring had one free slot: the batch went out or waits; read all.
    let mut got = reports(&s.read_balloon_ring());
    s.server.balloon_notified();
    got.extend(reports(&s.read_balloon_ring()));
    assert_eq!(got.len(), 1, "one batch in flight (default limit)");
    let stats = s.server.core().stats();
    assert_eq!(
        stats.isolated_pages,
        got[0].1.iter().map(Block::pages).sum::<u64>()
    );
    s.check();
}

#[test]
fn failed_report_and_device_reset_return_blocks_unreported() {
    let mut s = sys();
    s.server.timer_expired();
    let (id, _) = reports(&s.read_balloon_ring()).remove(0);
    s.balloon_says(FromBalloon::ReportDone {
        batch: id,
        ok: false,
    });
    assert_eq!(s.server.core().stats().isolated_pages, 0);
    assert_eq!(s.server.core().stats().reported_pages, 0);
    // The worker goes on; a reset fails what the device held.
    let w = s.server.take_wake();
    if w.arm_timer_ns.is_some() {
        s.server.timer_expired();
    }
    let held = reports(&s.read_balloon_ring());
    assert!(!held.is_empty());
    s.balloon_says(FromBalloon::DeviceReset);
    assert_eq!(s.server.core().stats().isolated_pages, 0);
    assert_eq!(s.server.core().stats().reported_pages, 0);
    assert!(s.server.counters().completions_failed >= 2);
    s.check();
}

#[test]
fn unknown_completion_is_refused() {
    let mut s = sys();
    let before = s.server.core().stats();
    s.balloon_says(FromBalloon::ReportDone {
        batch: 777,
        ok: true,
    });
    let msgs = s.read_balloon_ring();
    assert_eq!(
        msgs,
        vec![ToBalloon::Refused {
            req: Some(777),
            reason: RefuseReason::UnknownId
        }]
    );
    assert_eq!(s.server.core().stats(), before);
}

#[test]
fn inflate_then_deflate() {
    let mut s = sys();
    s.balloon_says(FromBalloon::Inflate {
        req: 1,
        pages: 1024,
    });
    let msgs = s.read_balloon_ring();
    let ToBalloon::Inflated {
        req: 1,
        blocks,
        last: true,
    } = &msgs[0]
    else {
        panic!("{msgs:?}");
    };
    let pages: u64 = blocks.iter().map(Block::pages).sum();
    assert_eq!(pages, 1024);
    assert_eq!(s.server.core().stats().ballooned_pages, 1024);
    // A deflate naming a block that is not ballooned changes nothing.
    let mut bad = blocks.clone();
    bad.push(Block {
        pfn: 0x40000 + 4095,
        order: 0,
    })
    .ok();
    bad[0] = Block {
        pfn: 0x5ffff,
        order: 0,
    };
    s.balloon_says(FromBalloon::Deflate {
        req: 2,
        blocks: bad,
    });
    assert_eq!(
        s.read_balloon_ring(),
        vec![ToBalloon::Refused {
            req: Some(2),
            reason: RefuseReason::NotBallooned
        }]
    );
    assert_eq!(s.server.core().stats().ballooned_pages, 1024);
    s.balloon_says(FromBalloon::Deflate {
        req: 3,
        blocks: blocks.clone(),
    });
    assert_eq!(
        s.read_balloon_ring(),
        vec![ToBalloon::Deflated {
            req: 3,
            pages: 1024
        }]
    );
    assert_eq!(s.server.core().stats().ballooned_pages, 0);
    s.check();
}

#[test]
fn malformed_balloon_message_is_refused() {
    let mut s = sys();
    s.balloon.from.push(&[api::VERSION, 0xee]).unwrap();
    s.server.balloon_notified();
    assert_eq!(
        s.read_balloon_ring(),
        vec![ToBalloon::Refused {
            req: None,
            reason: RefuseReason::Malformed
        }]
    );
    // The balloon ring's header scribbled: counted, nothing breaks.
    s.balloon_from_header_scribble();
    s.server.balloon_notified();
    assert!(s.server.counters().balloon_misbehaviour > 0);
}

impl Sys {
    fn balloon_from_header_scribble(&mut self) {
        self.balloon
            .from_mem
            .header()
            .head
            .store(u32::MAX / 2, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn requests_made_before_the_server_started_are_served() {
    let mut buf = [0u8; SLOT_SIZE];
    let mut s = sys_with(|clients| {
        let req = Request {
            tag: 9,
            body: ClientRequest::Alloc { order: 0 },
        };
        let bytes = api::encode(&req, &mut buf).unwrap();
        clients[1].req.push(bytes).unwrap();
        // The client waits for its response.
        clients[1].resp.request_signal();
    });
    let r = s.responses(1);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].tag, Some(9));
    assert!(s.server.take_wake().clients & 0b10 != 0, "client 1 is told");
}

/// A client that follows the signalling protocol and keeps its ring full
/// gets every request served, with no notification but the protocol's.
#[test]
fn a_client_keeping_its_rings_full_never_stalls() {
    let mut s = sys();
    let total = 10 * CAP as u32;
    let (mut sent, mut answered) = (0u32, 0u32);
    let mut server_notified = false;
    for _ in 0..1000 {
        // The client: push while there is room, notify if asked.
        while sent < total && s.clients[0].req.free_slots().unwrap() > 0 {
            s.send(0, ClientRequest::Stats);
            sent += 1;
            server_notified |= s.clients[0].req.needs_notify();
        }
        // The server runs only when notified.
        if std::mem::take(&mut server_notified) {
            s.server.client_notified(0);
        }
        // The client: read responses, notify if the server waits for room.
        answered += s.responses(0).len() as u32;
        server_notified |= s.clients[0].resp.needs_notify();
        if answered == total {
            break;
        }
        // Before waiting, the client asks for a signal (the server's wake
        // says whether it got one; here it just keeps going).
        s.clients[0].resp.request_signal();
    }
    assert_eq!(answered, total, "stalled after {answered} of {total}");
}

#[test]
fn an_allocation_failing_while_pages_are_ballooned_asks_for_them_back() {
    let mut s = sys();
    // The balloon takes all of both zones but what the watermark keeps
    // (none in these tunables).
    s.balloon_says(FromBalloon::Inflate {
        req: 1,
        pages: 8192,
    });
    let msgs = s.read_balloon_ring();
    let ballooned: Vec<Block> = msgs
        .iter()
        .flat_map(|m| match m {
            ToBalloon::Inflated { blocks, .. } => blocks.to_vec(),
            _ => vec![],
        })
        .collect();
    assert_eq!(ballooned.iter().map(Block::pages).sum::<u64>(), 8192);
    // Client 0 finds no memory: it is told so, and the balloon is asked,
    // once, for at least 2 MiB.
    for _ in 0..3 {
        assert_eq!(
            s.call(0, ClientRequest::Alloc { order: 0 }),
            ClientResponse::Error(ClientError::NoMemory)
        );
    }
    assert_eq!(
        s.read_balloon_ring(),
        vec![ToBalloon::Reclaim {
            pages: 512,
            first_pfn: ZONES[0].base_pfn,
            end_pfn: ZONES[0].base_pfn + u64::from(ZONES[0].pages),
        }]
    );
    assert_eq!(s.server.counters().reclaims, 1);
    // The balloon deflates a block of zone 0; the client's retry succeeds.
    let back = *ballooned.iter().find(|b| b.pfn < 0x50000).unwrap();
    let mut v = heapless::Vec::new();
    v.push(back).unwrap();
    s.balloon_says(FromBalloon::Deflate { req: 2, blocks: v });
    assert!(matches!(
        s.read_balloon_ring().as_slice(),
        [ToBalloon::Deflated { req: 2, .. }]
    ));
    assert!(matches!(
        s.call(0, ClientRequest::Alloc { order: 0 }),
        ClientResponse::Allocated(_)
    ));
    s.check();
}

#[test]
fn no_reclaim_is_asked_when_nothing_is_ballooned() {
    let mut s = sys();
    // Exhaust zone 0 with 4 MiB blocks.
    while let ClientResponse::Allocated(_) = s.call(0, ClientRequest::Alloc { order: 10 }) {}
    assert!(s.read_balloon_ring().is_empty());
    assert_eq!(s.server.counters().reclaims, 0);
}

/// Issue 16: the stats the balloon publishes mean what MemStats documents:
/// free = the free lists (isolated excluded), available = free + isolated,
/// reported is a part of free.
#[test]
fn mem_stats_fields_mean_what_they_say() {
    let mut s = sys();
    let b = s.alloc(0, 9);
    s.server.timer_expired();
    assert!(!reports(&s.read_balloon_ring()).is_empty());
    let core = s.server.core().stats();
    let m = s.server.mem_stats();
    assert!(m.isolated_pages > 0, "a batch is in flight");
    assert_eq!(m.total_pages, core.total_pages);
    assert_eq!(
        m.free_pages + m.isolated_pages + 512,
        m.total_pages,
        "free excludes isolated and allocated"
    );
    assert_eq!(m.available_pages, m.free_pages + m.isolated_pages);
    assert!(m.reported_pages <= m.free_pages);
    let _ = b;
}

/// Issue 16: DeviceReset is taken on the balloon's word (it alone sees the
/// device), but what can be checked is: a reset with no batch handed to
/// the balloon is refused and changes nothing, and a second reset does not
/// fail anything twice.
#[test]
fn device_reset_fails_only_batches_the_balloon_held_and_only_once() {
    let mut s = sys_tun(Tunables {
        low_watermark_pages: 0,
        capacity: 4,
        max_in_flight: 2,
        ..Tunables::default()
    });
    // Nothing was sent: refused, nothing changes.
    let before = s.server.core().stats();
    s.balloon_says(FromBalloon::DeviceReset);
    assert_eq!(
        s.read_balloon_ring(),
        vec![ToBalloon::Refused {
            req: None,
            reason: RefuseReason::UnknownId
        }]
    );
    assert_eq!(s.server.core().stats(), before);
    assert_eq!(s.server.counters().completions_failed, 0);

    s.server.timer_expired();
    let sent = reports(&s.read_balloon_ring());
    assert_eq!(sent.len(), 2);
    s.balloon_says(FromBalloon::DeviceReset);
    assert_eq!(s.server.counters().completions_failed, 2);
    assert_eq!(s.server.counters().device_resets, 1);
    assert_eq!(s.server.core().stats().isolated_pages, 0);
    // A second reset: the balloon holds nothing any more.
    s.read_balloon_ring();
    let refused = s.server.counters().balloon_refused;
    s.balloon_says(FromBalloon::DeviceReset);
    assert_eq!(s.server.counters().balloon_refused, refused + 1);
    assert_eq!(s.server.counters().completions_failed, 2);
    // Nor can the old ids be completed again.
    s.balloon_says(FromBalloon::ReportDone {
        batch: sent[0].0,
        ok: true,
    });
    assert_eq!(s.server.counters().balloon_refused, refused + 2);
    assert_eq!(s.server.core().stats().reported_pages, 0);
    s.check();
}

/// Issue 16: the device's limits reach the policy. No REPORTING stops
/// reporting (once a running pass has ended); limits from a restarted
/// device resume it; a smaller reporting queue lowers the capacity.
#[test]
fn device_limits_stop_resume_and_lower_reporting() {
    let mut s = sys();
    s.server.take_wake();
    // A pass is running when the limits arrive: applied after it ends.
    s.server.timer_expired();
    let sent = reports(&s.read_balloon_ring());
    assert!(!sent.is_empty());
    s.balloon_says(FromBalloon::DeviceLimits { report_capacity: 0 });
    assert!(s.server.core().tunables().is_some(), "not during a pass");
    for (id, _) in sent {
        s.balloon_says(FromBalloon::ReportDone {
            batch: id,
            ok: false,
        });
    }
    assert!(s.server.reporting_stopped_by_device());
    assert_eq!(s.server.core().tunables(), None);
    // Frees no longer arm the timer.
    s.server.take_wake();
    let b = s.alloc(0, 10);
    s.call(0, ClientRequest::Free(b));
    assert_eq!(s.server.take_wake().arm_timer_ns, None);
    // A restarted device with REPORTING: resumed, at the configured
    // capacity (4) under the device's 32, and a pass is requested.
    s.balloon_says(FromBalloon::DeviceLimits {
        report_capacity: 32,
    });
    assert!(!s.server.reporting_stopped_by_device());
    assert_eq!(s.server.core().tunables(), Some(tunables()));
    assert!(s.server.take_wake().arm_timer_ns.is_some());
    // A device with a 2-entry reporting queue lowers the capacity.
    s.balloon_says(FromBalloon::DeviceLimits { report_capacity: 2 });
    assert_eq!(s.server.core().tunables().map(|t| t.capacity), Some(2));
    s.server.timer_expired();
    let sent = reports(&s.read_balloon_ring());
    assert!(!sent.is_empty() && sent.iter().all(|(_, b)| b.len() <= 2));
    s.check();
}

/// Issue 16: a timer that cannot be armed is not fatal. The PD tells the
/// server, which runs the delay's expiry at the next event of any kind
/// instead (one pass per event): freed memory still goes back.
#[test]
fn without_a_timer_reporting_runs_at_the_next_event() {
    let mut s = sys();
    // The boot request asked for the timer; the PD could not arm it.
    assert!(s.server.take_wake().arm_timer_ns.is_some());
    s.server.timer_unavailable();
    assert!(s.read_balloon_ring().is_empty());
    // Any event: here a client's stats request.
    s.call(0, ClientRequest::Stats);
    let sent = reports(&s.read_balloon_ring());
    assert!(!sent.is_empty(), "the overdue pass ran");
    assert_eq!(s.server.core().reporting_stats().passes, 1);
    // It runs once: the next event does not start another pass.
    s.call(1, ClientRequest::Stats);
    assert_eq!(s.server.core().reporting_stats().passes, 1);
    s.check();
}

/// Run-time tunables (the balloon's `SetTunable`): a bad value is refused
/// with its reason and changes nothing; a good one during a pass is taken
/// at once and put into force when the pass ends, so the next pass uses
/// it (here: a smaller capacity, and a new delay for the next request).
#[test]
fn tunables_change_while_running_from_the_next_pass() {
    let mut s = sys();
    s.server.take_wake();
    s.server.timer_expired();
    let sent = reports(&s.read_balloon_ring());
    assert!(!sent.is_empty() && sent.iter().all(|(_, b)| b.len() <= 4));
    // Refused: out of range, nothing changes.
    for (key, value) in [
        (TunableKey::Order, 11),
        (TunableKey::Capacity, 0),
        (TunableKey::DelayMs, 0),
        (TunableKey::Policy, 2),
        (TunableKey::BackoffMax, 9),
        (TunableKey::ChurnPagesPerS, 1 << 32),
        (TunableKey::DelayMs, u64::MAX),
    ] {
        s.balloon_says(FromBalloon::SetTunable { key, value });
        assert_eq!(
            s.read_balloon_ring(),
            [ToBalloon::TunableSet {
                key,
                value,
                refused: Some(TunableRefusal::OutOfRange)
            }]
        );
        assert_eq!(s.server.configured_tunables(), Some(tunables()));
        assert_eq!(s.server.core().tunables(), Some(tunables()));
    }
    assert_eq!(s.server.counters().tunables_refused, 7);
    // Taken during the pass; in force once it ends.
    for (key, value) in [(TunableKey::Capacity, 2), (TunableKey::DelayMs, 500)] {
        s.balloon_says(FromBalloon::SetTunable { key, value });
        assert_eq!(
            s.read_balloon_ring(),
            [ToBalloon::TunableSet {
                key,
                value,
                refused: None
            }]
        );
    }
    assert_eq!(s.server.counters().tunables_set, 2);
    let want = Tunables {
        capacity: 2,
        delay_ns: 500_000_000,
        ..tunables()
    };
    assert_eq!(s.server.configured_tunables(), Some(want));
    assert_eq!(s.server.core().tunables(), Some(tunables()), "not mid-pass");
    let mut sent = sent;
    while !sent.is_empty() {
        for (id, _) in sent {
            s.balloon_says(FromBalloon::ReportDone {
                batch: id,
                ok: true,
            });
        }
        // More batches of the same pass (capacity 4) may follow.
        sent = reports(&s.read_balloon_ring());
    }
    assert!(!s.server.core().pass_running());
    assert_eq!(s.server.core().tunables(), Some(want));
    // The next pass comes after the new delay (armed when the pass
    // ended, or by the next free) and sends batches of 2.
    let at_end = s.server.take_wake().arm_timer_ns;
    let b = s.alloc(0, 10);
    s.call(0, ClientRequest::Free(b));
    let armed = s.server.take_wake().arm_timer_ns.or(at_end);
    assert_eq!(armed, Some(500_000_000));
    s.server.timer_expired();
    let sent = reports(&s.read_balloon_ring());
    assert!(!sent.is_empty() && sent.iter().all(|(_, b)| b.len() <= 2));
    s.check();
}

/// The operator's control port: every request is answered in order, a
/// good value is configured, an out-of-range one and a malformed slot
/// change nothing; with the response ring full, requests wait in their
/// ring (nothing is dropped) and are answered once there is room.
#[test]
fn control_port_answers_every_request_and_changes_only_good_values() {
    let mut s = sys();
    let (req_ring, resp_ring) = (ring(), ring());
    let mut port = ControlPort::new(
        req_ring.consumer(SLOT_SIZE).unwrap(),
        resp_ring.producer(SLOT_SIZE).unwrap(),
    );
    let mut operator = req_ring.producer(SLOT_SIZE).unwrap();
    let mut answers = resp_ring.consumer(SLOT_SIZE).unwrap();
    let mut send = |bytes: &[u8]| operator.push(bytes).unwrap();
    let mut buf = [0u8; SLOT_SIZE];
    let set = |key, value| {
        let mut out = [0u8; SLOT_SIZE];
        let n = api::encode(&FromControl::SetTunable { key, value }, &mut out)
            .unwrap()
            .len();
        (out, n)
    };
    let (good, n_good) = set(TunableKey::DelayMs, 500);
    let (bad, n_bad) = set(TunableKey::Order, 11);
    send(&good[..n_good]);
    send(&bad[..n_bad]);
    send(&[api::VERSION, 0xff, 0xff]);
    send(&[api::VERSION + 1, 0]);
    let mut seen = Vec::new();
    s.server.serve_control(&mut port, &mut |a| seen.push(*a));
    let mut got = Vec::new();
    while let Some(n) = answers.pop(&mut buf).unwrap() {
        got.push(api::decode_to_control(&buf[..n]).unwrap());
    }
    let want = [
        ToControl::TunableSet {
            key: TunableKey::DelayMs,
            value: 500,
            refused: None,
        },
        ToControl::TunableSet {
            key: TunableKey::Order,
            value: 11,
            refused: Some(TunableRefusal::OutOfRange),
        },
        ToControl::Refused {
            reason: RefuseReason::Malformed,
        },
        ToControl::Refused {
            reason: RefuseReason::UnsupportedVersion,
        },
    ];
    assert_eq!(got, want);
    assert_eq!(seen, want);
    assert_eq!(
        s.server.configured_tunables(),
        Some(Tunables {
            delay_ns: 500_000_000,
            ..tunables()
        })
    );
    assert_eq!(s.server.counters().tunables_set, 1);
    assert_eq!(s.server.counters().tunables_refused, 1);
    // A full response ring: nothing is taken until the operator reads.
    for _ in 0..CAP {
        send(&good[..n_good]);
    }
    s.server.serve_control(&mut port, &mut |_| {});
    let (more, n_more) = set(TunableKey::Capacity, 2);
    send(&more[..n_more]);
    s.server.serve_control(&mut port, &mut |_| {});
    assert_eq!(s.server.counters().tunables_set, 1 + CAP as u64);
    let mut drained = 0;
    while answers.pop(&mut buf).unwrap().is_some() {
        drained += 1;
    }
    assert_eq!(drained, CAP);
    s.server.serve_control(&mut port, &mut |_| {});
    let n = answers
        .pop(&mut buf)
        .unwrap()
        .expect("answered once there was room");
    assert_eq!(
        api::decode_to_control(&buf[..n]).unwrap(),
        ToControl::TunableSet {
            key: TunableKey::Capacity,
            value: 2,
            refused: None
        }
    );
    assert_eq!(port.misbehaviour, 0);
    s.check();
}
