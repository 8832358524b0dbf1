//! Inflate and deflate: the balloon target turned into `Inflate` requests
//! and blocks posted one at a time on the inflate queue, deflates (for the
//! target or on OOM) told to the host first and then given back to the
//! memserver, and the bounded list of ballooned blocks.

use super::BalloonPd;
use super::packed::Packed;
use crate::defs::{Block, BlockExt, Error, MAX_ORDER};
use crate::driver::{BalloonAction, BalloonDone, BalloonOp, DeflateReason};
use heapless::Vec;
use memserver_api::BATCH;
use virtio_drivers::{Hal, transport::Transport};

/// The least room for ballooned blocks a PD should give its list (512
/// blocks hold at least 2 MiB and at most 2 GiB); the PD sizes its own
/// from the RAM it may balloon (balloon/build.rs).
pub const MAX_BALLOONED: usize = 512;

/// Release windows waiting (the memserver sends one at a time).
pub const MAX_RELEASES: usize = 4;

/// Splits one deflate may need (one per order) plus one.
const SPLIT_HEADROOM: usize = MAX_ORDER as usize + 1;

/// A deflate in progress: blocks leave the device first (unless they were
/// never ballooned there), then go back to the memserver.
#[derive(Debug)]
pub(super) struct Deflation {
    pub(super) req: u32,
    pub(super) blocks: Vec<Block, BATCH>,
    /// `blocks[..posted]` are done on the device side.
    pub(super) posted: usize,
    /// `blocks[posted]` is on the deflate queue.
    pub(super) in_device: bool,
    /// The `Deflate` message is waiting for ring room.
    pub(super) queued: bool,
    /// The `Deflate` message is queued or sent.
    pub(super) sent: bool,
    /// Why the host is told (the balloon target, or the guest's OOM).
    pub(super) reason: DeflateReason,
    /// It answers the memserver's `Release` of a window: said as
    /// `Released`, not as the host's `Deflate`.
    pub(super) release: bool,
}

