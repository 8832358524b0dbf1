//! The GICv2 distributor a VM programs (Arm IHI 0048B, §4.3), emulated: the
//! guest's accesses to it trap, the VMM keeps its state here, and virtual
//! IRQs reach the vCPU through the hypervisor's list registers, which seL4
//! fills (`ARM VCPU InjectIRQ`). The CPU interface is real: GICV is mapped
//! where the guest expects GICC, so acknowledging and EOI cost no trap.
//!
//! seL4 overwrites a pending list register without a word, so the VMM
//! keeps its own shadow: which LR holds which IRQ. An IRQ raised while all
//! four are busy, or while it is disabled, stays pending here and goes in
//! when an LR frees (a VGIC maintenance fault names it) or when the guest
//! enables it.
//!
//! One vCPU: SGIs and the CPU target registers are read-as-CPU0.

/// IRQs emulated: SGIs and PPIs (0..32) and 96 SPIs.
pub const IRQS: usize = 128;
/// List registers of QEMU's GICv2 virtual interface (seL4's `gic_vcpu_num_list_regs`).
pub const LIST_REGS: usize = 4;
/// The distributor's window.
pub const SIZE: u64 = 0x1_0000;

/// What the VMM must do after a distributor event: put `irq` into list
/// register `lr` (and, for the virtual timer, ack the VPPI when it leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inject {
    pub irq: u16,
    pub lr: u8,
}

const WORDS: usize = IRQS / 32;

/// The distributor's state, as the guest sees it.
#[derive(Debug, Clone)]
pub struct Distributor {
    enabled: bool,
    group: [u32; WORDS],
    enable: [u32; WORDS],
    pending: [u32; WORDS],
    active: [u32; WORDS],
    priority: [u8; IRQS],
    config: [u32; IRQS / 16],
    /// The list registers: which IRQ each holds (shadow).
    lrs: [Option<u16>; LIST_REGS],
    /// Accesses the distributor does not implement (counted, ignored).
    pub bad_accesses: u64,
}

impl Default for Distributor {
    fn default() -> Self {
        Self::new()
    }
}

fn bit(irq: usize) -> (usize, u32) {
    (irq / 32, 1 << (irq % 32))
}

impl Distributor {
    pub const fn new() -> Self {
        Distributor {
            enabled: false,
            group: [0; WORDS],
            // SGIs are always enabled on a GICv2.
            enable: {
                let mut e = [0; WORDS];
                e[0] = 0xffff;
                e
            },
            pending: [0; WORDS],
            active: [0; WORDS],
            priority: [0; IRQS],
            config: [0; IRQS / 16],
            lrs: [None; LIST_REGS],
            bad_accesses: 0,
        }
    }

    fn is(&self, set: &[u32; WORDS], irq: usize) -> bool {
        let (w, b) = bit(irq);
        set[w] & b != 0
    }

    /// Whether `irq` is enabled and the distributor forwards it.
    pub fn deliverable(&self, irq: usize) -> bool {
        irq < IRQS && self.enabled && self.is(&self.enable, irq)
    }

    /// The list register holding `irq`, if one does.
    pub fn lr_of(&self, irq: u16) -> Option<u8> {
        self.lrs
            .iter()
            .position(|l| *l == Some(irq))
            .map(|i| i as u8)
    }

    /// A device (or the virtual timer) raised `irq`: inject it now if it
    /// can go in, else keep it pending.
    pub fn raise(&mut self, irq: u16) -> Option<Inject> {
        let i = usize::from(irq);
        if i >= IRQS || self.lr_of(irq).is_some() {
            // Already in an LR: level and edge alike are one delivery.
            return None;
        }
        let (w, b) = bit(i);
        self.pending[w] |= b;
        self.next_for_free_lr()
    }

    /// Move the lowest pending, deliverable IRQ into a free LR.
    fn next_for_free_lr(&mut self) -> Option<Inject> {
        let lr = self.lrs.iter().position(Option::is_none)?;
        let irq = (0..IRQS).find(|&i| self.is(&self.pending, i) && self.deliverable(i))?;
        let (w, b) = bit(irq);
        self.pending[w] &= !b;
        self.lrs[lr] = Some(irq as u16);
        Some(Inject {
            irq: irq as u16,
            lr: lr as u8,
        })
    }

    /// A VGIC maintenance fault: the guest finished list register `lr`.
    /// Returns the IRQ that left it and the next injection, if any.
    pub fn maintenance(&mut self, lr: u64) -> (Option<u16>, Option<Inject>) {
        let done = usize::try_from(lr)
            .ok()
            .and_then(|i| self.lrs.get_mut(i))
            .and_then(Option::take);
        (done, self.next_for_free_lr())
    }

    /// The priority the guest gave `irq` (for `InjectIRQ`).
    pub fn priority(&self, irq: u16) -> u8 {
        self.priority.get(usize::from(irq)).copied().unwrap_or(0)
    }

