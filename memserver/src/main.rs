//! The memserver PD: the buddy allocator and reporting worker behind the
//! guests' rings, the balloon's rings and the timer.
//!
//! Everything but the wiring lives in the library (`memserver::server`), which
//! is tested on the host; this file turns channels into server events and the
//! server's [`Wake`] into notifications and timer calls. Channel ids, ring
//! regions and guest RAM addresses come from `system.xml` through the
//! generated `config` module.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod config {
    pd::config!("memserver");
    /// The guests, however many the description has (`sdf::guests`).
    pub mod guests {
        include!(concat!(env!("OUT_DIR"), "/guests_memserver.rs"));
    }
}

#[cfg(control_irq)]
use config::irq;
#[cfg(has_vmm)]
use config::paddr;
use config::{channel, guests, region};
use core::fmt;
use memserver::server::{BalloonPort, ClientPort, Server, Wake};
use memserver::{
    BYTES_PER_PAGE, MemCore, ReportingState, Tunables, ZoneId, ZoneSpec, metadata_bytes,
};
use memserver_api::SLOT_SIZE;
use pd::{ChannelSet, Handler, Region};
use pd_ring::{Consumer, Producer};

const LOG: pd::Log = pd::Log::new("MEMSERVER");

// One zone and one client port per guest: the client mask is a u32.
const _: () = assert!(guests::COUNT <= memserver::server::MAX_CLIENTS && guests::COUNT <= 32);

/// Managed pages: the guests' RAM, sized by system.xml.
const PAGES: usize = {
    let mut pages = 0;
    let mut i = 0;
    while i < guests::COUNT {
        pages += (guests::RAM_PADDR[i].size / 4096) as usize;
        i += 1;
    }
    pages
};

/// Per-page metadata lives here, outside the managed memory (which this PD
/// never maps). Sized at compile time from system.xml.
static mut META: [u8; PAGES * BYTES_PER_PAGE] = [0; PAGES * BYTES_PER_PAGE];

/// Words of each of the VM balloon's two bitmaps (a bit per page of the
/// VM's RAM), sized from the description.
#[cfg(has_vmm)]
const VM_BITMAP_WORDS: usize =
    memserver::vm_balloon::bitmap_words(config::paddr::VM_RAM_PADDR.size >> 12);

/// The VM balloon's bitmaps: pages the VM's OS holds in its balloon, and
/// pages handed to the outer balloon (`memserver::vm_balloon`).
#[cfg(has_vmm)]
static mut VM_BALLOON_MAPS: [[u64; VM_BITMAP_WORDS]; 2] = [[0; VM_BITMAP_WORDS]; 2];

#[derive(Debug)]
enum Error {
    Timer(timer::client::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timer(e) => write!(f, "arming the reporting timer: {e}"),
        }
    }
}

struct MemServer {
    server: Server<'static, 'static>,
    /// Reported pages at the last summary line.
    logged_reported: u64,
    /// Arming the timer failed and it was said (once per failure streak).
    timer_failing: bool,
    /// Reporting was stopped for the device at the last look (said once
    /// per change).
    logged_stopped: bool,
    /// The device's capacity at the last look (said once per change).
    logged_cap: Option<u16>,
    /// Nested (reports and refusals, reported pages, failed) at the last
    /// line.
    logged_nested: (u64, u64, u64),
    logged_vm_balloon: [u64; 5],
    /// The operator's control port (a description with `control_req`,
    /// `control_resp`, and the console's `<irq>` or the console PD).
    #[cfg(has_control)]
    control: memserver::server::ControlPort<'static>,
}

impl MemServer {
    /// Answer the operator's requests, saying each answer.
    #[cfg(has_control)]
    fn serve_control(&mut self) {
        use memserver_api::ToControl;
        // The operator's mistakes are answered, not the system's problems:
        // every answer is an INFO line.
        self.server
            .serve_control(&mut self.control, &mut |a| match a {
                ToControl::TunableSet { .. } => LOG.info(format_args!("control: tunable {a}")),
                ToControl::Refused { .. } => LOG.info(format_args!("control: {a}")),
            });
    }

