//! x86_64, QEMU `pc` (`-m 2G -kernel`): booted through the PVH ELF note
//! (XEN_ELFNOTE_PHYS32_ENTRY), so SeaBIOS runs first and assigns the PCI
//! BARs. The 32-bit entry zeroes `.bss`, identity maps the low 4 GiB with
//! 2 MiB pages (RAM, the IOAPIC, HPET, LAPIC and PCI BARs), enters long mode
//! and calls `bare_main`.
//!
//! Interrupts: the IOAPIC routes pin `n` to vector 0x20 + n; the 8259 PICs
//! are masked. Interrupts are enabled only inside `poll` (`sti; hlt`), so a
//! handler never interrupts a PD: it masks its pin, records it and EOIs the
//! LAPIC; `poll` reports it; the PD's `irq_ack` unmasks the pin.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, Ordering};

global_asm!(
    // The PVH entry point (Xen's ELF note type 18), a 32-bit physical address.
    ".section .note.pvh, \"a\", @note",
    ".balign 4",
    ".long 4",
    ".long 4",
    ".long 18",
    ".asciz \"Xen\"",
    ".balign 4",
    ".long _start32",
    ".balign 4",
    // Page tables: PML4, PDPT, 4 page directories (4 GiB of 2 MiB pages).
    ".section .bss.boot, \"aw\", @nobits",
    ".balign 4096",
    "bare_pml4: .skip 4096",
    "bare_pdpt: .skip 4096",
    "bare_pd: .skip 4096 * 4",
    ".section .rodata.boot, \"a\"",
    ".balign 16",
    "bare_gdt:",
    ".quad 0",
    ".quad 0x00af9a000000ffff",
    ".quad 0x00cf92000000ffff",
    "bare_gdt_ptr:",
    ".word 23",
    ".long bare_gdt",
    ".section .text.start, \"ax\"",
    ".code32",
    ".global _start32",
    "_start32:",
    "    cli",
    "    cld",
    "    mov edi, offset __bss_start",
    "    mov ecx, offset __bss_end",
    "    sub ecx, edi",
    "    shr ecx, 2",
    "    xor eax, eax",
    "    rep stosd",
    "    mov eax, offset bare_pdpt",
    "    or eax, 3",
    "    mov dword ptr [bare_pml4], eax",
    "    xor ecx, ecx",
    "2:  mov eax, ecx",
    "    shl eax, 12",
    "    add eax, offset bare_pd",
    "    or eax, 3",
    "    mov dword ptr [bare_pdpt + ecx * 8], eax",
    "    inc ecx",
    "    cmp ecx, 4",
    "    jb 2b",
    "    xor ecx, ecx",
    "3:  mov eax, ecx",
    "    shl eax, 21",
    "    or eax, 0x83",
    "    mov dword ptr [bare_pd + ecx * 8], eax",
    "    inc ecx",
    "    cmp ecx, 2048",
    "    jb 3b",
    "    mov eax, offset bare_pml4",
    "    mov cr3, eax",
    "    mov eax, cr4",
    "    or eax, 0x20",
    "    mov cr4, eax",
    "    mov ecx, 0xc0000080",
    "    rdmsr",
    "    or eax, 0x100",
    "    wrmsr",
    "    mov eax, cr0",
    "    or eax, 0x80000001",
    "    mov cr0, eax",
    "    lgdt [bare_gdt_ptr]",
    "    mov eax, offset bare_long_mode",
    "    push 0x08",
    "    push eax",
    "    retf",
    ".code64",
    "bare_long_mode:",
    "    mov ax, 0x10",
    "    mov ds, ax",
    "    mov es, ax",
    "    mov ss, ax",
    "    xor eax, eax",
    "    mov fs, ax",
    "    mov gs, ax",
    "    lea rsp, [rip + __stack_top]",
    "    call bare_main",
    "5:  hlt",
    "    jmp 5b",
    // Interrupt stubs, 16 bytes apart: vector 0x20 + n calls bare_x86_irq(n).
    ".balign 16",
    ".global bare_irq_stubs",
    "bare_irq_stubs:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    ".balign 16",
    "    push rdi",
    "    mov edi, \\n",
    "    jmp bare_irq_common",
    ".endr",
    ".balign 16",
    "bare_irq_common:",
    "    push rax",
    "    push rcx",
    "    push rdx",
    "    push rsi",
    "    push r8",
    "    push r9",
    "    push r10",
    "    push r11",
    "    call bare_x86_irq",
    "    pop r11",
    "    pop r10",
    "    pop r9",
    "    pop r8",
    "    pop rsi",
    "    pop rdx",
    "    pop rcx",
    "    pop rax",
    "    pop rdi",
    "    iretq",
    ".balign 16",
    ".global bare_spurious",
    "bare_spurious:",
    "    iretq",
);

unsafe extern "C" {
    static bare_irq_stubs: [u8; 0];
    static bare_spurious: [u8; 0];
}

const IOAPIC: usize = 0xfec0_0000;
const LAPIC: usize = 0xfee0_0000;
const VECTOR_BASE: u32 = 0x20;
const PINS: u32 = 16;

/// Interrupt gates: vectors 0x20..0x30 and the spurious vector 0xff.
#[repr(C, align(16))]
struct Idt([[u64; 2]; 256]);

static mut IDT: Idt = Idt([[0; 2]; 256]);

