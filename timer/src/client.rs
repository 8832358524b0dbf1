//! What a client PD calls (memserver, guests), over its channel to the timer
//! (a `pp="true"` end in `system.xml`). Each is one PPC; the timer notifies
//! the same channel when a timeout expires.
//!
//! ```no_run
//! # let timer_channel = pd::Channel::new(1); // config::channel::TIMER in a PD
//! timer::client::set_timeout(timer_channel, 2_000_000_000)?;
//! // ... later, in notified(): if channels.contains(timer_channel)
//! let now = timer::client::now(timer_channel)?;
//! # Ok::<(), timer::client::Error>(())
//! ```

use crate::protocol::{Call, TimerError, reply_unit, reply_value};
use pd::Channel;

pub use crate::protocol::TimerError as Error;

/// The timer's current time in ns.
pub fn now(timer: Channel) -> Result<u64, TimerError> {
    let info = timer.pp_call(Call::GetTime.info());
    reply_value(info, pd::get_mr(0))
}

/// Notify this PD on `timer` in `ns` nanoseconds, replacing any timeout it
/// has pending.
pub fn set_timeout(timer: Channel, ns: u64) -> Result<(), TimerError> {
    pd::set_mr(0, ns);
    reply_unit(timer.pp_call(Call::SetTimeout { ns }.info()))
}

/// Cancel this PD's pending timeout; whether one was pending.
pub fn cancel(timer: Channel) -> Result<bool, TimerError> {
    let info = timer.pp_call(Call::Cancel.info());
    reply_value(info, pd::get_mr(0)).map(|v| v != 0)
}
