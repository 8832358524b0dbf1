//! Deferred actions: a notify or IRQ ack a PD leaves for the moment it next
//! waits, so the platform combines it with that receive (seL4 `NBSendRecv`,
//! libmicrokit's `microkit_deferred_notify` / `_irq_ack`), saving a syscall.
//!
//! The action is state of the running PD, not of the platform: the handler
//! keeps a [`DeferredActionSlot`] and hands its content over in
//! [`Handler::take_deferred_action`](crate::Handler::take_deferred_action),
//! which the run loop calls when it goes back to the kernel (as rust-sel4's
//! `sel4-microkit` does). One action at a time, as in libmicrokit.

use crate::channel::Channel;
use core::fmt;

/// What a deferred action does to its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferredActionInterface {
    /// [`Channel::notify`].
    Notify,
    /// [`Channel::irq_ack`].
    IrqAck,
}

/// A notify or IRQ ack to perform when the PD next waits for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredAction {
    channel: Channel,
    interface: DeferredActionInterface,
}

impl DeferredAction {
    /// `interface` on `channel`.
    pub const fn new(channel: Channel, interface: DeferredActionInterface) -> Self {
        DeferredAction { channel, interface }
    }

    /// The channel acted on.
    pub const fn channel(self) -> Channel {
        self.channel
    }

    /// What is done to it.
    pub const fn interface(self) -> DeferredActionInterface {
        self.interface
    }
}

/// The single deferred-action slot is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredActionSlotFull;

impl fmt::Display for DeferredActionSlotFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a notify or IRQ ack is already deferred to the next receive")
    }
}

/// A handler's one deferred action (libmicrokit's `microkit_have_signal`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeferredActionSlot {
    action: Option<DeferredAction>,
}

impl DeferredActionSlot {
    /// An empty slot.
    pub const fn new() -> Self {
        DeferredActionSlot { action: None }
    }

    /// Defer `action`; refused while another one waits.
    pub fn defer(&mut self, action: DeferredAction) -> Result<(), DeferredActionSlotFull> {
        if self.action.is_some() {
            return Err(DeferredActionSlotFull);
        }
        self.action = Some(action);
        Ok(())
    }

    /// Notify `channel` when this PD next waits for events, combined with
    /// that receive.
    pub fn defer_notify(&mut self, channel: Channel) -> Result<(), DeferredActionSlotFull> {
        self.defer(DeferredAction::new(
            channel,
            DeferredActionInterface::Notify,
        ))
    }

    /// Acknowledge the IRQ `channel` when this PD next waits for events.
    pub fn defer_irq_ack(&mut self, channel: Channel) -> Result<(), DeferredActionSlotFull> {
        self.defer(DeferredAction::new(
            channel,
            DeferredActionInterface::IrqAck,
        ))
    }

    /// The deferred action, removed from the slot (what
    /// [`Handler::take_deferred_action`](crate::Handler::take_deferred_action)
    /// returns).
    pub fn take(&mut self) -> Option<DeferredAction> {
        self.action.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_deferred_action_at_a_time() {
        let mut slot = DeferredActionSlot::new();
        assert_eq!(slot.defer_notify(Channel::new(3)), Ok(()));
        assert_eq!(
            slot.defer_irq_ack(Channel::new(4)),
            Err(DeferredActionSlotFull)
        );
        assert_eq!(
            slot.take(),
            Some(DeferredAction::new(
                Channel::new(3),
                DeferredActionInterface::Notify
            ))
        );
        assert_eq!(slot.take(), None);
    }
}
