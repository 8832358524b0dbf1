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
use heapless::Vec;
use memserver_api::{
    self as api, BATCH, Block, FromVmm, SLOT_SIZE, ToBalloon, ToVmm, VM_REPORT_RANGES, VmRefuse,
};
use pd_ring::{Consumer, Producer, RingError};

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
}

/// What the server keeps for the VMM.
#[derive(Debug)]
pub(super) struct VmmLink<'a> {
    port: VmmPort<'a>,
    nested: Nested,
    /// The nested batch the balloon holds: its id and blocks.
    in_flight: Option<(u32, Vec<Block, BATCH>)>,
    next_batch: u32,
    counters: VmmCounters,
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
        let zone = port.zone;
        self.vmm = Some(VmmLink {
            port,
            nested: Nested::new(zone),
            in_flight: None,
            next_batch: 0,
            counters: VmmCounters::default(),
        });
        self.vmm_notified();
    }

    /// The VMM link's figures, when there is one.
    pub fn vmm_counters(&self) -> Option<VmmCounters> {
        self.vmm.as_ref().map(|l| VmmCounters {
            nested: l.nested.counters,
            ..l.counters
        })
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
            match l.port.resp.free_slots() {
                Ok(0) => {
                    l.port.resp.request_signal();
                    if matches!(l.port.resp.free_slots(), Ok(n) if n > 0) {
                        l.port.resp.cancel_signal();
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
            match l.port.req.pop(&mut buf) {
                Ok(Some(n)) => {
                    let answer = self.vmm_request(&buf[..n]);
                    if let Some(a) = answer {
                        self.send_vmm(&a);
                    }
                }
                Ok(None) => {
                    l.port.req.request_signal();
                    match l.port.req.is_empty() {
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
        self.pump_nested();
    }

    /// One request: `None` when it was taken (answered on completion).
    fn vmm_request(&mut self, bytes: &[u8]) -> Option<ToVmm> {
        let takes = self.device_takes_reports();
        let l = self.vmm.as_mut()?;
        let (id, ranges) = match api::decode_from_vmm(bytes) {
            Ok(FromVmm::Report { id, ranges }) => (id, ranges),
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
        // Pages of the VM's RAM -> its frames; a sum past the address
        // space lands outside the zone and is refused there.
        let zone = l.nested.zone();
        let frames: Vec<PageRange, VM_REPORT_RANGES> = ranges
            .iter()
            .map(|r| PageRange {
                pfn: zone.pfn.saturating_add(r.page),
                pages: r.pages,
            })
            .collect();
        match l.nested.submit(id, &frames) {
            Ok(()) => None,
            Err(e) => Some(ToVmm::Refused {
                id: Some(id),
                reason: refusal(e),
            }),
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
        match l.port.resp.push(bytes) {
            Ok(()) => {
                if l.port.resp.needs_notify() {
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
