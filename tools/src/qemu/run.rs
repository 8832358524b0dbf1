//! A run of a memory-reclaiming system in QEMU: boot it, follow the PDs'
//! lines (console or log pages) and QEMU's RSS until the guests are done
//! and RSS settled, check the balloon through QMP, and report.

use super::{GuestStats, Observed, Qemu, QemuConfig, QemuError, Qmp, log_prefix, segments};
use crate::image::LogPage;
use crate::log_pages::LogPoller;
use crate::timeline::{Reclaim, Sample, Timeline};
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A run of a memory-reclaiming system in QEMU.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub qemu: QemuConfig,
    /// The guests' log prefixes (`GUEST0`, ...): the run waits for them.
    pub guests: Vec<String>,
    /// Console lines the run waits for as well, by their start (e.g.
    /// `HOSTILE|INFO: done`, the hostile PD of a test variant).
    pub done_lines: Vec<String>,
    /// Console lines that mark the timeline when first seen (a needle the
    /// line contains, and the mark's label): a VM's boot, say.
    pub console_marks: Vec<(String, String)>,
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
    /// Then, once that target was reached, ask for this size (the
    /// balloon deflating back).
    pub balloon_back: Option<u64>,
    /// And then wait (bounded) for a PD line containing this: the guest
    /// side settled after the balloon came back (a VM deflates at its own
    /// pace, after the outer balloon did).
    pub balloon_back_line: Option<String>,
    /// The PDs' log pages (`tools image`): when there are any, the PDs'
    /// lines are read from them through QMP instead of from the console,
    /// so a release kernel (no console) is followed like a debug one.
    pub log_pages: Vec<LogPage>,
    /// Lines typed on the serial line once the console PD says it is
    /// ready ([`CONSOLE_READY`]), in order.
    pub console_lines: Vec<String>,
    /// And every line of this process's standard input, from then on
    /// (`tools qemu`: the operator types `tunable delay_ms=250` where the
    /// run shows its progress).
    pub console_stdin: bool,
}

/// The console PD's line once it takes input.
pub const CONSOLE_READY: &str = "CONSOLE|INFO: ready";

/// This process's standard input, a line at a time, read on a thread of
/// its own (a read blocks; the run does not).
fn stdin_lines() -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
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
    /// The check of [`RunConfig::balloon_back`].
    pub balloon_back: Option<BalloonCheck>,
    /// The whole console.
    pub console: String,
    /// The PDs' log lines the run was judged by: from their log pages when
    /// the image has them, else the console.
    pub log: String,
    /// QMP's `guest-stats` of the balloon once the run settled.
    pub guest_stats: Option<GuestStats>,
    /// Why the run ended early, if it did.
    pub failure: Option<String>,
}

impl RunReport {
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

