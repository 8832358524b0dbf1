//! The device side of a split virtqueue (VIRTIO 1.2 §2.7).
//!
//! The guest writes the descriptor table and the available ring; the device
//! reads them and writes the used ring. The guest is hostile, so:
//! - the rings' addresses, sizes and alignment are checked once, when the
//!   driver makes the queue ready ([`DeviceQueue::enable`]);
//! - the available index may move ahead by at most the queue size since
//!   the device last looked; anything else is an illegal move;
//! - every head and `next` index is below the queue size, a chain is at most
//!   the queue size (and [`MAX_CHAIN`]) long, so a loop ends as an error;
//! - indirect descriptors are refused (VIRTIO_F_INDIRECT_DESC is never
//!   offered), and every buffer lies in guest RAM;
//! - the device returns only heads it took and has not returned (its own
//!   shadow of what is in flight), so a peer that completes a chain twice
//!   or makes one up cannot make the device write a bogus used entry.
//!
//! A [`QueueError`] leaves the queue as it was before the call; the
//! transport then marks the device DEVICE_NEEDS_RESET (§2.1.2).

use crate::{GuestMemory, GuestMemoryExt, OutOfRange};
use core::fmt;
use core::sync::atomic::{Ordering, fence};

/// The largest queue this device side supports (QueueNumMax).
pub const MAX_QUEUE_SIZE: u16 = 256;
/// The longest chain taken. Linux's free page reporting sends one
/// descriptor per block, at most 32 (PAGE_REPORTING_CAPACITY).
pub const MAX_CHAIN: usize = 64;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const DESC_SIZE: u64 = 16;

/// One buffer of a chain, as the guest described it (checked to lie in
/// guest RAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    /// Device-writable (VIRTQ_DESC_F_WRITE).
    pub writable: bool,
}

/// A chain taken from the available ring: its head (the id the used entry
/// must carry) and its buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub buffers: heapless::Vec<Buffer, MAX_CHAIN>,
}

/// Why the device refused what the guest wrote (or a completion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is not ready.
    NotReady,
    /// QueueNum is zero, not a power of two, or above QueueNumMax.
    BadSize(u16),
    /// A ring lies (partly) outside guest RAM or is misaligned.
    BadRing { which: &'static str, addr: u64 },
    /// The available index moved by more than the queue size.
    AvailIndexJump { seen: u16, now: u16, size: u16 },
    /// A head or `next` index at or above the queue size.
    BadIndex { index: u16, size: u16 },
    /// A chain longer than the queue (a loop) or than [`MAX_CHAIN`].
    ChainTooLong { head: u16 },
    /// An indirect descriptor (never negotiated).
    Indirect { head: u16 },
    /// A buffer outside guest RAM.
    BufferOutsideRam { addr: u64, len: u32 },
    /// A completion for a head that is not in flight.
    NotInFlight { head: u16 },
    /// The rings could not be read or written.
    Memory(OutOfRange),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::NotReady => write!(f, "queue not ready"),
            QueueError::BadSize(n) => write!(
                f,
                "queue size {n} is not a power of two in 1..={MAX_QUEUE_SIZE}"
            ),
            QueueError::BadRing { which, addr } => {
                write!(
                    f,
                    "{which} ring at {addr:#x} is misaligned or outside guest RAM"
                )
            }
            QueueError::AvailIndexJump { seen, now, size } => write!(
                f,
                "available index moved from {seen} to {now}, more than the queue size {size}"
            ),
            QueueError::BadIndex { index, size } => {
                write!(f, "descriptor index {index} >= queue size {size}")
            }
            QueueError::ChainTooLong { head } => {
                write!(
                    f,
                    "chain at head {head} loops or is longer than {MAX_CHAIN}"
                )
            }
            QueueError::Indirect { head } => {
                write!(
                    f,
                    "chain at head {head} has an indirect descriptor (not negotiated)"
                )
            }
            QueueError::BufferOutsideRam { addr, len } => {
                write!(f, "buffer {addr:#x}+{len:#x} lies outside guest RAM")
            }
            QueueError::NotInFlight { head } => write!(f, "head {head} is not in flight"),
            QueueError::Memory(e) => write!(f, "ring access: {e}"),
        }
    }
}

