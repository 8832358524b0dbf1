//! The device tree a Linux VM on seL4 aarch64 boots with (DESIGN §8),
//! written with `vm-fdt` from what the system description gives the VM.
//!
//! Only what the VM can reach goes in: its RAM, one cortex-a53, PSCI over
//! SMC (the VMM answers it; a guest HVC would go down seL4's syscall path),
//! the GICv2 the VMM emulates (distributor) and maps (CPU interface), the
//! architected timer, and the devices of its description (a PL011 console,
//! virtio-mmio windows). A device left out is one Linux never probes; a
//! device in the tree the VM cannot reach would be a fatal fault.

use std::fmt;

/// QEMU virt's GICv2: distributor (emulated by the VMM) and CPU interface
/// (the VMM maps GICV there).
pub const GICD: (u64, u64) = (0x0800_0000, 0x1_0000);
pub const GICC: (u64, u64) = (0x0801_0000, 0x2000);

/// What the VM's tree holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmTree {
    pub ram_base: u64,
    pub ram_size: u64,
    /// The kernel command line.
    pub bootargs: String,
    /// The initramfs, `[start, end)` guest-physical.
    pub initrd: Option<(u64, u64)>,
    /// A PL011 at this address, with this SPI (0-based: IRQ 32 + n).
    pub uart: Option<(u64, u32)>,
    /// virtio-mmio windows: address, size, SPI.
    pub virtio_mmio: Vec<(u64, u64, u32)>,
}

/// Why a tree could not be written.
#[derive(Debug)]
pub struct DtbError(String);

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device tree: {}", self.0)
    }
}

impl std::error::Error for DtbError {}

impl From<vm_fdt::Error> for DtbError {
    fn from(e: vm_fdt::Error) -> Self {
        DtbError(e.to_string())
    }
}

/// The interrupt controller's phandle.
const GIC: u32 = 1;
/// The UART's fixed clock.
const CLK: u32 = 2;

/// GIC interrupt specifiers (`#interrupt-cells = 3`).
const SPI: u32 = 0;
const PPI: u32 = 1;
const LEVEL_HIGH: u32 = 4;
const EDGE_RISING: u32 = 1;
/// PPI flags on GICv2: the CPU mask (one CPU) in bits 8..16.
const PPI_CPU0: u32 = 1 << 8;

fn reg(base: u64, size: u64) -> Vec<u64> {
    vec![base, size]
}

