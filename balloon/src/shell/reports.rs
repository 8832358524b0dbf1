//! Free page reporting: `Report` batches from the memserver onto the
//! device's reporting queue (waiting locally while it is full), and each
//! completion back as one `ReportDone`.

use super::BalloonPd;
use super::packed::Packed;
use crate::defs::{Block, BlockExt, Error};
use heapless::Vec;
use memserver_api::BATCH;
use virtio_drivers::{Hal, transport::Transport};

/// Report batches tracked at once (waiting locally, on the device, or
/// answered and waiting for ring room).
pub const MAX_REPORTS: usize = 16;

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    pub(super) fn tracked_reports(&self) -> usize {
        self.reports.len() + self.reports_in_device + self.done_out.len()
    }

    pub(super) fn drain_reports(&mut self) {
        while let Some((batch, result)) = self.drv.poll_reports() {
            self.device_completions += 1;
            self.reports_in_device = self.reports_in_device.saturating_sub(1);
            self.answer(batch, result.is_ok());
        }
    }

    pub(super) fn answer(&mut self, batch: u32, ok: bool) {
        if ok {
            self.counters.reports_ok += 1;
        } else {
            self.counters.reports_failed += 1;
        }
        // Room is reserved: a batch is taken off the ring only while fewer
        // than MAX_REPORTS are tracked, and each stage holds each batch once.
        if self.done_out.push_back((batch, ok)).is_err() {
            self.error(format_args!("answer for batch {batch} lost: queue full"));
        }
    }

    pub(super) fn report(&mut self, batch: u32, blocks: Vec<Block, BATCH>) {
        self.counters.reports_received += 1;
        if self.reports.iter().any(|(b, _)| *b == batch) {
            // Answering would complete the first batch of that id early.
            return self.unexpected(format_args!("duplicate batch {batch}"));
        }
        let foreign = blocks.iter().filter(|b| !self.in_zones(b)).count();
        if foreign > 0 {
            // Not guest RAM: the host would discard whatever it names.
            self.counters.foreign_blocks += foreign as u64;
            self.warn(format_args!(
                "batch {batch} refused: {foreign} blocks outside the balloon's zones"
            ));
            return self.answer(batch, false);
        }
        let cap = self.drv.report_capacity();
        if blocks.is_empty() || blocks.len() > cap || !blocks.iter().all(BlockExt::is_valid) {
            // It can never be posted: fail it now, as a device would.
            self.warn(format_args!(
                "batch {batch} refused ({} blocks, queue holds {cap})",
                blocks.len()
            ));
            return self.answer(batch, false);
        }
        let packed = blocks.iter().map(|b| Packed::new(*b)).collect();
        // Room: tracked < MAX_REPORTS was checked before the pop.
        if self.reports.push_back((batch, packed)).is_err() {
            self.answer(batch, false);
        }
    }

    pub(super) fn submit_reports(&mut self) {
        while let Some((batch, packed)) = self.reports.front() {
            let batch = *batch;
            let blocks: Vec<Block, BATCH> = packed.iter().map(|p| p.get()).collect();
            match self.drv.submit_report(batch, &blocks) {
                Ok(()) => {
                    self.reports.pop_front();
                    self.reports_in_device += 1;
                }
                Err(Error::QueueFull | Error::Broken) => {
                    // Waits for a completion or a restart.
                    self.counters.reports_waited += 1;
                    return;
                }
                Err(Error::DuplicateBatch(_)) => {
                    self.reports.pop_front();
                    self.unexpected(format_args!("duplicate batch {batch}"));
                }
                Err(e) => {
                    self.reports.pop_front();
                    self.warn(format_args!("batch {batch} failed: {e}"));
                    self.answer(batch, false);
                }
            }
        }
    }
}
