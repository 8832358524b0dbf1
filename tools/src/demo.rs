//! `tools demo`: the whole system on the host platform (DESIGN §5.2).
//!
//! The PDs of `system.xml` run as Linux processes under the launcher; guest
//! RAM is one memfd per guest; the balloon PD drives a virtio-balloon device
//! model running on a thread of this process, which discards reported ranges
//! with `fallocate(PUNCH_HOLE)` as QEMU does. The guests touch memory, free
//! it, and the memory the host holds for guest RAM (the memfds' allocated
//! blocks) falls once the memserver has reported it.
//!
//! Sources of the timeline: the memfds' `st_blocks` (host memory), the device
//! model's counters (bytes reported), and the guests' `phase=` console lines
//! (memory the guests hold, phase marks).

use crate::control_socket::{Client, ControlSocket};
use crate::host::{ControlConsole, Launcher};
use crate::qemu::Observed;
use crate::timeline::{Reclaim, Sample, Timeline};
use balloon::model::DeviceConfig;
use balloon::model::host::{HostDevice, Memfd};
pub use guest::params::Pattern;
use memserver_api::TunableKey;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The system description.
    pub system: PathBuf,
    /// Where the PDs' host binaries are.
    pub bin_dir: PathBuf,
    /// Guest workload, `GUEST_PARAMS` text (see `guest::params`).
    pub guest_params: String,
    /// Memserver tunables, `MEMSERVER_TUNABLES` text (see
    /// `memserver::params`).
    pub tunables: String,
    /// Give up after this long.
    pub timeout: Duration,
    /// Sampling period.
    pub period: Duration,
    /// After the guests are done, wait at most this long for the host
    /// memory to settle.
    pub settle: Duration,
    /// The balloon device the model plays (QEMU's by default; see
    /// `DeviceConfig::profiles` for other VMMs' shapes).
    pub device: DeviceConfig,
    /// Keep sampling until this long after the first free, even when the
    /// memory looks settled (to see how much comes back in the end).
    pub watch: Option<Duration>,
    /// Tunables to change while the system runs, through the memserver's
    /// control port (the description must have one).
    pub set_tunables: Vec<TunableChange>,
    /// Listen here for changes typed while the system runs (`tools
    /// tunable`; see [`crate::control_socket`]), passed to the same port.
    pub control_socket: Option<PathBuf>,
}

impl DemoConfig {
    /// The first option that needs the memserver's control port, if any.
    fn control_port_wanted_by(&self) -> Option<&'static str> {
        if !self.set_tunables.is_empty() {
            Some("--set-tunable")
        } else if self.control_socket.is_some() {
            Some("--control-socket")
        } else {
            None
        }
    }
}

/// A tunable change at a time of the run: `SECS:key=value` on the command
/// line (`tools demo --set-tunable 3:delay_ms=250`), `policy` by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunableChange {
    /// When, from the start of the PDs.
    pub after: Duration,
    /// Which tunable.
    pub key: TunableKey,
    /// Its value, in the unit its name says (`policy`: 0 linux, 1 adaptive).
    pub value: u64,
}

impl std::str::FromStr for TunableChange {
    type Err = String;

    fn from_str(text: &str) -> Result<TunableChange, String> {
        let (at, pair) = text
            .split_once(':')
            .ok_or_else(|| format!("'{text}' is not SECS:key=value"))?;
        let secs: f64 = at
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
            .ok_or_else(|| format!("'{at}' is not a time in seconds (0 to 86400)"))?;
        let (key, value) = parse_tunable_pair(pair)?;
        Ok(TunableChange {
            after: Duration::from_secs_f64(secs),
            key,
            value,
        })
    }
}

/// One `key=value` as the control port takes it (`policy` by name); the
/// range is the memserver's to check (`memserver_api::parse_tunable_pair`,
/// the parser every console shares).
pub fn parse_tunable_pair(pair: &str) -> Result<(TunableKey, u64), String> {
    memserver_api::parse_tunable_pair(pair).map_err(|e| e.to_string())
}

