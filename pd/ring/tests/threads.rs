//! The signalling protocol on real threads and real atomics: two threads,
//! blocking waits in both directions, many messages. A lost wakeup fails
//! the test through a bounded wait instead of hanging; nothing is timed.
#![cfg(not(loom))]

use pd_ring::{RingError, RingMemory, ring_words};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 64;
const CAP: usize = 16;
const MESSAGES: u32 = 200_000;
/// Far beyond any scheduling delay: reaching it means a lost wakeup.
const LOST: Duration = Duration::from_secs(20);

/// An seL4-like notification: a binary semaphore, notifies coalesce.
#[derive(Default)]
struct Notification {
    pending: Mutex<bool>,
    cv: Condvar,
    sent: AtomicU64,
}

impl Notification {
    fn notify(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        *self.pending.lock().unwrap() = true;
        self.cv.notify_one();
    }

    fn wait(&self) {
        let guard = self.pending.lock().unwrap();
        let (mut pending, timeout) = self
            .cv
            .wait_timeout_while(guard, LOST, |pending| !*pending)
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "lost wakeup: no notification in {LOST:?}"
        );
        *pending = false;
    }
}

fn message(i: u32, buf: &mut [u8]) -> usize {
    let len = i as usize % (PAYLOAD + 1);
    for (k, b) in buf[..len].iter_mut().enumerate() {
        *b = (i as usize).wrapping_mul(31).wrapping_add(k) as u8;
    }
    len
}

#[test]
fn two_threads_lose_nothing() {
    let mem = Box::new(RingMemory::<{ ring_words(CAP, PAYLOAD) }>::new());
    let (data, space) = (Notification::default(), Notification::default());
    let start = Instant::now();
    thread::scope(|s| {
        s.spawn(|| {
            let mut p = mem.producer(PAYLOAD).unwrap();
            let mut buf = [0u8; PAYLOAD];
            for i in 0..MESSAGES {
                let len = message(i, &mut buf);
                loop {
                    match p.push(&buf[..len]) {
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
        let (mut buf, mut expect) = ([0u8; PAYLOAD], [0u8; PAYLOAD]);
        let mut next = 0u32;
        while next < MESSAGES {
            while let Some(n) = c.pop(&mut buf).unwrap() {
                let len = message(next, &mut expect);
                assert_eq!(&buf[..n], &expect[..len], "message {next}");
                next += 1;
                if c.needs_notify() {
                    space.notify();
                }
            }
            if next == MESSAGES {
                break;
            }
            c.request_signal();
            if c.is_empty().unwrap() {
                data.wait();
            }
        }
        assert_eq!(c.pop(&mut buf), Ok(None));
        assert_eq!(c.misbehaviours(), 0);
    });
    // Figures, not assertions: how often each side had to be woken.
    println!(
        "{MESSAGES} messages in {:?}; notifications: data {}, space {}",
        start.elapsed(),
        data.sent.load(Ordering::Relaxed),
        space.sent.load(Ordering::Relaxed)
    );
}
