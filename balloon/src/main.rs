//! The balloon PD: the virtio-balloon driver between the memserver's rings
//! and the device.
//!
//! Everything but the wiring is in the library ([`balloon::shell`], tested on
//! the host against the real memserver); this file picks the transport and
//! DMA `Hal` for the platform and turns channels into calls:
//!
//! - Microkit aarch64: virtio-mmio at offset 0xe00 of the `virtio_mmio` page
//!   (DESIGN §4), [`balloon::dma::RegionHal`] over `balloon_dma` (paddr from
//!   the `balloon_dma_paddr` setvar);
//! - Microkit x86_64 (and the bare platform on QEMU pc): virtio-pci, its
//!   configuration space through the granted ports 0xcf8/0xcfc, its BAR4 as
//!   the `virtio_mmio` region of the x86_64_generic description;
//! - host (Linux, under `tools run`): the device model's `SharedTransport`
//!   over the `virtio_mmio` region with the futex doorbell, and `HostHal`
//!   over `balloon_dma` at the launcher's paddr. The launcher must start
//!   `balloon::model::host::HostDevice` on the same memfds first.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod config {
    pd::config!("balloon");
}
#[allow(dead_code)]
mod hw {
    include!(concat!(env!("OUT_DIR"), "/balloon_hw.rs"));
}

use balloon::VirtIOBalloon;
use balloon::shell::{BalloonPd, Level, Wake};
use config::{channel, irq, paddr, region};
use core::fmt;
use core::mem::MaybeUninit;
use memserver_api::SLOT_SIZE;
use pd::{ChannelSet, Handler};
use pd_ring::{Consumer, GeometryError, Producer};

const LOG: pd::Log = pd::Log::new("BALLOON");

fn log(level: Level, args: fmt::Arguments<'_>) {
    match level {
        Level::Info => LOG.info(args),
        Level::Warn => LOG.warn(args),
        Level::Error => LOG.error(args),
    }
}

/// Why the PD could not start.
#[derive(Debug)]
enum StartError {
    /// A ring region cannot hold a ring.
    Ring(GeometryError),
    /// The transport or DMA region could not be set up.
    Platform(platform::Error),
    /// The driver refused the device.
    Driver(balloon::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ring(e) => write!(f, "ring: {e}"),
            Self::Platform(e) => write!(f, "{e}"),
            Self::Driver(e) => write!(f, "driver: {e}"),
        }
    }
}

/// The platform's transport and `Hal`.
#[cfg(target_os = "linux")]
mod platform {
    use super::{StartError, paddr, region};
    use balloon::VirtIOBalloon;
    use balloon::model::{DmaWindow, HostHal, ModelError, SharedRegion, SharedTransport};
    use std::sync::Arc;

    pub type H = HostHal;
    pub type T = SharedTransport;
    pub type Error = ModelError;

    pub fn driver() -> Result<VirtIOBalloon<H, T>, StartError> {
        let mmio = region::VIRTIO_MMIO.get();
        let dma = region::BALLOON_DMA.get();
        // SAFETY: pd's host backend mapped both regions MAP_SHARED for the
        // life of the process; the device model (another process) and we
        // only touch them through atomics / volatile accesses.
        let transport = unsafe { SharedTransport::from_mapping(mmio.as_ptr(), mmio.size as usize) }
            .map_err(StartError::Platform)?;
        // SAFETY: as above; the DMA region is ours and the device's only.
        let window = unsafe { SharedRegion::from_mapping(dma.as_ptr(), dma.size as usize) }
            .map_err(StartError::Platform)?;
        HostHal::install(DmaWindow {
            region: Arc::new(window),
            paddr: paddr::BALLOON_DMA_PADDR.get(),
        })
        .map_err(StartError::Platform)?;
        VirtIOBalloon::new(transport).map_err(StartError::Driver)
    }

    pub fn fail(e: &StartError) -> ! {
        super::LOG.error(format_args!("cannot start: {e}"));
        std::process::exit(1)
    }
}

