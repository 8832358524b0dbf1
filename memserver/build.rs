//! Generate the memserver PD's configuration (channels, rings, guest RAM
//! physical addresses) from the system description
//! ([`sdf::build::system_xml`]: `SYSTEM_XML` or ../system.xml).

fn main() {
    if let Err(e) = sdf::build::pd(sdf::build::system_xml(), "memserver") {
        panic!("{e}");
    }
}