    /// The guest's group for `irq` (0 on GICv2 Linux).
    pub fn group(&self, irq: u16) -> u8 {
        u8::from(usize::from(irq) < IRQS && self.is(&self.group, usize::from(irq)))
    }

    /// A read of `size` bytes at `offset`.
    pub fn read(&mut self, offset: u64, size: u8) -> u32 {
        let o = offset as usize;
        let word = |set: &[u32; WORDS], base: usize| set.get((o - base) / 4).copied().unwrap_or(0);
        match (o, size) {
            (0x000, 4) => u32::from(self.enabled),
            // ITLinesNumber = IRQS/32 - 1, one CPU, no security extensions.
            (0x004, 4) => (WORDS as u32 - 1) & 0x1f,
            // IIDR: implementer ARM (0x43b), GICv2.
            (0x008, 4) => 0x0200_043b,
            (0x080..=0x0fc, 4) => word(&self.group, 0x080),
            (0x100..=0x17c, 4) => word(&self.enable, 0x100),
            (0x180..=0x1fc, 4) => word(&self.enable, 0x180),
            (0x200..=0x27c, 4) => word(&self.pending, 0x200),
            (0x280..=0x2fc, 4) => word(&self.pending, 0x280),
            (0x300..=0x37c, 4) => word(&self.active, 0x300),
            (0x380..=0x3fc, 4) => word(&self.active, 0x380),
            (0x400..=0x7fb, 1 | 4) => {
                self.bytes(o - 0x400, size, |s, i| s.priority.get(i).copied())
            }
            // One CPU: every IRQ targets CPU0.
            (0x800..=0xbfb, 1 | 4) => self.bytes(o - 0x800, size, |_, i| (i < IRQS).then_some(1)),
            (0xc00..=0xcfc, 4) => self.config.get((o - 0xc00) / 4).copied().unwrap_or(0),
            // ICPIDR2: architecture version 2.
            (0xfe8, 4) => 0x20,
            (0xfd0..=0xffc, 4) => 0,
            _ => {
                self.bad_accesses += 1;
                0
            }
        }
    }

    fn bytes(&self, first: usize, size: u8, get: impl Fn(&Self, usize) -> Option<u8>) -> u32 {
        (0..usize::from(size)).fold(0, |v, k| {
            v | u32::from(get(self, first + k).unwrap_or(0)) << (8 * k)
        })
    }

