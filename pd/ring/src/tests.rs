//! Unit tests and property tests against a `VecDeque` model, including a
//! hostile peer scribbling over the header and the slots.

use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;
use std::vec;
use std::vec::Vec;

const PAYLOAD: usize = 24;
const CAP: usize = 4;
type Mem = RingMemory<{ ring_words(CAP, PAYLOAD) }>;

fn is_peer_error(r: &Result<impl core::fmt::Debug, RingError>) -> bool {
    matches!(r, Err(RingError::PeerMisbehaviour(_)))
}

#[test]
fn zeroed_memory_is_an_empty_ring() {
    let mem = Mem::new();
    let mut c = mem.consumer(PAYLOAD).unwrap();
    let mut p = mem.producer(PAYLOAD).unwrap();
    assert_eq!(c.capacity(), CAP as u32);
    assert_eq!(p.capacity(), CAP as u32);
    assert_eq!(c.pop(&mut [0; PAYLOAD]), Ok(None));
    assert_eq!(c.is_empty(), Ok(true));
    assert_eq!(p.free_slots(), Ok(CAP as u32));
    assert!(!p.needs_notify());
    assert!(!c.needs_notify());
}

#[test]
fn capacity_is_the_largest_power_of_two_that_fits() {
    // 5 slots of room: capacity 4, the fifth slot's words unused.
    let mem = RingMemory::<{ ring_words(5, 16) }>::new();
    assert_eq!(mem.producer(16).unwrap().capacity(), 4);
    // Smaller slots in the same memory: more of them. 5*3 = 15 words, 1+1 per slot.
    assert_eq!(mem.consumer(8).unwrap().capacity(), 4);
    assert_eq!(mem.consumer(1).unwrap().capacity(), 4);
    // 112 bytes = 15 words with the length word: exactly one slot.
    assert_eq!(mem.consumer(112).unwrap().capacity(), 1);
    assert_eq!(
        mem.consumer(113).unwrap_err(),
        GeometryError::TooSmall {
            len: HEADER_SIZE + 15 * 8
        }
    );
    assert_eq!(mem.consumer(0).unwrap_err(), GeometryError::BadSlotSize(0));
    assert_eq!(
        mem.producer(MAX_SLOT_PAYLOAD + 1).unwrap_err(),
        GeometryError::BadSlotSize(MAX_SLOT_PAYLOAD + 1)
    );
    assert_eq!(region_size(4, 24), HEADER_SIZE + 4 * 32);
}

#[test]
fn raw_constructor_checks_the_region_and_interoperates() {
    let mem = std::boxed::Box::new(Mem::new());
    let base = (&*mem as *const Mem).cast_mut().cast::<u8>();
    let len = core::mem::size_of::<Mem>();
    // SAFETY: `mem` outlives the handles and is only accessed through
    // atomics.
    let mut p = unsafe { Producer::from_raw(base, len, PAYLOAD) }.unwrap();
    // SAFETY: as above.
    let mut c = unsafe { Consumer::from_raw(base, len, PAYLOAD) }.unwrap();
    p.push(b"through raw memory").unwrap();
    // The RingMemory view sees the published index.
    assert_eq!(mem.header().head.load(Ordering::Relaxed), 1);
    let mut buf = [0; PAYLOAD];
    assert_eq!(c.pop(&mut buf), Ok(Some(18)));
    assert_eq!(&buf[..18], b"through raw memory");

    // SAFETY: the checks fail before any access.
    let misaligned = unsafe { Producer::from_raw(base.wrapping_add(4), len - 4, 8) };
    assert_eq!(misaligned.unwrap_err(), GeometryError::Misaligned);
    // SAFETY: as above.
    let null = unsafe { Consumer::from_raw(core::ptr::null_mut(), len, 8) };
    assert_eq!(null.unwrap_err(), GeometryError::Misaligned);
    // SAFETY: the region is bigger than claimed.
    let small = unsafe { Consumer::from_raw(base, HEADER_SIZE - 8, 8) };
    assert_eq!(small.unwrap_err(), GeometryError::TooSmall { len: 120 });
}

