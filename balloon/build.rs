//! Generate the balloon PD's configuration (its rings, DMA region, virtio
//! register page, IRQ and memserver channel) from the system description
//! ([`sdf::build::system_xml`]: `SYSTEM_XML` or ../system.xml).

fn main() {
    if let Err(e) = sdf::build::pd(sdf::build::system_xml(), "balloon") {
        panic!("{e}");
    }
}
