//! The calls a PD makes on its channels: notify, IRQ ack, protected
//! procedure call, message registers and x86 port I/O. Each goes to the
//! platform compiled in (`crate::sys`, or `port_io` of the Microkit and bare
//! backends); the values they act on are `channel.rs`, below the platforms.

use crate::channel::{Channel, IoPort, IoPortError, MSG_MAX_LENGTH, MessageInfo, PortOp};
use crate::sys;

impl Channel {
    /// Signal the PD at the other end. A channel this PD may not notify is
    /// reported on the debug console and ignored, as libmicrokit does.
    pub fn notify(self) {
        sys::notify(self.index())
    }

    /// Acknowledge the IRQ with this id so it can be delivered again.
    pub fn irq_ack(self) {
        sys::irq_ack(self.index())
    }

    /// Protected procedure call: message registers `0..info.count()` go to the
    /// callee, whose reply's registers replace them.
    pub fn pp_call(self, info: MessageInfo) -> MessageInfo {
        sys::pp_call(self.index(), info)
    }
}

/// Message register `i` (0 for `i >= MSG_MAX_LENGTH`).
pub fn get_mr(i: usize) -> u64 {
    if i < MSG_MAX_LENGTH {
        sys::get_mr(i)
    } else {
        0
    }
}

/// Set message register `i`; `i >= MSG_MAX_LENGTH` is ignored.
pub fn set_mr(i: usize, v: u64) {
    if i < MSG_MAX_LENGTH {
        sys::set_mr(i, v)
    }
}

impl IoPort {
    fn access(&self, op: PortOp, port: u16, width: u8, value: u32) -> Result<u32, IoPortError> {
        let end = u64::from(port) + u64::from(width);
        if u64::from(port) < self.addr || end > self.addr.saturating_add(self.size) {
            return Err(IoPortError::OutOfRange { port, width });
        }
        port_io(self.id, op, port, value)
    }

    /// `in` of one byte from `port` (an absolute port number in the range).
    pub fn read8(&self, port: u16) -> Result<u8, IoPortError> {
        self.access(PortOp::In8, port, 1, 0).map(|v| v as u8)
    }
    /// `in` of two bytes.
    pub fn read16(&self, port: u16) -> Result<u16, IoPortError> {
        self.access(PortOp::In16, port, 2, 0).map(|v| v as u16)
    }
    /// `in` of four bytes.
    pub fn read32(&self, port: u16) -> Result<u32, IoPortError> {
        self.access(PortOp::In32, port, 4, 0)
    }
    /// `out` of one byte.
    pub fn write8(&self, port: u16, v: u8) -> Result<(), IoPortError> {
        self.access(PortOp::Out8, port, 1, v.into()).map(|_| ())
    }
    /// `out` of two bytes.
    pub fn write16(&self, port: u16, v: u16) -> Result<(), IoPortError> {
        self.access(PortOp::Out16, port, 2, v.into()).map(|_| ())
    }
    /// `out` of four bytes.
    pub fn write32(&self, port: u16, v: u32) -> Result<(), IoPortError> {
        self.access(PortOp::Out32, port, 4, v).map(|_| ())
    }
}

#[cfg(all(target_os = "none", target_arch = "x86_64", not(feature = "bare")))]
fn port_io(id: u64, op: PortOp, port: u16, value: u32) -> Result<u32, IoPortError> {
    crate::microkit::port_io(id, op, port, value)
}

#[cfg(all(target_os = "none", target_arch = "x86_64", feature = "bare"))]
fn port_io(id: u64, op: PortOp, port: u16, value: u32) -> Result<u32, IoPortError> {
    crate::bare::port_io(id, op, port, value)
}

#[cfg(not(all(target_os = "none", target_arch = "x86_64")))]
fn port_io(_: u64, _: PortOp, _: u16, _: u32) -> Result<u32, IoPortError> {
    Err(IoPortError::Unsupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_accesses_outside_the_range_are_refused_before_the_kernel() {
        let p = IoPort {
            id: 0,
            addr: 0xcf8,
            size: 8,
        };
        assert_eq!(
            p.read32(0xcfd),
            Err(IoPortError::OutOfRange {
                port: 0xcfd,
                width: 4
            })
        );
        assert_eq!(
            p.write8(0xcf7, 0),
            Err(IoPortError::OutOfRange {
                port: 0xcf7,
                width: 1
            })
        );
        // In range: this platform has no port I/O.
        assert_eq!(p.read32(0xcfc), Err(IoPortError::Unsupported));
    }
}
