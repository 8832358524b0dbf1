//! Model checks of the ring and its signalling protocol.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p pd-ring --release --test loom`
//! Notifications are modelled by `loom::sync::Notify`, which like an seL4
//! notification coalesces: a notify with nobody waiting is kept until the
//! next wait, several notifies before a wait count once. A lost wakeup shows
//! up as a loom deadlock.
#![cfg(loom)]

use loom::sync::Notify;
use loom::thread;
use pd_ring::{RingError, RingMemory, ring_words};

const PAYLOAD: usize = 8;
/// Capacity 2 with 3 messages: the producer must find the ring full.
const CAP: usize = 2;
const MESSAGES: u8 = 3;
type Mem = RingMemory<{ ring_words(CAP, PAYLOAD) }>;

/// Runs `f` under loom. `bound` limits preemptions per execution (None:
/// exhaustive); `LOOM_MAX_PREEMPTIONS` overrides it for deeper runs.
fn model(bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        b.preemption_bound = bound;
    }
    b.check(f);
}

fn leak<T>(t: T) -> &'static T {
    Box::leak(Box::new(t))
}

fn message(i: u8) -> [u8; 5] {
    [i, i ^ 0x5a, i.wrapping_mul(3), 0xff - i, i]
}

/// Push and pop with spinning: every message arrives once, in order, with
/// its bytes intact (slot data is relaxed, so this checks the Release /
/// Acquire publishing of both indices).
#[test]
fn push_pop_spin() {
    model(None, || {
        let mem: &'static Mem = leak(Mem::new());
        let producer = thread::spawn(move || {
            let mut p = mem.producer(PAYLOAD).unwrap();
            for i in 0..MESSAGES {
                loop {
                    match p.push(&message(i)) {
                        Ok(()) => break,
                        Err(RingError::Full) => thread::yield_now(),
                        Err(e) => panic!("push: {e}"),
                    }
                }
            }
        });
        let mut c = mem.consumer(PAYLOAD).unwrap();
        let mut buf = [0u8; PAYLOAD];
        for i in 0..MESSAGES {
            loop {
                match c.pop(&mut buf) {
                    Ok(Some(n)) => {
                        assert_eq!(&buf[..n], &message(i));
                        break;
                    }
                    Ok(None) => thread::yield_now(),
                    Err(e) => panic!("pop: {e}"),
                }
            }
        }
        producer.join().unwrap();
        assert_eq!(c.pop(&mut buf), Ok(None));
    });
}

/// The full protocol with blocking waits in both directions: the consumer
/// waits for data, the producer waits for space when the ring is full.
/// Neither wait may hang (loom reports a deadlock) and no message is lost.
fn signalling(recheck: bool) {
    // Exhaustive search of this one did not finish in 5 minutes; 4
    // preemptions take seconds (5: ~15 s, set LOOM_MAX_PREEMPTIONS=5). A
    // Relaxed publish or a missing SeqCst fence fails well within 4.
    model(Some(4), move || {
        let mem: &'static Mem = leak(Mem::new());
        let data: &'static Notify = leak(Notify::new());
        let space: &'static Notify = leak(Notify::new());
        let producer = thread::spawn(move || {
            let mut p = mem.producer(PAYLOAD).unwrap();
            for i in 0..MESSAGES {
                loop {
                    match p.push(&message(i)) {
                        Ok(()) => break,
                        Err(RingError::Full) => {
                            p.request_signal();
                            if p.free_slots().unwrap() == 0 {
                                space.wait();
                            }
                        }
                        Err(e) => panic!("push: {e}"),
                    }
                }
                if p.needs_notify() {
                    data.notify();
                }
            }
        });
        let mut c = mem.consumer(PAYLOAD).unwrap();
        let mut buf = [0u8; PAYLOAD];
        let mut got = 0u8;
        loop {
            while let Some(n) = c.pop(&mut buf).unwrap() {
                assert_eq!(&buf[..n], &message(got));
                got += 1;
                if c.needs_notify() {
                    space.notify();
                }
            }
            if got == MESSAGES {
                break;
            }
            c.request_signal();
            if !recheck || c.is_empty().unwrap() {
                data.wait();
            }
        }
        producer.join().unwrap();
    });
}

#[test]
fn signalling_loses_no_message_and_no_wakeup() {
    signalling(true);
}

/// The check above can fail: without the re-check after requesting a
/// signal, loom finds the interleaving where the producer published before
/// the request and the consumer sleeps forever.
#[test]
#[should_panic(expected = "deadlock")]
fn signalling_without_recheck_loses_a_wakeup() {
    signalling(false);
}

/// The flag handshake alone, as sDDF writes it, explored exhaustively (no
/// preemption bound): a producer that publishes one message and then checks
/// the flag, a consumer that requests a signal, re-checks and only then
/// waits. loom's `Notify` may also wake spuriously, so the consumer loops.
#[test]
fn single_message_wakeup_exhaustive() {
    model(None, || {
        let mem: &'static Mem = leak(Mem::new());
        let data: &'static Notify = leak(Notify::new());
        let producer = thread::spawn(move || {
            let mut p = mem.producer(PAYLOAD).unwrap();
            p.push(b"one").unwrap();
            if p.needs_notify() {
                data.notify();
            }
        });
        let mut c = mem.consumer(PAYLOAD).unwrap();
        let mut buf = [0u8; PAYLOAD];
        let n = loop {
            if let Some(n) = c.pop(&mut buf).unwrap() {
                break n;
            }
            c.request_signal();
            if c.is_empty().unwrap() {
                data.wait();
            }
        };
        assert_eq!(&buf[..n], b"one");
        producer.join().unwrap();
    });
}
