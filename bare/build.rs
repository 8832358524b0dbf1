//! Generate the bare images from their system descriptions (DESIGN §5.3).
//!
//! For each image (`system`: ../system.xml; `pingpong`: pd's test pair) and
//! the target architecture, this writes to `$OUT_DIR`:
//! - `pd_<name>.rs` per PD: `sdf::codegen`'s module with the setvar symbols
//!   left unexported (only the Microkit tool needs them, and PDs in one image
//!   would define the same names);
//! - what the PD crates' own build scripts generate: `timer_hw.rs` (the
//!   HPET region) and `guests.rs` (the guest layouts, each guest with its own
//!   module; PDs running the test-only `hostile.elf` included);
//! - `image_<image>.rs`: each PD's `main.rs` as a module, the
//!   `pd::bare::System` table (channels, maps at their image addresses,
//!   IRQs), and `image_main`;
//! - the linker script, passed to the binaries.
//!
//! `SYSTEM_XML` replaces ../system.xml for the `system` image (tools passes
//! the x86_64_generic variant of `tools image`, and the test-only hostile
//! variant, guest1 running `hostile.elf`). Given the aarch64 description on
//! x86_64, the timer PD gets the HPET page (0xfed00000) and the IRQs become
//! IOAPIC pins (see [`x86_irq`]).

#[path = "src/layout.rs"]
mod layout;
#[path = "src/memmap.rs"]
#[allow(dead_code)]
mod memmap;

use sdf::System;
use sdf::model::{Map, MemoryRegion, Perms};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Program image -> source of the PD, relative to the workspace root.
const SOURCES: &[(&str, &str)] = &[
    ("timer.elf", "timer/src/main.rs"),
    ("console.elf", "console/src/main.rs"),
    ("balloon.elf", "balloon/src/main.rs"),
    ("memserver.elf", "memserver/src/main.rs"),
    ("guest.elf", "guest/src/main.rs"),
    // Test-only: takes a guest's place in a variant of system.xml (issue 8).
    ("hostile.elf", "guest/src/bin/hostile.rs"),
    ("ping.elf", "pd/examples/pingpong/ping.rs"),
    ("pong.elf", "pd/examples/pingpong/pong.rs"),
];

/// Program images that take a guest's place: same regions and channels,
/// found by PD name in `guests.rs` (guest/src/pd_layout.rs).
const GUEST_IMAGES: &[&str] = &["guest.elf", "hostile.elf"];

const IMAGES: &[(&str, &str)] = &[
    ("system", "system.xml"),
    ("pingpong", "pd/examples/pingpong/system.xml"),
];

const HPET_PADDR: u64 = 0xfed0_0000;
/// Where the timer PD maps the HPET in the x86_64 variant (unused address
/// in system.xml; the bare image maps regions at their physical address).
const HPET_VADDR: u64 = 0x300_0000;

/// The platform's interrupt for an `<irq>` of system.xml (written for
/// qemu_virt_aarch64) and whether it is level-triggered. aarch64: the GIC
/// number as given; virtio-mmio's line is a level (QEMU raises it while
/// InterruptStatus is non-zero), so it is polled as one, which loses no
/// interrupt. x86_64 pc: the generic timer (30) becomes the HPET's
/// legacy-replacement IRQ0 (IOAPIC pin 2, edge), the virtio slot (79) the
/// PCI INTx line SeaBIOS gives 00:04.0 (pin 11, level, DESIGN §4).
fn irq(arch: &str, kind: &sdf::model::IrqKind) -> (u32, bool) {
    use sdf::model::IrqKind;
    match (arch, kind) {
        ("x86_64", IrqKind::IoApic { pin, edge, .. }) => (*pin as u32, !edge),
        ("x86_64", IrqKind::Number { irq, .. }) => x86_irq(*irq),
        (_, IrqKind::Number { irq: 79, .. }) => (79, true),
        (_, IrqKind::Number { irq, edge }) => (*irq as u32, !edge),
        _ => (u32::MAX, false),
    }
}