    fn apply(&mut self, wake: Wake) {
        if let Some(ns) = wake.arm_timer_ns {
            // A timer that fails is not fatal: the server runs the worker
            // at the next event instead of after the delay. Said once.
            match timer::client::set_timeout(channel::TIMER, ns).map_err(Error::Timer) {
                Ok(()) => {
                    if core::mem::take(&mut self.timer_failing) {
                        LOG.info(format_args!("timer: working again"));
                    }
                }
                Err(e) => {
                    self.server.timer_unavailable();
                    if !core::mem::replace(&mut self.timer_failing, true) {
                        LOG.warn(format_args!(
                            "{e}; reporting runs at the next event instead of after the delay"
                        ));
                    }
                }
            }
        }
        if wake.balloon {
            channel::BALLOON.notify();
        }
        #[cfg(has_vmm)]
        if wake.vmm {
            channel::VMM.notify();
        }
        for (i, ch) in guests::CHANNEL.iter().enumerate() {
            if wake.clients & (1 << i) != 0 {
                ch.notify();
            }
        }
    }

    /// One line each time the VM's nested reports moved on (apart from
    /// the memserver's own figures).
    fn log_nested(&mut self) {
        let Some(c) = self.server.vmm_counters() else {
            return;
        };
        let seen = (
            c.nested.reports + c.nested.refused + c.no_reporting + c.malformed,
            c.nested.reported_pages,
            c.nested.failed_reports,
        );
        if seen == self.logged_nested {
            return;
        }
        self.logged_nested = seen;
        LOG.info(format_args!(
            "nested: reports={} reported_mib={} refused={} failed={} in_flight_mib={} batches={} malformed={} vmm_misbehaviour={}",
            c.nested.reports,
            c.nested.reported_pages / 256,
            c.nested.refused + c.no_reporting + c.malformed,
            c.nested.failed_reports,
            self.server.nested_in_flight_pages() / 256,
            c.batches_sent,
            c.malformed,
            c.misbehaviour,
        ));
    }

    /// One line each time the VM's balloon moved (the outer host's target
    /// reaching the VM).
    fn log_vm_balloon(&mut self) {
        let Some(b) = self.server.vm_balloon() else {
            return;
        };
        let c = b.counters;
        // A line per target, per 4 MiB moved, at every end (empty, or the
        // target met), and per refusal or owed page: not one per message.
        let step = |p: u64| p / 1024 + u64::from(p == b.target()) * (1 << 40);
        let seen = [
            b.target(),
            step(b.held_pages()),
            step(b.passed_pages()) + u64::from(b.passed_pages() == 0),
            c.refused,
            c.owed_pages,
        ];
        if seen == self.logged_vm_balloon {
            return;
        }
        self.logged_vm_balloon = seen;
        let free_mib = b.stats().and_then(|s| s.free_pages).map_or(0, |p| p / 256);
        LOG.info(format_args!(
            "vm balloon: target_pages={} held_pages={} passed_pages={} owed_pages={} inflated_pages={} deflated_pages={} refused={} vm_free_mib={}",
            b.target(),
            b.held_pages(),
            b.passed_pages(),
            b.owed_pages(),
            c.inflated_pages,
            c.deflated_pages,
            c.refused,
            free_mib,
        ));
    }

    /// Say once what the device's limits did to reporting.
    fn log_device(&mut self) {
        let cap = self.server.device_report_capacity();
        if cap != self.logged_cap {
            self.logged_cap = cap;
            if let (Some(c), Some(t)) = (cap, self.server.core().tunables())
                && c > 0
            {
                LOG.info(format_args!(
                    "device: {c} blocks per report; batch capacity {}",
                    t.capacity
                ));
            }
        }
        let stopped = self.server.reporting_stopped_by_device();
        if stopped != self.logged_stopped {
            self.logged_stopped = stopped;
            if stopped {
                LOG.warn(format_args!(
                    "reporting stopped: the device does not offer REPORTING (resumes when a restarted device does)"
                ));
            } else {
                LOG.info(format_args!(
                    "reporting resumed: the device offers REPORTING"
                ));
            }
        }
    }

