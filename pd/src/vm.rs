//! What a VMM needs of the runtime (seL4 aarch64 with hypervisor support,
//! Microkit 2.3.0): the faults of its VM's vCPUs, decoded, and the vCPU
//! invocations, shaped like sel4-microkit's `Child` and libmicrokit's
//! `microkit_vcpu_*`.
//!
//! A vCPU's fault arrives on the VMM's endpoint with badge bit 62 and the
//! vCPU id in the low bits; its label and message registers say what it
//! was (seL4's `sel4/sel4_arch/constants.h`). [`Fault::decode`] turns them
//! into a [`Fault`]; the handler answers with [`FaultReply`]: resume the
//! vCPU (reply; it restarts at the faulting PC unless the VMM moved it) or
//! leave it stopped.

use core::fmt;

/// The vCPU invocations (Microkit on seL4 aarch64 only).
#[cfg(all(target_os = "none", not(feature = "bare"), target_arch = "aarch64"))]
pub use crate::microkit::vcpu::{
    Sel4Error, ack_vppi, clean_invalidate_data, inject_irq, read_registers, read_vcpu_reg, restart,
    stop, unify_instruction, write_registers, write_vcpu_reg,
};

/// A child of this PD: one of its VM's vCPUs (Microkit child id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Child(u8);

impl Child {
    pub const fn new(id: u8) -> Child {
        Child(id)
    }

    pub const fn id(self) -> u8 {
        self.0
    }
}

/// vCPU system registers for `read_vcpu_reg` / `write_vcpu_reg`
/// (`seL4_VCPUReg`, aarch64, seL4 16.0.0's `sel4_arch/constants.h`; the
/// enum has no configuration-dependent members there, and
/// `pd/tests/vcpu_reg.rs` holds these to the SDK's header when
/// `MICROKIT_SDK` is set).
pub mod vcpu_reg {
    pub const SCTLR: u64 = 0;
    /// The virtual timer's control (`CNTV_CTL_EL0`).
    pub const CNTV_CTL: u64 = 20;
    /// The virtual timer's deadline (`CNTV_CVAL_EL0`).
    pub const CNTV_CVAL: u64 = 21;
    /// The VM's virtual counter offset (`CNTVOFF_EL2`).
    pub const CNTVOFF: u64 = 22;
    /// Every name above, as the header spells it after `seL4_VCPUReg_`.
    pub const ALL: [(&str, u64); 4] = [
        ("SCTLR", SCTLR),
        ("CNTV_CTL", CNTV_CTL),
        ("CNTV_CVAL", CNTV_CVAL),
        ("CNTVOFF", CNTVOFF),
    ];
}

/// seL4 fault labels (MCS, aarch64; `seL4_Fault_tag`).
pub mod fault_label {
    pub const CAP_FAULT: u64 = 1;
    pub const UNKNOWN_SYSCALL: u64 = 2;
    pub const USER_EXCEPTION: u64 = 3;
    pub const TIMEOUT: u64 = 5;
    pub const VM_FAULT: u64 = 6;
    pub const VGIC_MAINTENANCE: u64 = 7;
    pub const VCPU_FAULT: u64 = 8;
    pub const VPPI_EVENT: u64 = 9;
}

/// How many message registers a fault carries at most (UnknownSyscall).
pub const FAULT_MRS: usize = 13;

/// A vCPU's fault, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A stage-2 fault: the guest touched `addr` (guest-physical) at `ip`;
    /// `fsr` is ESR_EL2 (its ISS decodes a data abort).
    VmFault {
        ip: u64,
        addr: u64,
        prefetch: bool,
        fsr: u64,
    },
    /// A trapped instruction (ESR_EL2 in `hsr`): SMC (EC 0x17), WFI/WFE
    /// (EC 0x01), system registers ...
    VcpuFault { hsr: u64 },
    /// A virtual IRQ in list register `index` was completed by the guest
    /// (`None`: no index given).
    VgicMaintenance { index: Option<u64> },
    /// A virtual PPI (the virtual timer, 27) fired for the vCPU.
    VppiEvent { irq: u64 },
    /// An `svc` or `hvc` that is not an seL4 syscall: `syscall` is its
    /// number, at `ip`.
    UnknownSyscall { ip: u64, syscall: u64 },
    /// An exception the kernel passes on (`number`, `code`) at `ip`.
    UserException { ip: u64, number: u64, code: u64 },
    /// Anything else (its label).
    Other { label: u64 },
}