#[test]
fn push_pop_lengths_full_and_errors() {
    let mem = Mem::new();
    let mut p = mem.producer(PAYLOAD).unwrap();
    let mut c = mem.consumer(PAYLOAD).unwrap();
    let msgs: [&[u8]; 4] = [b"", b"a", b"exactly eight", &[0xa5; PAYLOAD]];
    for m in msgs {
        p.push(m).unwrap();
    }
    assert_eq!(p.push(b"x"), Err(RingError::Full));
    assert_eq!(
        p.push(&[0; PAYLOAD + 1]),
        Err(RingError::TooLarge {
            len: PAYLOAD + 1,
            max: PAYLOAD
        })
    );
    assert_eq!(c.available(), Ok(4));
    let mut big = [0; PAYLOAD];
    for m in msgs {
        let mut small = [0; 0];
        if !m.is_empty() {
            // Too small a buffer consumes nothing.
            assert_eq!(
                c.pop(&mut small),
                Err(RingError::BufferTooSmall { needed: m.len() })
            );
        }
        assert_eq!(c.pop(&mut big), Ok(Some(m.len())));
        assert_eq!(&big[..m.len()], m);
    }
    assert_eq!(c.pop(&mut big), Ok(None));
    assert_eq!(p.free_slots(), Ok(4));
    assert_eq!(p.misbehaviours() + c.misbehaviours(), 0);
}

#[test]
fn indices_wrap_around_u32() {
    let mem = Mem::new();
    let start = u32::MAX - 2;
    mem.header().head.store(start, Ordering::Relaxed);
    mem.header().tail.store(start, Ordering::Relaxed);
    let mut p = mem.producer(PAYLOAD).unwrap();
    let mut c = mem.consumer(PAYLOAD).unwrap();
    let mut buf = [0; PAYLOAD];
    for i in 0u8..20 {
        p.push(&[i; 3]).unwrap();
        p.push(&[i, i]).unwrap();
        assert_eq!(c.pop(&mut buf), Ok(Some(3)));
        assert_eq!(buf[..3], [i; 3]);
        assert_eq!(c.pop(&mut buf), Ok(Some(2)));
    }
    assert_eq!(
        mem.header().head.load(Ordering::Relaxed),
        start.wrapping_add(40)
    );
    assert_eq!(
        mem.header().tail.load(Ordering::Relaxed),
        start.wrapping_add(40)
    );
}

#[test]
fn signal_requests_are_delivered_once() {
    let mem = Mem::new();
    let mut p = mem.producer(PAYLOAD).unwrap();
    let mut c = mem.consumer(PAYLOAD).unwrap();
    // Nobody asked: no notification.
    p.push(b"1").unwrap();
    assert!(!p.needs_notify());
    c.request_signal();
    assert_eq!(mem.header().consumer_signal.load(Ordering::Relaxed), 1);
    p.push(b"2").unwrap();
    assert!(p.needs_notify());
    assert!(
        !p.needs_notify(),
        "the request is consumed by the first check"
    );
    c.request_signal();
    c.cancel_signal();
    assert!(!p.needs_notify());

    // Producer side: full, ask for space, consumer frees one and notifies.
    p.push(b"3").unwrap();
    p.push(b"4").unwrap();
    assert_eq!(p.push(b"5"), Err(RingError::Full));
    p.request_signal();
    assert_eq!(p.free_slots(), Ok(0));
    assert!(c.pop(&mut [0; PAYLOAD]).unwrap().is_some());
    assert!(c.needs_notify());
    assert!(!c.needs_notify());
    assert_eq!(p.free_slots(), Ok(1));
    p.push(b"5").unwrap();
}

#[test]
fn hostile_producer_index_is_an_error_and_changes_nothing() {
    let mem = Mem::new();
    let mut p = mem.producer(PAYLOAD).unwrap();
    let mut c = mem.consumer(PAYLOAD).unwrap();
    p.push(b"ok").unwrap();
    let mut buf = [0; PAYLOAD];
    // More than capacity ahead of the consumer.
    mem.header().head.store(CAP as u32 + 1, Ordering::Relaxed);
    let r = c.pop(&mut buf);
    assert!(
        matches!(
            r,
            Err(RingError::PeerMisbehaviour(Misbehaviour::IndexOutOfRange {
                seen: 5,
                own: 0
            }))
        ),
        "{r:?}"
    );
    assert_eq!(mem.header().tail.load(Ordering::Relaxed), 0);
    // Restored: served again.
    mem.header().head.store(1, Ordering::Relaxed);
    assert_eq!(c.pop(&mut buf), Ok(Some(2)));
    // Backwards: head 3 accepted, then 2.
    p.push(b"b").unwrap();
    p.push(b"c").unwrap();
    assert_eq!(c.available(), Ok(2));
    mem.header().head.store(2, Ordering::Relaxed);
    assert_eq!(
        c.available(),
        Err(RingError::PeerMisbehaviour(Misbehaviour::IndexBackwards {
            seen: 2,
            last: 3
        }))
    );
    // Behind our own tail.
    mem.header().head.store(0, Ordering::Relaxed);
    assert!(is_peer_error(&c.available()));
    assert_eq!(c.misbehaviours(), 3);
    mem.header().head.store(3, Ordering::Relaxed);
    assert_eq!(c.pop(&mut buf), Ok(Some(1)));
    assert_eq!(&buf[..1], b"b");
}

