//! Which frames may go to the device: the guests' RAM, from the system
//! description. Blocks outside it are refused and counted.

use super::BalloonPd;
use crate::defs::Block;
use virtio_drivers::{Hal, transport::Transport};

/// Most zones the balloon is told (as the memserver's MAX_ZONES).
pub const MAX_ZONES: usize = 64;

impl<'a, H: Hal, T: Transport> BalloonPd<'a, H, T> {
    /// The zones whose frames may go to the device: `(first PFN, pages)`
    /// each, from the system description (the PD's setvars), not from the
    /// memserver, whose messages are checked against them. A reported or
    /// inflated block outside every zone is refused and counted
    /// ([`Counters::foreign_blocks`](super::Counters::foreign_blocks)): the
    /// device would discard whatever memory the frame number names. Zones
    /// past [`MAX_ZONES`] are ignored (fewer frames allowed, never more).
    pub fn set_zones(&mut self, zones: &[(u64, u64)]) {
        self.zones = Some(
            zones
                .iter()
                .take(MAX_ZONES)
                .map(|&(pfn, pages)| (pfn, pfn.saturating_add(pages)))
                .collect(),
        );
    }

    /// Whether `b` lies inside one zone (true when no zones were given).
    pub(super) fn in_zones(&self, b: &Block) -> bool {
        let Some(zones) = &self.zones else {
            return true;
        };
        let end = b.pfn.saturating_add(b.pages());
        zones
            .iter()
            .any(|&(first, last)| b.pfn >= first && end <= last)
    }
}