impl From<OutOfRange> for QueueError {
    fn from(e: OutOfRange) -> Self {
        QueueError::Memory(e)
    }
}

/// The device side of one split virtqueue.
#[derive(Debug, Clone)]
pub struct DeviceQueue {
    /// QueueNumMax for this queue.
    max_size: u16,
    /// What the driver wrote (QueueNum, QueueDesc, QueueDriver,
    /// QueueDevice); used once [`Self::enable`] checked them.
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    ready: bool,
    /// Private shadows: the next available slot to take and the next used
    /// slot to fill (never read back from guest memory).
    next_avail: u16,
    next_used: u16,
    /// Heads taken and not yet returned, one bit each.
    in_flight: [u64; MAX_QUEUE_SIZE as usize / 64],
}

impl DeviceQueue {
    /// A queue whose QueueNumMax is `max_size` (at most [`MAX_QUEUE_SIZE`]).
    pub const fn new(max_size: u16) -> Self {
        let max_size = if max_size > MAX_QUEUE_SIZE {
            MAX_QUEUE_SIZE
        } else {
            max_size
        };
        DeviceQueue {
            max_size,
            size: 0,
            desc: 0,
            avail: 0,
            used: 0,
            ready: false,
            next_avail: 0,
            next_used: 0,
            in_flight: [0; MAX_QUEUE_SIZE as usize / 64],
        }
    }

    /// QueueNumMax.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }

    /// QueueReady.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Back to the state after a device reset (QueueNumMax stays).
    pub fn reset(&mut self) {
        *self = DeviceQueue::new(self.max_size);
    }

