//! The bare backend (feature `bare` on `target_os = "none"`, DESIGN §5.3):
//! every PD of a system is a module of one image that runs without seL4, in
//! one physical address space, on one core.
//!
//! - Each PD's `main.rs` is compiled unchanged; [`crate::main!`] defines
//!   `__pd_bare_init` instead of an entry point, and the image crate (`bare/`)
//!   hands each PD to [`run`] as a [`PdSlot`].
//! - Topology comes from `system.xml` at build time as a [`System`]: channel
//!   ends, maps (each with the address the image gave its region), IRQs.
//! - [`Channel::notify`](crate::Channel::notify) sets a bit in the peer's
//!   pending set; the cooperative loop runs the highest-priority PD with
//!   pending bits (Microkit's scheduling order) until nothing is pending, then
//!   waits in the [`Platform`] for an interrupt.
//! - [`Channel::pp_call`](crate::Channel::pp_call) calls the callee's
//!   `protected()` directly; message registers are one static array (the
//!   caller's and callee's views of seL4's IPC buffer copy are the same here).
//! - Regions are identity mapped: a region's address is its physical address,
//!   so `RegionDecl::get()` answers `vaddr == paddr` and `PhysAddr::get()`
//!   the region's address, looked up by the *running* PD and the map's
//!   vaddr (a binary shared by two PDs, like `guest.elf`, gets each PD's own
//!   region, as under Microkit).
//! - IRQs: the platform reports which interrupt lines fired; each is a
//!   notification on the owning PD's IRQ channel and stays masked until the
//!   PD acks it (seL4 semantics).

use crate::channel::{Channel, ChannelSet, MSG_MAX_LENGTH, MessageInfo};
use crate::defer::{DeferredAction, DeferredActionInterface};
use crate::{Handler, PhysAddr, Region, RegionDecl};
use core::cell::{Cell, UnsafeCell};
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// At most this many PDs in one image (Microkit's limit is 63).
pub const MAX_PDS: usize = 63;

/// One channel end of a PD, resolved to the PD and id at the other end.
#[derive(Debug, Clone, Copy)]
pub struct End {
    /// This PD's id for the channel.
    pub id: u8,
    /// Index of the peer in [`System::pds`].
    pub peer: u8,
    /// The peer's id for the channel.
    pub peer_id: u8,
    /// This end may notify the peer.
    pub notify: bool,
    /// This end may call the peer (`pp="true"` on this end).
    pub pp: bool,
}

/// A `<map>` of a PD: where the PD expects it and where the image put it.
#[derive(Debug, Clone, Copy)]
pub struct Map {
    /// The `vaddr` in `system.xml` (what the PD's generated config says).
    pub vaddr: u64,
    pub size: u64,
    /// The region's (physical = virtual) address in the image.
    pub addr: u64,
}

/// An `<irq>` of a PD: the channel id and the platform's interrupt number.
#[derive(Debug, Clone, Copy)]
pub struct Irq {
    pub id: u8,
    pub irq: u32,
    /// Level-triggered (else edge).
    pub level: bool,
}

/// A PD as `system.xml` describes it.
#[derive(Debug, Clone, Copy)]
pub struct PdDesc {
    pub name: &'static str,
    pub priority: u8,
    pub ends: &'static [End],
    pub maps: &'static [Map],
    pub irqs: &'static [Irq],
    /// Ids of the `<ioport>` ranges granted to the PD (x86_64).
    pub ioports: &'static [u8],
}

/// A memory region and its address in the image.
#[derive(Debug, Clone, Copy)]
pub struct RegionAddr {
    pub name: &'static str,
    pub addr: u64,
    pub size: u64,
}

/// The whole system, generated from `system.xml` by the image's build script.
#[derive(Debug, Clone, Copy)]
pub struct System {
    pub pds: &'static [PdDesc],
    pub regions: &'static [RegionAddr],
}

/// What the boot stub of one architecture provides.
pub trait Platform: Sync {
    /// Write to the console (polled UART).
    fn write(&self, bytes: &[u8]);
    /// Route interrupt `irq` to this core with its trigger mode, masked.
    fn configure(&self, irq: u32, level: bool);
    /// Unmask interrupt `irq` (it was masked when it was reported).
    fn unmask(&self, irq: u32);
    /// Report each interrupt that fired (and mask it) through `fired`;
    /// with `block`, first wait until at least one may have (WFI / HLT).
    fn poll(&self, block: bool, fired: &mut dyn FnMut(u32));
    /// Stop the machine (QEMU exits where the platform can make it).
    fn halt(&self) -> !;
}

