//! The virtio-balloon driver, in the shape of virtio-drivers' devices
//! (`rng.rs`, `blk.rs`): `new()` = begin_init → queues → finish_init,
//! non-blocking submit/poll pairs, `ack_interrupt`.
//!
//! It knows nothing of allocation policy or messages: the PD shell turns
//! memserver messages into calls here and the results back into messages.

use crate::defs::{
    BalloonFeatures, Block, BlockExt, Error, PFNS_PER_REQUEST, QueueKind, STATS_BUFFER_SIZE,
    SUPPORTED_FEATURES, Stats, config,
};
use crate::layout::{QueueIndices, QueueLayout, queue_indices};
use crate::metrics::Metrics;
use crate::report_ring::{DmaPages, ReportRing};
use heapless::Deque;
use virtio_drivers::{
    BufferDirection, Hal,
    queue::VirtQueue,
    transport::{DeviceStatus, DeviceType, InterruptStatus, Transport},
};

/// Inflate, deflate and stats queues hold one request at a time (Linux's
/// `tell_host` also waits for each), so two descriptors are plenty.
const SMALL_QUEUE: usize = 2;
/// Completed report batches waiting for `poll_reports`; bounds in-flight +
/// done so that a failure can always queue every batch (no lost block).
/// One per reporting descriptor is enough: a batch needs at least one.
const DONE_CAPACITY: usize = crate::defs::REPORT_RING_MAX;

/// Driver options.
#[derive(Copy, Clone, Debug, Default, Eq, PartialEq)]
pub struct Config {
    /// Queue numbering to assume (default: QEMU's, over offered features).
    pub layout: QueueLayout,
    /// On PCI, the reporting queue's expected max size (QEMU: 32). When set,
    /// the chosen layout's reporting queue must have this size; if the other
    /// layout's does instead, that layout is used. virtio-mmio reports 1024
    /// for every queue, so leave it `None` there.
    pub reporting_queue_size: Option<u32>,
}

impl Config {
    /// What the PD uses on PCI (x86_64): QEMU's numbering, confirmed by
    /// QEMU's reporting queue size (32, DESIGN §3).
    pub const PCI: Config = Config {
        layout: QueueLayout::Offered,
        reporting_queue_size: Some(32),
    };
}

/// A balloon size decision, in 4 KiB pages.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum BalloonAction {
    /// The balloon is at the target (counting requests in flight).
    None,
    /// The host wants this many more pages: ask the memserver for them.
    Inflate(u32),
    /// The host gives this many pages back.
    Deflate(u32),
}

/// Why pages are deflated.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum DeflateReason {
    /// The host lowered the target.
    Target,
    /// The memserver ran out of memory (needs DEFLATE_ON_OOM).
    Oom,
}

/// Inflate or deflate.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum BalloonOp {
    /// Pages given to the host.
    Inflate,
    /// Pages taken back from the host.
    Deflate,
}

/// A finished inflate or deflate request.
///
/// - Inflate `Ok`: the pages are in the balloon (`actual` grew).
/// - Inflate `Err`: the pages were not ballooned; give them back to the memserver.
/// - Deflate `Ok`: the host was told; the pages may be used again.
/// - Deflate `Err`: the device was reset, which empties the balloon on the
///   host side; the pages may be used again.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub struct BalloonDone {
    /// The caller's request id.
    pub id: u32,
    /// Which queue.
    pub op: BalloonOp,
    /// Pages in the request.
    pub pages: u32,
    /// Outcome.
    pub result: Result<(), Error>,
}

#[derive(Copy, Clone, Debug)]
struct BalloonReq {
    id: u32,
    pages: u32,
    token: u16,
}

#[derive(Debug)]
struct Queues<H: Hal> {
    inflate: VirtQueue<H, SMALL_QUEUE>,
    deflate: VirtQueue<H, SMALL_QUEUE>,
    inflate_buf: DmaPages<H>,
    deflate_buf: DmaPages<H>,
    stats: Option<(VirtQueue<H, SMALL_QUEUE>, DmaPages<H>)>,
    reporting: Option<ReportRing<H>>,
}