    /// Chains taken and not yet returned.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.iter().map(|w| w.count_ones()).sum()
    }

    /// The driver wrote QueueReady = 1: check size, alignment and that the
    /// three rings lie in guest RAM (§2.7: descriptor table 16-aligned,
    /// available ring 2, used ring 4), then start from index 0.
    pub fn enable(&mut self, mem: &dyn GuestMemory) -> Result<(), QueueError> {
        let n = self.size;
        if n == 0 || !n.is_power_of_two() || n > self.max_size {
            return Err(QueueError::BadSize(n));
        }
        let n = u64::from(n);
        for (which, addr, align, len) in [
            ("descriptor", self.desc, 16, DESC_SIZE * n),
            // flags, idx, ring[n], used_event
            ("available", self.avail, 2, 6 + 2 * n),
            // flags, idx, ring[n] of (id, len), avail_event
            ("used", self.used, 4, 6 + 8 * n),
        ] {
            if addr % align != 0 || !mem.contains(addr, len) {
                return Err(QueueError::BadRing { which, addr });
            }
        }
        self.ready = true;
        self.next_avail = 0;
        self.next_used = 0;
        self.in_flight = [0; MAX_QUEUE_SIZE as usize / 64];
        Ok(())
    }

    /// The driver wrote QueueReady = 0.
    pub fn disable(&mut self) {
        self.ready = false;
    }

    fn bit(head: u16) -> (usize, u64) {
        (usize::from(head) / 64, 1u64 << (head % 64))
    }

    /// Take the next available chain, if any. On an error nothing changes.
    pub fn pop(&mut self, mem: &dyn GuestMemory) -> Result<Option<Chain>, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let size = self.size;
        let now = mem.read_u16(self.avail + 2)?;
        let pending = now.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > size {
            return Err(QueueError::AvailIndexJump {
                seen: self.next_avail,
                now,
                size,
            });
        }
        // The ring entries and descriptors after the index that published
        // them (§2.7.13: the driver's write barrier pairs with this).
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail % size);
        let head = mem.read_u16(self.avail + 4 + 2 * slot)?;
        if head >= size {
            return Err(QueueError::BadIndex { index: head, size });
        }
        let (w, b) = Self::bit(head);
        if self.in_flight[w] & b != 0 {
            // A head the device still holds, offered again: the guest
            // reused a descriptor it had handed over.
            return Err(QueueError::NotInFlight { head });
        }
        let mut buffers = heapless::Vec::new();
        let mut index = head;
        loop {
            if buffers.len() >= usize::from(size).min(MAX_CHAIN) {
                return Err(QueueError::ChainTooLong { head });
            }
            let d = self.desc + DESC_SIZE * u64::from(index);
            let addr = mem.read_u64(d)?;
            let len = mem.read_u32(d + 8)?;
            let flags = mem.read_u16(d + 12)?;
            let next = mem.read_u16(d + 14)?;
            if flags & DESC_F_INDIRECT != 0 {
                return Err(QueueError::Indirect { head });
            }
            if !mem.contains(addr, u64::from(len)) {
                return Err(QueueError::BufferOutsideRam { addr, len });
            }
            let buf = Buffer {
                addr,
                len,
                writable: flags & DESC_F_WRITE != 0,
            };
            // Cannot fail: the length was checked above.
            let _ = buffers.push(buf);
            if flags & DESC_F_NEXT == 0 {
                break;
            }
            if next >= size {
                return Err(QueueError::BadIndex { index: next, size });
            }
            index = next;
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        self.in_flight[w] |= b;
        Ok(Some(Chain { head, buffers }))
    }

    /// Return chain `head` with `written` bytes written into it: the used
    /// entry, then (after a release fence) the used index.
    pub fn push_used(
        &mut self,
        mem: &mut dyn GuestMemory,
        head: u16,
        written: u32,
    ) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let (w, b) = Self::bit(head);
        if head >= self.size || self.in_flight[w] & b == 0 {
            return Err(QueueError::NotInFlight { head });
        }
        let slot = u64::from(self.next_used % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&written.to_le_bytes());
        mem.write(self.used + 4 + 8 * slot, &elem)?;
        // The entry before the index that publishes it.
        fence(Ordering::Release);
        let idx = self.next_used.wrapping_add(1);
        mem.write(self.used + 2, &idx.to_le_bytes())?;
        self.next_used = idx;
        self.in_flight[w] &= !b;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::SliceMemory;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    pub const BASE: u64 = 0x4000_0000;
    pub const DESC: u64 = BASE;
    pub const AVAIL: u64 = BASE + 0x1000;
    pub const USED: u64 = BASE + 0x2000;
    pub const DATA: u64 = BASE + 0x3000;

    /// The driver's side, as Linux writes it: for tests.
    pub struct Driver {
        pub size: u16,
        pub free: Vec<u16>,
        pub avail_idx: u16,
        pub used_seen: u16,
        /// Where its rings are.
        pub rings: (u64, u64, u64),
    }

    impl Driver {
        pub fn new(size: u16) -> Self {
            Self::at(size, (DESC, AVAIL, USED))
        }

        /// A driver whose descriptor table, available and used rings are
        /// at `rings`.
        pub fn at(size: u16, rings: (u64, u64, u64)) -> Self {
            Driver {
                size,
                free: (0..size).rev().collect(),
                avail_idx: 0,
                used_seen: 0,
                rings,
            }
        }

        pub fn queue(&self, mem: &dyn GuestMemory) -> DeviceQueue {
            let mut q = DeviceQueue::new(MAX_QUEUE_SIZE);
            q.size = self.size;
            q.desc = DESC;
            q.avail = AVAIL;
            q.used = USED;
            q.enable(mem).unwrap();
            q
        }

        pub fn write_desc(
            mem: &mut dyn GuestMemory,
            i: u16,
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        ) {
            Self::write_desc_at(mem, DESC, i, addr, len, flags, next);
        }

        pub fn write_desc_at(
            mem: &mut dyn GuestMemory,
            table: u64,
            i: u16,
            addr: u64,
            len: u32,
            flags: u16,
            next: u16,
        ) {
            let d = table + 16 * u64::from(i);
            mem.write(d, &addr.to_le_bytes()).unwrap();
            mem.write(d + 8, &len.to_le_bytes()).unwrap();
            mem.write(d + 12, &flags.to_le_bytes()).unwrap();
            mem.write(d + 14, &next.to_le_bytes()).unwrap();
        }

        /// Add a chain of `bufs` (addr, len, writable); its head.
        pub fn add(&mut self, mem: &mut dyn GuestMemory, bufs: &[(u64, u32, bool)]) -> Option<u16> {
            if bufs.is_empty() || self.free.len() < bufs.len() {
                return None;
            }
            let ids: Vec<u16> = (0..bufs.len()).map(|_| self.free.pop().unwrap()).collect();
            for (k, &(addr, len, w)) in bufs.iter().enumerate() {
                let last = k + 1 == bufs.len();
                let flags = if w { DESC_F_WRITE } else { 0 } | if last { 0 } else { DESC_F_NEXT };
                let next = if last { 0 } else { ids[k + 1] };
                Self::write_desc_at(mem, self.rings.0, ids[k], addr, len, flags, next);
            }
            let avail = self.rings.1;
            let slot = u64::from(self.avail_idx % self.size);
            mem.write(avail + 4 + 2 * slot, &ids[0].to_le_bytes())
                .unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            mem.write(avail + 2, &self.avail_idx.to_le_bytes()).unwrap();
            Some(ids[0])
        }

        /// Used entries the device returned since last time.
        pub fn used(&mut self, mem: &dyn GuestMemory) -> Vec<(u32, u32)> {
            let used = self.rings.2;
            let idx = mem.read_u16(used + 2).unwrap();
            let mut out = Vec::new();
            while self.used_seen != idx {
                let slot = u64::from(self.used_seen % self.size);
                let id = mem.read_u32(used + 4 + 8 * slot).unwrap();
                let len = mem.read_u32(used + 8 + 8 * slot).unwrap();
                out.push((id, len));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }
    }

    pub fn ram() -> Vec<u8> {
        vec![0u8; 0x10_0000]
    }

    #[test]
    fn chains_come_out_in_order_and_go_back_by_id() {
        let mut r = ram();
        let mut m = SliceMemory {
            base: BASE,
            ram: &mut r,
        };
        let mut d = Driver::new(8);
        let mut q = d.queue(&m);
        assert_eq!(q.pop(&m).unwrap(), None);
        let a = d
            .add(&mut m, &[(DATA, 4096, true), (DATA + 4096, 8192, true)])
            .unwrap();
        let b = d.add(&mut m, &[(DATA + 0x8000, 16, false)]).unwrap();
        let ca = q.pop(&m).unwrap().unwrap();
        assert_eq!(ca.head, a);
        assert_eq!(
            ca.buffers.as_slice(),
            [
                Buffer {
                    addr: DATA,
                    len: 4096,
                    writable: true
                },
                Buffer {
                    addr: DATA + 4096,
                    len: 8192,
                    writable: true
                }
            ]
        );
        let cb = q.pop(&m).unwrap().unwrap();
        assert_eq!((cb.head, cb.buffers.len()), (b, 1));
        assert_eq!(q.in_flight(), 2);
        // Out of order, as the memserver may complete them.
        q.push_used(&mut m, b, 0).unwrap();
        q.push_used(&mut m, a, 0).unwrap();
        assert_eq!(d.used(&m), [(u32::from(b), 0), (u32::from(a), 0)]);
        // Twice, or a head never taken: refused, nothing written.
        assert_eq!(
            q.push_used(&mut m, a, 0),
            Err(QueueError::NotInFlight { head: a })
        );
        assert_eq!(
            q.push_used(&mut m, 7, 0),
            Err(QueueError::NotInFlight { head: 7 })
        );
        assert!(d.used(&m).is_empty());
    }

    #[test]
    fn rings_are_checked_when_the_queue_is_made_ready() {
        let mut r = ram();
        let m = SliceMemory {
            base: BASE,
            ram: &mut r,
        };
        let mut q = DeviceQueue::new(32);
        for size in [0u16, 3, 64] {
            q.size = size;
            assert_eq!(q.enable(&m), Err(QueueError::BadSize(size)));
        }
        q.size = 32;
        (q.desc, q.avail, q.used) = (DESC + 8, AVAIL, USED);
        assert!(matches!(
            q.enable(&m),
            Err(QueueError::BadRing {
                which: "descriptor",
                ..
            })
        ));
        (q.desc, q.avail, q.used) = (DESC, AVAIL, BASE + 0x10_0000 - 8);
        assert!(matches!(
            q.enable(&m),
            Err(QueueError::BadRing { which: "used", .. })
        ));
        (q.desc, q.avail, q.used) = (DESC, u64::MAX - 1, USED);
        assert!(matches!(
            q.enable(&m),
            Err(QueueError::BadRing {
                which: "available",
                ..
            })
        ));
        assert!(!q.is_ready());
        assert_eq!(q.pop(&m), Err(QueueError::NotReady));
    }

    #[test]
    fn hostile_chains_are_refused_and_change_nothing() {
        let mut r = ram();
        let mut m = SliceMemory {
            base: BASE,
            ram: &mut r,
        };
        let d = Driver::new(8);
        let mut q = d.queue(&m);
        let publish = |m: &mut SliceMemory, idx: u16, head: u16| {
            m.write(AVAIL + 4, &head.to_le_bytes()).unwrap();
            m.write(AVAIL + 2, &idx.to_le_bytes()).unwrap();
        };
        // A loop: 0 -> 1 -> 0.
        Driver::write_desc(&mut m, 0, DATA, 16, DESC_F_NEXT, 1);
        Driver::write_desc(&mut m, 1, DATA, 16, DESC_F_NEXT, 0);
        publish(&mut m, 1, 0);
        assert_eq!(q.pop(&m), Err(QueueError::ChainTooLong { head: 0 }));
        // next past the table.
        Driver::write_desc(&mut m, 1, DATA, 16, DESC_F_NEXT, 8);
        assert_eq!(q.pop(&m), Err(QueueError::BadIndex { index: 8, size: 8 }));
        // A head past the table.
        publish(&mut m, 1, 9);
        assert_eq!(q.pop(&m), Err(QueueError::BadIndex { index: 9, size: 8 }));
        // Indirect, and a buffer outside RAM.
        publish(&mut m, 1, 2);
        Driver::write_desc(&mut m, 2, DATA, 16, DESC_F_INDIRECT, 0);
        assert_eq!(q.pop(&m), Err(QueueError::Indirect { head: 2 }));
        Driver::write_desc(&mut m, 2, BASE + 0x10_0000 - 8, 16, 0, 0);
        assert!(matches!(
            q.pop(&m),
            Err(QueueError::BufferOutsideRam { .. })
        ));
        Driver::write_desc(&mut m, 2, u64::MAX - 4, 16, 0, 0);
        assert!(matches!(
            q.pop(&m),
            Err(QueueError::BufferOutsideRam { .. })
        ));
        // The available index jumps.
        publish(&mut m, 9, 2);
        assert_eq!(
            q.pop(&m),
            Err(QueueError::AvailIndexJump {
                seen: 0,
                now: 9,
                size: 8
            })
        );
        assert_eq!(q.in_flight(), 0);
        // Fixed up, the same slot is taken as if nothing had happened.
        Driver::write_desc(&mut m, 2, DATA, 16, 0, 0);
        publish(&mut m, 1, 2);
        assert_eq!(q.pop(&m).unwrap().unwrap().head, 2);
        // The same head offered again while the device holds it.
        m.write(AVAIL + 6, &2u16.to_le_bytes()).unwrap();
        m.write(AVAIL + 2, &2u16.to_le_bytes()).unwrap();
        assert_eq!(q.pop(&m), Err(QueueError::NotInFlight { head: 2 }));
    }

    proptest! {
        /// A well-behaved driver adding and the device taking and returning
        /// chains in any interleaving: the device sees exactly the chains
        /// added, in order, and the driver gets back exactly the heads
        /// returned, in order, across index wrap-around.
        #[test]
        fn the_device_side_agrees_with_a_model_driver(
            ops in proptest::collection::vec((0u8..3, 1usize..5, any::<bool>()), 1..400)
        ) {
            let mut r = ram();
            let mut m = SliceMemory { base: BASE, ram: &mut r };
            let mut d = Driver::new(16);
            let mut q = d.queue(&m);
            let mut added = std::collections::VecDeque::new();
            let mut held = Vec::new();
            let mut returned = Vec::new();
            for (op, n, back_first) in ops {
                match op {
                    0 => {
                        let bufs: Vec<(u64, u32, bool)> =
                            (0..n).map(|k| (DATA + 0x1000 * k as u64, 4096, true)).collect();
                        if let Some(h) = d.add(&mut m, &bufs) {
                            added.push_back((h, n));
                        }
                    }
                    1 => match q.pop(&m).unwrap() {
                        Some(c) => {
                            let (h, n) = added.pop_front().expect("a chain nobody added");
                            prop_assert_eq!((c.head, c.buffers.len()), (h, n));
                            held.push((c.head, n));
                        }
                        None => prop_assert!(added.is_empty()),
                    },
                    _ => {
                        if !held.is_empty() {
                            let (h, n) = if back_first { held.remove(0) } else { held.pop().unwrap() };
                            q.push_used(&mut m, h, 0).unwrap();
                            returned.push((u32::from(h), 0));
                            for used in d.used(&m) {
                                prop_assert_eq!(used, returned.remove(0));
                            }
                            prop_assert!(n >= 1);
                            // The driver frees the descriptors of the chain.
                            let mut i = h;
                            loop {
                                d.free.push(i);
                                let flags = m.read_u16(DESC + 16 * u64::from(i) + 12).unwrap();
                                if flags & DESC_F_NEXT == 0 { break; }
                                i = m.read_u16(DESC + 16 * u64::from(i) + 14).unwrap();
                            }
                        }
                    }
                }
                prop_assert_eq!(q.in_flight() as usize, held.len());
            }
        }

        /// Any bytes in the rings and tables: the device never panics,
        /// never returns a buffer outside RAM, never a chain longer than
        /// the queue, and an error takes nothing.
        #[test]
        fn garbage_rings_never_panic_or_escape(
            junk in proptest::collection::vec(any::<u8>(), 0x3000),
            pops in 1usize..40,
        ) {
            let mut r = ram();
            r[..0x3000].copy_from_slice(&junk);
            let m = SliceMemory { base: BASE, ram: &mut r };
            let mut q = DeviceQueue::new(MAX_QUEUE_SIZE);
            q.size = 64;
            (q.desc, q.avail, q.used) = (DESC, AVAIL, USED);
            q.enable(&m).unwrap();
            for _ in 0..pops {
                let before = q.in_flight();
                match q.pop(&m) {
                    Ok(Some(c)) => {
                        prop_assert!(c.buffers.len() <= 64);
                        for b in &c.buffers {
                            prop_assert!(m.contains(b.addr, u64::from(b.len)));
                        }
                        prop_assert!(c.head < 64);
                    }
                    Ok(None) => break,
                    Err(_) => prop_assert_eq!(q.in_flight(), before),
                }
            }
        }
    }
}
