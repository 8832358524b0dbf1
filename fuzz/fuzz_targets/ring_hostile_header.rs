//! A ring whose whole region comes from the fuzzer (a peer that wrote
//! anything before we attached), then a script of operations interleaved
//! with more scribbles. Nothing may panic or read out of bounds; every
//! result is one of the documented kinds; a popped message never exceeds the
//! slot; and the side we drive never publishes an index its own invariants
//! forbid.
#![no_main]

use core::sync::atomic::Ordering;
use libfuzzer_sys::fuzz_target;
use pd_ring::{Consumer, HEADER_SIZE, Producer, RingError};

/// Region size in u64 words (header + slots): 1 KiB.
const WORDS: usize = 128;

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = bytes.len().min(8);
    w[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(w)
}

fuzz_target!(|data: &[u8]| {
    // data[0]: slot payload; data[1]: region length; data[2]: how many of
    // the following bytes fill the region (the rest is zero, as mapped);
    // then the region bytes, then the script.
    if data.len() < 3 {
        return;
    }
    let slot = 1 + usize::from(data[0]) % 64;
    // The region length this side believes in (may be too small).
    let len = HEADER_SIZE + usize::from(data[1]) * 8 % (WORDS * 8 - HEADER_SIZE + 8);
    let filled = usize::from(data[2]);
    let data = &data[3..];
    let (initial, script) = data.split_at(filled.min(data.len()));

    let mem: Vec<core::sync::atomic::AtomicU64> = (0..WORDS)
        .map(|i| {
            let at = i * 8;
            core::sync::atomic::AtomicU64::new(word(initial.get(at..).unwrap_or(&[])))
        })
        .collect();
    let base = mem.as_ptr().cast_mut().cast::<u8>();
    let at = |i: usize| &mem[i % WORDS];
    // SAFETY: `mem` is 8-aligned, `len <= WORDS * 8` bytes of it are valid
    // for the whole target, and every access (here and in the handles) is
    // atomic.
    let (p, c) = unsafe {
        (
            Producer::from_raw(base, len, slot),
            Consumer::from_raw(base, len, slot),
        )
    };
    let (Ok(mut p), Ok(mut c)) = (p, c) else {
        return;
    };
    let cap = p.capacity();
    assert!(cap.is_power_of_two());
    assert!(HEADER_SIZE + cap as usize * (8 + slot.div_ceil(8) * 8) <= len);

    let mut buf = vec![0u8; slot];
    for op in script.chunks(5) {
        let arg = op.get(1).copied().unwrap_or(0);
        match op[0] % 6 {
            0 => {
                let msg = vec![op[0]; usize::from(arg) % (slot + 2)];
                match p.push(&msg) {
                    Ok(()) => assert!(msg.len() <= slot),
                    Err(RingError::TooLarge { len, max }) => assert!(len > max),
                    Err(RingError::Full | RingError::PeerMisbehaviour(_)) => {}
                    Err(e) => panic!("push: unexpected {e}"),
                }
                let _ = p.needs_notify();
            }
            1 => match c.pop(&mut buf) {
                Ok(Some(n)) => assert!(n <= slot),
                Ok(None) | Err(RingError::PeerMisbehaviour(_)) => {}
                Err(e) => panic!("pop: unexpected {e}"),
            },
            2 => {
                // Scribble a header word (head/flags in word 0, tail/flags
                // in word 8) or a slot word.
                let i = match arg % 3 {
                    0 => 0,
                    1 => 8,
                    _ => usize::from(arg),
                };
                at(i).store(word(&op[1..]), Ordering::Relaxed);
            }
            3 => {
                c.request_signal();
                p.request_signal();
                let _ = c.needs_notify();
            }
            4 => {
                let mut small = [0u8; 3];
                match c.pop(&mut small) {
                    Ok(Some(n)) => assert!(n <= 3),
                    Ok(None)
                    | Err(RingError::BufferTooSmall { .. })
                    | Err(RingError::PeerMisbehaviour(_)) => {}
                    Err(e) => panic!("pop: unexpected {e}"),
                }
            }
            _ => {
                let avail = c.available();
                let free = p.free_slots();
                if let Ok(a) = avail {
                    assert!(a <= cap);
                }
                if let Ok(f) = free {
                    assert!(f <= cap);
                }
            }
        }
    }
});