impl Fault {
    /// Decode a fault message: `label` and its message registers.
    pub fn decode(label: u64, mr: &[u64; FAULT_MRS]) -> Fault {
        use fault_label::*;
        match label {
            VM_FAULT => Fault::VmFault {
                ip: mr[0],
                addr: mr[1],
                prefetch: mr[2] != 0,
                fsr: mr[3],
            },
            VCPU_FAULT => Fault::VcpuFault { hsr: mr[0] },
            VGIC_MAINTENANCE => Fault::VgicMaintenance {
                // seL4 sends -1 when no list register is named.
                index: (mr[0] != u64::MAX).then_some(mr[0]),
            },
            VPPI_EVENT => Fault::VppiEvent { irq: mr[0] },
            // x0..x7, FaultIP, SP, LR, SPSR, Syscall.
            UNKNOWN_SYSCALL => Fault::UnknownSyscall {
                ip: mr[8],
                syscall: mr[12],
            },
            // FaultIP, SP, SPSR, Number, Code.
            USER_EXCEPTION => Fault::UserException {
                ip: mr[0],
                number: mr[3],
                code: mr[4],
            },
            label => Fault::Other { label },
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::VmFault {
                ip,
                addr,
                prefetch,
                fsr,
            } => write!(
                f,
                "{} fault at {addr:#x}, pc {ip:#x}, ESR {fsr:#x}",
                if *prefetch { "instruction" } else { "data" }
            ),
            Fault::VcpuFault { hsr } => write!(f, "vCPU fault, ESR {hsr:#x} (EC {:#x})", hsr >> 26),
            Fault::VgicMaintenance { index } => write!(f, "VGIC maintenance, LR {index:?}"),
            Fault::VppiEvent { irq } => write!(f, "virtual PPI {irq}"),
            Fault::UnknownSyscall { ip, syscall } => {
                write!(f, "unknown syscall {syscall:#x} at pc {ip:#x}")
            }
            Fault::UserException { ip, number, code } => {
                write!(f, "user exception {number:#x} code {code:#x} at pc {ip:#x}")
            }
            Fault::Other { label } => write!(f, "fault with label {label}"),
        }
    }
}

/// What to do with a vCPU after its fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultReply {
    /// Reply: the vCPU runs again (at the faulting PC, unless the VMM wrote
    /// another with [`write_registers`](crate::vm) first).
    Resume,
    /// No reply: the vCPU stays stopped.
    Stop,
}

/// aarch64 `seL4_UserContext`, in seL4's order (`sel4_arch/types.h`): the
/// frame registers, then the other integer registers, then the thread-ID
/// registers. Index a guest register with [`UserContext::x`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserContext {
    pub regs: [u64; USER_CONTEXT_WORDS],
}

impl Default for UserContext {
    fn default() -> Self {
        UserContext {
            regs: [0; USER_CONTEXT_WORDS],
        }
    }
}

/// Words of an aarch64 `seL4_UserContext`.
pub const USER_CONTEXT_WORDS: usize = 36;

/// `xN` -> its index in `seL4_UserContext` (pc, sp, spsr come first).
const X_INDEX: [usize; 31] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, // x0..x8
    17, 18, 19, 20, 21, 22, 23, // x9..x15
    12, 13, 14, // x16..x18
    24, 25, 26, 27, 28, 29, 30, 31, 32, 33, // x19..x28
    15, 16, // x29, x30
];

impl UserContext {
    pub const PC: usize = 0;
    pub const SP: usize = 1;
    pub const SPSR: usize = 2;

    /// Index of `xN` (0..=30), or `None` for 31 (the zero register when
    /// a load or store names it as its data register).
    pub fn x_index(n: u8) -> Option<usize> {
        X_INDEX.get(usize::from(n)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn every_fault_decodes_from_its_registers() {
        let mut mr = [0u64; FAULT_MRS];
        mr[..4].copy_from_slice(&[0x4000_0010, 0x1234_5000, 0, 0x9200_0046]);
        assert_eq!(
            Fault::decode(fault_label::VM_FAULT, &mr),
            Fault::VmFault {
                ip: 0x4000_0010,
                addr: 0x1234_5000,
                prefetch: false,
                fsr: 0x9200_0046
            }
        );
        mr[0] = 0x5e00_0000; // EC 0x17: SMC
        assert_eq!(
            Fault::decode(fault_label::VCPU_FAULT, &mr),
            Fault::VcpuFault { hsr: 0x5e00_0000 }
        );
        assert_eq!(
            Fault::decode(fault_label::VCPU_FAULT, &mr).to_string(),
            "vCPU fault, ESR 0x5e000000 (EC 0x17)"
        );
        mr[0] = u64::MAX;
        assert_eq!(
            Fault::decode(fault_label::VGIC_MAINTENANCE, &mr),
            Fault::VgicMaintenance { index: None }
        );
        mr[0] = 27;
        assert_eq!(
            Fault::decode(fault_label::VPPI_EVENT, &mr),
            Fault::VppiEvent { irq: 27 }
        );
        mr[8] = 0x4000_0100;
        mr[12] = 0x5;
        assert_eq!(
            Fault::decode(fault_label::UNKNOWN_SYSCALL, &mr),
            Fault::UnknownSyscall {
                ip: 0x4000_0100,
                syscall: 5
            }
        );
        assert_eq!(Fault::decode(42, &mr), Fault::Other { label: 42 });
    }

    #[test]
    fn registers_sit_where_sel4_puts_them() {
        // pc, sp, spsr, x0..x8, x16, x17, x18, x29, x30, x9..x15, x19..x28.
        assert_eq!(UserContext::x_index(0), Some(3));
        assert_eq!(UserContext::x_index(8), Some(11));
        assert_eq!(UserContext::x_index(16), Some(12));
        assert_eq!(UserContext::x_index(18), Some(14));
        assert_eq!(UserContext::x_index(29), Some(15));
        assert_eq!(UserContext::x_index(30), Some(16));
        assert_eq!(UserContext::x_index(9), Some(17));
        assert_eq!(UserContext::x_index(15), Some(23));
        assert_eq!(UserContext::x_index(19), Some(24));
        assert_eq!(UserContext::x_index(28), Some(33));
        assert_eq!(UserContext::x_index(31), None);
        // Every general register has its own slot.
        let mut seen: std::vec::Vec<usize> = (0..31).filter_map(UserContext::x_index).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 31);
    }
}
