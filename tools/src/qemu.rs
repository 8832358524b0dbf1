//! A QEMU runner for the systems this project boots (the seL4 Microkit image
//! now, the bare platform later): the command line per arch with QEMU's
//! virtio-balloon, the serial console captured line by line with bounded
//! waits for exact lines, a small QMP client (`query-balloon`, `balloon`),
//! and the memory timeline of a run: QEMU's RSS sampled from
//! `/proc/<pid>/status`, phase marks parsed from the PDs' console lines.
//!
//! The console contract (the PDs' log lines): `GUEST0|INFO: phase=touched
//! mib=N ...` and the other `phase=` lines of `guest::workload`, and
//! `MEMSERVER|INFO: reported: reported_mib=N ...` when a reporting pass has
//! settled.

use crate::timeline::{Reclaim, Sample, Timeline};
use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// The guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Aarch64,
    X86_64,
}

/// What QEMU boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// A Microkit image: `loader.img` (aarch64: loaded at 0x70000000 and
    /// started there; x86_64: the multiboot module of `kernel`).
    Microkit {
        loader: PathBuf,
        kernel: Option<PathBuf>,
    },
    /// An ELF QEMU boots directly with `-kernel` (the bare platform).
    Kernel(PathBuf),
}

/// QEMU's virtio-balloon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonDevice {
    /// `free-page-reporting=on`.
    pub reporting: bool,
    /// aarch64: `-global virtio-mmio.force-legacy=false` (virtio-mmio v2).
    pub modern_mmio: bool,
}

/// How to start QEMU.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub arch: Arch,
    pub boot: Boot,
    /// Guest RAM; the Microkit kernels are built for 2048.
    pub memory_mib: u32,
    pub balloon: Option<BalloonDevice>,
    /// The QMP socket to create.
    pub qmp: PathBuf,
    /// More arguments, appended.
    pub extra: Vec<OsString>,
}

/// The QEMU command line for `cfg` (DESIGN §4: verified by booting).
pub fn command(cfg: &QemuConfig) -> Command {
    let mut c;
    match cfg.arch {
        Arch::Aarch64 => {
            c = Command::new("qemu-system-aarch64");
            c.args(["-machine", "virt,virtualization=on", "-cpu", "cortex-a53"]);
        }
        Arch::X86_64 => {
            c = Command::new("qemu-system-x86_64");
            // seL4 needs these CPU features; TCG (KVM cannot run it here).
            c.args(["-cpu", "qemu64,+fsgsbase,+pdpe1gb,+xsaveopt,+xsave"]);
        }
    }
    c.args(["-m", &format!("{}M", cfg.memory_mib)]);
    c.args(["-nographic", "-serial", "mon:stdio"]);
    match (&cfg.boot, cfg.arch) {
        (Boot::Microkit { loader, .. }, Arch::Aarch64) => {
            let mut a = OsString::from("loader,file=");
            a.push(loader);
            a.push(",addr=0x70000000,cpu-num=0");
            c.arg("-device").arg(a);
        }
        (Boot::Microkit { loader, kernel }, Arch::X86_64) => {
            if let Some(k) = kernel {
                c.arg("-kernel").arg(k);
            }
            c.arg("-initrd").arg(loader);
        }
        (Boot::Kernel(k), _) => {
            c.arg("-kernel").arg(k);
        }
    }
    if let Some(b) = cfg.balloon {
        let onoff = if b.reporting { "on" } else { "off" };
        match cfg.arch {
            Arch::Aarch64 => {
                if b.modern_mmio {
                    c.args(["-global", "virtio-mmio.force-legacy=false"]);
                }
                c.args([
                    "-device",
                    &format!("virtio-balloon-device,free-page-reporting={onoff},id={BALLOON_ID}"),
                ]);
            }
            Arch::X86_64 => {
                c.args([
                    "-device",
                    &format!("virtio-balloon-pci,free-page-reporting={onoff},id={BALLOON_ID}"),
                ]);
            }
        }
    }
    let mut q = OsString::from("unix:");
    q.push(&cfg.qmp);
    q.push(",server=on,wait=off");
    c.arg("-qmp").arg(q);
    c.args(&cfg.extra);
    c
}

/// A runner failure.
#[derive(Debug)]
pub enum QemuError {
    Spawn(std::io::Error),
    /// QEMU ended (its exit status) before the run did.
    Exited(String),
    Qmp(String),
    Io(PathBuf, std::io::Error),
}

impl fmt::Display for QemuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QemuError::Spawn(e) => write!(f, "starting QEMU: {e}"),
            QemuError::Exited(s) => write!(f, "QEMU exited: {s}"),
            QemuError::Qmp(m) => write!(f, "QMP: {m}"),
            QemuError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for QemuError {}

