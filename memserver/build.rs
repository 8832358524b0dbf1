//! Generate the memserver PD's configuration (channels, rings, guest RAM
//! physical addresses) from the system description
//! ([`sdf::build::system_xml`]: `SYSTEM_XML` or ../system.xml).

fn main() {
    let xml = sdf::build::system_xml();
    if let Err(e) = sdf::build::pd(&xml, "memserver") {
        panic!("{e}");
    }
    // Its zones and client ports: one per guest of the description.
    if let Err(e) = sdf::build::guests(&xml, "memserver") {
        panic!("{e}");
    }
}
