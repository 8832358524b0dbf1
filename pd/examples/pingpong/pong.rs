//! Test PD: answers each round of ping with twice the number, and a PPC with
//! twice its first message register.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod config {
    pd::config!("pong");
}

use config::{channel, irq, region};
use pd::{
    Channel, ChannelSet, DeferredAction, DeferredActionSlot, Handler, MessageInfo, handler::Never,
};

const LOG: pd::Log = pd::Log::new("PONG");

struct Pong {
    input: *const u64,
    out: *mut u64,
    rounds: u64,
    irqs: u64,
    /// The notify to ping, sent with the next receive.
    deferred: DeferredActionSlot,
}

impl Handler for Pong {
    type Error = Never;

    fn notified(&mut self, channels: ChannelSet) -> Result<(), Never> {
        if channels.contains(irq::IRQ) {
            self.irqs += 1;
            LOG.info(format_args!("irq {}", self.irqs));
            irq::IRQ.irq_ack();
        }
        if channels.contains(channel::PING) {
            // SAFETY: `input` points into ping_to_pong, mapped read-only for
            // this PD's lifetime. Volatile: ping writes it.
            let round = unsafe { self.input.read_volatile() };
            // SAFETY: `out` points into pong_to_ping, mapped rw for this PD's
            // lifetime; ping only reads it.
            unsafe { self.out.write_volatile(round.wrapping_mul(2)) };
            self.rounds += 1;
            // Deferred: goes out with the next receive (NBSendRecv on seL4).
            if self.deferred.defer_notify(channel::PING).is_err() {
                channel::PING.notify();
            }
        }
        Ok(())
    }

    fn protected(&mut self, ch: Channel, info: MessageInfo) -> Result<MessageInfo, Never> {
        if ch != channel::PING || info.label() != 7 || info.count() != 1 {
            return Ok(MessageInfo::new(pd::PPC_UNSUPPORTED_LABEL, 0));
        }
        pd::set_mr(0, 2 * pd::get_mr(0));
        LOG.info(format_args!("ppc after {} rounds", self.rounds));
        Ok(MessageInfo::new(0, 1))
    }

    fn take_deferred_action(&mut self) -> Option<DeferredAction> {
        self.deferred.take()
    }
}

fn init() -> Pong {
    LOG.info(format_args!("init"));
    Pong {
        input: region::PING_TO_PONG.get().as_ptr().cast(),
        out: region::PONG_TO_PING.get().as_ptr().cast(),
        rounds: 0,
        irqs: 0,
        deferred: DeferredActionSlot::new(),
    }
}

pd::main!(init);
