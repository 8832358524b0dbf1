//! One small system per rule of `sdf::check`, plus the parser's errors and
//! the code generator's naming rule.

use sdf::model::ControlPort;
use sdf::{Severity, System, check, codegen};

/// Wrap `body` in `<system>`; line 1 is `<system>`, so `body`'s first line is 2.
fn sys(body: &str) -> System {
    System::parse(&format!("<system>\n{body}\n</system>")).unwrap_or_else(|e| panic!("parse: {e}"))
}

fn errors(body: &str) -> Vec<String> {
    check(&sys(body))
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect()
}

fn warnings(body: &str) -> Vec<String> {
    check(&sys(body))
        .into_iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| d.to_string())
        .collect()
}

fn parse_err(body: &str) -> String {
    System::parse(&format!("<system>\n{body}\n</system>"))
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

const TWO_PDS: &str = r#"<memory_region name="ring" size="0x1000"/>
<protection_domain name="server" priority="200" pp="true"><program_image path="s.elf"/>
  <map mr="ring" vaddr="0x1000000" perms="rw"/></protection_domain>
<protection_domain name="client" priority="100"><program_image path="c.elf"/>
  <map mr="ring" vaddr="0x1000000" perms="rw"/></protection_domain>
<channel><end pd="server" id="0"/><end pd="client" id="0" pp="true"/></channel>"#;

#[test]
fn a_good_system_is_clean() {
    assert_eq!(check(&sys(TWO_PDS)), vec![]);
}

#[test]
fn the_pd_crates_test_systems_are_clean() {
    for f in ["system.xml", "crash.xml"] {
        let path = format!(
            "{}/../../pd/examples/pingpong/{f}",
            env!("CARGO_MANIFEST_DIR")
        );
        let s = System::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(check(&s), vec![], "{path}");
    }
}

#[test]
fn duplicate_names() {
    let e = errors(
        r#"<memory_region name="a" size="0x1000"/>
<memory_region name="a" size="0x1000"/>
<protection_domain name="p"><program_image path="p.elf"/><map mr="a" vaddr="0x1000"/></protection_domain>
<protection_domain name="p"><program_image path="p.elf"/></protection_domain>"#,
    );
    assert_eq!(
        e,
        [
            "3: error: memory_region name 'a' already defined at line 2",
            "5: error: protection_domain name 'p' already defined at line 4",
        ]
    );
}

#[test]
fn unknown_names() {
    let e = errors(
        r#"<protection_domain name="p"><program_image path="p.elf"/>
  <map mr="nope" vaddr="0x1000"/>
  <setvar symbol="x" region_paddr="nada"/>
</protection_domain>
<channel><end pd="p" id="0"/><end pd="ghost" id="0"/></channel>"#,
    );
    assert_eq!(
        e,
        [
            "3: error: PD 'p' maps unknown memory_region 'nope'",
            "4: error: setvar 'x' names unknown memory_region 'nada'",
            "6: error: channel end names unknown protection_domain 'ghost'",
        ]
    );
}

#[test]
fn channel_id_out_of_range() {
    let body = TWO_PDS.replace(
        r#"<end pd="server" id="0"/>"#,
        r#"<end pd="server" id="62"/>"#,
    );
    assert_eq!(
        errors(&body),
        ["7: error: channel end pd=\"server\" id 62 is out of range 0..=61"]
    );
}

#[test]
fn channel_id_reused_and_clashing_with_irq_and_ioport() {
    let e = errors(
        r#"<protection_domain name="a" priority="1"><program_image path="a.elf"/>
  <irq irq="79" id="3" trigger="edge"/>
  <ioport id="4" addr="0xcf8" size="8"/>
</protection_domain>
<protection_domain name="b" priority="2"><program_image path="b.elf"/></protection_domain>
<channel><end pd="a" id="3"/><end pd="b" id="0"/></channel>
<channel><end pd="a" id="4"/><end pd="b" id="0"/></channel>"#,
    );
    assert_eq!(
        e,
        [
            "4: error: ioport of PD 'a' id 4 already used by channel end pd=\"a\" (to 'b') (line 8)",
            "7: error: channel end pd=\"a\" (to 'b') id 3 already used by irq of PD 'a' (line 3)",
            "8: error: channel end pd=\"b\" (to 'a') id 0 already used by channel end pd=\"b\" (to 'a') (line 7)",
        ]
    );
}

#[test]
fn overlapping_maps() {
    let e = errors(
        r#"<memory_region name="a" size="0x2000"/>
<memory_region name="b" size="0x1000"/>
<protection_domain name="p"><program_image path="p.elf"/>
  <map mr="a" vaddr="0x10000"/>
  <map mr="b" vaddr="0x11000"/>
</protection_domain>"#,
    );
    assert_eq!(
        e,
        [
            "6: error: PD 'p' map of 'b' at 0x11000..0x12000 overlaps map of 'a' at 0x10000..0x12000 (line 5)"
        ]
    );
}

#[test]
fn sizes_and_addresses_must_fit_the_page_size() {
    let e = errors(
        r#"<memory_region name="a" size="0x1800"/>
<memory_region name="big" size="0x200000" page_size="0x200000" phys_addr="0x1000"/>
<memory_region name="odd" size="0x1000" page_size="0x3000"/>
<protection_domain name="p"><program_image path="p.elf"/>
  <irq irq="30" id="0"/>
  <map mr="a" vaddr="0x10000"/>
  <map mr="big" vaddr="0x1001000"/>
  <map mr="odd" vaddr="0x3000000"/>
</protection_domain>"#,
    );
    assert_eq!(
        e,
        [
            "2: error: memory_region 'a' size 0x1800 is not a multiple of its page size 0x1000",
            "3: error: memory_region 'big' phys_addr 0x1000 is not aligned to its page size 0x200000",
            "4: error: memory_region 'odd' page_size 0x3000 is neither 0x1000 nor 0x200000",
            "8: error: map of 'big' at vaddr 0x1001000 is not aligned to the region's page size 0x200000",
        ]
    );
}

#[test]
fn shared_memory_needs_a_channel() {
    let body = TWO_PDS.replace(
        r#"<channel><end pd="server" id="0"/><end pd="client" id="0" pp="true"/></channel>"#,
        "",
    );
    assert_eq!(
        errors(&body),
        [
            "4: error: PD 'server' maps memory_region 'ring' that 'client' also maps, but they share no channel",
        ]
    );
}

#[test]
fn device_memory_has_one_driver_with_an_irq() {
    let e = errors(
        r#"<memory_region name="mmio" size="0x1000" phys_addr="0xa003000"/>
<protection_domain name="driver" priority="2"><program_image path="d.elf"/>
  <map mr="mmio" vaddr="0x2000000" cached="false"/>
</protection_domain>
<protection_domain name="snoop" priority="1"><program_image path="s.elf"/>
  <map mr="mmio" vaddr="0x2000000" cached="false"/>
</protection_domain>
<channel><end pd="driver" id="0"/><end pd="snoop" id="0"/></channel>"#,
    );
    assert_eq!(
        e,
        [
            "4: error: PD 'driver' maps device memory 'mmio' (phys_addr, uncached) but has no <irq>: only a driver maps a device",
            "7: error: memory_region 'mmio' has a fixed phys_addr and is mapped by 2 PDs (driver, snoop): only one PD may own it",
            "7: error: PD 'snoop' maps device memory 'mmio' (phys_addr, uncached) but has no <irq>: only a driver maps a device",
        ]
    );
}

#[test]
fn a_paddr_is_only_told_to_a_pd_with_business() {
    let body = format!(
        "{TWO_PDS}\n{}",
        r#"<memory_region name="guest_ram" size="0x200000" page_size="0x200000"/>
<protection_domain name="guest" priority="50"><program_image path="g.elf"/>
  <map mr="guest_ram" vaddr="0x40000000"/></protection_domain>
<protection_domain name="nosy" priority="60"><program_image path="n.elf"/>
  <setvar symbol="ram_paddr" region_paddr="guest_ram"/></protection_domain>"#
    );
    assert_eq!(
        errors(&body),
        [
            "12: error: PD 'nosy' learns the physical address of 'guest_ram' but neither maps it nor shares a channel with a PD that does",
        ]
    );
    // With a channel to the guest (the memserver's case) it is fine.
    let ok = format!(
        "{body}\n<channel><end pd=\"nosy\" id=\"0\"/><end pd=\"guest\" id=\"0\"/></channel>"
    );
    assert_eq!(errors(&ok), Vec::<String>::new());
}

#[test]
fn ppc_must_go_to_a_higher_priority() {
    let body = TWO_PDS.replace(
        r#"name="server" priority="200""#,
        r#"name="server" priority="100""#,
    );
    assert_eq!(
        errors(&body),
        [
            "7: error: PD 'client' (priority 100) makes PPCs to 'server' (priority 100): the callee's priority must be strictly higher",
        ]
    );
    let both = TWO_PDS.replace(
        r#"<end pd="server" id="0"/>"#,
        r#"<end pd="server" id="0" pp="true"/>"#,
    );
    assert!(
        errors(&both)
            .iter()
            .any(|e| e == "7: error: channel has pp=\"true\" on both ends"),
        "{:?}",
        errors(&both)
    );
}

#[test]
fn unused_region_and_pp_flag_are_warnings() {
    let body = format!(
        "{}\n<memory_region name=\"spare\" size=\"0x1000\"/>",
        TWO_PDS.replace(" pp=\"true\"><program_image", "><program_image")
    );
    assert_eq!(
        warnings(&body),
        [
            "7: warning: PD 'server' is PPC'd by 'client' but does not say pp=\"true\"",
            "8: warning: memory_region 'spare' is not used by any PD or VM",
        ]
    );
}

#[test]
fn parser_errors_carry_the_line() {
    assert_eq!(
        parse_err(r#"<memory_region name="a" size="lots"/>"#),
        "2: attribute 'size' = \"lots\" is not a number"
    );
    assert_eq!(
        parse_err(r#"<memory_region name="a" size="0x1000" colour="red"/>"#),
        "2: unknown attribute 'colour' on <memory_region>"
    );
    assert_eq!(
        parse_err("<protection_domain name=\"p\"/>"),
        "2: PD 'p' has no <program_image>"
    );
    assert_eq!(
        parse_err("<channel>\n<end pd=\"a\" id=\"0\"/>\n</channel>"),
        "2: <channel> has 1 <end>s, expected 2"
    );
    assert_eq!(
        parse_err(
            "<protection_domain name=\"p\"><program_image path=\"p\"/><map mr=\"a\" vaddr=\"0\" perms=\"w\"/></protection_domain>"
        ),
        "2: perms=\"w\" is not a valid combination of r, w, x"
    );
    assert_eq!(
        parse_err("<virtual_machine name=\"vm\"/>"),
        "2: unsupported element <virtual_machine> in <system>"
    );
    assert!(
        parse_err("<oops>").starts_with("3: XML error"),
        "{}",
        parse_err("<oops>")
    );
}

#[test]
fn parser_reads_every_attribute() {
    let s = sys(
        r#"<memory_region name="dma" size="0x200000" page_size="0x200000" phys_addr="0x10000000"/>
<protection_domain name="balloon" priority="150" passive="true" stack_size="0x4000" budget="100" period="200">
  <program_image path="balloon.elf"/>
  <map mr="dma" vaddr="0x3000000" perms="r" cached="false" setvar_vaddr="dma_vaddr" setvar_size="dma_size"/>
  <irq id="1" ioapic="0" pin="11" vector="5" trigger="level" polarity="high"/>
  <irq id="2" pcidev="00:04.0" handle="0" vector="6"/>
  <ioport id="3" addr="0xcf8" size="8"/>
  <setvar symbol="dma_paddr" region_paddr="dma"/>
</protection_domain>"#,
    );
    let pd = &s.pds[0];
    assert_eq!(
        (pd.priority, pd.passive, pd.stack_size, pd.budget, pd.period),
        (150, true, 0x4000, Some(100), Some(200))
    );
    let m = &pd.maps[0];
    assert_eq!(
        (
            m.vaddr,
            m.perms.to_string(),
            m.cached,
            m.setvar_vaddr.as_deref(),
            m.line
        ),
        (0x300_0000, "r".into(), false, Some("dma_vaddr"), 5)
    );
    assert_eq!(
        pd.irqs[0].kind,
        sdf::model::IrqKind::IoApic {
            ioapic: 0,
            pin: 11,
            vector: 5,
            edge: false,
            high: true
        }
    );
    assert_eq!(
        pd.irqs[1].kind,
        sdf::model::IrqKind::Msi {
            pcidev: "00:04.0".into(),
            handle: 0,
            vector: 6
        }
    );
    assert_eq!((pd.ioports[0].addr, pd.ioports[0].size), (0xcf8, 8));
    assert_eq!(s.memory_regions[0].phys_addr, Some(0x1000_0000));
}

#[test]
fn codegen_follows_the_naming_rule() {
    let s = sys(r#"<memory_region name="guest0-ram" size="0x1000"/>
<protection_domain name="mem" priority="2"><program_image path="m.elf"/>
  <map mr="guest0-ram" vaddr="0x1000" setvar_vaddr="ram_vaddr"/>
  <irq irq="30" id="5"/>
  <setvar symbol="ram_paddr" region_paddr="guest0-ram"/>
</protection_domain>
<protection_domain name="guest" priority="1"><program_image path="g.elf"/><map mr="guest0-ram" vaddr="0x1000"/></protection_domain>
<protection_domain name="timer" priority="3"><program_image path="t.elf"/></protection_domain>
<channel><end pd="mem" id="0"/><end pd="guest" id="0"/></channel>
<channel><end pd="mem" id="1"/><end pd="guest" id="1"/></channel>
<channel><end pd="mem" id="2" pp="true"/><end pd="timer" id="0"/></channel>"#);
    let code = codegen::generate(&s, "mem").unwrap();
    for want in [
        "pub const GUEST_0: ::pd::Channel = ::pd::Channel::new(0);",
        "pub const GUEST_1: ::pd::Channel = ::pd::Channel::new(1);",
        "pub const TIMER: ::pd::Channel = ::pd::Channel::new(2);",
        "pub const IRQ: ::pd::Channel = ::pd::Channel::new(5);",
        "pub static GUEST0_RAM: ::pd::RegionDecl = ::pd::RegionDecl { name: \"guest0-ram\", vaddr: 0x1000, size: 0x1000, writable: true, paddr: ::pd::PaddrSource::SetVar(&super::__setvar::SETVAR_0) };",
        "pub static RAM_PADDR: ::pd::PhysAddr",
        "unsafe(export_name = \"ram_vaddr\")",
        "unsafe(export_name = \"ram_paddr\")",
    ] {
        assert!(code.contains(want), "missing {want:?} in\n{code}");
    }
    assert_eq!(
        codegen::generate(&s, "nobody"),
        Err(codegen::CodegenError::UnknownPd("nobody".into()))
    );
    assert_eq!(codegen::const_name("9lives"), "_9LIVES");
}

#[test]
fn codegen_rejects_name_clashes() {
    let s = sys(r#"<memory_region name="a-b" size="0x1000"/>
<memory_region name="a_b" size="0x1000"/>
<protection_domain name="p"><program_image path="p.elf"/>
  <map mr="a-b" vaddr="0x1000"/><map mr="a_b" vaddr="0x2000"/></protection_domain>"#);
    assert_eq!(
        codegen::generate(&s, "p"),
        Err(codegen::CodegenError::NameClash {
            module: "region",
            name: "A_B".into()
        })
    );
}

const VMM: &str = r#"<memory_region name="guest_ram" size="0x10000000" page_size="0x200000"/>
<memory_region name="gicv" size="0x2000" phys_addr="0x8040000"/>
<protection_domain name="vmm" priority="100"><program_image path="vmm.elf"/>
  <map mr="guest_ram" vaddr="0x20000000" perms="rw"/>
  <virtual_machine name="linux" priority="90">
    <vcpu id="0"/>
    <map mr="guest_ram" vaddr="0x40000000" perms="rwx"/>
    <map mr="gicv" vaddr="0x8010000" perms="rw" cached="false"/>
  </virtual_machine>
</protection_domain>"#;

#[test]
fn a_virtual_machine_is_parsed_and_clean() {
    let s = sys(VMM);
    let vm = s.pds[0].virtual_machine.as_ref().unwrap();
    assert_eq!((vm.name.as_str(), vm.priority), ("linux", 90));
    assert_eq!(vm.vcpus.len(), 1);
    assert_eq!(vm.maps[0].vaddr, 0x4000_0000);
    assert!(vm.maps[0].perms.execute);
    assert!(!vm.maps[1].cached);
    assert_eq!(check(&s), vec![]);
    assert!(sdf::check::check_for_board(&s, "qemu_virt_aarch64").is_empty());
}

#[test]
fn a_vm_map_over_an_emulated_device_window_is_an_error() {
    let e = errors(&VMM.replace(
        r#"<map mr="gicv" vaddr="0x8010000""#,
        r#"<map mr="gicv" vaddr="0x8000000""#,
    ));
    assert!(
        e.iter()
            .any(|e| e.contains("overlaps the GICv2 distributor") && e.starts_with("9:")),
        "{e:?}"
    );
    let e = errors(&VMM.replace(
        r#"<map mr="gicv" vaddr="0x8010000""#,
        r#"<map mr="gicv" vaddr="0xa001000""#,
    ));
    assert!(e.iter().any(|e| e.contains("virtio-mmio")), "{e:?}");
    // Two VM maps over each other.
    let e = errors(&VMM.replace(
        r#"<map mr="gicv" vaddr="0x8010000""#,
        r#"<map mr="gicv" vaddr="0x40001000""#,
    ));
    assert!(
        e.iter().any(|e| e.contains("overlaps map of 'guest_ram'")),
        "{e:?}"
    );
}

#[test]
fn vcpu_ids_clash_and_range() {
    let e = errors(&VMM.replace(r#"<vcpu id="0"/>"#, r#"<vcpu id="0"/><vcpu id="0"/>"#));
    assert!(
        e.iter().any(|e| e.contains("vcpu id 0 is already used")),
        "{e:?}"
    );
    let e = errors(&VMM.replace(r#"<vcpu id="0"/>"#, r#"<vcpu id="64"/>"#));
    assert!(e.iter().any(|e| e.contains("above 63")), "{e:?}");
    let e = errors(&VMM.replace(r#"<vcpu id="0"/>"#, ""));
    assert!(e.iter().any(|e| e.contains("has no <vcpu>")), "{e:?}");
    // Microkit 2.3.0 ignores setvar_id silently; the parser says so.
    let p = parse_err(&VMM.replace(r#"<vcpu id="0"/>"#, r#"<vcpu id="0" setvar_id="v"/>"#));
    assert!(p.contains("setvar_id"), "{p}");
    let p = parse_err(&VMM.replace(r#"perms="rwx"/>"#, r#"perms="rwx" setvar_vaddr="x"/>"#));
    assert!(p.contains("setvar_vaddr"), "{p}");
}

#[test]
fn a_vm_needs_a_board_with_hypervisor_support() {
    let d = sdf::check::check_for_board(&sys(VMM), "x86_64_generic");
    assert!(
        d.iter().any(|d| d.severity == Severity::Error
            && d.message.contains("needs a board with hypervisor support")),
        "{d:?}"
    );
    // The name of a VM is not a PD's.
    let e = errors(&VMM.replace(r#"name="linux""#, r#"name="vmm""#));
    assert!(
        e.iter().any(|e| e.contains("taken by a protection_domain")),
        "{e:?}"
    );
}

/// The memserver's control port: both rings and one `<irq>`, or none of
/// them; anything in between is an error, not a port.
#[test]
fn the_control_port_is_both_rings_and_one_irq_or_nothing() {
    let memserver = |inner: &str| {
        sys(&format!(
            r#"<memory_region name="control_req" size="0x1000"/>
<memory_region name="control_resp" size="0x1000"/>
<protection_domain name="memserver" priority="200"><program_image path="m.elf"/>
{inner}
</protection_domain>"#
        ))
    };
    const REQ: &str = r#"<map mr="control_req" vaddr="0x1000000" perms="rw"/>"#;
    const RESP: &str = r#"<map mr="control_resp" vaddr="0x1001000" perms="rw"/>"#;
    const IRQ: &str = r#"<irq irq="100" id="4" trigger="edge"/>"#;
    let s = memserver(&format!("{REQ}{RESP}{IRQ}"));
    assert!(matches!(s.control_port(), Ok(Some(ControlPort::Irq(i))) if i.id == 4));
    assert_eq!(
        sdf::build::control_port_cfgs(&s),
        Ok(&["has_control", "control_irq"][..])
    );
    assert_eq!(memserver("").control_port(), Ok(None));
    assert_eq!(sdf::build::control_port_cfgs(&memserver("")), Ok(&[][..]));
    for partial in [
        format!("{REQ}{RESP}"),
        format!("{REQ}{IRQ}"),
        IRQ.to_string(),
        format!("{REQ}{RESP}{IRQ}<irq irq=\"101\" id=\"5\" trigger=\"edge\"/>"),
    ] {
        let e = memserver(&partial).control_port().unwrap_err();
        assert!(e.contains("needs both maps"), "{partial}: {e}");
    }
    // The console PD instead of the <irq>; not both, and not without rings.
    let console = |inner: &str| {
        sys(&format!(
            r#"<memory_region name="control_req" size="0x1000"/>
<memory_region name="control_resp" size="0x1000"/>
<protection_domain name="memserver" priority="200"><program_image path="m.elf"/>
{inner}
</protection_domain>
<protection_domain name="console" priority="100"><program_image path="c.elf"/></protection_domain>
<channel><end pd="console" id="1"/><end pd="memserver" id="7"/></channel>"#
        ))
    };
    let s = console(&format!("{REQ}{RESP}"));
    assert!(matches!(s.control_port(), Ok(Some(ControlPort::Console(e))) if e.id == 7));
    assert_eq!(
        sdf::build::control_port_cfgs(&s),
        Ok(&["has_control", "control_console"][..])
    );
    for partial in [format!("{REQ}{RESP}{IRQ}"), String::new(), REQ.to_string()] {
        let e = console(&partial).control_port().unwrap_err();
        assert!(e.contains("or a channel to PD 'console'"), "{partial}: {e}");
    }
    assert_eq!(sys(TWO_PDS).control_port(), Err("no PD 'memserver'".into()));
}