#[derive(Debug, Default)]
struct ConsoleState {
    lines: Vec<String>,
    partial: Vec<u8>,
    open_streams: usize,
}

/// The serial console, split into lines (`\r` dropped, invalid UTF-8
/// replaced), shared with the reader threads.
#[derive(Debug, Clone, Default)]
pub struct Console {
    inner: Arc<(Mutex<ConsoleState>, Condvar)>,
}

impl Console {
    fn attach(&self, mut r: impl Read + Send + 'static, prefix: &'static str) {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open_streams += 1;
        let me = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut own = Vec::new();
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let (lock, cv) = &*me.inner;
                let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
                // stderr lines are kept apart from the serial's partial line.
                let partial = if prefix.is_empty() {
                    &mut st.partial
                } else {
                    &mut own
                };
                partial.extend_from_slice(&buf[..n]);
                let mut done = Vec::new();
                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    let s = String::from_utf8_lossy(&line);
                    done.push(format!("{prefix}{}", s.trim_end_matches(['\n', '\r'])));
                }
                st.lines.extend(done);
                cv.notify_all();
            }
            let (lock, cv) = &*me.inner;
            let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
            st.open_streams -= 1;
            if st.open_streams == 0 && !st.partial.is_empty() {
                let rest = String::from_utf8_lossy(&st.partial).into_owned();
                st.partial.clear();
                st.lines.push(rest);
            }
            cv.notify_all();
        });
    }

    /// Lines from index `from` on.
    pub fn lines_from(&self, from: usize) -> Vec<String> {
        let st = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        st.lines
            .get(from..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    /// Every line so far.
    pub fn text(&self) -> String {
        self.lines_from(0).join("\n")
    }

    /// Wait at most `timeout` for a line at index `from` or later that
    /// satisfies `pred`; its index and text.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = from;
        loop {
            while next < st.lines.len() {
                if pred(&st.lines[next]) {
                    return Some((next, st.lines[next].clone()));
                }
                next += 1;
            }
            let now = Instant::now();
            if now >= deadline || st.open_streams == 0 {
                return None;
            }
            st = cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wait for a line equal to `line`.
    pub fn wait_line(&self, line: &str, timeout: Duration) -> Option<usize> {
        self.wait_for(0, timeout, |l| l == line).map(|(i, _)| i)
    }
}

/// QEMU's resident set: the host memory it holds (`VmRSS`), in bytes.
pub fn rss(pid: u32) -> std::io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| std::io::Error::other(format!("{path}: no VmRSS")))
}

/// A running QEMU; killed when dropped.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    console: Console,
    qmp_path: PathBuf,
    started: Instant,
}

