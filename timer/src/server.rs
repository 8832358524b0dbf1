//! The timer server: [`Timeouts`] driven by a [`Clock`]. It answers calls and
//! IRQs with the set of clients to notify; the PD shell does the notifying
//! and the IRQ acknowledge (through the closure given to [`Timer::irq`]),
//! so this stays free of platform calls and is tested with fake clocks.

use crate::clock::{Clock, Trigger};
use crate::protocol::{Call, ProtocolError, Reply};
use crate::timeouts::{MAX_CLIENTS, Timeouts};
use pd::{Channel, ChannelSet};

/// Counters (oracles for tests, and for the log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Calls answered with success.
    pub calls: u64,
    /// Calls refused (bad label, count or client).
    pub bad_calls: u64,
    /// Timeouts expired (clients notified).
    pub expired: u64,
    /// IRQs handled.
    pub irqs: u64,
    /// IRQs after which nothing was due (early or duplicate edges).
    pub spurious_irqs: u64,
}

/// The timer: per-client timeouts on one clock.
#[derive(Debug)]
pub struct Timer<C> {
    clock: C,
    timeouts: Timeouts,
    counters: Counters,
}

impl<C: Clock> Timer<C> {
    /// A timer with nothing pending; the comparator is disarmed.
    pub fn new(mut clock: C) -> Self {
        clock.program(None);
        Timer {
            clock,
            timeouts: Timeouts::new(),
            counters: Counters::default(),
        }
    }

    /// The clock.
    pub fn clock(&mut self) -> &mut C {
        &mut self.clock
    }

    /// The pending timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A PPC from `client`: the reply, and the clients to notify now (a
    /// timeout set into the past expires at once, possibly the caller's).
    pub fn call(
        &mut self,
        client: Channel,
        label: u64,
        count: usize,
        mr0: u64,
    ) -> (Reply, ChannelSet) {
        let call = match Call::decode(label, count, mr0) {
            Ok(_) if client.index() >= MAX_CLIENTS => Err(ProtocolError::BadClient(client.index())),
            c => c,
        };
        let reply = match call {
            Err(e) => {
                self.counters.bad_calls += 1;
                return (Reply::error(e), ChannelSet::default());
            }
            Ok(Call::GetTime) => Reply::value(self.clock.now_ns()),
            Ok(Call::SetTimeout { ns }) => {
                let deadline = self.clock.now_ns().saturating_add(ns);
                // In range: checked above.
                let _ = self.timeouts.set(client, deadline);
                Reply::ok()
            }
            Ok(Call::Cancel) => {
                let was = self.timeouts.cancel(client).unwrap_or(false);
                Reply::value(u64::from(was))
            }
        };
        self.counters.calls += 1;
        let fired = match call {
            Ok(Call::GetTime) => ChannelSet::default(),
            _ => self.service(),
        };
        (reply, fired)
    }

    /// The clock's IRQ arrived: the clients to notify. `ack` acknowledges the
    /// IRQ; it is called in the order the trigger mode needs (DESIGN §4):
    /// level - after the comparator has moved past now, so the line is
    /// deasserted; edge - before the comparator is written, so the next
    /// edge is not lost while the IRQ is masked.
    pub fn irq(&mut self, ack: impl FnOnce()) -> ChannelSet {
        self.counters.irqs += 1;
        let fired = match C::TRIGGER {
            Trigger::Level => {
                let f = self.service();
                ack();
                f
            }
            Trigger::Edge => {
                ack();
                self.service()
            }
        };
        if fired.is_empty() {
            self.counters.spurious_irqs += 1;
        }
        fired
    }

