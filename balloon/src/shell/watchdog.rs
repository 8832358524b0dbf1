//! The watchdog: a device that stops answering is reset.
//!
//! A device that stops answering (a report, inflate or deflate never
//! completed, a reset without an interrupt) would hold the memserver's
//! batches isolated for as long as nothing else happens. With a watchdog
//! period set ([`BalloonPd::set_watchdog`]), the core asks for a timer
//! ([`Wake::arm_timer_ns`]) whenever requests are on the device; on expiry
//! ([`BalloonPd::watchdog_expired`]) it looks at the device as on any
//! event, and if requests are still outstanding with no completion since
//! the timer was armed, it resets the device (the device may not touch
//! the rings after a reset, VIRTIO 1.2 §2.1), fails those requests as a
//! device error would (batches back to the memserver unreported), and
//! restarts the driver. QEMU completes every request within its handler,
//! so a period of seconds only ever fires on a broken device.

use super::{BalloonPd, Wake};
use virtio_drivers::{Hal, transport::Transport};

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    /// Turn the watchdog on with this period (`None` or 0: off, the
    /// default).
    pub fn set_watchdog(&mut self, period_ns: Option<u64>) {
        self.watchdog_ns = period_ns.filter(|&ns| ns > 0);
    }

    /// Requests the device holds: report batches, the inflate or the
    /// deflate on its queue (not the stats buffer, which a device keeps
    /// until it wants the next statistics).
    pub(super) fn device_busy(&self) -> bool {
        self.reports_in_device > 0
            || self.inflating.is_some()
            || self.deflation.as_ref().is_some_and(|d| d.in_device)
    }

    /// The watchdog's timer fired: an event like any other, and if the
    /// device still holds requests and completed none since the timer was
    /// armed, it is reset and the driver restarted.
    pub fn watchdog_expired(&mut self) -> Wake {
        let armed = self.watchdog_armed.take();
        let mut wake = self.run(false);
        if let Some(seen) = armed
            && self.device_busy()
            && self.device_completions == seen
        {
            self.counters.watchdog_resets += 1;
            self.warn(format_args!(
                "device stalled: requests outstanding with no completion for {} ms; resetting it",
                self.watchdog_ns.unwrap_or(0) / 1_000_000
            ));
            self.drv.abandon();
            // Armed again (if the restarted device holds requests) from
            // the completions counted after the reset.
            self.watchdog_armed = None;
            let again = self.run(false);
            wake.memserver |= again.memserver;
            wake.arm_timer_ns = again.arm_timer_ns;
        }
        wake
    }
}
