//! Nested reporting, the VMM's part: a report chain of the VM's balloon
//! becomes one [`FromVmm::Report`] to the memserver, in pages of the VM's
//! RAM; the memserver's answer names the chain to give back to the guest.
//!
//! The guest is hostile and so, from here, is the memserver's answer: a
//! chain whose ranges are not all inside the VM's RAM is given back at once
//! and never sent; an answer for a chain the VMM has not sent is ignored
//! (and counted), so the guest never gets a buffer back twice.

use memserver_api::{FromVmm, ToVmm, VM_REPORT_RANGES, VmRange};
use vmm_virtio::balloon::{PAGE_SIZE, Range};

/// Report chains outstanding at the memserver at once: the reporting
/// queue's size, so every chain the guest can have in flight fits.
pub const MAX_OUTSTANDING: usize = vmm_virtio::balloon::REPORTING_QUEUE_SIZE as usize;

/// Why a chain was given back without being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    /// A range outside the VM's RAM (or wrapping around).
    OutsideRam { gpa: u64, len: u64 },
    /// More ranges than one report carries.
    TooManyRanges(usize),
    /// The chain is outstanding already (the guest reused a head).
    Outstanding(u16),
    /// More chains outstanding than the queue holds.
    Full,
}

impl core::fmt::Display for Unsent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Unsent::OutsideRam { gpa, len } => {
                write!(f, "range {gpa:#x}+{len:#x} lies outside the VM's RAM")
            }
            Unsent::TooManyRanges(n) => {
                write!(f, "{n} ranges (a report carries {VM_REPORT_RANGES})")
            }
            Unsent::Outstanding(h) => write!(f, "chain {h} is outstanding already"),
            Unsent::Full => write!(f, "{MAX_OUTSTANDING} chains outstanding"),
        }
    }
}

/// The report chains the memserver holds, by head.
#[derive(Debug, Default)]
pub struct Outstanding {
    heads: heapless::Vec<u16, MAX_OUTSTANDING>,
    /// Answers for chains not outstanding.
    pub stray_answers: u64,
}

impl Outstanding {
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// The message for chain `head` of `ranges`, for a VM whose RAM is
    /// `ram_size` bytes at guest-physical `ram_gpa`; the chain is then
    /// outstanding until [`Outstanding::answer`] names it.
    pub fn send(
        &mut self,
        head: u16,
        ranges: &[Range],
        ram_gpa: u64,
        ram_size: u64,
    ) -> Result<FromVmm, Unsent> {
        if self.heads.contains(&head) {
            return Err(Unsent::Outstanding(head));
        }
        if ranges.len() > VM_REPORT_RANGES {
            return Err(Unsent::TooManyRanges(ranges.len()));
        }
        let mut out: heapless::Vec<VmRange, VM_REPORT_RANGES> = heapless::Vec::new();
        for r in ranges {
            let outside = Unsent::OutsideRam {
                gpa: r.gpa,
                len: r.len,
            };
            let off = r.gpa.checked_sub(ram_gpa).ok_or(outside)?;
            let inside = off.checked_add(r.len).is_some_and(|end| end <= ram_size);
            if !inside {
                return Err(outside);
            }
            // Cannot fail: at most VM_REPORT_RANGES, checked above.
            let _ = out.push(VmRange {
                page: off / PAGE_SIZE,
                pages: r.len / PAGE_SIZE,
            });
        }
        self.heads.push(head).map_err(|_| Unsent::Full)?;
        Ok(FromVmm::Report {
            id: u32::from(head),
            ranges: out,
        })
    }

    /// Chain `head` could not be sent after all (the ring was full): it is
    /// no longer outstanding.
    pub fn unsend(&mut self, head: u16) {
        self.heads.retain(|h| *h != head);
    }

    /// The guest reset the device: its chains are gone with it. Answers
    /// for them that still come are strays; a report the guest makes
    /// anew with the same head while the memserver holds the old one is
    /// refused there (a duplicate id) and given back.
    pub fn forget_all(&mut self) {
        self.heads.clear();
    }

    /// The memserver's answer: the chain to give back, if it is one the
    /// VMM sent (each is given back once).
    pub fn answer(&mut self, msg: &ToVmm) -> Option<u16> {
        let id = match msg {
            ToVmm::ReportDone { id, .. } | ToVmm::Refused { id: Some(id), .. } => *id,
            ToVmm::Refused { id: None, .. } => {
                self.stray_answers += 1;
                return None;
            }
            // The balloon's other queues (`vm_balloon`).
            _ => return None,
        };
        match self.heads.iter().position(|h| u32::from(*h) == id) {
            Some(i) => Some(self.heads.swap_remove(i)),
            None => {
                self.stray_answers += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memserver_api::VmRefuse;

    const GPA: u64 = 0x4000_0000;
    const SIZE: u64 = 0x1000_0000;

    fn r(gpa: u64, len: u64) -> Range {
        Range { gpa, len }
    }

    #[test]
    fn a_chain_becomes_pages_of_the_vms_ram_and_comes_back_once() {
        let mut o = Outstanding::default();
        let m = o
            .send(
                5,
                &[r(GPA + 0x20_0000, 0x20_0000), r(GPA, 0x1000)],
                GPA,
                SIZE,
            )
            .unwrap();
        let FromVmm::Report { id, ranges } = m else {
            panic!("{m:?}");
        };
        assert_eq!(id, 5);
        assert_eq!(
            ranges.as_slice(),
            &[
                VmRange {
                    page: 512,
                    pages: 512
                },
                VmRange { page: 0, pages: 1 }
            ]
        );
        assert_eq!(
            o.send(5, &[r(GPA, 0x1000)], GPA, SIZE),
            Err(Unsent::Outstanding(5))
        );
        assert_eq!(o.answer(&ToVmm::ReportDone { id: 5, ok: true }), Some(5));
        assert_eq!(o.answer(&ToVmm::ReportDone { id: 5, ok: true }), None);
        assert_eq!(
            o.answer(&ToVmm::Refused {
                id: None,
                reason: VmRefuse::Malformed
            }),
            None
        );
        assert_eq!(o.stray_answers, 2);
        assert!(o.is_empty());
    }

    #[test]
    fn ranges_outside_the_ram_are_not_sent() {
        let mut o = Outstanding::default();
        for bad in [
            r(GPA - 0x1000, 0x1000),
            r(GPA + SIZE, 0x1000),
            r(GPA + SIZE - 0x1000, 0x2000),
            r(u64::MAX - 0xfff, 0x1000),
        ] {
            assert!(matches!(
                o.send(1, &[bad], GPA, SIZE),
                Err(Unsent::OutsideRam { .. })
            ));
        }
        let many = [r(GPA, 0x1000); VM_REPORT_RANGES + 1];
        assert_eq!(
            o.send(1, &many, GPA, SIZE),
            Err(Unsent::TooManyRanges(VM_REPORT_RANGES + 1))
        );
        assert!(o.is_empty(), "nothing refused is outstanding");
    }
}
