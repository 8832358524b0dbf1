//! Channels, channel sets, message info and message registers.

use crate::sys;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// Channel (and IRQ) ids are `0..MAX_CHANNELS` (libmicrokit `MICROKIT_MAX_CHANNELS`).
pub const MAX_CHANNELS: usize = 62;
/// seL4's `seL4_MsgMaxLength`: message registers per IPC.
pub const MSG_MAX_LENGTH: usize = 120;

/// A channel end of this PD, by its id in `system.xml`. IRQs are channels too:
/// they share the id space and are acknowledged with [`Channel::irq_ack`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Channel {
    index: usize,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({})", self.index)
    }
}

/// The single deferred-action slot is already taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferredActionSlotFull;

impl fmt::Display for DeferredActionSlotFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a notify or IRQ ack is already deferred to the next receive")
    }
}

// The one deferred action (libmicrokit's `microkit_have_signal`): 0 = none,
// otherwise a tag in the top bits and the channel id in the low bits. An
// atomic only so that it can be a safe static; a PD is single-threaded.
static DEFERRED: AtomicU64 = AtomicU64::new(0);
pub(crate) const DEFER_NOTIFY: u64 = 1 << 63;
pub(crate) const DEFER_IRQ_ACK: u64 = 1 << 62;
#[cfg_attr(any(not(target_os = "none"), feature = "bare"), allow(dead_code))]
pub(crate) const DEFER_MONITOR: u64 = 1 << 61;
#[cfg_attr(not(any(target_os = "none", feature = "host")), allow(dead_code))]
pub(crate) const DEFER_ID_MASK: u64 = 0xff;

/// The deferred action, removed from its slot (runtime use).
#[cfg_attr(not(any(target_os = "none", feature = "host", test)), allow(dead_code))]
pub(crate) fn take_deferred() -> u64 {
    DEFERRED.swap(0, Ordering::Relaxed)
}

pub(crate) fn set_deferred(v: u64) -> Result<(), DeferredActionSlotFull> {
    DEFERRED
        .compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed)
        .map(|_| ())
        .map_err(|_| DeferredActionSlotFull)
}

impl Channel {
    /// The channel with this id. Ids come from the generated config module.
    pub const fn new(index: usize) -> Self {
        Channel { index }
    }

    /// The id in `system.xml`.
    pub const fn index(self) -> usize {
        self.index
    }

    /// Signal the PD at the other end. A channel this PD may not notify is
    /// reported on the debug console and ignored, as libmicrokit does.
    pub fn notify(self) {
        sys::notify(self.index)
    }

    /// Acknowledge the IRQ with this id so it can be delivered again.
    pub fn irq_ack(self) {
        sys::irq_ack(self.index)
    }

    /// Protected procedure call: message registers `0..info.count()` go to the
    /// callee, whose reply's registers replace them.
    pub fn pp_call(self, info: MessageInfo) -> MessageInfo {
        sys::pp_call(self.index, info)
    }

    /// Notify when this PD next waits for events, combined with that receive
    /// (seL4 `NBSendRecv`), saving a syscall. One action may be deferred.
    pub fn defer_notify(self) -> Result<(), DeferredActionSlotFull> {
        set_deferred(DEFER_NOTIFY | self.index as u64)
    }

    /// [`Channel::irq_ack`] deferred to the next receive.
    pub fn defer_irq_ack(self) -> Result<(), DeferredActionSlotFull> {
        set_deferred(DEFER_IRQ_ACK | self.index as u64)
    }
}

/// The channels a notification came on (the badge bits).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelSet(u64);

impl ChannelSet {
    /// A set from a notification badge: bit `n` = channel `n`.
    pub const fn from_bits(bits: u64) -> Self {
        ChannelSet(bits)
    }
    /// The badge bits.
    pub const fn bits(self) -> u64 {
        self.0
    }
    /// Whether `ch` is in the set.
    pub const fn contains(self, ch: Channel) -> bool {
        ch.index < 64 && self.0 & (1 << ch.index) != 0
    }
    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// Add `ch`; ids >= 64 are ignored.
    pub fn insert(&mut self, ch: Channel) {
        if ch.index < 64 {
            self.0 |= 1 << ch.index;
        }
    }
    /// The channels, lowest id first.
    pub fn iter(self) -> impl Iterator<Item = Channel> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(Channel::new(i))
        })
    }
}

impl fmt::Debug for ChannelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|c| c.index)).finish()
    }
}

