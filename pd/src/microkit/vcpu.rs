//! The vCPU invocations a VMM makes (aarch64, hypervisor kernel), as
//! libmicrokit's `microkit_vcpu_*` make them. Every label comes from the
//! SDK of the config being built (`super::label`); a kernel error is
//! returned as its seL4 error code, never a panic.

use super::sys::{get_mr, set_mr};
use super::{SYS_CALL, label, syscall};
use crate::channel::MessageInfo;
use crate::vm::{Child, USER_CONTEXT_WORDS, UserContext};

/// The VMM's capabilities (Microkit 2.3.0): each vCPU's TCB and VCPU
/// object, and the VMM's own VSpace (for cache maintenance).
const BASE_TCB_CAP: u64 = 266;
const BASE_VCPU_CAP: u64 = 330;
const VSPACE_CAP: u64 = 3;

/// An invocation that failed: the seL4 error code of its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sel4Error(pub u64);

impl core::fmt::Display for Sel4Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "seL4 error {}", self.0)
    }
}

fn invoke(cap: u64, label: u64, mrs: &[u64]) -> Result<(), Sel4Error> {
    for (i, v) in mrs.iter().enumerate() {
        set_mr(i, *v);
    }
    let info = MessageInfo::new(label, mrs.len());
    let (_, out) = syscall(SYS_CALL, cap, info.into_raw(), 0, 0);
    match MessageInfo::from_raw(out).label() {
        0 => Ok(()),
        e => Err(Sel4Error(e)),
    }
}

fn tcb(c: Child) -> u64 {
    BASE_TCB_CAP + u64::from(c.id())
}

fn vcpu(c: Child) -> u64 {
    BASE_VCPU_CAP + u64::from(c.id())
}

/// Write all of `ctx` into the vCPU's TCB; `resume`: and start it.
pub fn write_registers(c: Child, ctx: &UserContext, resume: bool) -> Result<(), Sel4Error> {
    let mut mrs = [0u64; 2 + USER_CONTEXT_WORDS];
    // resume_target | arch_flags << 8, count, then the registers.
    mrs[0] = u64::from(resume);
    mrs[1] = USER_CONTEXT_WORDS as u64;
    mrs[2..].copy_from_slice(&ctx.regs);
    invoke(tcb(c), label::TCBWRITEREGISTERS, &mrs)
}

/// Read all of the vCPU's registers.
pub fn read_registers(c: Child) -> Result<UserContext, Sel4Error> {
    // suspend_source | arch_flags << 8, count.
    invoke(
        tcb(c),
        label::TCBREADREGISTERS,
        &[0, USER_CONTEXT_WORDS as u64],
    )?;
    let mut ctx = UserContext::default();
    for (i, r) in ctx.regs.iter_mut().enumerate() {
        *r = get_mr(i);
    }
    Ok(ctx)
}

/// Start the vCPU at `pc`, its other registers as they are
/// (`microkit_vcpu_restart`: one register written, the PC, first in
/// `seL4_UserContext`).
pub fn restart(c: Child, pc: u64) -> Result<(), Sel4Error> {
    // resume_target | arch_flags << 8, count, then the registers.
    invoke(tcb(c), label::TCBWRITEREGISTERS, &[1, 1, pc])
}

/// Stop the vCPU (`microkit_vcpu_stop`).
pub fn stop(c: Child) -> Result<(), Sel4Error> {
    invoke(tcb(c), label::TCBSUSPEND, &[])
}

/// Put virtual IRQ `virq` into list register `lr` of the vCPU's virtual
/// GIC (`microkit_vcpu_arm_inject_irq`). A pending list register is
/// overwritten without a word: the caller shadows them.
pub fn inject_irq(c: Child, virq: u16, priority: u8, group: u8, lr: u8) -> Result<(), Sel4Error> {
    let mr0 =
        u64::from(virq) | u64::from(priority) << 16 | u64::from(group) << 24 | u64::from(lr) << 32;
    invoke(vcpu(c), label::ARMVCPUINJECTIRQ, &[mr0])
}

/// Let the kernel deliver virtual PPI `irq` again (after a VPPIEvent).
pub fn ack_vppi(c: Child, irq: u64) -> Result<(), Sel4Error> {
    invoke(vcpu(c), label::ARMVCPUACKVPPI, &[irq])
}

/// Read the vCPU's system register `reg` (`seL4_VCPUReg`).
pub fn read_vcpu_reg(c: Child, reg: u64) -> Result<u64, Sel4Error> {
    invoke(vcpu(c), label::ARMVCPUREADREG, &[reg])?;
    Ok(get_mr(0))
}

/// Write the vCPU's system register `reg`.
pub fn write_vcpu_reg(c: Child, reg: u64, value: u64) -> Result<(), Sel4Error> {
    invoke(vcpu(c), label::ARMVCPUWRITEREG, &[reg, value])
}

/// Clean and invalidate the data cache to the point of coherency over
/// `[start, end)` of this PD's address space: what the VMM copied into
/// guest RAM must reach memory before a guest with its MMU and caches off
/// reads it.
pub fn clean_invalidate_data(start: u64, end: u64) -> Result<(), Sel4Error> {
    invoke(
        VSPACE_CAP,
        label::ARMVSPACECLEANINVALIDATE_DATA,
        &[start, end],
    )
}

/// Make instruction fetches see what was written over `[start, end)`.
pub fn unify_instruction(start: u64, end: u64) -> Result<(), Sel4Error> {
    invoke(VSPACE_CAP, label::ARMVSPACEUNIFY_INSTRUCTION, &[start, end])
}
