use super::*;
use core::cell::Cell;
use memserver_api::{ClientError, ClientResponse, Request, decode_request, encode};
use pd_ring::{RingMemory, ring_words};
use std::boxed::Box;

const W: usize = ring_words(64, SLOT_SIZE);

struct Count<'c>(&'c Cell<u32>);
impl Notify for Count<'_> {
    fn notify(&self) {
        self.0.set(self.0.get() + 1);
    }
}

struct Rings {
    req: Box<RingMemory<W>>,
    resp: Box<RingMemory<W>>,
}

fn rings() -> Rings {
    Rings {
        req: Box::new(RingMemory::new()),
        resp: Box::new(RingMemory::new()),
    }
}

fn client<'a>(r: &'a Rings, n: &'a Cell<u32>) -> MemClient<'a, Count<'a>, u8> {
    MemClient::new(
        r.req.producer(SLOT_SIZE).unwrap(),
        r.resp.consumer(SLOT_SIZE).unwrap(),
        Count(n),
    )
}

fn answer(p: &mut pd_ring::Producer<'_>, tag: Option<u32>, body: ClientResponse) {
    let mut buf = [0u8; SLOT_SIZE];
    p.push(encode(&Response { tag, body }, &mut buf).unwrap())
        .unwrap();
}

#[test]
fn tags_round_trip_with_their_context() {
    let r = rings();
    let n = Cell::new(0);
    let mut c = client(&r, &n);
    let mut server_req = r.req.consumer(SLOT_SIZE).unwrap();
    let mut server_resp = r.resp.producer(SLOT_SIZE).unwrap();
    assert_eq!(c.window(), 32, "half the 64-slot request ring");
    let t0 = c.send(ClientRequest::Alloc { order: 3 }, 7).unwrap();
    let t1 = c.send(ClientRequest::Stats, 8).unwrap();
    assert_ne!(t0, t1);
    assert_eq!(c.in_flight(), 2);
    let mut buf = [0u8; SLOT_SIZE];
    let n0 = server_req.pop(&mut buf).unwrap().unwrap();
    assert_eq!(
        decode_request(&buf[..n0]),
        Ok(Request {
            tag: t0,
            body: ClientRequest::Alloc { order: 3 }
        })
    );
    // Answers may come in any order.
    answer(
        &mut server_resp,
        Some(t1),
        ClientResponse::Error(ClientError::Malformed),
    );
    answer(
        &mut server_resp,
        Some(t0),
        ClientResponse::Allocated(Block { pfn: 8, order: 3 }),
    );
    let (resp, ctx) = c.poll().unwrap().unwrap();
    assert_eq!((resp.tag, ctx), (Some(t1), 8));
    let (resp, ctx) = c.poll().unwrap().unwrap();
    assert_eq!(
        (resp.body, ctx),
        (ClientResponse::Allocated(Block { pfn: 8, order: 3 }), 7)
    );
    assert_eq!(c.poll(), Ok(None));
    assert_eq!(c.in_flight(), 0);
    assert_eq!(c.counters().received, 2);
}

#[test]
fn notifies_only_when_the_server_asked() {
    let r = rings();
    let n = Cell::new(0);
    let mut c = client(&r, &n);
    let mut server_req = r.req.consumer(SLOT_SIZE).unwrap();
    c.send(ClientRequest::Stats, 0).unwrap();
    assert_eq!(n.get(), 1, "the first request always notifies (boot race)");
    c.send(ClientRequest::Stats, 0).unwrap();
    assert_eq!(n.get(), 1, "the server did not ask for a signal");
    // The server drains, asks for a signal, re-checks, waits.
    let mut buf = [0u8; SLOT_SIZE];
    while server_req.pop(&mut buf).unwrap().is_some() {}
    server_req.request_signal();
    c.send(ClientRequest::Stats, 0).unwrap();
    c.send(ClientRequest::Stats, 0).unwrap();
    assert_eq!(n.get(), 2, "one signal for the request, none for the next");
    assert_eq!(c.counters().notifies, 2);
}

