//! Spawning, watching and stopping the PD processes.

use super::{Console, PSEUDO_PHYS_BASE};
use pd::host::{CONFIG_ENV, HostChannel, HostConfig, HostIrq, HostRegion, LAUNCHER_PID_ENV};
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use sdf::{Diagnostic, System};
use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the launcher could not do what it was asked.
#[derive(Debug)]
pub enum LaunchError {
    /// `system.xml` has errors (see `tools check`).
    Invalid(Vec<Diagnostic>),
    /// A PD's host binary does not exist.
    MissingBinary { pd: String, path: PathBuf },
    /// A system call failed.
    Io { what: String, err: std::io::Error },
    /// No such memory region.
    NoSuchRegion(String),
    /// No such `<irq>`.
    NoSuchIrq { pd: String, id: u64 },
    /// `start` was called twice.
    AlreadyStarted,
    /// A PD was built for another system description (one line).
    WrongDescription(String),
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchError::Invalid(d) => {
                write!(f, "the system description has errors:")?;
                for d in d {
                    write!(f, "\n  line {d}")?;
                }
                Ok(())
            }
            LaunchError::MissingBinary { pd, path } => {
                write!(
                    f,
                    "PD '{pd}': no host binary at {} (build it with --features pd/host)",
                    path.display()
                )
            }
            LaunchError::Io { what, err } => write!(f, "{what}: {err}"),
            LaunchError::NoSuchRegion(r) => write!(f, "no memory_region '{r}'"),
            LaunchError::NoSuchIrq { pd, id } => write!(f, "PD '{pd}' has no irq with id {id}"),
            LaunchError::AlreadyStarted => write!(f, "the system is already started"),
            LaunchError::WrongDescription(line) => write!(f, "{line}"),
        }
    }
}

impl std::error::Error for LaunchError {}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |err| LaunchError::Io { what, err }
}

fn rio(what: impl Into<String>) -> impl FnOnce(rustix::io::Errno) -> LaunchError {
    let what = what.into();
    move |e| LaunchError::Io {
        what,
        err: e.into(),
    }
}

/// How a PD process ended.
#[derive(Debug, Clone)]
pub struct PdExit {
    pub pd: String,
    pub pid: u32,
    pub status: ExitStatus,
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        _ => "signal",
    }
}

impl fmt::Display for PdExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.status.code(), self.status.signal()) {
            (Some(c), _) => write!(
                f,
                "PD '{}' (pid {}) exited with status {c}",
                self.pd, self.pid
            ),
            (None, Some(s)) => write!(
                f,
                "PD '{}' (pid {}) was killed by signal {s} ({})",
                self.pd,
                self.pid,
                signal_name(s)
            ),
            _ => write!(
                f,
                "PD '{}' (pid {}) ended: {}",
                self.pd, self.pid, self.status
            ),
        }
    }
}

/// What [`Launcher::wait`] saw first.
#[derive(Debug, Clone)]
pub enum Event {
    /// A PD process ended (a crash, or a PD that returned).
    Exited(PdExit),
    /// A console line matched [`Console::watch`].
    Matched(String),
    /// The timeout passed.
    Timeout,
}

/// The launcher's ends of one `<irq>`: the device model raises it and sees
/// the PD's acknowledgements.
#[derive(Debug)]
pub struct IrqLine {
    raise: OwnedFd,
    ack: OwnedFd,
}

impl IrqLine {
    /// Raise the interrupt (coalesces with one not yet taken, like a level line).
    pub fn raise(&self) -> std::io::Result<()> {
        rustix::io::write(&self.raise, &1u64.to_ne_bytes())
            .map(|_| ())
            .map_err(Into::into)
    }