    /// One line when a reporting pass has settled, for people and for
    /// `tools demo`.
    fn log_progress(&mut self) {
        let core = self.server.core();
        if core.reporting_state() != ReportingState::Idle || core.in_flight().next().is_some() {
            return;
        }
        let s = core.stats();
        if s.reported_pages == self.logged_reported {
            return;
        }
        self.logged_reported = s.reported_pages;
        let c = self.server.counters();
        LOG.info(format_args!(
            "reported: reported_mib={} free_mib={} allocated_mib={} batches_ok={} batches_failed={}",
            s.reported_pages / 256,
            s.free_pages / 256,
            s.allocated_pages / 256,
            c.completions_ok,
            c.completions_failed,
        ));
        // The conservation check end-to-end tests look for: every frame of
        // every zone is in exactly one state, and the counters add up.
        match core.check_invariants() {
            Ok(()) => LOG.info(format_args!(
                "conservation: ok total={} free={} allocated={} isolated={} ballooned={}",
                s.total_pages, s.free_pages, s.allocated_pages, s.isolated_pages, s.ballooned_pages,
            )),
            Err(e) => LOG.error(format_args!("conservation: BROKEN {e}")),
        }
        // What the peers did wrong, for the tests that play hostile peers
        // (issue 8): the server's own counters, not the peers' claims.
        LOG.info(format_args!(
            "peers: requests={} errors={} malformed={} client_misbehaviour={} \
             balloon_misbehaviour={} balloon_refused={} reclaims={}",
            c.requests,
            c.errors,
            c.malformed,
            c.client_misbehaviour,
            c.balloon_misbehaviour,
            c.balloon_refused,
            c.reclaims,
        ));
    }
}

impl Handler for MemServer {
    type Error = Error;

    fn notified(&mut self, channels: ChannelSet) -> Result<(), Error> {
        if channels.contains(channel::TIMER) {
            self.server.timer_expired();
        }
        if channels.contains(channel::BALLOON) {
            self.server.balloon_notified();
        }
        #[cfg(has_vmm)]
        if channels.contains(channel::VMM) {
            self.server.vmm_notified();
        }
        #[cfg(control_irq)]
        if channels.contains(irq::IRQ) {
            self.serve_control();
            // The console reads the answers once it sees the ack.
            irq::IRQ.irq_ack();
        }
        #[cfg(control_console)]
        if channels.contains(channel::CONSOLE) {
            self.serve_control();
            // The console PD prints the answers when told.
            channel::CONSOLE.notify();
        }
        for (i, ch) in guests::CHANNEL.iter().enumerate() {
            if channels.contains(*ch) {
                self.server.client_notified(i);
            }
        }
        let wake = self.server.take_wake();
        self.apply(wake);
        self.log_device();
        self.log_progress();
        self.log_nested();
        self.log_vm_balloon();
        Ok(())
    }
}

/// Tunables the PD was built with: `MEMSERVER_TUNABLES` in cargo's
/// environment (`tools image --tunables`, `tools bare --tunables`, which
/// check the text first), in `memserver::params`' syntax.
const BUILT_WITH: Option<&str> = option_env!("MEMSERVER_TUNABLES");

/// The reporting tunables: the adaptive policy with Linux's numbers, under
/// those the PD was built with ([`BUILT_WITH`]); on the host platform
/// `MEMSERVER_TUNABLES` in the PD's environment wins over both.
fn tunables() -> Option<Tunables> {
    #[cfg(not(target_os = "none"))]
    if let Ok(text) = std::env::var("MEMSERVER_TUNABLES") {
        match memserver::params::parse_tunables(&text) {
            Ok(t) => return t,
            Err(e) => {
                LOG.error(format_args!("MEMSERVER_TUNABLES: {e}"));
                std::process::exit(2);
            }
        }
    }
    if let Some(text) = BUILT_WITH {
        match memserver::params::parse_tunables(text) {
            Ok(t) => return t,
            // Only a build that bypassed the tools' check gets here; a PD
            // on Microkit cannot exit, so it says so and keeps the defaults.
            Err(e) => LOG.error(format_args!(
                "built with MEMSERVER_TUNABLES \"{text}\": {e}; the defaults apply"
            )),
        }
    }
    Some(Tunables::adaptive())
}

/// # Safety
/// `r` must be a ring region mapped read-write for the whole life of the PD.
unsafe fn producer(r: Region) -> Producer<'static> {
    // SAFETY: the caller promises a live rw mapping of `r.size` bytes.
    let p = unsafe { Producer::from_raw(r.as_ptr(), r.size as usize, SLOT_SIZE) };
    p.unwrap_or_else(|e| panic!("ring at {:#x}: {e}", r.vaddr))
}

/// # Safety
/// As [`producer`].
unsafe fn consumer(r: Region) -> Consumer<'static> {
    // SAFETY: as in `producer`.
    let c = unsafe { Consumer::from_raw(r.as_ptr(), r.size as usize, SLOT_SIZE) };
    c.unwrap_or_else(|e| panic!("ring at {:#x}: {e}", r.vaddr))
}

