//! What a WFI means for the VMM: how long the vCPU may sleep.
//!
//! Linux idles in `wfi`. seL4 traps it to the VMM (HCR_EL2.TWI), and
//! stepping over it at once makes the VMM spin on the guest's idle loop.
//! Instead the VMM suspends the vCPU and wakes it when something can
//! change what the guest waits for: an interrupt the VMM injects (the
//! console, a device), or the guest's virtual timer reaching its deadline,
//! which the VMM asks the timer PD to signal. Resumed, the vCPU's timer
//! condition holds and seL4 delivers the timer's PPI as usual.
//!
//! The deadline is the guest's `CNTV_CVAL` against its virtual count
//! (`CNTPCT - CNTVOFF`), when `CNTV_CTL` has the timer enabled and not
//! masked. A masked or disabled timer, or one far away, still gets a wake
//! after [`MAX_SLEEP_NS`]: a WFI may end early for no reason (the
//! architecture allows it), so a bounded sleep costs one trap, and a guest
//! whose wake-up source the VMM does not know about is not parked for good.

/// The longest sleep of one WFI, in nanoseconds.
pub const MAX_SLEEP_NS: u64 = 1_000_000_000;

/// `CNTV_CTL_EL0` bits.
pub mod cntv_ctl {
    pub const ENABLE: u64 = 1 << 0;
    pub const IMASK: u64 = 1 << 1;
}

/// The guest's virtual timer, read from its vCPU when it trapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualTimer {
    /// `CNTV_CTL_EL0`.
    pub ctl: u64,
    /// `CNTV_CVAL_EL0`: the deadline, in virtual counts.
    pub cval: u64,
    /// `CNTVOFF_EL2`: virtual count = physical count - this.
    pub cntvoff: u64,
}

/// What to do with a WFI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wfi {
    /// The timer's deadline has passed: its interrupt is due; continue
    /// after the WFI at once.
    Continue,
    /// Suspend the vCPU; wake it after `ns` at the latest.
    Sleep { ns: u64 },
}

/// The WFI's answer at physical count `cntpct`, with the counter running
/// at `freq` Hz (`CNTFRQ_EL0`; 0 is treated as an unknown rate: the
/// shortest sleep).
pub fn wfi(timer: VirtualTimer, cntpct: u64, freq: u64) -> Wfi {
    let armed = timer.ctl & cntv_ctl::ENABLE != 0 && timer.ctl & cntv_ctl::IMASK == 0;
    if !armed {
        return Wfi::Sleep { ns: MAX_SLEEP_NS };
    }
    let now = cntpct.wrapping_sub(timer.cntvoff);
    // The condition is unsigned: CVAL <= count (as the architecture
    // compares the 64-bit values).
    if timer.cval <= now {
        return Wfi::Continue;
    }
    let ticks = timer.cval - now;
    if freq == 0 {
        return Wfi::Sleep { ns: 1 };
    }
    // Round up, so the wake never comes before the deadline (that would
    // be one more trap, not an error). u128: ticks * 1e9 overflows u64.
    let ns = (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(freq));
    Wfi::Sleep {
        ns: u64::try_from(ns).unwrap_or(u64::MAX).clamp(1, MAX_SLEEP_NS),
    }
}

/// Whether the trapped `WFx` (ESR's ISS) is a WFE, which the VMM steps
/// over: a single-vCPU guest waits in WFE only for itself.
pub fn is_wfe(esr: u64) -> bool {
    esr & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FREQ: u64 = 62_500_000; // QEMU virt's generic timer
    const ON: u64 = cntv_ctl::ENABLE;

    fn timer(ctl: u64, cval: u64, cntvoff: u64) -> VirtualTimer {
        VirtualTimer { ctl, cval, cntvoff }
    }

    #[test]
    fn a_passed_deadline_continues() {
        assert_eq!(wfi(timer(ON, 100, 0), 100, FREQ), Wfi::Continue);
        assert_eq!(wfi(timer(ON, 100, 0), 5000, FREQ), Wfi::Continue);
    }

    #[test]
    fn a_future_deadline_sleeps_until_it() {
        // 62_500 counts at 62.5 MHz: 1 ms.
        assert_eq!(
            wfi(timer(ON, 162_500, 0), 100_000, FREQ),
            Wfi::Sleep { ns: 1_000_000 }
        );
        // The virtual offset moves the guest's count back.
        assert_eq!(
            wfi(timer(ON, 162_500, 1_000), 101_000, FREQ),
            Wfi::Sleep { ns: 1_000_000 }
        );
    }

    #[test]
    fn a_disabled_or_masked_timer_sleeps_the_longest() {
        for ctl in [0, cntv_ctl::IMASK, ON | cntv_ctl::IMASK] {
            assert_eq!(
                wfi(timer(ctl, 0, 0), 100, FREQ),
                Wfi::Sleep { ns: MAX_SLEEP_NS }
            );
        }
    }

    #[test]
    fn a_far_deadline_is_capped() {
        assert_eq!(
            wfi(timer(ON, u64::MAX, 0), 0, FREQ),
            Wfi::Sleep { ns: MAX_SLEEP_NS }
        );
    }

    #[test]
    fn wfe_and_wfi_are_told_apart() {
        // ESR of a WFI: EC 0x01, IL, ISS 0 (with CV/COND bits); WFE: TI = 1.
        assert!(!is_wfe(0x0600_0000 | 0x01e0_0000));
        assert!(is_wfe(0x0600_0000 | 0x01e0_0001));
    }

    proptest! {
        /// Never sleeps past the deadline by more than the rounding of one
        /// count, never beyond the cap, never zero; and continues exactly
        /// when the deadline has passed.
        #[test]
        fn sleep_is_bounded_by_the_deadline(
            cval in any::<u64>(), cntpct in any::<u64>(), off in any::<u64>(),
            freq in 1u64..=1_000_000_000,
        ) {
            let now = cntpct.wrapping_sub(off);
            match wfi(timer(ON, cval, off), cntpct, freq) {
                Wfi::Continue => prop_assert!(cval <= now),
                Wfi::Sleep { ns } => {
                    prop_assert!(cval > now);
                    prop_assert!((1..=MAX_SLEEP_NS).contains(&ns));
                    let ticks = u128::from(cval - now);
                    // ns covers the ticks (the wake is not early) unless capped,
                    // and is at most one ns of rounding above them.
                    let covered = u128::from(ns) * u128::from(freq);
                    prop_assert!(ns == MAX_SLEEP_NS || covered >= ticks * 1_000_000_000);
                    prop_assert!(covered < ticks * 1_000_000_000 + u128::from(freq) || ns == 1);
                }
            }
        }
    }
}
