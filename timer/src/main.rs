//! The timer PD. The same source for every platform; only the clock differs:
//! the ARM generic timer (aarch64 Microkit), the HPET (x86_64 Microkit), or
//! the host platform's clock thread (Linux, `tools run`).
#![cfg_attr(target_os = "none", no_std, no_main)]

mod config {
    pd::config!("timer");
    /// The guests, however many the description has (`sdf::guests`).
    pub mod guests {
        include!(concat!(env!("OUT_DIR"), "/guests_timer.rs"));
    }
}
#[allow(dead_code)]
mod hw {
    include!(concat!(env!("OUT_DIR"), "/timer_hw.rs"));
}

use pd::{Channel, ChannelSet, Handler, MessageInfo};
use timer::Timer;
use timer::clock::{Clock, ClockError};

const LOG: pd::Log = pd::Log::new("TIMER");

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
type HwClock = timer::clock::generic_timer::GenericTimer;
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
type HwClock = timer::clock::hpet::Hpet;
#[cfg(not(target_os = "none"))]
type HwClock = timer::clock::host::HostClock;

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
fn clock() -> Result<HwClock, ClockError> {
    timer::clock::generic_timer::GenericTimer::new()
}

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
fn clock() -> Result<HwClock, ClockError> {
    let region = hw::hpet().ok_or(ClockError::NoHpetRegion)?.get();
    // SAFETY: the region is the HPET's register page (physical 0xfed00000,
    // found by address in system.xml), mapped into this PD only, and mapped
    // for the life of the PD.
    unsafe { timer::clock::hpet::Hpet::new(region.as_ptr()) }
}

#[cfg(not(target_os = "none"))]
fn clock() -> Result<HwClock, ClockError> {
    timer::clock::host::HostClock::for_pd_irq(config::irq::IRQ)
}

/// The PD: the timer, or why its clock could not start (reported on the
/// first event, which then stops the PD: a timer without a clock would
/// leave every client waiting forever without a word).
struct TimerPd<C> {
    timer: Result<Timer<C>, ClockError>,
}

impl<C: Clock> TimerPd<C> {
    fn timer(&mut self) -> Result<&mut Timer<C>, ClockError> {
        self.timer.as_mut().map_err(|e| *e)
    }
}

fn notify_all(channels: ChannelSet) {
    for c in channels.iter() {
        c.notify();
    }
}

impl<C: Clock> Handler for TimerPd<C> {
    type Error = ClockError;

    fn notified(&mut self, channels: ChannelSet) -> Result<(), ClockError> {
        let irq = config::irq::IRQ;
        let timer = self.timer()?;
        if channels.contains(irq) {
            notify_all(timer.irq(|| irq.irq_ack()));
        }
        let others = ChannelSet::from_bits(channels.bits() & !(1 << irq.index()));
        if !others.is_empty() {
            LOG.warn(format_args!(
                "notifications on {others:?} ignored: clients call, they do not notify"
            ));
        }
        Ok(())
    }

    fn protected(
        &mut self,
        channel: Channel,
        info: MessageInfo,
    ) -> Result<MessageInfo, ClockError> {
        let timer = self.timer()?;
        let (reply, fired) = timer.call(channel, info.label(), info.count(), pd::get_mr(0));
        if let Some(v) = reply.mr0 {
            pd::set_mr(0, v);
        }
        notify_all(fired);
        Ok(reply.info())
    }
}

fn init() -> TimerPd<HwClock> {
    let timer = clock().map(Timer::new);
    match &timer {
        Ok(_) => LOG.info(format_args!(
            "started, clients memserver {:?}, balloon {:?}, guests {:?}",
            config::channel::MEMSERVER,
            config::channel::BALLOON,
            config::guests::CHANNEL
        )),
        Err(e) => LOG.error(format_args!("no clock: {e}")),
    }
    TimerPd { timer }
}

pd::main!(init);
