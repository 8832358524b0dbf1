//! The log page: a PD's log lines in memory the host can read without a
//! console (a release kernel has none).
//!
//! `tools image` gives every PD one region at a fixed physical address; the
//! PD appends each byte it logs and the host reads the page through QMP
//! `pmemsave`. Layout (little-endian, written by the PD only):
//!
//! | offset | field                                          |
//! |--------|------------------------------------------------|
//! | 0      | `MAGIC` (u64), written once                    |
//! | 8      | bytes ever written (u64), stored after them    |
//! | 16     | the data: byte `i` of the log at `i % (size - 16)` |
//!
//! The host treats a page as untrusted input: [`Reader::update`] takes any
//! bytes and never panics; a count that goes backwards or a bad magic is
//! reported, not followed.

/// "PDLOGv1\0" as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"PDLOGv1\0");
/// Bytes before the data.
pub const HEADER: usize = 16;

/// What a snapshot of a page held beyond the last one: the new bytes are
/// `page[first]` then `page[second]` (the data may wrap).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub first: core::ops::Range<usize>,
    pub second: core::ops::Range<usize>,
    /// Bytes overwritten before the host saw them.
    pub lost: u64,
}

impl Update {
    /// How many new bytes.
    pub fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A problem with a snapshot; the reader's state does not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageError {
    /// Shorter than the header plus one data byte.
    TooSmall,
    /// No magic: the PD has not logged yet (or the page is not a log page).
    NoMagic,
    /// The count went backwards: the PD (or something) rewrote the page.
    Backwards { was: u64, now: u64 },
}

impl core::fmt::Display for PageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PageError::TooSmall => write!(f, "log page smaller than its header"),
            PageError::NoMagic => write!(f, "log page has no magic (nothing logged yet)"),
            PageError::Backwards { was, now } => {
                write!(f, "log page count went backwards ({was} -> {now})")
            }
        }
    }
}

/// The host's view of one page: how much of the log it has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reader {
    seen: u64,
}

impl Reader {
    /// Bytes of the log seen so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Take a snapshot of the whole page and return what is new in it.
    pub fn update(&mut self, page: &[u8]) -> Result<Update, PageError> {
        let cap = page.len().checked_sub(HEADER).filter(|&c| c > 0);
        let Some(cap) = cap else {
            return Err(PageError::TooSmall);
        };
        let word = |o: usize| u64::from_le_bytes(page[o..o + 8].try_into().expect("8 bytes"));
        if word(0) != MAGIC {
            return Err(PageError::NoMagic);
        }
        let written = word(8);
        if written < self.seen {
            return Err(PageError::Backwards {
                was: self.seen,
                now: written,
            });
        }
        let cap = cap as u64;
        let new = written - self.seen;
        let lost = new.saturating_sub(cap);
        let (from, len) = (self.seen + lost, (new - lost) as usize);
        // Both < cap, so both fit in usize and in the page.
        let at = HEADER + (from % cap) as usize;
        let till_end = page.len() - at;
        let update = if len <= till_end {
            Update {
                first: at..at + len,
                second: HEADER..HEADER,
                lost,
            }
        } else {
            Update {
                first: at..page.len(),
                second: HEADER..HEADER + (len - till_end),
                lost,
            }
        };
        self.seen = written;
        Ok(update)
    }
}

/// A page of `size` bytes as a PD that logged `log` leaves it: for the
/// host's tests of its readers (the PD itself writes in place).
#[cfg(any(test, feature = "host"))]
pub fn page_of(size: usize, log: &[u8]) -> std::vec::Vec<u8> {
    let mut p = std::vec![0u8; size];
    p[..8].copy_from_slice(&MAGIC.to_le_bytes());
    p[8..16].copy_from_slice(&(log.len() as u64).to_le_bytes());
    let cap = size - HEADER;
    for (i, b) in log.iter().enumerate() {
        p[HEADER + i % cap] = *b;
    }
    p
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn page(size: usize, log: &[u8]) -> Vec<u8> {
        page_of(size, log)
    }

    fn bytes(p: &[u8], u: &Update) -> Vec<u8> {
        [&p[u.first.clone()], &p[u.second.clone()]].concat()
    }

    #[test]
    fn new_bytes_are_returned_once() {
        let mut r = Reader::default();
        let p = page(64, b"A|INFO: one\n");
        let u = r.update(&p).unwrap();
        assert_eq!(bytes(&p, &u), b"A|INFO: one\n");
        assert_eq!(u.lost, 0);
        let p = page(64, b"A|INFO: one\nA|INFO: two\n");
        let u = r.update(&p).unwrap();
        assert_eq!(bytes(&p, &u), b"A|INFO: two\n");
        assert_eq!(r.seen(), 24);
    }

    #[test]
    fn wrapped_data_is_read_in_order_and_overwritten_bytes_counted() {
        let log: Vec<u8> = (0..100u8).collect();
        let mut r = Reader::default();
        // 16 data bytes: the last 16 survive, 84 were overwritten.
        let p = page(32, &log);
        let u = r.update(&p).unwrap();
        assert_eq!(bytes(&p, &u), &log[84..]);
        assert_eq!(u.lost, 84);
    }

    #[test]
    fn a_bad_page_is_an_error_and_changes_nothing() {
        let mut r = Reader::default();
        r.update(&page(64, b"abc")).unwrap();
        assert_eq!(r.update(&[0u8; 8]), Err(PageError::TooSmall));
        assert_eq!(r.update(&[0u8; 64]), Err(PageError::NoMagic));
        assert_eq!(
            r.update(&page(64, b"a")),
            Err(PageError::Backwards { was: 3, now: 1 })
        );
        assert_eq!(r.seen(), 3);
    }

    /// Every split of a log into two snapshots, on pages of every small
    /// size: the bytes seen are the log's tail, in order, and nothing else.
    #[test]
    fn any_two_snapshots_give_the_log_in_order() {
        let log: Vec<u8> = (0..40u8).collect();
        for size in HEADER + 1..HEADER + 20 {
            let cap = size - HEADER;
            for cut in 0..=log.len() {
                let mut r = Reader::default();
                let p1 = page(size, &log[..cut]);
                let u1 = r.update(&p1).unwrap();
                let p2 = page(size, &log);
                let u2 = r.update(&p2).unwrap();
                assert_eq!(bytes(&p1, &u1), &log[cut.saturating_sub(cap)..cut]);
                assert_eq!(
                    bytes(&p2, &u2),
                    &log[cut.max(log.len() - cap.min(log.len()))..]
                );
                assert_eq!(u2.lost as usize + u2.len(), log.len() - cut);
            }
        }
    }

    /// Headers with any counts: no panic, never more than the page holds.
    #[test]
    fn hostile_counts_never_panic() {
        for written in [0, 1, 15, 16, 17, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
            for seen_first in [0u64, 5, u64::MAX] {
                let mut p = vec![0xAAu8; 40];
                p[..8].copy_from_slice(&MAGIC.to_le_bytes());
                let mut r = Reader::default();
                p[8..16].copy_from_slice(&seen_first.to_le_bytes());
                let _ = r.update(&p);
                p[8..16].copy_from_slice(&written.to_le_bytes());
                if let Ok(u) = r.update(&p) {
                    assert!(u.len() <= p.len() - HEADER);
                    let _ = bytes(&p, &u);
                }
            }
        }
    }
}