/// A PD of the image: its init function until [`run`] starts it, then its
/// handler.
#[derive(Debug)]
pub struct PdSlot<F, H> {
    state: SlotState<F, H>,
}

#[derive(Debug)]
enum SlotState<F, H> {
    Init(F),
    Starting,
    Running(H),
}

impl<F: FnOnce() -> H, H: Handler> PdSlot<F, H> {
    /// A PD to be started by `init` (its module's `__pd_bare_init`).
    pub fn new(init: F) -> Self {
        PdSlot {
            state: SlotState::Init(init),
        }
    }
}

/// A PD slot with its handler type erased.
pub trait Pd {
    #[doc(hidden)]
    fn start(&mut self);
    #[doc(hidden)]
    fn notified(&mut self, channels: ChannelSet);
    #[doc(hidden)]
    fn protected(&mut self, channel: Channel, info: MessageInfo) -> Option<MessageInfo>;
    #[doc(hidden)]
    fn take_deferred_action(&mut self) -> Option<DeferredAction>;
}

impl<F: FnOnce() -> H, H: Handler> Pd for PdSlot<F, H> {
    fn start(&mut self) {
        if let SlotState::Init(f) = core::mem::replace(&mut self.state, SlotState::Starting) {
            self.state = SlotState::Running(f());
        }
    }

    fn notified(&mut self, channels: ChannelSet) {
        if let SlotState::Running(h) = &mut self.state
            && let Err(e) = h.notified(channels)
        {
            fatal(&e)
        }
    }

    fn protected(&mut self, channel: Channel, info: MessageInfo) -> Option<MessageInfo> {
        match &mut self.state {
            SlotState::Running(h) => match h.protected(channel, info) {
                Ok(r) => Some(r),
                Err(e) => fatal(&e),
            },
            _ => None,
        }
    }

    fn take_deferred_action(&mut self) -> Option<DeferredAction> {
        match &mut self.state {
            SlotState::Running(h) => h.take_deferred_action(),
            _ => None,
        }
    }
}

/// State shared by the backend's functions. One core, no interrupt
/// handlers touch it, and every PD runs to completion: plain cells suffice.
struct Kernel {
    system: Cell<Option<&'static System>>,
    platform: Cell<Option<&'static dyn Platform>>,
    /// The PDs, as handed to [`run`] (valid while `run` runs: it never returns).
    pds: Cell<Option<*mut [&'static mut dyn Pd]>>,
    /// The PD whose code runs now.
    current: Cell<usize>,
    /// PDs inside a handler call (a PPC callee already on the stack cannot be
    /// entered again).
    busy: Cell<u64>,
    mrs: UnsafeCell<[u64; MSG_MAX_LENGTH]>,
}

// SAFETY: the image runs on one core with interrupts masked (the platform
// polls for them), so nothing ever accesses `Kernel` concurrently.
unsafe impl Sync for Kernel {}

static KERNEL: Kernel = Kernel {
    system: Cell::new(None),
    platform: Cell::new(None),
    pds: Cell::new(None),
    current: Cell::new(0),
    busy: Cell::new(0),
    mrs: UnsafeCell::new([0; MSG_MAX_LENGTH]),
};

/// Pending notification bits per PD (bit = channel id, as a badge).
static PENDING: [AtomicU64; MAX_PDS] = [const { AtomicU64::new(0) }; MAX_PDS];

fn system() -> Option<&'static System> {
    KERNEL.system.get()
}

fn current_desc() -> Option<&'static PdDesc> {
    system().and_then(|s| s.pds.get(KERNEL.current.get()))
}

/// Install the console before anything prints (the boot stub's first call).
pub fn set_platform(p: &'static dyn Platform) {
    KERNEL.platform.set(Some(p));
}

/// Run the image: start every PD in priority order (highest first, so a
/// PPC callee, which Microkit requires to outrank its caller, is ready when
/// an init calls it), then dispatch notifications forever.
///
/// A PD that panics or whose handler fails is stopped, and the others go on
/// (a faulting PD under Microkit): its frames are dropped by resuming the
/// scheduler on the stack pointer `run` had, below the caller's frame that
/// holds the PD slots. PDs in the middle of a PPC to it are stopped too (on
/// seL4 they would wait for the reply for ever).
pub fn run(system: &'static System, platform: &'static dyn Platform, pds: &mut [&mut dyn Pd]) -> ! {
    set_platform(platform);
    KERNEL.system.set(Some(system));
    if pds.len() != system.pds.len() || pds.len() > MAX_PDS {
        put_str("BARE|ERROR: the image's PDs do not match its system description\n");
        platform.halt();
    }
    // The slice lives in the caller's frame, and `run` never returns: the
    // pointer stays valid for every later access (all through it).
    #[allow(
        clippy::unnecessary_cast,
        reason = "the cast erases the borrow's lifetime, which clippy does not see"
    )]
    let ptr = pds as *mut [&mut dyn Pd] as *mut [&'static mut dyn Pd];
    KERNEL.pds.set(Some(ptr));
    resume::start()
}

