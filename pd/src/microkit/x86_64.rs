//! x86_64: `syscall`, number rdx, cap/badge rdi, msginfo rsi, MR0-3 r10 r8 r9
//! r15, reply r12, NBSendRecv destination r13; rcx, r11 and rbx are
//! clobbered (DESIGN §4).

// The Microkit tool sets rsp; align it so that rsp + 8 is 16-byte aligned at
// `__pd_main`'s entry, as the SysV ABI expects after a `call`.
core::arch::global_asm!(
    ".section .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    and rsp, -16",
    "    call __pd_main",
    "1:  jmp 1b",
);

/// # Safety
/// As for the aarch64 version: the seL4 ABI for `sys`, IPC buffer mapped.
pub(super) unsafe fn syscall(
    sys: i64,
    x0: u64,
    info: u64,
    mrs: &mut [u64; 4],
    reply: u64,
    dest: u64,
) -> (u64, u64) {
    let (badge, out_info);
    // SAFETY: the caller upholds the ABI. libsel4 passes the user stack
    // pointer in rbx across `syscall` (the kernel returns with rsp = rbx);
    // rbx is reserved by LLVM, so it is saved in {save}, which is neither an
    // operand nor rcx/r11 and is preserved by the kernel.
    unsafe {
        core::arch::asm!(
            "mov {save}, rbx",
            "mov rbx, rsp",
            "syscall",
            "mov rsp, rbx",
            "mov rbx, {save}",
            save = out(reg) _,
            in("rdx") sys,
            inout("rdi") x0 => badge,
            inout("rsi") info => out_info,
            inout("r10") mrs[0] => mrs[0],
            inout("r8") mrs[1] => mrs[1],
            inout("r9") mrs[2] => mrs[2],
            inout("r15") mrs[3] => mrs[3],
            in("r12") reply,
            in("r13") dest,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    (badge, out_info)
}

/// Stop with a fault the monitor reports: an invalid opcode.
pub(super) fn crash() -> ! {
    loop {
        // SAFETY: `ud2` raises #UD and nothing else.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}
