//! Reporting tunables, each with Linux's default (DESIGN §2), and the
//! choice of policy with the `adaptive` policy's own numbers.

use crate::{Error, MAX_CAPACITY, MAX_IN_FLIGHT, MAX_ORDER};
pub use memserver_api::TunableKey;

/// Which rules the reporting worker follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Linux's `mm/page_reporting.c`, kept as the control: a full delay
    /// before every pass and a budget of 1/`budget_divisor` of each free
    /// list per pass; only orders >= `reporting_order`.
    #[default]
    Linux,
    /// See [`crate::adaptive`]: every block that has stayed free for a
    /// quarter delay is reported, whatever its zone does, without budget;
    /// a zone quiet for the delay has everything reported in one pass paced
    /// by the device; a zone that takes reported memory back faster than
    /// `churn_pages_per_s` backs off; blocks below `reporting_order` are
    /// reported once their zone has stayed quiet for `age_ns`.
    Adaptive,
}

impl Policy {
    /// The name used on command lines and in logs.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::Linux => "linux",
            Policy::Adaptive => "adaptive",
        }
    }
}

/// Numbers of the reporting worker. `Default` gives Linux's values and
/// policy (the control); [`Tunables::adaptive`] is what the system runs by
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    /// Smallest order reported; freeing a block of at least this order
    /// requests reporting. Linux `page_reporting_order`: 9 (2 MiB).
    /// Range `0..=MAX_ORDER`.
    pub reporting_order: u8,
    /// Delay between a request and the worker's pass, in nanoseconds.
    /// Linux `PAGE_REPORTING_DELAY`: 2 s. Range `1..=3600 s`.
    pub delay_ns: u64,
    /// Blocks per report batch. Linux `PAGE_REPORTING_CAPACITY`: 32; the
    /// device's queue size may lower it. Range `1..=MAX_CAPACITY`.
    pub capacity: u16,
    /// Budget divisor: each free list may send
    /// `ceil(nr_free / (capacity * budget_divisor))` batches per pass.
    /// Linux: 16. Range `1..=65536`.
    pub budget_divisor: u32,
    /// Low watermark in pages. A zone is skipped when its free pages are
    /// below `low_watermark_pages + (capacity << reporting_order)`; no
    /// isolation takes a zone's free pages (isolated ones excluded) below
    /// it, however many batches are in flight; and the balloon never takes
    /// a zone below it. Default 1280 pages (5 MiB):
    /// about Linux's low watermark of a 1 GiB zone (`min_free_kbytes` =
    /// sqrt(16 * 1 GiB in KiB) = 4 MiB, plus a quarter).
    pub low_watermark_pages: u64,
    /// Report batches in flight at once. Linux: 1 (its `report()` call
    /// blocks). Range `1..=MAX_IN_FLIGHT`.
    pub max_in_flight: u8,
    /// The rules the worker follows. Default (of this struct): Linux.
    pub policy: Policy,
    /// Adaptive: lowest order reported once a zone has stayed quiet for
    /// `age_ns` (blocks freed below `reporting_order` come back by ageing).
    /// Default 0. Range `0..=MAX_ORDER`; above `reporting_order` it has no
    /// effect.
    pub quiet_order: u8,
    /// Adaptive: how long a zone must stay quiet before its blocks below
    /// `reporting_order` are reported, in nanoseconds. Default 4 s (two
    /// delays). Range `1..=3600 s`.
    pub age_ns: u64,
    /// Adaptive: pages a zone may allocate between two looks of the worker
    /// and still count as quiet (a trickle of small allocations does not
    /// hold reporting back; a workload cycling its memory does). Default
    /// 2048 (8 MiB). Range `0..=u32::MAX`.
    pub busy_pages: u64,
    /// Adaptive: most steps a churning zone backs off by, each doubling
    /// the quiet time it needs before it is reported (see
    /// [`crate::adaptive`]). Default 3 (up to 8 delays). 0: no hysteresis.
    /// Range `0..=8`.
    pub backoff_max: u8,
    /// Adaptive: reported pages per second a zone may take back (allocate
    /// again after the host discarded them) before it counts as churning
    /// and backs off. Each such page costs the guest a fault and the host
    /// a zeroed page, about a microsecond; the default, 32768 (128 MiB/s),
    /// is a few percent of a CPU. A build's compilers, exiting and
    /// starting, mostly stay below it; a workload cycling hundreds of MiB
    /// a second does not.
    /// Range `0..=u32::MAX`.
    pub churn_pages_per_s: u64,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            reporting_order: 9,
            delay_ns: 2_000_000_000,
            capacity: 32,
            budget_divisor: 16,
            low_watermark_pages: 1280,
            max_in_flight: 1,
            policy: Policy::Linux,
            quiet_order: 0,
            age_ns: 4_000_000_000,
            busy_pages: 2048,
            backoff_max: 3,
            churn_pages_per_s: 32_768,
        }
    }
}

impl Tunables {
    /// The system's default: Linux's numbers under the adaptive policy.
    pub fn adaptive() -> Tunables {
        Tunables {
            policy: Policy::Adaptive,
            ..Tunables::default()
        }
    }

