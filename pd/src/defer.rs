//! The deferred action: a notify or IRQ ack a PD leaves for the moment it
//! next waits, so the platform combines it with that receive (seL4
//! `NBSendRecv`). The platforms take it in their run loops.

use crate::channel::Channel;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// The single deferred-action slot is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredActionSlotFull;

impl fmt::Display for DeferredActionSlotFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a notify or IRQ ack is already deferred to the next receive")
    }
}

// The one deferred action (libmicrokit's `microkit_have_signal`): 0 = none,
// otherwise a tag in the top bits and the channel id in the low bits. An
// atomic only so that it can be a safe static; a PD is single-threaded.
static DEFERRED: AtomicU64 = AtomicU64::new(0);
pub(crate) const DEFER_NOTIFY: u64 = 1 << 63;
pub(crate) const DEFER_IRQ_ACK: u64 = 1 << 62;
#[cfg_attr(any(not(target_os = "none"), feature = "bare"), allow(dead_code))]
pub(crate) const DEFER_MONITOR: u64 = 1 << 61;
#[cfg_attr(not(any(target_os = "none", feature = "host")), allow(dead_code))]
pub(crate) const DEFER_ID_MASK: u64 = 0xff;

/// The deferred action, removed from its slot (runtime use).
#[cfg_attr(not(any(target_os = "none", feature = "host", test)), allow(dead_code))]
pub(crate) fn take_deferred() -> u64 {
    DEFERRED.swap(0, Ordering::Relaxed)
}

pub(crate) fn set_deferred(v: u64) -> Result<(), DeferredActionSlotFull> {
    DEFERRED
        .compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed)
        .map(|_| ())
        .map_err(|_| DeferredActionSlotFull)
}

impl Channel {
    /// Notify when this PD next waits for events, combined with that receive
    /// (seL4 `NBSendRecv`), saving a syscall. One action may be deferred.
    pub fn defer_notify(self) -> Result<(), DeferredActionSlotFull> {
        set_deferred(DEFER_NOTIFY | self.index() as u64)
    }

    /// [`Channel::irq_ack`] deferred to the next receive.
    pub fn defer_irq_ack(self) -> Result<(), DeferredActionSlotFull> {
        set_deferred(DEFER_IRQ_ACK | self.index() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_deferred_action_at_a_time() {
        let _ = take_deferred();
        assert_eq!(Channel::new(3).defer_notify(), Ok(()));
        assert_eq!(Channel::new(4).defer_irq_ack(), Err(DeferredActionSlotFull));
        assert_eq!(take_deferred(), DEFER_NOTIFY | 3);
        assert_eq!(take_deferred(), 0);
    }
}
