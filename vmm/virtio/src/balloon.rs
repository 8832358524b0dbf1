//! A virtio-balloon device (VIRTIO 1.2 §5.5) for a guest VM, with free page
//! reporting: what the guest reports, inflates, deflates and counts comes
//! out as [`Event`]s for the VMM to pass on (to the memserver), and reports
//! go back to the guest only when the VMM says they are done
//! ([`Balloon::complete_report`]): Linux waits for each report's buffers
//! before it reports again, so the pace is the memserver's.
//!
//! Offered: VERSION_1, STATS_VQ, DEFLATE_ON_OOM and (unless turned off for a
//! control run) REPORTING. Queues are numbered as Linux numbers them, densely
//! over what was negotiated (6.1 `init_vqs`): inflate 0, deflate 1, then
//! stats, then reporting.
//!
//! The guest is hostile. Besides what [`crate::queue`] checks, a chain that
//! is the wrong shape for its queue (a report buffer the device may not
//! write, not page-aligned or empty; a PFN array of odd length or naming a
//! frame outside guest RAM; a stats buffer of a broken length) is dropped:
//! returned unprocessed and counted, and nothing of it reaches the VMM.

use crate::GuestMemory;
use crate::mmio::{Device, VERSION_1};
use crate::queue::{Chain, DeviceQueue, MAX_CHAIN, QueueError};

/// Device id of the balloon (§5.5.1).
pub const DEVICE_ID: u32 = 5;

/// Feature bits (§5.5.3).
pub const F_STATS_VQ: u64 = 1 << 1;
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const F_REPORTING: u64 = 1 << 5;

/// Queue sizes, as QEMU's device has them (hw/virtio/virtio-balloon.c).
pub const INFLATE_QUEUE_SIZE: u16 = 128;
pub const STATS_QUEUE_SIZE: u16 = 128;
pub const REPORTING_QUEUE_SIZE: u16 = 32;

/// The most queues the device has (inflate, deflate, stats, reporting).
pub const QUEUES: usize = 4;

/// PFNs one inflate or deflate chain may carry (Linux sends at most 256,
/// VIRTIO_BALLOON_ARRAY_PFNS_MAX).
pub const MAX_PFNS: usize = 256;

/// Stats entries taken from one buffer: le16 tag + le64 value each.
pub const MAX_STATS: usize = 16;
const STAT_ENTRY: u32 = 10;

/// Page size of PFNs and of reported ranges.
pub const PAGE_SIZE: u64 = 4096;

/// Events the VMM takes at most between two drains; a full queue leaves
/// the guest's chains in the ring until [`Balloon::resume`].
pub const EVENTS: usize = 8;

/// A guest-physical range the guest reported free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub gpa: u64,
    pub len: u64,
}

/// What the guest asked of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Free ranges to report (one chain of the reporting queue); answer
    /// with [`Balloon::complete_report`] once the host has them.
    Report {
        head: u16,
        ranges: heapless::Vec<Range, MAX_CHAIN>,
    },
    /// Frames the guest gave to the balloon (already returned to it).
    Inflate { pfns: heapless::Vec<u32, MAX_PFNS> },
    /// Frames the guest takes back from the balloon (chain `head` of the
    /// deflate queue): the guest may use them once the chain is back, so
    /// answer with [`Balloon::complete_deflate`] only when the host holds
    /// none of them.
    Deflate {
        head: u16,
        pfns: heapless::Vec<u32, MAX_PFNS>,
    },
    /// The guest's statistics: (tag, value) pairs.
    Stats(heapless::Vec<(u16, u64), MAX_STATS>),
}

/// The queues in use, by the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueIndices {
    pub inflate: usize,
    pub deflate: usize,
    pub stats: Option<usize>,
    pub reporting: Option<usize>,
}

impl QueueIndices {
    /// Linux's numbering (dense over what was negotiated).
    pub fn for_features(negotiated: u64) -> Self {
        let mut next = 2;
        let mut take = |on: bool| {
            on.then(|| {
                next += 1;
                next - 1
            })
        };
        let stats = take(negotiated & F_STATS_VQ != 0);
        let reporting = take(negotiated & F_REPORTING != 0);
        QueueIndices {
            inflate: 0,
            deflate: 1,
            stats,
            reporting,
        }
    }
}

/// What the device counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub reports: u64,
    pub reported_bytes: u64,
    pub reports_done: u64,
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    pub stats_updates: u64,
    /// Chains dropped for their shape, per kind.
    pub bad_reports: u64,
    pub bad_pfn_arrays: u64,
    pub bad_stats: u64,
    /// Config writes other than `actual`.
    pub bad_config_writes: u64,
}

