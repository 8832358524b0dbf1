//! Clock backends behind one small trait: read the time, arm or disarm the
//! one-shot interrupt. The server ([`crate::server`]) decides the IRQ
//! acknowledge order from [`Clock::TRIGGER`].

use core::fmt;

#[cfg(target_arch = "aarch64")]
pub mod generic_timer;
#[cfg(not(target_os = "none"))]
pub mod host;
pub mod hpet;

/// How the clock's interrupt line behaves; it decides when to acknowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The line stays asserted while the condition holds (ARM generic timer:
    /// while CVAL <= count and enabled). Move the comparator first, then ack,
    /// or the IRQ is delivered again at once (DESIGN §4).
    Level,
    /// One edge per match (HPET, the host thread). The IRQ stays masked until
    /// acked: ack first, then write the comparator, then re-read the counter
    /// and run anything already due, because a comparator written into the
    /// past never fires (DESIGN §4).
    Edge,
}

/// A monotonic clock with one one-shot comparator.
pub trait Clock {
    /// How the interrupt line behaves.
    const TRIGGER: Trigger;

    /// Nanoseconds since the clock's epoch; never decreases.
    fn now_ns(&mut self) -> u64;

    /// Interrupt when `now_ns() >= deadline`, or never (`None`). Replaces
    /// the previous setting. A deadline in the past may or may not interrupt;
    /// the server re-reads the time after programming and handles it.
    fn program(&mut self, deadline: Option<u64>);
}

/// Why a clock could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockError {
    /// The counter frequency register reads 0 (firmware did not set it).
    NoFrequency,
    /// The HPET's counter period is outside the spec's 0 < p <= 100 ns.
    BadPeriod(u64),
    /// The HPET's main counter or comparator 0 is not 64 bits wide.
    Not64Bit,
    /// The system description maps no HPET region for the timer PD.
    NoHpetRegion,
    /// The host platform gave the timer PD no IRQ to raise.
    NoHostIrq(usize),
    /// The host platform's configuration could not be read.
    HostConfig,
}

impl fmt::Display for ClockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClockError::NoFrequency => {
                write!(f, "CNTFRQ_EL0 is 0: the counter frequency is unknown")
            }
            ClockError::BadPeriod(p) => {
                write!(f, "HPET counter period {p} fs is outside 1..=100000000")
            }
            ClockError::Not64Bit => {
                write!(f, "HPET main counter or comparator 0 is not 64-bit capable")
            }
            ClockError::NoHpetRegion => {
                write!(
                    f,
                    "system.xml maps no memory region at 0xfed00000 (the HPET) into the timer PD"
                )
            }
            ClockError::NoHostIrq(id) => {
                write!(f, "the host launcher gave no IRQ with id {id} to raise")
            }
            ClockError::HostConfig => write!(
                f,
                "the host launcher's configuration is missing or malformed"
            ),
        }
    }
}

/// Counter ticks at `freq` Hz to nanoseconds (rounded down, saturating).
pub fn ticks_to_ns(ticks: u64, freq: u64) -> u64 {
    if freq == 0 {
        return u64::MAX;
    }
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(freq);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Nanoseconds to the first tick at `freq` Hz that is not earlier than `ns`
/// (rounded up so a comparator never fires early; saturating).
pub fn ns_to_ticks_ceil(ns: u64, freq: u64) -> u64 {
    let t = (u128::from(ns) * u128::from(freq)).div_ceil(1_000_000_000);
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// HPET-style: ticks of `period_fs` femtoseconds to ns (rounded down).
pub fn period_ticks_to_ns(ticks: u64, period_fs: u64) -> u64 {
    let ns = u128::from(ticks) * u128::from(period_fs) / 1_000_000;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// HPET-style: ns to ticks of `period_fs` femtoseconds (rounded up).
pub fn ns_to_period_ticks_ceil(ns: u64, period_fs: u64) -> u64 {
    if period_fs == 0 {
        return u64::MAX;
    }
    let t = (u128::from(ns) * 1_000_000).div_ceil(u128::from(period_fs));
    u64::try_from(t).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn qemu_rates() {
        // QEMU's generic timer runs at 62.5 MHz: 16 ns per tick.
        assert_eq!(ticks_to_ns(1, 62_500_000), 16);
        assert_eq!(ns_to_ticks_ceil(17, 62_500_000), 2);
        assert_eq!(ns_to_ticks_ceil(16, 62_500_000), 1);
        // HPET at 100 MHz: 10 ns = 10^7 fs per tick.
        assert_eq!(period_ticks_to_ns(3, 10_000_000), 30);
        assert_eq!(ns_to_period_ticks_ceil(31, 10_000_000), 4);
    }

    proptest! {
        /// The comparator value for a deadline is the first tick at or after
        /// it: converting back is >= the deadline, one tick less is before it.
        #[test]
        fn ceil_is_the_first_tick_not_before(ns in 0u64..1 << 62, freq in 1u64..5_000_000_000) {
            let t = ns_to_ticks_ceil(ns, freq);
            // Saturated: the deadline is beyond the 64-bit counter.
            prop_assume!(t < u64::MAX);
            prop_assert!(u128::from(t) * 1_000_000_000 >= u128::from(ns) * u128::from(freq));
            if t > 0 {
                prop_assert!(u128::from(t - 1) * 1_000_000_000 < u128::from(ns) * u128::from(freq));
            }
            prop_assert!(ticks_to_ns(t, freq) >= ns);
        }

        #[test]
        fn period_ceil_is_the_first_tick_not_before(ns in 0u64..1 << 62, period in 1u64..=100_000_000) {
            let t = ns_to_period_ticks_ceil(ns, period);
            // Saturated: the deadline is beyond the 64-bit counter.
            prop_assume!(t < u64::MAX);
            prop_assert!(u128::from(t) * u128::from(period) >= u128::from(ns) * 1_000_000);
            if t > 0 {
                prop_assert!(u128::from(t - 1) * u128::from(period) < u128::from(ns) * 1_000_000);
            }
        }
    }
}
