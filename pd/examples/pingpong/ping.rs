//! Test PD: sends ROUNDS rounds to pong through `ping_to_pong` and checks each
//! answer in `pong_to_ping`, then makes one PPC to pong.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod config {
    pd::config!("ping");
}

use config::{channel, region};
use core::fmt;
use pd::{Channel, ChannelSet, Handler, MessageInfo};

const ROUNDS: u64 = 100;
const LOG: pd::Log = pd::Log::new("PING");

struct Ping {
    round: u64,
    out: *mut u64,
    answer: *const u64,
}

#[derive(Debug)]
enum Error {
    WrongAnswer { round: u64, got: u64 },
    PpcFailed(MessageInfo, u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::WrongAnswer { round, got } => {
                write!(f, "round {round}: pong answered {got}, not {}", 2 * round)
            }
            Error::PpcFailed(info, mr0) => write!(f, "PPC answered {info:?} mr0={mr0}"),
        }
    }
}

impl Ping {
    fn send(&mut self) {
        // SAFETY: `out` points into ping_to_pong, mapped rw for this PD's
        // lifetime; pong only reads it. Volatile: the peer sees the store.
        unsafe { self.out.write_volatile(self.round) };
        channel::PONG.notify();
    }
}

impl Handler for Ping {
    type Error = Error;

    fn notified(&mut self, channels: ChannelSet) -> Result<(), Error> {
        if !channels.contains(channel::PONG) {
            return Ok(());
        }
        // SAFETY: `answer` points into pong_to_ping, mapped read-only here.
        let got = unsafe { self.answer.read_volatile() };
        if got != 2 * self.round {
            return Err(Error::WrongAnswer {
                round: self.round,
                got,
            });
        }
        if self.round < ROUNDS {
            self.round += 1;
            self.send();
            return Ok(());
        }
        pd::set_mr(0, 21);
        let reply = channel::PONG.pp_call(MessageInfo::new(7, 1));
        let mr0 = pd::get_mr(0);
        if reply.label() != 0 || reply.count() != 1 || mr0 != 42 {
            return Err(Error::PpcFailed(reply, mr0));
        }
        LOG.info(format_args!("done {ROUNDS} rounds, ppc answer {mr0}"));
        Ok(())
    }
}

fn init() -> Ping {
    let out = region::PING_TO_PONG.get();
    let answer = region::PONG_TO_PING.get();
    LOG.info(format_args!(
        "init: {} at {:#x}, pong_to_ping paddr {:#x}",
        config::PD_NAME,
        out.vaddr,
        config::paddr::PONG_TO_PING_PADDR.get()
    ));
    let mut p = Ping {
        round: 1,
        out: out.as_ptr().cast(),
        answer: answer.as_ptr().cast(),
    };
    p.send();
    p
}

pd::main!(init);

// Keep `Channel` in use on every platform (it names the type of the consts).
#[allow(dead_code)]
const _: Channel = channel::PONG;
