//! The Microkit backend: Microkit 2.3.0 on seL4 16.0.0 (MCS), aarch64 and
//! x86_64. Every number here is from DESIGN §4 (verified by booting) and
//! libmicrokit (`microkit.h`, `main.c`).

use crate::channel::{Channel, ChannelSet, MAX_CHANNELS, MSG_MAX_LENGTH, MessageInfo};
use crate::defer::{DeferredAction, DeferredActionInterface};
use crate::{Handler, PhysAddr, Region, RegionDecl};
use core::cell::UnsafeCell;
use core::fmt;

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
use aarch64 as arch;
#[cfg(target_arch = "aarch64")]
pub(crate) mod vcpu;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as arch;

// seL4 syscall numbers (both arches).
const SYS_CALL: i64 = -1;
const SYS_REPLY_RECV: i64 = -2;
const SYS_NB_SEND_RECV: i64 = -3;
const SYS_SEND: i64 = -5;
const SYS_RECV: i64 = -7;
const SYS_YIELD: i64 = -11;
const SYS_DEBUG_PUT_CHAR: i64 = -12;

// The PD's capability slots.
const INPUT_CAP: u64 = 1;
const REPLY_CAP: u64 = 4;
const MONITOR_EP: u64 = 5;
const BASE_OUTPUT_NOTIFICATION_CAP: u64 = 10;
const BASE_ENDPOINT_CAP: u64 = 74;
const BASE_IRQ_CAP: u64 = 138;
#[cfg(target_arch = "x86_64")]
const BASE_IOPORT_CAP: u64 = 394;

/// seL4 invocation labels: they differ between kernel configurations, so
/// pd/build.rs generates them from the SDK's `invocations_all.json` for the
/// board and config being built.
pub(crate) mod label {
    include!(concat!(env!("OUT_DIR"), "/sel4_labels.rs"));
}

/// `IRQAckIRQ`.
const IRQ_ACK_LABEL: u64 = label::IRQACKIRQ;

/// `X86IOPortIn8`; In16, In32, Out8, Out16, Out32 follow.
#[cfg(target_arch = "x86_64")]
const IOPORT_IN8_LABEL: u64 = label::X86IOPORTIN8;

/// The IPC buffer: at `seL4_UserVSpaceTop & ~0xfff`.
#[cfg(target_arch = "aarch64")]
const IPC_BUFFER: usize = 0xFF_FFFF_F000;
#[cfg(target_arch = "x86_64")]
const IPC_BUFFER: usize = 0x7FFF_FFFF_E000;

/// A value the Microkit tool writes in the image (kept in `.data`).
#[repr(transparent)]
struct Patched<T>(UnsafeCell<T>);

// SAFETY: written in the ELF file by the Microkit tool before boot, only read
// at run time, and a PD is single-threaded.
unsafe impl<T> Sync for Patched<T> {}

impl<T: Copy> Patched<T> {
    fn get(&self) -> T {
        // SAFETY: our own aligned static, never written at run time; volatile
        // so the initializer is not constant-folded.
        unsafe { self.0.get().read_volatile() }
    }
}

// The symbols the Microkit tool patches. `.data`, not `.bss`: the tool writes
// file bytes, so each must lie in a LOAD segment's file image (DESIGN §4).
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
#[used]
static microkit_name: Patched<[u8; 64]> = Patched(UnsafeCell::new([0; 64]));
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
#[used]
static microkit_passive: Patched<u8> = Patched(UnsafeCell::new(0));
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
#[used]
static microkit_irqs: Patched<u64> = Patched(UnsafeCell::new(0));
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
#[used]
static microkit_notifications: Patched<u64> = Patched(UnsafeCell::new(0));
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
#[used]
static microkit_pps: Patched<u64> = Patched(UnsafeCell::new(0));
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
#[used]
static microkit_ioports: Patched<u64> = Patched(UnsafeCell::new(0));

// The PD's log page (`tools image` maps one into every PD at a fixed
// physical address and sets these with `setvar_vaddr` / `setvar_size`; 0
// when it does not). The host reads it through QMP `pmemsave`, so a release
// kernel, which has no console, is judged by the same lines as a debug one.
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
#[used]
static pd_log_vaddr: Patched<u64> = Patched(UnsafeCell::new(0));
#[allow(non_upper_case_globals)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data")]
#[used]
static pd_log_size: Patched<u64> = Patched(UnsafeCell::new(0));

