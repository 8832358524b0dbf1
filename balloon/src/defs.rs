//! Constants, feature bits, the block type and the driver's error enum.

use bitflags::bitflags;
use core::fmt;

/// A page is 4 KiB; PFNs are guest-physical frame numbers (`paddr >> 12`).
pub const PAGE_SHIFT: u32 = 12;
/// Bytes in a page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Largest block order accepted for reporting (docs/architecture.md: MAX_ORDER = 10).
pub const MAX_ORDER: u8 = memserver_api::MAX_ORDER;

/// PFNs per inflate/deflate request: one 4 KiB page of le32 entries. Linux
/// sends at most 256 per request (VIRTIO_BALLOON_ARRAY_PFNS_MAX); QEMU takes
/// any number.
pub const PFNS_PER_REQUEST: usize = 1024;

/// Upper bound on the reporting ring's size. QEMU offers 32; virtio-mmio
/// reports 1024 for every queue, so cap what we allocate.
pub const REPORT_RING_MAX: usize = 128;

/// The reporting queue size QEMU creates (hw/virtio/virtio-balloon.c,
/// `virtio_add_queue(vdev, 32, virtio_balloon_handle_report)`).
pub const QEMU_REPORTING_QUEUE_SIZE: u32 = 32;

/// Device config space offsets (VIRTIO 1.2 §5.5.4), all le32.
pub mod config {
    /// The host's target balloon size in 4 KiB pages (device writes).
    pub const NUM_PAGES: usize = 0;
    /// The balloon size the driver has reached (driver writes).
    pub const ACTUAL: usize = 4;
    /// Free page hint command id (unused: hinting is never negotiated).
    pub const FREE_PAGE_HINT_CMD_ID: usize = 8;
    /// Poison value (unused: PAGE_POISON is never negotiated).
    pub const POISON_VAL: usize = 12;
    /// Size of the config space we know.
    pub const SIZE: usize = 16;
}

bitflags! {
    /// virtio-balloon feature bits (VIRTIO 1.2 §5.5.3) plus VERSION_1.
    #[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
    pub struct BalloonFeatures: u64 {
        /// The host must be told before ballooned pages are used again.
        const MUST_TELL_HOST = 1 << 0;
        /// A statistics virtqueue is present.
        const STATS_VQ = 1 << 1;
        /// The driver may deflate when the guest runs out of memory.
        const DEFLATE_ON_OOM = 1 << 2;
        /// Free page hinting (a queue of its own). Never negotiated here.
        const FREE_PAGE_HINT = 1 << 3;
        /// Poisoned free pages. Never negotiated: QEMU then discards nothing.
        const PAGE_POISON = 1 << 4;
        /// Free page reporting queue.
        const REPORTING = 1 << 5;
        /// Modern (non-legacy) device.
        const VERSION_1 = 1 << 32;
    }
}

/// What the driver offers. MUST_TELL_HOST is accepted when offered and then
/// honoured (deflated pages are reused only after the device used the
/// buffer). PAGE_POISON and FREE_PAGE_HINT are never accepted.
pub const SUPPORTED_FEATURES: BalloonFeatures = BalloonFeatures::REPORTING
    .union(BalloonFeatures::STATS_VQ)
    .union(BalloonFeatures::DEFLATE_ON_OOM)
    .union(BalloonFeatures::VERSION_1)
    .union(BalloonFeatures::MUST_TELL_HOST);

/// Statistics tags (VIRTIO 1.2 §5.5.6.3). Memory amounts are in bytes.
pub mod stat_tag {
    /// Bytes swapped in.
    pub const SWAP_IN: u16 = 0;
    /// Bytes swapped out.
    pub const SWAP_OUT: u16 = 1;
    /// Major page faults.
    pub const MAJFLT: u16 = 2;
    /// Minor page faults.
    pub const MINFLT: u16 = 3;
    /// Free memory, bytes.
    pub const MEMFREE: u16 = 4;
    /// Total memory, bytes.
    pub const MEMTOT: u16 = 5;
    /// Available memory estimate, bytes.
    pub const AVAIL: u16 = 6;
    /// Disk caches, bytes.
    pub const CACHES: u16 = 7;
    /// Successful hugetlb allocations.
    pub const HTLB_PGALLOC: u16 = 8;
    /// Failed hugetlb allocations.
    pub const HTLB_PGFAIL: u16 = 9;
    /// Number of tags the spec defines.
    pub const COUNT: usize = 10;
}

/// Bytes of one stats entry: le16 tag + le64 value, packed.
pub const STAT_ENTRY_SIZE: usize = 10;
/// Bytes of the stats buffer the driver posts.
pub const STATS_BUFFER_SIZE: usize = STAT_ENTRY_SIZE * stat_tag::COUNT;

/// A free block: `1 << order` pages starting at `pfn` (the memserver's
/// message type, so a batch goes from the ring to the driver unconverted).
pub use memserver_api::Block;