/// Take the memserver's answers that arrived, in order: each goes to
/// the client that asked (a typed change; `None` in `askers` for
/// `set_tunables`) and onto `answers`. Returns how many came.
fn take_answers(
    console: &mut ControlConsole,
    askers: &mut VecDeque<Option<Client>>,
    mut socket: Option<&mut ControlSocket>,
    answers: &mut Vec<String>,
) -> Result<usize, String> {
    let arrived = console.answers().map_err(|e| e.to_string())?;
    for a in &arrived {
        let line = a.to_string();
        if let (Some(Some(client)), Some(s)) = (askers.pop_front(), socket.as_deref_mut()) {
            s.reply(client, &line);
        }
        answers.push(line);
    }
    Ok(arrived.len())
}

/// What happened.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Samples and phase marks.
    pub timeline: Timeline,
    /// Bytes the guests freed (sum of their `phase=freed` lines).
    pub freed: u64,
    /// Bytes the guests keep for the whole run (live sets).
    pub live: u64,
    /// How the host memory fell from the first free on (the guests' frees
    /// may be staggered; measuring from the last would miss what came back
    /// before it).
    pub reclaim: Reclaim,
    /// Bytes the device model discarded in all.
    pub discarded: u64,
    /// Reported ranges the device skipped (outside guest RAM).
    pub skipped: u64,
    /// Whether every guest verified its live data and finished.
    pub guests_ok: bool,
    /// The guests' pattern: what they do decides what the verdict expects.
    pub pattern: Pattern,
    /// Bytes the guests freed in their last `freed` phase (the last round
    /// of a churn; everything for bulk).
    pub last_freed: u64,
    /// Bytes the host held for guest RAM at the end.
    pub host_end: u64,
    /// Page faults the guests' processes took over the run, read just
    /// before they were stopped: each a page of guest RAM the host had to
    /// supply, first touches and what reporting made them fault in again
    /// alike. `None` when a guest's could not be read.
    pub guest_faults: Option<u64>,
    /// The memserver's answers to [`DemoConfig::set_tunables`], in order
    /// (`delay_ms=250 set`, `order=11 refused: value out of range`).
    pub control: Vec<String>,
    /// Error and warning lines of the PDs, and PD exits.
    pub problems: Vec<String>,
    /// Every console line of every PD.
    pub console: Vec<String>,
}

impl DemoReport {
    /// The demo's verdict: the host got back at least `fraction` of what the
    /// guests freed, and nothing a guest still owned was lost.
    pub fn memory_came_back(&self, fraction: f64) -> bool {
        self.guests_ok && self.freed > 0 && self.fraction_back() >= fraction
    }

    /// The fraction of the freed memory that came back, as fits the
    /// pattern. Bulk and fragmented free once and keep it free: the host
    /// memory falls by what they freed, measured from the first free.
    /// Churn frees and allocates again each round, so memory freed in an
    /// early round is rightly taken back by the next one and can never stay
    /// with the host: what must come back is what the last round freed,
    /// i.e. at the end the host holds no more than the live sets plus the
    /// part of the last round's frees that did not come back.
    pub fn fraction_back(&self) -> f64 {
        match self.pattern {
            Pattern::Bulk | Pattern::Fragmented | Pattern::Trace => self.reclaim.fraction(),
            Pattern::Churn => {
                if self.last_freed == 0 {
                    return 0.0;
                }
                let kept = self.host_end.saturating_sub(self.live);
                1.0 - (kept as f64 / self.last_freed as f64).min(1.0)
            }
        }
    }

    /// A text summary: the phase table and the reclaim line.
    pub fn summary(&self) -> String {
        let mut s = self.timeline.phase_table();
        match self.pattern {
            Pattern::Bulk | Pattern::Fragmented | Pattern::Trace => {
                let _ = writeln!(
                    s,
                    "\n{}",
                    Timeline::reclaim_line("from the first free", &self.reclaim)
                );
            }
            Pattern::Churn => {
                let _ = writeln!(
                    s,
                    "\nchurn: the last round freed {:.1} MiB; at the end the host holds {:.1} MiB beyond the live sets: {:.1} % came back",
                    self.last_freed as f64 / MIB as f64,
                    self.host_end.saturating_sub(self.live) as f64 / MIB as f64,
                    self.fraction_back() * 100.0
                );
            }
        }
        let _ = writeln!(
            s,
            "device: {:.1} MiB discarded, {} ranges skipped; guests freed {:.1} MiB, kept {:.1} MiB live: {}",
            self.discarded as f64 / MIB as f64,
            self.skipped,
            self.freed as f64 / MIB as f64,
            self.live as f64 / MIB as f64,
            if self.guests_ok {
                "verified"
            } else {
                "NOT verified"
            }
        );
        for p in &self.problems {
            let _ = writeln!(s, "problem: {p}");
        }
        s
    }
}

