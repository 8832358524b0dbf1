//! The device side: a virtio-balloon device on real split virtqueues in
//! shared memory, discarding guest RAM as QEMU does.
//!
//! QEMU behaviour kept (hw/virtio/virtio-balloon.c, QEMU 10):
//! - reporting: each device-writable buffer of a chain is discarded with
//!   `ram_block_discard_range` (fallocate PUNCH_HOLE | KEEP_SIZE on a memfd);
//!   ranges outside RAM or not page-aligned are skipped; the chain is
//!   returned with used length 0;
//! - inflate: every PFN's 4 KiB page is discarded; deflate only counts;
//! - stats: the device keeps the buffer and returns it when it wants fresh
//!   numbers (QMP `guest-stats` polling);
//! - a target change (QMP `balloon`) sets ISR 0x3 and interrupts.
//!
//! The driver is a peer, hence hostile: every address it gives is checked
//! against the memory the device knows; a bad chain is counted and skipped.

use super::regs::{MAGIC, MAX_QUEUES, QueueRegs, RegisterFile, config_u32, set_config_u32};
use super::{DmaWindow, SharedRegion};
use crate::defs::{BalloonFeatures, QueueKind, Stats, config};
use crate::layout::{QueueLayout, queue_indices};
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::atomic::{AtomicU16, Ordering, fence};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_NEEDS_RESET: u32 = 64;
const PAGE: u64 = 4096;

/// One guest RAM region: a memfd at a guest-physical base (on the host
/// platform, one per guest: guest0_ram, guest1_ram).
#[derive(Debug)]
pub struct RamRange {
    /// The memory.
    pub region: SharedRegion,
    /// Guest-physical base.
    pub base: u64,
}

impl RamRange {
    /// Offset of `[paddr, paddr + len)` in this range's memfd, if inside.
    pub fn offset(&self, paddr: u64, len: u64) -> Option<u64> {
        let off = paddr.checked_sub(self.base)?;
        (off.checked_add(len)? <= self.region.len() as u64).then_some(off)
    }
}

/// Guest RAM: one or more [`RamRange`]s, like QEMU's RAM blocks. A range
/// the driver reports must lie inside one of them; QEMU's
/// `virtio_balloon_handle_report` skips anything else
/// (`qemu_ram_block_from_host` fails), and so does the model.
#[derive(Debug)]
pub struct GuestRam {
    ranges: Vec<RamRange>,
}

impl GuestRam {
    /// Creates one range of `len` bytes of guest RAM at `base`.
    pub fn create(base: u64, len: usize) -> Result<Self, super::ModelError> {
        Self::from_ranges(vec![RamRange {
            region: SharedRegion::create("guest-ram", len)?,
            base,
        }])
    }

    /// Maps one range another process created (its memfd).
    pub fn map(fd: rustix::fd::OwnedFd, base: u64, len: usize) -> Result<Self, super::ModelError> {
        Self::from_ranges(vec![RamRange {
            region: SharedRegion::map(fd, len)?,
            base,
        }])
    }

    /// Several ranges; they must not overlap in guest-physical space.
    pub fn from_ranges(mut ranges: Vec<RamRange>) -> Result<Self, super::ModelError> {
        ranges.sort_by_key(|r| r.base);
        for w in ranges.windows(2) {
            let end = w[0]
                .base
                .checked_add(w[0].region.len() as u64)
                .ok_or(super::ModelError::Overlap(w[0].base))?;
            if end > w[1].base {
                return Err(super::ModelError::Overlap(w[1].base));
            }
        }
        Ok(Self { ranges })
    }

    /// The ranges, by ascending base.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// The range holding all of `[paddr, paddr + len)` and the offset in it.
    /// A range straddling two regions is in none (two RAM blocks in QEMU).
    pub fn locate(&self, paddr: u64, len: u64) -> Option<(&RamRange, u64)> {
        self.ranges
            .iter()
            .find_map(|r| r.offset(paddr, len).map(|off| (r, off)))
    }

    /// Bytes the memfds really hold (sum of st_blocks * 512).
    pub fn allocated_bytes(&self) -> Result<u64, super::ModelError> {
        self.ranges
            .iter()
            .try_fold(0, |acc, r| Ok(acc + r.region.allocated_bytes()?))
    }

