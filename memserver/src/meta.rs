//! Per-page metadata, kept outside the managed memory.
//!
//! Each managed page has one 9-byte slot: `next` and `prev` free-list links
//! (u32 global page indices, `NIL` for none) and a state byte. Only the
//! first frame (head) of a block carries its state; the other frames are
//! `TAIL`. Transitions touch O(1) slots (split sets one new head, merge turns
//! one head into a tail), never the whole block.
//!
//! A TAIL frame's links are unused, so a free block of order >= 1 keeps in
//! its second frame's `next` bytes the worker's epoch at which it was freed
//! (`adaptive.rs`: a zone not quiet reports only blocks that have stayed
//! free long enough). Order-0 blocks carry no epoch.

use crate::ZoneSpec;

/// Metadata bytes per managed page (Linux's `struct page` costs 64).
pub const BYTES_PER_PAGE: usize = 9;

/// Bytes of metadata buffer [`crate::MemCore::new`] needs for these zones.
pub const fn metadata_bytes(zones: &[ZoneSpec]) -> usize {
    let mut total = 0usize;
    let mut i = 0;
    while i < zones.len() {
        total += zones[i].pages as usize;
        i += 1;
    }
    total * BYTES_PER_PAGE
}

pub(crate) type Slot = [u8; BYTES_PER_PAGE];

/// No link.
pub(crate) const NIL: u32 = u32::MAX;

// State byte: bits 0..4 order, bits 4..7 kind, bit 7 Reported.
pub(crate) const KIND_TAIL: u8 = 0;
pub(crate) const KIND_FREE: u8 = 1;
pub(crate) const KIND_ALLOC: u8 = 2;
pub(crate) const KIND_ISOLATED: u8 = 3;
pub(crate) const KIND_BALLOONED: u8 = 4;
pub(crate) const REPORTED: u8 = 0x80;

#[inline(always)]
pub(crate) const fn state(kind: u8, order: u8) -> u8 {
    (kind << 4) | order
}

#[inline(always)]
pub(crate) const fn kind_of(st: u8) -> u8 {
    (st >> 4) & 0x7
}

#[inline(always)]
pub(crate) const fn order_of(st: u8) -> u8 {
    st & 0xf
}

#[inline(always)]
pub(crate) fn get_next(s: &Slot) -> u32 {
    u32::from_ne_bytes([s[0], s[1], s[2], s[3]])
}

#[inline(always)]
pub(crate) fn get_prev(s: &Slot) -> u32 {
    u32::from_ne_bytes([s[4], s[5], s[6], s[7]])
}

#[inline(always)]
pub(crate) fn set_next(s: &mut Slot, v: u32) {
    s[0..4].copy_from_slice(&v.to_ne_bytes());
}

#[inline(always)]
pub(crate) fn set_prev(s: &mut Slot, v: u32) {
    s[4..8].copy_from_slice(&v.to_ne_bytes());
}

#[inline(always)]
pub(crate) fn get_epoch(s: &Slot) -> u32 {
    get_next(s)
}

#[inline(always)]
pub(crate) fn set_epoch(s: &mut Slot, v: u32) {
    set_next(s, v);
}
