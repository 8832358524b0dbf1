//! The host backend: the PD is a Linux process started by the launcher
//! (`tools run`), which passes everything in the environment variable
//! [`CONFIG_ENV`] and in inherited file descriptors:
//!
//! - each `<map>`: a memfd (read-only file description for `perms="r"`), mapped
//!   here `MAP_SHARED` with exactly its permissions;
//! - each channel end: an eventfd this PD polls (`input`) and, when this end may
//!   notify, the peer's eventfd (`output`); a notification writes 1 to it;
//! - each PPC: a `SOCK_SEQPACKET` socket; a call is one packet
//!   `[info, mr0 .. mr(count-1)]` (little-endian u64) and its reply one packet;
//! - each `<irq>`: an eventfd the device model raises and one this PD writes on
//!   `irq_ack`; an IRQ is not delivered again until it is acknowledged.
//!
//! The PD dies with its launcher (`PR_SET_PDEATHSIG`) and closes every
//! descriptor it was not given.

use crate::channel::{Channel, ChannelSet, MSG_MAX_LENGTH, MessageInfo};
use crate::defer::DeferredActionInterface;
use crate::{Handler, PPC_UNSUPPORTED_LABEL, PhysAddr, Region, RegionDecl};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::sync::{Mutex, OnceLock};
use std::vec::Vec;
use std::{eprintln, format};

/// The environment variable holding the PD's configuration.
pub const CONFIG_ENV: &str = "PD_HOST_CONFIG";
/// The launcher's pid, so a PD started after its launcher died exits at once.
pub const LAUNCHER_PID_ENV: &str = "PD_HOST_LAUNCHER_PID";
/// The system description the launcher runs, `<sha256> <path>`: a PD built
/// from another one (its stamp, `sdf::stamp`) refuses to start.
pub const SYSTEM_ENV: &str = "PD_HOST_SYSTEM";

/// Refuse to run under a description other than the one this binary was
/// built from: the generated config put the description's stamp
/// (`sdf-system:sha256=<hex>;path=<path>`, `sdf::stamp`) into the binary;
/// the launcher says which one it runs in [`SYSTEM_ENV`]. As sDDF's
/// generated config carries a magic checked at init.
fn check_system() {
    let Ok(given) = std::env::var(SYSTEM_ENV) else {
        return;
    };
    let (want, path) = given.split_once(' ').unwrap_or((given.as_str(), "?"));
    let exe = std::env::current_exe().unwrap_or_default();
    let bytes = std::fs::read("/proc/self/exe").unwrap_or_default();
    const MAGIC: &[u8] = b"sdf-system:sha256=";
    let mut built = Vec::new();
    let mut i = 0;
    while let Some(at) = bytes[i..].windows(MAGIC.len()).position(|w| w == MAGIC) {
        i += at + MAGIC.len();
        let Some(hex) = bytes.get(i..i + 64) else {
            break;
        };
        if hex == want.as_bytes() {
            return;
        }
        let rest = &bytes[i + 64..];
        let from = rest.strip_prefix(b";path=").unwrap_or_default();
        let end = from.iter().position(|&b| b == 0).unwrap_or(from.len());
        let s = format!(
            "{} (sha256 {})",
            std::string::String::from_utf8_lossy(&from[..end]),
            std::string::String::from_utf8_lossy(&hex[..12])
        );
        if !built.contains(&s) {
            built.push(s);
        }
    }
    die(&format!(
        "{} was built for {}, not for {path} (sha256 {}): rebuild the PDs from {path}",
        exe.display(),
        if built.is_empty() {
            "no system description".into()
        } else {
            built.join(" and ")
        },
        want.get(..12).unwrap_or(want),
    ));
}

/// One mapped region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRegion {
    pub name: String,
    pub fd: RawFd,
    pub size: u64,
    pub writable: bool,
    /// The (pseudo-)physical address the launcher assigned.
    pub paddr: u64,
}

/// One channel end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostChannel {
    pub id: u64,
    /// This PD's eventfd for the channel (always present).
    pub input: RawFd,
    /// The peer's eventfd, when this end may notify.
    pub output: Option<RawFd>,
}

/// One IRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIrq {
    pub id: u64,
    pub raise: RawFd,
    pub ack: RawFd,
}

