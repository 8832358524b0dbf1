//! The event handler a PD implements.

use crate::vm::{Child, Fault, FaultReply};
use crate::{Channel, ChannelSet, DeferredAction, MessageInfo};
use core::fmt;

/// The label of the reply a PD sends to a PPC it does not serve: the caller
/// gets an error value, the server keeps running (peers are hostile).
pub const PPC_UNSUPPORTED_LABEL: u64 = MessageInfo::LABEL_MASK;

/// A protection domain's reaction to events, as in libmicrokit / sel4-microkit.
/// Returning `Err` stops the PD: it is for broken invariants of this PD, never
/// for a peer's bad input (answer that with an error reply instead).
pub trait Handler {
    /// Why the PD gave up.
    type Error: fmt::Display;

    /// Notifications (and IRQs) arrived on `channels`. They coalesce: state
    /// lives in shared memory, never in notification counts.
    fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
        crate::debug_println!(
            "{}|WARN: unexpected notification on {:?}",
            crate::pd_name(),
            channels
        );
        Ok(())
    }

    /// A protected procedure call on `channel`; the returned info (and the
    /// message registers) are the reply. By default the caller gets
    /// [`PPC_UNSUPPORTED_LABEL`].
    fn protected(
        &mut self,
        channel: Channel,
        info: MessageInfo,
    ) -> Result<MessageInfo, Self::Error> {
        crate::debug_println!(
            "{}|WARN: unexpected PPC on {:?} with {:?}",
            crate::pd_name(),
            channel,
            info
        );
        Ok(MessageInfo::new(PPC_UNSUPPORTED_LABEL, 0))
    }

    /// A fault of `child`, a vCPU of this PD's VM (a VMM's handler). By
    /// default the vCPU stays stopped and a line says so.
    fn fault(&mut self, child: Child, fault: Fault) -> Result<FaultReply, Self::Error> {
        crate::debug_println!(
            "{}|WARN: vCPU {} stopped: {fault}",
            crate::pd_name(),
            child.id()
        );
        Ok(FaultReply::Stop)
    }

    /// The notify or IRQ ack this PD deferred (kept in a
    /// [`DeferredActionSlot`](crate::DeferredActionSlot)), taken by the run
    /// loop when it goes back to the kernel: on Microkit it is combined with
    /// the next receive (`NBSendRecv`), unless a PPC reply goes out first
    /// (`ReplyRecv`), after which it waits for the next receive. By default
    /// nothing is deferred.
    fn take_deferred_action(&mut self) -> Option<DeferredAction> {
        None
    }
}

/// A handler with no behaviour: every event is unexpected.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHandler;

/// [`NoHandler`] never fails.
#[derive(Debug, Clone, Copy)]
pub enum Never {}

impl fmt::Display for Never {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl Handler for NoHandler {
    type Error = Never;
}