/// Driver for a virtio-balloon device.
#[derive(Debug)]
pub struct VirtIOBalloon<H: Hal, T: Transport> {
    transport: T,
    config: Config,
    offered: BalloonFeatures,
    features: BalloonFeatures,
    indices: QueueIndices,
    /// `None` once the driver gave up on the device (see `restart`).
    queues: Option<Queues<H>>,
    inflating: Option<BalloonReq>,
    deflating: Option<BalloonReq>,
    stats_token: Option<u16>,
    /// The device returned the stats buffer and waits for fresh numbers.
    stats_held: bool,
    /// A stats request not yet seen by `take_stats_request`.
    stats_request: bool,
    latest_stats: Stats,
    /// Pages in the balloon as acknowledged by the device (our `actual`).
    actual: u32,
    reports_done: Deque<(u32, Result<(), Error>), DONE_CAPACITY>,
    balloon_done: Deque<BalloonDone, 4>,
    config_changed: bool,
    metrics: Metrics,
}

struct Setup<H: Hal> {
    offered: BalloonFeatures,
    features: BalloonFeatures,
    indices: QueueIndices,
    queues: Queues<H>,
}

impl<H: Hal, T: Transport> VirtIOBalloon<H, T> {
    /// Initialises the device with the default [`Config`].
    pub fn new(transport: T) -> Result<Self, Error> {
        Self::with_config(transport, Config::default())
    }

    /// Initialises the device.
    pub fn with_config(mut transport: T, config: Config) -> Result<Self, Error> {
        let s = Self::init(&mut transport, &config)?;
        let mut this = Self {
            transport,
            config,
            offered: s.offered,
            features: s.features,
            indices: s.indices,
            queues: Some(s.queues),
            inflating: None,
            deflating: None,
            stats_token: None,
            stats_held: false,
            stats_request: false,
            latest_stats: Stats::default(),
            actual: 0,
            reports_done: Deque::new(),
            balloon_done: Deque::new(),
            config_changed: false,
            metrics: Metrics::default(),
        };
        this.after_init()?;
        Ok(this)
    }

    fn init(transport: &mut T, config: &Config) -> Result<Setup<H>, Error> {
        // virtio-drivers maps device id 5 to `MemoryBalloon` (and 13 too).
        if !matches!(
            transport.device_type(),
            DeviceType::MemoryBalloon | DeviceType::MemoryBallooning
        ) {
            return Err(Error::WrongDeviceType);
        }
        let features = transport.begin_init(SUPPORTED_FEATURES);
        let offered = BalloonFeatures::from_bits_retain(transport.read_device_features());
        let result = Self::setup_queues(transport, config, offered, features);
        match result {
            Ok((indices, queues)) => {
                transport.finish_init();
                Ok(Setup {
                    offered,
                    features,
                    indices,
                    queues,
                })
            }
            Err(e) => {
                // §3.1.1: the driver sets FAILED when it gives up.
                transport.set_status(DeviceStatus::FAILED);
                Err(e)
            }
        }
    }

    fn choose_indices(
        transport: &mut T,
        config: &Config,
        offered: BalloonFeatures,
        features: BalloonFeatures,
    ) -> Result<QueueIndices, Error> {
        let primary = queue_indices(offered, features, config.layout);
        let (Some(expect), Some(r)) = (config.reporting_queue_size, primary.reporting) else {
            return Ok(primary);
        };
        let size = transport.max_queue_size(r);
        if size == expect {
            return Ok(primary);
        }
        let other_layout = match config.layout {
            QueueLayout::Offered => QueueLayout::Dense,
            QueueLayout::Dense => QueueLayout::Offered,
        };
        let other = queue_indices(offered, features, other_layout);
        if let Some(r2) = other.reporting
            && transport.max_queue_size(r2) == expect
        {
            return Ok(other);
        }
        if other.reporting == Some(r) {
            // Both numberings agree: the size has nothing to choose
            // between (another VMM's queue size), so the index stands.
            return Ok(primary);
        }
        Err(Error::QueueLayoutMismatch {
            index: r,
            max_size: size,
        })
    }