/// Pins that fired since the last poll (set by the handler).
static FIRED: AtomicU32 = AtomicU32::new(0);
/// Level-triggered pins (so `unmask` programs the right trigger mode).
static LEVEL: AtomicU32 = AtomicU32::new(0);

fn gate(handler: u64) -> [u64; 2] {
    let lo = (handler & 0xffff) | (0x08 << 16) | (0x8e << 40) | ((handler >> 16) & 0xffff) << 48;
    [lo, handler >> 32]
}

fn outb(port: u16, v: u8) {
    // SAFETY: port output to the legacy devices this file programs (PIC,
    // COM1, ACPI PM); no memory is touched.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    };
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as in `outb` (COM1's line status).
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// A register of the IOAPIC or LAPIC at their standard addresses, identity
/// mapped; only this file programs them.
fn dev_write(addr: usize, v: u32) {
    // SAFETY: only called with the fixed register addresses above.
    unsafe { super::mmio::write32(addr, v) }
}

fn ioapic_write(reg: u32, v: u32) {
    // IOREGSEL then IOWIN; interrupts are off whenever this runs.
    dev_write(IOAPIC, reg);
    dev_write(IOAPIC + 0x10, v);
}

fn route(pin: u32, masked: bool) {
    let level = LEVEL.load(Ordering::Relaxed) & (1 << pin) != 0;
    let low =
        (VECTOR_BASE + pin) | if level { 1 << 15 } else { 0 } | if masked { 1 << 16 } else { 0 };
    ioapic_write(0x11 + 2 * pin, 0);
    ioapic_write(0x10 + 2 * pin, low);
}

/// Called by the interrupt stubs, interrupts off.
#[unsafe(no_mangle)]
extern "C" fn bare_x86_irq(pin: u32) {
    route(pin, true);
    FIRED.fetch_or(1 << pin, Ordering::Relaxed);
    // LAPIC EOI.
    dev_write(LAPIC + 0xb0, 0);
}

/// QEMU pc: COM1, IOAPIC + LAPIC, ACPI power off.
#[derive(Debug)]
pub struct Pc;

static PC: Pc = Pc;

/// The platform: PICs masked, IDT loaded, LAPIC on, every IOAPIC pin masked.
pub fn platform() -> &'static Pc {
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    let idt = &raw mut IDT;
    // SAFETY: the address of code in this image (never read as data).
    let stubs = unsafe { bare_irq_stubs.as_ptr() } as u64;
    // SAFETY: as above.
    let spurious = unsafe { bare_spurious.as_ptr() } as u64;
    let mut gates = [[0u64; 2]; 256];
    for n in 0..PINS as usize {
        gates[VECTOR_BASE as usize + n] = gate(stubs + 16 * n as u64);
    }
    gates[0xff] = gate(spurious);
    // SAFETY: IDT is written once here, before interrupts are ever enabled;
    // nothing else references it.
    unsafe { (*idt).0 = gates };
    let ptr: [u64; 2] = [(4096 - 1) | ((idt as u64) << 16), (idt as u64) >> 48];
    // SAFETY: lidt of a 10-byte descriptor (limit 4095, base IDT).
    unsafe { asm!("lidt [{}]", in(reg) ptr.as_ptr(), options(nostack)) };
    for pin in 0..PINS {
        route(pin, true);
    }
    // LAPIC spurious-vector register: software enable, vector 0xff; task
    // priority 0 accepts every vector.
    dev_write(LAPIC + 0xf0, 0x1ff);
    dev_write(LAPIC + 0x80, 0);
    // SeaBIOS leaves its banner without a newline: start the PDs' lines on
    // a line of their own.
    pd::bare::Platform::write(&PC, b"\n");
    &PC
}

impl pd::bare::Platform for Pc {
    fn write(&self, bytes: &[u8]) {
        for &b in bytes {
            while inb(0x3fd) & 0x20 == 0 {}
            outb(0x3f8, b);
        }
    }

    fn configure(&self, irq: u32, level: bool) {
        if irq < PINS {
            if level {
                LEVEL.fetch_or(1 << irq, Ordering::Relaxed);
            } else {
                LEVEL.fetch_and(!(1 << irq), Ordering::Relaxed);
            }
            route(irq, true);
        }
    }

    fn unmask(&self, irq: u32) {
        if irq < PINS {
            route(irq, false);
        }
    }

    fn poll(&self, block: bool, fired: &mut dyn FnMut(u32)) {
        if block && FIRED.load(Ordering::Relaxed) == 0 {
            // SAFETY: `sti; hlt` is atomic against interrupts (STI's shadow
            // covers HLT), so one arriving now still wakes us; handlers run
            // on this stack and return here.
            unsafe { asm!("sti", "hlt", "cli", options(nostack)) };
        } else {
            // SAFETY: one instruction with interrupts on lets pending ones in.
            unsafe { asm!("sti", "nop", "cli", options(nostack)) };
        }
        let mut bits = FIRED.swap(0, Ordering::Relaxed);
        while bits != 0 {
            let pin = bits.trailing_zeros();
            bits &= bits - 1;
            fired(pin);
        }
    }

    fn halt(&self) -> ! {
        // SAFETY: ACPI PM1a control of QEMU pc (SeaBIOS puts PM at 0x600):
        // SLP_EN with S5 powers off; then stop anyway.
        unsafe {
            asm!("out dx, ax", in("dx") 0x604u16, in("ax") 0x2000u16, options(nomem, nostack));
        }
        loop {
            // SAFETY: stop the CPU with interrupts off.
            unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
        }
    }
}