impl Qemu {
    /// Start QEMU with `cfg`; the console is captured from now on.
    pub fn spawn(cfg: &QemuConfig) -> Result<Qemu, QemuError> {
        let _ = std::fs::remove_file(&cfg.qmp);
        let mut cmd = command(cfg);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(QemuError::Spawn)?;
        let console = Console::default();
        if let Some(out) = child.stdout.take() {
            console.attach(out, "");
        }
        if let Some(err) = child.stderr.take() {
            console.attach(err, "qemu: ");
        }
        Ok(Qemu {
            child,
            console,
            qmp_path: cfg.qmp.clone(),
            started: Instant::now(),
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The console.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// QEMU's RSS in bytes.
    pub fn rss(&self) -> Result<u64, QemuError> {
        rss(self.pid()).map_err(|e| QemuError::Io(format!("/proc/{}", self.pid()).into(), e))
    }

    /// Whether QEMU has ended (and how).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Connect to QEMU's QMP socket (waiting at most `timeout` for QEMU to
    /// create it) and leave capabilities negotiation mode.
    pub fn qmp(&self, timeout: Duration) -> Result<Qmp, QemuError> {
        Qmp::connect(&self.qmp_path, timeout)
    }

    /// Stop QEMU.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.qmp_path);
    }
}

/// The balloon device's `id` on QEMU's command line, so QMP can name it.
pub const BALLOON_ID: &str = "balloon0";

/// The balloon device's QOM path (for `qom-get` / `qom-set`).
pub const BALLOON_QOM_PATH: &str = "/machine/peripheral/balloon0";

/// QEMU's `guest-stats` property of the balloon device: what the driver
/// last published on the stats queue, in bytes (`None`: not published).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// When QEMU last got the stats buffer back (seconds; 0: never).
    pub last_update: u64,
    /// `stat-free-memory`.
    pub free: Option<u64>,
    /// `stat-total-memory`.
    pub total: Option<u64>,
    /// `stat-available-memory`.
    pub available: Option<u64>,
}

/// A QMP connection (one command at a time; events are skipped).
#[derive(Debug)]
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connect to `path` and negotiate (`qmp_capabilities`).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QemuError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(QemuError::Qmp(format!(
                        "connecting to {}: {e}",
                        path.display()
                    )));
                }
                // QEMU creates the socket while it starts: poll for it.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_secs(1))))
            .map_err(|e| QemuError::Qmp(e.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|e| QemuError::Qmp(e.to_string()))?;
        let mut q = Qmp {
            writer,
            reader: BufReader::new(stream),
        };
        let greeting = q.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(QemuError::Qmp(format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read_message(&mut self) -> Result<serde_json::Value, QemuError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| QemuError::Qmp(format!("reading: {e}")))?;
        if n == 0 {
            return Err(QemuError::Qmp("QEMU closed the connection".into()));
        }
        serde_json::from_str(&line).map_err(|e| QemuError::Qmp(format!("bad JSON {line:?}: {e}")))
    }

    /// Run `command` with `arguments`; its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, QemuError> {
        let mut msg = serde_json::json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| QemuError::Qmp(format!("writing: {e}")))?;
        loop {
            let m = self.read_message()?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(QemuError::Qmp(format!("{command}: {e}")));
            }
            // An asynchronous event (e.g. BALLOON_CHANGE): not our answer.
        }
    }

    /// `query-balloon`: the guest's memory size as the driver reports it
    /// (`actual`, bytes).
    pub fn query_balloon(&mut self) -> Result<u64, QemuError> {
        let r = self.execute("query-balloon", None)?;
        r.get("actual")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| QemuError::Qmp(format!("query-balloon answered {r}")))
    }

    /// Ask QEMU to poll the driver's statistics every `secs` seconds
    /// (`guest-stats-polling-interval` of the balloon device; 0: off).
    pub fn set_stats_polling(&mut self, secs: u64) -> Result<(), QemuError> {
        self.execute(
            "qom-set",
            Some(serde_json::json!({
                "path": BALLOON_QOM_PATH,
                "property": "guest-stats-polling-interval",
                "value": secs,
            })),
        )
        .map(|_| ())
    }

    /// The balloon device's `guest-stats`. QEMU says -1 (here `None`) for
    /// a statistic the driver did not publish.
    pub fn guest_stats(&mut self) -> Result<GuestStats, QemuError> {
        let r = self.execute(
            "qom-get",
            Some(serde_json::json!({
                "path": BALLOON_QOM_PATH,
                "property": "guest-stats",
            })),
        )?;
        let stat = |k: &str| {
            r.get("stats")
                .and_then(|s| s.get(k))
                .and_then(|v| v.as_u64())
        };
        Ok(GuestStats {
            last_update: r
                .get("last-update")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| QemuError::Qmp(format!("guest-stats answered {r}")))?,
            free: stat("stat-free-memory"),
            total: stat("stat-total-memory"),
            available: stat("stat-available-memory"),
        })
    }

    /// `balloon`: ask the driver to bring the guest to `bytes`.
    pub fn balloon(&mut self, bytes: u64) -> Result<(), QemuError> {
        self.execute("balloon", Some(serde_json::json!({ "value": bytes })))
            .map(|_| ())
    }
}

