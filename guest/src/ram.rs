//! The guest's RAM region and the data pattern that proves nothing it owns
//! was discarded: every word of an owned page holds a value derived from the
//! page's frame number and the word's index. A page the host discarded
//! reads back as zeros, which no pattern word is.

use crate::PAGE_SIZE;
use core::fmt;
use memserver_api::Block;

/// Words per page.
pub const WORDS_PER_PAGE: usize = (PAGE_SIZE / 8) as usize;

/// The value of word `word` of the page with frame number `pfn`: a mix of
/// both (so a page copied to another frame or shifted within itself is
/// caught), never 0 (so a discarded page is caught).
pub fn pattern(pfn: u64, word: usize) -> u64 {
    let x = ((pfn << 9) | word as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x ^ (x >> 29)) | 1
}

/// Why the RAM region cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamError {
    /// Base, physical address or size not page-aligned, or empty.
    Misaligned,
}

impl fmt::Display for RamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RamError::Misaligned => write!(
                f,
                "RAM region base, physical address or size is not a whole number of pages"
            ),
        }
    }
}

/// The first wrong word of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    pub pfn: u64,
    pub word: usize,
    pub expected: u64,
    pub found: u64,
}

/// What verifying a block found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verified {
    /// Pages with at least one wrong word.
    pub bad_pages: u64,
    /// Pages that read back as all zeros (discarded by the host).
    pub zero_pages: u64,
    pub first: Option<Mismatch>,
}

/// The guest's RAM: mapped at `base`, guest-physical frames
/// `base_pfn..base_pfn + pages`.
#[derive(Debug)]
pub struct RamWindow {
    base: *mut u8,
    base_pfn: u64,
    pages: u64,
}

impl RamWindow {
    /// The RAM mapped at `base`, of `size` bytes, at physical `paddr`.
    ///
    /// # Safety
    /// `base` must be valid for reads and writes of `size` bytes for the
    /// life of the window, and only this window may access it (no Rust
    /// reference to it may exist).
    pub unsafe fn new(base: *mut u8, paddr: u64, size: u64) -> Result<Self, RamError> {
        if base.is_null()
            || !(base as u64).is_multiple_of(PAGE_SIZE)
            || !paddr.is_multiple_of(PAGE_SIZE)
            || !size.is_multiple_of(PAGE_SIZE)
            || size == 0
        {
            return Err(RamError::Misaligned);
        }
        Ok(RamWindow {
            base,
            base_pfn: paddr / PAGE_SIZE,
            pages: size / PAGE_SIZE,
        })
    }

    /// First frame number.
    pub fn base_pfn(&self) -> u64 {
        self.base_pfn
    }

    /// Pages in the window.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Page index of `b` in the window if all of it lies inside.
    pub fn index_of(&self, b: Block) -> Option<u64> {
        let i = b.pfn.checked_sub(self.base_pfn)?;
        let end = i.checked_add(b.pages())?;
        (end <= self.pages).then_some(i)
    }

    fn word_ptr(&self, page_index: u64, word: usize) -> *mut u64 {
        // Callers pass page_index < pages and word < WORDS_PER_PAGE: inside
        // the window (checked by index_of).
        self.base
            .wrapping_add((page_index * PAGE_SIZE) as usize + word * 8)
            .cast()
    }

    /// Write the pattern into every word of `b`; `false` (and nothing
    /// written) when `b` is not inside the window.
    pub fn fill(&self, b: Block) -> bool {
        let Some(first) = self.index_of(b) else {
            return false;
        };
        for p in 0..b.pages() {
            let pfn = b.pfn + p;
            for w in 0..WORDS_PER_PAGE {
                // SAFETY: index_of checked the block lies in the window,
                // which `new`'s contract makes valid and ours alone; the
                // address is 8-aligned (base and PAGE_SIZE are).
                unsafe { self.word_ptr(first + p, w).write_volatile(pattern(pfn, w)) };
            }
        }
        true
    }

    /// Check every word of `b` (nothing is checked when `b` is outside).
    pub fn verify(&self, b: Block) -> Verified {
        let mut v = Verified::default();
        let Some(first) = self.index_of(b) else {
            return v;
        };
        for p in 0..b.pages() {
            let pfn = b.pfn + p;
            let (mut bad, mut zero) = (false, true);
            for w in 0..WORDS_PER_PAGE {
                // SAFETY: as in `fill`. Volatile: the host may have changed
                // the page behind the compiler's back, which is the point.
                let found = unsafe { self.word_ptr(first + p, w).read_volatile() };
                let expected = pattern(pfn, w);
                zero &= found == 0;
                if found != expected {
                    if !bad && v.first.is_none() {
                        v.first = Some(Mismatch {
                            pfn,
                            word: w,
                            expected,
                            found,
                        });
                    }
                    bad = true;
                }
            }
            v.bad_pages += u64::from(bad);
            v.zero_pages += u64::from(zero);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn fill_verify_and_detect_discards() {
        let mut mem = vec![0u64; 16 * WORDS_PER_PAGE + WORDS_PER_PAGE];
        // Page-align the base inside the buffer.
        let raw = mem.as_mut_ptr().cast::<u8>();
        let base = raw.wrapping_add(raw.align_offset(PAGE_SIZE as usize));
        // SAFETY: 16 pages from `base` lie inside `mem`, which outlives the
        // window and is not otherwise accessed while it lives.
        let ram = unsafe { RamWindow::new(base, 0x4000_0000, 16 * PAGE_SIZE) }.unwrap();
        let b = Block {
            pfn: 0x40000 + 4,
            order: 2,
        };
        assert!(ram.fill(b));
        assert_eq!(ram.verify(b), Verified::default());
        // Another block was never written: all zeros.
        let other = Block {
            pfn: 0x40000 + 8,
            order: 1,
        };
        let v = ram.verify(other);
        assert_eq!((v.bad_pages, v.zero_pages), (2, 2));
        // The host discards one page of b: caught, and the first bad word named.
        // SAFETY: page 5 of the window, inside `mem`.
        unsafe {
            core::ptr::write_bytes(
                base.wrapping_add(5 * PAGE_SIZE as usize),
                0,
                PAGE_SIZE as usize,
            )
        };
        let v = ram.verify(b);
        assert_eq!((v.bad_pages, v.zero_pages), (1, 1));
        assert_eq!(
            v.first.map(|m| (m.pfn, m.word, m.found)),
            Some((0x40005, 0, 0))
        );
        // Outside the window: refused, nothing touched.
        assert!(!ram.fill(Block {
            pfn: 0x40000 + 15,
            order: 1
        }));
        assert!(!ram.fill(Block {
            pfn: 0x3ffff,
            order: 0
        }));
        assert_eq!(
            ram.index_of(Block {
                pfn: u64::MAX,
                order: 10
            }),
            None
        );
    }

    #[test]
    fn pattern_is_never_zero_and_differs_between_pages() {
        for pfn in [0, 1, 0x40000, u64::MAX >> 12] {
            for w in [0, 1, 511] {
                assert_ne!(pattern(pfn, w), 0);
                assert_ne!(pattern(pfn, w), pattern(pfn + 1, w));
                assert_ne!(pattern(pfn, w), pattern(pfn, (w + 1) % WORDS_PER_PAGE));
            }
        }
    }
}
