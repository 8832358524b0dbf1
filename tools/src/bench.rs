//! `tools bench`: the project's benchmarks in one place (see
//! `cmd/bench.rs` for the command).
//!
//! - **alloc**: memserver/benches/alloc.rs (criterion). It prints its own
//!   interleaved comparison (`interleaved x41: <variant> best .. M ops/s,
//!   median .. M ops/s` and a `reporting cost:` line), which is the fair
//!   measure on a shared machine; criterion's estimates come next to it.
//! - **report**: balloon/benches/report.rs (criterion): a 64 MiB discard
//!   through `fallocate` directly and through the driver, the same 64 MiB
//!   written again after the discard and while resident (what a refault
//!   costs), and a 4 KiB report round trip.
//! - **reclaim**: the whole system on the host platform ([`crate::demo`]),
//!   swept over the reporting tunables a study of reclaim would vary: how
//!   much comes back and how long after the first free.
//!
//! This module parses and summarises; it runs no cargo itself.

use crate::demo::DemoReport;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: f64 = (1u64 << 20) as f64;

/// One criterion estimate (nanoseconds per iteration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean_ns: f64,
    /// The mean's 95 % confidence interval.
    pub mean_lo_ns: f64,
    pub mean_hi_ns: f64,
    pub median_ns: f64,
}

/// Parse criterion's `new/estimates.json`.
pub fn parse_estimates(text: &str) -> Result<Estimate, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("estimates.json: {e}"))?;
    let get = |stat: &str, path: &[&str]| -> Result<f64, String> {
        let mut x = &v[stat];
        for p in path {
            x = &x[*p];
        }
        x.as_f64()
            .ok_or_else(|| format!("estimates.json: no {stat}.{}", path.join(".")))
    };
    Ok(Estimate {
        mean_ns: get("mean", &["point_estimate"])?,
        mean_lo_ns: get("mean", &["confidence_interval", "lower_bound"])?,
        mean_hi_ns: get("mean", &["confidence_interval", "upper_bound"])?,
        median_ns: get("median", &["point_estimate"])?,
    })
}

/// Criterion's estimate of `group/function` under `target_dir`.
pub fn read_estimate(target_dir: &Path, id: &str) -> Result<Estimate, String> {
    let path = target_dir
        .join("criterion")
        .join(id)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_estimates(&text)
}

/// One variant of the alloc bench's interleaved comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    pub variant: String,
    /// Millions of operations per second, best and median round.
    pub best_mops: f64,
    pub median_mops: f64,
}

/// What the alloc bench printed about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllocSummary {
    pub rounds: u32,
    pub variants: Vec<Throughput>,
    /// Reporting's cost in percent, best and median rounds.
    pub cost_best_pct: Option<f64>,
    pub cost_median_pct: Option<f64>,
    /// Speed-up over buddy_system_allocator, best and median rounds.
    pub ratio_best: Option<f64>,
    pub ratio_median: Option<f64>,
}

/// Fold the alloc bench's stdout: its `interleaved` and `reporting cost`
/// lines (memserver/benches/alloc.rs).
pub fn parse_alloc_output(out: &str) -> AllocSummary {
    let mut s = AllocSummary::default();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("interleaved x") {
            // "41: memserver reporting off    best  65.70 M ops/s, median  63.10 M ops/s"
            let Some((rounds, rest)) = rest.split_once(':') else {
                continue;
            };
            let Some((variant, nums)) = rest.split_once(" best ") else {
                continue;
            };
            // " 65.70 M ops/s, median  63.10 M ops/s": the last word
            // before each unit.
            let num = |p: &str| p.split_whitespace().last()?.parse::<f64>().ok();
            let mut pieces = nums.split("M ops/s");
            let (Some(best), Some(median)) =
                (pieces.next().and_then(num), pieces.next().and_then(num))
            else {
                continue;
            };
            s.rounds = rounds.trim().parse().unwrap_or(0);
            s.variants.push(Throughput {
                variant: variant.trim().to_string(),
                best_mops: best,
                median_mops: median,
            });
        } else if let Some(rest) = line.strip_prefix("reporting cost: ") {
            // "+0.12 % (best), +0.40 % (median); vs buddy_system_allocator: 2.31x (best), 2.20x (median)"
            let pct = |key: &str| {
                rest.split([',', ';'])
                    .find(|p| p.contains(key) && p.contains('%'))
                    .and_then(|p| p.split_whitespace().next())
                    .and_then(|n| n.parse::<f64>().ok())
            };
            s.cost_best_pct = pct("(best)");
            s.cost_median_pct = pct("(median)");
            if let Some((_, vs)) = rest.split_once("buddy_system_allocator:") {
                let ratio = |key: &str| {
                    vs.split(',')
                        .find(|p| p.contains(key))
                        .and_then(|p| p.split_whitespace().next())
                        .and_then(|n| n.trim_end_matches('x').parse::<f64>().ok())
                };
                s.ratio_best = ratio("(best)");
                s.ratio_median = ratio("(median)");
            }
        }
    }
    s
}

/// One point of the reclaim sweep: the memserver's tunables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    pub order: u8,
    pub delay_ms: u64,
    pub capacity: u16,
    pub in_flight: u8,
}

impl Tunables {
    /// `MEMSERVER_TUNABLES` text.
    pub fn env_text(&self) -> String {
        format!(
            "order={},delay_ms={},capacity={},in_flight={}",
            self.order, self.delay_ms, self.capacity, self.in_flight
        )
    }

    /// A short label for tables and plots.
    pub fn label(&self) -> String {
        format!("cap {} x {} in flight", self.capacity, self.in_flight)
    }
}