    fn setup_queues(
        transport: &mut T,
        config: &Config,
        offered: BalloonFeatures,
        features: BalloonFeatures,
    ) -> Result<(QueueIndices, Queues<H>), Error> {
        let indices = Self::choose_indices(transport, config, offered, features)?;
        let inflate = VirtQueue::new(transport, indices.inflate, false, false)?;
        let deflate = VirtQueue::new(transport, indices.deflate, false, false)?;
        let inflate_buf = DmaPages::new(1, BufferDirection::DriverToDevice)?;
        let deflate_buf = DmaPages::new(1, BufferDirection::DriverToDevice)?;
        let stats = match indices.stats {
            Some(i) => Some((
                VirtQueue::new(transport, i, false, false)?,
                DmaPages::new(1, BufferDirection::DriverToDevice)?,
            )),
            None => None,
        };
        let reporting = match indices.reporting {
            Some(i) => Some(ReportRing::new(transport, i)?),
            None => None,
        };
        Ok((
            indices,
            Queues {
                inflate,
                deflate,
                inflate_buf,
                deflate_buf,
                stats,
                reporting,
            },
        ))
    }

    /// After DRIVER_OK: publish `actual` and prime the stats queue with one
    /// buffer so the device can ask for statistics (Linux `init_vqs`; we do
    /// it after DRIVER_OK because §3.1.1 forbids notifying before).
    fn after_init(&mut self) -> Result<(), Error> {
        self.write_actual()?;
        if let Some(token) = self.post_stats()? {
            self.stats_token = Some(token);
        }
        Ok(())
    }

    fn write_actual(&mut self) -> Result<(), Error> {
        self.transport
            .write_config_space(config::ACTUAL, self.actual.to_le())?;
        Ok(())
    }

    fn post_stats(&mut self) -> Result<Option<u16>, Error> {
        let encoded = self.latest_stats.encode();
        let Some(q) = self.queues.as_mut() else {
            return Err(Error::Broken);
        };
        let Some((queue, buf)) = q.stats.as_mut() else {
            return Ok(None);
        };
        // SAFETY: `buf` is one page of our DMA memory, larger than the stats
        // buffer; the device does not own it (it is not in the queue).
        unsafe {
            core::ptr::copy_nonoverlapping(encoded.as_ptr(), buf.vaddr.as_ptr(), STATS_BUFFER_SIZE)
        };
        // SAFETY: as above; the slice is read only by the device until popped.
        let slice = unsafe { core::slice::from_raw_parts(buf.vaddr.as_ptr(), STATS_BUFFER_SIZE) };
        // SAFETY: the buffer is our DMA page; it stays valid and untouched
        // until `pop_used` returns this token.
        let token = unsafe { queue.add(&[slice], &mut []) }?;
        if queue.should_notify() {
            self.transport
                .notify(self.indices.stats.unwrap_or_default());
        }
        Ok(Some(token))
    }

    /// Features negotiated with the device.
    pub fn features(&self) -> BalloonFeatures {
        self.features
    }

    /// Features the device offered.
    pub fn offered_features(&self) -> BalloonFeatures {
        self.offered
    }