/// seL4 message info: a label and a count of message registers. Encoded as
/// `label << 12 | caps_unwrapped << 9 | extra_caps << 7 | length` (DESIGN §4);
/// Microkit PDs never transfer caps, so those fields are zero.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo(u64);

impl MessageInfo {
    /// Labels have 52 bits.
    pub const LABEL_MASK: u64 = (1 << 52) - 1;

    /// `label` (truncated to 52 bits) and `count` registers (clamped to
    /// [`MSG_MAX_LENGTH`], as the kernel does).
    pub const fn new(label: u64, count: usize) -> Self {
        let count = if count > MSG_MAX_LENGTH {
            MSG_MAX_LENGTH
        } else {
            count
        };
        MessageInfo((label & Self::LABEL_MASK) << 12 | count as u64)
    }
    /// From the raw seL4 word.
    pub const fn from_raw(raw: u64) -> Self {
        MessageInfo(raw)
    }
    /// The raw seL4 word.
    pub const fn into_raw(self) -> u64 {
        self.0
    }
    /// The label.
    pub const fn label(self) -> u64 {
        self.0 >> 12
    }
    /// The number of message registers, at most [`MSG_MAX_LENGTH`].
    pub const fn count(self) -> usize {
        let n = (self.0 & 0x7f) as usize;
        if n > MSG_MAX_LENGTH {
            MSG_MAX_LENGTH
        } else {
            n
        }
    }
}

impl fmt::Debug for MessageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MessageInfo {{ label: {}, count: {} }}",
            self.label(),
            self.count()
        )
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

/// An x86 I/O port range granted by `<ioport>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoPort {
    pub id: u64,
    pub addr: u64,
    pub size: u64,
}

/// Why a port access failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoPortError {
    /// `port..port + width` is not inside the range.
    OutOfRange { port: u16, width: u8 },
    /// The Microkit tool did not give this PD the range's capability.
    NotGranted,
    /// The kernel refused the invocation (its seL4 error code).
    Kernel(u64),
    /// No port I/O on this platform (aarch64, the host platform).
    Unsupported,
}

impl fmt::Display for IoPortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoPortError::OutOfRange { port, width } => {
                write!(
                    f,
                    "port {port:#x} ({width} bytes) is outside the granted range"
                )
            }
            IoPortError::NotGranted => f.write_str("this PD has no capability for the port range"),
            IoPortError::Kernel(e) => {
                write!(f, "the kernel refused the port access (seL4 error {e})")
            }
            IoPortError::Unsupported => f.write_str("no port I/O on this platform"),
        }
    }
}

/// A port access: the order of seL4's `X86IOPort` invocations (In8, In16,
/// In32, Out8, Out16, Out32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(all(target_os = "none", target_arch = "x86_64")), allow(dead_code))]
pub(crate) enum PortOp {
    In8 = 0,
    In16,
    In32,
    Out8,
    Out16,
    Out32,
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
    fn message_info_encoding_matches_sel4() {
        let m = MessageInfo::new(0x1234, 3);
        assert_eq!(m.into_raw(), 0x1234 << 12 | 3);
        assert_eq!((m.label(), m.count()), (0x1234, 3));
        assert_eq!(MessageInfo::new(1, 500).count(), MSG_MAX_LENGTH);
        // A hostile raw length (0x7f) is clamped, never trusted.
        assert_eq!(MessageInfo::from_raw(0x7f).count(), MSG_MAX_LENGTH);
    }

    #[test]
    fn channel_set_iterates_in_order() {
        let mut s = ChannelSet::default();
        for i in [5, 0, 61] {
            s.insert(Channel::new(i));
        }
        s.insert(Channel::new(64));
        let v: [usize; 3] = core::array::from_fn({
            let mut it = s.iter();
            move |_| it.next().map(Channel::index).unwrap_or(99)
        });
        assert_eq!(v, [0, 5, 61]);
        assert!(s.contains(Channel::new(5)) && !s.contains(Channel::new(4)));
        assert_eq!(s.iter().count(), 3);
    }

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

    #[test]
    fn one_deferred_action_at_a_time() {
        let _ = take_deferred();
        assert_eq!(Channel::new(3).defer_notify(), Ok(()));
        assert_eq!(Channel::new(4).defer_irq_ack(), Err(DeferredActionSlotFull));
        assert_eq!(take_deferred(), DEFER_NOTIFY | 3);
        assert_eq!(take_deferred(), 0);
    }
}
