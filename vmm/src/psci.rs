//! PSCI over SMC (DESIGN §8; Arm DEN0022): what Linux asks at boot and at
//! power-off. One vCPU, so CPU_ON has nothing to start.

/// Function ids (SMC32 and SMC64 forms where Linux uses both).
pub mod id {
    pub const VERSION: u64 = 0x8400_0000;
    pub const CPU_OFF: u64 = 0x8400_0002;
    pub const CPU_ON_32: u64 = 0x8400_0003;
    pub const CPU_ON_64: u64 = 0xc400_0003;
    pub const MIGRATE_INFO_TYPE: u64 = 0x8400_0006;
    pub const SYSTEM_OFF: u64 = 0x8400_0008;
    pub const SYSTEM_RESET: u64 = 0x8400_0009;
    pub const FEATURES: u64 = 0x8400_000a;
}

/// PSCI return codes.
pub const NOT_SUPPORTED: u64 = -1i64 as u64;

/// PSCI 1.0.
pub const VERSION_1_0: u64 = 0x1_0000;

/// MIGRATE_INFO_TYPE: a trusted OS is not present (no migration needed).
pub const TOS_NOT_PRESENT: u64 = 2;

/// What the VMM does with an SMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Put this into x0 and continue after the SMC.
    Return(u64),
    /// The guest switched itself off (or the one CPU off).
    Off,
    /// The guest asked for a reset.
    Reset,
}

/// The answer to SMC function `function` (x0).
pub fn call(function: u64) -> Answer {
    match function {
        id::VERSION => Answer::Return(VERSION_1_0),
        id::MIGRATE_INFO_TYPE => Answer::Return(TOS_NOT_PRESENT),
        // NOT_SUPPORTED for every feature query keeps Linux at SMCCC 1.0
        // (no SMCCC_VERSION probes, no workaround calls).
        id::FEATURES => Answer::Return(NOT_SUPPORTED),
        id::SYSTEM_OFF | id::CPU_OFF => Answer::Off,
        id::SYSTEM_RESET => Answer::Reset,
        // Any other SMC, CPU_ON included (one vCPU): a defined answer.
        _ => Answer::Return(NOT_SUPPORTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_gets_psci_1_0_and_a_defined_answer_to_anything() {
        assert_eq!(call(id::VERSION), Answer::Return(0x1_0000));
        assert_eq!(call(id::MIGRATE_INFO_TYPE), Answer::Return(2));
        assert_eq!(call(id::FEATURES), Answer::Return(NOT_SUPPORTED));
        assert_eq!(call(id::SYSTEM_OFF), Answer::Off);
        assert_eq!(call(id::SYSTEM_RESET), Answer::Reset);
        assert_eq!(call(id::CPU_ON_64), Answer::Return(NOT_SUPPORTED));
        assert_eq!(call(0xdead_beef), Answer::Return(NOT_SUPPORTED));
    }
}