fn init() -> MemServer {
    let mut zones = [ZoneSpec {
        base_pfn: 0,
        pages: 0,
        owner: 0,
    }; guests::COUNT];
    for (i, ram) in guests::RAM_PADDR.iter().enumerate() {
        let base = ram.get();
        zones[i] = ZoneSpec {
            base_pfn: base >> 12,
            pages: (ram.size >> 12) as u32,
            owner: i as u32,
        };
        LOG.info(format_args!(
            "zone {i}: {} of {} at {base:#x}, {} MiB",
            ram.region,
            guests::NAMES[i],
            ram.size >> 20
        ));
    }
    let tunables = tunables();
    let meta_ptr = &raw mut META;
    // SAFETY: init runs once, before any event; META is used only through
    // this one reference from here on.
    let meta: &'static mut [u8] = unsafe { &mut *meta_ptr };
    debug_assert_eq!(meta.len(), metadata_bytes(&zones));
    let (mut core, boot) = MemCore::new(&zones, meta, tunables)
        .unwrap_or_else(|e| panic!("building the allocator: {e}"));
    if pd::REGIONS_UNTOUCHED_AT_BOOT {
        // The host backs none of the guests' RAM yet (adaptive only).
        core.boot_memory_untouched();
    }
    match tunables {
        Some(t) => LOG.info(format_args!(
            "reporting: policy {} order {} delay {} ms capacity {} in flight {} watermark {} pages; metadata {} bytes ({} per page)",
            t.policy.name(),
            t.reporting_order,
            t.delay_ns / 1_000_000,
            t.capacity,
            t.max_in_flight,
            t.low_watermark_pages,
            PAGES * BYTES_PER_PAGE,
            BYTES_PER_PAGE,
        )),
        None => LOG.info(format_args!("reporting: off")),
    }
    let clients = (0..guests::COUNT).map(|i| {
        // SAFETY: the rings are mapped rw for the PD's lifetime (system.xml).
        let req = unsafe { consumer(guests::REQ[i].get()) };
        // SAFETY: as above.
        let resp = unsafe { producer(guests::RESP[i].get()) };
        ClientPort {
            zone: ZoneId(i as u16),
            req,
            resp,
        }
    });
    // SAFETY: the rings are mapped rw for the PD's lifetime (system.xml).
    let to = unsafe { producer(region::TO_BALLOON.get()) };
    // SAFETY: as above.
    let from = unsafe { consumer(region::FROM_BALLOON.get()) };
    let balloon = BalloonPort { to, from };
    #[cfg_attr(not(has_vmm), allow(unused_mut))]
    let mut server = Server::new(core, clients, balloon, boot)
        .unwrap_or_else(|e| panic!("building the server: {e}"));
    #[cfg(has_vmm)]
    {
        // The VM's RAM: a delegated zone, never allocated from, never
        // mapped here; only its frame numbers are needed.
        let ram = &paddr::VM_RAM_PADDR;
        let zone = memserver::nested::PageRange {
            pfn: ram.get() >> 12,
            pages: ram.size >> 12,
        };
        LOG.info(format_args!(
            "VM RAM: {} at {:#x}, {} MiB (delegated: the VM's OS allocates it; the memserver checks and passes on its reports)",
            ram.region,
            ram.get(),
            ram.size >> 20
        ));
        let maps_ptr = &raw mut VM_BALLOON_MAPS;
        // SAFETY: init runs once, before any event; the bitmaps are used
        // only through this reference, held by the server for the PD's
        // lifetime.
        let [held_map, passed_map] = unsafe { &mut *maps_ptr };
        server.attach_vmm(memserver::server::VmmPort {
            // SAFETY: the rings are mapped rw for the PD's lifetime (the description).
            req: unsafe { consumer(region::VMM_REQ.get()) },
            // SAFETY: as above.
            resp: unsafe { producer(region::VMM_RESP.get()) },
            zone,
            held_map,
            passed_map,
        });
    }
    let mut pd = MemServer {
        server,
        logged_reported: 0,
        timer_failing: false,
        logged_stopped: false,
        logged_cap: None,
        logged_nested: (0, 0, 0),
        logged_vm_balloon: [0; 5],
        #[cfg(has_control)]
        control: memserver::server::ControlPort::new(
            // SAFETY: the rings are mapped rw for the PD's lifetime (the description).
            unsafe { consumer(region::CONTROL_REQ.get()) },
            // SAFETY: as above.
            unsafe { producer(region::CONTROL_RESP.get()) },
        ),
    };
    // The boot-time request: everything free is reported after the delay.
    let wake = pd.server.take_wake();
    pd.apply(wake);
    LOG.info(format_args!("ready, {} clients", pd.server.nr_clients()));
    pd
}

pd::main!(init);