/// A block the inflate/deflate queues can carry: valid, with le32 PFNs.
fn postable(b: &Block) -> bool {
    b.is_valid() && b.pfn + b.pages() <= 1 << 32
}

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    /// Blocks in the balloon.
    pub fn ballooned(&self) -> impl Iterator<Item = Block> + '_ {
        self.ballooned.iter().map(Packed::get)
    }

    /// Pages in the balloon by our own bookkeeping.
    pub fn ballooned_pages(&self) -> u64 {
        self.ballooned.iter().map(Packed::pages).sum()
    }

    pub(super) fn balloon_done(&mut self, done: BalloonDone) {
        self.device_completions += 1;
        match (done.op, done.result) {
            (BalloonOp::Inflate, Ok(())) => {
                if let Some(b) = self.inflating.take() {
                    self.counters.pages_inflated += b.pages();
                    // Room is kept by `rebalance` (SPLIT_HEADROOM + BATCH).
                    if self.ballooned.push(Packed::new(b)).is_err() {
                        self.error(format_args!("ballooned block {:#x} untracked", b.pfn));
                    }
                    if self.to_inflate.is_empty() {
                        self.info(format_args!("balloon at {} pages", self.drv.actual()));
                    }
                }
            }
            (BalloonOp::Inflate, Err(e)) => {
                // Not ballooned: the memserver takes the pages back.
                if let Some(b) = self.inflating.take() {
                    self.warn(format_args!("inflate of {:#x} failed: {e}", b.pfn));
                    let _ = self.giveback.push(b);
                }
            }
            (BalloonOp::Deflate, result) => {
                if let Some(d) = self.deflation.as_mut() {
                    d.in_device = false;
                    // A failed deflate (device reset) is posted again after
                    // the restart: `actual` still counts the pages.
                    if result.is_ok() {
                        d.posted += 1;
                    }
                }
            }
        }
    }

    pub(super) fn inflated(&mut self, req: u32, blocks: &[Block], last: bool) {
        let Some((asked_req, asked)) = self.ask else {
            return self.unexpected(format_args!("Inflated for unknown request {req}"));
        };
        if asked_req != req {
            return self.unexpected(format_args!("Inflated for unknown request {req}"));
        }
        self.ask = None;
        let mut got = 0u64;
        for (i, b) in blocks.iter().enumerate() {
            // A frame we already hold, or twice in one message, is a
            // memserver bug or a hostile one: taking it would count its
            // pages twice in `actual`, and giving it back would free the
            // copy we still hold. Ignore it (issue 8, found by fuzzing).
            if !self.in_zones(b) {
                // Not guest RAM: never posted, never tracked, never given
                // back (the memserver cannot own it).
                self.counters.foreign_blocks += 1;
                self.warn(format_args!(
                    "Inflated block {:#x} order {} is outside the balloon's zones",
                    b.pfn, b.order
                ));
                continue;
            }
            if self.holds(b) || blocks[..i].iter().any(|o| overlaps(o, b)) {
                self.unexpected(format_args!(
                    "Inflated block {:#x} order {} overlaps one the balloon holds",
                    b.pfn, b.order
                ));
                continue;
            }
            got += b.pages();
            // `to_inflate` is empty when we ask and a message holds at most
            // BATCH blocks, so both pushes have room.
            let _ = if postable(b) {
                self.to_inflate.push_back(*b)
            } else {
                self.giveback.push(*b)
            };
        }
        if last && got < u64::from(asked) {
            // The memserver has no more above its watermark.
            self.inflate_stalled = true;
        }
    }

    /// Whether `b` overlaps a block the balloon holds in any state.
    fn holds(&self, b: &Block) -> bool {
        self.ballooned.iter().any(|p| overlaps(&p.get(), b))
            || self.to_inflate.iter().any(|o| overlaps(o, b))
            || self.inflating.as_ref().is_some_and(|o| overlaps(o, b))
            || self.giveback.iter().any(|o| overlaps(o, b))
            || self
                .deflation
                .as_ref()
                .is_some_and(|d| d.blocks.iter().any(|o| overlaps(o, b)))
    }

    pub(super) fn pump_inflate(&mut self) {
        if self.inflating.is_some() {
            return;
        }
        let Some(&b) = self.to_inflate.front() else {
            return;
        };
        let id = self.req_id();
        match self.drv.inflate_block(id, b) {
            Ok(()) => {
                self.to_inflate.pop_front();
                self.inflating = Some(b);
            }
            Err(Error::QueueFull | Error::Broken) => {}
            Err(e) => {
                self.to_inflate.pop_front();
                self.warn(format_args!("inflate of {:#x} not posted: {e}", b.pfn));
                let _ = self.giveback.push(b);
            }
        }
    }

    pub(super) fn pump_deflate(&mut self) {
        let Some(d) = self.deflation.as_mut() else {
            return;
        };
        if d.in_device || d.queued || d.sent {
            return;
        }
        if d.posted < d.blocks.len() {
            let b = d.blocks[d.posted];
            let id = self.next_req;
            self.next_req = self.next_req.wrapping_add(1).max(1);
            match self.drv.deflate_block(id, b, d.reason) {
                Ok(()) => d.in_device = true,
                Err(Error::QueueFull | Error::Broken) => {}
                Err(e) => {
                    // The device cannot be told (e.g. `actual` disagrees);
                    // the memserver still gets the block back.
                    d.posted += 1;
                    let (pfn, n) = (b.pfn, d.blocks.len());
                    self.warn(format_args!("deflate of {pfn:#x} not posted ({n}): {e}"));
                }
            }
            return;
        }
        d.queued = true;
        self.counters.deflate_requests += 1;
    }

    /// Starts the next inflate or deflate when nothing is under way.
    pub(super) fn rebalance(&mut self) {
        let busy = self.ask.is_some()
            || !self.to_inflate.is_empty()
            || self.inflating.is_some()
            || self.deflation.is_some();
        if busy || self.drv.is_broken() {
            return;
        }
        if !self.giveback.is_empty() {
            let blocks = core::mem::take(&mut self.giveback);
            self.counters.blocks_returned += blocks.len() as u64;
            // Never ballooned on the device: straight to the memserver.
            let posted = blocks.len();
            self.begin_deflation(blocks, posted, DeflateReason::Target);
            return;
        }
        if let Some((first, end)) = self.releases.pop_front() {
            // A VM took pages of this window back from its own balloon:
            // every block here leaves the device, then the memserver gets
            // them (an empty answer says none was here).
            self.counters.releases += 1;
            let pages = end.saturating_sub(first);
            if !self.start_deflate(pages, DeflateReason::Target, Some((first, end))) {
                self.begin_deflation(Vec::new(), 0, DeflateReason::Target);
            }
            // The message is built when it is sent (`flush`).
            if let Some(d) = self.deflation.as_mut() {
                d.release = true;
            }
            return;
        }
        if self.oom_pages > 0 && !self.ballooned.is_empty() {
            // Deflate on OOM (VIRTIO 1.2 5.5.6.1): the guest's need wins
            // over the target. Don't re-inflate until the host sets a new
            // target, or the two would fight (Linux's fill also waits for a
            // config change). Only the short zone's blocks help it.
            let pages = core::mem::take(&mut self.oom_pages);
            self.inflate_stalled = true;
            let (first, end) = self.oom_range;
            self.info(format_args!(
                "deflating {pages} pages on OOM from frames {first:#x}..{end:#x}"
            ));
            self.start_deflate(u64::from(pages), DeflateReason::Oom, Some((first, end)));
            return;
        }
        match self.drv.balloon_action() {
            Ok(BalloonAction::Inflate(pages)) if !self.inflate_stalled => {
                if self.ballooned.len() + BATCH + SPLIT_HEADROOM > self.ballooned.capacity() {
                    self.counters.ballooned_full += 1;
                    if !self.full_logged {
                        self.full_logged = true;
                        let cap = self.ballooned.capacity();
                        self.error(format_args!(
                            "balloon list full ({cap} blocks): not growing"
                        ));
                    }
                    return;
                }
                let req = self.req_id();
                self.ask = Some((req, pages));
                self.ask_queued = true;
                self.counters.inflate_requests += 1;
            }
            Ok(BalloonAction::Deflate(pages)) => {
                self.start_deflate(u64::from(pages), DeflateReason::Target, None);
            }
            _ => {}
        }
    }

    /// Picks ballooned blocks worth `pages` (at most BATCH blocks),
    /// splitting a block into buddy halves when all are larger than what is
    /// left.
    /// With `within` (`first..end` PFN), only blocks inside it. Whether a
    /// deflate started (some block was chosen).
    fn start_deflate(
        &mut self,
        pages: u64,
        reason: DeflateReason,
        within: Option<(u64, u64)>,
    ) -> bool {
        let inside = |p: Packed| {
            within.is_none_or(|(first, end)| {
                let b = p.get();
                b.pfn >= first && b.pfn.saturating_add(b.pages()) <= end
            })
        };
        let mut chosen: Vec<Block, BATCH> = Vec::new();
        let mut left = pages;
        while left > 0 && !chosen.is_full() {
            let fits = (0..self.ballooned.len())
                .filter(|&i| inside(self.ballooned.get(i)) && self.ballooned.get(i).pages() <= left)
                .max_by_key(|&i| self.ballooned.get(i).pages());
            if let Some(i) = fits {
                let b = self.ballooned.swap_remove(i).get();
                left -= b.pages();
                let _ = chosen.push(b);
                continue;
            }
            let Some(i) = (0..self.ballooned.len())
                .filter(|&i| inside(self.ballooned.get(i)))
                .min_by_key(|&i| self.ballooned.get(i).pages())
            else {
                break;
            };
            // Every block is larger than `left` (so of order >= 1).
            let b = self.ballooned.get(i).get();
            let half = Block {
                pfn: b.pfn,
                order: b.order - 1,
            };
            let upper = Block {
                pfn: b.pfn + half.pages(),
                order: half.order,
            };
            if self.ballooned.push(Packed::new(upper)).is_err() {
                // No room to split: give the whole block back.
                let _ = chosen.push(self.ballooned.swap_remove(i).get());
                break;
            }
            self.ballooned.set(i, Packed::new(half));
        }
        if chosen.is_empty() {
            return false;
        }
        self.begin_deflation(chosen, 0, reason);
        true
    }

    /// Deflate `blocks` (the first `posted` of them need not leave the
    /// device), then give them to the memserver.
    fn begin_deflation(&mut self, blocks: Vec<Block, BATCH>, posted: usize, reason: DeflateReason) {
        let req = self.req_id();
        self.deflation = Some(Deflation {
            req,
            blocks,
            posted,
            in_device: false,
            queued: false,
            sent: false,
            reason,
            release: false,
        });
        self.pump_deflate();
    }
}

/// Whether two blocks share a frame.
fn overlaps(a: &Block, b: &Block) -> bool {
    a.pfn < b.pfn.saturating_add(b.pages()) && b.pfn < a.pfn.saturating_add(a.pages())
}