/// The PD prefix just before `|` at the end of `head`: the console of two
/// PDs at one priority can interleave mid-line (each character is a
/// DebugPutChar syscall and the kernel may switch between them), so the
/// prefix is the trailing run of `[A-Z0-9_]`, not the line's start.
fn trailing_prefix(head: &str) -> &str {
    let start = head
        .rfind(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .map_or(0, |i| i + 1);
    // A prefix starts with a letter: digits before it belong to the text
    // it cut into (`t_ns=14GUEST1|...`).
    let run = &head[start..];
    let letter = run
        .find(|c: char| c.is_ascii_uppercase())
        .unwrap_or(run.len());
    &run[letter..]
}

/// `line` cut before each `PREFIX|LEVEL:` that does not start it.
pub fn segments(line: &str) -> Vec<&str> {
    let mut starts = vec![0];
    for level in ["|INFO:", "|WARN:", "|ERROR:", "|PANIC:"] {
        for (i, _) in line.match_indices(level) {
            let head = &line[..i];
            let start = head.len() - trailing_prefix(head).len();
            if start > 0 && start < i {
                starts.push(start);
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let mut out = Vec::with_capacity(starts.len());
    for (k, &a) in starts.iter().enumerate() {
        let b = starts.get(k + 1).copied().unwrap_or(line.len());
        out.push(&line[a..b]);
    }
    out
}

/// A guest's `phase=` line: `(guest prefix, phase, mib)`.
pub fn parse_phase(line: &str) -> Option<(&str, &str, Option<u64>)> {
    let (prefix, rest) = line.split_once("|INFO: phase=")?;
    let prefix = trailing_prefix(prefix);
    let mut words = rest.split_whitespace();
    let phase = words.next()?;
    let mib = words
        .find_map(|w| w.strip_prefix("mib="))
        .and_then(|v| v.parse().ok());
    Some((prefix.trim(), phase, mib))
}

/// `reported_mib` of a memserver summary line.
pub fn parse_reported(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("MEMSERVER|INFO: reported: ")?;
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix("reported_mib="))
        .and_then(|v| v.parse().ok())
}

/// The number after `key=` among the words of a log line
/// (`MEMSERVER|INFO: peers: requests=12 errors=3` -> `errors` = 3).
pub fn field(line: &str, key: &str) -> Option<u64> {
    let k = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(k.as_str()))
        .and_then(|v| v.parse().ok())
}

/// The log prefix of a PD line (`MEMSERVER|INFO: ...` -> `MEMSERVER`).
pub fn log_prefix(line: &str) -> Option<&str> {
    let (p, rest) = line.split_once('|')?;
    let level = rest.split([':', '|']).next()?;
    let ok = !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && ["INFO", "WARN", "ERROR", "PANIC"].contains(&level);
    ok.then_some(p)
}

/// What the console said so far, folded.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// PD log prefixes seen, in order of first appearance.
    pub started: Vec<String>,
    /// Bytes each guest holds (by prefix), from its phase lines.
    pub holding: Vec<(String, u64)>,
    /// Bytes the guests freed (sum of `freed`/`freed_half` lines).
    pub freed: u64,
    /// When the guests' first and last frees (of any memory) were seen.
    pub first_free: Option<Duration>,
    pub last_free: Option<Duration>,
    /// Bytes each guest freed in its latest `freed` line (the last round
    /// of a churn), by prefix.
    pub latest_freed: Vec<(String, u64)>,
    /// Bytes the guests keep live the whole run (`live_touched` lines).
    pub live: u64,
    /// The latest `reported_mib`, in bytes.
    pub reported: Option<u64>,
    /// The first `reported_mib` and when: the boot-time free memory.
    pub boot_report: Option<(Duration, u64)>,
    /// Guests that printed `phase=done`, and `phase=verified ok`.
    pub done: Vec<String>,
    pub verified: Vec<String>,
    /// ERROR/PANIC lines and monitor faults.
    pub problems: Vec<String>,
}

impl Observed {
    fn hold(&mut self, guest: &str) -> &mut u64 {
        if let Some(i) = self.holding.iter().position(|(g, _)| g == guest) {
            return &mut self.holding[i].1;
        }
        self.holding.push((guest.to_string(), 0));
        &mut self.holding.last_mut().expect("just pushed").1
    }

    /// Bytes all guests hold.
    pub fn guest_bytes(&self) -> u64 {
        self.holding.iter().map(|(_, b)| b).sum()
    }

    /// Every guest of `guests` (log prefixes) printed `phase=done`.
    pub fn all_done(&self, guests: &[String]) -> bool {
        guests.iter().all(|g| self.done.contains(g))
    }

    /// Every guest of `guests` printed `phase=verified ok`.
    pub fn all_verified(&self, guests: &[String]) -> bool {
        guests.iter().all(|g| self.verified.contains(g))
    }

    /// Fold one console line at time `t`; the phase marks it holds. A line
    /// where PDs interleaved is cut before every `PREFIX|LEVEL:` in it, and
    /// each piece is read on its own.
    pub fn line(&mut self, line: &str, t: Duration) -> Vec<String> {
        segments(line)
            .into_iter()
            .filter_map(|seg| self.segment(seg, t))
            .collect()
    }

    fn segment(&mut self, line: &str, t: Duration) -> Option<String> {
        if let Some(p) = log_prefix(line)
            && !self.started.iter().any(|s| s == p)
        {
            self.started.push(p.to_string());
        }
        if line.contains("|ERROR") || line.contains("|PANIC") {
            self.problems.push(line.to_string());
        }
        if let Some(mib) = parse_reported(line) {
            self.reported = Some(mib * MIB);
            if self.boot_report.is_none() {
                self.boot_report = Some((t, mib * MIB));
                return Some(format!("boot: {mib} MiB free reported"));
            }
            return None;
        }
        let (guest, phase, mib) = parse_phase(line)?;
        let bytes = mib.unwrap_or(0) * MIB;
        match phase {
            "live_touched" => {
                let live = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("live_mib="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                *self.hold(guest) += live * MIB;
                self.live += live * MIB;
                None
            }
            "touched" => {
                *self.hold(guest) += bytes;
                Some(format!("{guest} touched {} MiB", bytes / MIB))
            }
            "freed_half" | "freed" => {
                let h = self.hold(guest);
                *h = h.saturating_sub(bytes);
                self.freed += bytes;
                if phase == "freed" {
                    match self.latest_freed.iter_mut().find(|(g, _)| g == guest) {
                        Some((_, b)) => *b = bytes,
                        None => self.latest_freed.push((guest.to_string(), bytes)),
                    }
                }
                if bytes > 0 {
                    self.first_free.get_or_insert(t);
                    self.last_free = Some(t);
                }
                Some(format!("{guest} freed {} MiB", bytes / MIB))
            }
            "verified" => {
                if line.contains("phase=verified ok") {
                    self.verified.push(guest.to_string());
                }
                None
            }
            "done" => {
                self.done.push(guest.to_string());
                None
            }
            _ => None,
        }
    }
}

/// A run of a memory-reclaiming system in QEMU.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub qemu: QemuConfig,
    /// The guests' log prefixes (`GUEST0`, ...): the run waits for them.
    pub guests: Vec<String>,
    /// Console lines the run waits for as well, by their start (e.g.
    /// `HOSTILE|INFO: done`, the hostile PD of a test variant).
    pub done_lines: Vec<String>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Sampling period.
    pub period: Duration,
    /// After the guests are done, how long RSS must stay put to count as
    /// settled, and at most how long to wait for that.
    pub steady: Duration,
    pub settle: Duration,
    /// Ask the balloon for this guest size (QMP `balloon`) once settled.
    pub balloon_target: Option<u64>,
}

/// The QMP balloon check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonCheck {
    /// `actual` before, the target asked, `actual` at the end (bytes).
    pub before: u64,
    pub target: u64,
    pub after: u64,
    /// Time until `actual` reached the target, if it did.
    pub reached: Option<Duration>,
}

