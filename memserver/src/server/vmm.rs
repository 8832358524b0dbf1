//! The VMM's rings: nested reporting (issue 14). The VMM sends the ranges
//! its VM's OS reported free ([`FromVmm::Report`], pages of the VM's RAM);
//! [`Nested`] checks them against the VM's zone and cuts them into blocks;
//! the server sends those blocks to the balloon as report batches of their
//! own and answers the VMM when a whole report is done.
//!
//! Pacing (the memserver's policy for nested reports): one nested batch in
//! flight at a time, of at most the device's report capacity, sent as soon
//! as the previous one completed. The guest OS already waited its own delay
//! before reporting, so no second delay is added; one batch at a time keeps
//! the device shared with the memserver's own batches, which go first when
//! both wait for the ring. Nothing is sent while the device takes no
//! reports: then each report is refused (`NoReporting`) and the VMM gives
//! the buffers back at once.
//!
//! The VMM is hostile like any client: a report that does not decode or
//! that [`Nested`] refuses is answered with [`ToVmm::Refused`] and changes
//! nothing; a ring index moved illegally is counted and the ring left alone
//! until the next notification. Nothing here touches the native zones.

use super::Server;
use crate::nested::{Nested, NestedCounters, NestedError, PageRange};
use crate::vm_balloon::{RELEASE_PAGES, VmBalloon, VmBalloonCounters};
use heapless::Vec;
use memserver_api::{
    self as api, BATCH, Block, FromVmm, SLOT_SIZE, ToBalloon, ToVmm, VM_REPORT_RANGES, VmRange,
    VmRefuse,
};
use pd_ring::{Consumer, Producer, RingError};

/// Deflate messages of a VM waiting at once. Linux has one chain in
/// flight (it waits for each), which the VMM sends as up to 8 messages
/// (256 frames, 32 ranges each); a bound keeps a hostile VMM from holding
/// the memserver's memory.
pub const MAX_DEFLATES: usize = 16;

/// Batch ids of nested batches carry this bit; the core numbers its own
/// from 0 up and would need 2^31 batches to reach it.
pub const NESTED_BATCH: u32 = 1 << 31;

/// The VMM's two rings and its VM's zone.
#[derive(Debug)]
pub struct VmmPort<'a> {
    /// Requests, written by the VMM.
    pub req: Consumer<'a>,
    /// Answers, written by the server.
    pub resp: Producer<'a>,
    /// The VM's RAM, in physical frames (a delegated zone: the memserver
    /// never allocates from it).
    pub zone: PageRange,
    /// The VM balloon's two bitmaps (`vm_balloon::bitmap_words` of the
    /// zone each); too small: the VM's balloon is not served.
    pub held_map: &'a mut [u64],
    pub passed_map: &'a mut [u64],
}

/// What the server keeps for the VMM.
#[derive(Debug)]
pub(super) struct VmmLink<'a> {
    /// The VMM's requests, and the server's answers (`VmmPort`'s rings;
    /// its zone is `nested`'s, its bitmaps `balloon`'s).
    req: Consumer<'a>,
    resp: Producer<'a>,
    nested: Nested,
    /// The nested batch the balloon holds: its id and blocks.
    in_flight: Option<(u32, Vec<Block, BATCH>)>,
    next_batch: u32,
    counters: VmmCounters,
    /// The VM's balloon (the outer host's target reaching the VM).
    balloon: Option<VmBalloon<'a>>,
    /// The outer balloon's last inflate fell short while the VM was asked
    /// for more: tell it when the VM's pages come.
    inflate_short: bool,
    /// The VM's deflates waiting for the outer balloon to release pages
    /// it still holds (the VMM holds their chains until `DeflateDone`).
    deflates: Vec<(u32, Vec<PageRange, VM_REPORT_RANGES>), MAX_DEFLATES>,
    /// The window a `Release` is out for.
    release_out: Option<PageRange>,
    /// Notices for the VMM waiting for ring room beyond the answers its
    /// reports in flight may need: the latest target, a stats request.
    target_out: Option<u32>,
    stats_out: bool,
}

/// What the VMM link counted (the memserver's nested figures, apart from
/// its own reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmmCounters {
    /// Of the reports themselves ([`Nested`]'s count).
    pub nested: NestedCounters,
    /// Nested batches sent to the balloon.
    pub batches_sent: u64,
    /// Messages that did not decode.
    pub malformed: u64,
    /// Illegal ring moves by the VMM.
    pub misbehaviour: u64,
    /// Reports refused because the device takes none.
    pub no_reporting: u64,
    /// The VM's balloon.
    pub balloon: VmBalloonCounters,
}