/// The tree as a DTB.
pub fn write(t: &VmTree) -> Result<Vec<u8>, DtbError> {
    let mut f = vm_fdt::FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_string("compatible", "linux,dummy-virt")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_u32("interrupt-parent", GIC)?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", &t.bootargs)?;
    if let Some((base, _)) = t.uart {
        f.property_string("stdout-path", &format!("/pl011@{base:x}"))?;
    }
    if let Some((start, end)) = t.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    f.end_node(chosen)?;

    let mem = f.begin_node(&format!("memory@{:x}", t.ram_base))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &reg(t.ram_base, t.ram_size))?;
    f.end_node(mem)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    let cpu = f.begin_node("cpu@0")?;
    f.property_string("device_type", "cpu")?;
    f.property_string("compatible", "arm,cortex-a53")?;
    f.property_u32("reg", 0)?;
    f.property_string("enable-method", "psci")?;
    f.end_node(cpu)?;
    f.end_node(cpus)?;

    let psci = f.begin_node("psci")?;
    f.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    f.property_string("method", "smc")?;
    f.end_node(psci)?;

    let gic = f.begin_node(&format!("intc@{:x}", GICD.0))?;
    f.property_string("compatible", "arm,cortex-a15-gic")?;
    f.property_u32("#interrupt-cells", 3)?;
    f.property_u32("#address-cells", 0)?;
    f.property_null("interrupt-controller")?;
    f.property_array_u64("reg", &[GICD.0, GICD.1, GICC.0, GICC.1])?;
    f.property_u32("phandle", GIC)?;
    f.end_node(gic)?;

    let timer = f.begin_node("timer")?;
    f.property_string("compatible", "arm,armv8-timer")?;
    // Secure, non-secure physical, virtual, hypervisor PPIs (13, 14, 11,
    // 10): Linux uses the virtual one (PPI 11 = IRQ 27) in a VM.
    let mut irqs = Vec::new();
    for ppi in [13, 14, 11, 10] {
        irqs.extend([PPI, ppi, PPI_CPU0 | LEVEL_HIGH]);
    }
    f.property_array_u32("interrupts", &irqs)?;
    f.property_null("always-on")?;
    f.end_node(timer)?;

    if let Some((base, spi)) = t.uart {
        let clk = f.begin_node("apb-pclk")?;
        f.property_string("compatible", "fixed-clock")?;
        f.property_u32("#clock-cells", 0)?;
        f.property_u32("clock-frequency", 24_000_000)?;
        f.property_u32("phandle", CLK)?;
        f.end_node(clk)?;
        let uart = f.begin_node(&format!("pl011@{base:x}"))?;
        f.property_string_list(
            "compatible",
            vec!["arm,pl011".into(), "arm,primecell".into()],
        )?;
        f.property_array_u64("reg", &reg(base, 0x1000))?;
        f.property_array_u32("interrupts", &[SPI, spi, LEVEL_HIGH])?;
        f.property_array_u32("clocks", &[CLK, CLK])?;
        f.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
        f.end_node(uart)?;
    }

    for &(base, size, spi) in &t.virtio_mmio {
        let v = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &reg(base, size))?;
        f.property_array_u32("interrupts", &[SPI, spi, EDGE_RISING])?;
        f.property_null("dma-coherent")?;
        f.end_node(v)?;
    }

    f.end_node(root)?;
    let blob = f.finish()?;
    if blob.len() as u64 > vmm_boot::MAX_DTB {
        return Err(DtbError(format!(
            "{} bytes, more than Linux accepts",
            blob.len()
        )));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> VmTree {
        VmTree {
            ram_base: 0x4000_0000,
            ram_size: 256 << 20,
            bootargs: "console=ttyAMA0 earlycon=pl011,0x9000000 rdinit=/init".into(),
            initrd: Some((0x42a0_2000, 0x43a0_2000)),
            uart: Some((0x900_0000, 1)),
            virtio_mmio: vec![(0x0a00_3e00, 0x200, 47)],
        }
    }

    /// Strings of the blob's strings and structure blocks, for asserting
    /// what is in it without a DT parser.
    fn has(blob: &[u8], needle: &[u8]) -> bool {
        blob.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_tree_holds_what_the_vm_reaches_and_nothing_else() {
        let blob = write(&tree()).unwrap();
        // FDT magic, big-endian.
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        for node in [
            &b"memory@40000000"[..],
            b"cpu@0",
            b"psci",
            b"intc@8000000",
            b"timer",
            b"pl011@9000000",
            b"virtio_mmio@a003e00",
            b"console=ttyAMA0 earlycon=pl011,0x9000000 rdinit=/init",
            b"arm,cortex-a15-gic",
            b"smc",
        ] {
            assert!(has(&blob, node), "{}", String::from_utf8_lossy(node));
        }
        // RAM's reg: base and size, big-endian u64s.
        let mut reg = Vec::new();
        reg.extend(0x4000_0000u64.to_be_bytes());
        reg.extend((256u64 << 20).to_be_bytes());
        assert!(has(&blob, &reg));
        // Nothing the VM cannot reach: no PCI, no second UART, no GICv3.
        let mut bare = tree();
        bare.uart = None;
        bare.virtio_mmio.clear();
        bare.bootargs = "rdinit=/init".into();
        let blob = write(&bare).unwrap();
        for absent in [
            &b"pl011"[..],
            b"virtio_mmio",
            b"pcie",
            b"arm,gic-v3",
            b"stdout-path",
        ] {
            assert!(!has(&blob, absent), "{}", String::from_utf8_lossy(absent));
        }
    }

    #[test]
    fn a_tree_too_large_for_linux_is_refused() {
        let mut t = tree();
        t.bootargs = "x".repeat(3 << 20);
        let e = write(&t).unwrap_err().to_string();
        assert!(e.contains("more than Linux accepts"), "{e}");
    }
}