    /// The queue indices in use.
    pub fn queue_indices(&self) -> QueueIndices {
        self.indices
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the driver gave up on the device (call [`Self::restart`]).
    pub fn is_broken(&self) -> bool {
        self.queues.is_none()
    }

    /// With MUST_TELL_HOST, deflated pages may be reused only after their
    /// [`BalloonDone`]; without it, right after [`Self::deflate`] returns.
    pub fn must_tell_host(&self) -> bool {
        self.features.contains(BalloonFeatures::MUST_TELL_HOST)
    }

    /// Pages in the balloon as acknowledged by the device.
    pub fn actual(&self) -> u32 {
        self.actual
    }

    /// Most blocks one report batch can carry (the reporting queue size);
    /// 0 without reporting.
    pub fn report_capacity(&self) -> usize {
        self.ring().map_or(0, |r| usize::from(r.size()))
    }

    /// Free reporting descriptors now (a batch needs one per block).
    pub fn report_free_descriptors(&self) -> usize {
        self.ring().map_or(0, |r| usize::from(r.free_descriptors()))
    }

    /// Report batches in flight.
    pub fn reports_in_flight(&self) -> usize {
        self.ring().map_or(0, |r| usize::from(r.in_flight()))
    }

    fn ring(&self) -> Option<&ReportRing<H>> {
        self.queues.as_ref().and_then(|q| q.reporting.as_ref())
    }

    /// Posts a report batch: one chain, one device-writable descriptor per
    /// block. Non-blocking; the outcome comes from [`Self::poll_reports`]. An
    /// error changes nothing.
    pub fn submit_report(&mut self, batch_id: u32, blocks: &[Block]) -> Result<(), Error> {
        let pending = self.reports_done.len();
        let q = self.queues.as_mut().ok_or(Error::Broken)?;
        let ring = q.reporting.as_mut().ok_or(Error::NoReporting)?;
        if usize::from(ring.in_flight()) + pending >= DONE_CAPACITY {
            return Err(Error::QueueFull);
        }
        ring.submit(&mut self.transport, batch_id, blocks)?;
        self.metrics.reports_submitted += 1;
        Ok(())
    }

    /// The next finished report batch, if any. `Err` means the blocks were not
    /// reported and go back to the memserver as they were.
    pub fn poll_reports(&mut self) -> Option<(u32, Result<(), Error>)> {
        self.process();
        self.reports_done.pop_front()
    }

    /// The next finished inflate/deflate request, if any.
    pub fn poll_balloon(&mut self) -> Option<BalloonDone> {
        self.process();
        self.balloon_done.pop_front()
    }

    /// Reads and acknowledges the interrupt status. QEMU raises 0x3 for a
    /// config change (DESIGN §3), so callers check the used rings (the
    /// `poll_*` calls) after every interrupt whatever the bits say.
    pub fn ack_interrupt(&mut self) -> InterruptStatus {
        let isr = self.transport.ack_interrupt();
        if isr.contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT) {
            self.config_changed = true;
            self.metrics.config_changes += 1;
        }
        isr
    }

    /// Whether a config change was seen since the last call.
    pub fn take_config_changed(&mut self) -> bool {
        core::mem::take(&mut self.config_changed)
    }

    /// The host's target (`num_pages`, le32).
    pub fn target(&self) -> Result<u32, Error> {
        let v = self
            .transport
            .read_consistent(|| self.transport.read_config_space::<u32>(config::NUM_PAGES))?;
        Ok(u32::from_le(v))
    }

    /// Compares the target with `actual` plus what is in flight.
    pub fn balloon_action(&mut self) -> Result<BalloonAction, Error> {
        if self.is_broken() {
            return Err(Error::Broken);
        }
        let target = i64::from(self.target()?);
        let projected = i64::from(self.actual) + i64::from(self.inflating.map_or(0, |r| r.pages))
            - i64::from(self.deflating.map_or(0, |r| r.pages));
        Ok(match target - projected {
            0 => BalloonAction::None,
            d if d > 0 => BalloonAction::Inflate(d as u32),
            d => BalloonAction::Deflate((-d) as u32),
        })
    }

    /// Posts PFNs (4 KiB units) to the inflate queue. One request in flight.
    pub fn inflate(&mut self, id: u32, pfns: &[u64]) -> Result<(), Error> {
        self.post_pfns(BalloonOp::Inflate, id, pfns.len(), pfns.iter().copied())
    }

    /// Inflates one block (up to 1024 pages, MAX_ORDER 10): the PFN array is
    /// written straight into DMA memory, so the shell needs no 4 KiB array.
    pub fn inflate_block(&mut self, id: u32, block: Block) -> Result<(), Error> {
        if !block.is_valid() {
            return Err(Error::InvalidBlock(block));
        }
        let n = block.pages() as usize;
        self.post_pfns(BalloonOp::Inflate, id, n, block.pfn..block.pfn + n as u64)
    }

    /// Deflates one block; see [`Self::inflate_block`] and [`Self::deflate`].
    pub fn deflate_block(
        &mut self,
        id: u32,
        block: Block,
        reason: DeflateReason,
    ) -> Result<(), Error> {
        if !block.is_valid() {
            return Err(Error::InvalidBlock(block));
        }
        let n = block.pages() as usize;
        self.check_deflate(n, reason)?;
        self.post_pfns(BalloonOp::Deflate, id, n, block.pfn..block.pfn + n as u64)
    }

