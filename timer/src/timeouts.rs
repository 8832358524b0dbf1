//! Per-client one-shot deadlines: the timer's core. No platform calls; the
//! server feeds it the time and programs the hardware from
//! [`Timeouts::next_deadline`].

use core::fmt;
use pd::{Channel, ChannelSet};

/// Clients are channel ids `0..MAX_CLIENTS` (a badge has 64 bits; Microkit
/// uses ids below 62).
pub const MAX_CLIENTS: usize = 64;

/// A channel id outside `0..MAX_CLIENTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOutOfRange(pub usize);

impl fmt::Display for ClientOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "channel {} is not a timer client id (0..{MAX_CLIENTS})",
            self.0
        )
    }
}

/// One absolute deadline (ns) per client, at most.
#[derive(Debug, Clone)]
pub struct Timeouts {
    deadlines: [u64; MAX_CLIENTS],
    /// Bit `c` set: client `c` has a pending deadline.
    pending: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeouts {
    /// No pending timeouts.
    pub const fn new() -> Self {
        Timeouts {
            deadlines: [0; MAX_CLIENTS],
            pending: 0,
        }
    }

    fn index(client: Channel) -> Result<usize, ClientOutOfRange> {
        let i = client.index();
        if i < MAX_CLIENTS {
            Ok(i)
        } else {
            Err(ClientOutOfRange(i))
        }
    }

    /// Arm `client`'s timeout for absolute time `deadline`, replacing any
    /// pending one (sDDF semantics: one timeout per client).
    pub fn set(&mut self, client: Channel, deadline: u64) -> Result<(), ClientOutOfRange> {
        let i = Self::index(client)?;
        self.deadlines[i] = deadline;
        self.pending |= 1 << i;
        Ok(())
    }

    /// Disarm `client`'s timeout; whether one was pending.
    pub fn cancel(&mut self, client: Channel) -> Result<bool, ClientOutOfRange> {
        let i = Self::index(client)?;
        let was = self.pending & (1 << i) != 0;
        self.pending &= !(1 << i);
        Ok(was)
    }

    /// `client`'s pending deadline.
    pub fn pending(&self, client: Channel) -> Option<u64> {
        let i = Self::index(client).ok()?;
        (self.pending & (1 << i) != 0).then_some(self.deadlines[i])
    }

    /// Number of pending timeouts.
    pub fn len(&self) -> usize {
        self.pending.count_ones() as usize
    }

    /// Whether no timeout is pending.
    pub fn is_empty(&self) -> bool {
        self.pending == 0
    }

    /// The earliest pending deadline: what the hardware comparator must hold.
    pub fn next_deadline(&self) -> Option<u64> {
        ChannelSet::from_bits(self.pending)
            .iter()
            .map(|c| self.deadlines[c.index()])
            .min()
    }

    /// Remove every timeout due at `now` (deadline <= now) and return the
    /// clients to notify.
    pub fn expire(&mut self, now: u64) -> ChannelSet {
        let mut fired = ChannelSet::default();
        for c in ChannelSet::from_bits(self.pending).iter() {
            if self.deadlines[c.index()] <= now {
                fired.insert(c);
            }
        }
        self.pending &= !fired.bits();
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::vec::Vec;

    #[derive(Debug, Clone)]
    enum Op {
        Set(usize, u64),
        Cancel(usize),
        Expire(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        // A few clients (some out of range) and a small time range, so
        // collisions and equal deadlines are common.
        prop_oneof![
            (0usize..70, 0u64..100).prop_map(|(c, d)| Op::Set(c, d)),
            (0usize..70).prop_map(Op::Cancel),
            (0u64..120).prop_map(Op::Expire),
        ]
    }

    proptest! {
        /// Against a map client -> deadline: set replaces, cancel removes,
        /// expire returns exactly the due clients, next_deadline is the min.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(op(), 0..200)) {
            let mut t = Timeouts::new();
            let mut model: BTreeMap<usize, u64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Set(c, d) => {
                        let r = t.set(Channel::new(c), d);
                        if c < MAX_CLIENTS {
                            prop_assert_eq!(r, Ok(()));
                            model.insert(c, d);
                        } else {
                            prop_assert_eq!(r, Err(ClientOutOfRange(c)));
                        }
                    }
                    Op::Cancel(c) => {
                        let r = t.cancel(Channel::new(c));
                        if c < MAX_CLIENTS {
                            prop_assert_eq!(r, Ok(model.remove(&c).is_some()));
                        } else {
                            prop_assert!(r.is_err());
                        }
                    }
                    Op::Expire(now) => {
                        let fired: Vec<usize> = t.expire(now).iter().map(Channel::index).collect();
                        let due: Vec<usize> = model.iter().filter(|(_, d)| **d <= now).map(|(c, _)| *c).collect();
                        for c in &due { model.remove(c); }
                        prop_assert_eq!(fired, due);
                    }
                }
                prop_assert_eq!(t.next_deadline(), model.values().min().copied());
                prop_assert_eq!(t.len(), model.len());
                for c in 0..MAX_CLIENTS {
                    prop_assert_eq!(t.pending(Channel::new(c)), model.get(&c).copied());
                }
            }
        }
    }

    #[test]
    fn set_replaces_the_pending_timeout() {
        let mut t = Timeouts::new();
        let c = Channel::new(2);
        t.set(c, 100).unwrap();
        t.set(c, 50).unwrap();
        assert_eq!(t.next_deadline(), Some(50));
        assert!(t.expire(49).is_empty());
        assert_eq!(t.expire(50).bits(), 1 << 2);
        assert_eq!(t.next_deadline(), None);
        assert!(t.expire(u64::MAX).is_empty());
    }
}
