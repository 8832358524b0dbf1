//! Which pages the guest owns: one byte per page of its RAM, no heap. The
//! byte at a block's first page says its order and set; the bytes of its
//! other pages say only the set. Zero means "not ours".

use memserver_api::{Block, MAX_ORDER};

/// What the guest does with a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// Kept the whole run and verified at the end.
    Live = 1,
    /// The pattern's memory, first group.
    A = 2,
    /// The pattern's memory, second group (fragmented frees A first).
    B = 3,
}

const HEAD: u8 = 1 << 4;
/// A free of the block is in flight.
const FREEING: u8 = 1 << 5;
const ORDER_MASK: u8 = 0x0f;
const SET_SHIFT: u8 = 6;

fn set_of(byte: u8) -> Option<Set> {
    match byte >> SET_SHIFT {
        1 => Some(Set::Live),
        2 => Some(Set::A),
        3 => Some(Set::B),
        _ => None,
    }
}

/// A block as the map holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owned {
    /// Page index in the RAM window.
    pub index: usize,
    pub order: u8,
    pub set: Set,
    pub freeing: bool,
}

/// The ownership map over `pages` pages.
#[derive(Debug)]
pub struct OwnedPages<'s> {
    map: &'s mut [u8],
    pages: usize,
}

impl<'s> OwnedPages<'s> {
    /// A map over the first `pages` bytes of `storage` (cleared); fewer if
    /// `storage` is shorter (see [`OwnedPages::pages`]).
    pub fn new(storage: &'s mut [u8], pages: usize) -> Self {
        let pages = pages.min(storage.len());
        storage[..pages].fill(0);
        OwnedPages {
            map: storage,
            pages,
        }
    }

    /// Pages covered.
    pub fn pages(&self) -> usize {
        self.pages
    }

    fn range(&self, index: usize, order: u8) -> Option<core::ops::Range<usize>> {
        if order > MAX_ORDER {
            return None;
        }
        // Alignment is not checked here: blocks are aligned in absolute
        // frame numbers (the memserver's buddies), and the RAM base need not
        // be aligned to a block (Microkit places regions at any 2 MiB
        // boundary). The caller checks the block's pfn.
        let end = index.checked_add(1usize << order)?;
        (end <= self.pages).then_some(index..end)
    }

    /// Record a block at page `index`; `false` (nothing recorded) when it
    /// is out of range or overlaps a page already owned.
    pub fn insert(&mut self, index: usize, order: u8, set: Set) -> bool {
        let Some(r) = self.range(index, order) else {
            return false;
        };
        if self.map[r.clone()].iter().any(|b| *b != 0) {
            return false;
        }
        let s = (set as u8) << SET_SHIFT;
        self.map[r.clone()].fill(s);
        self.map[r.start] = s | HEAD | order;
        true
    }

    /// The block whose first page is `index`.
    pub fn get(&self, index: usize) -> Option<Owned> {
        let byte = *self.map.get(index).filter(|_| index < self.pages)?;
        if byte & HEAD == 0 {
            return None;
        }
        Some(Owned {
            index,
            order: byte & ORDER_MASK,
            set: set_of(byte)?,
            freeing: byte & FREEING != 0,
        })
    }

    /// Mark the block at `index` as being freed (or not).
    pub fn set_freeing(&mut self, index: usize, freeing: bool) {
        if let Some(b) = self.map.get_mut(index).filter(|b| **b & HEAD != 0) {
            if freeing {
                *b |= FREEING
            } else {
                *b &= !FREEING
            }
        }
    }

    /// Forget the block at `index` (its pages are no longer ours).
    pub fn remove(&mut self, index: usize) {
        if let Some(o) = self.get(index)
            && let Some(r) = self.range(index, o.order)
        {
            self.map[r].fill(0);
        }
    }

    /// The next block head at or after `from`, with the index to resume at.
    pub fn next_from(&self, from: usize) -> Option<Owned> {
        let mut i = from;
        while i < self.pages {
            if let Some(o) = self.get(i) {
                return Some(o);
            }
            i += 1;
        }
        None
    }

    /// The [`Block`] of an owned entry, given the window's first frame.
    pub fn block(base_pfn: u64, o: &Owned) -> Block {
        Block {
            pfn: base_pfn + o.index as u64,
            order: o.order,
        }
    }

    /// Pages owned in `set`.
    pub fn pages_in(&self, set: Set) -> u64 {
        self.map[..self.pages]
            .iter()
            .filter(|b| **b != 0 && set_of(**b) == Some(set))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn insert_refuses_overlap() {
        let mut storage = vec![0xffu8; 64];
        let mut m = OwnedPages::new(&mut storage, 32);
        assert_eq!(m.pages(), 32);
        assert!(m.insert(8, 3, Set::A));
        assert!(!m.insert(12, 2, Set::B), "overlaps the order-3 block");
        assert!(!m.insert(32, 0, Set::B), "out of range");
        assert!(!m.insert(0, 11, Set::B), "order above MAX_ORDER");
        assert!(m.insert(16, 4, Set::Live));
        assert_eq!(m.pages_in(Set::A), 8);
        assert_eq!(m.pages_in(Set::Live), 16);
        assert_eq!(
            m.next_from(0).map(|o| (o.index, o.order, o.set)),
            Some((8, 3, Set::A))
        );
        assert_eq!(m.next_from(9).map(|o| o.index), Some(16));
        m.set_freeing(8, true);
        assert!(m.get(8).unwrap().freeing);
        assert_eq!(m.get(9), None);
        m.remove(8);
        assert_eq!(m.pages_in(Set::A), 0);
        assert!(m.insert(12, 2, Set::B));
        assert_eq!(
            OwnedPages::block(0x100, &m.get(12).unwrap()),
            Block {
                pfn: 0x10c,
                order: 2
            }
        );
    }
}