#[test]
fn bad_slot_length_is_consumed_and_reported() {
    let mem = Mem::new();
    let mut p = mem.producer(PAYLOAD).unwrap();
    let mut c = mem.consumer(PAYLOAD).unwrap();
    p.push(b"first").unwrap();
    p.push(b"second").unwrap();
    mem.words()[0].store(u64::MAX, Ordering::Relaxed);
    let mut buf = [0; PAYLOAD];
    assert_eq!(
        c.pop(&mut buf),
        Err(RingError::PeerMisbehaviour(Misbehaviour::BadLength {
            len: u64::MAX
        }))
    );
    assert_eq!(c.pop(&mut buf), Ok(Some(6)));
    assert_eq!(&buf[..6], b"second");
    // A length just over the payload is caught too (the upper half of the
    // length word must be zero).
    p.push(b"third").unwrap();
    mem.words()[2 * ring_words(1, PAYLOAD)].store(PAYLOAD as u64 + 1, Ordering::Relaxed);
    assert!(is_peer_error(&c.pop(&mut buf)));
    assert_eq!(c.pop(&mut buf), Ok(None));
}

#[test]
fn hostile_consumer_index_is_an_error_and_changes_nothing() {
    let mem = Mem::new();
    let mut p = mem.producer(PAYLOAD).unwrap();
    for _ in 0..CAP {
        p.push(b"x").unwrap();
    }
    // Consumer claims to have consumed more than was published.
    mem.header().tail.store(CAP as u32 + 1, Ordering::Relaxed);
    assert!(matches!(
        p.push(b"y"),
        Err(RingError::PeerMisbehaviour(
            Misbehaviour::IndexOutOfRange { .. }
        ))
    ));
    assert_eq!(mem.header().head.load(Ordering::Relaxed), CAP as u32);
    mem.header().tail.store(2, Ordering::Relaxed);
    assert_eq!(p.free_slots(), Ok(2));
    // Backwards from the accepted 2.
    mem.header().tail.store(1, Ordering::Relaxed);
    assert_eq!(
        p.free_slots(),
        Err(RingError::PeerMisbehaviour(Misbehaviour::IndexBackwards {
            seen: 1,
            last: 2
        }))
    );
    assert_eq!(p.misbehaviours(), 2);
    mem.header().tail.store(3, Ordering::Relaxed);
    assert_eq!(p.free_slots(), Ok(3));
}

#[test]
fn errors_display() {
    let all = [
        RingError::Full,
        RingError::TooLarge { len: 9, max: 8 },
        RingError::BufferTooSmall { needed: 3 },
        RingError::PeerMisbehaviour(Misbehaviour::IndexBackwards { seen: 1, last: 2 }),
        RingError::PeerMisbehaviour(Misbehaviour::IndexOutOfRange { seen: 9, own: 2 }),
        RingError::PeerMisbehaviour(Misbehaviour::BadLength { len: 99 }),
    ];
    for e in all {
        assert!(!std::format!("{e}").is_empty());
    }
    assert_eq!(
        std::format!("{}", GeometryError::TooSmall { len: 4 }),
        "ring region of 4 bytes cannot hold the header and one slot"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Push(Vec<u8>),
    Pop,
    ConsumerRequest,
    ProducerCheck,
    ProducerRequest,
    ConsumerCheck,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..=PAYLOAD + 2).prop_map(Op::Push),
        4 => Just(Op::Pop),
        1 => Just(Op::ConsumerRequest),
        1 => Just(Op::ProducerCheck),
        1 => Just(Op::ProducerRequest),
        1 => Just(Op::ConsumerCheck),
    ]
}