    /// Posts PFNs to the deflate queue. `Oom` needs DEFLATE_ON_OOM.
    pub fn deflate(&mut self, id: u32, pfns: &[u64], reason: DeflateReason) -> Result<(), Error> {
        self.check_deflate(pfns.len(), reason)?;
        self.post_pfns(BalloonOp::Deflate, id, pfns.len(), pfns.iter().copied())
    }

    fn check_deflate(&self, n: usize, reason: DeflateReason) -> Result<(), Error> {
        if reason == DeflateReason::Oom && !self.features.contains(BalloonFeatures::DEFLATE_ON_OOM)
        {
            return Err(Error::OomDeflateNotNegotiated);
        }
        let held = self.actual - self.deflating.map_or(0, |r| r.pages);
        if n as u64 > u64::from(held) {
            return Err(Error::DeflateExceedsBalloon {
                requested: n.min(u32::MAX as usize) as u32,
                held,
            });
        }
        Ok(())
    }

    /// Validates everything first, so an error changes nothing.
    fn post_pfns(
        &mut self,
        op: BalloonOp,
        id: u32,
        n: usize,
        pfns: impl Iterator<Item = u64> + Clone,
    ) -> Result<(), Error> {
        let q = self.queues.as_mut().ok_or(Error::Broken)?;
        if n == 0 {
            return Err(Error::Empty);
        }
        if n > PFNS_PER_REQUEST {
            return Err(Error::TooManyPfns(n));
        }
        if let Some(p) = pfns.clone().find(|&p| p > u64::from(u32::MAX)) {
            return Err(Error::PfnTooLarge(p));
        }
        let (queue, buf, slot, idx) = match op {
            BalloonOp::Inflate => (
                &mut q.inflate,
                &q.inflate_buf,
                &mut self.inflating,
                self.indices.inflate,
            ),
            BalloonOp::Deflate => (
                &mut q.deflate,
                &q.deflate_buf,
                &mut self.deflating,
                self.indices.deflate,
            ),
        };
        if slot.is_some() {
            return Err(Error::QueueFull);
        }
        let bytes = n * 4;
        let p = buf.vaddr.as_ptr();
        for (i, pfn) in pfns.take(n).enumerate() {
            // le32 PFNs in 4 KiB units (VIRTIO 1.2 §5.5.6).
            let entry = p.wrapping_add(4 * i).cast::<u32>();
            // SAFETY: `buf` is a page of our DMA memory (4096 >= 4 * 1024
            // bytes); it is not in the queue now, so the device does not own it.
            unsafe { entry.write_unaligned((pfn as u32).to_le()) };
        }
        // SAFETY: as above: `bytes` <= one page of our DMA memory.
        let slice = unsafe { core::slice::from_raw_parts(p, bytes) };
        // SAFETY: the slice is our DMA page; it stays valid and untouched
        // until `pop_used` returns the token.
        let token = unsafe { queue.add(&[slice], &mut []) }?;
        *slot = Some(BalloonReq {
            id,
            pages: n as u32,
            token,
        });
        if queue.should_notify() {
            self.transport.notify(idx);
        }
        Ok(())
    }

    /// Whether the device asked for statistics since the last call. The
    /// shell then fetches the memserver's numbers and calls [`Self::set_stats`].
    pub fn take_stats_request(&mut self) -> bool {
        core::mem::take(&mut self.stats_request)
    }

    /// Stores the latest numbers; if the device is waiting for them (it
    /// returned the stats buffer), refills the buffer and gives it back, as
    /// Linux's `update_balloon_stats_func` does.
    pub fn set_stats(&mut self, stats: Stats) -> Result<(), Error> {
        self.latest_stats = stats;
        if self.stats_held && !self.is_broken() {
            self.stats_token = self.post_stats()?;
            self.stats_held = false;
            self.metrics.stats_updates += 1;
        }
        Ok(())
    }

    /// Gives up on a device that stopped answering (the caller's watchdog
    /// saw no completion for a whole period): resets it, so it can no
    /// longer touch the rings, and fails everything in flight with
    /// [`Error::Stalled`], as after a device error. [`Self::restart`] next.
    pub fn abandon(&mut self) {
        if !self.is_broken() {
            self.fail(Error::Stalled);
        }
    }

