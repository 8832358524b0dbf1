//! Event dispatch: every event (the device's interrupt, a memserver
//! notification, the watchdog's timer) runs the whole loop of the module
//! docs, and says what the PD shell must do next.

use super::BalloonPd;
use virtio_drivers::{Hal, transport::Transport};

/// What the PD shell must do after [`BalloonPd::run`].
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct Wake {
    /// Notify the memserver.
    pub memserver: bool,
    /// Arm the one-shot timer for this many nanoseconds, then call
    /// [`BalloonPd::watchdog_expired`] when it fires.
    pub arm_timer_ns: Option<u64>,
}

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    /// Handles an event: `irq` when the device's interrupt arrived (it is
    /// acknowledged at the device here; the shell acks the IRQ channel).
    /// Any event runs the whole loop (see the module docs).
    pub fn run(&mut self, irq: bool) -> Wake {
        let mut wake = Wake::default();
        if irq {
            self.drv.ack_interrupt();
        }
        self.drain_device();
        if self.drv.take_config_changed() {
            // A new target: the memserver may have memory again.
            self.inflate_stalled = false;
            if let Ok(t) = self.drv.target() {
                self.info(format_args!(
                    "target {} pages, balloon {} pages",
                    t,
                    self.drv.actual()
                ));
            }
        }
        if self.drv.is_broken() {
            self.restart();
        }
        self.drain_ring(&mut wake);
        self.submit_reports();
        self.pump_inflate();
        self.pump_deflate();
        self.rebalance();
        self.request_stats();
        self.flush(&mut wake);
        // Also while a restart keeps failing: it is retried on each event,
        // and the timer makes one.
        if let Some(ns) = self.watchdog_ns
            && self.watchdog_armed.is_none()
            && (self.device_busy() || self.drv.is_broken())
        {
            self.watchdog_armed = Some(self.device_completions);
            wake.arm_timer_ns = Some(ns);
        }
        wake
    }

    /// Collects completions. A failure found while polling the balloon
    /// queues fails report batches too, so reports are drained again.
    fn drain_device(&mut self) {
        self.drain_reports();
        while let Some(done) = self.drv.poll_balloon() {
            self.balloon_done(done);
        }
        self.drain_reports();
    }

    fn restart(&mut self) {
        match self.drv.restart() {
            Ok(()) => {
                self.counters.device_restarts += 1;
                self.restart_failing = false;
                // The device may offer something else now.
                self.limits_queued = true;
                self.info(format_args!(
                    "device failed; restarted the driver (batches failed so far: {})",
                    self.counters.reports_failed
                ));
            }
            Err(e) => {
                self.counters.restart_failures += 1;
                if !self.restart_failing {
                    self.error(format_args!("device restart failed: {e}"));
                }
                self.restart_failing = true;
            }
        }
    }
}