/// What a run showed.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub timeline: Timeline,
    pub observed: Observed,
    /// The RSS fall after the boot-time report (expected: what it reported).
    pub boot: Option<Reclaim>,
    /// The RSS fall after the guests' last free (expected: what they freed).
    pub reclaim: Reclaim,
    pub balloon: Option<BalloonCheck>,
    /// The whole console.
    pub console: String,
    /// Why the run ended early, if it did.
    pub failure: Option<String>,
}

impl RunReport {
    /// Whether the host got the memory back: at least `fraction` of the
    /// boot-time report and of what the guests freed, and the guests
    /// verified their data.
    pub fn memory_came_back(&self, fraction: f64) -> bool {
        self.guests_freed_and_got_back(fraction)
            && self.boot.is_some_and(|b| b.fraction() >= fraction)
    }

    /// The run went through, every guest that finished verified its data,
    /// and `fraction` of what they freed came back.
    fn guests_freed_and_got_back(&self, fraction: f64) -> bool {
        let guests = self.observed.done.len();
        self.failure.is_none()
            && guests > 0
            && self.observed.verified.len() == guests
            && self.observed.freed > 0
            && self.reclaim.fraction() >= fraction
    }

    /// From the boot to the end of the run: how far QEMU's RSS fell, and
    /// what the memserver's first `reported:` line said was free (bytes).
    pub fn whole_run(&self) -> Option<(u64, u64)> {
        let (_, reported) = self.observed.boot_report?;
        let booted = self
            .timeline
            .marks()
            .iter()
            .find(|m| m.label == "booted")
            .and_then(|m| self.timeline.at(m.t))?
            .host;
        let end = self.timeline.samples().last()?.host;
        Some((booted.saturating_sub(end), reported))
    }

    /// As [`Self::memory_came_back`], for runs whose boot-time report and
    /// guest frees are not apart: a hostile PD's frees keep the reporting
    /// worker busy, so the memserver's first `reported:` line (the boot
    /// mark) may come after the guests freed. The guests' frees came back,
    /// and over the whole run RSS fell by `fraction` of what was free.
    pub fn memory_came_back_overall(&self, fraction: f64) -> bool {
        self.guests_freed_and_got_back(fraction)
            && self
                .whole_run()
                .is_some_and(|(back, free)| back as f64 >= fraction * free as f64)
    }