/// What one run of the whole system showed.
#[derive(Debug, Clone, PartialEq)]
pub struct ReclaimRun {
    /// Fraction of the freed memory the host got back.
    pub fraction: f64,
    /// From the first free until 50 / 90 % were back.
    pub p50: Option<Duration>,
    pub p90: Option<Duration>,
    /// Report batches the memserver completed (its last `reported:` line).
    pub batches: Option<u64>,
    pub freed: u64,
}

impl ReclaimRun {
    pub fn from_report(r: &DemoReport) -> Self {
        let batches = r
            .console
            .iter()
            .rev()
            .find(|l| l.starts_with("MEMSERVER|INFO: reported:"))
            .and_then(|l| crate::qemu::field(l, "batches_ok"));
        Self {
            fraction: r.reclaim.fraction(),
            p50: r.reclaim.p50,
            p90: r.reclaim.p90,
            batches,
            freed: r.freed,
        }
    }
}

/// The runs of one sweep point.
#[derive(Debug, Clone, PartialEq)]
pub struct ReclaimPoint {
    pub tunables: Tunables,
    pub runs: Vec<ReclaimRun>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

impl ReclaimPoint {
    /// The worst fraction over the runs.
    pub fn min_fraction(&self) -> f64 {
        self.runs.iter().map(|r| r.fraction).fold(1.0, f64::min)
    }

    /// Median seconds to 90 % back, over the runs that got there.
    pub fn p90_s(&self) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter_map(|r| r.p90.map(|d| d.as_secs_f64()))
                .collect(),
        )
    }

    pub fn p50_s(&self) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter_map(|r| r.p50.map(|d| d.as_secs_f64()))
                .collect(),
        )
    }

    /// The reporting work itself: time to 90 % less the delay.
    pub fn work_s(&self) -> Option<f64> {
        self.p90_s()
            .map(|p| (p - self.tunables.delay_ms as f64 / 1000.0).max(0.0))
    }

    pub fn batches(&self) -> Option<f64> {
        median(
            self.runs
                .iter()
                .filter_map(|r| r.batches.map(|b| b as f64))
                .collect(),
        )
    }
}

/// One run of the whole system in QEMU, against QEMU's own virtio-balloon:
/// the bare platform or the Microkit image on seL4 (issue 12).
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformRun {
    /// `bare aarch64`, `seL4 qemu_virt_aarch64 release`, ...
    pub platform: String,
    /// Of everything the guests freed, what came back by the end.
    pub fraction: f64,
    /// After the guests' last free, when 50 / 90 / 99 % were back.
    pub p50: Option<Duration>,
    pub p90: Option<Duration>,
    pub p99: Option<Duration>,
    pub freed: u64,
}

impl PlatformRun {
    /// The figures of run `r` (see [`crate::bare::freed_reclaim`]: from
    /// the guests' first free, times after their last).
    pub fn from_report(platform: &str, r: &crate::qemu::RunReport) -> Self {
        let rc = crate::bare::freed_reclaim(r);
        Self {
            platform: platform.to_string(),
            fraction: rc.as_ref().map_or(0.0, |rc| rc.fraction()),
            p50: rc.as_ref().and_then(|rc| rc.p50),
            p90: rc.as_ref().and_then(|rc| rc.p90),
            p99: rc.as_ref().and_then(|rc| rc.p99),
            freed: r.observed.freed,
        }
    }
}

/// The workload of the fragmented runs in QEMU (issue 15): every guest
/// allocates 256 MiB in blocks of orders 0-3, frees every other block (all
/// below the reporting order), and holds the rest for longer than
/// [`FRAGMENTED_WINDOW`] before freeing it.
pub const QEMU_FRAGMENTED: &str = "pattern=fragmented,mib=256,hold_ms=15000,live_mib=8";

/// The workload of the trace runs in QEMU: every guest replays the
/// recorded `cargo build` curve (`guest/traces/`) with its peak at 384 MiB
/// of its 512, 4 times faster than recorded.
pub const QEMU_TRACE: &str = "pattern=trace,mib=384,live_mib=8,hold_ms=2000,speed=4";

/// The workload of the C++ trace runs in QEMU: every guest replays the
/// recorded g++ build of cppcheck (`guest/traces/cppcheck-build.csv`), the
/// curve with the most room for a footprint policy, at its recorded speed
/// (its compilers' lifetimes are what a policy has to tell from churn),
/// peak 384 MiB.
pub const QEMU_CPP_TRACE: &str =
    "pattern=trace,mib=384,live_mib=8,hold_ms=2000,speed=1,curve=cppcheck-build";

/// The workload of the latency runs in QEMU (issue 15): one guest of
/// 1 GiB ([`QEMU_LATENCY_SYSTEM`]) touches all of it, holds 2 s and frees
/// it, as each guest of the host platform's latency scenario does
/// ([`crate::policy_bench`]).
pub const QEMU_LATENCY: &str = crate::policy_bench::LATENCY_WORKLOAD;

/// The description of the latency runs, in the workspace: a QEMU board of
/// 2 GiB holds one 1 GiB guest, not two.
pub const QEMU_LATENCY_SYSTEM: &str = "tools/systems/qemu-1g.xml";

/// What the guests of a QEMU run do, built into its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuWorkload {
    /// Their default: free 256 MiB each in 4 MiB blocks.
    Bulk,
    /// [`QEMU_LATENCY`], on [`QEMU_LATENCY_SYSTEM`].
    Latency,
    /// [`QEMU_FRAGMENTED`].
    Fragmented,
    /// [`QEMU_TRACE`].
    Trace,
    /// [`QEMU_CPP_TRACE`].
    CppTrace,
}