/// Microkit (and the bare platform): virtio-mmio on aarch64 (QEMU virt),
/// virtio-pci on x86_64 (QEMU pc).
#[cfg(target_os = "none")]
mod platform {
    use super::{StartError, paddr, region};
    use balloon::VirtIOBalloon;
    use balloon::dma::RegionHal;
    use core::fmt;
    #[cfg(target_arch = "aarch64")]
    use virtio_drivers::transport::mmio::{MmioError, MmioTransport};
    #[cfg(target_arch = "x86_64")]
    use virtio_drivers::transport::pci::{PciTransport, VirtioPciError};

    pub type H = RegionHal;
    #[cfg(target_arch = "aarch64")]
    pub type T = MmioTransport<'static>;
    #[cfg(target_arch = "x86_64")]
    pub type T = PciTransport;

    /// The device sits at 0xe00 in the mapped page (DESIGN §4: the first
    /// virtio-*-device takes the last slot, 0x0a003e00).
    #[cfg(target_arch = "aarch64")]
    const MMIO_OFFSET: usize = 0xe00;
    /// One virtio-mmio slot.
    #[cfg(target_arch = "aarch64")]
    const MMIO_SIZE: usize = 0x200;

    #[derive(Debug)]
    pub enum Error {
        Dma(balloon::dma::DmaError),
        #[cfg(target_arch = "aarch64")]
        Mmio(MmioError),
        /// x86_64: no `<ioport>` at 0xcf8 for this PD in system.xml.
        #[cfg(target_arch = "x86_64")]
        NoConfigPorts,
        /// x86_64: no virtio-balloon function on PCI bus 0.
        #[cfg(target_arch = "x86_64")]
        NoPciDevice,
        /// x86_64: the register region has no physical address.
        #[cfg(target_arch = "x86_64")]
        NoBarAddress,
        #[cfg(target_arch = "x86_64")]
        Pci(VirtioPciError),
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Self::Dma(e) => write!(f, "balloon_dma: {e}"),
                #[cfg(target_arch = "aarch64")]
                Self::Mmio(e) => write!(f, "virtio-mmio: {e}"),
                #[cfg(target_arch = "x86_64")]
                Self::NoConfigPorts => write!(
                    f,
                    "virtio-pci: no <ioport> at 0xcf8 (PCI configuration) in the system description"
                ),
                #[cfg(target_arch = "x86_64")]
                Self::NoPciDevice => write!(f, "virtio-pci: no virtio-balloon on PCI bus 0"),
                #[cfg(target_arch = "x86_64")]
                Self::NoBarAddress => write!(
                    f,
                    "virtio-pci: the BAR region has no phys_addr in the system description"
                ),
                #[cfg(target_arch = "x86_64")]
                Self::Pci(e) => write!(f, "virtio-pci: {e}"),
            }
        }
    }

    fn dma() -> Result<(), StartError> {
        let dma = region::BALLOON_DMA.get();
        // SAFETY: `balloon_dma` is mapped read-write for the PD's life and
        // only the driver's DMA buffers live there; its physical address
        // comes from the Microkit tool (`balloon_dma_paddr`).
        unsafe {
            RegionHal::init(
                dma.vaddr as usize,
                paddr::BALLOON_DMA_PADDR.get(),
                dma.size as usize,
            )
        }
        .map_err(|e| StartError::Platform(Error::Dma(e)))
    }

    #[cfg(target_arch = "aarch64")]
    pub fn driver() -> Result<VirtIOBalloon<H, T>, StartError> {
        use core::ptr::NonNull;
        dma()?;
        let mmio = region::VIRTIO_MMIO.get();
        let header = NonNull::new((mmio.vaddr as usize + MMIO_OFFSET) as *mut _)
            .ok_or(StartError::Platform(Error::Mmio(MmioError::BadMagic(0))))?;
        // SAFETY: the page is mapped uncached for the PD's life (system.xml)
        // and holds a virtio-mmio header at MMIO_OFFSET; nothing else uses it.
        let transport = unsafe { MmioTransport::new(header, MMIO_SIZE) }
            .map_err(|e| StartError::Platform(Error::Mmio(e)))?;
        VirtIOBalloon::new(transport).map_err(StartError::Driver)
    }

    /// x86_64: the x86_64_generic description (tools image) maps the
    /// device's BAR4 (modern virtio-pci capabilities, where SeaBIOS put it)
    /// as `virtio_mmio` and grants the PCI configuration ports; the
    /// transport finds its capabilities through configuration space and
    /// its registers by physical address in that mapping.
    #[cfg(target_arch = "x86_64")]
    pub fn driver() -> Result<VirtIOBalloon<H, T>, StartError> {
        use virtio_drivers::transport::DeviceType;
        use virtio_drivers::transport::pci::bus::PciRoot;
        use virtio_drivers::transport::pci::virtio_device_type;
        dma()?;
        let bar = region::VIRTIO_MMIO.get();
        let bar_paddr = bar.paddr.ok_or(StartError::Platform(Error::NoBarAddress))?;
        // SAFETY: the region is mapped uncached for the PD's life and holds
        // the device's registers at `bar_paddr` (system.xml, SeaBIOS).
        unsafe { RegionHal::map_mmio(bar.vaddr as usize, bar_paddr, bar.size as usize) }
            .map_err(|e| StartError::Platform(Error::Dma(e)))?;
        let ports = super::hw::pci_config().ok_or(StartError::Platform(Error::NoConfigPorts))?;
        let mut root = PciRoot::new(pci::PortCam(ports));
        let df = root
            .enumerate_bus(0)
            .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::MemoryBalloon))
            .map(|(df, _)| df)
            .ok_or(StartError::Platform(Error::NoPciDevice))?;
        let transport = PciTransport::new::<RegionHal, _>(&mut root, df)
            .map_err(|e| StartError::Platform(Error::Pci(e)))?;
        // On PCI the reporting queue's size confirms its index (DESIGN §3;
        // virtio-mmio says 1024 for every queue, so only here).
        VirtIOBalloon::with_config(transport, balloon::driver::Config::PCI)
            .map_err(StartError::Driver)
    }

    /// PCI configuration mechanism #1 through the granted ports.
    #[cfg(target_arch = "x86_64")]
    mod pci {
        use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

        const ADDRESS: u16 = 0xcf8;
        const DATA: u16 = 0xcfc;

        #[derive(Debug)]
        pub struct PortCam(pub pd::IoPort);

        fn address(df: DeviceFunction, offset: u8) -> u32 {
            1 << 31
                | u32::from(df.bus) << 16
                | u32::from(df.device) << 11
                | u32::from(df.function) << 8
                | u32::from(offset & 0xfc)
        }

        impl ConfigurationAccess for PortCam {
            fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
                // A refused access reads as no device (all ones), as a
                // master abort would.
                match self.0.write32(ADDRESS, address(df, offset)) {
                    Ok(()) => self.0.read32(DATA).unwrap_or(u32::MAX),
                    Err(_) => u32::MAX,
                }
            }

            fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
                if self.0.write32(ADDRESS, address(df, offset)).is_ok() {
                    let _ = self.0.write32(DATA, data);
                }
            }

            unsafe fn unsafe_clone(&self) -> Self {
                PortCam(self.0)
            }
        }
    }

    pub fn fail(e: &StartError) -> ! {
        // One line (`BALLOON|PANIC: ...`), then the PD faults and the
        // Microkit monitor reports it.
        panic!("cannot start: {e}")
    }
}