    /// The phase table, the reclaim lines, the balloon check and problems.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let mut s = self.timeline.phase_table();
        let _ = writeln!(s);
        if let Some(b) = &self.boot {
            let after_frees = matches!(
                (self.observed.first_free, self.observed.boot_report),
                (Some(f), Some((r, _))) if f < r
            );
            let label = if after_frees {
                "after the first report (the guests' frees with it)"
            } else {
                "after the boot-time report"
            };
            let _ = writeln!(s, "{}", Timeline::reclaim_line(label, b));
        }
        let _ = writeln!(
            s,
            "{}",
            Timeline::reclaim_line("after the guests' last free", &self.reclaim)
        );
        for b in self.balloon.iter().chain(&self.balloon_back) {
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
        if let Some(g) = &self.guest_stats {
            let mib = |k: &str| {
                g.get(k)
                    .map_or_else(|| "-".into(), |v| format!("{:.1}", v as f64 / MIB as f64))
            };
            let _ = writeln!(
                s,
                "QMP guest-stats: total {} MiB, free {} MiB, available {} MiB{}",
                mib("stat-total-memory"),
                mib("stat-free-memory"),
                mib("stat-available-memory"),
                if g.last_update == 0 {
                    " (never updated)"
                } else {
                    ""
                }
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

/// Where a run's PD lines come from (the console, or the log pages), and
/// the run's one QMP connection (QEMU serves one client per socket).
struct Follow {
    /// Console lines read so far.
    seen: usize,
    pages: Option<LogPoller>,
    qmp: Qmp,
    /// The PD lines, in the order they were read.
    log: Vec<String>,
}

impl Follow {
    fn new(qemu: &Qemu, cfg: &RunConfig) -> Result<Follow, QemuError> {
        let pages = (!cfg.log_pages.is_empty()).then(|| {
            let dir = cfg.qemu.qmp.parent().unwrap_or(Path::new("."));
            LogPoller::new(&cfg.log_pages, dir)
        });
        Ok(Follow {
            seen: 0,
            pages,
            qmp: qemu.qmp(Duration::from_secs(10))?,
            log: Vec::new(),
        })
    }

    /// New console lines, and new PD lines (the log pages' when there are
    /// any, else the same console lines).
    fn next(&mut self, qemu: &Qemu) -> Result<(Vec<String>, Vec<String>), QemuError> {
        let console = qemu.console().lines_from(self.seen);
        self.seen += console.len();
        let pd = match &mut self.pages {
            Some(poller) => poller.poll(&mut self.qmp)?,
            None => console.clone(),
        };
        self.log.extend(pd.iter().cloned());
        Ok((console, pd))
    }

    /// Problems with the log pages (overruns, rewrites).
    fn problems(&self) -> &[String] {
        self.pages.as_ref().map_or(&[], |p| p.problems())
    }
}

/// How often QEMU asks the driver for statistics during a run.
const STATS_POLL_S: u64 = 1;

/// The balloon's statistics at the end of a run: wait (bounded) for an
/// update newer than `since` (seconds since the epoch), so they describe
/// the settled system.
fn settled_guest_stats(qmp: &mut Qmp, since: u64) -> Result<GuestStats, QemuError> {
    let deadline = Instant::now() + Duration::from_secs(3 * STATS_POLL_S + 2);
    loop {
        let s = qmp.guest_stats()?;
        if s.last_update > since || Instant::now() >= deadline {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn epoch_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Boot `cfg.qemu` and follow the run until the guests are done and RSS has
/// settled; `progress` gets a line per sample.
pub fn run(cfg: &RunConfig, progress: &mut dyn FnMut(&str)) -> Result<RunReport, QemuError> {
    let mut qemu = Qemu::spawn(&cfg.qemu)?;
    let start = qemu.started();
    let mut follow = Follow::new(&qemu, cfg)?;
    if cfg.qemu.balloon.is_some() {
        follow.qmp.poll_guest_stats(STATS_POLL_S)?;
    }
    let mut tl = Timeline::new();
    let mut obs = Observed::default();
    let mut failure = None;
    let mut done_at: Option<Instant> = None;
    let mut steady_since = Instant::now();
    let mut last_host = 0;
    let mut lines_seen = vec![false; cfg.done_lines.len()];
    let mut marked = vec![false; cfg.console_marks.len()];
    let mut booted = false;
    // The console's input: `None` until the console PD is ready.
    let mut console_ready = false;
    let stdin = cfg.console_stdin.then(stdin_lines);
    loop {
        let t = start.elapsed();
        let (console, pd) = follow.next(&qemu)?;
        if !console_ready
            && pd
                .iter()
                .any(|l| segments(l).iter().any(|s| s.starts_with(CONSOLE_READY)))
        {
            console_ready = true;
            for line in &cfg.console_lines {
                qemu.type_line(line)
                    .map_err(|e| QemuError::Io("QEMU's serial input".into(), e))?;
            }
        }
        if console_ready && let Some(rx) = &stdin {
            for line in rx.try_iter() {
                qemu.type_line(&line)
                    .map_err(|e| QemuError::Io("QEMU's serial input".into(), e))?;
            }
        }
        for l in &pd {
            // The first PD line marks the boot when the monitor says
            // nothing (a release kernel).
            if !booted && follow.pages.is_some() && log_prefix(l).is_some() {
                tl.mark(t, "booted");
                booted = true;
            }
            for label in obs.line(l, t) {
                tl.mark(t, label);
            }
            for (want, seen) in cfg.done_lines.iter().zip(&mut lines_seen) {
                *seen |= segments(l).iter().any(|seg| seg.starts_with(want.as_str()));
            }
        }
        for l in &console {
            // A VM's own console (Linux on the passed-through UART) is on
            // the serial line only: its lines count for `done_lines` too.
            if follow.pages.is_some() {
                for (want, seen) in cfg.done_lines.iter().zip(&mut lines_seen) {
                    *seen |= l.contains(want.as_str());
                }
            }
            for (k, (needle, label)) in cfg.console_marks.iter().enumerate() {
                if !marked[k] && l.contains(needle.as_str()) {
                    marked[k] = true;
                    tl.mark(t, label.clone());
                }
            }
            if l == "MON|INFO: Microkit Monitor started!" && !booted {
                tl.mark(t, "booted");
                booted = true;
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
            qemu.console()
                .wait_for(follow.seen, Duration::from_secs(1), |l| {
                    l.contains("potential stack overflow") || l.contains("UserException")
                });
            let (console, pd) = follow.next(&qemu)?;
            let lines = if follow.pages.is_some() { pd } else { console };
            for l in lines {
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
        match balloon_check(&mut qemu, &mut follow, target, &mut tl, &mut obs) {
            Ok(b) => balloon = Some(b),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    let mut balloon_back = None;
    // The guest side may settle while the balloon comes back: its line
    // counts from here.
    let back_from = follow.log.len();
    if failure.is_none()
        && balloon.is_some_and(|b| b.reached.is_some())
        && let Some(target) = cfg.balloon_back
    {
        match balloon_check(&mut qemu, &mut follow, target, &mut tl, &mut obs) {
            Ok(b) => balloon_back = Some(b),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    if failure.is_none()
        && balloon_back.is_some_and(|b| b.reached.is_some())
        && let Some(line) = &cfg.balloon_back_line
        && let Err(e) = wait_for_line(&mut qemu, &mut follow, line, back_from, &mut tl, &mut obs)
    {
        failure = Some(e);
    }
    let mut guest_stats = None;
    if failure.is_none() && cfg.qemu.balloon.is_some() {
        match settled_guest_stats(&mut follow.qmp, epoch_s()) {
            Ok(s) => guest_stats = Some(s),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    obs.problems.extend(follow.problems().iter().cloned());
    // From the guests' first free: a fast reporter gives one guest's
    // memory back before another guest frees, so what all of them freed
    // is measured from where the host stood before any of it was free.
    // The free's line reaches us up to a few copy periods of the log pages
    // after the free: the start is the highest stand within that lag.
    let from = obs.first_free.or(obs.last_free).unwrap_or_default();
    // The highest stand since the guests touched their memory (they hold
    // it until the free; nothing else raises the host's memory meanwhile),
    // or within four copy periods when no touch was seen.
    let touched = tl.last_mark_before("touched", from);
    let lag = touched.map_or(4 * cfg.period, |t| from.saturating_sub(t));
    let reclaim = tl.reclaim_from(tl.peak_within(from, lag), from, obs.freed, Some(settled));
    let first_touch = tl
        .marks()
        .iter()
        .find(|m| m.label.contains("freed"))
        .map(|m| m.t);
    // The boot-time report's fall ends where the guests' frees begin,
    // unless they came first: then the first report holds them too and its
    // fall lasts to the end.
    let boot_t = obs.boot_report.map(|(t, _)| t);
    let first_touch = first_touch.filter(|&f| boot_t.is_some_and(|b| f > b));
    let boot = boot_reclaim(&tl, &obs, first_touch.or(Some(settled)));
    qemu.kill();
    Ok(RunReport {
        timeline: tl,
        observed: obs,
        boot,
        reclaim,
        balloon,
        balloon_back,
        console: qemu.console().text(),
        log: follow.log.join("\n"),
        guest_stats,
        failure,
    })
}

/// One step of following a run after it settled: the new PD lines,
/// taken by `obs` and marked on the timeline, and a sample of the host's
/// memory. Returns the time and the PD lines.
fn sample(
    qemu: &mut Qemu,
    follow: &mut Follow,
    tl: &mut Timeline,
    obs: &mut Observed,
) -> Result<(Duration, Vec<String>), QemuError> {
    let t = qemu.started().elapsed();
    let (_, pd) = follow.next(qemu)?;
    for l in &pd {
        for label in obs.line(l, t) {
            tl.mark(t, label);
        }
    }
    tl.push(Sample {
        t,
        host: qemu.rss()?,
        guest: Some(obs.guest_bytes()),
        reported: obs.reported,
    });
    Ok((t, pd))
}

/// How long a guest side may take to settle after the balloon came back.
const BALLOON_BACK_WAIT: Duration = Duration::from_secs(60);

/// Follow the run until a PD line read since `follow.log[from]` contains
/// `want`, for at most [`BALLOON_BACK_WAIT`].
fn wait_for_line(
    qemu: &mut Qemu,
    follow: &mut Follow,
    want: &str,
    from: usize,
    tl: &mut Timeline,
    obs: &mut Observed,
) -> Result<(), String> {
    let asked = Instant::now();
    loop {
        // `sample` adds what it reads to `follow.log`.
        if follow.log[from.min(follow.log.len())..]
            .iter()
            .any(|l| l.contains(want))
        {
            tl.mark(qemu.started().elapsed(), format!("seen: {want}"));
            return Ok(());
        }
        if asked.elapsed() >= BALLOON_BACK_WAIT {
            return Err(format!(
                "no PD line with '{want}' within {BALLOON_BACK_WAIT:?} after the balloon came back"
            ));
        }
        sample(qemu, follow, tl, obs).map_err(|e| e.to_string())?;
        qemu.console()
            .wait_for(follow.seen, Duration::from_millis(250), |_| true);
    }
}

fn balloon_check(
    qemu: &mut Qemu,
    follow: &mut Follow,
    target: u64,
    tl: &mut Timeline,
    obs: &mut Observed,
) -> Result<BalloonCheck, QemuError> {
    let before = follow.qmp.query_balloon()?;
    let start = qemu.started();
    let asked = Instant::now();
    tl.mark(start.elapsed(), format!("QMP balloon {} MiB", target / MIB));
    follow.qmp.balloon(target)?;
    let mut after = before;
    let mut reached = None;
    // Inflating: `actual` falls to the target; deflating: it rises to it.
    let there = |after: u64| {
        if target <= before {
            after <= target
        } else {
            after >= target
        }
    };
    // The driver inflates in steps; give it a bounded time.
    while asked.elapsed() < Duration::from_secs(30) {
        after = follow.qmp.query_balloon()?;
        sample(qemu, follow, tl, obs)?;
        if there(after) {
            reached = Some(asked.elapsed());
            break;
        }
        qemu.console()
            .wait_for(follow.seen, Duration::from_millis(250), |_| true);
    }
    Ok(BalloonCheck {
        before,
        target,
        after,
        reached,
    })
}
