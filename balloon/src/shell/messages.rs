//! The two rings with the memserver: `ToBalloon` messages taken off
//! `to_balloon` (while their answers have room) and dispatched, and the
//! `FromBalloon` answers and requests that wait in bounded queues until
//! `from_balloon` has room.

use super::{BalloonPd, MAX_REPORTS, Wake};
use crate::defs::BalloonFeatures;
use core::fmt;
use memserver_api::{self as api, FromBalloon, SLOT_SIZE, ToBalloon};
use pd_ring::{Misbehaviour, RingError};
use virtio_drivers::{Hal, transport::Transport};

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    /// Takes messages off `to_balloon` while their answers have room.
    pub(super) fn drain_ring(&mut self, wake: &mut Wake) {
        let mut buf = [0u8; SLOT_SIZE];
        while self.tracked_reports() < MAX_REPORTS {
            match self.to.pop(&mut buf) {
                Ok(Some(n)) => {
                    self.counters.messages += 1;
                    match api::decode_to_balloon(&buf[..n]) {
                        Ok(msg) => self.handle(msg),
                        Err(e) => {
                            self.counters.malformed += 1;
                            self.warn(format_args!("malformed message ignored: {e}"));
                        }
                    }
                }
                Ok(None) => {
                    // Process, request a signal, re-check (pd-ring's protocol).
                    self.to.request_signal();
                    match self.to.is_empty() {
                        Ok(false) => continue,
                        Ok(true) => break,
                        Err(_) => {
                            self.counters.ring_misbehaviour += 1;
                            break;
                        }
                    }
                }
                Err(RingError::PeerMisbehaviour(Misbehaviour::BadLength { .. })) => {
                    // The slot was consumed: a malformed message.
                    self.counters.messages += 1;
                    self.counters.malformed += 1;
                    self.counters.ring_misbehaviour += 1;
                }
                Err(_) => {
                    self.counters.ring_misbehaviour += 1;
                    break;
                }
            }
        }
        if self.to.needs_notify() {
            wake.memserver = true;
        }
    }

    fn handle(&mut self, msg: ToBalloon) {
        match msg {
            ToBalloon::Report { batch, blocks } => self.report(batch, blocks),
            ToBalloon::Inflated { req, blocks, last } => self.inflated(req, &blocks, last),
            ToBalloon::Deflated { req, pages } => match &self.deflation {
                Some(d) if d.sent && d.req == req => {
                    self.counters.pages_deflated += u64::from(pages);
                    self.deflation = None;
                    self.info(format_args!("deflated {pages} pages"));
                }
                _ => self.unexpected(format_args!("Deflated for unknown request {req}")),
            },
            ToBalloon::Refused { req, reason } => {
                if req.is_some() && req == self.ask.map(|a| a.0) {
                    self.ask = None;
                    self.counters.inflate_refused += 1;
                    self.inflate_stalled = true;
                    self.info(format_args!("inflate refused: {reason}"));
                } else if let Some(d) = self.deflation.as_ref().filter(|d| d.sent)
                    && req == Some(d.req)
                {
                    // The memserver says these are not ballooned: our lists
                    // disagree. The pages are lost to both; say so loudly.
                    self.counters.deflate_refused += 1;
                    self.error(format_args!(
                        "deflate of {} blocks refused: {reason}",
                        d.blocks.len()
                    ));
                    self.deflation = None;
                } else {
                    self.unexpected(format_args!("Refused({reason}) for request {req:?}"));
                }
            }
            ToBalloon::Reclaim {
                pages,
                first_pfn,
                end_pfn,
            } => {
                self.counters.reclaim_requests += 1;
                if self
                    .drv
                    .features()
                    .contains(BalloonFeatures::DEFLATE_ON_OOM)
                {
                    // One request at a time (the memserver asks again
                    // after a deflate): the latest zone wins.
                    self.oom_pages = pages;
                    self.oom_range = (first_pfn, end_pfn);
                } else {
                    // Without DEFLATE_ON_OOM the host must be asked first
                    // (MUST_TELL_HOST) and may refuse: the pages stay.
                    self.counters.reclaim_ignored += 1;
                }
            }
            // The answer to a run-time tunable change (FromBalloon::SetTunable).
            ToBalloon::TunableSet {
                key,
                value,
                refused,
            } => match refused {
                None => self.info(format_args!("tunable {}={value} set", key.name())),
                Some(why) => self.info(format_args!(
                    "tunable {}={value} refused: {why}",
                    key.name()
                )),
            },
            ToBalloon::Stats(m) => self.stats_answered(&m),
            ToBalloon::Release { first_pfn, end_pfn } => {
                if first_pfn >= end_pfn || self.releases.push_back((first_pfn, end_pfn)).is_err() {
                    self.unexpected(format_args!(
                        "Release of frames {first_pfn:#x}..{end_pfn:#x} not taken"
                    ));
                }
            }
            ToBalloon::MoreToInflate => {
                // A VM filled its balloon toward the target the memserver
                // set after our last inflate fell short: ask again.
                self.counters.more_to_inflate += 1;
                self.inflate_stalled = false;
            }
        }
    }

    pub(super) fn unexpected(&mut self, args: fmt::Arguments<'_>) {
        self.counters.unexpected += 1;
        self.warn(format_args!("ignored: {args}"));
    }

    /// Pushes answers, then requests, while `from_balloon` has room.
    pub(super) fn flush(&mut self, wake: &mut Wake) {
        let mut buf = [0u8; SLOT_SIZE];
        loop {
            let msg = if let Some(&(batch, ok)) = self.done_out.front() {
                FromBalloon::ReportDone { batch, ok }
            } else if self.limits_ready() {
                FromBalloon::DeviceLimits {
                    report_capacity: u16::try_from(self.drv.report_capacity()).unwrap_or(u16::MAX),
                }
            } else if let (true, Some((req, pages))) = (self.ask_queued, self.ask) {
                FromBalloon::Inflate { req, pages }
            } else if let Some(d) = self.deflation.as_ref().filter(|d| d.queued) {
                let (req, blocks) = (d.req, d.blocks.clone());
                if d.release {
                    FromBalloon::Released { req, blocks }
                } else {
                    FromBalloon::Deflate { req, blocks }
                }
            } else if self.stats_queued {
                FromBalloon::StatsRequest
            } else {
                break;
            };
            // Every FromBalloon fits a slot (memserver-api tests the largest).
            let Ok(bytes) = api::encode(&msg, &mut buf) else {
                self.error(format_args!("unencodable message dropped: {msg:?}"));
                self.pop_out();
                continue;
            };
            match self.from.push(bytes) {
                Ok(()) => self.pop_out(),
                Err(RingError::Full) => {
                    // Wait for the memserver to consume; re-check first.
                    self.from.request_signal();
                    if matches!(self.from.free_slots(), Ok(n) if n > 0) {
                        self.from.cancel_signal();
                        continue;
                    }
                    break;
                }
                Err(_) => {
                    self.counters.ring_misbehaviour += 1;
                    break;
                }
            }
        }
        if self.from.needs_notify() {
            wake.memserver = true;
        }
    }

    /// `DeviceLimits` can go: queued, and the device is up (a broken one
    /// has no queues, so its capacity would read 0 and stop reporting; the
    /// restart queues the limits again).
    fn limits_ready(&self) -> bool {
        self.limits_queued && !self.drv.is_broken()
    }

    /// Marks the message `flush` just pushed as sent (same order).
    fn pop_out(&mut self) {
        if self.done_out.pop_front().is_some() {
            return;
        }
        if self.limits_ready() {
            self.limits_queued = false;
        } else if self.ask_queued && self.ask.is_some() {
            self.ask_queued = false;
        } else if let Some(d) = self.deflation.as_mut().filter(|d| d.queued) {
            d.queued = false;
            d.sent = true;
        } else {
            self.stats_queued = false;
        }
    }
}