    /// Check every field's range.
    pub fn validate(&self) -> Result<(), Error> {
        if self.reporting_order > MAX_ORDER {
            return Err(Error::BadTunable("reporting_order"));
        }
        if self.delay_ns == 0 || self.delay_ns > 3_600_000_000_000 {
            return Err(Error::BadTunable("delay_ns"));
        }
        if self.capacity == 0 || usize::from(self.capacity) > MAX_CAPACITY {
            return Err(Error::BadTunable("capacity"));
        }
        if self.budget_divisor == 0 || self.budget_divisor > 65536 {
            return Err(Error::BadTunable("budget_divisor"));
        }
        if self.low_watermark_pages > u64::from(u32::MAX) {
            return Err(Error::BadTunable("low_watermark_pages"));
        }
        if self.max_in_flight == 0 || usize::from(self.max_in_flight) > MAX_IN_FLIGHT {
            return Err(Error::BadTunable("max_in_flight"));
        }
        if self.quiet_order > MAX_ORDER {
            return Err(Error::BadTunable("quiet_order"));
        }
        if self.age_ns == 0 || self.age_ns > 3_600_000_000_000 {
            return Err(Error::BadTunable("age_ns"));
        }
        if self.busy_pages > u64::from(u32::MAX) {
            return Err(Error::BadTunable("busy_pages"));
        }
        if self.backoff_max > 8 {
            return Err(Error::BadTunable("backoff_max"));
        }
        if self.churn_pages_per_s > u64::from(u32::MAX) {
            return Err(Error::BadTunable("churn_pages_per_s"));
        }
        Ok(())
    }

    /// Set one tunable, `value` in the unit of the key's name (`policy`: 0
    /// linux, 1 adaptive), checking every field's range: on an error
    /// nothing changed. The command line and the run-time control message
    /// ([`memserver_api::FromBalloon::SetTunable`]) both come here.
    pub fn set(&mut self, key: TunableKey, value: u64) -> Result<(), Error> {
        let bad = Error::BadTunable(key.name());
        let mut t = *self;
        let narrow = |max: u64| if value <= max { Ok(value) } else { Err(bad) };
        match key {
            TunableKey::Order => t.reporting_order = narrow(255)? as u8,
            TunableKey::DelayMs => t.delay_ns = value.checked_mul(1_000_000).ok_or(bad)?,
            TunableKey::Capacity => t.capacity = narrow(u64::from(u16::MAX))? as u16,
            TunableKey::BudgetDivisor => t.budget_divisor = narrow(u64::from(u32::MAX))? as u32,
            TunableKey::WatermarkPages => t.low_watermark_pages = value,
            TunableKey::InFlight => t.max_in_flight = narrow(255)? as u8,
            TunableKey::Policy => {
                t.policy = match value {
                    0 => Policy::Linux,
                    1 => Policy::Adaptive,
                    _ => return Err(bad),
                }
            }
            TunableKey::QuietOrder => t.quiet_order = narrow(255)? as u8,
            TunableKey::AgeMs => t.age_ns = value.checked_mul(1_000_000).ok_or(bad)?,
            TunableKey::BusyPages => t.busy_pages = value,
            TunableKey::BackoffMax => t.backoff_max = narrow(255)? as u8,
            TunableKey::ChurnPagesPerS => t.churn_pages_per_s = value,
        }
        // Only this key's field changed: a range error is its.
        t.validate().map_err(|_| bad)?;
        *self = t;
        Ok(())
    }

    /// Adaptive: reported pages a zone may take back within `need_ns` of
    /// a report before it counts as churning.
    pub(crate) fn churn_pages(&self, need_ns: u64) -> u64 {
        let pages = u128::from(self.churn_pages_per_s) * u128::from(need_ns) / 1_000_000_000;
        u64::try_from(pages).unwrap_or(u64::MAX)
    }

    /// Lowest order the policy reports, and so the smallest free that
    /// requests reporting.
    pub(crate) fn lowest_order(&self) -> u8 {
        match self.policy {
            Policy::Linux => self.reporting_order,
            Policy::Adaptive => self.quiet_order.min(self.reporting_order),
        }
    }

    /// Pages a zone must have free for the worker to visit it.
    pub(crate) fn zone_threshold(&self) -> u64 {
        self.low_watermark_pages + (u64::from(self.capacity) << self.reporting_order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// `set` either takes the value, leaving valid tunables with only
        /// that key's field changed, or refuses it naming the key and
        /// changes nothing.
        #[test]
        fn set_changes_one_field_or_nothing(
            k in 0..TunableKey::ALL.len(),
            value in prop_oneof![0..20u64, any::<u64>()],
            linux in any::<bool>(),
        ) {
            let key = TunableKey::ALL[k];
            let before = if linux { Tunables::default() } else { Tunables::adaptive() };
            let mut t = before;
            match t.set(key, value) {
                Ok(()) => {
                    prop_assert!(t.validate().is_ok());
                    // Setting the old value back restores every field.
                    let mut back = t;
                    let old = match key {
                        TunableKey::Order => u64::from(before.reporting_order),
                        TunableKey::DelayMs => before.delay_ns / 1_000_000,
                        TunableKey::Capacity => u64::from(before.capacity),
                        TunableKey::BudgetDivisor => u64::from(before.budget_divisor),
                        TunableKey::WatermarkPages => before.low_watermark_pages,
                        TunableKey::InFlight => u64::from(before.max_in_flight),
                        TunableKey::Policy => u64::from(before.policy == Policy::Adaptive),
                        TunableKey::QuietOrder => u64::from(before.quiet_order),
                        TunableKey::AgeMs => before.age_ns / 1_000_000,
                        TunableKey::BusyPages => before.busy_pages,
                        TunableKey::BackoffMax => u64::from(before.backoff_max),
                        TunableKey::ChurnPagesPerS => before.churn_pages_per_s,
                    };
                    back.set(key, old).unwrap();
                    prop_assert_eq!(back, before);
                }
                Err(e) => {
                    prop_assert_eq!(e, Error::BadTunable(key.name()));
                    prop_assert_eq!(t, before);
                }
            }
        }
    }
}