    /// A write of `size` bytes of `value` at `offset`; the injections it
    /// makes possible (an IRQ enabled while pending, the distributor
    /// switched on).
    pub fn write(&mut self, offset: u64, size: u8, value: u32) -> heapless::Vec<Inject, LIST_REGS> {
        let o = offset as usize;
        let idx = |base: usize| (o - base) / 4;
        match (o, size) {
            (0x000, 4) => self.enabled = value & 1 != 0,
            (0x080..=0x0fc, 4) => {
                if let Some(w) = self.group.get_mut(idx(0x080)) {
                    *w = value;
                }
            }
            (0x100..=0x17c, 4) => {
                if let Some(w) = self.enable.get_mut(idx(0x100)) {
                    *w |= value;
                }
            }
            (0x180..=0x1fc, 4) => {
                let i = idx(0x180);
                if let Some(w) = self.enable.get_mut(i) {
                    // SGIs stay enabled.
                    *w &= !(if i == 0 { value & !0xffff } else { value });
                }
            }
            (0x200..=0x27c, 4) => {
                if let Some(w) = self.pending.get_mut(idx(0x200)) {
                    *w |= value;
                }
            }
            (0x280..=0x2fc, 4) => {
                if let Some(w) = self.pending.get_mut(idx(0x280)) {
                    *w &= !value;
                }
            }
            (0x300..=0x37c, 4) => {
                if let Some(w) = self.active.get_mut(idx(0x300)) {
                    *w |= value;
                }
            }
            (0x380..=0x3fc, 4) => {
                if let Some(w) = self.active.get_mut(idx(0x380)) {
                    *w &= !value;
                }
            }
            (0x400..=0x7fb, 1 | 4) => {
                for k in 0..usize::from(size) {
                    if let Some(p) = self.priority.get_mut(o - 0x400 + k) {
                        *p = (value >> (8 * k)) as u8;
                    }
                }
            }
            // Targets: one CPU, nothing to route.
            (0x800..=0xbfb, 1 | 4) => {}
            (0xc00..=0xcfc, 4) => {
                let i = idx(0xc00);
                // SGIs' configuration is read-only.
                if i > 0
                    && let Some(w) = self.config.get_mut(i)
                {
                    *w = value;
                }
            }
            // SGIR: one CPU, no other to signal.
            (0xf00, 4) => {}
            _ => self.bad_accesses += 1,
        }
        let mut out = heapless::Vec::new();
        while let Some(inj) = self.next_for_free_lr() {
            // Cannot fail: at most LIST_REGS free list registers.
            let _ = out.push(inj);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Linux's gic_dist_init, in short: off, configure, enable, on.
    fn linux_init(d: &mut Distributor) {
        d.write(0x000, 4, 0);
        assert_eq!(d.read(0x004, 4) & 0x1f, 3, "128 IRQs");
        for i in (32..IRQS).step_by(4) {
            d.write(0x400 + i as u64, 4, 0xa0a0_a0a0);
        }
        d.write(0x000, 4, 1);
    }

    #[test]
    fn an_irq_goes_in_once_enabled_and_the_next_when_its_lr_frees() {
        let mut d = Distributor::new();
        linux_init(&mut d);
        // The virtual timer (PPI 27) before the guest enabled it: pending.
        assert_eq!(d.raise(27), None);
        let inj = d.write(0x100, 4, 1 << 27);
        assert_eq!(inj.as_slice(), [Inject { irq: 27, lr: 0 }]);
        assert_eq!(d.priority(27), 0);
        assert_eq!(d.priority(40), 0xa0);
        // Raised again while in an LR: one delivery.
        assert_eq!(d.raise(27), None);
        // Fill the other three LRs with SPIs, the fifth waits.
        d.write(0x104, 4, 0xffff_ffff);
        for (k, irq) in [33u16, 40, 47].into_iter().enumerate() {
            assert_eq!(
                d.raise(irq),
                Some(Inject {
                    irq,
                    lr: k as u8 + 1
                })
            );
        }
        assert_eq!(d.raise(48), None);
        assert_eq!(
            d.maintenance(2),
            (Some(40), Some(Inject { irq: 48, lr: 2 }))
        );
        assert_eq!(d.maintenance(0), (Some(27), None));
        // A maintenance fault for an LR the VMM never filled.
        assert_eq!(d.maintenance(3).0, Some(47));
        assert_eq!(d.maintenance(3), (None, None));
        assert_eq!(d.maintenance(u64::MAX), (None, None));
    }

    #[test]
    fn disabled_irqs_and_a_disabled_distributor_hold_back() {
        let mut d = Distributor::new();
        d.write(0x104, 4, 1 << 1); // enable SPI 33
        assert_eq!(d.raise(33), None, "distributor off");
        let inj = d.write(0x000, 4, 1);
        assert_eq!(inj.as_slice(), [Inject { irq: 33, lr: 0 }]);
        d.maintenance(0);
        d.write(0x184, 4, 1 << 1); // disable it
        assert_eq!(d.raise(33), None);
        assert_eq!(d.read(0x204, 4) & 2, 2, "pending shows");
        // SGIs cannot be disabled.
        d.write(0x180, 4, 0xffff_ffff);
        assert_eq!(d.read(0x100, 4), 0xffff);
    }

    #[test]
    fn unknown_registers_are_counted_not_trusted() {
        let mut d = Distributor::new();
        assert_eq!(d.read(0xf00, 4), 0);
        d.write(0x004, 4, 0xffff_ffff);
        d.write(0x101, 2, 1);
        assert_eq!(d.bad_accesses, 3);
        assert_eq!(d.read(0x004, 4) & 0x1f, 3);
        assert_eq!(d.read(0xfe8, 4), 0x20);
    }

    proptest! {
        /// Any accesses and events: never a panic, an LR never holds two
        /// IRQs, and every injection names a free LR and an enabled IRQ.
        #[test]
        fn any_guest_writes_keep_the_lrs_consistent(
            ops in proptest::collection::vec((0u8..4, 0u64..0x1000, any::<u32>(), 0u16..140), 1..300)
        ) {
            let mut d = Distributor::new();
            let mut held: [Option<u16>; LIST_REGS] = [None; LIST_REGS];
            let check = |d: &Distributor, inj: Inject, held: &mut [Option<u16>; LIST_REGS]| {
                assert!(held[usize::from(inj.lr)].is_none());
                assert!(d.deliverable(usize::from(inj.irq)));
                held[usize::from(inj.lr)] = Some(inj.irq);
            };
            for (op, off, v, irq) in ops {
                match op {
                    0 => { let _ = d.read(off & !3, 4); }
                    1 => for inj in d.write(off & !3, 4, v) { check(&d, inj, &mut held) },
                    2 => if let Some(inj) = d.raise(irq) { check(&d, inj, &mut held) },
                    _ => {
                        let lr = u64::from(irq) % 5;
                        let (gone, next) = d.maintenance(lr);
                        if let Some(l) = held.get_mut(lr as usize) {
                            prop_assert_eq!(gone, l.take());
                        }
                        if let Some(inj) = next { check(&d, inj, &mut held) }
                    }
                }
                let mut irqs: std::vec::Vec<u16> = held.iter().flatten().copied().collect();
                irqs.sort_unstable();
                irqs.dedup();
                prop_assert_eq!(irqs.len(), held.iter().flatten().count());
            }
        }
    }
}
