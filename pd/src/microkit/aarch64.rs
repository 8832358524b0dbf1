//! aarch64: `svc #0`, syscall number in x7, cap/badge x0, msginfo x1,
//! MR0-3 x2-x5, reply cap x6, NBSendRecv destination x8 (DESIGN §4).

// The Microkit tool sets sp (the stack ends a guard page below the IPC
// buffer); keep it 16-byte aligned as AAPCS64 requires, and never return.
core::arch::global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    mov x9, sp",
    "    and x9, x9, #~0xf",
    "    mov sp, x9",
    "    bl __pd_main",
    "1:  b 1b",
);

/// # Safety
/// The caller must follow the seL4 ABI for `sys`: the kernel may read and
/// write the IPC buffer, which must be mapped.
pub(super) unsafe fn syscall(
    sys: i64,
    x0: u64,
    info: u64,
    mrs: &mut [u64; 4],
    reply: u64,
    dest: u64,
) -> (u64, u64) {
    let (badge, out_info);
    // SAFETY: the caller upholds the ABI; registers are declared exactly as
    // the kernel reads and writes them, and memory may change (no `nomem`).
    unsafe {
        core::arch::asm!(
            "svc #0",
            in("x7") sys,
            inout("x0") x0 => badge,
            inout("x1") info => out_info,
            inout("x2") mrs[0] => mrs[0],
            inout("x3") mrs[1] => mrs[1],
            inout("x4") mrs[2] => mrs[2],
            inout("x5") mrs[3] => mrs[3],
            in("x6") reply,
            in("x8") dest,
            options(nostack),
        );
    }
    (badge, out_info)
}

/// Stop with a fault the monitor reports: an undefined instruction.
pub(super) fn crash() -> ! {
    loop {
        // SAFETY: `udf` raises an undefined-instruction fault and nothing else.
        unsafe { core::arch::asm!("udf #0", options(nomem, nostack)) };
    }
}