/// What the driver needs of a [`Block`] beyond the message type.
pub trait BlockExt {
    /// Guest-physical address of the block.
    fn paddr(&self) -> u64;
    /// Length in bytes.
    fn bytes(&self) -> u64;
    /// A block a virtqueue can carry: order <= MAX_ORDER, `pfn` aligned to
    /// `1 << order`, and every frame at or below `memserver_api::MAX_PFN`
    /// (so its address and length never overflow a descriptor).
    fn is_valid(&self) -> bool;
}

impl BlockExt for Block {
    fn paddr(&self) -> u64 {
        self.pfn << PAGE_SHIFT
    }

    fn bytes(&self) -> u64 {
        PAGE_SIZE << self.order.min(MAX_ORDER)
    }

    fn is_valid(&self) -> bool {
        self.order <= MAX_ORDER
            && self.pfn & ((1u64 << self.order) - 1) == 0
            && self
                .pfn
                .checked_add(self.pages() - 1)
                .is_some_and(|last| last <= memserver_api::MAX_PFN)
    }
}

/// Statistics the driver publishes on the stats queue. Memory amounts in bytes.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct Stats {
    /// SWAP_IN (0).
    pub swap_in: u64,
    /// SWAP_OUT (1).
    pub swap_out: u64,
    /// MAJFLT (2).
    pub major_faults: u64,
    /// MINFLT (3).
    pub minor_faults: u64,
    /// MEMFREE (4), bytes.
    pub free: u64,
    /// MEMTOT (5), bytes.
    pub total: u64,
    /// AVAIL (6), bytes.
    pub available: u64,
    /// CACHES (7), bytes.
    pub caches: u64,
    /// HTLB_PGALLOC (8).
    pub hugetlb_allocs: u64,
    /// HTLB_PGFAIL (9).
    pub hugetlb_fails: u64,
}

impl Stats {
    /// Serialise as the spec's array of packed (le16 tag, le64 value).
    pub fn encode(&self) -> [u8; STATS_BUFFER_SIZE] {
        let values = [
            self.swap_in,
            self.swap_out,
            self.major_faults,
            self.minor_faults,
            self.free,
            self.total,
            self.available,
            self.caches,
            self.hugetlb_allocs,
            self.hugetlb_fails,
        ];
        let mut out = [0u8; STATS_BUFFER_SIZE];
        for (tag, (value, entry)) in values
            .iter()
            .zip(out.chunks_exact_mut(STAT_ENTRY_SIZE))
            .enumerate()
        {
            entry[..2].copy_from_slice(&(tag as u16).to_le_bytes());
            entry[2..].copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// Parse a stats buffer (device side). Unknown tags are ignored, as the
    /// spec requires; a trailing partial entry is ignored.
    pub fn decode(bytes: &[u8]) -> Self {
        let mut s = Self::default();
        for entry in bytes.chunks_exact(STAT_ENTRY_SIZE) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut v = [0u8; 8];
            v.copy_from_slice(&entry[2..]);
            let v = u64::from_le_bytes(v);
            match tag {
                stat_tag::SWAP_IN => s.swap_in = v,
                stat_tag::SWAP_OUT => s.swap_out = v,
                stat_tag::MAJFLT => s.major_faults = v,
                stat_tag::MINFLT => s.minor_faults = v,
                stat_tag::MEMFREE => s.free = v,
                stat_tag::MEMTOT => s.total = v,
                stat_tag::AVAIL => s.available = v,
                stat_tag::CACHES => s.caches = v,
                stat_tag::HTLB_PGALLOC => s.hugetlb_allocs = v,
                stat_tag::HTLB_PGFAIL => s.hugetlb_fails = v,
                _ => {}
            }
        }
        s
    }
}

/// Which virtqueue a device error was seen on.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum QueueKind {
    /// Inflate queue.
    Inflate,
    /// Deflate queue.
    Deflate,
    /// Statistics queue.
    Stats,
    /// Free page reporting queue.
    Reporting,
}