    /// Gives up on the device and starts again: reset, renegotiate, new
    /// queues. `actual` is kept and published again. Only when broken.
    pub fn restart(&mut self) -> Result<(), Error> {
        if !self.is_broken() {
            return Ok(());
        }
        let s = Self::init(&mut self.transport, &self.config)?;
        self.offered = s.offered;
        self.features = s.features;
        self.indices = s.indices;
        self.queues = Some(s.queues);
        self.after_init()
    }

    /// Checks the device and every used ring; records completions.
    fn process(&mut self) {
        if self.queues.is_none() {
            return;
        }
        let status = self.transport.get_status();
        if status.contains(DeviceStatus::DEVICE_NEEDS_RESET)
            || !status.contains(DeviceStatus::DRIVER_OK)
        {
            self.fail(Error::DeviceReset);
            return;
        }
        if let Err(e) = self.process_reports() {
            self.fail(e);
            return;
        }
        for op in [BalloonOp::Inflate, BalloonOp::Deflate] {
            if let Err(e) = self.process_balloon(op) {
                self.fail(e);
                return;
            }
        }
        if let Err(e) = self.process_stats() {
            self.fail(e);
        }
    }

    fn process_reports(&mut self) -> Result<(), Error> {
        let Some(ring) = self.queues.as_mut().and_then(|q| q.reporting.as_mut()) else {
            return Ok(());
        };
        while let Some(c) = ring.pop_used()? {
            match c.result {
                Ok(()) => {
                    self.metrics.reports_completed += 1;
                    self.metrics.blocks_reported += u64::from(c.blocks);
                    self.metrics.pages_reported += c.pages;
                }
                Err(e) => {
                    self.metrics.reports_failed += 1;
                    self.metrics.errors.count(&e);
                }
            }
            // Capacity is reserved at submit time, so this cannot fail.
            let _ = self.reports_done.push_back((c.batch_id, c.result));
        }
        Ok(())
    }

    fn process_balloon(&mut self, op: BalloonOp) -> Result<(), Error> {
        let Some(q) = self.queues.as_mut() else {
            return Ok(());
        };
        let (queue, buf, slot, kind) = match op {
            BalloonOp::Inflate => (
                &mut q.inflate,
                &q.inflate_buf,
                &mut self.inflating,
                QueueKind::Inflate,
            ),
            BalloonOp::Deflate => (
                &mut q.deflate,
                &q.deflate_buf,
                &mut self.deflating,
                QueueKind::Deflate,
            ),
        };
        if let Some(id) = queue.peek_used() {
            let Some(req) = *slot else {
                return Err(Error::NotInFlight {
                    queue: kind,
                    id: u32::from(id),
                });
            };
            if id != req.token {
                return Err(if usize::from(id) >= SMALL_QUEUE {
                    Error::BadUsedId {
                        queue: kind,
                        id: u32::from(id),
                    }
                } else {
                    Error::NotInFlight {
                        queue: kind,
                        id: u32::from(id),
                    }
                });
            }
            let bytes = req.pages as usize * 4;
            // SAFETY: the same DMA page and length we passed to `add` for this token.
            let slice = unsafe { core::slice::from_raw_parts(buf.vaddr.as_ptr(), bytes) };
            // SAFETY: `slice` is the buffer added with `req.token`, which is next.
            let len = unsafe { queue.pop_used(req.token, &[slice], &mut []) }?;
            *slot = None;
            // The buffer is device-readable only; a used length beyond it is a lie.
            let result = if len as usize > bytes {
                Err(Error::BadUsedLength { queue: kind, len })
            } else {
                Ok(())
            };
            match (op, result) {
                (BalloonOp::Inflate, Ok(())) => {
                    self.actual = self.actual.saturating_add(req.pages);
                    self.metrics.pages_inflated += u64::from(req.pages);
                }
                (BalloonOp::Deflate, Ok(())) => {
                    self.actual -= req.pages;
                    self.metrics.pages_deflated += u64::from(req.pages);
                }
                (_, Err(e)) => {
                    self.metrics.balloon_requests_failed += 1;
                    self.metrics.errors.count(&e);
                }
            }
            let _ = self.balloon_done.push_back(BalloonDone {
                id: req.id,
                op,
                pages: req.pages,
                result,
            });
            if result.is_ok() {
                // Linux `update_balloon_size`: tell the host where we are.
                self.transport
                    .write_config_space(config::ACTUAL, self.actual.to_le())?;
            }
            // A failed deflate still hands its pages back (see BalloonDone),
            // but the host was not told; a later target check re-balances.
            let q = self.queues.as_mut().ok_or(Error::Broken)?;
            return match op {
                BalloonOp::Inflate => check_idle(&q.inflate, kind),
                BalloonOp::Deflate => check_idle(&q.deflate, kind),
            };
        }
        Ok(())
    }