/// The balloon device.
#[derive(Debug)]
pub struct Balloon {
    reporting: bool,
    negotiated: u64,
    queues: QueueIndices,
    /// Config space: the host's target and the guest's size, in pages.
    num_pages: u32,
    actual: u32,
    /// The stats buffer the device holds until it wants new figures.
    stats_head: Option<u16>,
    events: heapless::Deque<Event, EVENTS>,
    pub counters: Counters,
}

impl Balloon {
    /// A balloon offering free page reporting when `reporting`.
    pub fn new(reporting: bool) -> Self {
        Balloon {
            reporting,
            negotiated: 0,
            queues: QueueIndices::for_features(0),
            num_pages: 0,
            actual: 0,
            stats_head: None,
            events: heapless::Deque::new(),
            counters: Counters::default(),
        }
    }

    /// The queue numbering in force.
    pub fn queues(&self) -> QueueIndices {
        self.queues
    }

    /// The guest's balloon size (`actual`), in pages.
    pub fn actual(&self) -> u32 {
        self.actual
    }

    /// Set the host's target (`num_pages`); the caller raises the
    /// configuration interrupt (`MmioTransport::config_changed`).
    pub fn set_target(&mut self, pages: u32) {
        self.num_pages = pages;
    }

    /// The next event, oldest first.
    pub fn take_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Chain `head` of the reporting queue is done: give its buffers back
    /// (length 0, as QEMU does) so the guest reports again.
    pub fn complete_report(
        &mut self,
        head: u16,
        queues: &mut [DeviceQueue],
        mem: &mut dyn GuestMemory,
    ) -> Result<bool, QueueError> {
        let q = self.queues.reporting.ok_or(QueueError::NotReady)?;
        queues[q].push_used(mem, head, 0)?;
        self.counters.reports_done += 1;
        Ok(true)
    }

    /// Chain `head` of the deflate queue is done: give it back, and the
    /// guest may use its frames.
    pub fn complete_deflate(
        &mut self,
        head: u16,
        queues: &mut [DeviceQueue],
        mem: &mut dyn GuestMemory,
    ) -> Result<bool, QueueError> {
        queues[self.queues.deflate].push_used(mem, head, 0)?;
        Ok(true)
    }

    /// Ask the guest for new statistics: return the buffer it left.
    pub fn request_stats(
        &mut self,
        queues: &mut [DeviceQueue],
        mem: &mut dyn GuestMemory,
    ) -> Result<bool, QueueError> {
        match (self.queues.stats, self.stats_head.take()) {
            (Some(q), Some(head)) => queues[q].push_used(mem, head, 0).map(|()| true),
            _ => Ok(false),
        }
    }

    /// Take what the guest offers on every queue while there is room for
    /// the events (after the VMM drained some).
    pub fn resume(
        &mut self,
        queues: &mut [DeviceQueue],
        mem: &mut dyn GuestMemory,
    ) -> Result<bool, QueueError> {
        let mut used = false;
        for q in 0..QUEUES {
            used |= self.notify(q, queues, mem)?;
        }
        Ok(used)
    }

    fn pfns(chain: &Chain, mem: &dyn GuestMemory) -> Option<heapless::Vec<u32, MAX_PFNS>> {
        let mut pfns = heapless::Vec::new();
        for b in &chain.buffers {
            if b.writable || b.len % 4 != 0 {
                return None;
            }
            for i in 0..b.len / 4 {
                let mut w = [0u8; 4];
                mem.read(b.addr + u64::from(i) * 4, &mut w).ok()?;
                let pfn = u32::from_le_bytes(w);
                if !mem.contains(u64::from(pfn) * PAGE_SIZE, PAGE_SIZE) {
                    return None;
                }
                pfns.push(pfn).ok()?;
            }
        }
        Some(pfns)
    }

    fn report(chain: &Chain) -> Option<heapless::Vec<Range, MAX_CHAIN>> {
        let mut ranges = heapless::Vec::new();
        for b in &chain.buffers {
            let ok = b.writable
                && b.len > 0
                && u64::from(b.len) % PAGE_SIZE == 0
                && b.addr % PAGE_SIZE == 0;
            if !ok {
                return None;
            }
            ranges
                .push(Range {
                    gpa: b.addr,
                    len: u64::from(b.len),
                })
                .ok()?;
        }
        Some(ranges)
    }