/// The directory of this executable, with the PDs' host binaries built
/// there (same target dir, same profile) from the description `system`
/// (the workspace's system.xml when `None`) unless `build` is false: how
/// `tools demo` and `tools bench` find them.
pub fn pds_next_to_this_binary(
    workspace: &Path,
    build: bool,
    system: Option<&Path>,
) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let bin_dir = exe
        .parent()
        .ok_or("this executable has no directory")?
        .to_path_buf();
    if build {
        let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(p) => p,
            None => "release",
        };
        let target_dir = bin_dir.parent().ok_or("no target directory")?;
        eprintln!(
            "building the PDs ({profile}) from {}",
            system.map_or_else(|| "system.xml".into(), |s| s.display().to_string())
        );
        build_pds_from(workspace, target_dir, profile, system)?;
    }
    Ok(bin_dir)
}

/// Build the PDs' host binaries into `target_dir` with `profile`, with
/// cargo's own progress on the terminal.
pub fn build_pds(workspace: &Path, target_dir: &Path, profile: &str) -> Result<(), String> {
    build_pds_from(workspace, target_dir, profile, None)
}

/// As [`build_pds`], from the description `system` (`SYSTEM_XML`) instead
/// of the workspace's system.xml when given.
pub fn build_pds_from(
    workspace: &Path,
    target_dir: &Path,
    profile: &str,
    system: Option<&Path>,
) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    if let Some(s) = system {
        // The build scripts run in the crates' directories: an absolute path.
        let s = std::path::absolute(s).map_err(|e| format!("{}: {e}", s.display()))?;
        cmd.env("SYSTEM_XML", s);
    } else {
        // Not whatever the caller's environment says: the workspace's.
        cmd.env_remove("SYSTEM_XML");
    }
    // The host PDs take their tunables at run time (the launcher sets
    // MEMSERVER_TUNABLES for them); none are built in.
    cmd.env_remove("MEMSERVER_TUNABLES");
    let status = cmd
        .current_dir(workspace)
        .args(["build", "--profile", profile, "--bins"])
        .args([
            "-p",
            "memserver",
            "-p",
            "balloon",
            "-p",
            "timer",
            "-p",
            "console",
            "-p",
            "guest",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the PDs failed ({status})"));
    }
    Ok(())
}

fn system(cfg: &DemoConfig) -> Result<sdf::System, String> {
    let xml = std::fs::read_to_string(&cfg.system)
        .map_err(|e| format!("{}: {e}", cfg.system.display()))?;
    sdf::System::parse(&xml).map_err(|e| format!("{}:{e}", cfg.system.display()))
}

/// Refuse a configuration the PDs would refuse, before anything starts: the
/// memserver's tunables and the guests' workload (parsed by the PDs' own
/// parsers), and whether each guest's workload fits its RAM region. A PD
/// that refused its parameters after the launch would leave the demo
/// waiting for its timeout.
pub fn check(cfg: &DemoConfig) -> Result<(), String> {
    memserver::params::parse_tunables(&cfg.tunables)
        .map_err(|e| format!("memserver tunables '{}': {e}", cfg.tunables))?;
    let params = guest::params::Params::parse(&cfg.guest_params)
        .map_err(|e| format!("guest parameters '{}': {e}", cfg.guest_params))?;
    let sys = system(cfg)?;
    for g in guests_of(cfg, &sys)? {
        params
            .check_fits(g.ram.size)
            .map_err(|e| format!("{}: {e}", g.pd.name))?;
    }
    if let Some(flag) = cfg.control_port_wanted_by()
        && crate::host::port_irq(&sys).is_none()
    {
        return Err(format!(
            "{flag}: {}: {}",
            cfg.system.display(),
            crate::host::ControlError::NoPort
        ));
    }
    Ok(())
}

/// The guests' PD names, in description order.
pub fn guest_names(cfg: &DemoConfig) -> Result<Vec<String>, String> {
    let sys = system(cfg)?;
    Ok(guests_of(cfg, &sys)?
        .iter()
        .map(|g| g.pd.name.clone())
        .collect())
}