    /// Wait up to `timeout` for the PD to acknowledge; true when it did.
    pub fn wait_ack(&self, timeout: Duration) -> std::io::Result<bool> {
        let mut fds = [PollFd::new(&self.ack, PollFlags::IN)];
        let ts = rustix::time::Timespec::try_from(timeout).unwrap_or(rustix::time::Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        if poll(&mut fds, Some(&ts))? == 0 {
            return Ok(false);
        }
        let mut b = [0u8; 8];
        match rustix::io::read(&self.ack, &mut b) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The acknowledge eventfd, to poll it with other sources.
    pub fn ack_fd(&self) -> BorrowedFd<'_> {
        self.ack.as_fd()
    }
}

/// A read-write mapping of a region in the launcher (for a device model).
#[derive(Debug)]
pub struct SharedMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it may be
// used from any thread (accesses are raw-pointer, volatile or atomic).
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` only hands out the raw pointer.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// The start of the mapping. PDs write it concurrently: access it through
    /// raw pointers (volatile or atomic), never through `&mut`.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned, unmapped once.
        let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
    }
}

struct RegionRes {
    fd: Arc<OwnedFd>,
    size: u64,
    paddr: u64,
}

struct Plan {
    name: String,
    image: PathBuf,
    config: HostConfig,
    /// Keeps every fd in `config` open until the PD is spawned.
    fds: Vec<Arc<OwnedFd>>,
}

struct Running {
    name: String,
    child: Child,
    pidfd: OwnedFd,
    exit: Option<PdExit>,
}

/// A system of PD processes (see the module docs).
pub struct Launcher {
    sys: System,
    regions: BTreeMap<String, RegionRes>,
    irqs: BTreeMap<(String, u64), (Arc<OwnedFd>, Arc<OwnedFd>)>,
    plans: Vec<Plan>,
    running: Vec<Running>,
    console: Arc<Console>,
    /// Extra environment for every PD (workload and tunables on the host
    /// platform).
    env: Vec<(String, String)>,
}

impl fmt::Debug for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Launcher")
            .field(
                "pds",
                &self.sys.pds.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .field("running", &self.pids())
            .finish()
    }
}

fn new_eventfd(what: &str) -> Result<Arc<OwnedFd>, LaunchError> {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map(Arc::new)
        .map_err(rio(format!("eventfd for {what}")))
}

/// The host binary of a `program_image`: `foo.elf` -> `<bin_dir>/foo`.
pub fn host_binary(bin_dir: &Path, program_image: &str) -> PathBuf {
    let file = Path::new(program_image)
        .file_name()
        .map_or_else(|| program_image.into(), |f| f.to_os_string());
    let file = Path::new(&file);
    let stem = if file.extension().is_some_and(|e| e == "elf") {
        file.file_stem().unwrap_or(file.as_os_str())
    } else {
        file.as_os_str()
    };
    bin_dir.join(stem)
}

impl Launcher {
    /// Create every region, eventfd and socket of `sys` (which must pass
    /// `sdf::check` without errors) and find each PD's binary in `bin_dir`.
    /// Nothing runs until [`Launcher::start`]; `echo` copies PD console lines
    /// to stdout.
    pub fn new(sys: System, bin_dir: &Path, echo: bool) -> Result<Launcher, LaunchError> {
        let diags = sdf::check(&sys);
        if sdf::check::has_errors(&diags) {
            return Err(LaunchError::Invalid(
                diags
                    .into_iter()
                    .filter(|d| d.severity == sdf::Severity::Error)
                    .collect(),
            ));
        }
        let mut regions = BTreeMap::new();
        let mut next_paddr = PSEUDO_PHYS_BASE;
        for mr in &sys.memory_regions {
            let fd = rustix::fs::memfd_create(
                mr.name.as_str(),
                rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
            )
            .map_err(rio(format!("memfd for '{}'", mr.name)))?;
            rustix::fs::ftruncate(&fd, mr.size).map_err(rio(format!("sizing '{}'", mr.name)))?;
            // No PD may shrink a region under its peers (SIGBUS) or grow it.
            rustix::fs::fcntl_add_seals(
                &fd,
                rustix::fs::SealFlags::SHRINK
                    | rustix::fs::SealFlags::GROW
                    | rustix::fs::SealFlags::SEAL,
            )
            .map_err(rio(format!("sealing '{}'", mr.name)))?;
            let paddr = match mr.phys_addr {
                Some(p) => p,
                None => {
                    let align = mr.page_size.max(sdf::model::PAGE_2M);
                    let p = next_paddr.div_ceil(align) * align;
                    next_paddr = p + mr.size;
                    p
                }
            };
            regions.insert(
                mr.name.clone(),
                RegionRes {
                    fd: Arc::new(fd),
                    size: mr.size,
                    paddr,
                },
            );
        }

        // One input eventfd per channel end, keyed by (pd, id).
        let mut inputs: BTreeMap<(String, u64), Arc<OwnedFd>> = BTreeMap::new();
        for c in &sys.channels {
            for e in &c.ends {
                inputs.insert(
                    (e.pd.clone(), e.id),
                    new_eventfd(&format!("channel {} of '{}'", e.id, e.pd))?,
                );
            }
        }
        // PPC sockets: (caller pd, caller id) -> caller end; (callee pd, id) -> callee end.
        let mut ppc_out: BTreeMap<(String, u64), Arc<OwnedFd>> = BTreeMap::new();
        let mut ppc_in: BTreeMap<(String, u64), Arc<OwnedFd>> = BTreeMap::new();
        for c in &sys.channels {
            for (caller, callee) in [(&c.ends[0], &c.ends[1]), (&c.ends[1], &c.ends[0])] {
                if caller.pp {
                    let (a, b) = rustix::net::socketpair(
                        rustix::net::AddressFamily::UNIX,
                        rustix::net::SocketType::SEQPACKET,
                        rustix::net::SocketFlags::CLOEXEC,
                        None,
                    )
                    .map_err(rio(format!(
                        "PPC socketpair {} -> {}",
                        caller.pd, callee.pd
                    )))?;
                    ppc_out.insert((caller.pd.clone(), caller.id), Arc::new(a));
                    ppc_in.insert((callee.pd.clone(), callee.id), Arc::new(b));
                }
            }
        }

        let mut irqs = BTreeMap::new();
        let mut plans = Vec::new();
        for pd in &sys.pds {
            let image = host_binary(bin_dir, pd.program_image.as_deref().unwrap_or(&pd.name));
            if !image.is_file() {
                return Err(LaunchError::MissingBinary {
                    pd: pd.name.clone(),
                    path: image,
                });
            }
            let mut config = HostConfig {
                name: pd.name.clone(),
                ..HostConfig::default()
            };
            let mut fds: Vec<Arc<OwnedFd>> = Vec::new();
            let mut keep = |fd: &Arc<OwnedFd>| -> RawFd {
                fds.push(Arc::clone(fd));
                fd.as_raw_fd()
            };
            for m in &pd.maps {
                let Some(r) = regions.get(&m.mr) else {
                    return Err(LaunchError::NoSuchRegion(m.mr.clone()));
                };
                let fd = if m.perms.write {
                    Arc::clone(&r.fd)
                } else {
                    // A read-only file description: mmap(PROT_WRITE) and a
                    // later mprotect to writable both fail with EACCES.
                    let path = format!("/proc/self/fd/{}", r.fd.as_raw_fd());
                    let f = std::fs::File::open(&path)
                        .map_err(io(format!("read-only view of '{}'", m.mr)))?;
                    Arc::new(OwnedFd::from(f))
                };
                config.regions.push(HostRegion {
                    name: m.mr.clone(),
                    fd: keep(&fd),
                    size: r.size,
                    writable: m.perms.write,
                    paddr: r.paddr,
                });
            }
            for sv in &pd.setvars {
                if let Some(r) = regions.get(&sv.region_paddr) {
                    config.paddrs.push((sv.region_paddr.clone(), r.paddr));
                }
            }
            for (end, other) in sys.ends_of(&pd.name) {
                let input = keep(&inputs[&(pd.name.clone(), end.id)]);
                let output = end
                    .notify
                    .then(|| keep(&inputs[&(other.pd.clone(), other.id)]));
                config.channels.push(HostChannel {
                    id: end.id,
                    input,
                    output,
                });
                if let Some(s) = ppc_out.get(&(pd.name.clone(), end.id)) {
                    config.ppc_out.push((end.id, keep(s)));
                }
                if let Some(s) = ppc_in.get(&(pd.name.clone(), end.id)) {
                    config.ppc_in.push((end.id, keep(s)));
                }
            }
            for irq in &pd.irqs {
                let raise = new_eventfd(&format!("irq {} of '{}'", irq.id, pd.name))?;
                let ack = new_eventfd(&format!("irq ack {} of '{}'", irq.id, pd.name))?;
                config.irqs.push(HostIrq {
                    id: irq.id,
                    raise: keep(&raise),
                    ack: keep(&ack),
                });
                irqs.insert((pd.name.clone(), irq.id), (raise, ack));
            }
            plans.push(Plan {
                name: pd.name.clone(),
                image,
                config,
                fds,
            });
        }
        let console = Console::new(echo).map_err(io("console eventfd"))?;
        Ok(Launcher {
            sys,
            regions,
            irqs,
            plans,
            running: Vec::new(),
            console,
            env: Vec::new(),
        })
    }

    /// Refuse to run PDs built for another description than `system`, the
    /// file this launcher's description was read from: each PD binary
    /// carries the hash of the description it was built from
    /// (`sdf::stamp`), and its regions and channels are that one's.
    /// Each PD started later checks it as well (`pd::host::SYSTEM_ENV`).
    pub fn check_built_from(&mut self, system: &Path) -> Result<(), LaunchError> {
        let want = sdf::stamp::Stamp::of_file(system).map_err(LaunchError::WrongDescription)?;
        self.env.push((
            pd::host::SYSTEM_ENV.into(),
            format!("{} {}", want.sha256, want.path),
        ));
        let mut seen = std::collections::BTreeSet::new();
        for plan in &self.plans {
            if seen.insert(&plan.image) {
                sdf::stamp::check(&plan.image, &format!("PD '{}'", plan.name), &want)
                    .map_err(LaunchError::WrongDescription)?;
            }
        }
        Ok(())
    }

    /// Set an environment variable for every PD started after this call
    /// (how the host platform passes PDs their parameters).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.into(), value.into()));
    }

    /// The system being run.
    pub fn system(&self) -> &System {
        &self.sys
    }

    /// The PDs' console.
    pub fn console(&self) -> Arc<Console> {
        Arc::clone(&self.console)
    }

    /// The memfd of region `name` (read-write), e.g. for a device model.
    pub fn region_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.regions.get(name).map(|r| r.fd.as_fd())
    }

    /// The pseudo-physical address of region `name`: its `phys_addr`, or one
    /// assigned above [`PSEUDO_PHYS_BASE`], aligned to at least 2 MiB.
    pub fn region_paddr(&self, name: &str) -> Option<u64> {
        self.regions.get(name).map(|r| r.paddr)
    }

    /// Map region `name` read-write into the launcher process.
    pub fn map_region(&self, name: &str) -> Result<SharedMapping, LaunchError> {
        let r = self
            .regions
            .get(name)
            .ok_or_else(|| LaunchError::NoSuchRegion(name.into()))?;
        let len = usize::try_from(r.size).map_err(|_| LaunchError::NoSuchRegion(name.into()))?;
        // SAFETY: a new shared mapping at a kernel-chosen address; it aliases
        // nothing in this process and is unmapped by SharedMapping's Drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &*r.fd,
                0,
            )
        }
        .map_err(rio(format!("mapping '{name}'")))?;
        Ok(SharedMapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The launcher's ends of `<irq id>` of PD `pd` (duplicated: the caller,
    /// e.g. a device thread, owns them).
    pub fn irq_line(&self, pd: &str, id: u64) -> Result<IrqLine, LaunchError> {
        let (raise, ack) = self
            .irqs
            .get(&(pd.to_string(), id))
            .ok_or_else(|| LaunchError::NoSuchIrq { pd: pd.into(), id })?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(io("dup irq fd"));
        Ok(IrqLine {
            raise: dup(raise)?,
            ack: dup(ack)?,
        })
    }

    /// Start every PD, in `system.xml` order, in one new process group.
    pub fn start(&mut self) -> Result<(), LaunchError> {
        if !self.running.is_empty() {
            return Err(LaunchError::AlreadyStarted);
        }
        let launcher_pid = std::process::id().to_string();
        let mut pgid = 0;
        for plan in std::mem::take(&mut self.plans) {
            let mut cmd = Command::new(&plan.image);
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
                .env(CONFIG_ENV, plan.config.encode())
                .env(LAUNCHER_PID_ENV, &launcher_pid)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(pgid);
            let given: Vec<RawFd> = plan.config.fds();
            let in_child = move || {
                for fd in &given {
                    // Pass exactly the fds in the config: everything else the
                    // launcher holds is close-on-exec.
                    // SAFETY: fcntl(F_SETFD) on an fd number touches no memory.
                    if unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) } == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // SAFETY: prctl(PR_SET_PDEATHSIG) touches no memory.
                if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            // SAFETY: the closure runs in the child between fork and exec; it
            // only makes async-signal-safe calls (fcntl, prctl), reads memory
            // it owns and allocates nothing.
            unsafe { cmd.pre_exec(in_child) };
            let mut child = cmd.spawn().map_err(io(format!(
                "starting PD '{}' ({})",
                plan.name,
                plan.image.display()
            )))?;
            let pid = child.id();
            if pgid == 0 {
                pgid = pid as i32;
            }
            if let Some(out) = child.stdout.take() {
                self.console.spawn_reader(out, None);
            }
            if let Some(err) = child.stderr.take() {
                self.console
                    .spawn_reader(err, Some(format!("{}|stderr: ", plan.name)));
            }
            let pidfd = Pid::from_raw(pid as i32)
                .ok_or(rustix::io::Errno::SRCH)
                .and_then(|p| pidfd_open(p, PidfdFlags::empty()))
                .map_err(rio(format!("pidfd of PD '{}'", plan.name)))?;
            self.running.push(Running {
                name: plan.name,
                child,
                pidfd,
                exit: None,
            });
            drop(plan.fds);
        }
        Ok(())
    }

    /// `(pd, pid)` of every started PD.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.running
            .iter()
            .map(|r| (r.name.clone(), r.child.id()))
            .collect()
    }

    /// Page faults PD `pd`'s process has taken so far (minor and major):
    /// each a page the kernel had to map, for guest RAM a page the host
    /// supplied. `None` when it is not running or `/proc` cannot say.
    pub fn page_faults(&self, pd: &str) -> Option<u64> {
        let r = self.running.iter().find(|r| r.name == pd)?;
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", r.child.id())).ok()?;
        faults_in_stat(&stat)
    }

    fn reap(&mut self, i: usize) -> Result<Option<PdExit>, LaunchError> {
        let r = &mut self.running[i];
        if r.exit.is_some() {
            return Ok(None);
        }
        match r
            .child
            .try_wait()
            .map_err(io(format!("waiting for PD '{}'", r.name)))?
        {
            Some(status) => {
                let e = PdExit {
                    pd: r.name.clone(),
                    pid: r.child.id(),
                    status,
                };
                r.exit = Some(e.clone());
                Ok(Some(e))
            }
            None => Ok(None),
        }
    }

    /// Wait up to `timeout` (forever with `None`) for a PD to end or for the
    /// console to match its watch string.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Event, LaunchError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            for i in 0..self.running.len() {
                if let Some(e) = self.reap(i)? {
                    return Ok(Event::Exited(e));
                }
            }
            if let Some(l) = self.console.take_match() {
                return Ok(Event::Matched(l));
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(Event::Timeout),
                },
            };
            let ts = left.map(|l| {
                rustix::time::Timespec::try_from(l).unwrap_or(rustix::time::Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                })
            });
            let mut fds: Vec<PollFd<'_>> = self
                .running
                .iter()
                .filter(|r| r.exit.is_none())
                .map(|r| PollFd::new(&r.pidfd, PollFlags::IN))
                .collect();
            fds.push(PollFd::new(&self.console.watch_event, PollFlags::IN));
            match poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(rio("poll")(e)),
            }
            let mut b = [0u8; 8];
            let _ = rustix::io::read(&self.console.watch_event, &mut b);
        }
    }

    /// Stop every PD still running: SIGTERM, then SIGKILL for those still
    /// alive after `grace`; then read every PD's pipe to its end (for at
    /// most another `grace`), so the console holds every line they wrote.
    /// Returns how each of them ended.
    pub fn stop(&mut self, grace: Duration) -> Vec<PdExit> {
        let mut out = Vec::new();
        for r in self.running.iter().filter(|r| r.exit.is_none()) {
            // Through the pidfd: never a recycled pid.
            let _ = pidfd_send_signal(&r.pidfd, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            for i in 0..self.running.len() {
                if let Ok(Some(e)) = self.reap(i) {
                    out.push(e);
                }
            }
            let alive: Vec<&Running> = self.running.iter().filter(|r| r.exit.is_none()).collect();
            let Some(left) = deadline
                .checked_duration_since(Instant::now())
                .filter(|l| !l.is_zero())
            else {
                break;
            };
            if alive.is_empty() {
                break;
            }
            let mut fds: Vec<PollFd<'_>> = alive
                .iter()
                .map(|r| PollFd::new(&r.pidfd, PollFlags::IN))
                .collect();
            let ts = rustix::time::Timespec::try_from(left).unwrap_or(rustix::time::Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            });
            let _ = poll(&mut fds, Some(&ts));
        }
        for r in self.running.iter_mut().filter(|r| r.exit.is_none()) {
            let _ = pidfd_send_signal(&r.pidfd, Signal::KILL);
            if let Ok(status) = r.child.wait() {
                let e = PdExit {
                    pd: r.name.clone(),
                    pid: r.child.id(),
                    status,
                };
                r.exit = Some(e.clone());
                out.push(e);
            }
        }
        if !self.running.is_empty() && !self.console.drain(grace) {
            eprintln!("launcher: a PD's output pipe stayed open {grace:?} after it ended");
        }
        out
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// `minflt + majflt` of a `/proc/<pid>/stat` line (proc(5): fields 10 and
/// 12). The command name, field 2, is in parentheses and may hold spaces
/// and parentheses itself, so the fields are counted after the last `)`.
fn faults_in_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // `after_name` starts at field 3.
    let field =
        |n: usize| -> Option<u64> { after_name.split_whitespace().nth(n - 3)?.parse().ok() };
    Some(field(10)? + field(12)?)
}

#[cfg(test)]
mod tests {
    use super::faults_in_stat;

    #[test]
    fn faults_are_read_after_the_command_name() {
        // Fields 10 (minflt) = 1234 and 12 (majflt) = 5, a name with a
        // space and a parenthesis in it.
        let stat = "4242 (gu est) x) S 1 4242 4242 0 -1 4194560 1234 0 5 0 7 3 0 0 20 0";
        assert_eq!(faults_in_stat(stat), Some(1239));
        assert_eq!(faults_in_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(faults_in_stat("no name at all"), None);
    }

    #[test]
    fn this_process_has_taken_page_faults() {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let before = faults_in_stat(&stat).expect("parsed");
        // Touch fresh pages: each first write is a fault. 64 MiB is above
        // glibc's largest mmap threshold, so the pages are new.
        let mut v = vec![0u8; 64 << 20];
        for page in v.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&v);
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let after = faults_in_stat(&stat).expect("parsed");
        assert!(after > before, "{before} -> {after}");
    }
}
