//! Decoding what a trapped guest instruction did, from ESR_EL2 (Arm ARM
//! D17.2.37: ESR_EL2, ISS encoding for a data abort).

use core::fmt;

/// Exception classes the VMM handles.
pub mod ec {
    /// WFI or WFE.
    pub const WFX: u64 = 0x01;
    /// HVC from AArch64 (seL4 turns it into a syscall fault).
    pub const HVC64: u64 = 0x16;
    /// SMC from AArch64.
    pub const SMC64: u64 = 0x17;
    /// A trapped MSR/MRS/system instruction.
    pub const SYSREG: u64 = 0x18;
    /// An instruction abort from the guest.
    pub const IABT_LOW: u64 = 0x20;
    /// A data abort from the guest.
    pub const DABT_LOW: u64 = 0x24;
}

/// The exception class of an ESR.
pub fn class(esr: u64) -> u64 {
    (esr >> 26) & 0x3f
}

/// One load or store the guest made, as the syndrome describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// The data register (`xN`), `None` for the zero register (31).
    pub reg: Option<u8>,
    pub write: bool,
    /// A load that sign-extends (SSE).
    pub sign_extend: bool,
    /// The register is 64 bits wide (SF), else 32.
    pub wide: bool,
}

/// Why an abort cannot be emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapError {
    /// Not a data abort from the guest (its class).
    NotDataAbort(u64),
    /// No valid syndrome (ISV = 0): a load/store pair, an atomic, a cache
    /// maintenance instruction ... nothing a device window accepts.
    NoSyndrome,
}

impl fmt::Display for TrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrapError::NotDataAbort(c) => write!(f, "exception class {c:#x} is not a data abort"),
            TrapError::NoSyndrome => {
                write!(
                    f,
                    "no instruction syndrome (ISV=0): not a plain load or store"
                )
            }
        }
    }
}

impl Access {
    /// Decode the data abort syndrome `esr`.
    pub fn decode(esr: u64) -> Result<Access, TrapError> {
        if class(esr) != ec::DABT_LOW {
            return Err(TrapError::NotDataAbort(class(esr)));
        }
        if esr & (1 << 24) == 0 {
            return Err(TrapError::NoSyndrome);
        }
        let srt = ((esr >> 16) & 0x1f) as u8;
        Ok(Access {
            size: 1 << ((esr >> 22) & 3),
            reg: (srt != 31).then_some(srt),
            write: esr & (1 << 6) != 0,
            sign_extend: esr & (1 << 21) != 0,
            wide: esr & (1 << 15) != 0,
        })
    }

    /// The value a load puts into its register: `raw` (the device's
    /// little-endian bytes) cut to the access size, sign-extended if the
    /// instruction asked, and cut to 32 bits for a `w` register.
    pub fn load_value(&self, raw: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        let mut v = if bits == 64 {
            raw
        } else {
            raw & ((1u64 << bits) - 1)
        };
        if self.sign_extend && bits < 64 && v >> (bits - 1) & 1 == 1 {
            v |= !0u64 << bits;
        }
        if !self.wide {
            v &= 0xffff_ffff;
        }
        v
    }

    /// The bytes a store writes: the register's value cut to the size.
    pub fn store_value(&self, reg_value: u64) -> u64 {
        match self.size {
            8 => reg_value,
            s => reg_value & ((1u64 << (u32::from(s) * 8)) - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dabt(iss: u64) -> u64 {
        ec::DABT_LOW << 26 | 1 << 25 | iss
    }

    #[test]
    fn loads_and_stores_decode_as_the_guest_wrote_them() {
        // str x0, [x1]: ISV, SAS=3, SRT=0, SF, WnR.
        let a = Access::decode(dabt(1 << 24 | 3 << 22 | 1 << 15 | 1 << 6)).unwrap();
        assert_eq!(
            a,
            Access {
                size: 8,
                reg: Some(0),
                write: true,
                sign_extend: false,
                wide: true
            }
        );
        // ldr w3, [x2]: 32-bit load into w3.
        let a = Access::decode(dabt(1 << 24 | 2 << 22 | 3 << 16)).unwrap();
        assert_eq!((a.size, a.reg, a.write, a.wide), (4, Some(3), false, false));
        // strb wzr, [...]: the zero register.
        let a = Access::decode(dabt(1 << 24 | 31 << 16 | 1 << 6)).unwrap();
        assert_eq!((a.size, a.reg), (1, None));
        // ldp: no syndrome; an SMC is no data abort.
        assert_eq!(Access::decode(dabt(3 << 22)), Err(TrapError::NoSyndrome));
        assert_eq!(
            Access::decode(ec::SMC64 << 26),
            Err(TrapError::NotDataAbort(ec::SMC64))
        );
    }

    #[test]
    fn loaded_values_are_cut_and_extended_like_the_hardware() {
        let ldrsb_x = Access {
            size: 1,
            reg: Some(0),
            write: false,
            sign_extend: true,
            wide: true,
        };
        assert_eq!(ldrsb_x.load_value(0x1_80), 0xffff_ffff_ffff_ff80);
        let ldrsb_w = Access {
            wide: false,
            ..ldrsb_x
        };
        assert_eq!(ldrsb_w.load_value(0x80), 0xffff_ff80);
        let ldrh = Access {
            size: 2,
            sign_extend: false,
            ..ldrsb_x
        };
        assert_eq!(ldrh.load_value(0xdead_beef), 0xbeef);
        let strh = Access {
            write: true,
            ..ldrh
        };
        assert_eq!(strh.store_value(0x1234_5678), 0x5678);
    }

    proptest! {
        #[test]
        fn any_syndrome_decodes_or_errs_without_panic(esr in any::<u64>(), raw in any::<u64>()) {
            if let Ok(a) = Access::decode(esr) {
                prop_assert!([1, 2, 4, 8].contains(&a.size));
                prop_assert!(a.reg.is_none_or(|r| r < 31));
                let v = a.load_value(raw);
                if !a.wide { prop_assert!(v <= 0xffff_ffff); }
            }
        }
    }
}