    /// The phase table, the reclaim lines, the balloon check and problems.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = self.timeline.phase_table();
        let _ = writeln!(s);
        if let Some(b) = &self.boot {
            let _ = writeln!(
                s,
                "{}",
                Timeline::reclaim_line("after the boot-time report", b)
            );
        }
        let _ = writeln!(
            s,
            "{}",
            Timeline::reclaim_line("after the guests' last free", &self.reclaim)
        );
        if let Some(b) = &self.balloon {
            let _ = writeln!(
                s,
                "QMP balloon: actual {} MiB -> target {} MiB: actual {} MiB{}",
                b.before / MIB,
                b.target / MIB,
                b.after / MIB,
                b.reached.map_or_else(
                    || " (target NOT reached)".to_string(),
                    |d| format!(", reached after {:.2} s", d.as_secs_f64())
                )
            );
        }
        let _ = writeln!(s, "PDs that logged: {}", self.observed.started.join(", "));
        for p in &self.observed.problems {
            let _ = writeln!(s, "problem: {p}");
        }
        if let Some(f) = &self.failure {
            let _ = writeln!(s, "run failed: {f}");
        }
        s
    }
}

/// The boot-time reclaim: from the highest RSS before the first report
/// until the lowest before the guests' first free (or the end).
fn boot_reclaim(tl: &Timeline, obs: &Observed, end: Option<Duration>) -> Option<Reclaim> {
    let (t, expected) = obs.boot_report?;
    let (peak_t, _) = tl
        .samples()
        .iter()
        .filter(|s| s.t <= t)
        .map(|s| (s.t, s.host))
        .max_by_key(|&(_, h)| h)?;
    Some(tl.reclaim(peak_t, expected, end))
}

