//! A block packed in 8 bytes, for the lists of blocks the core keeps
//! (report batches waiting, ballooned blocks).

use crate::defs::Block;

/// A block in 8 bytes (`pfn << 8 | order`), so the lists that live in the
/// PD's stack frame stay small. Every block here came through
/// `memserver_api::decode`, so `pfn <= MAX_PFN < 2^40` and the order fits.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub(super) struct Packed(u64);

impl Packed {
    pub(super) fn new(b: Block) -> Self {
        Self(b.pfn << 8 | u64::from(b.order))
    }

    pub(super) fn get(self) -> Block {
        Block {
            pfn: self.0 >> 8,
            order: self.0 as u8,
        }
    }

    pub(super) fn pages(self) -> u64 {
        self.get().pages()
    }
}

/// The ballooned blocks, in storage the PD gives (a static sized from its
/// description: a VM's pages come in short runs, so the list can be long,
/// too long for the stack the handler lives on). Each word is a
/// [`Packed`] block; order is not kept (`swap_remove`).
#[derive(Debug)]
pub(super) struct BlockList<'a> {
    slots: &'a mut [u64],
    len: usize,
}

impl<'a> BlockList<'a> {
    pub(super) fn new(slots: &'a mut [u64]) -> Self {
        Self { slots, len: 0 }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn get(&self, i: usize) -> Packed {
        Packed(self.slots[..self.len][i])
    }

    pub(super) fn set(&mut self, i: usize, p: Packed) {
        self.slots[..self.len][i] = p.0;
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = Packed> + '_ {
        self.slots[..self.len].iter().map(|&w| Packed(w))
    }

    /// `Err` (nothing changed) when full.
    pub(super) fn push(&mut self, p: Packed) -> Result<(), Packed> {
        match self.slots.get_mut(self.len) {
            Some(w) => {
                *w = p.0;
                self.len += 1;
                Ok(())
            }
            None => Err(p),
        }
    }

    /// Remove entry `i`, the last one taking its place.
    pub(super) fn swap_remove(&mut self, i: usize) -> Packed {
        let p = self.get(i);
        self.len -= 1;
        self.slots[i] = self.slots[self.len];
        p
    }
}