type Core = BalloonPd<'static, platform::H, platform::T>;

/// The handler: a reference to the core, which lives in a static (about
/// 22 KiB; `pd::microkit::run` keeps the handler on the PD's stack).
struct Balloon {
    core: &'static mut Core,
}

impl Handler for Balloon {
    type Error = core::convert::Infallible;

    fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
        let irq = channels.contains(irq::IRQ);
        let mut wake = self.core.run(irq);
        if irq {
            // After the device's ISR was read and acknowledged (edge IRQ).
            irq::IRQ.irq_ack();
        }
        if channels.contains(channel::TIMER) {
            let w = self.core.watchdog_expired();
            wake.memserver |= w.memserver;
            wake.arm_timer_ns = w.arm_timer_ns.or(wake.arm_timer_ns);
        }
        apply(wake);
        Ok(())
    }
}

fn apply(wake: Wake) {
    if let Some(ns) = wake.arm_timer_ns
        && let Err(e) = timer::client::set_timeout(channel::TIMER, ns)
    {
        // The driver goes on without its watchdog until the next arming.
        LOG.warn(format_args!("watchdog timeout not armed: {e}"));
    }
    if wake.memserver {
        channel::MEMSERVER.notify();
    }
}

/// The watchdog's period (see `balloon::shell`): 5 s, on the host platform
/// `BALLOON_WATCHDOG_MS` (0 turns it off).
fn watchdog_ns() -> Option<u64> {
    const DEFAULT_MS: u64 = 5_000;
    #[cfg(target_os = "linux")]
    if let Ok(text) = std::env::var("BALLOON_WATCHDOG_MS") {
        match text.trim().parse::<u64>() {
            Ok(ms) => return ms.checked_mul(1_000_000).filter(|&ns| ns > 0),
            Err(e) => {
                LOG.error(format_args!("BALLOON_WATCHDOG_MS={text:?}: {e}"));
                std::process::exit(2);
            }
        }
    }
    Some(DEFAULT_MS * 1_000_000)
}