/// Everything the launcher tells a PD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    pub name: String,
    pub regions: Vec<HostRegion>,
    /// Physical addresses told by `<setvar region_paddr>`: (region, paddr).
    pub paddrs: Vec<(String, u64)>,
    pub channels: Vec<HostChannel>,
    /// Channels this PD makes PPCs on: (id, socket).
    pub ppc_out: Vec<(u64, RawFd)>,
    /// Channels this PD serves PPCs on: (id, socket).
    pub ppc_in: Vec<(u64, RawFd)>,
    pub irqs: Vec<HostIrq>,
}

/// A malformed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostConfigError {
    Missing,
    Malformed { line: usize, reason: String },
    DuplicateFd(RawFd),
}

impl fmt::Display for HostConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostConfigError::Missing => {
                write!(f, "{CONFIG_ENV} is not set: start this PD with `tools run`")
            }
            HostConfigError::Malformed { line, reason } => {
                write!(f, "{CONFIG_ENV} line {line}: {reason}")
            }
            HostConfigError::DuplicateFd(fd) => write!(f, "{CONFIG_ENV} gives fd {fd} twice"),
        }
    }
}

impl std::error::Error for HostConfigError {}

fn opt_fd(fd: Option<RawFd>) -> String {
    fd.map_or("-".to_string(), |f| f.to_string())
}

impl HostConfig {
    /// The text form: one record per line, fields separated by spaces.
    pub fn encode(&self) -> String {
        let mut s = format!("name {}\n", self.name);
        for r in &self.regions {
            let perms = if r.writable { "rw" } else { "r" };
            s += &format!(
                "region {} {} {} {perms} {}\n",
                r.name, r.fd, r.size, r.paddr
            );
        }
        for (r, p) in &self.paddrs {
            s += &format!("paddr {r} {p}\n");
        }
        for c in &self.channels {
            s += &format!("channel {} {} {}\n", c.id, c.input, opt_fd(c.output));
        }
        for (id, fd) in &self.ppc_out {
            s += &format!("ppc_out {id} {fd}\n");
        }
        for (id, fd) in &self.ppc_in {
            s += &format!("ppc_in {id} {fd}\n");
        }
        for i in &self.irqs {
            s += &format!("irq {} {} {}\n", i.id, i.raise, i.ack);
        }
        s
    }

