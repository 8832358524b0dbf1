//! No platform: the pd crate built for Linux without `host`, as a dependency
//! of host-tested cores. Cores make no platform calls; reaching one here is a
//! build-configuration bug, so it panics with a message saying so.

use crate::{MessageInfo, PhysAddr, Region, RegionDecl};
use core::fmt;

const NO_PLATFORM: &str =
    "pd: no platform backend (enable feature `host` or build for target_os = \"none\")";

pub(crate) const REGIONS_UNTOUCHED_AT_BOOT: bool = false;

pub(crate) fn pd_name() -> &'static str {
    "pd"
}
pub(crate) fn notify(_: usize) {
    panic!("{NO_PLATFORM}")
}
pub(crate) fn irq_ack(_: usize) {
    panic!("{NO_PLATFORM}")
}
pub(crate) fn pp_call(_: usize, _: MessageInfo) -> MessageInfo {
    panic!("{NO_PLATFORM}")
}
pub(crate) fn get_mr(_: usize) -> u64 {
    panic!("{NO_PLATFORM}")
}
pub(crate) fn set_mr(_: usize, _: u64) {
    panic!("{NO_PLATFORM}")
}
pub(crate) fn region(_: &RegionDecl, _: Option<u64>) -> Region {
    panic!("{NO_PLATFORM}")
}
pub(crate) fn paddr(_: &PhysAddr) -> u64 {
    panic!("{NO_PLATFORM}")
}
/// Debug output goes nowhere: a core may log in its tests.
pub(crate) fn put_bytes(_: &[u8]) {}
pub(crate) fn print_fmt(_: fmt::Arguments<'_>) {}