proptest! {
    /// Honest peers: the ring behaves exactly like a bounded VecDeque, and
    /// the flags like two booleans consumed by the checks.
    #[test]
    fn matches_a_vecdeque(start in any::<u32>(), ops in proptest::collection::vec(op(), 0..200)) {
        let mem = Mem::new();
        mem.header().head.store(start, Ordering::Relaxed);
        mem.header().tail.store(start, Ordering::Relaxed);
        let mut p = mem.producer(PAYLOAD).unwrap();
        let mut c = mem.consumer(PAYLOAD).unwrap();
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let (mut c_flag, mut p_flag) = (false, false);
        for op in ops {
            match op {
                Op::Push(m) => {
                    let r = p.push(&m);
                    if m.len() > PAYLOAD {
                        prop_assert_eq!(r, Err(RingError::TooLarge { len: m.len(), max: PAYLOAD }));
                    } else if model.len() == CAP {
                        prop_assert_eq!(r, Err(RingError::Full));
                    } else {
                        prop_assert_eq!(r, Ok(()));
                        model.push_back(m);
                    }
                }
                Op::Pop => {
                    let mut buf = [0u8; PAYLOAD];
                    let r = c.pop(&mut buf);
                    match model.pop_front() {
                        None => prop_assert_eq!(r, Ok(None)),
                        Some(m) => {
                            prop_assert_eq!(r, Ok(Some(m.len())));
                            prop_assert_eq!(&buf[..m.len()], &m[..]);
                        }
                    }
                }
                Op::ConsumerRequest => { c.request_signal(); c_flag = true; }
                Op::ProducerCheck => prop_assert_eq!(p.needs_notify(), core::mem::take(&mut c_flag)),
                Op::ProducerRequest => { p.request_signal(); p_flag = true; }
                Op::ConsumerCheck => prop_assert_eq!(c.needs_notify(), core::mem::take(&mut p_flag)),
            }
            prop_assert_eq!(c.available(), Ok(model.len() as u32));
            prop_assert_eq!(p.free_slots(), Ok((CAP - model.len()) as u32));
        }
        prop_assert_eq!(p.misbehaviours() + c.misbehaviours(), 0);
    }

    /// A hostile producer writes any head and any slot word. The consumer
    /// never panics, never returns more than a slot, and classifies every
    /// read exactly as the protocol says (checked against a model).
    #[test]
    fn consumer_against_hostile_producer(
        ops in proptest::collection::vec(
            prop_oneof![
                2 => any::<u32>().prop_map(|v| (0u8, v as u64)),
                2 => (0u32..6).prop_map(|d| (1u8, d as u64)),
                3 => (any::<usize>(), any::<u64>()).prop_map(|(i, v)| (2u8, ((i % ring_words(CAP, PAYLOAD)) as u64) << 32 | (v & 0xffff_ffff))),
                2 => (0u64..=PAYLOAD as u64 + 3).prop_map(|l| (3u8, l)),
                6 => Just((4u8, 0)),
            ],
            0..300)
    ) {
        let mem = Mem::new();
        let mut c = mem.consumer(PAYLOAD).unwrap();
        let stride = ring_words(1, PAYLOAD);
        let (mut tail, mut last_head) = (0u32, 0u32);
        for (kind, v) in ops {
            let header = mem.header();
            match kind {
                0 => header.head.store(v as u32, Ordering::Relaxed),
                // Plausible moves: a little forward or backward of the tail.
                1 => header.head.store(tail.wrapping_add(v as u32).wrapping_sub(1), Ordering::Relaxed),
                2 => mem.words()[(v >> 32) as usize].store(v & 0xffff_ffff, Ordering::Relaxed),
                3 => {
                    let slot = (tail % CAP as u32) as usize;
                    mem.words()[slot * stride].store(v, Ordering::Relaxed);
                }
                _ => {
                    let mut buf = [0u8; PAYLOAD];
                    let r = c.pop(&mut buf);
                    let seen = header.head.load(Ordering::Relaxed);
                    let mut head = last_head;
                    if last_head == tail {
                        let avail = seen.wrapping_sub(tail);
                        if avail > CAP as u32 || seen.wrapping_sub(last_head) > avail {
                            prop_assert!(is_peer_error(&r), "{:?}", r);
                            prop_assert_eq!(header.tail.load(Ordering::Relaxed), tail);
                            continue;
                        }
                        head = seen;
                        last_head = seen;
                    }
                    if head == tail {
                        prop_assert_eq!(r, Ok(None));
                        continue;
                    }
                    let slot = (tail % CAP as u32) as usize * stride;
                    let len = mem.words()[slot].load(Ordering::Relaxed);
                    tail = tail.wrapping_add(1);
                    prop_assert_eq!(header.tail.load(Ordering::Relaxed), tail);
                    if len > PAYLOAD as u64 {
                        prop_assert_eq!(r, Err(RingError::PeerMisbehaviour(Misbehaviour::BadLength { len })));
                    } else {
                        prop_assert_eq!(r, Ok(Some(len as usize)));
                        let expect: Vec<u8> = (1..stride)
                            .flat_map(|k| mem.words()[slot + k].load(Ordering::Relaxed).to_le_bytes())
                            .take(len as usize)
                            .collect();
                        prop_assert_eq!(&buf[..len as usize], &expect[..]);
                    }
                }
            }
        }
    }

    /// A hostile consumer writes any tail; the producer classifies it
    /// exactly and never publishes past what the ring can hold.
    #[test]
    fn producer_against_hostile_consumer(
        ops in proptest::collection::vec(
            prop_oneof![
                1 => any::<u32>().prop_map(|v| (0u8, v)),
                3 => (0u32..7).prop_map(|d| (1u8, d)),
                4 => (0u32..=PAYLOAD as u32).prop_map(|l| (2u8, l)),
            ],
            0..300)
    ) {
        let mem = Mem::new();
        let mut p = mem.producer(PAYLOAD).unwrap();
        let (mut head, mut last_tail) = (0u32, 0u32);
        for (kind, v) in ops {
            let header = mem.header();
            match kind {
                0 => header.tail.store(v, Ordering::Relaxed),
                1 => header.tail.store(head.wrapping_sub(v).wrapping_add(2), Ordering::Relaxed),
                _ => {
                    let r = p.push(&vec![7u8; v as usize]);
                    if head.wrapping_sub(last_tail) >= CAP as u32 {
                        let seen = header.tail.load(Ordering::Relaxed);
                        if head.wrapping_sub(seen) > head.wrapping_sub(last_tail) {
                            prop_assert!(is_peer_error(&r), "{:?}", r);
                            prop_assert_eq!(header.head.load(Ordering::Relaxed), head);
                            continue;
                        }
                        last_tail = seen;
                        if head.wrapping_sub(seen) >= CAP as u32 {
                            prop_assert_eq!(r, Err(RingError::Full));
                            continue;
                        }
                    }
                    prop_assert_eq!(r, Ok(()));
                    head = head.wrapping_add(1);
                    prop_assert_eq!(header.head.load(Ordering::Relaxed), head);
                    prop_assert!(head.wrapping_sub(last_tail) <= CAP as u32);
                }
            }
        }
    }

    /// Both sides face arbitrary scribbles anywhere in the region: nothing
    /// panics and every result is a value of the documented kinds.
    #[test]
    fn arbitrary_scribbles_never_panic(
        ops in proptest::collection::vec((0u8..5, any::<usize>(), any::<u64>()), 0..300)
    ) {
        let mem = Mem::new();
        let mut p = mem.producer(PAYLOAD).unwrap();
        let mut c = mem.consumer(PAYLOAD).unwrap();
        for (kind, i, v) in ops {
            match kind {
                0 => {
                    let field = match i % 4 {
                        0 => &mem.header().head,
                        1 => &mem.header().tail,
                        2 => &mem.header().consumer_signal,
                        _ => &mem.header().producer_signal,
                    };
                    field.store(v as u32, Ordering::Relaxed);
                }
                1 => mem.words()[i % mem.words().len()].store(v, Ordering::Relaxed),
                2 => {
                    let r = p.push(&vec![1; i % (PAYLOAD + 1)]);
                    prop_assert!(matches!(r, Ok(()) | Err(RingError::Full) | Err(RingError::PeerMisbehaviour(_))));
                    let _ = p.needs_notify();
                }
                _ => {
                    let mut buf = [0u8; PAYLOAD];
                    let r = c.pop(&mut buf);
                    prop_assert!(matches!(r, Ok(None) | Err(RingError::PeerMisbehaviour(_))) || matches!(r, Ok(Some(n)) if n <= PAYLOAD), "{:?}", r);
                    let _ = c.needs_notify();
                }
            }
        }
    }
}
