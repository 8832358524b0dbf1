//! The x86 HPET (IA-PC HPET specification 1.0a), comparator 0 one-shot in
//! legacy-replacement mode (DESIGN §4, verified by booting): the region at
//! 0xfed00000 mapped uncached, the IRQ on IOAPIC pin 2 (or 20 on q35),
//! edge-triggered. It compiles for every target (it is plain volatile MMIO)
//! so the register logic is tested on the host against a fake register block.

use super::{Clock, ClockError, Trigger, ns_to_period_ticks_ceil, period_ticks_to_ns};

/// Physical address of the HPET on PC-compatible machines (and QEMU).
pub const HPET_PADDR: u64 = 0xfed0_0000;
/// Bytes of the register block (one page is mapped).
pub const HPET_REGS_SIZE: usize = 0x400;

// Register offsets (spec §2.3.1) in bytes.
const GCAP_ID: usize = 0x000;
const GEN_CONF: usize = 0x010;
const MAIN_CNT: usize = 0x0f0;
const T0_CONF: usize = 0x100;
const T0_CMP: usize = 0x108;

// GCAP_ID fields.
const COUNT_SIZE_CAP: u64 = 1 << 13;
// GEN_CONF fields.
const ENABLE_CNF: u64 = 1 << 0;
const LEG_RT_CNF: u64 = 1 << 1;
// Tn_CONF_CAP fields.
const TN_INT_TYPE_LEVEL: u64 = 1 << 1;
const TN_INT_ENB: u64 = 1 << 2;
const TN_TYPE_PERIODIC: u64 = 1 << 3;
const TN_SIZE_CAP: u64 = 1 << 5;
const TN_VAL_SET: u64 = 1 << 6;
const TN_32MODE: u64 = 1 << 8;

/// The spec's longest allowed counter period: 100 ns = 10^8 fs.
const MAX_PERIOD_FS: u64 = 100_000_000;

/// Comparator 0 of an HPET.
#[derive(Debug)]
pub struct Hpet {
    base: *mut u8,
    period_fs: u64,
}

impl Hpet {
    /// Take over the HPET whose registers are mapped at `base`: check it is
    /// 64-bit, enable the main counter in legacy-replacement mode, and set
    /// comparator 0 to edge-triggered one-shot, disarmed.
    ///
    /// # Safety
    /// `base` must point to the HPET's register block ([`HPET_REGS_SIZE`]
    /// bytes, 8-byte aligned, mapped uncached on hardware), valid for the
    /// life of the `Hpet`, and used by nothing else.
    pub unsafe fn new(base: *mut u8) -> Result<Self, ClockError> {
        let hpet = Hpet { base, period_fs: 0 };
        let cap = hpet.read(GCAP_ID);
        let period_fs = cap >> 32;
        if period_fs == 0 || period_fs > MAX_PERIOD_FS {
            return Err(ClockError::BadPeriod(period_fs));
        }
        let t0 = hpet.read(T0_CONF);
        if cap & COUNT_SIZE_CAP == 0 || t0 & TN_SIZE_CAP == 0 {
            return Err(ClockError::Not64Bit);
        }
        // One-shot, edge, 64-bit, interrupt off until a deadline is set.
        let t0 = t0 & !(TN_INT_TYPE_LEVEL | TN_INT_ENB | TN_TYPE_PERIODIC | TN_VAL_SET | TN_32MODE);
        hpet.write(T0_CONF, t0);
        // Legacy replacement routes comparator 0 to IRQ 0 / IOAPIC pin 2
        // (spec §2.3.9), which is what the SDF's <irq> names.
        let conf = hpet.read(GEN_CONF);
        hpet.write(GEN_CONF, conf | ENABLE_CNF | LEG_RT_CNF);
        Ok(Hpet { base, period_fs })
    }

    /// Main counter period in femtoseconds (10^7 = 100 MHz under QEMU).
    pub fn period_fs(&self) -> u64 {
        self.period_fs
    }

    fn read(&self, off: usize) -> u64 {
        // SAFETY: `off` is one of the register offsets above, inside the
        // block and 8-aligned; `new`'s contract makes base valid. Volatile:
        // device registers change under us.
        unsafe { self.base.wrapping_add(off).cast::<u64>().read_volatile() }
    }

