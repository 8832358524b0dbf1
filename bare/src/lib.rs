//! The bare platform (DESIGN §5.3): the same PD code as on Microkit, linked
//! into one image with a boot stub and the cooperative loop of `pd::bare`,
//! booted by QEMU with QEMU's own virtio-balloon.
//!
//! # How the PDs get into one image
//!
//! The image binaries (`src/bin/system.rs`, `src/bin/pingpong.rs`) include a
//! module that `build.rs` generates from `system.xml`: for each PD, the PD
//! crate's unchanged `main.rs` as a module (`#[path]`), so each PD keeps its
//! own statics, its own `config` module and its own `init`; `pd::main!`
//! under pd's `bare` feature defines `__pd_bare_init` there instead of an
//! entry point. A PD binary shared by several PDs (`guest.elf`) is included
//! once per PD; so is the test-only `hostile.elf` (guest/src/bin/hostile.rs)
//! of the hostile variant of system.xml, which takes guest1's place and
//! finds its layout in the same `guests.rs` table. `build.rs` also writes
//! the files the PD crates' build scripts would (`pd_<name>.rs`,
//! `timer_hw.rs`, `balloon_hw.rs`, `guests.rs`), with the setvar symbols
//! not exported: they exist for the Microkit tool, and two PDs in one image
//! would define the same names. Including the sources keeps the
//! PD crates untouched (no `bare` feature or library target in each),
//! which is the point: the code proven against QEMU here is the code of the
//! Microkit build.
//!
//! # Memory
//!
//! Identity mapped (aarch64: MMU on with 1 GiB blocks, x86_64: 2 MiB pages
//! over the low 4 GiB); every region is carved from QEMU RAM by [`layout`]
//! (or stays at its `phys_addr`), naturally aligned, so the guests' RAM is
//! real QEMU RAM that QEMU touches only when the guest writes it.
//!
//! # Interrupts
//!
//! Interrupt-driven waiting, polled acknowledgement: when no PD has pending
//! notifications the core sleeps (WFI / `sti; hlt`) until a device
//! interrupts; the interrupt is masked at the controller and becomes a
//! notification on the owning PD's IRQ channel, unmasked again by the PD's
//! `irq_ack` (seL4's semantics). aarch64: GICv2, PSTATE.I stays masked and
//! GICC_IAR is read after WFI. x86_64: IOAPIC pin n -> vector 0x20 + n,
//! handlers run only inside `hlt`. An idle image uses no host CPU.
//!
//! # Faults
//!
//! A PD that panics or whose handler fails stops alone (with the PDs in a
//! PPC to it) and the others go on, as under Microkit (`pd::bare::run`).
//!
//! # Machines
//!
//! - aarch64: `qemu-system-aarch64 -M virt[,virtualization=on] -cpu
//!   cortex-a53 -m 2G -kernel system`, run at EL1 (the stub drops from EL2);
//!   PL011 console; the balloon is virtio-mmio (legacy or version 2).
//! - x86_64: `qemu-system-x86_64 -M pc -m 2G -kernel system` through the PVH
//!   ELF note (SeaBIOS runs first and assigns the PCI BARs: the balloon at
//!   00:04.0, BAR4 at 0xfe000000, INTx on IOAPIC pin 11, checked by
//!   booting); COM1 console. Built from the x86_64_generic variant of
//!   system.xml that `tools image` derives (`SYSTEM_XML`, passed by
//!   `tools qemu --platform bare`), so the PDs see the PC as on Microkit.
//!
//! # Running it
//!
//! `cargo run -p tools -- qemu --platform bare --arch aarch64` (or x86_64;
//! `--modern-mmio`, `--no-reporting`, `--balloon-mib N`, `--hostile` for
//! the hostile variant, built from `SYSTEM_XML` like the x86_64 one); tests:
//! `cargo test -p tools --test bare_qemu --test bare_hostile`. Build by hand:
//! `cargo build --release -p bare --bin system --target
//! aarch64-unknown-none` (build `bare` on its own: its `pd/bare` feature
//! would turn the PD crates' own binaries into modules without an entry).
#![cfg_attr(target_os = "none", no_std)]

/// Region placement: used by `build.rs` (host code), tested here.
#[cfg(not(target_os = "none"))]
pub mod layout;

pub mod memmap;

#[cfg(test)]
mod tests {
    use super::layout::{LayoutError, RegionReq, place};

    fn r(name: &str, size: u64, align: u64, fixed: Option<u64>) -> RegionReq<'_> {
        RegionReq {
            name,
            size,
            align,
            fixed,
        }
    }

    #[test]
    fn fixed_regions_stay_and_others_are_aligned_and_disjoint() {
        let regs = [
            r("ring", 0x10000, 0x1000, None),
            r("ram0", 0x2000_0000, 0x20_0000, None),
            r("mmio", 0x1000, 0x1000, Some(0x0a00_3000)),
            r("ram1", 0x2000_0000, 0x20_0000, None),
        ];
        let a = place(&regs, (0x4800_1000, 0xC000_0000)).unwrap();
        assert_eq!(a[2], 0x0a00_3000);
        for (i, x) in regs.iter().enumerate() {
            assert_eq!(a[i] % x.align, 0, "{}", x.name);
            for (j, y) in regs.iter().enumerate().skip(i + 1) {
                assert!(
                    a[i] + x.size <= a[j] || a[j] + y.size <= a[i],
                    "{} {}",
                    x.name,
                    y.name
                );
            }
        }
        // Natural alignment, largest first; small regions fill the gaps.
        assert_eq!(a[1], 0x6000_0000);
        assert_eq!(a[3], 0x8000_0000);
        assert_eq!(a[0], 0x4801_0000);
    }

    #[test]
    fn errors_are_values() {
        assert_eq!(
            place(&[r("big", 0x4000_0000, 0x1000, None)], (0, 0x1000_0000)),
            Err(LayoutError::DoesNotFit {
                name: "big".into(),
                size: 0x4000_0000
            })
        );
        assert!(matches!(
            place(
                &[
                    r("a", 0x2000, 0x1000, Some(0x1000)),
                    r("b", 0x1000, 0x1000, Some(0x2000))
                ],
                (0, 1 << 30)
            ),
            Err(LayoutError::Overlap { .. })
        ));
        assert!(matches!(
            place(&[r("m", 0x1000, 0x1000, Some(0x1800))], (0, 1 << 30)),
            Err(LayoutError::Misaligned { .. })
        ));
        assert!(matches!(
            place(&[r("z", 0, 0x1000, None)], (0, 1 << 30)),
            Err(LayoutError::BadShape { .. })
        ));
        // A pool region next to a fixed one is carved around it.
        let a = place(
            &[
                r("f", 0x1000, 0x1000, Some(0x1000)),
                r("x", 0x2000, 0x1000, None),
            ],
            (0, 0x10000),
        )
        .unwrap();
        assert_eq!(a, vec![0x1000, 0x2000]);
    }
}
