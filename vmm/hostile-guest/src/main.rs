//! A hostile guest for the VMM's virtio-balloon (issue 14). It runs at EL1
//! with its MMU off, straight from the start of the VM's RAM, and drives the
//! device as no driver should:
//!
//! 1. `outside`: a report of 2 MiB at 0x80000000, outside its RAM;
//! 2. `straddle`: a report running past the end of its RAM;
//! 3. `flood`: eight reports at once (the memserver holds four per VM);
//! 4. `past_ring`: an available-ring entry naming descriptor 200 of 8;
//! 5. `loop`: a chain whose descriptors point at each other;
//! 6. `deflate_unheld`: a deflate of four pages it never inflated (the
//!    memserver refuses it; the VMM then gives the chain back);
//! 7. `inflate_twice`: the same page inflated in two chains at once (the
//!    memserver takes the first and refuses the second), then deflated.
//!
//! Each runs on a freshly reset device and gets its answer on the console:
//! `returned` (the buffers came back in the used ring), `needs_reset` (the
//! device set DEVICE_NEEDS_RESET), or `nothing` (neither within 2 s of the
//! virtual counter). Then one line
//! `HOSTILE-VM|INFO: done ...` with every answer, and PSCI SYSTEM_OFF.
//! The VMM must refuse each without touching anything but this VM, and
//! the memserver must refuse what gets that far; the run's verdict
//! (`tools::sel4`, run `hostile-vm`) checks both sides.
//!
//! With the MMU off every access is to Device memory: every access here is
//! a naturally aligned volatile one, and the guest keeps no statics (its
//! rings live at fixed addresses in its RAM).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
mod guest {
    use core::fmt::Write;

    core::arch::global_asm!(
        ".section .text.start, \"ax\"",
        ".global _start",
        "_start:",
        "    ldr x1, =__stack_top",
        "    mov sp, x1",
        "    bl hostile_main",
        "1:  wfi",
        "    b 1b",
    );

    /// QEMU virt's PL011 (passed through by the VMM).
    const UART: usize = 0x0900_0000;
    /// The VMM's virtio-balloon (`sdf::check::VMM_BALLOON_MMIO`).
    const MMIO: usize = 0x0a00_0000;
    /// The VM's RAM (systems/linux-vm.xml).
    const RAM: u64 = 0x4000_0000;
    const RAM_SIZE: u64 = 0x1000_0000;
    /// The reporting queue's memory: descriptors, then the available
    /// ring, then the used ring, 1 MiB into RAM (past this code).
    const DESC: u64 = RAM + 0x10_0000;
    const AVAIL: u64 = DESC + 0x1000;
    const USED: u64 = DESC + 0x2000;
    /// Queue size used.
    const QSIZE: u16 = 8;
    /// Where the flood's reports point: RAM this guest never uses.
    const FLOOD_BASE: u64 = RAM + 0x0800_0000;

    mod reg {
        pub const STATUS: usize = 0x070;
        pub const DEVICE_FEATURES: usize = 0x010;
        pub const DEVICE_FEATURES_SEL: usize = 0x014;
        pub const DRIVER_FEATURES: usize = 0x020;
        pub const DRIVER_FEATURES_SEL: usize = 0x024;
        pub const QUEUE_SEL: usize = 0x030;
        pub const QUEUE_NUM: usize = 0x038;
        pub const QUEUE_READY: usize = 0x044;
        pub const QUEUE_NOTIFY: usize = 0x050;
        pub const INTERRUPT_STATUS: usize = 0x060;
        pub const INTERRUPT_ACK: usize = 0x064;
        pub const QUEUE_DESC_LOW: usize = 0x080;
        pub const QUEUE_DESC_HIGH: usize = 0x084;
        pub const QUEUE_DRIVER_LOW: usize = 0x090;
        pub const QUEUE_DRIVER_HIGH: usize = 0x094;
        pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
        pub const QUEUE_DEVICE_HIGH: usize = 0x0a4;
    }
    const NEEDS_RESET: u32 = 64;
    const F_REPORTING: u32 = 1 << 5;
    /// With VERSION_1 and REPORTING only, the reporting queue is 2 (after
    /// inflate 0 and deflate 1).
    const REPORTING_QUEUE: u32 = 2;
    const INFLATE_QUEUE: u32 = 0;
    const DEFLATE_QUEUE: u32 = 1;
    /// PFN arrays for the inflate and deflate attacks.
    const ARRAY: u64 = DESC + 0x3000;
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    fn r32(off: usize) -> u32 {
        // SAFETY: the device's register window, emulated by the VMM; an
        // aligned 32-bit load.
        unsafe { ((MMIO + off) as *const u32).read_volatile() }
    }
    fn w32(off: usize, v: u32) {
        // SAFETY: as in `r32`, a store.
        unsafe { ((MMIO + off) as *mut u32).write_volatile(v) }
    }
    fn mem_w16(a: u64, v: u16) {
        // SAFETY: `a` is an aligned address in this VM's own RAM, inside
        // the queue area no code or stack uses.
        unsafe { (a as *mut u16).write_volatile(v) }
    }
    fn mem_r16(a: u64) -> u16 {
        // SAFETY: as in `mem_w16`, a load.
        unsafe { (a as *const u16).read_volatile() }
    }
    fn mem_w32(a: u64, v: u32) {
        // SAFETY: as in `mem_w16`.
        unsafe { (a as *mut u32).write_volatile(v) }
    }
    fn mem_w64(a: u64, v: u64) {
        // SAFETY: as in `mem_w16`.
        unsafe { (a as *mut u64).write_volatile(v) }
    }