    /// Parse [`HostConfig::encode`]'s output. Every fd must appear once.
    pub fn decode(text: &str) -> Result<HostConfig, HostConfigError> {
        let mut c = HostConfig::default();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let line_no = n + 1;
            let bad = |reason: &str| HostConfigError::Malformed {
                line: line_no,
                reason: reason.to_string(),
            };
            let f: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| -> Result<u64, HostConfigError> {
                f.get(i)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("bad number"))
            };
            let fd = |i: usize| -> Result<RawFd, HostConfigError> {
                f.get(i)
                    .and_then(|s| s.parse().ok())
                    .filter(|v: &RawFd| *v > 2)
                    .ok_or_else(|| bad("bad fd"))
            };
            let id = |i: usize| -> Result<u64, HostConfigError> {
                num(i).and_then(|v| {
                    if v < 64 {
                        Ok(v)
                    } else {
                        Err(bad("id out of range"))
                    }
                })
            };
            let want = |k: usize| {
                if f.len() == k {
                    Ok(())
                } else {
                    Err(bad("wrong number of fields"))
                }
            };
            match f[0] {
                "name" => {
                    want(2)?;
                    c.name = f[1].to_string();
                }
                "region" => {
                    want(6)?;
                    let writable = match f[4] {
                        "r" => false,
                        "rw" => true,
                        _ => return Err(bad("perms must be r or rw")),
                    };
                    c.regions.push(HostRegion {
                        name: f[1].to_string(),
                        fd: fd(2)?,
                        size: num(3)?,
                        writable,
                        paddr: num(5)?,
                    });
                }
                "paddr" => {
                    want(3)?;
                    c.paddrs.push((f[1].to_string(), num(2)?));
                }
                "channel" => {
                    want(4)?;
                    let output = if f[3] == "-" { None } else { Some(fd(3)?) };
                    c.channels.push(HostChannel {
                        id: id(1)?,
                        input: fd(2)?,
                        output,
                    });
                }
                "ppc_out" => {
                    want(3)?;
                    c.ppc_out.push((id(1)?, fd(2)?));
                }
                "ppc_in" => {
                    want(3)?;
                    c.ppc_in.push((id(1)?, fd(2)?));
                }
                "irq" => {
                    want(4)?;
                    c.irqs.push(HostIrq {
                        id: id(1)?,
                        raise: fd(2)?,
                        ack: fd(3)?,
                    });
                }
                _ => return Err(bad("unknown record")),
            }
        }
        if c.name.is_empty() {
            return Err(HostConfigError::Malformed {
                line: 0,
                reason: "no name record".to_string(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for fd in c.fds() {
            if !seen.insert(fd) {
                return Err(HostConfigError::DuplicateFd(fd));
            }
        }
        Ok(c)
    }

    /// Every fd this PD is given, once each.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self.regions.iter().map(|r| r.fd).collect();
        for ch in &self.channels {
            v.push(ch.input);
            v.extend(ch.output);
        }
        v.extend(self.ppc_out.iter().map(|p| p.1));
        v.extend(self.ppc_in.iter().map(|p| p.1));
        for i in &self.irqs {
            v.push(i.raise);
            v.push(i.ack);
        }
        v
    }
}

struct State {
    name: String,
    regions: BTreeMap<String, (u64, u64)>,
    paddrs: BTreeMap<String, u64>,
    outputs: BTreeMap<u64, OwnedFd>,
    acks: BTreeMap<u64, OwnedFd>,
    ppc_out: BTreeMap<u64, OwnedFd>,
}

static STATE: OnceLock<State> = OnceLock::new();
/// IRQs delivered and not yet acknowledged. As on seL4, such an IRQ is not
/// delivered again until acked, so a driver that forgets to ack hangs here
/// too instead of working by accident.
static IRQ_MASKED: AtomicU64 = AtomicU64::new(0);
static MRS: Mutex<[u64; MSG_MAX_LENGTH]> = Mutex::new([0; MSG_MAX_LENGTH]);

fn state() -> &'static State {
    STATE
        .get()
        .unwrap_or_else(|| die("the pd host runtime is not running (use pd::main!)"))
}

fn die(msg: &str) -> ! {
    eprintln!("pd: {msg}");
    std::process::exit(2)
}

