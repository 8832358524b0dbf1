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
