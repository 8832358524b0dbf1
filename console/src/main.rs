//! The console PD: the UART's bytes to the operator's session, the
//! session's requests to the memserver's control port, the memserver's
//! answers back to the UART. Everything but the wiring lives in the
//! library (`console::session`, `console::uart`), tested on the host.
//!
//! Its IRQ is the UART's; its one channel is the memserver's (it notifies
//! after queueing a request, the memserver notifies after answering).
//! On the host platform there is no UART: the launcher is the console
//! there (a description with the memserver's `<irq>` port), and this PD
//! says so and stays idle.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod config {
    pd::config!("console");
}

use config::{channel, irq, region};
use console::session::{Port, Session};
use console::uart::Uart;
use memserver_api::{self as api, FromControl, SLOT_SIZE};
use pd::{ChannelSet, Handler, Region};
use pd_ring::{Consumer, Producer};

const LOG: pd::Log = pd::Log::new("CONSOLE");

/// The PL011's registers, mapped uncached (`<map mr="uart" cached="false">`).
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
struct Mmio(*mut u32);

/// The PL011's register page.
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
const PL011_PAGE: usize = 0x1000;

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
impl console::uart::Regs32 for Mmio {
    fn read(&mut self, offset: usize) -> u32 {
        if offset >= PL011_PAGE {
            return 0;
        }
        let reg = self.0.wrapping_byte_add(offset);
        // SAFETY: `reg` is inside the PL011's page, which `uart()` checked
        // is mapped (uncached) for the PD's life; device memory, read
        // volatile.
        unsafe { reg.read_volatile() }
    }
    fn write(&mut self, offset: usize, value: u32) {
        if offset >= PL011_PAGE {
            return;
        }
        let reg = self.0.wrapping_byte_add(offset);
        // SAFETY: as in `read`.
        unsafe { reg.write_volatile(value) }
    }
}

/// COM1's ports (`<ioport addr="0x3f8" size="8">`).
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
struct Ports(pd::IoPort);

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
impl console::uart::Regs8 for Ports {
    fn read(&mut self, offset: u16) -> u8 {
        // A refused access reads as 0: no data, transmitter busy.
        self.0.read8(self.0.addr as u16 + offset).unwrap_or(0)
    }
    fn write(&mut self, offset: u16, value: u8) {
        let _ = self.0.write8(self.0.addr as u16 + offset, value);
    }
}

/// No UART (the host platform): nothing is read, nothing is shown.
#[cfg(not(target_os = "none"))]
struct Detached;

#[cfg(not(target_os = "none"))]
impl Uart for Detached {
    fn init(&mut self) {}
    fn read(&mut self) -> Option<u8> {
        None
    }
    fn write(&mut self, _: u8) {}
    fn dropped(&self) -> u64 {
        0
    }
}

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
type Hw = console::uart::Pl011<Mmio>;
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
type Hw = console::uart::Ns16550<Ports>;
#[cfg(not(target_os = "none"))]
type Hw = Detached;

#[cfg(all(target_os = "none", target_arch = "aarch64"))]
fn uart() -> Result<Hw, &'static str> {
    let r = region::UART.get();
    if r.size < PL011_PAGE as u64 {
        return Err("the uart region is smaller than the PL011's page");
    }
    Ok(console::uart::Pl011::new(Mmio(r.as_ptr().cast())))
}

/// COM1.
#[cfg(all(target_os = "none", target_arch = "x86_64"))]
const COM1: u64 = 0x3f8;

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
fn uart() -> Result<Hw, &'static str> {
    config::ioport::ALL
        .iter()
        .find(|p| p.addr == COM1 && p.size >= 8)
        .map(|p| console::uart::Ns16550::new(Ports(*p)))
        .ok_or("no <ioport addr=\"0x3f8\" size=\"8\"> (COM1) in the system description")
}

#[cfg(not(target_os = "none"))]
fn uart() -> Result<Hw, &'static str> {
    Ok(Detached)
}

/// The session's outlets: the UART and the request ring.
struct Io<'a> {
    uart: &'a mut Hw,
    req: &'a mut Producer<'static>,
    queued: bool,
}