fn signal(fd: BorrowedFd<'_>) {
    // An eventfd counter only overflows after 2^64-2 unread signals; EAGAIN
    // then still means "signalled", so the error is ignored.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

pub(crate) mod sys {
    use super::*;

    /// Every region is a fresh memfd: no page has memory behind it until
    /// a PD writes it.
    pub(crate) const REGIONS_UNTOUCHED_AT_BOOT: bool = true;

    pub(crate) fn pd_name() -> &'static str {
        STATE.get().map_or("pd", |s| s.name.as_str())
    }

    pub(crate) fn notify(ch: usize) {
        match state().outputs.get(&(ch as u64)) {
            Some(fd) => signal(fd.as_fd()),
            None => {
                crate::debug_println!("{}|ERROR: notify: invalid channel given '{ch}'", pd_name())
            }
        }
    }

    pub(crate) fn irq_ack(ch: usize) {
        match state().acks.get(&(ch as u64)) {
            Some(fd) => {
                IRQ_MASKED.fetch_and(!(1 << ch), Ordering::Relaxed);
                signal(fd.as_fd())
            }
            None => {
                crate::debug_println!("{}|ERROR: irq_ack: invalid channel given '{ch}'", pd_name())
            }
        }
    }

    pub(crate) fn pp_call(ch: usize, info: MessageInfo) -> MessageInfo {
        let Some(sock) = state().ppc_out.get(&(ch as u64)) else {
            crate::debug_println!("{}|ERROR: pp_call: invalid channel given '{ch}'", pd_name());
            return MessageInfo::new(0, 0);
        };
        let req = encode_msg(info);
        if rustix::io::write(sock, &req).is_err() {
            return MessageInfo::new(PPC_UNSUPPORTED_LABEL, 0);
        }
        let mut buf = [0u8; 8 * (MSG_MAX_LENGTH + 1)];
        match rustix::io::read(sock, &mut buf) {
            Ok(n) => decode_msg(&buf[..n]).unwrap_or(MessageInfo::new(PPC_UNSUPPORTED_LABEL, 0)),
            // The callee is gone: the launcher is about to stop everything.
            Err(_) => MessageInfo::new(PPC_UNSUPPORTED_LABEL, 0),
        }
    }

    pub(crate) fn get_mr(i: usize) -> u64 {
        MRS.lock().map_or(0, |m| m[i])
    }

    pub(crate) fn set_mr(i: usize, v: u64) {
        if let Ok(mut m) = MRS.lock() {
            m[i] = v;
        }
    }

    pub(crate) fn region(decl: &RegionDecl, paddr: Option<u64>) -> Region {
        let s = state();
        let Some(&(vaddr, size)) = s.regions.get(decl.name) else {
            die(&format!(
                "{}: region '{}' was not mapped by the launcher: system.xml and this binary disagree",
                s.name, decl.name
            ))
        };
        let paddr = paddr.map(|_| s.paddrs.get(decl.name).copied().unwrap_or(0));
        Region { vaddr, size, paddr }
    }

    pub(crate) fn paddr(p: &PhysAddr) -> u64 {
        let s = state();
        s.paddrs.get(p.region).copied().unwrap_or_else(|| {
            die(&format!(
                "{}: no physical address for '{}' from the launcher",
                s.name, p.region
            ))
        })
    }

    pub(crate) fn put_bytes(bytes: &[u8]) {
        let mut rest = bytes;
        // One write per print, so lines of different PDs do not interleave.
        while !rest.is_empty() {
            // SAFETY: fd 1 is stdout, open for the life of the process.
            let out = unsafe { BorrowedFd::borrow_raw(1) };
            match rustix::io::write(out, rest) {
                Ok(0) | Err(_) => break,
                Ok(n) => rest = &rest[n..],
            }
        }
    }

    pub(crate) fn print_fmt(args: fmt::Arguments<'_>) {
        put_bytes(std::fmt::format(args).as_bytes())
    }
}

fn encode_msg(info: MessageInfo) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 * (1 + info.count()));
    v.extend_from_slice(&info.into_raw().to_le_bytes());
    let mrs = MRS.lock().map(|m| *m).unwrap_or([0; MSG_MAX_LENGTH]);
    for mr in &mrs[..info.count()] {
        v.extend_from_slice(&mr.to_le_bytes());
    }
    v
}

/// Decode a peer's packet into the message registers. A malformed packet
/// (not whole words, or fewer registers than it claims) is refused.
fn decode_msg(buf: &[u8]) -> Option<MessageInfo> {
    if buf.len() < 8 || !buf.len().is_multiple_of(8) {
        return None;
    }
    let words: Vec<u64> = buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let info = MessageInfo::from_raw(words[0]);
    let mrs = &words[1..];
    if mrs.len() != info.count() {
        return None;
    }
    let info = MessageInfo::new(info.label(), info.count());
    if let Ok(mut m) = MRS.lock() {
        m[..mrs.len()].copy_from_slice(mrs);
        m[mrs.len()..].fill(0);
    }
    Some(info)
}

/// Close every descriptor above stderr that the launcher did not give.
fn close_strays(keep: &[RawFd]) {
    use rustix::fs::{Dir, Mode, OFlags, open};
    let Ok(dirfd) = open(
        "/proc/self/fd",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let Ok(dir) = Dir::read_from(&dirfd) else {
        return;
    };
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str().ok()?.parse().ok())
        .filter(|fd| *fd > 2 && *fd != dirfd.as_raw_fd() && !keep.contains(fd))
        .collect();
    drop(dirfd);
    for fd in fds {
        // The listing's own descriptors (rustix's `Dir` opens one) are closed
        // by now: skip what is no longer open.
        // SAFETY: only used for this one fcntl, which fails with EBADF on a
        // closed fd; the process is single-threaded here, so nothing reuses it.
        if rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) }).is_err() {
            continue;
        }
        // SAFETY: nothing in this process owns `fd` (we are at the start of
        // `run`, before anything else is opened) and it is open.
        unsafe { rustix::io::close(fd) };
    }
}

