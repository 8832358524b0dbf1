//! Generate the console PD's configuration (its UART, its IRQ, the
//! memserver's control rings and channel) from the system description:
//! `SYSTEM_XML` when it has a PD `console`, else ../system.xml (a
//! description without the PD still builds every PD crate, as the VMM's
//! build does; the binary is then one nobody runs).

use std::path::{Path, PathBuf};

fn has_console(xml: &Path) -> bool {
    std::fs::read_to_string(xml)
        .ok()
        .and_then(|t| {
            sdf::System::parse(&t)
                .ok()
                .map(|s| s.pd("console").is_some())
        })
        .unwrap_or(false)
}

fn main() {
    println!("cargo:rerun-if-env-changed=SYSTEM_XML");
    let xml = match std::env::var_os("SYSTEM_XML") {
        Some(p) if has_console(Path::new(&p)) => PathBuf::from(p),
        _ => PathBuf::from("../system.xml"),
    };
    if let Err(e) = sdf::build::pd(&xml, "console") {
        panic!("{e}");
    }
}