    /// Expire what is due, program the next deadline, and re-read the time:
    /// a deadline that passed while programming would never fire on an edge
    /// comparator, so it is run now. Each extra round expires at least one
    /// client, so this ends within MAX_CLIENTS + 1 rounds (bounded anyway,
    /// against a clock that misbehaves).
    fn service(&mut self) -> ChannelSet {
        let mut fired = ChannelSet::default();
        for _ in 0..=MAX_CLIENTS {
            let now = self.clock.now_ns();
            let due = self.timeouts.expire(now);
            self.counters.expired += u64::from(due.bits().count_ones());
            fired = ChannelSet::from_bits(fired.bits() | due.bits());
            let next = self.timeouts.next_deadline();
            self.clock.program(next);
            match next {
                Some(d) if d <= self.clock.now_ns() => continue,
                _ => break,
            }
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{CANCEL, GET_TIME, OK, SET_TIMEOUT};
    use core::cell::Cell;
    use proptest::prelude::*;
    use std::rc::Rc;

    /// A fake comparator: time moves only when the test says, plus `drift`
    /// ns on every read (time passing while the timer works).
    #[derive(Debug, Default)]
    struct Hw {
        now: Cell<u64>,
        drift: Cell<u64>,
        armed: Cell<Option<u64>>,
        programs: Cell<u64>,
        acked: Cell<bool>,
        /// Level clock: was the line asserted when acked?
        asserted_at_ack: Cell<bool>,
        /// Edge clock: was the comparator written after the ack?
        programmed_after_ack: Cell<bool>,
    }

    impl Hw {
        fn asserted(&self) -> bool {
            self.armed.get().is_some_and(|d| d <= self.now.get())
        }
    }

    struct Fake<const LEVEL: bool>(Rc<Hw>);

    impl<const LEVEL: bool> Clock for Fake<LEVEL> {
        const TRIGGER: Trigger = if LEVEL { Trigger::Level } else { Trigger::Edge };
        fn now_ns(&mut self) -> u64 {
            let t = self.0.now.get() + self.0.drift.get();
            self.0.now.set(t);
            t
        }
        fn program(&mut self, d: Option<u64>) {
            self.0.armed.set(d);
            self.0.programs.set(self.0.programs.get() + 1);
            if self.0.acked.get() {
                self.0.programmed_after_ack.set(true);
            }
        }
    }

    fn ack(hw: &Hw) {
        hw.acked.set(true);
        hw.asserted_at_ack.set(hw.asserted());
    }

    #[test]
    fn get_time_set_and_expire() {
        let hw = Rc::new(Hw::default());
        let mut t = Timer::new(Fake::<true>(hw.clone()));
        hw.now.set(1000);
        let (r, f) = t.call(Channel::new(1), GET_TIME, 0, 0);
        assert_eq!((r.label, r.mr0), (OK, Some(1000)));
        assert!(f.is_empty());
        let (r, f) = t.call(Channel::new(2), SET_TIMEOUT, 1, 500);
        assert_eq!(r, Reply::ok());
        assert!(f.is_empty());
        assert_eq!(hw.armed.get(), Some(1500));
        let (r, _) = t.call(Channel::new(3), SET_TIMEOUT, 1, 200);
        assert_eq!(r, Reply::ok());
        assert_eq!(hw.armed.get(), Some(1200));
        hw.now.set(1200);
        let f = t.irq(|| ack(&hw));
        assert_eq!(f.bits(), 1 << 3);
        assert_eq!(hw.armed.get(), Some(1500));
        // Cancel the last one: the comparator is disarmed.
        let (r, _) = t.call(Channel::new(2), CANCEL, 0, 0);
        assert_eq!(r, Reply::value(1));
        assert_eq!(hw.armed.get(), None);
        let (r, _) = t.call(Channel::new(2), CANCEL, 0, 0);
        assert_eq!(r, Reply::value(0));
        assert_eq!(t.counters().expired, 1);
    }

    #[test]
    fn bad_calls_change_nothing() {
        let hw = Rc::new(Hw::default());
        let mut t = Timer::new(Fake::<false>(hw.clone()));
        t.call(Channel::new(1), SET_TIMEOUT, 1, 100);
        let programs = hw.programs.get();
        for (label, count) in [
            (SET_TIMEOUT, 0),
            (SET_TIMEOUT, 2),
            (GET_TIME, 1),
            (7, 0),
            (u64::MAX, 120),
        ] {
            let (r, f) = t.call(Channel::new(1), label, count, 5);
            assert_ne!(r.label, OK);
            assert!(f.is_empty());
        }
        // A channel id the timer cannot track.
        let (r, _) = t.call(Channel::new(64), SET_TIMEOUT, 1, 5);
        assert_ne!(r.label, OK);
        assert_eq!(t.timeouts().pending(Channel::new(1)), Some(100));
        assert_eq!(t.timeouts().len(), 1);
        assert_eq!(hw.programs.get(), programs);
        assert_eq!(t.counters().bad_calls, 6);
    }

    #[test]
    fn zero_timeout_expires_at_once() {
        let hw = Rc::new(Hw::default());
        let mut t = Timer::new(Fake::<false>(hw.clone()));
        hw.now.set(10);
        let (_, f) = t.call(Channel::new(2), SET_TIMEOUT, 1, 0);
        assert_eq!(f.bits(), 1 << 2);
        assert_eq!(hw.armed.get(), None);
        // Saturates instead of wrapping into the past.
        let (_, f) = t.call(Channel::new(2), SET_TIMEOUT, 1, u64::MAX);
        assert!(f.is_empty());
        assert_eq!(hw.armed.get(), Some(u64::MAX));
    }

    #[test]
    fn level_acks_after_the_line_drops_edge_before_programming() {
        let hw = Rc::new(Hw::default());
        let mut t = Timer::new(Fake::<true>(hw.clone()));
        t.call(Channel::new(1), SET_TIMEOUT, 1, 100);
        t.call(Channel::new(2), SET_TIMEOUT, 1, 300);
        hw.now.set(100);
        assert!(hw.asserted());
        let f = t.irq(|| ack(&hw));
        assert_eq!(f.bits(), 1 << 1);
        assert!(
            hw.acked.get() && !hw.asserted_at_ack.get(),
            "level: acked while still asserted"
        );

        let hw = Rc::new(Hw::default());
        let mut t = Timer::new(Fake::<false>(hw.clone()));
        t.call(Channel::new(1), SET_TIMEOUT, 1, 100);
        t.call(Channel::new(2), SET_TIMEOUT, 1, 300);
        hw.now.set(100);
        let f = t.irq(|| ack(&hw));
        assert_eq!(f.bits(), 1 << 1);
        assert!(
            hw.programmed_after_ack.get(),
            "edge: comparator written before the ack"
        );
        // A spurious edge notifies nobody.
        assert!(t.irq(|| ack(&hw)).is_empty());
        assert_eq!(t.counters().spurious_irqs, 1);
    }

    #[test]
    fn deadline_passing_while_programming_is_run_now() {
        // Every clock read advances 50 ns: a deadline 40 ns after the expiry
        // is already past when the comparator has been written.
        let hw = Rc::new(Hw::default());
        let mut t = Timer::new(Fake::<false>(hw.clone()));
        t.call(Channel::new(1), SET_TIMEOUT, 1, 1000);
        t.call(Channel::new(2), SET_TIMEOUT, 1, 1040);
        hw.now.set(1000);
        hw.drift.set(50);
        let f = t.irq(|| ack(&hw));
        assert_eq!(f.bits(), (1 << 1) | (1 << 2));
        assert_eq!(hw.armed.get(), None);
    }

    /// Random calls and IRQs against a model of absolute deadlines: every
    /// client is notified exactly once per timeout that reached its
    /// deadline, never early, nothing due is left pending after an event,
    /// and the comparator always holds the earliest pending deadline.
    fn check_against_model<const LEVEL: bool>(ops: &[(usize, u64, u64, u64)]) {
        let hw = Rc::new(Hw::default());
        let mut t = Timer::new(Fake::<LEVEL>(hw.clone()));
        let mut model: [Option<u64>; 4] = [None; 4];
        for &(client, kind, ns, advance) in ops {
            let now = hw.now.get();
            let f = match kind {
                0 => {
                    model[client] = Some(now + ns);
                    t.call(Channel::new(client), SET_TIMEOUT, 1, ns).1
                }
                1 => {
                    model[client] = None;
                    t.call(Channel::new(client), CANCEL, 0, 0).1
                }
                _ => {
                    hw.now.set(now + advance);
                    t.irq(|| ())
                }
            };
            let now = hw.now.get();
            for c in f.iter() {
                let d = model[c.index()].take();
                assert!(
                    d.is_some_and(|d| d <= now),
                    "client {} notified early or twice",
                    c.index()
                );
            }
            for d in model.iter().flatten() {
                assert!(*d > now, "a due timeout was not delivered");
            }
            assert_eq!(hw.armed.get(), model.iter().flatten().min().copied());
        }
    }

    proptest! {
        #[test]
        fn notifies_exactly_the_due_clients(
            ops in proptest::collection::vec((0usize..4, 0u64..3, 0u64..1000, 0u64..400), 1..100),
            level in any::<bool>(),
        ) {
            if level { check_against_model::<true>(&ops) } else { check_against_model::<false>(&ops) }
        }
    }
}
