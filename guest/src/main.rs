//! The guest workload PD (`guest.elf`, runs as guest0 and guest1). It finds
//! its layout by its PD name, reads its parameters (host platform:
//! `GUEST0_PARAMS` or `GUEST_PARAMS`, see `guest::params`; Microkit and the
//! bare platform: those it was built with, else the defaults), and runs the
//! workload, advancing it on every notification.
#![cfg_attr(target_os = "none", no_std, no_main)]

// The generated layout table, shared with the hostile PD (src/bin/hostile.rs).
#[path = "pd_layout.rs"]
mod guests;

use core::cell::UnsafeCell;
use core::convert::Infallible;
use core::fmt;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};
use guest::params::Params;
use guest::ram::RamWindow;
use guest::workload::{Client, Host, Level, Next, Workload};
use guests::{LAYOUTS, Layout, RAM_PAGES};
use pd::{Channel, ChannelSet, Handler};

/// A static handed out once, so the PD's state lives in `.bss`/`.data`
/// rather than on the PD's small stack (Microkit's default is 8 KiB).
struct Once<T> {
    value: UnsafeCell<MaybeUninit<T>>,
    taken: AtomicBool,
}

// SAFETY: the value is reachable only through the one `&'static mut`
// handed out by `put`/`take` (guarded by `taken`).
unsafe impl<T> Sync for Once<T> {}

impl<T> Once<T> {
    const fn new() -> Self {
        Once {
            value: UnsafeCell::new(MaybeUninit::uninit()),
            taken: AtomicBool::new(false),
        }
    }

    // The one `&mut` comes from a shared static by design; `taken` makes it
    // unique (the pattern of `static_cell`).
    #[allow(clippy::mut_from_ref)]
    fn put(&'static self, v: T) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: first and only access (`taken` was false), so no other
        // reference to the cell exists.
        let slot = unsafe { &mut *self.value.get() };
        Some(slot.write(v))
    }
}

/// One byte per page of RAM: the owned-pages map (zeroed, in `.bss`).
struct Map(UnsafeCell<[u8; RAM_PAGES]>, AtomicBool);

// SAFETY: as for `Once`: one `&'static mut`, guarded by the flag.
unsafe impl Sync for Map {}

static MAP: Map = Map(UnsafeCell::new([0; RAM_PAGES]), AtomicBool::new(false));

fn owned_map() -> Option<&'static mut [u8]> {
    if MAP.1.swap(true, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: first and only access, see `Map`.
    Some(unsafe { &mut *MAP.0.get() })
}

/// The PD's side of the workload: time from the timer PD, logs on the
/// debug console with the PD's prefix.
struct PdHost {
    timer: Channel,
    log: pd::Log,
    last_now: u64,
    timer_errors: u64,
}

impl Host for PdHost {
    fn now_ns(&mut self) -> u64 {
        match timer::client::now(self.timer) {
            Ok(t) => self.last_now = self.last_now.max(t),
            Err(e) => {
                self.timer_errors += 1;
                if self.timer_errors == 1 {
                    self.log.error(format_args!("timer GET_TIME failed: {e}"));
                }
            }
        }
        self.last_now
    }

    fn log(&mut self, level: Level, args: fmt::Arguments<'_>) {
        match level {
            Level::Info => self.log.info(args),
            Level::Warn => self.log.warn(args),
            Level::Error => self.log.error(args),
        }
    }
}

struct Guest {
    workload: Workload<'static>,
    client: Client<'static, Channel>,
    ram: RamWindow,
    host: PdHost,
    timer: Channel,
    memserver: Channel,
}

impl Guest {
    fn advance(&mut self) {
        if let Next::Wait {
            timer_ns: Some(ns), ..
        } = self
            .workload
            .advance(&mut self.client, &self.ram, &mut self.host)
            && let Err(e) = timer::client::set_timeout(self.timer, ns)
        {
            self.host.log.error(format_args!(
                "timer SET_TIMEOUT failed: {e}; the workload stalls"
            ));
        }
    }
}

static GUEST: Once<Guest> = Once::new();