    fn stats(chain: &Chain, mem: &dyn GuestMemory) -> Option<heapless::Vec<(u16, u64), MAX_STATS>> {
        let mut out = heapless::Vec::new();
        for b in &chain.buffers {
            if b.writable || b.len % STAT_ENTRY != 0 {
                return None;
            }
            for i in 0..b.len / STAT_ENTRY {
                let mut e = [0u8; 10];
                mem.read(b.addr + u64::from(i * STAT_ENTRY), &mut e).ok()?;
                let tag = u16::from_le_bytes([e[0], e[1]]);
                let val = u64::from_le_bytes(e[2..].try_into().ok()?);
                out.push((tag, val)).ok()?;
            }
        }
        Some(out)
    }
}

impl Device for Balloon {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        let reporting = if self.reporting { F_REPORTING } else { 0 };
        VERSION_1 | F_STATS_VQ | F_DEFLATE_ON_OOM | reporting
    }

    fn queue_max(&self, q: usize, negotiated: u64) -> u16 {
        let ix = QueueIndices::for_features(negotiated);
        if q == ix.inflate || q == ix.deflate {
            INFLATE_QUEUE_SIZE
        } else if Some(q) == ix.stats {
            STATS_QUEUE_SIZE
        } else if Some(q) == ix.reporting {
            REPORTING_QUEUE_SIZE
        } else {
            0
        }
    }

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; 16];
        space[..4].copy_from_slice(&self.num_pages.to_le_bytes());
        space[4..8].copy_from_slice(&self.actual.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| space.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's (§5.5.4), written whole.
        if offset == 4 && data.len() == 4 {
            self.actual = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        } else {
            self.counters.bad_config_writes += 1;
        }
    }

    fn activate(&mut self, negotiated: u64) {
        self.negotiated = negotiated;
        self.queues = QueueIndices::for_features(negotiated);
    }

    fn reset(&mut self) {
        *self = Balloon {
            num_pages: self.num_pages,
            counters: self.counters,
            ..Balloon::new(self.reporting)
        };
    }

    fn notify(
        &mut self,
        q: usize,
        queues: &mut [DeviceQueue],
        mem: &mut dyn GuestMemory,
    ) -> Result<bool, QueueError> {
        let Some(queue) = queues.get_mut(q) else {
            return Ok(false);
        };
        if !queue.is_ready() {
            return Ok(false);
        }
        let ix = self.queues;
        let mut used = false;
        // Room for one more event before taking a chain: what does not fit
        // stays in the ring until `resume`.
        while !self.events.is_full() {
            let Some(chain) = queue.pop(mem)? else { break };
            let head = chain.head;
            if q == ix.inflate || q == ix.deflate {
                match Self::pfns(&chain, mem) {
                    Some(pfns) if q == ix.inflate => {
                        self.counters.inflated_pages += pfns.len() as u64;
                        let _ = self.events.push_back(Event::Inflate { pfns });
                        queue.push_used(mem, head, 0)?;
                        used = true;
                    }
                    Some(pfns) => {
                        // Held until the VMM says the host let go of them.
                        self.counters.deflated_pages += pfns.len() as u64;
                        let _ = self.events.push_back(Event::Deflate { head, pfns });
                    }
                    None => {
                        self.counters.bad_pfn_arrays += 1;
                        queue.push_used(mem, head, 0)?;
                        used = true;
                    }
                }
            } else if Some(q) == ix.reporting {
                match Self::report(&chain) {
                    Some(ranges) => {
                        self.counters.reports += 1;
                        self.counters.reported_bytes += ranges.iter().map(|r| r.len).sum::<u64>();
                        let _ = self.events.push_back(Event::Report { head, ranges });
                    }
                    None => {
                        self.counters.bad_reports += 1;
                        queue.push_used(mem, head, 0)?;
                        used = true;
                    }
                }
            } else if Some(q) == ix.stats {
                match Self::stats(&chain, mem) {
                    Some(s) => {
                        self.counters.stats_updates += 1;
                        let _ = self.events.push_back(Event::Stats(s));
                        // Held until the next request, as §5.5.6.3 says; a
                        // second buffer while one is held replaces it.
                        if let Some(old) = self.stats_head.replace(head) {
                            queue.push_used(mem, old, 0)?;
                            used = true;
                        }
                    }
                    None => {
                        self.counters.bad_stats += 1;
                        queue.push_used(mem, head, 0)?;
                        used = true;
                    }
                }
            } else {
                // A queue this numbering does not use: give it back.
                queue.push_used(mem, head, 0)?;
                used = true;
            }
        }
        Ok(used)
    }
}