/// Append `bytes` to the log page, if the PD has one (`crate::log_page`
/// says the layout).
fn log_page_write(bytes: &[u8]) {
    let (base, size) = (pd_log_vaddr.get() as usize, pd_log_size.get() as usize);
    let Some(cap) = size.checked_sub(crate::log_page::HEADER) else {
        return;
    };
    if base == 0 || cap == 0 {
        return;
    }
    // The Microkit tool maps `size` bytes read-write at `base` in this PD
    // alone (the host reads them only): the header's two aligned words, then
    // `cap` data bytes. Every access below is inside that mapping.
    let magic = base as *mut u64;
    let count = magic.wrapping_add(1);
    let data = (base + crate::log_page::HEADER) as *mut u8;
    // SAFETY: header word 0, mapped and aligned (above).
    if unsafe { magic.read_volatile() } != crate::log_page::MAGIC {
        // SAFETY: header word 0.
        unsafe { magic.write_volatile(crate::log_page::MAGIC) };
        // SAFETY: header word 1, mapped and aligned (above).
        unsafe { count.write_volatile(0) };
    }
    // SAFETY: header word 1.
    let mut written = unsafe { count.read_volatile() };
    for &b in bytes {
        let at = data.wrapping_add(written as usize % cap);
        // SAFETY: data byte `written % cap` < `cap`, so `at` < `base + size`.
        unsafe { at.write_volatile(b) };
        written += 1;
    }
    // The bytes before the count that makes them visible.
    core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    // SAFETY: header word 1.
    unsafe { count.write_volatile(written) };
}

fn ipc_mr(i: usize) -> *mut u64 {
    // seL4_IPCBuffer: tag word, then msg[seL4_MsgMaxLength].
    (IPC_BUFFER + 8 * (1 + i)) as *mut u64
}

/// Syscall with message registers: MR0-3 travel in registers, so load them
/// from the IPC buffer before and store them back after (as libsel4 does).
fn syscall(sys: i64, x0: u64, info: u64, reply: u64, dest: u64) -> (u64, u64) {
    let mut mrs = [0u64; 4];
    for (i, mr) in mrs.iter_mut().enumerate() {
        // SAFETY: the IPC buffer is mapped by the Microkit tool at IPC_BUFFER
        // in every PD; i < 4 stays within it.
        *mr = unsafe { ipc_mr(i).read_volatile() };
    }
    // SAFETY: an seL4 syscall with the kernel's register convention; it only
    // touches the IPC buffer and the registers declared in `arch::syscall`.
    let (badge, out_info) = unsafe { arch::syscall(sys, x0, info, &mut mrs, reply, dest) };
    for (i, mr) in mrs.iter().enumerate() {
        // SAFETY: as above.
        unsafe { ipc_mr(i).write_volatile(*mr) };
    }
    (badge, out_info)
}

fn allowed(mask: u64, ch: usize) -> bool {
    ch < MAX_CHANNELS && mask & (1 << ch) != 0
}

fn invalid(what: &str, ch: usize) {
    crate::debug_println!("{}|ERROR: {what}: invalid channel given '{ch}'", pd_name());
}

pub(crate) mod sys {
    use super::*;

    /// seL4 zeroes every frame it retypes for a region: all touched.
    pub(crate) const REGIONS_UNTOUCHED_AT_BOOT: bool = false;