impl QemuWorkload {
    /// Said after the platform's name (`, fragmented`), and after its
    /// output dir's (`-fragmented`).
    pub fn label(self) -> &'static str {
        match self {
            QemuWorkload::Bulk => "",
            QemuWorkload::Latency => ", 1 GiB",
            QemuWorkload::Fragmented => ", fragmented",
            QemuWorkload::Trace => ", trace",
            QemuWorkload::CppTrace => ", cpp-trace",
        }
    }

    pub fn dir_suffix(self) -> &'static str {
        match self {
            QemuWorkload::Bulk => "",
            QemuWorkload::Latency => "-1g",
            QemuWorkload::Fragmented => "-fragmented",
            QemuWorkload::Trace => "-trace",
            QemuWorkload::CppTrace => "-cpp-trace",
        }
    }

    /// The guests' parameters built in; `None`: their defaults.
    pub fn guest_params(self) -> Option<&'static str> {
        match self {
            QemuWorkload::Bulk => None,
            QemuWorkload::Latency => Some(QEMU_LATENCY),
            QemuWorkload::Fragmented => Some(QEMU_FRAGMENTED),
            QemuWorkload::Trace => Some(QEMU_TRACE),
            QemuWorkload::CppTrace => Some(QEMU_CPP_TRACE),
        }
    }

    /// The description it runs, in the workspace.
    pub fn system(self) -> &'static str {
        match self {
            QemuWorkload::Latency => QEMU_LATENCY_SYSTEM,
            QemuWorkload::Bulk
            | QemuWorkload::Fragmented
            | QemuWorkload::Trace
            | QemuWorkload::CppTrace => "system.xml",
        }
    }
}

/// One trace run in QEMU: QEMU's memory averaged over the replay.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRun {
    /// As [`PlatformRun::platform`].
    pub platform: String,
    /// The guests' parameters built in ([`QEMU_TRACE`], [`QEMU_CPP_TRACE`]).
    pub workload: &'static str,
    /// QEMU's RSS averaged from the first guest's `trace start` to the last
    /// one's `trace end` (MiB), and that span (s); `None` without both.
    pub avg_mib: Option<f64>,
    pub replay_s: Option<f64>,
}

impl TraceRun {
    /// The figures of run `r` ([`crate::policy_bench::trace_footprint`], as
    /// on the host platform).
    pub fn from_report(platform: &str, workload: &'static str, r: &crate::qemu::RunReport) -> Self {
        let f = crate::policy_bench::trace_footprint(&r.timeline);
        Self {
            platform: platform.to_string(),
            workload,
            avg_mib: f.avg_mib,
            replay_s: f.secs,
        }
    }
}

/// How long after the guests' first free the fragmented runs look.
pub const FRAGMENTED_WINDOW: Duration = Duration::from_secs(10);

/// One fragmented run in QEMU: what of the guests' first free (every other
/// small block) came back within [`FRAGMENTED_WINDOW`].
#[derive(Debug, Clone, PartialEq)]
pub struct FragmentedRun {
    /// As [`PlatformRun::platform`].
    pub platform: String,
    /// The bytes of the guests' first free.
    pub freed_half: u64,
    /// The fraction of those back within the window, or why the run does
    /// not tell.
    pub back: Result<f64, String>,
}

impl FragmentedRun {
    /// The figure of run `r`, `window` after the last guest's first free
    /// (a console line read a little after the free itself, so the window
    /// is if anything longer): the host's fall from its highest stand since
    /// the guests touched their memory, over the bytes of that free, at
    /// most all of it.
    pub fn from_report(platform: &str, r: &crate::qemu::RunReport, window: Duration) -> Self {
        Self {
            platform: platform.to_string(),
            freed_half: r.observed.freed_half,
            back: Self::fraction(r, window),
        }
    }

    fn fraction(r: &crate::qemu::RunReport, window: Duration) -> Result<f64, String> {
        let o = &r.observed;
        let (first, last) = o
            .half_frees
            .filter(|_| o.freed_half > 0)
            .ok_or("the guests freed no half of their memory: not the fragmented pattern")?;
        let end = last + window;
        if let Some(w) = o.first_whole_free.filter(|&w| w < end) {
            return Err(format!(
                "a guest freed the rest {:.1} s after the first free, inside the window",
                w.saturating_sub(first).as_secs_f64()
            ));
        }
        let tl = &r.timeline;
        if tl.samples().last().is_none_or(|s| s.t < end) {
            return Err("the run ended inside the window".into());
        }
        let touched = tl
            .last_mark_before("touched", first)
            .ok_or("no guest touched its memory before the free")?;
        let before = tl.peak_within(first, first.saturating_sub(touched));
        let after = tl.at(end).map_or(before, |s| s.host);
        Ok((before.saturating_sub(after) as f64 / o.freed_half as f64).min(1.0))
    }
}

/// The workload of the churn runs in QEMU (issue 15): every guest
/// allocates, touches, verifies and frees 256 MiB 16 times, back to back
/// (the churn pattern holds only after its last round, `hold_ms`).
pub const QEMU_CHURN: &str = "pattern=churn,mib=256,rounds=16,hold_ms=500,live_mib=8";

/// The churn runs' memserver: reporting off (the baseline), then each
/// policy at a 250 ms delay; (name, tunables built in).
pub const QEMU_CHURN_VARIANTS: [(&str, &str); 3] = [
    ("off", "off"),
    ("linux", "policy=linux,delay_ms=250"),
    ("adaptive", "policy=adaptive,delay_ms=250"),
];