/// Errors of the balloon driver.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Error {
    /// virtio-drivers reported an error (transport, DMA, queue setup).
    Virtio(virtio_drivers::Error),
    /// The device is not a balloon.
    WrongDeviceType,
    /// The device does not offer free page reporting.
    NoReporting,
    /// A queue the layout names does not exist (max size 0).
    QueueMissing(u16),
    /// The reporting queue's size contradicts the chosen layout (PCI cross-check).
    QueueLayoutMismatch {
        /// The index the layout gave.
        index: u16,
        /// Its max size as the device reports it.
        max_size: u32,
    },
    /// The driver gave up on the device after a protocol violation; call `restart`.
    Broken,
    /// Not enough free descriptors, or a request of this kind is already in flight.
    QueueFull,
    /// An empty batch or PFN array.
    Empty,
    /// A block that is misaligned, too large, or whose address overflows.
    InvalidBlock(Block),
    /// A batch id that is already in flight.
    DuplicateBatch(u32),
    /// More PFNs than fit one request.
    TooManyPfns(usize),
    /// A PFN that does not fit the le32 PFN array.
    PfnTooLarge(u64),
    /// An out-of-memory deflate, but DEFLATE_ON_OOM was not negotiated.
    OomDeflateNotNegotiated,
    /// More pages to deflate than the balloon holds.
    DeflateExceedsBalloon {
        /// Pages asked for.
        requested: u32,
        /// Pages in the balloon (not already being deflated).
        held: u32,
    },
    /// Device error: a used id beyond the queue size.
    BadUsedId {
        /// Queue.
        queue: QueueKind,
        /// The id.
        id: u32,
    },
    /// Device error: a used length beyond what the buffer holds.
    BadUsedLength {
        /// Queue.
        queue: QueueKind,
        /// The length.
        len: u32,
    },
    /// Device error: a completion for a buffer that is not in flight.
    NotInFlight {
        /// Queue.
        queue: QueueKind,
        /// The id.
        id: u32,
    },
    /// Device error: the used index moved by more than is in flight.
    UsedIndexJump {
        /// Queue.
        queue: QueueKind,
        /// How far it moved.
        delta: u16,
    },
    /// Device error: the device reset itself or asked for a reset.
    DeviceReset,
    /// Device error: requests were outstanding for a whole watchdog period
    /// with no completion (the driver gave up on them and reset it).
    Stalled,
}

impl From<virtio_drivers::Error> for Error {
    fn from(e: virtio_drivers::Error) -> Self {
        Self::Virtio(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Virtio(e) => write!(f, "virtio: {e}"),
            Self::WrongDeviceType => write!(f, "not a virtio-balloon device"),
            Self::NoReporting => write!(f, "device does not offer free page reporting"),
            Self::QueueMissing(q) => write!(f, "queue {q} does not exist"),
            Self::QueueLayoutMismatch { index, max_size } => write!(
                f,
                "reporting queue {index} has max size {max_size}, layout mismatch"
            ),
            Self::Broken => write!(f, "device failed; restart the driver"),
            Self::QueueFull => write!(f, "queue full"),
            Self::Empty => write!(f, "empty request"),
            Self::InvalidBlock(b) => write!(f, "invalid block pfn {:#x} order {}", b.pfn, b.order),
            Self::DuplicateBatch(id) => write!(f, "batch {id} already in flight"),
            Self::TooManyPfns(n) => write!(f, "{n} PFNs exceed {PFNS_PER_REQUEST} per request"),
            Self::PfnTooLarge(p) => write!(f, "PFN {p:#x} does not fit le32"),
            Self::OomDeflateNotNegotiated => write!(f, "DEFLATE_ON_OOM not negotiated"),
            Self::DeflateExceedsBalloon { requested, held } => {
                write!(f, "deflate of {requested} pages, balloon holds {held}")
            }
            Self::BadUsedId { queue, id } => write!(f, "{queue:?}: used id {id} out of range"),
            Self::BadUsedLength { queue, len } => {
                write!(f, "{queue:?}: used length {len} out of range")
            }
            Self::NotInFlight { queue, id } => {
                write!(f, "{queue:?}: completion for id {id} not in flight")
            }
            Self::UsedIndexJump { queue, delta } => {
                write!(f, "{queue:?}: used index jumped by {delta}")
            }
            Self::DeviceReset => write!(f, "device reset or needs reset"),
            Self::Stalled => write!(f, "device stalled: no completion in a watchdog period"),
        }
    }
}

impl core::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn stats_roundtrip(v in proptest::array::uniform10(any::<u64>())) {
            let s = Stats {
                swap_in: v[0], swap_out: v[1], major_faults: v[2], minor_faults: v[3],
                free: v[4], total: v[5], available: v[6], caches: v[7],
                hugetlb_allocs: v[8], hugetlb_fails: v[9],
            };
            prop_assert_eq!(Stats::decode(&s.encode()), s);
        }

        #[test]
        fn block_validity(pfn in prop_oneof![any::<u64>(), 0..(1u64 << 41)], order in 0u8..16) {
            let b = Block { pfn, order };
            let ok = b.is_valid();
            if ok {
                prop_assert!(order <= MAX_ORDER);
                prop_assert_eq!(pfn % (1 << order), 0);
                prop_assert!(b.paddr().checked_add(b.bytes()).is_some());
            } else {
                prop_assert!(
                    order > MAX_ORDER
                        || pfn % (1 << order) != 0
                        || pfn + (1 << order) - 1 > memserver_api::MAX_PFN
                );
            }
        }
    }

    #[test]
    fn stats_layout_is_the_spec_one() {
        let s = Stats {
            free: 0x1122,
            ..Stats::default()
        };
        let b = s.encode();
        // Entry 4 is MEMFREE: le16 tag 4 then le64 value.
        assert_eq!(&b[40..42], &[4, 0]);
        assert_eq!(&b[42..50], &0x1122u64.to_le_bytes());
    }
}