    pub(crate) fn pd_name() -> &'static str {
        super::pd_name()
    }

    pub(crate) fn notify(ch: usize) {
        if !allowed(microkit_notifications.get(), ch) {
            return invalid("notify", ch);
        }
        // seL4_Signal = Send of an empty message on the notification cap.
        syscall(SYS_SEND, BASE_OUTPUT_NOTIFICATION_CAP + ch as u64, 0, 0, 0);
    }

    pub(crate) fn irq_ack(ch: usize) {
        if !allowed(microkit_irqs.get(), ch) {
            return invalid("irq_ack", ch);
        }
        // seL4_IRQHandler_Ack: an invocation (Call) with the ack label.
        syscall(
            SYS_CALL,
            BASE_IRQ_CAP + ch as u64,
            MessageInfo::new(IRQ_ACK_LABEL, 0).into_raw(),
            0,
            0,
        );
    }

    pub(crate) fn pp_call(ch: usize, info: MessageInfo) -> MessageInfo {
        if !allowed(microkit_pps.get(), ch) {
            invalid("pp_call", ch);
            return MessageInfo::new(0, 0);
        }
        let (_, out) = syscall(
            SYS_CALL,
            BASE_ENDPOINT_CAP + ch as u64,
            info.into_raw(),
            0,
            0,
        );
        MessageInfo::from_raw(out)
    }

    /// Message register `i`, 0 past [`MSG_MAX_LENGTH`] (as `crate::get_mr`,
    /// which calls this; the vCPU invocations call it directly).
    pub(crate) fn get_mr(i: usize) -> u64 {
        if i >= MSG_MAX_LENGTH {
            return 0;
        }
        // SAFETY: i < MSG_MAX_LENGTH (checked above): inside the IPC buffer.
        unsafe { ipc_mr(i).read_volatile() }
    }

    /// Set message register `i`; ignored past [`MSG_MAX_LENGTH`].
    pub(crate) fn set_mr(i: usize, v: u64) {
        if i >= MSG_MAX_LENGTH {
            return;
        }
        // SAFETY: as in get_mr.
        unsafe { ipc_mr(i).write_volatile(v) }
    }

    pub(crate) fn region(decl: &RegionDecl, paddr: Option<u64>) -> Region {
        Region {
            vaddr: decl.vaddr,
            size: decl.size,
            paddr,
        }
    }

    pub(crate) fn paddr(p: &PhysAddr) -> u64 {
        p.var.get()
    }

    pub(crate) fn put_bytes(bytes: &[u8]) {
        log_page_write(bytes);
        // A release kernel has no DebugPutChar: calling it would fault the PD.
        if cfg!(feature = "release-kernel") {
            return;
        }
        for b in bytes {
            syscall(SYS_DEBUG_PUT_CHAR, u64::from(*b), 0, 0, 0);
        }
    }

    pub(crate) fn print_fmt(args: fmt::Arguments<'_>) {
        // DebugPutChar is one syscall per byte: when the PD's timeslice
        // ends in the middle, another PD of the same priority prints into
        // the line and `PREFIX|LEVEL: ...` lines become hard to parse. So
        // the message is formatted first and printed right after a Yield,
        // which ends the current timeslice: the bytes go out at the start
        // of a fresh one. This makes a cut line rare (seen: one in a whole
        // run of two guests, from dozens), not impossible.
        struct Line {
            buf: [u8; 256],
            len: usize,
            flushed: bool,
        }
        impl fmt::Write for Line {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for &b in s.as_bytes() {
                    if self.len == self.buf.len() {
                        self.flush();
                    }
                    self.buf[self.len] = b;
                    self.len += 1;
                }
                Ok(())
            }
        }
        impl Line {
            fn flush(&mut self) {
                if !self.flushed && !cfg!(feature = "release-kernel") {
                    syscall(SYS_YIELD, 0, 0, 0, 0);
                    self.flushed = true;
                }
                put_bytes(&self.buf[..self.len]);
                self.len = 0;
            }
        }
        let mut line = Line {
            buf: [0; 256],
            len: 0,
            flushed: false,
        };
        let _ = fmt::Write::write_fmt(&mut line, args);
        line.flush();
    }
}

/// One x86 port access on the `<ioport id>` capability (libsel4
/// `seL4_X86_IOPort_In*/Out*`: port in MR0, value in MR1, the read value
/// back in MR0, the error in the reply's label).
#[cfg(target_arch = "x86_64")]
pub(crate) fn port_io(
    id: u64,
    op: crate::channel::PortOp,
    port: u16,
    value: u32,
) -> Result<u32, crate::channel::IoPortError> {
    use crate::channel::{IoPortError, PortOp};
    if id >= 64 || microkit_ioports.get() & (1 << id) == 0 {
        return Err(IoPortError::NotGranted);
    }
    let write = op as u64 >= PortOp::Out8 as u64;
    sys::set_mr(0, u64::from(port));
    sys::set_mr(1, u64::from(value));
    let info = MessageInfo::new(IOPORT_IN8_LABEL + op as u64, if write { 2 } else { 1 });
    let (_, out) = syscall(SYS_CALL, BASE_IOPORT_CAP + id, info.into_raw(), 0, 0);
    match MessageInfo::from_raw(out).label() {
        0 if write => Ok(0),
        0 => Ok(sys::get_mr(0) as u32),
        e => Err(IoPortError::Kernel(e)),
    }
}

