//! The VM balloon's inflate, deflate and stats queues, the VMM's part of
//! the outer host's target reaching the VM (issue 14): frames the guest
//! puts in or takes out of its balloon become [`FromVmm::Inflated`] and
//! [`FromVmm::Deflated`] messages in pages of the VM's RAM (runs of
//! consecutive frames as one range), its statistics a [`FromVmm::Stats`];
//! the memserver's target becomes the device's `num_pages`.
//!
//! A deflate chain is held until the memserver says the outer host holds
//! none of its frames ([`ToVmm::DeflateDone`]), or refused it (it then
//! changed nothing, so it never passed those frames on): only then does
//! the guest get the chain back and use the frames. One chain of 256
//! frames may need several messages ([`MAX_PARTS`]); the chain is done when
//! all are. Ids are `head << 4 | part`, unique while the chain is held.

use memserver_api::{FromVmm, ToVmm, VM_REPORT_RANGES, VmRange, VmStats};
use vmm_virtio::balloon::{MAX_PFNS, PAGE_SIZE};

/// Messages one chain of [`MAX_PFNS`] frames may need.
pub const MAX_PARTS: usize = MAX_PFNS.div_ceil(VM_REPORT_RANGES);

/// Deflate chains held at once: the deflate queue's size.
pub const MAX_HELD: usize = vmm_virtio::balloon::INFLATE_QUEUE_SIZE as usize;

/// VIRTIO 1.2 §5.5.6.3 statistics tags (values in bytes).
pub mod tag {
    pub const MEMFREE: u16 = 4;
    pub const MEMTOT: u16 = 5;
    pub const AVAIL: u16 = 6;
}

/// The messages for one chain.
pub type Parts = heapless::Vec<FromVmm, MAX_PARTS>;

/// A frame outside the VM's RAM (the device checked frames against guest
/// memory; this is the VMM's own check against the RAM it tells the
/// memserver about).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRam(pub u32);

impl core::fmt::Display for NotRam {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "frame {:#x} lies outside the VM's RAM", self.0)
    }
}

/// Runs of consecutive frames as ranges of pages of the VM's RAM (RAM at
/// guest-physical `ram_gpa`, `ram_size` bytes), [`VM_REPORT_RANGES`] per
/// message.
pub fn ranges(
    pfns: &[u32],
    ram_gpa: u64,
    ram_size: u64,
) -> Result<heapless::Vec<heapless::Vec<VmRange, VM_REPORT_RANGES>, MAX_PARTS>, NotRam> {
    let first = ram_gpa / PAGE_SIZE;
    let pages = ram_size / PAGE_SIZE;
    let mut out: heapless::Vec<heapless::Vec<VmRange, VM_REPORT_RANGES>, MAX_PARTS> =
        heapless::Vec::new();
    let mut run: Option<VmRange> = None;
    let flush = |r: VmRange, out: &mut heapless::Vec<_, MAX_PARTS>| {
        if out
            .last()
            .is_none_or(|p: &heapless::Vec<VmRange, VM_REPORT_RANGES>| p.is_full())
        {
            // At most MAX_PFNS runs, so MAX_PARTS parts.
            let _ = out.push(heapless::Vec::new());
        }
        if let Some(p) = out.last_mut() {
            let _ = p.push(r);
        }
    };
    for &pfn in pfns.iter().take(MAX_PFNS) {
        let page = u64::from(pfn)
            .checked_sub(first)
            .filter(|&p| p < pages)
            .ok_or(NotRam(pfn))?;
        run = match run {
            Some(r) if r.page + r.pages == page => Some(VmRange {
                page: r.page,
                pages: r.pages + 1,
            }),
            Some(r) => {
                flush(r, &mut out);
                Some(VmRange { page, pages: 1 })
            }
            None => Some(VmRange { page, pages: 1 }),
        };
    }
    if let Some(r) = run {
        flush(r, &mut out);
    }
    Ok(out)
}

/// The guest's statistics as the memserver takes them, in pages.
pub fn stats(pairs: &[(u16, u64)]) -> FromVmm {
    let mut s = VmStats::default();
    for &(t, bytes) in pairs {
        let pages = Some(bytes / PAGE_SIZE);
        match t {
            tag::MEMFREE => s.free_pages = pages,
            tag::MEMTOT => s.total_pages = pages,
            tag::AVAIL => s.available_pages = pages,
            _ => {}
        }
    }
    FromVmm::Stats(s)
}

/// What the link counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Deflate parts the memserver refused.
    pub refused_deflates: u64,
    /// Answers naming no deflate held.
    pub stray_answers: u64,
    /// Chains with a frame outside the VM's RAM (given back unsent).
    pub not_ram: u64,
}

/// The deflate chains the VMM holds, by head, with the parts not yet
/// answered.
#[derive(Debug, Default)]
pub struct Deflates {
    held: heapless::Vec<(u16, u16), MAX_HELD>,
    pub counters: LinkCounters,
}

impl Deflates {
    /// Chains held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The messages for deflate chain `head` of `pfns`; the chain is held
    /// until every part is answered. `Err` gives the chain back at once:
    /// a frame outside the RAM, a head already held, or too many held.
    pub fn send(
        &mut self,
        head: u16,
        pfns: &[u32],
        ram_gpa: u64,
        ram_size: u64,
    ) -> Result<Parts, Option<NotRam>> {
        if self.held.iter().any(|h| h.0 == head) || self.held.is_full() {
            return Err(None);
        }
        let parts = ranges(pfns, ram_gpa, ram_size).map_err(|e| {
            self.counters.not_ram += 1;
            Some(e)
        })?;
        if parts.is_empty() {
            return Err(None);
        }
        let mut out = Parts::new();
        let mut mask = 0u16;
        for (i, ranges) in parts.into_iter().enumerate() {
            mask |= 1 << i;
            // Cannot fail: at most MAX_PARTS parts.
            let _ = out.push(FromVmm::Deflated {
                id: u32::from(head) << 4 | i as u32,
                ranges,
            });
        }
        // Room was checked above.
        let _ = self.held.push((head, mask));
        Ok(out)
    }

    /// The memserver's answer: the chain to give back, when this answer
    /// completed it (every part done or refused). A refused part changed
    /// nothing at the memserver: it held none of those frames as the
    /// VM's balloon (else it would have taken the part), so none was
    /// passed on, and the guest may use them.
    pub fn answer(&mut self, msg: &ToVmm) -> Option<u16> {
        let (id, refused) = match msg {
            ToVmm::DeflateDone { id } => (*id, false),
            ToVmm::BalloonRefused { id: Some(id), .. } => (*id, true),
            _ => return None,
        };
        // A head past u16 or a part past MAX_PARTS matches nothing held.
        let (head, part) = (id >> 4, id & 0xf);
        let Some(i) = self
            .held
            .iter()
            .position(|h| u32::from(h.0) == head && h.1 & (1 << part) != 0)
        else {
            self.counters.stray_answers += 1;
            return None;
        };
        if refused {
            self.counters.refused_deflates += 1;
        }
        self.held[i].1 &= !(1 << part);
        if self.held[i].1 == 0 {
            return Some(self.held.swap_remove(i).0);
        }
        None
    }

    /// The guest reset the device: its chains are gone with it.
    pub fn forget_all(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests;
