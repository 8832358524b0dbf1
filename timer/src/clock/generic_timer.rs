//! The ARM EL1 physical generic timer, as a Microkit PD at EL0 sees it
//! (DESIGN §4, verified by booting): EL0 may read CNTFRQ_EL0 and CNTPCT_EL0
//! and write CNTP_CVAL_EL0 / CNTP_CTL_EL0 (the kernel sets CNTKCTL_EL1 so).
//! The virtual timer traps, so the physical one is used. Its PPI (30) is
//! level-triggered: asserted while enabled and CNTPCT >= CVAL (Arm ARM
//! D11.2.4), so the server moves CVAL before it acknowledges.

use super::{Clock, ClockError, Trigger, ns_to_ticks_ceil, ticks_to_ns};

/// CNTP_CTL_EL0.ENABLE (bit 0); IMASK (bit 1) stays 0.
const CTL_ENABLE: u64 = 1;

/// The EL1 physical timer.
#[derive(Debug)]
pub struct GenericTimer {
    freq: u64,
}

#[cfg(target_os = "none")]
mod regs {
    use core::arch::asm;

    pub(super) fn cntfrq() -> u64 {
        let v: u64;
        // SAFETY: reading CNTFRQ_EL0 has no side effect; EL0 access is
        // enabled by seL4 (CNTKCTL_EL1.EL0PCTEN).
        unsafe { asm!("mrs {}, cntfrq_el0", out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }

    pub(super) fn cntpct() -> u64 {
        let v: u64;
        // SAFETY: the ISB keeps the counter read from being hoisted above
        // earlier instructions (Arm ARM D11.2.2); reading has no side effect.
        unsafe {
            asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack, preserves_flags))
        };
        v
    }

    pub(super) fn set_cval(v: u64) {
        // SAFETY: writes this PD's timer comparator; EL0 access is enabled by
        // seL4 (CNTKCTL_EL1.EL0PTEN) and nothing else uses the EL1 physical
        // timer (the kernel uses its own, DESIGN §4).
        unsafe {
            asm!("msr cntp_cval_el0, {}", "isb", in(reg) v, options(nomem, nostack, preserves_flags))
        };
    }

    pub(super) fn set_ctl(v: u64) {
        // SAFETY: as for set_cval: this PD owns the EL1 physical timer.
        unsafe {
            asm!("msr cntp_ctl_el0, {}", "isb", in(reg) v, options(nomem, nostack, preserves_flags))
        };
    }
}

/// The generic timer's counter rate, CNTFRQ_EL0, in Hz (0 off Microkit).
pub fn counter_frequency() -> u64 {
    regs::cntfrq()
}

/// The physical count, CNTPCT_EL0 (0 off Microkit): what a VMM compares
/// its guest's virtual timer with.
pub fn counter() -> u64 {
    regs::cntpct()
}

// Not Microkit: the registers exist (aarch64 Linux traps EL0 writes), but
// only the Microkit PD may touch them; a host build keeps the type compiling.
#[cfg(not(target_os = "none"))]
mod regs {
    pub(super) fn cntfrq() -> u64 {
        0
    }
    pub(super) fn cntpct() -> u64 {
        0
    }
    pub(super) fn set_cval(_: u64) {}
    pub(super) fn set_ctl(_: u64) {}
}

impl GenericTimer {
    /// Read the counter frequency and disarm the comparator.
    pub fn new() -> Result<Self, ClockError> {
        let freq = regs::cntfrq();
        if freq == 0 {
            return Err(ClockError::NoFrequency);
        }
        regs::set_ctl(0);
        Ok(GenericTimer { freq })
    }

    /// Counter frequency in Hz (62.5 MHz under QEMU).
    pub fn frequency(&self) -> u64 {
        self.freq
    }
}

impl Clock for GenericTimer {
    const TRIGGER: Trigger = Trigger::Level;

    fn now_ns(&mut self) -> u64 {
        ticks_to_ns(regs::cntpct(), self.freq)
    }

    fn program(&mut self, deadline: Option<u64>) {
        match deadline {
            Some(d) => {
                // CVAL first, then enable: enabling with a stale CVAL could
                // assert the line for the old deadline.
                regs::set_cval(ns_to_ticks_ceil(d, self.freq));
                regs::set_ctl(CTL_ENABLE);
            }
            // Disabled, the timer's output is deasserted.
            None => regs::set_ctl(0),
        }
    }
}
