//! One guest PD's view of `system.xml`: the table `build.rs` generates for
//! every PD whose program_image is `guest.elf`. Included by the guest PD and
//! by the hostile test PD (which takes the place of a guest, same layout).

/// One guest PD's view of `system.xml` (generated table entry).
#[derive(Debug)]
#[allow(dead_code)]
pub struct Layout {
    pub name: &'static str,
    pub log: &'static str,
    /// The RAM's mapping. On Microkit every guest's entry points at the
    /// first guest's declaration (one image holds one), so its `size` is
    /// that guest's: use [`Layout::ram_size`].
    pub ram: &'static pd::RegionDecl,
    /// This guest's RAM size in bytes (guests may differ).
    pub ram_size: u64,
    pub req: &'static pd::RegionDecl,
    pub resp: &'static pd::RegionDecl,
    pub ram_paddr: &'static pd::PhysAddr,
    pub memserver: pd::Channel,
    pub timer: pd::Channel,
}
impl Layout {
    /// This guest's RAM size in bytes: on Microkit the description's for
    /// this guest (the one image has one declaration, the first guest's);
    /// on the host platform the mapping's own (the launcher sizes it).
    #[allow(dead_code)]
    pub fn ram_bytes(&self) -> u64 {
        #[cfg(target_os = "none")]
        {
            self.ram_size
        }
        #[cfg(not(target_os = "none"))]
        {
            self.ram.get().size
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