    struct Uart;
    impl Write for Uart {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for b in s.bytes() {
                // SAFETY: the PL011's data register, passed through.
                unsafe { (UART as *mut u32).write_volatile(u32::from(b)) };
            }
            Ok(())
        }
    }

    fn counter() -> (u64, u64) {
        let (c, f): (u64, u64);
        // SAFETY: reads of the virtual counter and its rate, allowed at EL1.
        unsafe {
            core::arch::asm!("isb", "mrs {}, cntvct_el0", out(reg) c, options(nomem, nostack));
            core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack));
        }
        (c, f)
    }

    /// Reset the device and bring the reporting queue up; `false` when the
    /// device does not offer what a balloon with reporting offers.
    fn setup() -> bool {
        setup_queue(REPORTING_QUEUE)
    }

    /// [`setup`] with queue `q` up instead.
    fn setup_queue(q: u32) -> bool {
        w32(reg::STATUS, 0);
        w32(reg::STATUS, 1 | 2);
        w32(reg::DEVICE_FEATURES_SEL, 0);
        let lo = r32(reg::DEVICE_FEATURES);
        w32(reg::DEVICE_FEATURES_SEL, 1);
        let hi = r32(reg::DEVICE_FEATURES);
        if lo & F_REPORTING == 0 || hi & 1 == 0 {
            return false;
        }
        w32(reg::DRIVER_FEATURES_SEL, 0);
        w32(reg::DRIVER_FEATURES, F_REPORTING);
        w32(reg::DRIVER_FEATURES_SEL, 1);
        w32(reg::DRIVER_FEATURES, 1);
        w32(reg::STATUS, 1 | 2 | 8);
        if r32(reg::STATUS) & 8 == 0 {
            return false;
        }
        // Fresh rings: indices 0.
        for a in (DESC..USED + 0x1000).step_by(8) {
            mem_w64(a, 0);
        }
        w32(reg::QUEUE_SEL, q);
        w32(reg::QUEUE_NUM, u32::from(QSIZE));
        w32(reg::QUEUE_DESC_LOW, DESC as u32);
        w32(reg::QUEUE_DESC_HIGH, 0);
        w32(reg::QUEUE_DRIVER_LOW, AVAIL as u32);
        w32(reg::QUEUE_DRIVER_HIGH, 0);
        w32(reg::QUEUE_DEVICE_LOW, USED as u32);
        w32(reg::QUEUE_DEVICE_HIGH, 0);
        w32(reg::QUEUE_READY, 1);
        w32(reg::STATUS, 1 | 2 | 4 | 8);
        r32(reg::QUEUE_READY) == 1
    }

    fn desc(i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = DESC + u64::from(i) * 16;
        mem_w64(d, addr);
        mem_w32(d + 8, len);
        mem_w16(d + 12, flags);
        mem_w16(d + 14, next);
    }

    /// Offer `heads` on the available ring and notify.
    fn offer(heads: &[u16]) {
        offer_on(REPORTING_QUEUE, heads);
    }

    /// [`offer`] on queue `q`.
    fn offer_on(q: u32, heads: &[u16]) {
        let idx = mem_r16(AVAIL + 2);
        for (k, h) in heads.iter().enumerate() {
            let slot = (idx.wrapping_add(k as u16) % QSIZE) as u64;
            mem_w16(AVAIL + 4 + 2 * slot, *h);
        }
        mem_w16(AVAIL + 2, idx.wrapping_add(heads.len() as u16));
        w32(reg::QUEUE_NOTIFY, q);
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Answer {
        Returned,
        NeedsReset,
        Nothing,
    }

    impl Answer {
        fn name(self) -> &'static str {
            match self {
                Answer::Returned => "returned",
                Answer::NeedsReset => "needs_reset",
                Answer::Nothing => "nothing",
            }
        }
    }

    /// Wait until the used ring has `want` entries (since setup), or the
    /// device needs a reset, for at most 2 s; acknowledge interrupts.
    fn wait(want: u16) -> Answer {
        let (start, freq) = counter();
        loop {
            let isr = r32(reg::INTERRUPT_STATUS);
            if isr != 0 {
                w32(reg::INTERRUPT_ACK, isr);
            }
            if r32(reg::STATUS) & NEEDS_RESET != 0 {
                return Answer::NeedsReset;
            }
            if mem_r16(USED + 2) >= want {
                return Answer::Returned;
            }
            if counter().0.wrapping_sub(start) > 2 * freq {
                return Answer::Nothing;
            }
        }
    }

    const MIB2: u32 = 0x20_0000;

    /// Run `f` on a freshly reset device; `Nothing` when it would not
    /// come up.
    fn attack(f: impl FnOnce() -> Answer) -> Answer {
        attack_on(REPORTING_QUEUE, f)
    }

    /// [`attack`] on queue `q`.
    fn attack_on(q: u32, f: impl FnOnce() -> Answer) -> Answer {
        if setup_queue(q) { f() } else { Answer::Nothing }
    }

    /// A PFN array at [`ARRAY`] of `n` pages from `base`, as chain `head`.
    fn pfn_chain(head: u16, base: u64, n: u32) {
        for k in 0..n {
            mem_w32(
                ARRAY + u64::from(k) * 4,
                ((base >> 12) + u64::from(k)) as u32,
            );
        }
        desc(head, ARRAY, 4 * n, 0, 0);
    }

    #[unsafe(no_mangle)]
    extern "C" fn hostile_main() -> ! {
        let mut out = Uart;
        let _ = writeln!(out, "HOSTILE-VM|INFO: start");
        if !setup() {
            let _ = writeln!(
                out,
                "HOSTILE-VM|ERROR: the device is not a balloon with reporting"
            );
            off();
        }
        // Each attack on a freshly reset device, so one's answer does not
        // decide the next's.
        // 1: outside RAM.
        let outside = attack(|| {
            desc(0, 0x8000_0000, MIB2, WRITE, 0);
            offer(&[0]);
            wait(1)
        });
        // 2: straddling the end of RAM.
        let straddle = attack(|| {
            desc(0, RAM + RAM_SIZE - 0x10_0000, MIB2, WRITE, 0);
            offer(&[0]);
            wait(1)
        });
        // 3: a flood of reports inside RAM, more than the memserver holds.
        let flood = attack(|| {
            let mut heads = [0u16; 6];
            for (k, h) in heads.iter_mut().enumerate() {
                *h = k as u16;
                desc(*h, FLOOD_BASE + k as u64 * u64::from(MIB2), MIB2, WRITE, 0);
            }
            offer(&heads);
            wait(6)
        });
        let flood_back = mem_r16(USED + 2);
        // 4: a descriptor past the ring.
        let past_ring = attack(|| {
            offer(&[200]);
            wait(1)
        });
        // 5: a chain that loops.
        let looped = attack(|| {
            desc(0, FLOOD_BASE, MIB2, WRITE | NEXT, 1);
            desc(1, FLOOD_BASE + u64::from(MIB2), MIB2, WRITE | NEXT, 0);
            offer(&[0]);
            wait(1)
        });
        // 6: a deflate of pages never inflated.
        let deflate_unheld = attack_on(DEFLATE_QUEUE, || {
            pfn_chain(0, FLOOD_BASE, 4);
            offer_on(DEFLATE_QUEUE, &[0]);
            wait(1)
        });
        // 7: one page inflated by two chains at once, then deflated.
        let inflate_twice = attack_on(INFLATE_QUEUE, || {
            pfn_chain(0, FLOOD_BASE, 1);
            desc(1, ARRAY, 4, 0, 0);
            offer_on(INFLATE_QUEUE, &[0, 1]);
            wait(2)
        });
        let deflate_held = attack_on(DEFLATE_QUEUE, || {
            pfn_chain(0, FLOOD_BASE, 1);
            offer_on(DEFLATE_QUEUE, &[0]);
            wait(1)
        });
        let _ = writeln!(
            out,
            "HOSTILE-VM|INFO: done outside={} straddle={} flood={} flood_back={flood_back}/6 past_ring={} loop={} deflate_unheld={} inflate_twice={} deflate_held={}",
            outside.name(),
            straddle.name(),
            flood.name(),
            past_ring.name(),
            looped.name(),
            deflate_unheld.name(),
            inflate_twice.name(),
            deflate_held.name()
        );
        off();
    }

    /// PSCI SYSTEM_OFF over SMC.
    fn off() -> ! {
        // SAFETY: a PSCI call the VMM answers; it does not return when the
        // VMM switches the VM off.
        unsafe { core::arch::asm!("smc #0", in("x0") 0x8400_0008u64, options(nostack)) };
        loop {
            core::hint::spin_loop();
        }
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
        let _ = writeln!(Uart, "HOSTILE-VM|ERROR: panic");
        off()
    }
}

/// Built for the host (the workspace's tests and lints), it is nothing.
#[cfg(not(target_os = "none"))]
fn main() {}