impl Port for Io<'_> {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.uart.write(b);
        }
    }
    fn request(&mut self, msg: &FromControl) -> bool {
        let mut buf = [0u8; SLOT_SIZE];
        // Every FromControl fits a slot (memserver-api tests it).
        let ok = api::encode(msg, &mut buf).is_ok_and(|bytes| self.req.push(bytes).is_ok());
        self.queued |= ok;
        ok
    }
}

struct ConsolePd {
    session: Session,
    uart: Result<Hw, &'static str>,
    req: Producer<'static>,
    resp: Consumer<'static>,
    /// Ring errors from the memserver's side (said once).
    ring_errors: u64,
    logged_dropped: u64,
}

impl ConsolePd {
    /// Every byte the UART holds, through the session.
    fn drain(&mut self) -> bool {
        let Ok(uart) = self.uart.as_mut() else {
            return false;
        };
        let mut io = Io {
            uart,
            req: &mut self.req,
            queued: false,
        };
        while let Some(b) = io.uart.read() {
            let outcome = self.session.byte(b, &mut io);
            if outcome != console::Outcome::Nothing {
                LOG.info(format_args!("{outcome}"));
            }
        }
        if io.uart.dropped() != self.logged_dropped {
            self.logged_dropped = io.uart.dropped();
            LOG.warn(format_args!(
                "{} bytes lost by the UART (line errors, or no room to send)",
                self.logged_dropped
            ));
        }
        io.queued
    }

    /// Every answer the memserver left, printed.
    fn answers(&mut self) {
        let Ok(uart) = self.uart.as_mut() else {
            return;
        };
        let mut io = Io {
            uart,
            req: &mut self.req,
            queued: false,
        };
        let mut buf = [0u8; SLOT_SIZE];
        loop {
            match self.resp.pop(&mut buf) {
                Ok(Some(n)) => match self.session.answer(&buf[..n], &mut io) {
                    Ok(a) => LOG.info(format_args!("memserver: {a}")),
                    Err(e) => LOG.warn(format_args!("the memserver's answer did not decode: {e}")),
                },
                Ok(None) => break,
                Err(e) => {
                    self.ring_errors += 1;
                    if self.ring_errors == 1 {
                        LOG.warn(format_args!("the answer ring is broken: {e}"));
                    }
                    break;
                }
            }
        }
    }
}

impl Handler for ConsolePd {
    type Error = core::convert::Infallible;

    fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
        let mut queued = false;
        if channels.contains(irq::IRQ) {
            queued |= self.drain();
            irq::IRQ.irq_ack();
            // A byte that came between the last look and the ack raised
            // no new edge on COM1's line: look once more.
            queued |= self.drain();
        }
        if channels.contains(channel::MEMSERVER) {
            self.answers();
        }
        if queued {
            channel::MEMSERVER.notify();
        }
        Ok(())
    }
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

fn init() -> ConsolePd {
    let mut uart = uart();
    match uart.as_mut() {
        Ok(u) => {
            u.init();
            #[cfg(target_os = "none")]
            LOG.info(format_args!(
                "ready: type 'tunable KEY=VALUE' or 'help' on this serial line"
            ));
            #[cfg(not(target_os = "none"))]
            LOG.info(format_args!(
                "no UART on the host platform: tunables change through the launcher's control port (tools tunable)"
            ));
        }
        Err(e) => LOG.error(format_args!("no UART: {e}")),
    }
    let mut pd = ConsolePd {
        session: Session::new(),
        uart,
        // SAFETY: the rings are mapped rw for the PD's lifetime (the description).
        req: unsafe { producer(region::CONTROL_REQ.get()) },
        // SAFETY: as above.
        resp: unsafe { consumer(region::CONTROL_RESP.get()) },
        ring_errors: 0,
        logged_dropped: 0,
    };
    // Bytes typed before the PD started wait in the FIFO.
    if pd.drain() {
        channel::MEMSERVER.notify();
    }
    pd
}

pd::main!(init);