fn pd_name() -> &'static str {
    // SAFETY: a shared reference to a static the program never writes (the
    // tool patched it in the file), so it is immutable for 'static.
    let name: &'static [u8; 64] = unsafe { &*microkit_name.0.get() };
    let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    core::str::from_utf8(&name[..len]).unwrap_or("?")
}

/// The event loop (libmicrokit `handler_loop`): Recv on the input cap; after a
/// PPC, ReplyRecv with the reply cap; with a deferred signal, NBSendRecv.
pub fn run<H: Handler>(init: impl FnOnce() -> H) -> ! {
    let mut handler = init();
    // The run loop's own deferred signal: a passive PD tells the monitor it
    // is ready (the monitor then moves its scheduling context away),
    // combined with the first Recv. A signal deferred by init goes out now
    // so it is not lost.
    let mut tell_monitor = false;
    if microkit_passive.get() != 0 {
        if let Some(a) = handler.take_deferred_action() {
            perform_now(a);
        }
        tell_monitor = true;
    }
    // seL4 issue 1536: acknowledge every IRQ once we are about to wait, as
    // libmicrokit does.
    let irqs = microkit_irqs.get();
    for id in 0..64 {
        if irqs & (1 << id) != 0 {
            sys::irq_ack(id);
        }
    }
    let mut reply: Option<MessageInfo> = None;
    loop {
        let (badge, info) = match reply.take() {
            Some(r) => syscall(SYS_REPLY_RECV, INPUT_CAP, r.into_raw(), REPLY_CAP, 0),
            None => {
                let deferred = if core::mem::take(&mut tell_monitor) {
                    Some((MONITOR_EP, 0))
                } else {
                    handler.take_deferred_action().map(deferred_target)
                };
                match deferred {
                    None => syscall(SYS_RECV, INPUT_CAP, 0, REPLY_CAP, 0),
                    Some((dest, msg)) => syscall(SYS_NB_SEND_RECV, INPUT_CAP, msg, REPLY_CAP, dest),
                }
            }
        };
        let info = MessageInfo::from_raw(info);
        if badge >> 63 != 0 {
            let ch = Channel::new((badge & 0x3f) as usize);
            match handler.protected(ch, info) {
                Ok(r) => reply = Some(r),
                Err(e) => fatal(&e),
            }
        } else if (badge >> 62) & 1 != 0 {
            // A child's fault (a vCPU of this PD's VM): read its message
            // registers before any other invocation reuses the IPC buffer.
            let mut mrs = [0u64; crate::vm::FAULT_MRS];
            for (i, mr) in mrs.iter_mut().enumerate() {
                *mr = sys::get_mr(i);
            }
            let child = crate::vm::Child::new((badge & 0xff) as u8);
            let fault = crate::vm::Fault::decode(info.label(), &mrs);
            match handler.fault(child, fault) {
                Ok(crate::vm::FaultReply::Resume) => reply = Some(MessageInfo::new(0, 0)),
                Ok(crate::vm::FaultReply::Stop) => {}
                Err(e) => fatal(&e),
            }
        } else if let Err(e) = handler.notified(ChannelSet::from_bits(badge)) {
            fatal(&e);
        }
    }
}

/// The cap and message of a deferred action for NBSendRecv.
fn deferred_target(a: DeferredAction) -> (u64, u64) {
    let id = a.channel().index() as u64 & 0xff;
    match a.interface() {
        DeferredActionInterface::Notify => (BASE_OUTPUT_NOTIFICATION_CAP + id, 0),
        DeferredActionInterface::IrqAck => (
            BASE_IRQ_CAP + id,
            MessageInfo::new(IRQ_ACK_LABEL, 0).into_raw(),
        ),
    }
}

fn perform_now(a: DeferredAction) {
    let id = a.channel().index() & 0xff;
    match a.interface() {
        DeferredActionInterface::Notify => sys::notify(id),
        DeferredActionInterface::IrqAck => sys::irq_ack(id),
    }
}

fn fatal(e: &dyn fmt::Display) -> ! {
    crate::debug_println!("{}|ERROR: handler failed: {e}", pd_name());
    arch::crash()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crate::debug_println!("{}|PANIC: {info}", pd_name());
    arch::crash()
}