#[test]
fn prepare_wait_rechecks_and_requests_a_signal() {
    let r = rings();
    let n = Cell::new(0);
    let mut c = client(&r, &n);
    let mut server_resp = r.resp.producer(SLOT_SIZE).unwrap();
    let t = c.send(ClientRequest::Stats, 0).unwrap();
    assert_eq!(c.prepare_wait(), Ok(true));
    // The server answers and sees the request for a signal.
    answer(
        &mut server_resp,
        Some(t),
        ClientResponse::Freed { count: 0 },
    );
    assert!(server_resp.needs_notify());
    // An answer already there: do not wait.
    let t = c.send(ClientRequest::Stats, 0).unwrap();
    let _ = c.poll().unwrap().unwrap();
    answer(
        &mut server_resp,
        Some(t),
        ClientResponse::Freed { count: 0 },
    );
    assert_eq!(c.prepare_wait(), Ok(false));
}

#[test]
fn window_limits_requests_in_flight() {
    let r = rings();
    let n = Cell::new(0);
    let mut c = client(&r, &n);
    for _ in 0..32 {
        c.send(ClientRequest::Stats, 0).unwrap();
    }
    assert!(!c.can_send());
    assert_eq!(c.send(ClientRequest::Stats, 0), Err(MemError::WouldBlock));
    assert_eq!(c.counters().sent, 32);
}

#[test]
fn bad_responses_are_errors_and_change_nothing() {
    let r = rings();
    let n = Cell::new(0);
    let mut c = client(&r, &n);
    let mut server_resp = r.resp.producer(SLOT_SIZE).unwrap();
    let t = c.send(ClientRequest::Stats, 5).unwrap();
    // A tag never sent, no tag at all, garbage bytes, a future version.
    answer(
        &mut server_resp,
        Some(t + 1),
        ClientResponse::Freed { count: 1 },
    );
    answer(
        &mut server_resp,
        None,
        ClientResponse::Error(ClientError::Malformed),
    );
    server_resp.push(&[1, 0xff, 0xff, 0xff]).unwrap();
    server_resp.push(&[9, 0]).unwrap();
    assert_eq!(c.poll(), Err(MemError::UnexpectedTag(Some(t + 1))));
    assert_eq!(c.poll(), Err(MemError::UnexpectedTag(None)));
    assert!(matches!(c.poll(), Err(MemError::Decode(_))));
    assert!(matches!(
        c.poll(),
        Err(MemError::Decode(
            memserver_api::DecodeError::UnsupportedVersion(9)
        ))
    ));
    assert_eq!(c.in_flight(), 1);
    // The real answer still finds its request.
    answer(
        &mut server_resp,
        Some(t),
        ClientResponse::Freed { count: 1 },
    );
    assert_eq!(c.poll().unwrap().map(|(_, ctx)| ctx), Some(5));
    // A ring index moved illegally: an error, not a crash.
    r.resp
        .header()
        .head
        .store(1000, core::sync::atomic::Ordering::Release);
    assert!(matches!(
        c.poll(),
        Err(MemError::Ring(RingError::PeerMisbehaviour(_)))
    ));
    assert_eq!(c.counters().bad_responses, 5);
}

#[test]
fn free_batch_fills_to_32() {
    let mut b = FreeBatch::new();
    assert_eq!(b.take(), None);
    for i in 0..BATCH as u64 {
        b.push(Block {
            pfn: i * 2,
            order: 1,
        })
        .unwrap();
    }
    assert!(b.is_full());
    assert_eq!(
        b.push(Block { pfn: 0, order: 0 }),
        Err(Block { pfn: 0, order: 0 })
    );
    assert_eq!(b.pages(), 64);
    let ClientRequest::FreeBatch(v) = b.take().unwrap() else {
        panic!("not a batch")
    };
    assert_eq!(v.len(), BATCH);
    assert!(b.is_empty());
}