fn x86_irq(aarch64_irq: u64) -> (u32, bool) {
    match aarch64_irq {
        30 => (2, false),
        79 => (11, true),
        // The PL011's SPI: COM1's ISA IRQ 4, edge.
        33 => (4, false),
        _ => (u32::MAX, false),
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.join("..");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    // The memserver's source, compiled in here, looks for them (its own
    // build script sets them when the description has a VMM, or a control
    // port; the bare platform has no VMM, and `generate` sets the control
    // port's as memserver/build.rs does).
    println!("cargo::rustc-check-cfg=cfg(has_vmm)");
    for cfg in sdf::build::CONTROL_PORT_CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    println!("cargo:rerun-if-changed=src/layout.rs");
    println!("cargo:rerun-if-changed=src/memmap.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let (image_base, pool) = match arch.as_str() {
        "aarch64" => (memmap::AARCH64_IMAGE, memmap::AARCH64_POOL),
        "x86_64" => (memmap::X86_64_IMAGE, memmap::X86_64_POOL),
        a => panic!("no bare platform for {a}"),
    };
    // As in the PD crates: `SYSTEM_XML` replaces ../system.xml (tools passes
    // the x86_64_generic variant of `tools image` this way, so both
    // platforms build the PDs from the same description).
    println!("cargo:rerun-if-env-changed=SYSTEM_XML");
    let system_xml = std::env::var_os("SYSTEM_XML").map(PathBuf::from);
    for (image, xml) in IMAGES {
        let path = match (&system_xml, *image) {
            (Some(p), "system") => p.clone(),
            _ => root.join(xml),
        };
        if let Err(e) = generate(&root, &out, image, &path, &arch, pool) {
            panic!("{}: {e}", path.display());
        }
    }
    let script = out.join("bare.ld");
    std::fs::write(&script, linker_script(&arch, image_base))
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
    println!("cargo:rustc-link-arg-bins=-znorelro");
}

fn linker_script(arch: &str, base: u64) -> String {
    let entry = if arch == "x86_64" {
        "_start32"
    } else {
        "_start"
    };
    format!(
        "ENTRY({entry})\nSECTIONS\n{{\n  . = {base:#x};\n  \
         .text : {{ KEEP(*(.text.start)) *(.text .text.*) }}\n  \
         .note : {{ KEEP(*(.note.pvh)) }}\n  \
         . = ALIGN(0x1000);\n  .rodata : {{ *(.rodata .rodata.*) }}\n  \
         . = ALIGN(0x1000);\n  .data : {{ *(.data .data.*) *(.got .got.*) }}\n  \
         . = ALIGN(0x1000);\n  .bss (NOLOAD) : {{ __bss_start = .; *(.bss .bss.*) *(COMMON) . = ALIGN(16); __bss_end = .; }}\n  \
         . = ALIGN(0x1000);\n  . = . + 0x100000;\n  __stack_top = .;\n}}\n"
    )
}

fn generate(
    root: &Path,
    out: &Path,
    image: &str,
    xml: &Path,
    arch: &str,
    pool: (u64, u64),
) -> Result<(), String> {
    println!("cargo:rerun-if-changed={}", xml.display());
    let text = std::fs::read_to_string(xml).map_err(|e| e.to_string())?;
    let mut sys = System::parse(&text).map_err(|e| e.to_string())?;
    let has_hpet = sys
        .memory_regions
        .iter()
        .any(|r| r.phys_addr == Some(HPET_PADDR));
    if arch == "x86_64" && sys.pd("timer").is_some() && !has_hpet {
        sys.memory_regions.push(MemoryRegion {
            name: "hpet".into(),
            size: 0x1000,
            page_size: 0x1000,
            phys_addr: Some(HPET_PADDR),
            line: 0,
        });
        if let Some(t) = sys.pds.iter_mut().find(|p| p.name == "timer") {
            t.maps.push(Map {
                mr: "hpet".into(),
                vaddr: HPET_VADDR,
                perms: Perms {
                    read: true,
                    write: true,
                    execute: false,
                },
                cached: false,
                setvar_vaddr: None,
                setvar_size: None,
                line: 0,
            });
        }
    }
    let diags = sdf::check(&sys);
    if sdf::check::has_errors(&diags) {
        return Err(diags.iter().map(|d| format!("{d}\n")).collect());
    }
    // The memserver's control port, as memserver/build.rs tells its crate
    // (one image holds a memserver: `system`).
    if sys.pd("memserver").is_some() {
        for cfg in sdf::build::control_port_cfgs(&sys)? {
            println!("cargo::rustc-cfg={cfg}");
        }
    }

    // Every region gets an address: its phys_addr or a piece of the pool.
    let reqs: Vec<layout::RegionReq<'_>> = sys
        .memory_regions
        .iter()
        .map(|r| layout::RegionReq {
            name: &r.name,
            size: r.size,
            align: r.page_size.max(0x1000),
            fixed: r.phys_addr,
        })
        .collect();
    let addrs = layout::place(&reqs, pool).map_err(|e| e.to_string())?;
    let addr_of = |name: &str| {
        sys.memory_regions
            .iter()
            .position(|r| r.name == name)
            .map(|i| addrs[i])
    };

    // Per-PD config modules, setvars unexported.
    for pd in &sys.pds {
        let code = sdf::codegen::generate(&sys, &pd.name).map_err(|e| e.to_string())?;
        let code = unexport(&code)?;
        write(&out.join(format!("pd_{}.rs", pd.name)), &code)?;
    }
    if sys.pd("timer").is_some() {
        write(&out.join("timer_hw.rs"), &timer_hw(&sys))?;
    }
    if sys.pd("balloon").is_some() {
        write(&out.join("balloon_hw.rs"), &balloon_hw(&sys))?;
    }
    let guests: Vec<&str> = sys
        .pds
        .iter()
        .filter(|p| {
            p.program_image
                .as_deref()
                .is_some_and(|i| GUEST_IMAGES.contains(&i))
        })
        .map(|p| p.name.as_str())
        .collect();
    if !guests.is_empty() {
        write(&out.join("guests.rs"), &guests_rs(&sys, &guests)?)?;
        // The servers' tables of the guests, as their build scripts write them.
        for server in ["memserver", "balloon", "timer"] {
            if sys.pd(server).is_some() {
                let code = sdf::guests::server_module(&sys, server).map_err(|e| e.to_string())?;
                write(&out.join(format!("guests_{server}.rs")), &code)?;
            }
        }
    }

    // The image: modules, the system table, the entry.
    let mut code = format!(
        "// @generated by bare/build.rs from {}. Do not edit.\n\n",
        xml.display()
    );
    // The description this image was built from, for `tools bare` to check.
    let shown = xml.canonicalize().unwrap_or_else(|_| xml.into());
    code += &sdf::stamp::Stamp::new(&shown, text.as_bytes()).code();
    let mut slots = String::new();
    let mut refs = String::new();
    let mut pds = String::new();
    for (i, pd) in sys.pds.iter().enumerate() {
        let img = pd.program_image.as_deref().unwrap_or_default();
        let src = SOURCES
            .iter()
            .find(|(e, _)| *e == img)
            .ok_or_else(|| {
                format!(
                    "PD '{}': no source known for program_image '{img}'",
                    pd.name
                )
            })?
            .1;
        let src = root
            .join(src)
            .canonicalize()
            .map_err(|e| format!("{src}: {e}"))?;
        println!("cargo:rerun-if-changed={}", src.display());
        let module = format!("pd_{}", sdf::codegen::const_name(&pd.name).to_lowercase());
        let _ = writeln!(
            code,
            "/// PD '{}' ({img}).\n#[allow(unused_attributes, dead_code, unused_imports, clippy::all)]\n#[path = {:?}]\nmod {module};\n",
            pd.name,
            src.display().to_string()
        );
        let _ = writeln!(
            slots,
            "    let mut pd{i} = ::pd::bare::PdSlot::new({module}::__pd_bare_init);"
        );
        let _ = write!(refs, "&mut pd{i}, ");
        let index = |name: &str| sys.pds.iter().position(|p| p.name == name);
        let mut ends = String::new();
        for (end, other) in sys.ends_of(&pd.name) {
            let peer = index(&other.pd).ok_or_else(|| format!("no PD '{}'", other.pd))?;
            let _ = write!(
                ends,
                "::pd::bare::End {{ id: {}, peer: {peer}, peer_id: {}, notify: {}, pp: {} }}, ",
                end.id, other.id, end.notify, end.pp
            );
        }
        let mut maps = String::new();
        for m in &pd.maps {
            let r = sys
                .region(&m.mr)
                .ok_or_else(|| format!("no memory_region '{}'", m.mr))?;
            let a = addr_of(&m.mr).unwrap_or_default();
            let _ = write!(
                maps,
                "::pd::bare::Map {{ vaddr: {:#x}, size: {:#x}, addr: {a:#x} }}, ",
                m.vaddr, r.size
            );
        }
        let ioports: String = pd.ioports.iter().map(|io| format!("{}, ", io.id)).collect();
        let mut irqs = String::new();
        for q in &pd.irqs {
            let (n, level) = irq(arch, &q.kind);
            let _ = write!(
                irqs,
                "::pd::bare::Irq {{ id: {}, irq: {n:#x}, level: {level} }}, ",
                q.id
            );
        }
        let _ = writeln!(
            pds,
            "    ::pd::bare::PdDesc {{ name: {:?}, priority: {}, ends: &[{ends}], maps: &[{maps}], irqs: &[{irqs}], ioports: &[{ioports}] }},",
            pd.name, pd.priority
        );
    }
    let mut regions = String::new();
    for (r, a) in sys.memory_regions.iter().zip(&addrs) {
        let _ = writeln!(
            regions,
            "    ::pd::bare::RegionAddr {{ name: {:?}, addr: {a:#x}, size: {:#x} }},",
            r.name, r.size
        );
    }
    let _ = write!(
        code,
        "/// The system, as the image lays it out.\npub static SYSTEM: ::pd::bare::System = ::pd::bare::System {{\n  pds: &[\n{pds}  ],\n  regions: &[\n{regions}  ],\n}};\n\n\
         /// Start every PD and run the loop.\npub fn image_main(platform: &'static dyn ::pd::bare::Platform) -> ! {{\n    ::pd::bare::set_platform(platform);\n{slots}    ::pd::bare::run(&SYSTEM, platform, &mut [{refs}])\n}}\n"
    );
    write(&out.join(format!("image_{image}.rs")), &code)
}

/// Drop the `export_name`/`link_section` attributes of the setvar statics.
fn unexport(code: &str) -> Result<String, String> {
    const ATTR: &str = "#[cfg_attr(target_os = \"none\", unsafe(export_name";
    let statics = code.matches("::pd::SetVar::new()").count();
    let mut removed = 0;
    let mut out = String::with_capacity(code.len());
    for line in code.lines() {
        if line.trim_start().starts_with(ATTR) {
            removed += 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if removed != statics {
        return Err(format!(
            "sdf::codegen's setvar attributes changed ({removed} of {statics} found): update bare/build.rs"
        ));
    }
    Ok(out)
}

fn timer_hw(sys: &System) -> String {
    let hpet = sys.pd("timer").and_then(|pd| {
        pd.maps.iter().find(|m| {
            sys.region(&m.mr)
                .is_some_and(|r| r.phys_addr == Some(HPET_PADDR))
        })
    });
    let body = match hpet {
        Some(m) => format!(
            "Some(&super::config::region::{})",
            sdf::codegen::const_name(&m.mr)
        ),
        None => "None".to_string(),
    };
    format!(
        "// @generated by bare/build.rs (as timer/build.rs does).\n\
         #[allow(dead_code)]\npub fn hpet() -> Option<&'static ::pd::RegionDecl> {{\n    {body}\n}}\n"
    )
}

/// balloon/build.rs's `balloon_hw.rs`: the `<ioport>` at 0xcf8 (PCI
/// configuration space, x86_64), found by its address, and the room for
/// the ballooned blocks.
fn balloon_hw(sys: &System) -> String {
    let port = sys
        .pd("balloon")
        .and_then(|pd| pd.ioports.iter().find(|io| io.addr == 0xcf8));
    let body = match port {
        Some(io) => format!("Some(super::config::ioport::IOPORT_{})", io.id),
        None => "None".to_string(),
    };
    let blocks = sdf::guests::balloon_blocks(sys);
    format!(
        "// @generated by bare/build.rs (as balloon/build.rs does).\n\
         #[allow(dead_code)]\npub fn pci_config() -> Option<::pd::IoPort> {{\n    {body}\n}}\n\
         /// Ballooned blocks the PD can track (`sdf::guests::balloon_blocks`).\n\
         pub const BALLOONED_BLOCKS: usize = {blocks};\n"
    )
}

/// guest/build.rs's `guests.rs`, every guest with its own module (the bare
/// backend finds each PD's regions by the running PD anyway). A PD running
/// `hostile.elf` is in the table too: it looks itself up there.
fn guests_rs(sys: &System, guests: &[&str]) -> Result<String, String> {
    let mut code = String::from("// @generated by bare/build.rs (as guest/build.rs does).\n\n");
    let mut table = String::new();
    let mut ram_pages = None;
    for name in guests {
        let pd = sys.pd(name).ok_or_else(|| format!("no PD '{name}'"))?;
        let map = |key: &str| {
            pd.maps
                .iter()
                .find(|m| m.setvar_vaddr.as_deref() == Some(key))
                .map(|m| sdf::codegen::const_name(&m.mr))
                .ok_or_else(|| format!("PD '{name}' has no <map setvar_vaddr=\"{key}\">"))
        };
        let ram_mr = pd
            .maps
            .iter()
            .find(|m| m.setvar_vaddr.as_deref() == Some("ram"))
            .and_then(|m| sys.region(&m.mr))
            .ok_or_else(|| format!("PD '{name}' has no ram map"))?;
        // The page map is sized for the largest guest.
        ram_pages = Some(ram_pages.unwrap_or(0).max(ram_mr.size / 4096));
        let module = sdf::codegen::const_name(name).to_lowercase();
        let _ = writeln!(
            code,
            "#[allow(dead_code)]\npub mod {module} {{\n    include!(concat!(env!(\"OUT_DIR\"), \"/pd_{name}.rs\"));\n}}\n"
        );
        let _ = writeln!(
            table,
            "    Layout {{ name: {name:?}, log: {:?}, ram: &{module}::region::{}, ram_size: {:#x}, req: &{module}::region::{}, \
             resp: &{module}::region::{}, ram_paddr: &{module}::paddr::RAM_PADDR, \
             memserver: {module}::channel::MEMSERVER, timer: {module}::channel::TIMER }},",
            name.to_uppercase(),
            map("ram")?,
            ram_mr.size,
            map("req")?,
            map("resp")?,
        );
    }
    let _ = write!(
        code,
        "/// Pages of the largest guest's RAM.\npub const RAM_PAGES: usize = {};\n\npub static LAYOUTS: &[Layout] = &[\n{table}];\n",
        ram_pages.unwrap_or(0)
    );
    Ok(code)
}

fn write(path: &Path, code: &str) -> Result<(), String> {
    std::fs::write(path, code).map_err(|e| format!("{}: {e}", path.display()))
}