    fn write(&self, off: usize, v: u64) {
        // SAFETY: as in `read`; the block is ours alone (`new`'s contract).
        unsafe { self.base.wrapping_add(off).cast::<u64>().write_volatile(v) }
    }
}

impl Clock for Hpet {
    const TRIGGER: Trigger = Trigger::Edge;

    fn now_ns(&mut self) -> u64 {
        period_ticks_to_ns(self.read(MAIN_CNT), self.period_fs)
    }

    fn program(&mut self, deadline: Option<u64>) {
        let conf = self.read(T0_CONF);
        match deadline {
            Some(d) => {
                // A comparator in the past only matches after the 64-bit
                // counter wraps; the server re-reads the time after this and
                // handles anything already due.
                self.write(T0_CMP, ns_to_period_ticks_ceil(d, self.period_fs));
                self.write(T0_CONF, conf | TN_INT_ENB);
            }
            None => self.write(T0_CONF, conf & !TN_INT_ENB),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake register block, 8-byte aligned.
    #[repr(C, align(8))]
    struct Regs([u64; HPET_REGS_SIZE / 8]);

    fn qemu_like() -> std::boxed::Box<Regs> {
        let mut r = std::boxed::Box::new(Regs([0; HPET_REGS_SIZE / 8]));
        // QEMU: 100 MHz, 3 timers, 64-bit counter, legacy-replacement capable.
        r.0[GCAP_ID / 8] = (10_000_000 << 32) | (1 << 15) | COUNT_SIZE_CAP | (2 << 8) | 1;
        // Timer 0: 64-bit capable, periodic capable, left periodic and level
        // by a previous owner.
        r.0[T0_CONF / 8] =
            TN_SIZE_CAP | (1 << 4) | TN_TYPE_PERIODIC | TN_INT_TYPE_LEVEL | TN_INT_ENB;
        r
    }

    #[test]
    fn programs_comparator_zero_one_shot() {
        let mut regs = qemu_like();
        let base = regs.0.as_mut_ptr().cast::<u8>();
        // SAFETY: the fake block is aligned, HPET_REGS_SIZE bytes, and only
        // accessed through `hpet` (and raw reads below) while it lives.
        let mut hpet = unsafe { Hpet::new(base) }.unwrap();
        assert_eq!(hpet.period_fs(), 10_000_000);
        // SAFETY: reads of the fake block through its base pointer, which
        // stays valid; no reference to it is held meanwhile.
        let reg = |off: usize| unsafe { base.wrapping_add(off).cast::<u64>().read_volatile() };
        assert_eq!(reg(GEN_CONF) & 3, ENABLE_CNF | LEG_RT_CNF);
        let t0 = reg(T0_CONF);
        assert_eq!(
            t0 & (TN_INT_ENB | TN_TYPE_PERIODIC | TN_INT_TYPE_LEVEL | TN_32MODE),
            0
        );

        // SAFETY: as above.
        unsafe {
            base.wrapping_add(MAIN_CNT)
                .cast::<u64>()
                .write_volatile(1234)
        };
        assert_eq!(hpet.now_ns(), 12_340);
        hpet.program(Some(12_345));
        // Rounded up to the first tick not before the deadline.
        assert_eq!(reg(T0_CMP), 1235);
        assert_ne!(reg(T0_CONF) & TN_INT_ENB, 0);
        hpet.program(None);
        assert_eq!(reg(T0_CONF) & TN_INT_ENB, 0);
        assert_eq!(reg(T0_CONF) & TN_SIZE_CAP, TN_SIZE_CAP);
    }

    #[test]
    fn refuses_a_broken_hpet() {
        let mut regs = qemu_like();
        regs.0[GCAP_ID / 8] &= 0xffff_ffff;
        // SAFETY: as in the test above.
        let r = unsafe { Hpet::new(regs.0.as_mut_ptr().cast()) };
        assert_eq!(r.err(), Some(ClockError::BadPeriod(0)));
        let mut regs = qemu_like();
        regs.0[T0_CONF / 8] &= !TN_SIZE_CAP;
        // SAFETY: as above.
        let r = unsafe { Hpet::new(regs.0.as_mut_ptr().cast()) };
        assert_eq!(r.err(), Some(ClockError::Not64Bit));
    }
}