/// Runs of each churn variant in QEMU, taking turns (a run's time moves
/// with the machine's load).
pub const QEMU_CHURN_RUNS: usize = 3;

/// The churn runs of one platform in QEMU: the workload's time on the
/// guests' clock (first start to last done, [`crate::qemu::Observed::workload_time`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChurnRuns {
    /// As [`PlatformRun::platform`].
    pub platform: String,
    /// Seconds of each run, by [`QEMU_CHURN_VARIANTS`] name.
    pub times: Vec<(String, Vec<f64>)>,
}

impl ChurnRuns {
    /// The median seconds of `variant`'s runs.
    pub fn median_s(&self, variant: &str) -> Option<f64> {
        let (_, t) = self.times.iter().find(|(v, _)| v == variant)?;
        median(t.clone())
    }

    /// `variant`'s median over reporting off's (1.0: as fast).
    pub fn vs_off(&self, variant: &str) -> Option<f64> {
        Some(self.median_s(variant)? / self.median_s("off")?)
    }
}

/// The host's memory over one QEMU run, one line of its scenario's plot.
#[derive(Debug, Clone)]
pub struct MemoryRun {
    /// The plot it belongs to: platform and workload, without the policy
    /// (`bare aarch64-unknown-none, trace`).
    pub scenario: String,
    /// Its line's label: the policy, or `off` (reporting off).
    pub variant: String,
    pub timeline: crate::timeline::Timeline,
}

/// The file name of `scenario`'s plot: `qemu-` and its words in lower
/// case, joined by `-` (`qemu-bare-aarch64-unknown-none-trace.svg`).
pub fn memory_plot_name(scenario: &str) -> String {
    let words: Vec<String> = scenario
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    format!("qemu-{}.svg", words.join("-"))
}

/// Everything one `tools bench` measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub alloc: Option<AllocSummary>,
    /// Criterion estimates by id (`group/function`).
    pub estimates: Vec<(String, Estimate)>,
    /// Metadata bytes per 4 KiB page for a 1 GiB zone.
    pub metadata_per_page: Option<f64>,
    pub reclaim: Vec<ReclaimPoint>,
    /// The guests' workload of the reclaim sweep (`GUEST_PARAMS`).
    pub reclaim_workload: String,
    /// The system in QEMU: bare platform and seL4, per arch and config.
    pub platforms: Vec<PlatformRun>,
    /// The same platforms with the fragmented workload.
    pub fragmented: Vec<FragmentedRun>,
    /// And with the trace and the churn workloads.
    pub trace: Vec<TraceRun>,
    pub churn: Vec<ChurnRuns>,
    /// The host's memory over time of the QEMU runs, for the plots of each
    /// scenario with its policies side by side ([`Results::plot_memory`]).
    pub memory: Vec<MemoryRun>,
    /// Errors of parts that did not run through.
    pub errors: Vec<String>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// Bytes per second of `bytes` moved in `ns`, as GiB/s.
fn gib_s(bytes: f64, ns: f64) -> f64 {
    bytes / (ns / 1e9) / (1u64 << 30) as f64
}