/// The handler: the guest, or nothing if it could not start (the reason
/// was logged; the PD then ignores events).
struct GuestPd(Option<&'static mut Guest>);

impl Handler for GuestPd {
    type Error = Infallible;

    fn notified(&mut self, channels: ChannelSet) -> Result<(), Infallible> {
        if let Some(g) = self.0.as_deref_mut()
            && (channels.contains(g.memserver) || channels.contains(g.timer))
        {
            // Rings and the timer's clock are the state; which channel
            // fired does not matter.
            g.advance();
        }
        Ok(())
    }
}

/// The parameter text: the launcher's environment on the host platform.
#[cfg(not(target_os = "none"))]
fn params_text(layout: &Layout) -> Option<(&'static str, std::string::String)> {
    let own: &'static str =
        std::boxed::Box::leak(std::format!("{}_PARAMS", layout.log).into_boxed_str());
    std::env::var(own).ok().map(|v| (own, v)).or_else(|| {
        std::env::var("GUEST_PARAMS")
            .ok()
            .map(|v| ("GUEST_PARAMS", v))
    })
}

/// On Microkit and the bare platform a PD has no environment: the text
/// the PD was built with, `GUEST_PARAMS` in cargo's environment (`tools
/// image --guest-params`, which checks it first; every guest of the image
/// runs it), or none (the defaults).
#[cfg(target_os = "none")]
fn params_text(_: &Layout) -> Option<(&'static str, &'static str)> {
    option_env!("GUEST_PARAMS").map(|t| ("built-in GUEST_PARAMS", t))
}

fn start(layout: &Layout, log: pd::Log) -> Result<&'static mut Guest, ()> {
    let text = params_text(layout);
    let params = match &text {
        None => Params::default_for(layout.ram_bytes()),
        Some((var, t)) => {
            Params::parse(t).map_err(|e| log.error(format_args!("bad {var}=\"{t}\": {e}")))?
        }
    };
    let ram = layout.ram.get();
    // The guest's own `ram_paddr` setvar: `ram.paddr` comes from the
    // region's `phys_addr` in the one shared module, which on Microkit is
    // guest0's region for every guest running guest.elf.
    let paddr = layout.ram_paddr.get();
    params
        .check_fits(layout.ram_bytes())
        .map_err(|e| log.error(format_args!("bad parameters {params}: {e}")))?;
    // SAFETY: `ram` is this PD's RAM region, mapped read-write for the life
    // of the PD at `ram`'s address with this guest's own size (the
    // description maps `ram_size` bytes there), and accessed only through
    // this window.
    let window = unsafe { RamWindow::new(ram.as_ptr(), paddr, layout.ram_bytes()) }
        .map_err(|e| log.error(format_args!("RAM region: {e}")))?;
    let (req, resp) = (layout.req.get(), layout.resp.get());
    // SAFETY: `req` and `resp` are this PD's ring regions shared with the
    // memserver only, mapped for the life of the PD, used only by the client.
    let client = unsafe {
        Client::from_regions(
            (req.as_ptr(), req.size as usize),
            (resp.as_ptr(), resp.size as usize),
            layout.memserver,
        )
    }
    .map_err(|e| log.error(format_args!("rings: {e}")))?;
    let map = owned_map().ok_or(())?;
    let pages = window.pages().min(map.len() as u64);
    let workload = Workload::new(params, map, pages);
    let host = PdHost {
        timer: layout.timer,
        log,
        last_now: 0,
        timer_errors: 0,
    };
    let g = Guest {
        workload,
        client,
        ram: window,
        host,
        timer: layout.timer,
        memserver: layout.memserver,
    };
    GUEST.put(g).ok_or(())
}

fn init() -> GuestPd {
    let name = pd::pd_name();
    let Some(layout) = LAYOUTS.iter().find(|l| l.name == name) else {
        pd::debug_println!("{name}|ERROR: no guest layout for PD '{name}' in system.xml");
        return GuestPd(None);
    };
    let log = pd::Log::new(layout.log);
    match start(layout, log) {
        Ok(g) => {
            g.advance();
            GuestPd(Some(g))
        }
        Err(()) => {
            log.error(format_args!(
                "phase=failed reason=\"could not start\" t_ns=0"
            ));
            GuestPd(None)
        }
    }
}

pd::main!(init);