fn refusal(e: NestedError) -> VmRefuse {
    match e {
        NestedError::BadLength(_) => VmRefuse::BadLength,
        NestedError::Empty { .. } => VmRefuse::Empty,
        NestedError::OutsideZone { .. } => VmRefuse::OutsideRam,
        NestedError::Overlap { .. } => VmRefuse::Overlap,
        NestedError::TooFragmented { .. } => VmRefuse::TooFragmented,
        NestedError::Busy => VmRefuse::Busy,
        NestedError::DuplicateId(_) => VmRefuse::DuplicateId,
    }
}

impl<'a> Server<'a, '_> {
    /// Serve the VMM's rings too (a system with a VM).
    pub fn attach_vmm(&mut self, port: VmmPort<'a>) {
        let VmmPort {
            req,
            resp,
            zone,
            held_map,
            passed_map,
        } = port;
        let balloon = VmBalloon::new(zone, held_map, passed_map);
        self.vmm = Some(VmmLink {
            req,
            resp,
            nested: Nested::new(zone),
            in_flight: None,
            next_batch: 0,
            counters: VmmCounters::default(),
            balloon,
            inflate_short: false,
            deflates: Vec::new(),
            release_out: None,
            target_out: None,
            stats_out: false,
        });
        self.vmm_notified();
    }

    /// The VMM link's figures, when there is one.
    pub fn vmm_counters(&self) -> Option<VmmCounters> {
        self.vmm.as_ref().map(|l| VmmCounters {
            nested: l.nested.counters,
            balloon: l.balloon.as_ref().map(|b| b.counters).unwrap_or_default(),
            ..l.counters
        })
    }

    /// The VM's balloon, when the memserver keeps one.
    pub fn vm_balloon(&self) -> Option<&VmBalloon<'a>> {
        self.vmm.as_ref().and_then(|l| l.balloon.as_ref())
    }

    /// Pages of nested reports not finished yet.
    pub fn nested_in_flight_pages(&self) -> u64 {
        self.vmm.as_ref().map_or(0, |l| l.nested.in_flight_pages())
    }

    fn device_takes_reports(&self) -> bool {
        self.configured.is_some() && self.device_cap != Some(0)
    }

    /// The VMM notified: take its reports while there is room to answer.
    pub fn vmm_notified(&mut self) {
        let mut buf = [0u8; SLOT_SIZE];
        loop {
            let Some(l) = self.vmm.as_mut() else { return };
            // One answer per request: take one only with room for it.
            match l.resp.free_slots() {
                Ok(0) => {
                    l.resp.request_signal();
                    if matches!(l.resp.free_slots(), Ok(n) if n > 0) {
                        l.resp.cancel_signal();
                        continue;
                    }
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    l.counters.misbehaviour += 1;
                    break;
                }
            }
            match l.req.pop(&mut buf) {
                Ok(Some(n)) => {
                    let answer = self.vmm_request(&buf[..n]);
                    if let Some(a) = answer {
                        self.send_vmm(&a);
                    }
                }
                Ok(None) => {
                    l.req.request_signal();
                    match l.req.is_empty() {
                        Ok(false) => continue,
                        Ok(true) => break,
                        Err(_) => {
                            l.counters.misbehaviour += 1;
                            break;
                        }
                    }
                }
                Err(RingError::PeerMisbehaviour(_)) | Err(_) => {
                    l.counters.misbehaviour += 1;
                    break;
                }
            }
        }
        // The VMM found the request ring full and waits for room.
        if let Some(l) = self.vmm.as_mut()
            && l.req.needs_notify()
        {
            self.wake.vmm = true;
        }
        self.flush_vmm_notices();
        self.pump_nested();
    }

    /// One request: `None` when it was taken (a report is answered on
    /// completion; a balloon message only when refused).
    fn vmm_request(&mut self, bytes: &[u8]) -> Option<ToVmm> {
        let takes = self.device_takes_reports();
        let l = self.vmm.as_mut()?;
        let (id, ranges) = match api::decode_from_vmm(bytes) {
            Ok(FromVmm::Report { id, ranges }) => (id, ranges),
            Ok(FromVmm::Inflated { ranges }) => return self.vm_inflated(&ranges),
            Ok(FromVmm::Deflated { id, ranges }) => return self.vm_deflated(id, &ranges),
            Ok(FromVmm::Stats(s)) => {
                return match l.balloon.as_mut() {
                    Some(b) => {
                        b.take_stats(s);
                        None
                    }
                    None => Some(ToVmm::BalloonRefused {
                        id: None,
                        reason: VmRefuse::NoBalloon,
                    }),
                };
            }
            Err(e) => {
                l.counters.malformed += 1;
                return Some(ToVmm::refuse_malformed(bytes, e));
            }
        };
        if !takes {
            l.counters.no_reporting += 1;
            return Some(ToVmm::Refused {
                id: Some(id),
                reason: VmRefuse::NoReporting,
            });
        }
        let frames = Self::frames(l.nested.zone(), &ranges);
        match l.nested.submit(id, &frames) {
            Ok(()) => None,
            Err(e) => Some(ToVmm::Refused {
                id: Some(id),
                reason: refusal(e),
            }),
        }
    }

    /// Pages of the VM's RAM -> its frames; a sum past the address space
    /// lands outside the zone and is refused there.
    fn frames(zone: PageRange, ranges: &[VmRange]) -> Vec<PageRange, VM_REPORT_RANGES> {
        ranges
            .iter()
            .map(|r| PageRange {
                pfn: zone.pfn.saturating_add(r.page),
                pages: r.pages,
            })
            .collect()
    }

    /// The VM's OS inflated `ranges`: held, and handed out when the outer
    /// balloon asks. A page in a nested report in flight is not the
    /// guest's to give (it reported it free), so that is refused too.
    fn vm_inflated(&mut self, ranges: &[VmRange]) -> Option<ToVmm> {
        let l = self.vmm.as_mut()?;
        let frames = Self::frames(l.nested.zone(), ranges);
        let Some(b) = l.balloon.as_mut() else {
            return Some(ToVmm::BalloonRefused {
                id: None,
                reason: VmRefuse::NoBalloon,
            });
        };
        if frames.iter().any(|r| l.nested.in_flight_overlaps(r)) {
            b.counters.refused += 1;
            return Some(ToVmm::BalloonRefused {
                id: None,
                reason: VmRefuse::Overlap,
            });
        }
        if let Err(reason) = b.inflated(&frames) {
            return Some(ToVmm::BalloonRefused { id: None, reason });
        }
        if l.inflate_short && b.unpassed_pages() > 0 {
            // The outer balloon stopped asking when it fell short: the
            // VM's pages are here now.
            l.inflate_short = false;
            let _ = self.send_balloon(&ToBalloon::MoreToInflate);
        }
        None
    }

    /// The VM's OS deflates `ranges` (deflate `id`). Pages the outer
    /// balloon still holds are owed: the deflate waits until they are
    /// released ([`ToVmm::DeflateDone`]); otherwise it is done at once.
    fn vm_deflated(&mut self, id: u32, ranges: &[VmRange]) -> Option<ToVmm> {
        let l = self.vmm.as_mut()?;
        let frames = Self::frames(l.nested.zone(), ranges);
        let refuse = |reason| {
            Some(ToVmm::BalloonRefused {
                id: Some(id),
                reason,
            })
        };
        let Some(b) = l.balloon.as_mut() else {
            return refuse(VmRefuse::NoBalloon);
        };
        if l.deflates.iter().any(|d| d.0 == id) {
            b.counters.refused += 1;
            return refuse(VmRefuse::DuplicateId);
        }
        if l.deflates.is_full() {
            b.counters.refused += 1;
            return refuse(VmRefuse::Busy);
        }
        if let Err(reason) = b.deflated(&frames) {
            return refuse(reason);
        }
        if frames.iter().all(|r| b.first_passed(r).is_none()) {
            return Some(ToVmm::DeflateDone { id });
        }
        // Room was checked above.
        let _ = l.deflates.push((id, frames));
        self.vm_pump_release();
        None
    }

    /// Ask the outer balloon to release the window around the first owed
    /// page of a waiting deflate, one window at a time.
    fn vm_pump_release(&mut self) {
        let Some(l) = self.vmm.as_mut() else { return };
        let Some(b) = l.balloon.as_ref() else { return };
        if l.release_out.is_some() {
            return;
        }
        let Some(pfn) = l
            .deflates
            .iter()
            .flat_map(|d| d.1.iter())
            .find_map(|r| b.first_passed(r))
        else {
            return;
        };
        let zone = b.zone();
        let first = (pfn & !(RELEASE_PAGES - 1)).max(zone.pfn);
        let end = ((pfn | (RELEASE_PAGES - 1)) + 1).min(zone.pfn + zone.pages);
        let window = PageRange {
            pfn: first,
            pages: end - first,
        };
        if self
            .send_balloon(&ToBalloon::Release {
                first_pfn: first,
                end_pfn: end,
            })
            .is_ok()
            && let Some(l) = self.vmm.as_mut()
        {
            l.release_out = Some(window);
        }
    }

    /// Deflates none of whose pages the outer balloon holds are done.
    fn vm_finish_deflates(&mut self) {
        let Some(l) = self.vmm.as_mut() else { return };
        let Some(b) = l.balloon.as_ref() else { return };
        let mut done: Vec<u32, MAX_DEFLATES> = Vec::new();
        l.deflates.retain(|(id, frames)| {
            let free = frames.iter().all(|r| b.first_passed(r).is_none());
            if free {
                let _ = done.push(*id);
            }
            !free
        });
        for id in done {
            self.send_vmm(&ToVmm::DeflateDone { id });
        }
    }

    /// The outer balloon wants `pages` more than the native zones gave:
    /// hand it held pages of the VM (appended to `out`, at most `room`
    /// blocks), and when that falls short too, raise the VM's target.
    /// Returns the pages handed.
    pub(super) fn vm_inflate(
        &mut self,
        pages: u64,
        room: usize,
        out: &mut Vec<Block, BATCH>,
    ) -> u64 {
        let Some(l) = self.vmm.as_mut() else { return 0 };
        let Some(b) = l.balloon.as_mut() else {
            return 0;
        };
        let taken = b.take(pages, room.saturating_sub(out.len()), out);
        let mut target = None;
        if taken < pages && room > out.len() {
            target = b.want_more(pages - taken);
            l.inflate_short = true;
        }
        if target.is_some() {
            l.target_out = target;
        }
        self.flush_vmm_notices();
        taken
    }

    /// Whether the outer balloon may return `b` as a block of the VM.
    pub(super) fn vm_can_return(&self, b: &Block) -> bool {
        self.vm_balloon().is_some_and(|v| v.can_return(b))
    }

    /// The outer balloon returned `blocks` of the VM (each checked with
    /// [`Server::vm_can_return`]), as the answer to the release out when
    /// `released`, else for the host's target: the VM's target follows,
    /// and owed pages are asked for again while some remain. Returns the
    /// pages.
    ///
    /// Only a `Released` answers the release: a host's deflate that comes
    /// meanwhile, even one of no page of the VM, says nothing of what the
    /// balloon holds in the window.
    pub(super) fn vm_returned(&mut self, blocks: &[Block], released: bool) -> u64 {
        let Some(l) = self.vmm.as_mut() else { return 0 };
        let Some(b) = l.balloon.as_mut() else {
            return 0;
        };
        let mut pages = 0;
        for blk in blocks {
            if b.can_return(blk) {
                b.returned(blk);
                pages += blk.pages();
            }
        }
        match (released, l.release_out) {
            (true, Some(w)) => {
                l.release_out = None;
                if pages == 0 {
                    // The balloon holds nothing there (it answers a
                    // release only when no inflate is under way, so
                    // nothing of the window is on its way to the device):
                    // what the server thought passed is not.
                    b.forget_passed(&w);
                }
            }
            (false, _) if pages > 0 => {
                // A deflate for the host's target: the VM keeps in its
                // balloon only what the outer one still holds.
                if let Some(t) = b.settle() {
                    l.target_out = Some(t);
                }
            }
            // Nothing of the VM's, or a `Released` with no release out
            // (its pages, checked, are back; nothing else follows).
            _ => {}
        }
        self.vm_finish_deflates();
        self.flush_vmm_notices();
        self.vm_pump_release();
        pages
    }

    /// The outer host asks for statistics: refresh the VM's (they come
    /// with its OS's next stats buffer, for the next request).
    pub(super) fn vm_stats_request(&mut self) {
        if let Some(l) = self.vmm.as_mut()
            && l.balloon.is_some()
        {
            l.stats_out = true;
            self.flush_vmm_notices();
        }
    }

    /// Send the waiting notices while the answer ring keeps room for an
    /// answer to every report and deflate in flight and one more; later
    /// ones wait for
    /// the VMM's next notification.
    fn flush_vmm_notices(&mut self) {
        loop {
            let Some(l) = self.vmm.as_mut() else { return };
            let reserve = l.nested.in_flight() + l.deflates.len() + 1;
            let room = l.resp.free_slots().map_or(0, |n| n as usize);
            let msg = if let Some(pages) = l.target_out {
                ToVmm::BalloonTarget { pages }
            } else if l.stats_out {
                ToVmm::StatsRequest
            } else {
                return;
            };
            if room <= reserve {
                return;
            }
            if let ToVmm::BalloonTarget { .. } = msg {
                l.target_out = None;
            } else {
                l.stats_out = false;
            }
            self.send_vmm(&msg);
        }
    }

    fn send_vmm(&mut self, msg: &ToVmm) {
        let Some(l) = self.vmm.as_mut() else { return };
        let mut buf = [0u8; SLOT_SIZE];
        let Ok(bytes) = api::encode(msg, &mut buf) else {
            return;
        };
        // Room was checked before the request was taken; completions come
        // for at most `MAX_REPORTS` reports, which were taken with room.
        match l.resp.push(bytes) {
            Ok(()) => {
                if l.resp.needs_notify() {
                    self.wake.vmm = true;
                }
            }
            Err(_) => l.counters.misbehaviour += 1,
        }
    }

    /// Send the next nested batch when none is in flight, the device takes
    /// reports, and the balloon ring has room beyond the memserver's own
    /// waiting batches and one answer.
    pub(super) fn pump_nested(&mut self) {
        let cap = usize::from(self.device_cap.unwrap_or(0)).min(BATCH);
        let room = self.balloon.to.free_slots().map_or(0, |n| n as usize);
        let needed = self.pending.len() + 2;
        let Some(l) = self.vmm.as_mut() else { return };
        if l.in_flight.is_some() || cap == 0 || l.nested.pending_blocks() == 0 {
            return;
        }
        if room < needed {
            self.balloon.to.request_signal();
            return;
        }
        let mut blocks: Vec<Block, BATCH> = Vec::new();
        l.nested.take(cap, &mut blocks);
        let id = NESTED_BATCH | (l.next_batch & !NESTED_BATCH);
        l.next_batch = l.next_batch.wrapping_add(1);
        let msg = ToBalloon::Report {
            batch: id,
            blocks: blocks.clone(),
        };
        match self.send_balloon(&msg) {
            Ok(()) => {
                self.counters.batches_sent += 1;
                if let Some(l) = self.vmm.as_mut() {
                    l.counters.batches_sent += 1;
                    l.in_flight = Some((id, blocks));
                }
            }
            Err(_) => {
                // Room was checked: only a broken ring gets here. The
                // blocks go out again later.
                if let Some(l) = self.vmm.as_mut() {
                    for b in blocks {
                        l.nested.untake(b);
                    }
                }
            }
        }
    }

    /// A `ReportDone` for `batch`: `true` when it was the nested batch in
    /// flight (and is now finished), `false` when it is not nested.
    pub(super) fn nested_report_done(&mut self, batch: u32, ok: bool) -> bool {
        let Some(l) = self.vmm.as_mut() else {
            return false;
        };
        match &l.in_flight {
            Some((id, _)) if *id == batch => {}
            _ => return false,
        }
        let Some((_, blocks)) = l.in_flight.take() else {
            return false;
        };
        let mut done: Vec<(u32, bool), BATCH> = Vec::new();
        for b in blocks {
            if let Some(d) = l.nested.block_done(b, ok) {
                let _ = done.push(d);
            }
        }
        if ok {
            self.counters.completions_ok += 1;
        } else {
            self.counters.completions_failed += 1;
        }
        for (id, ok) in done {
            self.send_vmm(&ToVmm::ReportDone { id, ok });
        }
        self.pump_nested();
        true
    }

    /// The device was reset: the nested batch it held failed. Whether
    /// there was one.
    pub(super) fn nested_device_reset(&mut self) -> bool {
        match self.vmm.as_ref().and_then(|l| l.in_flight.as_ref()) {
            Some(&(id, _)) => self.nested_report_done(id, false),
            None => false,
        }
    }
}

impl Server<'_, '_> {
    /// The device stopped taking reports: every nested report not sent
    /// yet fails now (the VMM gives its buffers back), rather than waiting
    /// for a device that may never come back.
    pub(super) fn nested_fail_unsent(&mut self) {
        let Some(l) = self.vmm.as_mut() else { return };
        let mut done: Vec<(u32, bool), { crate::nested::MAX_REPORTS }> = Vec::new();
        loop {
            let mut blocks: Vec<Block, BATCH> = Vec::new();
            if l.nested.take(BATCH, &mut blocks) == 0 {
                break;
            }
            for b in blocks {
                if let Some(d) = l.nested.block_done(b, false) {
                    let _ = done.push(d);
                }
            }
        }
        for (id, ok) in done {
            self.send_vmm(&ToVmm::ReportDone { id, ok });
        }
    }
}
