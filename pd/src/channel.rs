//! Channels, channel sets, message info and the x86 port ranges: the
//! values a PD and its platform exchange. This is the bottom layer of the
//! runtime: it calls no platform; the calls on these values (notify, PPC,
//! message registers, port I/O) are in `calls.rs`, and the platform modules
//! build on this one.

use core::fmt;

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

impl Channel {
    /// The channel with this id. Ids come from the generated config module.
    pub const fn new(index: usize) -> Self {
        Channel { index }
    }

    /// The id in `system.xml`.
    pub const fn index(self) -> usize {
        self.index
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
}
