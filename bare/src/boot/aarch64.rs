//! aarch64, QEMU `virt` (`-cpu cortex-a53 -m 2G -kernel`): entered at EL1
//! with the MMU off. The stub sets the stack, enables FP/SIMD (the
//! aarch64-unknown-none target uses it), zeroes `.bss`, turns on an
//! identity map with caches (1 GiB blocks: the first GiB is devices, the
//! rest normal memory), and calls `bare_main`.
//!
//! Interrupts are polled, never taken: PSTATE.I stays masked, and WFI still
//! wakes when the GICv2 signals one (ARM ARM D1.16.2: WFI wake-up events do
//! not depend on PSTATE masking). The poll reads GICC_IAR, masks the
//! interrupt at the distributor, EOIs it, and reports it; the PD's
//! `irq_ack` unmasks it, so a level interrupt comes back only after the PD
//! served it (seL4's semantics).

use super::mmio::{read32, write32};
use core::arch::{asm, global_asm};

global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    // Entered at EL2 (`-M virt,virtualization=on`): run the image at EL1
    // anyway, AArch64, with EL1 access to the physical timer and counter.
    "    mrs x20, CurrentEL",
    "    cmp x20, #(2 << 2)",
    "    b.ne 0f",
    "    mov x0, #(1 << 31)",
    "    msr hcr_el2, x0",
    "    mov x0, #3",
    "    msr cnthctl_el2, x0",
    "    msr cntvoff_el2, xzr",
    "    mov x0, #0x3c5",
    "    msr spsr_el2, x0",
    "    adr x0, 0f",
    "    msr elr_el2, x0",
    "    eret",
    "0:  msr daifset, #0xf",
    "    adrp x0, __stack_top",
    "    add x0, x0, :lo12:__stack_top",
    "    mov sp, x0",
    "    mov x0, #(3 << 20)",
    "    msr cpacr_el1, x0",
    "    isb",
    "    adrp x0, __bss_start",
    "    add x0, x0, :lo12:__bss_start",
    "    adrp x1, __bss_end",
    "    add x1, x1, :lo12:__bss_end",
    "1:  cmp x0, x1",
    "    b.hs 2f",
    "    str xzr, [x0], #8",
    "    b 1b",
    "2:  adrp x0, BARE_BOOT_EL",
    "    str x20, [x0, :lo12:BARE_BOOT_EL]",
    "    bl bare_mmu_on",
    "    bl bare_main",
    "3:  wfi",
    "    b 3b",
);

/// CurrentEL at entry (EL << 2): PSCI goes through SMC when QEMU emulates
/// EL2 (its PSCI conduit is then SMC), else through HVC.
#[unsafe(no_mangle)]
static mut BARE_BOOT_EL: u64 = 0;

/// The level-1 table: 512 entries of 1 GiB.
#[repr(C, align(4096))]
struct Table([u64; 512]);

static mut L1: Table = Table([0; 512]);

const PL011: usize = 0x0900_0000;
const GICD: usize = 0x0800_0000;
const GICC: usize = 0x0801_0000;

/// Identity map: MAIR attr 0 = Device-nGnRnE, attr 1 = Normal write-back.
#[unsafe(no_mangle)]
extern "C" fn bare_mmu_on() {
    const BLOCK: u64 = 0b01;
    const AF: u64 = 1 << 10;
    const INNER_SHAREABLE: u64 = 3 << 8;
    const XN: u64 = (1 << 54) | (1 << 53);
    let l1 = &raw mut L1;
    for i in 0..512u64 {
        let addr = i << 30;
        let desc = if i == 0 {
            addr | BLOCK | AF | XN
        } else {
            addr | BLOCK | AF | INNER_SHAREABLE | (1 << 2)
        };
        // SAFETY: runs once at boot, before anything else uses L1.
        unsafe { (*l1).0[i as usize] = desc };
    }
    let mair: u64 = 0xff << 8;
    // T0SZ = 25 (39-bit VA, walks start at level 1), inner/outer write-back
    // walks, inner shareable, 4 KiB granule, TTBR1 walks off (EPD1),
    // IPS = 40 bits.
    let tcr: u64 = 25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32);
    // SAFETY: the standard EL1 MMU enable sequence; the table maps every
    // address the image uses to itself, so execution continues unchanged.
    unsafe {
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "dsb ish",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            "mrs {t}, sctlr_el1",
            "orr {t}, {t}, #1",
            "orr {t}, {t}, #(1 << 2)",
            "orr {t}, {t}, #(1 << 12)",
            "bic {t}, {t}, #(1 << 1)",
            "msr sctlr_el1, {t}",
            "isb",
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            ttbr = in(reg) l1 as u64,
            t = out(reg) _,
            options(nostack),
        );
    }
}