/// Boot `cfg.qemu` and follow the run until the guests are done and RSS has
/// settled; `progress` gets a line per sample.
pub fn run(cfg: &RunConfig, progress: &mut dyn FnMut(&str)) -> Result<RunReport, QemuError> {
    let mut qemu = Qemu::spawn(&cfg.qemu)?;
    let start = qemu.started();
    let mut tl = Timeline::new();
    let mut obs = Observed::default();
    let mut seen = 0;
    let mut failure = None;
    let mut done_at: Option<Instant> = None;
    let mut steady_since = Instant::now();
    let mut last_host = 0;
    let mut lines_seen = vec![false; cfg.done_lines.len()];
    loop {
        let t = start.elapsed();
        let lines = qemu.console().lines_from(seen);
        seen += lines.len();
        for l in &lines {
            for label in obs.line(l, t) {
                tl.mark(t, label);
            }
            for (want, seen) in cfg.done_lines.iter().zip(&mut lines_seen) {
                *seen |= segments(l).iter().any(|seg| seg.starts_with(want.as_str()));
            }
            if l == "MON|INFO: Microkit Monitor started!" {
                tl.mark(t, "booted");
            }
            // The Microkit monitor names a PD that faulted; nothing restarts
            // it, so the run cannot succeed: stop now instead of timing out.
            if let Some((_, pd)) = l.split_once("MON|ERROR: faulting PD: ")
                && failure.is_none()
            {
                failure = Some(format!("PD {} faulted (see the MON lines)", pd.trim()));
            }
        }
        if failure.is_some() {
            // The monitor's register dump and diagnosis follow: keep them.
            qemu.console().wait_for(seen, Duration::from_secs(1), |l| {
                l.contains("potential stack overflow") || l.contains("UserException")
            });
            for l in qemu.console().lines_from(seen) {
                obs.line(&l, start.elapsed());
            }
            break;
        }
        if let Some(s) = qemu.exited() {
            failure = Some(format!("QEMU exited ({s})"));
            break;
        }
        let host = qemu.rss()?;
        tl.push(Sample {
            t,
            host,
            guest: Some(obs.guest_bytes()),
            reported: obs.reported,
        });
        progress(&tl.progress_line());
        let all_done = !cfg.guests.is_empty()
            && cfg.guests.iter().all(|g| obs.done.contains(g))
            && lines_seen.iter().all(|s| *s);
        if all_done && done_at.is_none() {
            tl.mark(t, "guests done");
            done_at = Some(Instant::now());
        }
        // RSS counts as settled when it moved less than 1 MiB for `steady`.
        if host.abs_diff(last_host) >= MIB {
            steady_since = Instant::now();
            last_host = host;
        }
        if let Some(d) = done_at
            && (steady_since.elapsed() >= cfg.steady || d.elapsed() >= cfg.settle)
        {
            break;
        }
        if t >= cfg.timeout {
            let missing: Vec<&String> = cfg
                .done_lines
                .iter()
                .zip(&lines_seen)
                .filter(|(_, s)| !**s)
                .map(|(l, _)| l)
                .collect();
            failure = Some(format!(
                "timeout after {:?}: guests done: {:?} of {:?}; lines never seen: {missing:?}",
                cfg.timeout, obs.done, cfg.guests
            ));
            break;
        }
        // The sampling period.
        std::thread::sleep(cfg.period);
    }
    let settled = start.elapsed();
    let mut balloon = None;
    if failure.is_none()
        && let Some(target) = cfg.balloon_target
    {
        match balloon_check(&mut qemu, target, &mut tl, &mut obs, &mut seen) {
            Ok(b) => balloon = Some(b),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let from = obs.last_free.unwrap_or_default();
    let reclaim = tl.reclaim(from, obs.freed, Some(settled));
    let first_touch = tl
        .marks()
        .iter()
        .find(|m| m.label.contains("freed"))
        .map(|m| m.t);
    let boot = boot_reclaim(&tl, &obs, first_touch.or(Some(settled)));
    qemu.kill();
    Ok(RunReport {
        timeline: tl,
        observed: obs,
        boot,
        reclaim,
        balloon,
        console: qemu.console().text(),
        failure,
    })
}

fn balloon_check(
    qemu: &mut Qemu,
    target: u64,
    tl: &mut Timeline,
    obs: &mut Observed,
    seen: &mut usize,
) -> Result<BalloonCheck, QemuError> {
    let mut qmp = qemu.qmp(Duration::from_secs(5))?;
    let before = qmp.query_balloon()?;
    let start = qemu.started();
    let asked = Instant::now();
    tl.mark(start.elapsed(), format!("QMP balloon {} MiB", target / MIB));
    qmp.balloon(target)?;
    let mut after = before;
    let mut reached = None;
    // The driver inflates in steps; give it a bounded time.
    while asked.elapsed() < Duration::from_secs(30) {
        after = qmp.query_balloon()?;
        let t = start.elapsed();
        for l in qemu.console().lines_from(*seen) {
            *seen += 1;
            for label in obs.line(&l, t) {
                tl.mark(t, label);
            }
        }
        tl.push(Sample {
            t,
            host: qemu.rss()?,
            guest: Some(obs.guest_bytes()),
            reported: obs.reported,
        });
        if after <= target {
            reached = Some(asked.elapsed());
            break;
        }
        qemu.console()
            .wait_for(*seen, Duration::from_millis(250), |_| true);
    }
    Ok(BalloonCheck {
        before,
        target,
        after,
        reached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_follow_the_verified_ones() {
        let cfg = QemuConfig {
            arch: Arch::Aarch64,
            boot: Boot::Microkit {
                loader: "/b/loader.img".into(),
                kernel: None,
            },
            memory_mib: 2048,
            balloon: Some(BalloonDevice {
                reporting: true,
                modern_mmio: true,
            }),
            qmp: "/t/q.sock".into(),
            extra: vec![],
        };
        let args: Vec<String> = command(&cfg)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert!(line.contains("-machine virt,virtualization=on -cpu cortex-a53 -m 2048M"));
        assert!(line.contains("-device loader,file=/b/loader.img,addr=0x70000000,cpu-num=0"));
        assert!(line.contains("-global virtio-mmio.force-legacy=false -device virtio-balloon-device,free-page-reporting=on"));
        assert!(line.ends_with("-qmp unix:/t/q.sock,server=on,wait=off"));
        let x86 = QemuConfig {
            arch: Arch::X86_64,
            boot: Boot::Microkit {
                loader: "/b/loader.img".into(),
                kernel: Some("/b/sel4_32.elf".into()),
            },
            ..cfg
        };
        let c = command(&x86);
        assert_eq!(c.get_program(), "qemu-system-x86_64");
        let line: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = line.join(" ");
        assert!(line.contains("-kernel /b/sel4_32.elf -initrd /b/loader.img"));
        assert!(line.contains("-device virtio-balloon-pci,free-page-reporting=on"));
        assert!(!line.contains("force-legacy"));
    }

    #[test]
    fn phase_lines_are_parsed() {
        assert_eq!(
            parse_phase("GUEST0|INFO: phase=touched mib=256 blocks=64 t_ns=5"),
            Some(("GUEST0", "touched", Some(256)))
        );
        assert_eq!(
            parse_phase("GUEST1|INFO: phase=done allocs=3 t_ns=1"),
            Some(("GUEST1", "done", None))
        );
        assert_eq!(parse_phase("MEMSERVER|INFO: ready"), None);
    }

    #[test]
    fn console_lines_are_folded_into_marks_and_holdings() {
        let mut o = Observed::default();
        let t = Duration::from_secs(1);
        assert!(o.line("MEMSERVER|INFO: ready, 2 clients", t).is_empty());
        let m = o.line(
            "MEMSERVER|INFO: reported: reported_mib=990 free_mib=1000 allocated_mib=16 batches_ok=3 batches_failed=0",
            t,
        );
        assert_eq!(m, ["boot: 990 MiB free reported"]);
        assert_eq!(o.boot_report, Some((t, 990 * MIB)));
        o.line(
            "GUEST0|INFO: phase=live_touched live_mib=8 blocks=2 t_ns=1",
            t,
        );
        let m = o.line("GUEST0|INFO: phase=touched mib=64 blocks=16 t_ns=1", t);
        assert_eq!(m, ["GUEST0 touched 64 MiB"]);
        assert_eq!(o.guest_bytes(), 72 * MIB);
        o.line("GUEST0|INFO: phase=freed mib=64 blocks=16 t_ns=1", t);
        assert_eq!((o.guest_bytes(), o.freed), (8 * MIB, 64 * MIB));
        assert_eq!(
            (o.first_free, o.last_free, o.live),
            (Some(t), Some(t), 8 * MIB)
        );
        let both = ["GUEST0".to_string(), "GUEST1".to_string()];
        assert!(!o.all_done(&both[..1]));
        o.line(
            "GUEST0|INFO: phase=verified ok live_mib=8 bad_pages=0 t_ns=1",
            t,
        );
        o.line("GUEST0|INFO: phase=done allocs=1 t_ns=1", t);
        assert!(o.all_done(&both[..1]) && o.all_verified(&both[..1]));
        assert!(!o.all_done(&both));
        o.line("GUEST1|ERROR: phase=failed reason=\"x\" t_ns=0", t);
        // Interleaved output of two PDs still counts for the right one.
        let m = o.line(
            "GUEST1|ERROR: mGUEST0|INFO: phase=touched mib=4 blocks=1 t_ns=1",
            t,
        );
        assert_eq!(m, ["GUEST0 touched 4 MiB"]);
        // Two lines run together: both count.
        o.line(
            "GUEST1|INFO: phase=verified ok live_mib=0 bad_pages=0 t_ns=14GUEST1|INFO: phase=done allocs=0 t_ns=1",
            t,
        );
        assert_eq!(o.started, ["MEMSERVER", "GUEST0", "GUEST1"]);
        assert_eq!(
            (o.done.len(), o.verified.len(), o.problems.len()),
            (2, 2, 2)
        );
        // The second report is a sample, not a mark.
        assert!(
            o.line("MEMSERVER|INFO: reported: reported_mib=1050 free_mib=1 allocated_mib=1 batches_ok=1 batches_failed=0", t)
                .is_empty()
        );
        assert_eq!(o.reported, Some(1050 * MIB));
    }

    #[test]
    fn interleaved_lines_are_cut_at_each_prefix() {
        assert_eq!(
            segments("GUEST0|INFO: phase=done t_ns=14GUEST1|INFO: phase=done t_ns=1"),
            [
                "GUEST0|INFO: phase=done t_ns=14",
                "GUEST1|INFO: phase=done t_ns=1"
            ]
        );
        assert_eq!(
            segments("MON|INFO: Microkit Monitor started!"),
            ["MON|INFO: Microkit Monitor started!"]
        );
        assert_eq!(segments("x|INFO: y"), ["x|INFO: y"]);
        assert_eq!(segments(""), [""]);
    }

    #[test]
    fn log_prefixes_are_recognised_strictly() {
        assert_eq!(log_prefix("TIMER|INFO: started"), Some("TIMER"));
        assert_eq!(log_prefix("GUEST1|PANIC: x"), Some("GUEST1"));
        assert_eq!(log_prefix("LDR|INFO|CPU0: x"), Some("LDR"));
        assert_eq!(log_prefix("a|INFO: lower case"), None);
        assert_eq!(
            log_prefix("GUEST1|INFO: phase=staGUEST0|INFO: x"),
            Some("GUEST1")
        );
        assert_eq!(log_prefix("no bar"), None);
    }

    #[test]
    fn console_waits_for_exact_lines_with_a_bound() {
        let c = Console::default();
        let (r, mut w) = std::io::pipe().unwrap();
        c.attach(r, "");
        w.write_all(b"first\r\nMON|INFO: Microkit Monitor started!\npart")
            .unwrap();
        assert_eq!(
            c.wait_line(
                "MON|INFO: Microkit Monitor started!",
                Duration::from_secs(5)
            ),
            Some(1)
        );
        assert_eq!(c.wait_line("never", Duration::from_millis(50)), None);
        w.write_all(b"ial\n").unwrap();
        drop(w);
        assert_eq!(c.wait_line("partial", Duration::from_secs(5)), Some(2));
        assert_eq!(c.lines_from(0)[0], "first");
    }

    #[test]
    fn rss_of_this_process_is_plausible() {
        let r = rss(std::process::id()).unwrap();
        assert!(r > 1 << 20 && r < 1 << 40, "{r}");
    }
}
