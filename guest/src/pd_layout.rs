//! One guest PD's view of `system.xml`: the table `build.rs` generates for
//! every PD whose program_image is `guest.elf`. Included by the guest PD and
//! by the hostile test PD (which takes the place of a guest, same layout).

/// One guest PD's view of `system.xml` (generated table entry).
#[derive(Debug)]
#[allow(dead_code)]
pub struct Layout {
    pub name: &'static str,
    pub log: &'static str,
    pub ram: &'static pd::RegionDecl,
    pub req: &'static pd::RegionDecl,
    pub resp: &'static pd::RegionDecl,
    pub ram_paddr: &'static pd::PhysAddr,
    pub memserver: pd::Channel,
    pub timer: pd::Channel,
}
include!(concat!(env!("OUT_DIR"), "/guests.rs"));