    /// Writes a byte into every page of `[paddr, paddr + len)` so the memfd
    /// really allocates them (what a guest touching its memory does).
    pub fn touch(&self, paddr: u64, len: u64) -> bool {
        let Some((range, off)) = self.locate(paddr, len) else {
            return false;
        };
        let mut p = off;
        while p < off + len {
            // SAFETY: `p` is inside the mapping (checked by `locate`).
            unsafe {
                range
                    .region
                    .as_ptr()
                    .wrapping_add(p as usize)
                    .write_volatile(0xa5)
            };
            p += PAGE;
        }
        true
    }
}

/// A misbehaviour to inject on the next completion of a queue.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Fault {
    /// Return a used id beyond the queue size (the chain stays unreturned).
    BadUsedId,
    /// Return the chain with a used length of u32::MAX.
    BadUsedLength,
    /// Return the chain twice (the second is not in flight).
    DuplicateCompletion,
    /// Move used.idx by more than the queue size (returning nothing valid).
    UsedIndexJump,
    /// Reset itself: status reads 0.
    Reset,
    /// Set DEVICE_NEEDS_RESET and raise a config interrupt.
    NeedsReset,
    /// Take the chain and never return it (then stop, wedged): a completion
    /// that never comes.
    Lose,
    /// Reset itself without a word: status reads 0, no interrupt.
    SilentReset,
}

/// The device's counters (the tests' oracle).
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct DeviceCounters {
    /// Reporting chains processed.
    pub reports: u64,
    /// Reported ranges discarded.
    pub ranges_discarded: u64,
    /// Bytes discarded (reports and inflates).
    pub bytes_discarded: u64,
    /// Ranges skipped: outside RAM, unaligned, or not device-writable.
    pub ranges_skipped: u64,
    /// Inflate requests.
    pub inflates: u64,
    /// Pages inflated.
    pub pages_inflated: u64,
    /// Deflate requests.
    pub deflates: u64,
    /// Pages deflated.
    pub pages_deflated: u64,
    /// Stats buffers received.
    pub stats_received: u64,
    /// Malformed rings or chains from the driver.
    pub bad_chains: u64,
    /// Interrupts raised.
    pub interrupts: u64,
    /// Faults injected.
    pub faults: u64,
}

/// How the device is built.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct DeviceConfig {
    /// Features offered.
    pub offered: BalloonFeatures,
    /// Queue numbering (QEMU: Offered; Firecracker: Dense).
    pub layout: QueueLayout,
    /// Queues must use the legacy contiguous layout.
    pub legacy: bool,
    /// The reporting queue's max size; `None`: the layout's usual one
    /// (QEMU's 32, or a dense device's 128 like its other queues).
    pub reporting_queue_size: Option<u32>,
}

impl DeviceConfig {
    /// The balloon devices the host platform's model can play, by name:
    /// QEMU's (the default) and the shapes other VMMs' devices take
    /// (DESIGN §3: queue numbering differs between implementations). The
    /// driver and the memserver pass the same end-to-end tests against
    /// each. Names say the shape; the VMM named is the one it is like.
    ///
    /// | name | numbering | STATS_VQ | reporting queue |
    /// |------|-----------|----------|-----------------|
    /// | `qemu` | over offered features | yes | 32 |
    /// | `dense` (Firecracker-like) | dense, over what is used | yes | 128, like the others |
    /// | `dense-no-stats` (Cloud Hypervisor-like) | dense | no: reporting is queue 2 | 128 |
    /// | `no-stats` | over offered | no: reporting is queue 2 | 32 |
    /// | `small-reporting-queue` | over offered | yes | 4 (lowers the batch capacity) |
    pub fn profiles() -> [(&'static str, DeviceConfig); 5] {
        let qemu = DeviceConfig::default();
        let no_stats = qemu.offered - BalloonFeatures::STATS_VQ;
        [
            ("qemu", qemu),
            (
                "dense",
                DeviceConfig {
                    layout: QueueLayout::Dense,
                    ..qemu
                },
            ),
            (
                "dense-no-stats",
                DeviceConfig {
                    offered: no_stats,
                    layout: QueueLayout::Dense,
                    ..qemu
                },
            ),
            (
                "no-stats",
                DeviceConfig {
                    offered: no_stats,
                    ..qemu
                },
            ),
            (
                "small-reporting-queue",
                DeviceConfig {
                    reporting_queue_size: Some(4),
                    ..qemu
                },
            ),
        ]
    }

    /// The profile called `name` (see [`DeviceConfig::profiles`]).
    pub fn profile(name: &str) -> Option<DeviceConfig> {
        Self::profiles()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c)
    }
}

