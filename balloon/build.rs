//! Generate the balloon PD's configuration (its rings, DMA region, virtio
//! register page, IRQ and memserver channel) from the system description.
//!
//! `SYSTEM_XML` selects the description (default `../system.xml`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=SYSTEM_XML");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let xml = std::env::var_os("SYSTEM_XML")
        .map_or_else(|| manifest.join("../system.xml"), PathBuf::from);
    if let Err(e) = sdf::build::pd(&xml, "balloon") {
        panic!("{e}");
    }
}
