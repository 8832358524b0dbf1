//! What the VMM embeds for the Linux VM of a system description: Debian's
//! kernel and an initramfs ([`crate::linux_guest`]), and a device tree made
//! for that VM ([`crate::dtb`]) with the initramfs where the VMM will put
//! it ([`vmm_boot::Layout`], the same computation the VMM makes). They go
//! into one directory that `tools image` hands the VMM's build
//! (`VMM_GUEST_DIR`); a kernel that is not an arm64 Image, or pieces that
//! do not fit the VM's RAM, are refused here, before anything is built.

use crate::dtb::{self, VmTree};
use crate::linux_guest::{self, Spec};
use std::path::{Path, PathBuf};

/// The Linux VM's kernel parameters for its workload (linux-workload):
/// touch [`WORKLOAD_MIB`], hold them 3 s, free them, once.
pub const WORKLOAD: &str = "workload.mib=160 workload.hold_ms=3000 workload.rounds=1";
/// What the workload touches and frees, in MiB.
pub const WORKLOAD_MIB: u64 = 160;

/// QEMU virt's PL011, which the description may pass through to the VM.
const PL011: u64 = 0x0900_0000;
/// Its SPI (IRQ 33).
const PL011_SPI: u32 = 1;

/// The VM of a description, as far as its device tree goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPlan {
    pub name: String,
    pub ram_base: u64,
    pub ram_size: u64,
    /// The console passed through, if the VM maps QEMU's PL011.
    pub uart: Option<u64>,
}

/// The VM of `sys`: its RAM is the VM map of the region its VMM maps as
/// `guest_ram` (`sdf::System::vm_ram`, as vmm/build.rs finds it); `None`
/// without a VM.
pub fn plan(sys: &sdf::System) -> Result<Option<VmPlan>, String> {
    let Some(pd) = sys.pds.iter().find(|p| p.virtual_machine.is_some()) else {
        return Ok(None);
    };
    let ram = sys.vm_ram(pd)?;
    let vm = ram.vm;
    let uart = vm
        .maps
        .iter()
        .find(|m| sys.region(&m.mr).and_then(|r| r.phys_addr) == Some(PL011))
        .map(|m| m.vaddr);
    Ok(Some(VmPlan {
        name: vm.name.clone(),
        ram_base: ram.map.vaddr,
        ram_size: ram.region.size,
        uart,
    }))
}

/// The kernel command line: the console on the PL011 (early too), the
/// initramfs's /init, and the workload's parameters.
pub fn bootargs(plan: &VmPlan, workload: &str) -> String {
    let console = match plan.uart {
        Some(u) => format!("console=ttyAMA0 earlycon=pl011,{u:#x} "),
        None => String::new(),
    };
    format!("{console}rdinit=/init panic=-1 {workload}")
}

/// The device tree of `plan` with an initramfs of `initrd_len` bytes, laid
/// out after a kernel with `header`; the blob and where the initramfs goes.
pub fn tree(
    plan: &VmPlan,
    header: &vmm_boot::ImageHeader,
    initrd_len: u64,
    bootargs: &str,
) -> Result<Vec<u8>, String> {
    let mut t = VmTree {
        ram_base: plan.ram_base,
        ram_size: plan.ram_size,
        bootargs: bootargs.to_string(),
        initrd: Some((0, 0)),
        uart: plan.uart.map(|u| (u, PL011_SPI)),
        // The VMM's virtio-balloon (nested reporting).
        virtio_mmio: vec![(
            sdf::check::VMM_BALLOON_MMIO,
            vmm_virtio::mmio::WINDOW,
            sdf::check::VMM_BALLOON_SPI,
        )],
    };
    // The tree's size does not depend on the initramfs's address: lay out
    // with it, then write the addresses in.
    let len = dtb::write(&t).map_err(|e| e.to_string())?.len() as u64;
    let l = vmm_boot::Layout::new(header, len, initrd_len, plan.ram_base, plan.ram_size)
        .map_err(|e| format!("VM '{}': {e}", plan.name))?;
    t.initrd = Some((l.initrd, l.initrd_end));
    let blob = dtb::write(&t).map_err(|e| e.to_string())?;
    debug_assert_eq!(blob.len() as u64, len);
    Ok(blob)
}