/// The ballooned blocks' list, sized from the description (balloon/build.rs).
static mut BALLOONED: [u64; hw::BALLOONED_BLOCKS] = [0; hw::BALLOONED_BLOCKS];

fn start() -> Result<Core, StartError> {
    let to = region::TO_BALLOON.get();
    let from = region::FROM_BALLOON.get();
    // SAFETY: both ring regions are mapped read-write for the PD's life
    // (system.xml) and shared only with the memserver; pd-ring touches them
    // through atomics only.
    let to = unsafe { Consumer::from_raw(to.as_ptr(), to.size as usize, SLOT_SIZE) }
        .map_err(StartError::Ring)?;
    // SAFETY: as above.
    let from = unsafe { Producer::from_raw(from.as_ptr(), from.size as usize, SLOT_SIZE) }
        .map_err(StartError::Ring)?;
    let drv: VirtIOBalloon<platform::H, platform::T> = platform::driver()?;
    LOG.info(format_args!(
        "virtio-balloon up: features {:?}, queues {:?}",
        drv.features(),
        drv.queue_indices()
    ));
    let list_ptr = &raw mut BALLOONED;
    // SAFETY: `start` runs once, before any event; the list is used only
    // through this reference, which the core holds for the PD's lifetime.
    let ballooned: &'static mut [u64] = unsafe { &mut *list_ptr };
    let mut core = BalloonPd::new(drv, to, from, ballooned, log);
    // Only the clients' RAM may be reported or ballooned: every region
    // whose physical address the description gives this PD, but its own
    // DMA memory (the guests' RAM, and a VM's RAM for nested reports).
    let mut zones: heapless::Vec<(u64, u64), { paddr::ALL.len() }> = heapless::Vec::new();
    for p in paddr::ALL {
        if p.region != paddr::BALLOON_DMA_PADDR.region {
            // Cannot fail: as many places as addresses.
            let _ = zones.push((p.get() >> 12, p.size >> 12));
        }
    }
    core.set_zones(&zones);
    core.set_watchdog(watchdog_ns());
    Ok(core)
}

fn init() -> Balloon {
    static mut CORE: MaybeUninit<Core> = MaybeUninit::uninit();
    let core = match start() {
        Ok(c) => c,
        Err(e) => platform::fail(&e),
    };
    let p = &raw mut CORE;
    // SAFETY: `pd::main!` calls `init` once, before any event, so this is
    // the only reference to CORE that is ever made.
    let slot = unsafe { &mut *p };
    let core = slot.write(core);
    // Serve what the memserver produced before we started: it notifies only
    // when we asked (`consumer_signal`), and we asked only just now, in
    // `BalloonPd::new`, so a report pushed earlier would wait for an
    // unrelated event (issue 8: with a short reporting delay the boot-time
    // batches were never taken). `run` pops, asks again and re-checks.
    apply(core.run(false));
    Balloon { core }
}

pd::main!(init);