    fn process_stats(&mut self) -> Result<(), Error> {
        let Some((queue, buf)) = self.queues.as_mut().and_then(|q| q.stats.as_mut()) else {
            return Ok(());
        };
        let Some(id) = queue.peek_used() else {
            return Ok(());
        };
        let Some(token) = self.stats_token else {
            return Err(Error::NotInFlight {
                queue: QueueKind::Stats,
                id: u32::from(id),
            });
        };
        if id != token {
            return Err(Error::BadUsedId {
                queue: QueueKind::Stats,
                id: u32::from(id),
            });
        }
        // SAFETY: the same DMA page and length we passed to `add`.
        let slice = unsafe { core::slice::from_raw_parts(buf.vaddr.as_ptr(), STATS_BUFFER_SIZE) };
        // SAFETY: `slice` is the buffer added with `token`, which is next.
        let len = unsafe { queue.pop_used(token, &[slice], &mut []) }?;
        self.stats_token = None;
        if len as usize > STATS_BUFFER_SIZE {
            self.metrics.errors.bad_used_len += 1;
        }
        check_idle(queue, QueueKind::Stats)?;
        // The device returned the buffer: it wants fresh numbers (§5.5.6.3).
        // They come from the memserver, so the buffer waits for `set_stats`.
        self.stats_held = true;
        self.stats_request = true;
        self.metrics.stats_requests += 1;
        Ok(())
    }

    /// Gives up on the device after a protocol violation or reset: reset it
    /// so it stops using the rings (§2.1: after reset the device must not
    /// access them), then fail everything in flight so every block and page
    /// goes back to the memserver. Never panics, never drops a request.
    fn fail(&mut self, e: Error) {
        self.metrics.errors.count(&e);
        self.metrics.device_resets += 1;
        self.transport.set_status(DeviceStatus::empty());
        if let Some(mut q) = self.queues.take()
            && let Some(ring) = q.reporting.as_mut()
        {
            let done = &mut self.reports_done;
            let failed = &mut self.metrics.reports_failed;
            ring.fail_all(|batch_id, _| {
                *failed += 1;
                let _ = done.push_back((batch_id, Err(e)));
            });
            // Dropping `q` frees the ring memory; the device is reset.
        }
        for (op, slot) in [
            (BalloonOp::Inflate, self.inflating.take()),
            (BalloonOp::Deflate, self.deflating.take()),
        ] {
            if let Some(req) = slot {
                self.metrics.balloon_requests_failed += 1;
                let _ = self.balloon_done.push_back(BalloonDone {
                    id: req.id,
                    op,
                    pages: req.pages,
                    result: Err(e),
                });
            }
        }
        self.stats_token = None;
        self.stats_held = false;
    }
}

/// After popping the only request, another used element is a completion
/// for nothing in flight.
fn check_idle<H: Hal>(queue: &VirtQueue<H, SMALL_QUEUE>, kind: QueueKind) -> Result<(), Error> {
    match queue.peek_used() {
        None => Ok(()),
        Some(id) => Err(Error::NotInFlight {
            queue: kind,
            id: u32::from(id),
        }),
    }
}

impl<H: Hal, T: Transport> Drop for VirtIOBalloon<H, T> {
    fn drop(&mut self) {
        // Reset so the device stops using rings whose memory is freed next.
        self.transport.set_status(DeviceStatus::empty());
    }
}