/// The guests of the description (`sdf::guests`: any number, at least one).
fn guests_of<'s>(
    cfg: &DemoConfig,
    sys: &'s sdf::System,
) -> Result<Vec<sdf::guests::Guest<'s>>, String> {
    sdf::guests::guests(sys).map_err(|e| format!("{}: {e}", cfg.system.display()))
}

/// Run the demo; `progress` gets a line per sample (for a live display).
/// A configuration [`check`] refuses is refused before anything starts.
pub fn run(cfg: &DemoConfig, progress: &mut dyn FnMut(&str)) -> Result<DemoReport, String> {
    check(cfg)?;
    let sys = system(cfg)?;
    let guests_in = guests_of(cfg, &sys)?;
    let guest_pds: Vec<String> = guests_in.iter().map(|g| g.pd.name.clone()).collect();
    let (names, rams): (Vec<String>, Vec<String>) = guests_in
        .iter()
        .map(|g| (g.pd.name.to_uppercase(), g.ram.name.clone()))
        .unzip();
    let mut launcher =
        Launcher::new(sys, &cfg.bin_dir, false).map_err(|e| format!("launcher: {e}"))?;
    launcher
        .check_built_from(&cfg.system)
        .map_err(|e| format!("launcher: {e}"))?;
    // How the host platform passes the PDs their workload and tunables.
    launcher.set_env("GUEST_PARAMS", &cfg.guest_params);
    launcher.set_env("MEMSERVER_TUNABLES", &cfg.tunables);

    // The device side: the register page, the balloon's DMA memory and the
    // guests' RAM, through the launcher's memfds. Started before the PDs so
    // the register page is ready when the driver looks.
    let memfd = |name: &str| -> Result<Memfd<'_>, String> {
        let fd = launcher
            .region_fd(name)
            .ok_or_else(|| format!("system.xml has no region '{name}'"))?;
        let paddr = launcher
            .region_paddr(name)
            .ok_or_else(|| format!("no paddr for '{name}'"))?;
        let len = launcher
            .system()
            .region(name)
            .map(|r| r.size as usize)
            .ok_or_else(|| format!("no size for '{name}'"))?;
        Ok(Memfd { fd, paddr, len })
    };
    let irq = launcher
        .irq_line("balloon", 0)
        .map_err(|e| format!("balloon irq: {e}"))?;
    let ram = rams
        .iter()
        .map(|r| memfd(r))
        .collect::<Result<Vec<_>, _>>()?;
    let mut device = HostDevice::start(
        memfd("virtio_mmio")?.fd,
        memfd("balloon_dma")?,
        &ram,
        Box::new(move || {
            let _ = irq.raise();
        }),
        cfg.device,
    )
    .map_err(|e| format!("starting the device model: {e}"))?;
    drop(ram);

    // The operator's console, opened before the PDs start so that no
    // change waits on it.
    let mut control = match cfg.control_port_wanted_by() {
        None => None,
        Some(_) => Some(ControlConsole::open(&launcher).map_err(|e| e.to_string())?),
    };
    let mut socket = match &cfg.control_socket {
        Some(path) => Some(ControlSocket::bind(path)?),
        None => None,
    };
    let mut changes = cfg.set_tunables.clone();
    changes.sort_by_key(|c| c.after);
    let mut changes = changes.into_iter().peekable();
    let mut answers = Vec::new();
    // Who asked for each change still unanswered, in the port's order:
    // `None` for `set_tunables`, a socket client otherwise.
    let mut askers = VecDeque::new();

    launcher.start().map_err(|e| format!("launcher: {e}"))?;
    let console = launcher.console();

    let start = Instant::now();
    let mut timeline = Timeline::new();
    // The guests' phase lines, folded as the QEMU runner does.
    let mut guests = Observed::default();
    let mut seen = 0;
    let mut problems = Vec::new();
    let mut done_at: Option<Instant> = None;
    let mut last_host = u64::MAX;
    let mut steady = 0;
    loop {
        let t = start.elapsed();
        let lines = console.lines();
        for line in &lines[seen..] {
            for label in guests.line(line, t) {
                timeline.mark(t, label);
            }
            if line.contains("|ERROR") || line.contains("|stderr") || line.contains("|WARN") {
                problems.push(line.clone());
            }
        }
        seen = lines.len();
        if let Some(c) = control.as_mut() {
            while let Some(change) = changes.next_if(|c| c.after <= t) {
                c.set(change.key, change.value)
                    .map_err(|e| format!("setting {}: {e}", change.key.name()))?;
                askers.push_back(None);
            }
            if let Some(s) = socket.as_mut() {
                for (client, line) in s.poll() {
                    // A typed request that cannot reach the memserver is the
                    // client's error, never the run's.
                    let sent = parse_tunable_pair(&line)
                        .and_then(|(key, value)| c.set(key, value).map_err(|e| e.to_string()));
                    match sent {
                        Ok(()) => askers.push_back(Some(client)),
                        Err(e) => s.reply(client, &format!("error: {e}")),
                    }
                }
            }
            let new = take_answers(c, &mut askers, socket.as_mut(), &mut answers)?;
            for line in &answers[answers.len() - new..] {
                timeline.mark(t, line);
            }
        }
        let host: u64 = device.held_bytes().unwrap_or(0);
        let counters = device.counters();
        timeline.push(Sample {
            t,
            host,
            guest: Some(guests.guest_bytes()),
            reported: Some(counters.bytes_discarded),
        });
        progress(&timeline.progress_line());

        if guests.all_done(&names) && done_at.is_none() {
            timeline.mark(t, "guests done");
            done_at = Some(Instant::now());
        }
        // Settled: the guests are done and the host memory has stopped
        // falling for a second (or the settle time ran out).
        if let Some(d) = done_at {
            steady = if host == last_host { steady + 1 } else { 0 };
            let steady_for = cfg.period * steady;
            let watched = match (cfg.watch, guests.first_free) {
                (Some(w), Some(f)) => t >= f + w,
                _ => true,
            };
            if watched
                && ((steady_for >= Duration::from_secs(1)
                    && host <= guests.live + guests.freed / 20)
                    || d.elapsed() >= cfg.settle)
            {
                break;
            }
        }
        last_host = host;
        if t >= cfg.timeout {
            problems.push(format!("timeout after {:?}", cfg.timeout));
            break;
        }
        // Wait one period, or less if a PD ends.
        match launcher.wait(Some(cfg.period)) {
            Ok(crate::host::Event::Exited(exit)) => {
                problems.push(exit.to_string());
                break;
            }
            Ok(_) => {}
            Err(e) => {
                problems.push(format!("launcher: {e}"));
                break;
            }
        }
    }
    if let Some(c) = control.as_mut() {
        take_answers(c, &mut askers, socket.as_mut(), &mut answers)?;
    }
    for late in changes {
        problems.push(format!(
            "tunable change {} at {:?} not sent: the run ended first",
            late.key.pair(late.value),
            late.after
        ));
    }
    let guest_faults = guest_pds
        .iter()
        .map(|pd| launcher.page_faults(pd))
        .sum::<Option<u64>>();
    let exits = launcher.stop(Duration::from_secs(2));
    let counters = device.counters();
    device.stop();
    for e in exits {
        use std::os::unix::process::ExitStatusExt;
        // The launcher stops PDs with SIGTERM (then SIGKILL): not a problem.
        let stopped = matches!(e.status.signal(), Some(libc::SIGTERM | libc::SIGKILL));
        if !stopped && !e.status.success() {
            problems.push(e.to_string());
        }
    }
    let pattern = guest::params::Params::parse(&cfg.guest_params)
        .map_err(|e| e.to_string())?
        .pattern;
    let host_end = timeline.samples().last().map_or(0, |s| s.host);
    let from = guests.first_free.unwrap_or_default();
    let reclaim = timeline.reclaim(from, guests.freed, None);
    Ok(DemoReport {
        timeline,
        freed: guests.freed,
        live: guests.live,
        reclaim,
        discarded: counters.bytes_discarded,
        skipped: counters.ranges_skipped,
        guests_ok: guests.all_done(&names) && guests.all_verified(&names),
        pattern,
        last_freed: guests.latest_freed.iter().map(|(_, b)| b).sum(),
        host_end,
        guest_faults,
        problems,
        control: answers,
        console: console.lines(),
    })
}