/// The scheduler: starts the PDs not started yet, then runs the loop. Entered
/// from `run` and again after each fault, on the same stack pointer.
extern "C" fn schedule() -> ! {
    let (Some(system), Some(platform)) = (system(), KERNEL.platform.get()) else {
        halt()
    };
    let n = system.pds.len();
    let mut order = [0usize; MAX_PDS];
    for (i, o) in order.iter_mut().enumerate().take(n) {
        *o = i;
    }
    order[..n].sort_unstable_by_key(|&i| (core::cmp::Reverse(system.pds[i].priority), i));
    for &i in &order[..n] {
        let bit = 1u64 << i;
        if (STARTED.load(Ordering::Relaxed) | FAULTED.load(Ordering::Relaxed)) & bit == 0 {
            STARTED.fetch_or(bit, Ordering::Relaxed);
            enter(i, |pd| pd.start());
        }
    }
    if !STARTED_ALL.swap(true, Ordering::Relaxed) {
        // seL4 issue 1536 / libmicrokit: every IRQ starts unmasked.
        for pd in system.pds {
            for irq in pd.irqs {
                platform.configure(irq.irq, irq.level);
                platform.unmask(irq.irq);
            }
        }
        put_str("BARE|INFO: all PDs started\n");
    }
    loop {
        let mut fired = |irq: u32| raise_irq(system, irq);
        platform.poll(false, &mut fired);
        let faulted = FAULTED.load(Ordering::Relaxed);
        let next = order[..n]
            .iter()
            .copied()
            .filter(|&i| faulted & (1 << i) == 0)
            .find(|&i| PENDING[i].load(Ordering::Relaxed) != 0);
        match next {
            Some(i) => {
                let bits = PENDING[i].swap(0, Ordering::Relaxed);
                enter(i, |pd| pd.notified(ChannelSet::from_bits(bits)));
            }
            None => platform.poll(true, &mut fired),
        }
    }
}

/// PDs whose init has been called, and PDs stopped by a fault.
static STARTED: AtomicU64 = AtomicU64::new(0);
static FAULTED: AtomicU64 = AtomicU64::new(0);
static STARTED_ALL: AtomicBool = AtomicBool::new(false);
/// The stack pointer the scheduler runs on (0 until `run`).
static RESUME_SP: AtomicUsize = AtomicUsize::new(0);

/// Stop the PDs in the current call chain and resume the scheduler; before
/// `run` (or outside any PD), halt.
fn fault() -> ! {
    let busy = KERNEL.busy.replace(0);
    let sp = RESUME_SP.load(Ordering::Relaxed);
    if busy == 0 || sp == 0 {
        halt()
    }
    // The stopped PDs' deferred actions stay in their handlers, which never
    // run again: they are dropped, as a faulted PD's are on seL4.
    FAULTED.fetch_or(busy, Ordering::Relaxed);
    if let Some(system) = system() {
        for (i, pd) in system.pds.iter().enumerate() {
            if busy & (1 << i) != 0 {
                crate::debug_println!(
                    "BARE|ERROR: PD '{}' faulted: stopped, the others go on",
                    pd.name
                );
            }
        }
    }
    // SAFETY: `sp` is the stack pointer `run` handed the scheduler, below
    // every frame still in use (the PD slots are in `run`'s caller); all
    // frames under it belong to the stopped PDs and are abandoned.
    unsafe { resume::at(sp) }
}

mod resume {
    use super::{RESUME_SP, schedule};
    use core::sync::atomic::Ordering;

    /// Record the stack pointer and enter the scheduler.
    pub(super) fn start() -> ! {
        let sp: usize;
        // SAFETY: reads the stack pointer; without `nostack` the compiler
        // keeps it aligned for a call here.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            core::arch::asm!("mov {}, sp", out(reg) sp)
        };
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            core::arch::asm!("mov {}, rsp", out(reg) sp)
        };
        // Leave room for this frame's own use of the area above `sp`.
        let sp = (sp - 256) & !0xf;
        RESUME_SP.store(sp, Ordering::Relaxed);
        // SAFETY: `sp` is below this frame, inside the boot stack.
        unsafe { at(sp) }
    }

    /// # Safety
    /// `sp` must be 16-byte aligned, inside the stack, below every frame
    /// still in use.
    pub(super) unsafe fn at(sp: usize) -> ! {
        // SAFETY: the caller guarantees `sp`; `schedule` never returns.
        #[cfg(target_arch = "aarch64")]
        unsafe {
            core::arch::asm!("mov sp, {sp}", "bl {f}", sp = in(reg) sp, f = sym schedule, options(noreturn))
        }
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            core::arch::asm!("mov rsp, {sp}", "call {f}", sp = in(reg) sp, f = sym schedule, options(noreturn))
        }
    }
}