impl Default for DeviceConfig {
    /// Like QEMU 10 with `free-page-reporting=on`.
    fn default() -> Self {
        Self {
            offered: BalloonFeatures::STATS_VQ
                | BalloonFeatures::REPORTING
                | BalloonFeatures::DEFLATE_ON_OOM
                | BalloonFeatures::VERSION_1,
            layout: QueueLayout::Offered,
            legacy: false,
            reporting_queue_size: None,
        }
    }
}

#[derive(Copy, Clone, Debug, Default)]
struct DevQueue {
    last_avail: u16,
    used_idx: u16,
}

#[derive(Copy, Clone, Debug)]
struct Ring {
    size: u16,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
}

/// A descriptor as laid out in the table (§2.7.5), little-endian fields.
#[repr(C)]
#[derive(Copy, Clone)]
struct RawDesc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[derive(Copy, Clone, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
}

/// Called when the device raises its interrupt (e.g. writes an eventfd).
pub type Irq = Box<dyn FnMut() + Send>;

/// The virtio-balloon device model.
pub struct BalloonDevice {
    regs: Arc<SharedRegion>,
    dma: DmaWindow,
    ram: Arc<GuestRam>,
    irq: Irq,
    cfg: DeviceConfig,
    queues: [DevQueue; MAX_QUEUES],
    epoch: u32,
    held_stats: Option<(usize, u16)>,
    last_stats: Option<Stats>,
    hold_reports: bool,
    /// Complete the next two or more available reports in reverse order.
    reverse_reports: bool,
    /// Set after a fatal fault: a broken device stops serving until reset.
    stalled: bool,
    fault: Option<(QueueKind, Fault)>,
    counters: DeviceCounters,
}

impl std::fmt::Debug for BalloonDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalloonDevice")
            .field("cfg", &self.cfg)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Max sizes QEMU gives its queues (reporting is 32, the PCI cross-check).
fn qemu_queue_size(kind: Option<QueueKind>, is_free_page: bool) -> u32 {
    match kind {
        Some(QueueKind::Reporting) => 32,
        _ if is_free_page => 64,
        Some(_) => 128,
        None => 0,
    }
}

impl BalloonDevice {
    /// Creates the device and initialises the register page `regs`.
    pub fn new(
        regs: Arc<SharedRegion>,
        dma: DmaWindow,
        ram: Arc<GuestRam>,
        cfg: DeviceConfig,
        irq: Irq,
    ) -> Result<Self, super::ModelError> {
        if regs.len() < size_of::<RegisterFile>() {
            return Err(super::ModelError::BadSize(regs.len()));
        }
        let dev = Self {
            regs,
            dma,
            ram,
            irq,
            cfg,
            queues: [DevQueue::default(); MAX_QUEUES],
            epoch: 0,
            held_stats: None,
            last_stats: None,
            hold_reports: false,
            reverse_reports: false,
            stalled: false,
            fault: None,
            counters: DeviceCounters::default(),
        };
        let r = dev.r();
        r.device_id.store(5, Release);
        r.device_features.store(cfg.offered.bits(), Release);
        r.legacy.store(u32::from(cfg.legacy), Release);
        let all = queue_indices(cfg.offered, cfg.offered, QueueLayout::Offered);
        // Where the reporting queue is once a driver negotiates all but
        // hinting (which drivers leave, DESIGN §3): a dense device numbers
        // over what is used.
        let used = cfg.offered - BalloonFeatures::FREE_PAGE_HINT;
        let reporting = queue_indices(cfg.offered, used, cfg.layout).reporting;
        for (i, q) in r.queues.iter().enumerate() {
            let size = match cfg.layout {
                QueueLayout::Offered => {
                    let free_page = all.free_page == Some(i as u16);
                    qemu_queue_size(dev.kind_in(&all, i), free_page)
                }
                // Firecracker-like: every queue that may exist has one size,
                // so the size cannot tell the index.
                QueueLayout::Dense => {
                    let n = 2 + [all.stats, all.free_page, all.reporting]
                        .iter()
                        .flatten()
                        .count();
                    if i < n { 128 } else { 0 }
                }
            };
            let size = match cfg.reporting_queue_size {
                Some(s) if reporting == Some(i as u16) => s,
                _ => size,
            };
            q.max_size.store(size, Release);
        }
        r.magic.store(MAGIC, Release);
        Ok(dev)
    }

    fn r(&self) -> &RegisterFile {
        // SAFETY: the region is at least a RegisterFile long (checked in
        // `new`), page-aligned, accessed only through atomics.
        unsafe { &*self.regs.as_ptr().cast::<RegisterFile>() }
    }

    fn kind_in(&self, q: &crate::layout::QueueIndices, i: usize) -> Option<QueueKind> {
        let i = i as u16;
        if i == q.inflate {
            Some(QueueKind::Inflate)
        } else if i == q.deflate {
            Some(QueueKind::Deflate)
        } else if Some(i) == q.stats {
            Some(QueueKind::Stats)
        } else if Some(i) == q.reporting {
            Some(QueueKind::Reporting)
        } else {
            None
        }
    }

    fn kind_of(&self, i: usize) -> Option<QueueKind> {
        let negotiated = BalloonFeatures::from_bits_retain(self.r().driver_features.load(Acquire));
        let q = match self.cfg.layout {
            // QEMU: numbering over offered; a queue serves only if negotiated.
            QueueLayout::Offered => {
                queue_indices(self.cfg.offered, negotiated, QueueLayout::Offered)
            }
            QueueLayout::Dense => queue_indices(self.cfg.offered, negotiated, QueueLayout::Dense),
        };
        self.kind_in(&q, i)
    }

    /// Counters.
    pub fn counters(&self) -> DeviceCounters {
        self.counters
    }

    /// The stats the driver sent last.
    pub fn last_stats(&self) -> Option<Stats> {
        self.last_stats
    }

    /// The driver's `actual`.
    pub fn actual(&self) -> u32 {
        config_u32(self.r(), config::ACTUAL)
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> BalloonFeatures {
        BalloonFeatures::from_bits_retain(self.r().driver_features.load(Acquire))
    }

    /// Whether the driver has set DRIVER_OK and no reset is pending.
    pub fn driver_ok(&self) -> bool {
        let s = self.r().status.load(Acquire);
        s & STATUS_DRIVER_OK != 0 && s & STATUS_NEEDS_RESET == 0
    }

    /// While set, reporting chains stay available but unprocessed (lets a
    /// test pile up batches in flight).
    pub fn set_hold_reports(&mut self, hold: bool) {
        self.hold_reports = hold;
    }

    /// The next time two or more reporting chains are available, process
    /// them all and return them in reverse order (VIRTIO 1.2 §2.7.8: a
    /// device may use buffers in any order). Counted as a fault.
    pub fn set_reverse_reports(&mut self) {
        self.reverse_reports = true;
    }

    /// Reporting chains the driver made available that the device has not
    /// taken yet (0 before the queue is set up, or if its index is illegal).
    pub fn reports_waiting(&self) -> u16 {
        let Some(qi) = (0..MAX_QUEUES).find(|&i| self.kind_of(i) == Some(QueueKind::Reporting))
        else {
            return 0;
        };
        let Some(ring) = self.ring(qi) else {
            return 0;
        };
        let n = Self::avail_idx(&ring).wrapping_sub(self.queues[qi].last_avail);
        if n > ring.size { 0 } else { n }
    }

    /// Misbehave on the next completion on `queue`.
    pub fn inject(&mut self, queue: QueueKind, fault: Fault) {
        self.fault = Some((queue, fault));
    }

    /// Sets the balloon target (QMP `balloon`): config change, ISR 0x3 as QEMU.
    pub fn set_target(&mut self, pages: u32) {
        let r = self.r();
        r.config_generation.fetch_add(1, AcqRel);
        set_config_u32(r, config::NUM_PAGES, pages);
        r.config_generation.fetch_add(1, AcqRel);
        self.raise(0x3);
    }

    /// Returns the held stats buffer so the driver refills it (QEMU's stats
    /// timer). False if the driver has not given one.
    pub fn request_stats(&mut self) -> bool {
        let Some((qi, head)) = self.held_stats.take() else {
            return false;
        };
        let Some(ring) = self.ring(qi) else {
            return false;
        };
        self.push_used(qi, &ring, u32::from(head), 0);
        self.raise(0x1);
        true
    }

    fn raise(&mut self, bits: u32) {
        self.r().isr.fetch_or(bits, AcqRel);
        self.counters.interrupts += 1;
        (self.irq)();
    }

    fn reset_state(&mut self) {
        self.queues = [DevQueue::default(); MAX_QUEUES];
        self.held_stats = None;
        self.stalled = false;
    }

    /// Translates a guest-physical range the driver gave.
    fn mem(&self, paddr: u64, len: u64) -> Option<*mut u8> {
        if let Some(off) = paddr.checked_sub(self.dma.paddr)
            && off.checked_add(len)? <= self.dma.region.len() as u64
        {
            // SAFETY: in bounds of the DMA mapping.
            return Some(unsafe { self.dma.region.as_ptr().add(off as usize) });
        }
        let (range, off) = self.ram.locate(paddr, len)?;
        // SAFETY: in bounds of that range's mapping.
        Some(unsafe { range.region.as_ptr().add(off as usize) })
    }

    fn ring(&self, i: usize) -> Option<Ring> {
        let q: &QueueRegs = &self.r().queues[i];
        if q.ready.load(Acquire) == 0 {
            return None;
        }
        let size = q.size.load(Acquire);
        if size == 0 || !size.is_power_of_two() || size > q.max_size.load(Acquire) {
            return None;
        }
        let n = u64::from(size);
        let (desc, avail, used) = (
            q.desc.load(Acquire),
            q.driver.load(Acquire),
            q.device.load(Acquire),
        );
        if desc % 16 != 0 || avail % 2 != 0 || used % 4 != 0 {
            return None;
        }
        Some(Ring {
            size: size as u16,
            desc: self.mem(desc, 16 * n)?,
            avail: self.mem(avail, 6 + 2 * n)?,
            used: self.mem(used, 6 + 8 * n)?,
        })
    }

    /// One round: handle a reset, then every ready queue. Returns whether it
    /// used any buffer.
    pub fn process(&mut self) -> bool {
        let epoch = self.r().reset_epoch.load(Acquire);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.reset_state();
        }
        if !self.driver_ok() || self.stalled {
            return false;
        }
        self.r().notify_pending.swap(0, AcqRel);
        let mut used = false;
        for i in 0..MAX_QUEUES {
            // Stop the round after a fault that wedges the device, or when
            // the driver reset it meanwhile: its new queues start from a
            // fresh state on the next round (our queue state is stale).
            if self.stalled || self.r().reset_epoch.load(Acquire) != self.epoch {
                break;
            }
            let Some(kind) = self.kind_of(i) else {
                continue;
            };
            match self.ring(i) {
                Some(ring) => used |= self.process_queue(i, kind, ring),
                None => {
                    if self.r().queues[i].ready.load(Acquire) != 0 {
                        self.counters.bad_chains += 1;
                    }
                }
            }
        }
        if used {
            self.raise(0x1);
        }
        used
    }

    fn avail_idx(ring: &Ring) -> u16 {
        let p = ring.avail.wrapping_add(2).cast::<u16>();
        // SAFETY: avail.idx at offset 2, 2-byte aligned (checked), in a mapping we hold.
        u16::from_le(unsafe { AtomicU16::from_ptr(p) }.load(Acquire))
    }

    fn read_desc(ring: &Ring, i: u16) -> (Desc, u16) {
        let p = ring
            .desc
            .wrapping_add(16 * usize::from(i))
            .cast::<RawDesc>();
        // SAFETY: `i < size`; the table spans 16 * size bytes of a mapping we
        // hold and is 16-byte aligned (checked in `ring`).
        let raw = unsafe { p.read_volatile() };
        (
            Desc {
                addr: u64::from_le(raw.addr),
                len: u32::from_le(raw.len),
                flags: u16::from_le(raw.flags),
            },
            u16::from_le(raw.next),
        )
    }

    /// Walks a chain; `None` for a loop, an index out of range, or an
    /// indirect descriptor (never negotiated).
    fn chain(ring: &Ring, head: u16) -> Option<Vec<Desc>> {
        let mut out = Vec::new();
        let mut i = head;
        loop {
            if i >= ring.size || out.len() >= usize::from(ring.size) {
                return None;
            }
            let (d, next) = Self::read_desc(ring, i);
            if d.flags & DESC_F_INDIRECT != 0 {
                return None;
            }
            out.push(d);
            if d.flags & DESC_F_NEXT == 0 {
                return Some(out);
            }
            i = next;
        }
    }

    fn push_used(&mut self, qi: usize, ring: &Ring, id: u32, len: u32) {
        let q = &mut self.queues[qi];
        let slot = usize::from(q.used_idx & (ring.size - 1));
        let p = ring.used.wrapping_add(4 + 8 * slot).cast::<[u32; 2]>();
        // SAFETY: used.ring[slot] (le32 id, le32 len) at 4 + 8 * slot, inside
        // the used ring (6 + 8 * size bytes, checked), 4-byte aligned.
        unsafe { p.write_volatile([id.to_le(), len.to_le()]) };
        q.used_idx = q.used_idx.wrapping_add(1);
        // The element must be visible before the index (§2.7.14).
        fence(Ordering::SeqCst);
        Self::store_used_idx(ring, q.used_idx);
    }

    fn store_used_idx(ring: &Ring, idx: u16) {
        let p = ring.used.wrapping_add(2).cast::<u16>();
        // SAFETY: used.idx at offset 2, 2-byte aligned, in a mapping we hold.
        unsafe { AtomicU16::from_ptr(p) }.store(idx.to_le(), Release);
    }

    fn process_queue(&mut self, qi: usize, kind: QueueKind, ring: Ring) -> bool {
        if kind == QueueKind::Reporting && self.hold_reports {
            return false;
        }
        if kind == QueueKind::Reporting && self.reverse_reports && self.complete_reversed(qi, &ring)
        {
            return true;
        }
        let mut used = false;
        loop {
            let avail = Self::avail_idx(&ring);
            let q = self.queues[qi];
            if avail == q.last_avail {
                return used;
            }
            if avail.wrapping_sub(q.last_avail) > ring.size {
                // The driver moved avail.idx illegally; stop serving this queue.
                self.counters.bad_chains += 1;
                return used;
            }
            if kind == QueueKind::Stats && self.held_stats.is_some() {
                // One stats buffer at a time; a second is a driver bug.
                self.counters.bad_chains += 1;
            }
            let slot = usize::from(q.last_avail & (ring.size - 1));
            let p = ring.avail.wrapping_add(4 + 2 * slot).cast::<u16>();
            // SAFETY: avail.ring[slot] at 4 + 2 * slot, inside the avail ring.
            let head = u16::from_le(unsafe { p.read_volatile() });
            self.queues[qi].last_avail = q.last_avail.wrapping_add(1);
            let Some(chain) = Self::chain(&ring, head) else {
                self.counters.bad_chains += 1;
                self.push_used(qi, &ring, u32::from(head), 0);
                used = true;
                continue;
            };
            match kind {
                QueueKind::Reporting => {
                    self.counters.reports += 1;
                    for d in &chain {
                        self.discard_report(d);
                    }
                }
                QueueKind::Inflate | QueueKind::Deflate => self.balloon(kind, &chain),
                QueueKind::Stats => {
                    self.read_stats(&chain);
                    self.held_stats = Some((qi, head));
                    continue;
                }
            }
            if !self.complete(qi, kind, &ring, head) {
                return true;
            }
            used = true;
        }
    }

    /// Processes every available reporting chain and returns them last
    /// first; false (nothing done) while fewer than two are available.
    fn complete_reversed(&mut self, qi: usize, ring: &Ring) -> bool {
        let avail = Self::avail_idx(ring);
        let start = self.queues[qi].last_avail;
        let n = avail.wrapping_sub(start);
        if n < 2 || n > ring.size {
            return false;
        }
        self.reverse_reports = false;
        self.counters.faults += 1;
        let mut heads = Vec::with_capacity(usize::from(n));
        for k in 0..n {
            let slot = usize::from(start.wrapping_add(k) & (ring.size - 1));
            let p = ring.avail.wrapping_add(4 + 2 * slot).cast::<u16>();
            // SAFETY: avail.ring[slot] at 4 + 2 * slot, inside the avail ring.
            let head = u16::from_le(unsafe { p.read_volatile() });
            match Self::chain(ring, head) {
                Some(chain) => {
                    self.counters.reports += 1;
                    for d in &chain {
                        self.discard_report(d);
                    }
                }
                None => self.counters.bad_chains += 1,
            }
            heads.push(head);
        }
        self.queues[qi].last_avail = avail;
        for &h in heads.iter().rev() {
            self.push_used(qi, ring, u32::from(h), 0);
        }
        true
    }

    /// Pushes the used element for `head`, or the injected fault instead.
    /// Returns false when the queue should not be processed further now.
    fn complete(&mut self, qi: usize, kind: QueueKind, ring: &Ring, head: u16) -> bool {
        let fault = match self.fault {
            Some((k, f)) if k == kind => {
                self.fault = None;
                self.counters.faults += 1;
                f
            }
            _ => {
                self.push_used(qi, ring, u32::from(head), 0);
                return true;
            }
        };
        match fault {
            Fault::BadUsedId => self.push_used(qi, ring, u32::from(ring.size) + 7, 0),
            Fault::BadUsedLength => self.push_used(qi, ring, u32::from(head), u32::MAX),
            Fault::DuplicateCompletion => {
                self.push_used(qi, ring, u32::from(head), 0);
                self.push_used(qi, ring, u32::from(head), 0);
            }
            Fault::UsedIndexJump => {
                let q = &mut self.queues[qi];
                q.used_idx = q.used_idx.wrapping_add(ring.size + 1);
                Self::store_used_idx(ring, q.used_idx);
            }
            Fault::Reset => {
                self.r().status.store(0, Release);
                self.reset_state();
                self.raise(0x2);
            }
            Fault::NeedsReset => {
                self.r().status.fetch_or(STATUS_NEEDS_RESET, AcqRel);
                self.raise(0x2);
            }
            Fault::Lose => {}
            Fault::SilentReset => {
                self.r().status.store(0, Release);
                self.reset_state();
            }
        }
        // Only a wrong length leaves the device working; after the others it
        // stops until the driver resets it, like a wedged device.
        self.stalled = fault != Fault::BadUsedLength;
        false
    }

    fn discard(&mut self, paddr: u64, len: u64) -> bool {
        // QEMU skips ranges not aligned to the RAM block's page size.
        if !paddr.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) || len == 0 {
            return false;
        }
        // Outside every RAM range (or across two): skipped, as QEMU does.
        let Some((range, off)) = self.ram.locate(paddr, len) else {
            return false;
        };
        if range.region.punch_hole(off, len).is_err() {
            return false;
        }
        self.counters.bytes_discarded += len;
        true
    }

    fn discard_report(&mut self, d: &Desc) {
        if d.flags & DESC_F_WRITE != 0 && self.discard(d.addr, u64::from(d.len)) {
            self.counters.ranges_discarded += 1;
        } else {
            self.counters.ranges_skipped += 1;
        }
    }

    fn balloon(&mut self, kind: QueueKind, chain: &[Desc]) {
        let mut pages = 0u64;
        for d in chain {
            if d.flags & DESC_F_WRITE != 0 {
                self.counters.bad_chains += 1;
                continue;
            }
            let Some(p) = self.mem(d.addr, u64::from(d.len)) else {
                self.counters.bad_chains += 1;
                continue;
            };
            for i in 0..(d.len / 4) as usize {
                let e = p.wrapping_add(4 * i).cast::<u32>();
                // SAFETY: `4 * i + 4 <= len`, inside the translated range.
                let pfn = u32::from_le(unsafe { e.read_unaligned() });
                pages += 1;
                if kind == QueueKind::Inflate && !self.discard(u64::from(pfn) * PAGE, PAGE) {
                    self.counters.ranges_skipped += 1;
                }
            }
        }
        if kind == QueueKind::Inflate {
            self.counters.inflates += 1;
            self.counters.pages_inflated += pages;
        } else {
            self.counters.deflates += 1;
            self.counters.pages_deflated += pages;
        }
    }

    fn read_stats(&mut self, chain: &[Desc]) {
        let mut bytes = Vec::new();
        for d in chain {
            match self.mem(d.addr, u64::from(d.len)) {
                // SAFETY: the translated range is `len` bytes of a mapping we hold.
                Some(p) => bytes.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(p, d.len.min(4096) as usize)
                }),
                None => self.counters.bad_chains += 1,
            }
        }
        self.counters.stats_received += 1;
        self.last_stats = Some(Stats::decode(&bytes));
    }
}

// SAFETY: the device's raw pointers all point into shared mappings it holds
// through `Arc`s; nothing is thread-bound.
unsafe impl Send for BalloonDevice {}