/// A register of QEMU virt's devices (PL011, GICv2 distributor and CPU
/// interface), identity mapped as device memory.
fn dev_read(addr: usize) -> u32 {
    // SAFETY: only called with the fixed device register addresses above.
    unsafe { read32(addr) }
}

fn dev_write(addr: usize, v: u32) {
    // SAFETY: as in `dev_read`; the writes configure devices only this
    // file drives.
    unsafe { write32(addr, v) }
}

/// QEMU virt: PL011, GICv2, PSCI through HVC.
#[derive(Debug)]
pub struct Virt;

static VIRT: Virt = Virt;

/// The platform, with the GIC's distributor and CPU interface enabled.
pub fn platform() -> &'static Virt {
    // GICD_CTLR on, GICC_PMR lets every priority through, GICC_CTLR on.
    dev_write(GICD, 1);
    dev_write(GICC + 0x4, 0xff);
    dev_write(GICC, 1);
    &VIRT
}

impl pd::bare::Platform for Virt {
    fn write(&self, bytes: &[u8]) {
        for &b in bytes {
            // FR.TXFF: wait while the transmit FIFO is full, then DR.
            while dev_read(PL011 + 0x18) & (1 << 5) != 0 {}
            dev_write(PL011, u32::from(b));
        }
    }

    fn configure(&self, irq: u32, level: bool) {
        if irq >= 1020 {
            return;
        }
        let i = irq as usize;
        if i >= 32 {
            // GICD_ITARGETSR (a byte per SPI): to CPU 0.
            let t = GICD + 0x800 + (i & !3);
            let shift = 8 * (i % 4);
            dev_write(t, (dev_read(t) & !(0xff << shift)) | (1 << shift));
        }
        // GICD_ICFGR: two bits per interrupt, the upper one = edge.
        let cfg = GICD + 0xc00 + (i / 16) * 4;
        let bit = 2 * (i % 16) + 1;
        let v = dev_read(cfg);
        dev_write(
            cfg,
            if level {
                v & !(1 << bit)
            } else {
                v | (1 << bit)
            },
        );
    }

    fn unmask(&self, irq: u32) {
        if irq < 1020 {
            // GICD_ISENABLERn: write-one-to-set for this interrupt.
            dev_write(GICD + 0x100 + (irq as usize / 32) * 4, 1 << (irq % 32));
        }
    }

    fn poll(&self, block: bool, fired: &mut dyn FnMut(u32)) {
        if block {
            // SAFETY: waits for an interrupt; nothing else.
            unsafe { asm!("dsb sy", "wfi", options(nostack)) };
        }
        loop {
            // GICC_IAR: acknowledges the highest-priority pending interrupt
            // (1023 when none).
            let iar = dev_read(GICC + 0xc);
            let id = iar & 0x3ff;
            if id >= 1020 {
                break;
            }
            // GICD_ICENABLERn masks it until the PD acks; GICC_EOIR ends it
            // so others of the same priority can be acknowledged.
            dev_write(GICD + 0x180 + (id as usize / 32) * 4, 1 << (id % 32));
            dev_write(GICC + 0x10, iar);
            fired(id);
        }
    }

    fn halt(&self) -> ! {
        let boot_el = &raw const BARE_BOOT_EL;
        // SAFETY: written once by the boot stub, before any Rust code.
        let el2 = unsafe { boot_el.read() } == 2 << 2;
        loop {
            if el2 {
                // SAFETY: PSCI SYSTEM_OFF, which QEMU virt implements itself
                // (no firmware); QEMU exits.
                unsafe { asm!("smc #0", in("x0") 0x8400_0008u64, options(nostack)) };
            } else {
                // SAFETY: as above, through HVC.
                unsafe { asm!("hvc #0", in("x0") 0x8400_0008u64, options(nostack)) };
            }
        }
    }
}