fn raise_irq(system: &System, irq: u32) {
    for (i, pd) in system.pds.iter().enumerate() {
        for x in pd.irqs.iter().filter(|x| x.irq == irq) {
            PENDING[i].fetch_or(1 << x.id, Ordering::Relaxed);
        }
    }
}

/// Run `f` on PD `i` as the current PD, then perform its deferred action.
fn enter<R>(i: usize, f: impl FnOnce(&mut dyn Pd) -> R) -> Option<R> {
    let ptr = KERNEL.pds.get()?;
    let bit = 1u64 << i;
    if i >= ptr.len() || (KERNEL.busy.get() | FAULTED.load(Ordering::Relaxed)) & bit != 0 {
        return None;
    }
    let prev = KERNEL.current.replace(i);
    KERNEL.busy.set(KERNEL.busy.get() | bit);
    // SAFETY: `ptr` is the slice `run` holds for ever and `i < len`; the
    // `busy` bit makes this the only live reference to PD `i` (references
    // to other PDs on the stack are to distinct elements).
    let slot = unsafe { ptr.cast::<&'static mut dyn Pd>().add(i) };
    // SAFETY: as above: a valid element, referenced only here.
    let pd: &mut dyn Pd = unsafe { &mut **slot };
    // Each PD keeps its own deferred action (a caller's, during a PPC, stays
    // in the caller's handler); the callee's goes out when it returns.
    let r = Some(f(&mut *pd));
    if let Some(a) = pd.take_deferred_action() {
        perform_deferred(a);
    }
    KERNEL.busy.set(KERNEL.busy.get() & !bit);
    KERNEL.current.set(prev);
    r
}

fn perform_deferred(a: DeferredAction) {
    let id = a.channel().index() & 0xff;
    match a.interface() {
        DeferredActionInterface::Notify => sys::notify(id),
        DeferredActionInterface::IrqAck => sys::irq_ack(id),
    }
}

fn put_str(s: &str) {
    sys::put_bytes(s.as_bytes())
}

fn invalid(what: &str, ch: usize) {
    crate::debug_println!(
        "{}|ERROR: {what}: invalid channel given '{ch}'",
        sys::pd_name()
    );
}

fn fatal(e: &dyn fmt::Display) -> ! {
    crate::debug_println!("{}|ERROR: handler failed: {e}", sys::pd_name());
    fault()
}

fn halt() -> ! {
    match KERNEL.platform.get() {
        Some(p) => p.halt(),
        None => loop {
            core::hint::spin_loop()
        },
    }
}

pub(crate) mod sys {
    use super::*;

    /// QEMU backs guest RAM on first write, but what else writes the
    /// regions before a PD runs (the DTB QEMU loads, SeaBIOS's tables on
    /// x86_64) has not been checked page by page: assume touched.
    pub(crate) const REGIONS_UNTOUCHED_AT_BOOT: bool = false;

    pub(crate) fn pd_name() -> &'static str {
        current_desc().map_or("bare", |d| d.name)
    }

    fn end(ch: usize) -> Option<&'static End> {
        current_desc()?
            .ends
            .iter()
            .find(|e| usize::from(e.id) == ch)
    }

    pub(crate) fn notify(ch: usize) {
        match end(ch) {
            Some(e) if e.notify => {
                if let Some(p) = PENDING.get(usize::from(e.peer)) {
                    p.fetch_or(1 << e.peer_id, Ordering::Relaxed);
                }
            }
            _ => invalid("notify", ch),
        }
    }

    pub(crate) fn irq_ack(ch: usize) {
        let irq = current_desc().and_then(|d| d.irqs.iter().find(|x| usize::from(x.id) == ch));
        match (irq, KERNEL.platform.get()) {
            (Some(x), Some(p)) => p.unmask(x.irq),
            _ => invalid("irq_ack", ch),
        }
    }

    pub(crate) fn pp_call(ch: usize, info: MessageInfo) -> MessageInfo {
        let Some(e) = end(ch).filter(|e| e.pp) else {
            invalid("pp_call", ch);
            return MessageInfo::new(0, 0);
        };
        let callee_ch = Channel::new(usize::from(e.peer_id));
        match enter(usize::from(e.peer), |pd| pd.protected(callee_ch, info)) {
            Some(Some(reply)) => reply,
            _ => {
                crate::debug_println!(
                    "{}|ERROR: pp_call on '{ch}': the callee is not running or already in a call",
                    pd_name()
                );
                MessageInfo::new(crate::PPC_UNSUPPORTED_LABEL, 0)
            }
        }
    }

    pub(crate) fn get_mr(i: usize) -> u64 {
        // SAFETY: one core, no concurrent access (see `Kernel`); `i` is
        // bounds-checked by `get`.
        unsafe { (*KERNEL.mrs.get()).get(i).copied().unwrap_or(0) }
    }

    pub(crate) fn set_mr(i: usize, v: u64) {
        // SAFETY: as in `get_mr`.
        if let Some(m) = unsafe { (*KERNEL.mrs.get()).get_mut(i) } {
            *m = v;
        }
    }

    pub(crate) fn region(decl: &RegionDecl, _paddr: Option<u64>) -> Region {
        let map = current_desc().and_then(|d| {
            d.maps
                .iter()
                .find(|m| m.vaddr == decl.vaddr && m.size == decl.size)
        });
        match map {
            Some(m) => Region {
                vaddr: m.addr,
                size: m.size,
                paddr: Some(m.addr),
            },
            None => {
                crate::debug_println!(
                    "{}|ERROR: region '{}' at {:#x} is not mapped by this PD in the image",
                    pd_name(),
                    decl.name,
                    decl.vaddr
                );
                halt()
            }
        }
    }

    pub(crate) fn paddr(p: &PhysAddr) -> u64 {
        match system().and_then(|s| s.regions.iter().find(|r| r.name == p.region)) {
            Some(r) => r.addr,
            None => {
                crate::debug_println!(
                    "{}|ERROR: no memory_region '{}' in the image",
                    pd_name(),
                    p.region
                );
                halt()
            }
        }
    }

    pub(crate) fn put_bytes(bytes: &[u8]) {
        if let Some(p) = KERNEL.platform.get() {
            p.write(bytes)
        }
    }

    pub(crate) fn print_fmt(args: fmt::Arguments<'_>) {
        struct Console;
        impl fmt::Write for Console {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                put_bytes(s.as_bytes());
                Ok(())
            }
        }
        let _ = fmt::Write::write_fmt(&mut Console, args);
    }
}

