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
//! `control_resp`: the operator's control port
//! (`memserver::server::ControlPort`); with `cfg(control_irq)` when its
//! one `<irq>` says "look" (the host platform's launcher), with
//! `cfg(control_console)` when the console PD does, on their channel.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_vmm)");
    for cfg in sdf::build::CONTROL_PORT_CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
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
    // `control_resp`, and who says "look": an `<irq>` (on the host platform
    // the launcher is that console) or the console PD's channel.
    match sdf::build::control_port_cfgs(&sys) {
        Ok(cfgs) => {
            for cfg in cfgs {
                println!("cargo::rustc-cfg={cfg}");
            }
        }
        Err(e) => panic!("{}: {e}", xml.display()),
    }
}
