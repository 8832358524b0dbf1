//! Generate the memserver PD's configuration (channels, rings, guest RAM
//! physical addresses) from the system description
//! ([`sdf::build::system_xml`]: `SYSTEM_XML` or ../system.xml).
//!
//! `cfg(has_vmm)` when the memserver has a channel to a PD `vmm`: then it
//! serves the VMM's rings (nested reporting), which the description must
//! give it as `vmm_req`, `vmm_resp` and the VM's RAM as setvar
//! `vm_ram_paddr`.
//!
//! `cfg(has_control)` when the memserver maps `control_req` and
//! `control_resp` and has one `<irq>`: the operator's control port
//! (`memserver::server::ControlPort`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_vmm)");
    println!("cargo::rustc-check-cfg=cfg(has_control)");
    let xml = sdf::build::system_xml();
    if let Err(e) = sdf::build::pd(&xml, "memserver") {
        panic!("{e}");
    }
    // Its zones and client ports: one per guest of the description.
    if let Err(e) = sdf::build::guests(&xml, "memserver") {
        panic!("{e}");
    }
    let text = std::fs::read_to_string(&xml).unwrap_or_else(|e| panic!("{}: {e}", xml.display()));
    let sys = sdf::System::parse(&text).unwrap_or_else(|e| panic!("{}:{e}", xml.display()));
    let to_vmm = sys.channels.iter().any(|c| {
        let [a, b] = &c.ends;
        (a.pd == "memserver" && b.pd == "vmm") || (a.pd == "vmm" && b.pd == "memserver")
    });
    if to_vmm {
        println!("cargo::rustc-cfg=has_vmm");
    }
    // The operator's control port: the rings `control_req` and
    // `control_resp`, and the console device's `<irq>` that says "look"
    // (on the host platform the launcher is that console).
    match sys.control_port() {
        Ok(None) => {}
        Ok(Some(_)) => println!("cargo::rustc-cfg=has_control"),
        Err(e) => panic!("{}: {e}", xml.display()),
    }
}