/// Port I/O of the running PD (x86_64): the range check against the
/// `<ioport>` was made by the caller; here only the grant is checked, then
/// the instruction runs (the image runs in ring 0).
#[cfg(target_arch = "x86_64")]
pub(crate) fn port_io(
    id: u64,
    op: crate::channel::PortOp,
    port: u16,
    value: u32,
) -> Result<u32, crate::channel::IoPortError> {
    use crate::channel::PortOp;
    use core::arch::asm;
    let granted = current_desc().is_some_and(|d| d.ioports.iter().any(|&i| u64::from(i) == id));
    if !granted {
        return Err(crate::channel::IoPortError::NotGranted);
    }
    // SAFETY (every arm): port I/O granted to this PD by system.xml; it
    // touches no memory.
    let v = match op {
        PortOp::In8 => {
            let b: u8;
            // SAFETY: see above.
            unsafe { asm!("in al, dx", in("dx") port, out("al") b, options(nomem, nostack)) };
            u32::from(b)
        }
        PortOp::In16 => {
            let w: u16;
            // SAFETY: see above.
            unsafe { asm!("in ax, dx", in("dx") port, out("ax") w, options(nomem, nostack)) };
            u32::from(w)
        }
        PortOp::In32 => {
            let d: u32;
            // SAFETY: see above.
            unsafe { asm!("in eax, dx", in("dx") port, out("eax") d, options(nomem, nostack)) };
            d
        }
        PortOp::Out8 => {
            // SAFETY: see above.
            unsafe {
                asm!("out dx, al", in("dx") port, in("al") value as u8, options(nomem, nostack))
            };
            0
        }
        PortOp::Out16 => {
            // SAFETY: see above.
            unsafe {
                asm!("out dx, ax", in("dx") port, in("ax") value as u16, options(nomem, nostack))
            };
            0
        }
        PortOp::Out32 => {
            // SAFETY: see above.
            unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack)) };
            0
        }
    };
    Ok(v)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::debug_println!("{}|PANIC: {info}", sys::pd_name());
    fault()
}