/// Prepare the Linux guest for the VM of `sys` into `out_dir` (Image,
/// initramfs.cpio.gz, linux.dtb); `workload` are its kernel parameters.
pub fn prepare(
    sys: &sdf::System,
    workspace: &Path,
    out_dir: &Path,
    workload: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<PathBuf>, String> {
    let Some(plan) = plan(sys)? else {
        return Ok(None);
    };
    let guest = linux_guest::prepare(&Spec::new(workspace), progress).map_err(|e| e.to_string())?;
    let initrd_len = std::fs::metadata(&guest.initramfs)
        .map_err(|e| format!("{}: {e}", guest.initramfs.display()))?
        .len();
    let kernel =
        std::fs::read(&guest.image).map_err(|e| format!("{}: {e}", guest.image.display()))?;
    let header = vmm_boot::ImageHeader::parse(&kernel)
        .map_err(|e| format!("{}: {e}", guest.image.display()))?;
    let args = bootargs(&plan, workload);
    let blob = tree(&plan, &header, initrd_len, &args)?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let copy = |from: &Path, name: &str| -> Result<(), String> {
        let to = out_dir.join(name);
        // Unchanged files keep their mtime, so the VMM is not rebuilt.
        if std::fs::read(&to).ok().as_deref() == std::fs::read(from).ok().as_deref() {
            return Ok(());
        }
        std::fs::copy(from, &to)
            .map(|_| ())
            .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
    };
    copy(&guest.image, "Image")?;
    copy(&guest.initramfs, "initramfs.cpio.gz")?;
    let dtb = out_dir.join("linux.dtb");
    if std::fs::read(&dtb).ok().as_deref() != Some(&blob[..]) {
        std::fs::write(&dtb, &blob).map_err(|e| format!("{}: {e}", dtb.display()))?;
    }
    progress(&format!(
        "VM '{}': {} MiB RAM at {:#x}, kernel {} ({} bytes), device tree {} bytes, bootargs \"{args}\"",
        plan.name,
        plan.ram_size >> 20,
        plan.ram_base,
        guest.manifest.kernel_release,
        kernel.len(),
        blob.len()
    ));
    Ok(Some(out_dir.to_path_buf()))
}

/// The hostile guest (`vmm/hostile-guest`, issue 14) built for the VM and
/// flattened into `out_dir/guest.bin`, the raw guest the VMM then embeds
/// (`VMM_GUEST_DIR`): its loadable segments at their offsets from the VM's
/// RAM (where it is linked). Returns `out_dir`.
pub fn hostile_guest(
    workspace: &Path,
    target_dir: &Path,
    out_dir: &Path,
    ram_base: u64,
) -> Result<PathBuf, String> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Until the ELF is read: the target dir may be shared (crate::pd_build).
    let _lock = crate::pd_build::lock(target_dir)?;
    let status = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "vm-hostile-guest",
            "--target",
            "aarch64-unknown-none",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building vm-hostile-guest: {status}"));
    }
    let elf_path = target_dir.join("aarch64-unknown-none/release/vm-hostile-guest");
    let data = std::fs::read(&elf_path).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    let elf = ElfFile64::<object::Endianness>::parse(&*data)
        .map_err(|e| format!("{}: {e}", elf_path.display()))?;
    let e = elf.endian();
    let mut flat = Vec::new();
    for ph in elf.elf_program_headers() {
        if ph.p_type(e) != object::elf::PT_LOAD || ph.p_filesz(e) == 0 {
            continue;
        }
        let at = ph
            .p_paddr(e)
            .checked_sub(ram_base)
            .ok_or_else(|| format!("a segment below the VM's RAM at {:#x}", ph.p_paddr(e)))?
            as usize;
        let bytes = ph
            .data(e, &*data)
            .map_err(|()| "a segment past the file's end".to_string())?;
        if flat.len() < at + bytes.len() {
            flat.resize(at + bytes.len(), 0);
        }
        flat[at..at + bytes.len()].copy_from_slice(bytes);
    }
    if flat.is_empty() {
        return Err(format!("{}: nothing to load", elf_path.display()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let bin = out_dir.join("guest.bin");
    // Unchanged, the file keeps its mtime, so the VMM is not rebuilt.
    if std::fs::read(&bin).ok().as_deref() != Some(&flat[..]) {
        std::fs::write(&bin, &flat).map_err(|e| format!("{}: {e}", bin.display()))?;
    }
    Ok(out_dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux_vm() -> sdf::System {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../systems/linux-vm.xml"
        ))
        .unwrap();
        sdf::System::parse(&text).unwrap()
    }

    /// Every element of `text` under `<system>`, each as its normalized
    /// head (tag, sorted attributes) and its children, each normalized whole
    /// (no comments or layout).
    fn elements(text: &str) -> Vec<(String, Vec<String>)> {
        fn head(n: roxmltree::Node<'_, '_>) -> String {
            let mut attrs: Vec<String> = n
                .attributes()
                .map(|a| format!("{}={:?}", a.name(), a.value()))
                .collect();
            attrs.sort();
            format!("<{} {}>", n.tag_name().name(), attrs.join(" "))
        }
        fn norm(n: roxmltree::Node<'_, '_>) -> String {
            let kids: Vec<String> = n.children().filter(|c| c.is_element()).map(norm).collect();
            format!("{}{}</>", head(n), kids.join(""))
        }
        let doc = roxmltree::Document::parse(text).unwrap();
        doc.root_element()
            .children()
            .filter(|c| c.is_element())
            .map(|n| {
                let kids = n.children().filter(|c| c.is_element()).map(norm).collect();
                (head(n), kids)
            })
            .collect()
    }

    /// systems/linux-vm.xml is system.xml plus the VM, so the two cannot
    /// drift: every region and channel of system.xml is in it unchanged,
    /// every PD with the same attributes and children, and what is added
    /// (elements, or children of a PD) is about the VM: its RAM, console,
    /// GIC interface, the VMM, or the VMM's rings. Only the operator's
    /// console is left out: the VM owns the PL011 there.
    #[test]
    fn the_linux_vm_description_is_system_xml_plus_the_vm() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let base = elements(&std::fs::read_to_string(format!("{root}/system.xml")).unwrap());
        let vm =
            elements(&std::fs::read_to_string(format!("{root}/systems/linux-vm.xml")).unwrap());
        let about_the_vm = |e: &str| {
            ["vm0_ram", "uart", "gicv", "vmm", "vmm_req", "vmm_resp"]
                .iter()
                .any(|n| e.contains(&format!("=\"{n}\"")))
        };
        // Named elements (regions, PDs) match by head; the others (channels)
        // whole.
        let same = |(h, k): &(String, Vec<String>), (h2, k2): &(String, Vec<String>)| {
            h == h2 && (h.contains("name=") || k == k2)
        };
        let about_the_console = |e: &str| {
            ["console", "control_req", "control_resp"]
                .iter()
                .any(|n| e.contains(&format!("=\"{n}\"")))
        };
        for (head, kids) in &base {
            if about_the_console(&format!("{head}{}", kids.join(""))) && !head.contains("memserver")
            {
                continue;
            }
            let kids: Vec<String> = kids
                .iter()
                .filter(|k| !about_the_console(k))
                .cloned()
                .collect();
            let Some((_, vm_kids)) = vm.iter().find(|e| same(e, &(head.clone(), kids.clone())))
            else {
                panic!("systems/linux-vm.xml lacks or changed: {head}");
            };
            for k in &kids {
                assert!(vm_kids.contains(k), "{head} lacks or changed {k}");
            }
            for k in vm_kids.iter().filter(|k| !kids.contains(k)) {
                assert!(about_the_vm(k), "{head} gained {k}, not about the VM");
            }
        }
        for (head, kids) in vm.iter().filter(|e| !base.iter().any(|b| same(b, e))) {
            let whole = format!("{head}{}", kids.join(""));
            assert!(about_the_vm(&whole), "added, not about the VM: {whole}");
        }
    }

    #[test]
    fn the_workload_frees_what_the_verdict_expects() {
        assert!(WORKLOAD.contains(&format!("workload.mib={WORKLOAD_MIB} ")));
    }

    #[test]
    fn the_vm_of_the_linux_description_is_found() {
        let p = plan(&linux_vm()).unwrap().unwrap();
        assert_eq!(
            p,
            VmPlan {
                name: "linux".into(),
                ram_base: 0x4000_0000,
                ram_size: 256 << 20,
                uart: Some(PL011)
            }
        );
        assert_eq!(
            bootargs(&p, "workload.mib=64"),
            "console=ttyAMA0 earlycon=pl011,0x9000000 rdinit=/init panic=-1 workload.mib=64"
        );
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../system.xml")).unwrap();
        assert_eq!(plan(&sdf::System::parse(&text).unwrap()).unwrap(), None);
    }

    #[test]
    fn a_guest_that_does_not_fit_the_vm_is_refused_before_anything_is_built() {
        let p = plan(&linux_vm()).unwrap().unwrap();
        // Debian 6.1's header: text_offset 0, image_size 0x1ab0000.
        let h = vmm_boot::ImageHeader {
            text_offset: 0,
            image_size: 0x1ab_0000,
            flags: 0xa,
        };
        let blob = tree(&p, &h, 1 << 20, "x").unwrap();
        assert!(blob.len() < 4096);
        let e = tree(&p, &h, 300 << 20, "x").unwrap_err();
        assert!(e.contains("need") && e.contains("linux"), "{e}");
    }
}