fn map(r: &HostRegion, fd: &OwnedFd) -> u64 {
    use rustix::mm::{MapFlags, ProtFlags, mmap};
    let prot = if r.writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    let Ok(len) = usize::try_from(r.size) else {
        die("region too large")
    };
    // SAFETY: a new shared mapping of a memfd at an address the kernel picks:
    // it aliases no Rust object. Peers write it concurrently, so it is only
    // ever accessed through raw pointers (volatile/atomic), never `&mut`.
    match unsafe { mmap(core::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) } {
        Ok(p) => p as u64,
        Err(e) => die(&format!(
            "mapping region '{}' ({} bytes, {}): {e}",
            r.name,
            r.size,
            if r.writable { "rw" } else { "r" }
        )),
    }
}

enum Source {
    Notify(u64),
    Irq(u64),
    Ppc(u64),
}

/// Start the PD: read the configuration, map the regions, run `init`, then
/// serve events until the launcher stops the process.
pub fn run<H: Handler>(init: impl FnOnce() -> H) -> ! {
    check_system();
    let text = std::env::var(CONFIG_ENV).unwrap_or_default();
    let cfg = if text.is_empty() {
        Err(HostConfigError::Missing)
    } else {
        HostConfig::decode(&text)
    };
    let cfg = cfg.unwrap_or_else(|e| die(&e.to_string()));
    // Die with the launcher. If it died before this line, the parent is no
    // longer the launcher: exit now.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    if let Some(want) = std::env::var(LAUNCHER_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        && rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(want)
    {
        die("the launcher is gone");
    }
    close_strays(&cfg.fds());
    let own = |fd: RawFd| {
        // SAFETY: `decode` checked that each fd appears once; the launcher
        // passed it to this process for this use only.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let mut st = State {
        name: cfg.name.clone(),
        regions: BTreeMap::new(),
        paddrs: cfg.paddrs.iter().cloned().collect(),
        outputs: BTreeMap::new(),
        acks: BTreeMap::new(),
        ppc_out: BTreeMap::new(),
    };
    for r in &cfg.regions {
        let fd = own(r.fd);
        st.regions.insert(r.name.clone(), (map(r, &fd), r.size));
        st.paddrs.insert(r.name.clone(), r.paddr);
        // The mapping keeps the memory; the fd is no longer needed.
    }
    let mut inputs: Vec<(OwnedFd, Source)> = Vec::new();
    for c in &cfg.channels {
        inputs.push((own(c.input), Source::Notify(c.id)));
        if let Some(o) = c.output {
            st.outputs.insert(c.id, own(o));
        }
    }
    for i in &cfg.irqs {
        inputs.push((own(i.raise), Source::Irq(i.id)));
        st.acks.insert(i.id, own(i.ack));
    }
    for (id, fd) in &cfg.ppc_out {
        st.ppc_out.insert(*id, own(*fd));
    }
    for (id, fd) in &cfg.ppc_in {
        inputs.push((own(*fd), Source::Ppc(*id)));
    }
    if STATE.set(st).is_err() {
        die("pd::host::run called twice");
    }
    let mut handler = init();
    let name = &state().name;
    let fatal = |e: &dyn fmt::Display| -> ! {
        crate::debug_println!("{name}|ERROR: handler failed: {e}");
        std::process::exit(1)
    };
    let mut buf = [0u8; 8 * (MSG_MAX_LENGTH + 1)];
    loop {
        // A deferred action is performed when the PD next waits, as on seL4.
        if let Some(a) = handler.take_deferred_action() {
            let id = a.channel().index() & 0xff;
            match a.interface() {
                DeferredActionInterface::Notify => sys::notify(id),
                DeferredActionInterface::IrqAck => sys::irq_ack(id),
            }
        }
        let mut pfds: Vec<PollFd<'_>> = inputs
            .iter()
            .map(|(fd, src)| match *src {
                Source::Irq(id) if IRQ_MASKED.load(Ordering::Relaxed) & (1 << id) != 0 => {
                    PollFd::new(fd, PollFlags::empty())
                }
                _ => PollFd::new(fd, PollFlags::IN),
            })
            .collect();
        match poll(&mut pfds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => die(&format!("poll: {e}")),
        }
        let ready: Vec<(usize, PollFlags)> = pfds
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.revents().is_empty())
            .map(|(i, p)| (i, p.revents()))
            .collect();
        drop(pfds);
        let mut set = ChannelSet::default();
        let mut dead = Vec::new();
        for (i, revents) in ready {
            let (fd, src) = &inputs[i];
            match *src {
                Source::Notify(id) | Source::Irq(id) => {
                    if matches!(src, Source::Irq(_)) {
                        IRQ_MASKED.fetch_or(1 << id, Ordering::Relaxed);
                    }
                    let mut b = [0u8; 8];
                    // Reading resets the counter: notifications coalesce.
                    let _ = rustix::io::read(fd, &mut b);
                    set.insert(Channel::new(id as usize));
                }
                Source::Ppc(id) => match rustix::io::read(fd, &mut buf) {
                    Ok(n) if n > 0 => {
                        let reply = match decode_msg(&buf[..n]) {
                            Some(info) => handler
                                .protected(Channel::new(id as usize), info)
                                .unwrap_or_else(|e| fatal(&e)),
                            None => {
                                crate::debug_println!(
                                    "{name}|WARN: malformed PPC on channel {id} refused"
                                );
                                MessageInfo::new(PPC_UNSUPPORTED_LABEL, 0)
                            }
                        };
                        let _ = rustix::io::write(fd, &encode_msg(reply));
                    }
                    Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                    // EOF or error: the caller is gone; stop polling it.
                    _ => dead.push(i),
                },
            }
            if revents.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL)
                && matches!(src, Source::Ppc(_))
            {
                dead.push(i);
            }
        }
        dead.sort_unstable();
        dead.dedup();
        for i in dead.into_iter().rev() {
            inputs.remove(i);
        }
        if !set.is_empty() {
            handler.notified(set).unwrap_or_else(|e| fatal(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips() {
        let c = HostConfig {
            name: "ping".into(),
            regions: std::vec![HostRegion {
                name: "shared".into(),
                fd: 3,
                size: 4096,
                writable: false,
                paddr: 0x1000_0000
            }],
            paddrs: std::vec![("ram".into(), 0x4000_0000)],
            channels: std::vec![
                HostChannel {
                    id: 0,
                    input: 4,
                    output: Some(5)
                },
                HostChannel {
                    id: 2,
                    input: 6,
                    output: None
                }
            ],
            ppc_out: std::vec![(1, 7)],
            ppc_in: std::vec![(3, 8)],
            irqs: std::vec![HostIrq {
                id: 9,
                raise: 9,
                ack: 10
            }],
        };
        assert_eq!(HostConfig::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn config_rejects_bad_input() {
        assert!(matches!(
            HostConfig::decode("region x 3 4096 rw 0\n"),
            Err(HostConfigError::Malformed { .. })
        ));
        assert!(matches!(
            HostConfig::decode("name a\nchannel 0 4 4\n"),
            Err(HostConfigError::DuplicateFd(4))
        ));
        assert!(matches!(
            HostConfig::decode("name a\nchannel 64 4 5\n"),
            Err(HostConfigError::Malformed { line: 2, .. })
        ));
        assert!(matches!(
            HostConfig::decode("name a\nregion s 3 4096 wx 0\n"),
            Err(HostConfigError::Malformed { .. })
        ));
        assert!(matches!(
            HostConfig::decode("name a\nchannel 0 1 5\n"),
            Err(HostConfigError::Malformed { .. })
        ));
    }

    #[test]
    fn malformed_ppc_packets_are_refused() {
        assert_eq!(decode_msg(&[0; 7]), None);
        // Claims 2 registers, carries 1.
        let mut p = MessageInfo::new(5, 2).into_raw().to_le_bytes().to_vec();
        p.extend_from_slice(&9u64.to_le_bytes());
        assert_eq!(decode_msg(&p), None);
        p.extend_from_slice(&10u64.to_le_bytes());
        assert_eq!(decode_msg(&p), Some(MessageInfo::new(5, 2)));
        assert_eq!((sys::get_mr(0), sys::get_mr(1), sys::get_mr(2)), (9, 10, 0));
    }
}