impl Results {
    /// The tables, in Markdown (readable as text too).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        if let Some(a) = &self.alloc {
            let _ = writeln!(
                s,
                "## Allocator: 200 k alloc/free over a 1 GiB zone (interleaved x{})\n",
                a.rounds
            );
            let _ = writeln!(s, "| variant | best M ops/s | median M ops/s |");
            let _ = writeln!(s, "|---|---|---|");
            for v in &a.variants {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} | {:.2} |",
                    v.variant, v.best_mops, v.median_mops
                );
            }
            let _ = writeln!(
                s,
                "\nreporting cost: {} % (best), {} % (median); vs buddy_system_allocator: {}x (best), {}x (median)",
                opt(a.cost_best_pct, 2),
                opt(a.cost_median_pct, 2),
                opt(a.ratio_best, 2),
                opt(a.ratio_median, 2)
            );
        }
        if let Some(m) = self.metadata_per_page {
            let _ = writeln!(s, "\nmetadata: {m:.2} bytes per 4 KiB page\n");
        }
        if !self.estimates.is_empty() {
            let _ = writeln!(s, "## Criterion estimates\n");
            let _ = writeln!(
                s,
                "| benchmark | mean | 95 % interval | median | throughput |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|");
            for (id, e) in &self.estimates {
                let tp = if id.starts_with("discard_64MiB/") {
                    format!("{:.2} GiB/s", gib_s(64.0 * MIB, e.mean_ns))
                } else if id.starts_with("alloc_free_1GiB/") {
                    format!("{:.2} M ops/s", 200_000.0 / (e.mean_ns / 1e9) / 1e6)
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    s,
                    "| {id} | {} | {} .. {} | {} | {tp} |",
                    human_ns(e.mean_ns),
                    human_ns(e.mean_lo_ns),
                    human_ns(e.mean_hi_ns),
                    human_ns(e.median_ns)
                );
            }
        }
        if !self.reclaim.is_empty() {
            let _ = writeln!(
                s,
                "\n## Reclaim on the host platform ({})\n",
                self.reclaim_workload
            );
            let _ = writeln!(
                s,
                "| tunables | runs | back (worst) | 50 % after | 90 % after | 90 % less the delay | batches |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for p in &self.reclaim {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} % | {} s | {} s | {} s | {} |",
                    p.tunables.env_text(),
                    p.runs.len(),
                    p.min_fraction() * 100.0,
                    opt(p.p50_s(), 3),
                    opt(p.p90_s(), 3),
                    opt(p.work_s(), 3),
                    opt(p.batches(), 0)
                );
            }
        }
        if !self.platforms.is_empty() {
            let _ = writeln!(
                s,
                "\n## In QEMU, against QEMU's virtio-balloon (system.xml: 2 guests free 256 MiB each; \
                 rows \"1 GiB\": {QEMU_LATENCY_SYSTEM}, 1 guest frees 1 GiB, `{QEMU_LATENCY}`)\n"
            );
            let _ = writeln!(
                s,
                "| platform | freed | back at the end | 50 % after the last free | 90 % | 99 % |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|");
            let secs = |d: Option<Duration>| {
                d.map_or_else(|| "never".into(), |d| format!("{:.2} s", d.as_secs_f64()))
            };
            for p in &self.platforms {
                let _ = writeln!(
                    s,
                    "| {} | {} MiB | {:.1} % | {} | {} | {} |",
                    p.platform,
                    p.freed >> 20,
                    p.fraction * 100.0,
                    secs(p.p50),
                    secs(p.p90),
                    secs(p.p99)
                );
            }
        }
        if !self.fragmented.is_empty() {
            let _ = writeln!(
                s,
                "\n## Fragmented, in QEMU (system.xml, built in: `{QEMU_FRAGMENTED}`)\n"
            );
            let _ = writeln!(
                s,
                "| platform | first free (every other block, orders 0-3) | back within {} s |",
                FRAGMENTED_WINDOW.as_secs()
            );
            let _ = writeln!(s, "|---|---|---|");
            for f in &self.fragmented {
                let back = match &f.back {
                    Ok(x) => format!("{:.1} %", x * 100.0),
                    Err(e) => format!("- ({e})"),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} MiB | {back} |",
                    f.platform,
                    f.freed_half >> 20
                );
            }
        }
        let mut workloads: Vec<&str> = Vec::new();
        for t in &self.trace {
            if !workloads.contains(&t.workload) {
                workloads.push(t.workload);
            }
        }
        for workload in workloads {
            let _ = writeln!(
                s,
                "\n## Trace, in QEMU (system.xml, built in: `{workload}`)\n"
            );
            let _ = writeln!(
                s,
                "| platform | QEMU's memory averaged over the replay | replay |"
            );
            let _ = writeln!(s, "|---|---|---|");
            for t in self.trace.iter().filter(|t| t.workload == workload) {
                let _ = writeln!(
                    s,
                    "| {} | {} MiB | {} s |",
                    t.platform,
                    opt(t.avg_mib, 0),
                    opt(t.replay_s, 1)
                );
            }
        }
        if !self.churn.is_empty() {
            let _ = writeln!(
                s,
                "\n## Churn, in QEMU (system.xml, built in: `{QEMU_CHURN}`; median of {QEMU_CHURN_RUNS} runs)\n"
            );
            let _ = writeln!(
                s,
                "| platform | reporting off | linux, 250 ms | vs off | adaptive, 250 ms | vs off |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|");
            let pct = |x: Option<f64>| {
                x.map_or_else(|| "-".into(), |x| format!("{:+.1} %", (x - 1.0) * 100.0))
            };
            for c in &self.churn {
                let _ = writeln!(
                    s,
                    "| {} | {} s | {} s | {} | {} s | {} |",
                    c.platform,
                    opt(c.median_s("off"), 2),
                    opt(c.median_s("linux"), 2),
                    pct(c.vs_off("linux")),
                    opt(c.median_s("adaptive"), 2),
                    pct(c.vs_off("adaptive")),
                );
            }
        }
        for e in &self.errors {
            let _ = writeln!(s, "\nFAILED: {e}");
        }
        s
    }

    /// The same, for programs.
    pub fn json(&self) -> Value {
        let alloc = self.alloc.as_ref().map(|a| {
            json!({
                "rounds": a.rounds,
                "variants": a.variants.iter().map(|v| json!({
                    "variant": v.variant, "best_mops": v.best_mops, "median_mops": v.median_mops,
                })).collect::<Vec<_>>(),
                "reporting_cost_pct": { "best": a.cost_best_pct, "median": a.cost_median_pct },
                "vs_buddy_system_allocator": { "best": a.ratio_best, "median": a.ratio_median },
            })
        });
        json!({
            "alloc": alloc,
            "metadata_bytes_per_page": self.metadata_per_page,
            "criterion": self.estimates.iter().map(|(id, e)| json!({
                "id": id, "mean_ns": e.mean_ns, "mean_lo_ns": e.mean_lo_ns,
                "mean_hi_ns": e.mean_hi_ns, "median_ns": e.median_ns,
            })).collect::<Vec<_>>(),
            "reclaim": {
                "workload": self.reclaim_workload,
                "points": self.reclaim.iter().map(|p| json!({
                    "tunables": p.tunables.env_text(),
                    "capacity": p.tunables.capacity,
                    "in_flight": p.tunables.in_flight,
                    "delay_ms": p.tunables.delay_ms,
                    "runs": p.runs.iter().map(|r| json!({
                        "fraction": r.fraction,
                        "p50_s": r.p50.map(|d| d.as_secs_f64()),
                        "p90_s": r.p90.map(|d| d.as_secs_f64()),
                        "batches": r.batches,
                        "freed_bytes": r.freed,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            },
            "platforms": self.platforms.iter().map(|p| json!({
                "platform": p.platform, "fraction": p.fraction, "freed_bytes": p.freed,
                "p50_s": p.p50.map(|d| d.as_secs_f64()),
                "p90_s": p.p90.map(|d| d.as_secs_f64()),
                "p99_s": p.p99.map(|d| d.as_secs_f64()),
            })).collect::<Vec<_>>(),
            "fragmented": {
                "workload": QEMU_FRAGMENTED,
                "window_s": FRAGMENTED_WINDOW.as_secs_f64(),
                "runs": self.fragmented.iter().map(|f| json!({
                    "platform": f.platform, "freed_half_bytes": f.freed_half,
                    "back": f.back.as_ref().ok(), "why_none": f.back.as_ref().err(),
                })).collect::<Vec<_>>(),
            },
            "trace": {
                "runs": self.trace.iter().map(|t| json!({
                    "platform": t.platform, "workload": t.workload,
                    "avg_mib": t.avg_mib, "replay_s": t.replay_s,
                })).collect::<Vec<_>>(),
            },
            "churn": {
                "workload": QEMU_CHURN,
                "platforms": self.churn.iter().map(|c| json!({
                    "platform": c.platform,
                    "runs_s": c.times.iter().map(|(v, t)| (v.clone(), json!(t))).collect::<serde_json::Map<_, _>>(),
                    "median_s": QEMU_CHURN_VARIANTS.iter().map(|(v, _)| (v.to_string(), json!(c.median_s(v)))).collect::<serde_json::Map<_, _>>(),
                })).collect::<Vec<_>>(),
            },
            "errors": self.errors,
        })
    }

    /// One SVG in `dir` per scenario of [`Results::memory`] that ran with
    /// more than one variant: the host's memory over time, a line each
    /// ([`crate::policy_bench::plot_policies`]). The paths written, in the
    /// order the scenarios first ran.
    pub fn plot_memory(&self, dir: &Path) -> Result<Vec<PathBuf>, String> {
        let mut scenarios: Vec<&str> = Vec::new();
        for m in &self.memory {
            if !scenarios.contains(&m.scenario.as_str()) {
                scenarios.push(&m.scenario);
            }
        }
        let mut written = Vec::new();
        for scenario in scenarios {
            let runs: Vec<(&str, &crate::timeline::Timeline)> = self
                .memory
                .iter()
                .filter(|m| m.scenario == scenario)
                .map(|m| (m.variant.as_str(), &m.timeline))
                .collect();
            if runs.len() < 2 {
                continue;
            }
            let path = dir.join(memory_plot_name(scenario));
            crate::policy_bench::plot_policies(
                &path,
                &format!("tools bench: QEMU's memory, {scenario}"),
                &runs,
            )?;
            written.push(path);
        }
        Ok(written)
    }

    /// One SVG: allocator throughput (left) and time to 90 % back per
    /// tunables point (right), whichever ran.
    pub fn plot_svg(&self, path: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(550);
        let alloc: Vec<(String, f64)> = self
            .alloc
            .iter()
            .flat_map(|a| a.variants.iter())
            .map(|v| (v.variant.clone(), v.best_mops))
            .collect();
        let reclaim: Vec<(String, f64)> = self
            .reclaim
            .iter()
            .filter_map(|p| p.p90_s().map(|s| (p.tunables.label(), s)))
            .collect();
        bars(
            &left,
            "allocator: best of interleaved rounds",
            "M ops/s",
            &alloc,
            &BLUE,
        )?;
        bars(
            &right,
            "host platform: first free to 90 % back",
            "seconds",
            &reclaim,
            &RED,
        )?;
        root.present().map_err(|e| e.to_string())
    }
}

/// A bar chart of `(label, value)` on `area`.
fn bars<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    data: &[(String, f64)],
    color: &plotters::style::RGBColor,
) -> Result<(), String> {
    use plotters::prelude::*;
    if data.is_empty() {
        let style = ("sans-serif", 16).into_font().color(&BLACK);
        area.draw_text(&format!("{title}: not run"), &style, (40, 200))
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    let top = data.iter().map(|d| d.1).fold(0.0, f64::max).max(1e-9) * 1.15;
    let n = data.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc(unit)
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(data.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
                color.mix(0.7).filled(),
            )
        }))
        .map_err(|e| e.to_string())?
        .label(unit)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    // Values on the bars, names under them.
    chart
        .draw_series(data.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format!("{v:.2}"),
                (i as f64 + 0.3, *v + top * 0.02),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(data.iter().enumerate().map(|(i, (name, _))| {
            Text::new(
                name.clone(),
                (i as f64 + 0.1, -top * 0.04),
                ("sans-serif", 11),
            )
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// `1234567.0` ns -> `1.23 ms`.
pub fn human_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.3} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `new/estimates.json` of `discard_64MiB/raw_punch_hole`.
    const ESTIMATES: &str = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":11329470.5,"upper_bound":11893023.2},"point_estimate":11600511.3,"standard_error":143270.9},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":11280000.0,"upper_bound":11700000.0},"point_estimate":11512345.0,"standard_error":100000.0},"median_abs_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1},"slope":null,"std_dev":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1}}"#;

    #[test]
    fn criterion_estimates_are_read() {
        let e = parse_estimates(ESTIMATES).unwrap();
        assert_eq!(e.mean_ns, 11600511.3);
        assert_eq!((e.mean_lo_ns, e.mean_hi_ns), (11329470.5, 11893023.2));
        assert_eq!(e.median_ns, 11512345.0);
        assert!(parse_estimates("{}").is_err());
        assert!(parse_estimates("not json").is_err());
        assert!((gib_s(64.0 * MIB, e.mean_ns) - 5.39).abs() < 0.01);
    }

    #[test]
    fn the_alloc_bench_summary_is_read() {
        let out = "worker's own time: 1 ns of 2 ns per run (0.01 %)\n\
interleaved x41: memserver reporting off  best  65.70 M ops/s, median  63.10 M ops/s\n\
interleaved x41: memserver reporting on   best  66.00 M ops/s, median  62.90 M ops/s\n\
interleaved x41: buddy_system_allocator   best  28.50 M ops/s, median  27.00 M ops/s\n\
interleaved x41: on, worker never runs    best  65.80 M ops/s, median  63.00 M ops/s\n\
reporting cost: -0.46 % (best), +0.32 % (median); vs buddy_system_allocator: 2.31x (best), 2.34x (median)\n\
Benchmarking alloc_free_1GiB/memserver_reporting_off\n";
        let s = parse_alloc_output(out);
        assert_eq!(s.rounds, 41);
        assert_eq!(s.variants.len(), 4);
        assert_eq!(
            s.variants[0],
            Throughput {
                variant: "memserver reporting off".into(),
                best_mops: 65.70,
                median_mops: 63.10
            }
        );
        assert_eq!(s.variants[3].variant, "on, worker never runs");
        assert_eq!(
            (s.cost_best_pct, s.cost_median_pct),
            (Some(-0.46), Some(0.32))
        );
        assert_eq!((s.ratio_best, s.ratio_median), (Some(2.31), Some(2.34)));
        assert_eq!(parse_alloc_output("nothing"), AllocSummary::default());
    }

    fn point(capacity: u16, p90: &[f64]) -> ReclaimPoint {
        ReclaimPoint {
            tunables: Tunables {
                order: 9,
                delay_ms: 300,
                capacity,
                in_flight: 1,
            },
            runs: p90
                .iter()
                .map(|&s| ReclaimRun {
                    fraction: 0.99,
                    p50: Some(Duration::from_secs_f64(s / 2.0)),
                    p90: Some(Duration::from_secs_f64(s)),
                    batches: Some(8),
                    freed: 64 << 20,
                })
                .collect(),
        }
    }

    #[test]
    fn sweep_points_summarise_to_medians() {
        let p = point(8, &[0.5, 0.31, 0.4]);
        assert_eq!(p.p90_s(), Some(0.4));
        assert!((p.work_s().unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(p.batches(), Some(8.0));
        assert_eq!(p.min_fraction(), 0.99);
        assert_eq!(
            p.tunables.env_text(),
            "order=9,delay_ms=300,capacity=8,in_flight=1"
        );
    }

    /// A fragmented run in QEMU: touched at 1 s (host at 600 MiB), first
    /// frees of 100 + 100 MiB at 3 and 4 s; `host_at_14s` is what the host
    /// holds from 13.5 s on; the rest freed at `whole_at`.
    fn fragmented_report(host_at_14s: u64, whole_at: u64) -> crate::qemu::RunReport {
        use crate::timeline::{Sample, Timeline};
        let s = Duration::from_secs;
        let mut o = crate::qemu::Observed::default();
        let mut tl = Timeline::new();
        for m in o.line("GUEST0|INFO: phase=touched mib=200 blocks=9 t_ns=1", s(1)) {
            tl.mark(s(1), m);
        }
        o.line(
            "GUEST0|INFO: phase=freed_half mib=100 blocks=9 t_ns=1",
            s(3),
        );
        o.line(
            "GUEST1|INFO: phase=freed_half mib=100 blocks=9 t_ns=1",
            s(4),
        );
        o.line(
            "GUEST0|INFO: phase=freed mib=100 blocks=9 t_ns=1",
            s(whole_at),
        );
        for (t_ms, mib) in [
            (0, 100),
            (1000, 600),
            (2500, 600),
            (13_500, host_at_14s),
            (20_000, 100),
        ] {
            tl.push(Sample {
                t: Duration::from_millis(t_ms),
                host: mib << 20,
                guest: None,
                reported: None,
            });
        }
        crate::qemu::RunReport {
            timeline: tl,
            observed: o,
            boot: None,
            reclaim: Default::default(),
            balloon: None,
            balloon_back: None,
            console: String::new(),
            log: String::new(),
            guest_stats: None,
            failure: None,
        }
    }

    #[test]
    fn a_fragmented_run_counts_what_came_back_of_its_first_free_in_the_window() {
        let f = |host, whole| {
            FragmentedRun::from_report("bare", &fragmented_report(host, whole), FRAGMENTED_WINDOW)
        };
        // 600 -> 420 MiB of 200 freed: 90 %.
        let r = f(420, 19);
        assert_eq!(r.freed_half, 200 << 20);
        assert!((r.back.clone().unwrap() - 0.9).abs() < 1e-9, "{r:?}");
        // Nothing back; more than freed (other memory reported) is all.
        assert_eq!(f(600, 19).back, Ok(0.0));
        assert_eq!(f(100, 19).back, Ok(1.0));
        // The rest freed at 12 s, inside the window that ends at 14 s.
        assert!(f(420, 12).back.unwrap_err().contains("inside the window"));
        // A bulk run has no first half to measure.
        let mut bulk = fragmented_report(420, 19);
        bulk.observed.half_frees = None;
        assert!(
            FragmentedRun::from_report("bare", &bulk, FRAGMENTED_WINDOW)
                .back
                .is_err()
        );
    }

    #[test]
    fn results_render_as_tables_json_and_a_plot() {
        let r = Results {
            alloc: Some(parse_alloc_output(
                "interleaved x3: memserver reporting off  best  10.00 M ops/s, median 9.00 M ops/s\n",
            )),
            estimates: vec![(
                "discard_64MiB/raw_punch_hole".into(),
                parse_estimates(ESTIMATES).unwrap(),
            )],
            metadata_per_page: Some(9.0),
            reclaim: vec![point(8, &[0.4]), point(32, &[0.35])],
            reclaim_workload: "pattern=bulk,mib=32".into(),
            platforms: vec![PlatformRun {
                platform: "seL4 x86_64_generic release".into(),
                fraction: 0.995,
                p50: Some(Duration::from_millis(850)),
                p90: Some(Duration::from_millis(1250)),
                p99: None,
                freed: 512 << 20,
            }],
            fragmented: vec![FragmentedRun {
                platform: "bare aarch64, policy linux".into(),
                freed_half: 250 << 20,
                back: Ok(0.0),
            }],
            trace: vec![
                TraceRun {
                    platform: "bare aarch64, trace".into(),
                    workload: QEMU_TRACE,
                    avg_mib: Some(612.4),
                    replay_s: Some(50.25),
                },
                TraceRun {
                    platform: "bare aarch64, cpp-trace".into(),
                    workload: QEMU_CPP_TRACE,
                    avg_mib: Some(500.0),
                    replay_s: Some(97.5),
                },
            ],
            churn: vec![ChurnRuns {
                platform: "bare aarch64".into(),
                times: vec![
                    ("off".into(), vec![10.0, 12.0, 11.0]),
                    ("linux".into(), vec![15.0, 16.5, 14.0]),
                    ("adaptive".into(), vec![11.5]),
                ],
            }],
            errors: vec!["report: cargo bench failed".into()],
            memory: Vec::new(),
        };
        let md = r.markdown();
        assert!(
            md.contains("| memserver reporting off | 10.00 | 9.00 |"),
            "{md}"
        );
        assert!(
            md.contains("| discard_64MiB/raw_punch_hole | 11.60 ms |"),
            "{md}"
        );
        assert!(md.contains("5.39 GiB/s"), "{md}");
        assert!(md.contains("| order=9,delay_ms=300,capacity=32,in_flight=1 | 1 | 99.0 % |"));
        assert!(md.contains("FAILED: report: cargo bench failed"));
        assert!(
            md.contains(
                "| seL4 x86_64_generic release | 512 MiB | 99.5 % | 0.85 s | 1.25 s | never |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| bare aarch64, policy linux | 250 MiB | 0.0 % |"),
            "{md}"
        );
        let j = r.json();
        assert_eq!(j["platforms"][0]["p90_s"], 1.25);
        assert_eq!(j["fragmented"]["runs"][0]["back"], 0.0);
        assert!(
            md.contains("| bare aarch64 | 11.00 s | 15.00 s | +36.4 % | 11.50 s | +4.5 % |"),
            "{md}"
        );
        assert_eq!(j["churn"]["platforms"][0]["median_s"]["linux"], 15.0);
        assert!(
            md.contains("| bare aarch64, trace | 612 MiB | 50.2 s |"),
            "{md}"
        );
        assert_eq!(j["trace"]["runs"][0]["avg_mib"], 612.4);
        assert_eq!(j["trace"]["runs"][1]["workload"], QEMU_CPP_TRACE);
        // A table per curve, each with its own runs.
        let cpp = md
            .split_once(&format!("built in: `{QEMU_CPP_TRACE}`"))
            .expect("a table of the C++ trace")
            .1;
        assert!(
            cpp.contains("| bare aarch64, cpp-trace | 500 MiB | 97.5 s |"),
            "{md}"
        );
        assert!(!cpp.contains("| bare aarch64, trace |"), "{md}");
        assert_eq!(j["reclaim"]["points"].as_array().unwrap().len(), 2);
        assert_eq!(j["metadata_bytes_per_page"], 9.0);
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let svg = dir.join("bench.svg");
        r.plot_svg(&svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("allocator: best of interleaved rounds"));
        assert!(text.contains("cap 32 x 1 in flight"));
    }

    /// A run of `variant` in `scenario` whose host held `mib` MiB, a sample
    /// a second.
    fn memory_run(scenario: &str, variant: &str, mib: &[u64]) -> MemoryRun {
        use crate::timeline::{Sample, Timeline};
        let mut timeline = Timeline::new();
        for (i, &m) in mib.iter().enumerate() {
            timeline.push(Sample {
                t: Duration::from_secs(i as u64),
                host: m << 20,
                guest: None,
                reported: None,
            });
        }
        MemoryRun {
            scenario: scenario.into(),
            variant: variant.into(),
            timeline,
        }
    }

    #[test]
    fn memory_plots_put_the_policies_of_a_scenario_side_by_side() {
        assert_eq!(
            memory_plot_name("seL4 qemu_virt_aarch64 release, trace"),
            "qemu-sel4-qemu_virt_aarch64-release-trace.svg"
        );
        assert_eq!(
            memory_plot_name(&format!("bare aarch64{}", QemuWorkload::CppTrace.label())),
            "qemu-bare-aarch64-cpp-trace.svg"
        );
        let r = Results {
            memory: vec![
                memory_run("bare aarch64, trace", "adaptive", &[600, 300, 100]),
                memory_run("seL4 qemu_virt_aarch64 debug", "adaptive", &[500, 90]),
                memory_run("bare aarch64, trace", "linux", &[600, 500, 400]),
            ],
            ..Results::default()
        };
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        // The seL4 scenario ran with one policy only: no plot of it.
        let written = r.plot_memory(&dir).unwrap();
        assert_eq!(written, vec![dir.join("qemu-bare-aarch64-trace.svg")]);
        let text = std::fs::read_to_string(&written[0]).unwrap();
        assert!(text.contains("memory, bare aarch64, trace"), "{text}");
        assert!(
            text.contains("\nadaptive\n") && text.contains("\nlinux\n"),
            "{text}"
        );
        assert!(!dir.join("qemu-sel4-qemu_virt_aarch64-debug.svg").exists());
    }
}
