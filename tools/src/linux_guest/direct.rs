//! The guest booted directly under QEMU (`-M virt -cpu cortex-a53 -kernel
//! Image -initrd initramfs.cpio.gz` with QEMU's virtio-balloon on
//! virtio-mmio): the proof that the guest works without seL4, and the
//! baseline "Linux directly under the same QEMU" that the nested run (the
//! guest as a VM on seL4) is benchmarked against. [`run`] waits, each wait
//! bounded, for the exact console lines of every boot stage ([`STAGES`]),
//! samples QEMU's RSS throughout, and measures how fast the host gets the
//! workload's freed memory back (Linux's own free page reporting: 50, 90
//! and 99 % of what it freed).

use super::Guest;
use crate::qemu::{Arch, BalloonDevice, Boot, Observed, Qemu, QemuConfig, QemuError, field};
use crate::timeline::{Reclaim, Sample, Timeline};
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A boot stage: its name, how its console line starts, and how long it
/// may take after the previous stage (TCG on a shared 2-core machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub name: &'static str,
    pub line_start: &'static str,
    pub bound: Duration,
}

/// The stages, in order.
pub const STAGES: [Stage; 6] = [
    Stage {
        name: "kernel",
        line_start: "Booting Linux on physical CPU 0x",
        bound: Duration::from_secs(60),
    },
    Stage {
        name: "init",
        line_start: "Run /init as init process",
        bound: Duration::from_secs(180),
    },
    Stage {
        name: "userspace",
        line_start: "INIT|INFO: userspace started",
        bound: Duration::from_secs(60),
    },
    Stage {
        name: "modules",
        line_start: "INIT|INFO: modules loaded: virtio_ring virtio virtio_mmio virtio_balloon virtio_console",
        bound: Duration::from_secs(60),
    },
    Stage {
        name: "workload",
        line_start: "WORKLOAD|INFO: phase=start ",
        bound: Duration::from_secs(60),
    },
    Stage {
        name: "done",
        line_start: "WORKLOAD|INFO: phase=done ",
        // Plus the workload's own time, added in `run`.
        bound: Duration::from_secs(120),
    },
];

/// A console line without the kernel's `[    0.000000] ` time stamp.
pub fn kernel_text(line: &str) -> &str {
    line.strip_prefix('[')
        .and_then(|r| r.split_once("] "))
        .filter(|(t, _)| t.trim().parse::<f64>().is_ok())
        .map_or(line, |(_, rest)| rest)
}

/// How to run it.
#[derive(Debug, Clone)]
pub struct DirectConfig {
    pub memory_mib: u32,
    /// `free-page-reporting=on` (off: the control run).
    pub reporting: bool,
    /// The workload's MiB, hold time and rounds (kernel command line).
    pub mib: u64,
    pub hold_ms: u64,
    pub rounds: u32,
    /// After `phase=done`: RSS counts as settled when it moved less than
    /// 1 MiB for `steady`; at most `settle`.
    pub steady: Duration,
    pub settle: Duration,
    /// Sampling period of QEMU's RSS.
    pub period: Duration,
    /// Where the QMP socket goes.
    pub qmp: PathBuf,
    /// More kernel command line words (e.g.
    /// `page_reporting.page_reporting_order=5`).
    pub extra_append: String,
}

impl DirectConfig {
    /// 1 GiB of guest RAM, 64 MiB touched for 2 s, one round.
    pub fn new(reporting: bool, qmp: PathBuf) -> DirectConfig {
        DirectConfig {
            memory_mib: 1024,
            reporting,
            mib: 64,
            hold_ms: 2000,
            rounds: 1,
            steady: Duration::from_secs(8),
            settle: Duration::from_secs(40),
            period: Duration::from_millis(50),
            qmp,
            extra_append: String::new(),
        }
    }

    /// The kernel command line. `panic=-1` with `-no-reboot` makes a panic
    /// end QEMU at once instead of a timeout.
    pub fn append(&self) -> String {
        let mut a = format!(
            "console=ttyAMA0 rdinit=/init panic=-1 workload.mib={} workload.hold_ms={} workload.rounds={}",
            self.mib, self.hold_ms, self.rounds
        );
        if !self.extra_append.is_empty() {
            a.push(' ');
            a.push_str(&self.extra_append);
        }
        a
    }

    /// The QEMU configuration.
    pub fn qemu(&self, guest: &Guest) -> QemuConfig {
        QemuConfig {
            arch: Arch::Aarch64,
            boot: Boot::Linux {
                kernel: guest.image.clone(),
                initrd: guest.initramfs.clone(),
                append: self.append(),
            },
            memory_mib: self.memory_mib,
            balloon: Some(BalloonDevice {
                reporting: self.reporting,
                modern_mmio: false,
            }),
            qmp: self.qmp.clone(),
            extra: vec!["-no-reboot".into()],
        }
    }
}

/// Why a direct run failed.
#[derive(Debug)]
pub enum DirectError {
    Qemu(QemuError),
    /// A stage's line did not come within its bound.
    Stage {
        stage: &'static str,
        line: &'static str,
        waited: Duration,
    },
    /// QEMU ended before the run did.
    Exited {
        status: String,
        stage: &'static str,
    },
    /// The guest said something is wrong (an `|ERROR` line).
    Guest(String),
}

impl fmt::Display for DirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectError::Qemu(e) => write!(f, "{e}"),
            DirectError::Stage {
                stage,
                line,
                waited,
            } => write!(
                f,
                "stage {stage}: no console line `{line}...` within {:.0} s",
                waited.as_secs_f64()
            ),
            DirectError::Exited { status, stage } => {
                write!(f, "QEMU exited ({status}) while waiting for stage {stage}")
            }
            DirectError::Guest(l) => write!(f, "the guest reported an error: {l}"),
        }
    }
}

impl std::error::Error for DirectError {}

impl From<QemuError> for DirectError {
    fn from(e: QemuError) -> Self {
        DirectError::Qemu(e)
    }
}

/// What a direct run showed.
#[derive(Debug, Clone)]
pub struct DirectReport {
    /// When each stage's line arrived, since QEMU started.
    pub stages: Vec<(&'static str, Duration)>,
    pub timeline: Timeline,
    pub observed: Observed,
    /// QEMU's RSS fall after the workload's last free (expected: what it
    /// freed).
    pub reclaim: Reclaim,
    /// The same fall, expected: what the guest kernel's MemFree regained
    /// with that free (`memfree_mib` of the touched and freed lines). Linux
    /// keeps some freed pages on its per-CPU lists, outside the buddy free
    /// lists that page reporting walks (and outside MemFree), so this is
    /// what reporting can give back.
    pub reclaim_guest_free: Option<Reclaim>,
    /// `reporting=` of the `virtio_balloon bound` line: whether Linux
    /// negotiated free page reporting.
    pub reporting_negotiated: Option<bool>,
    pub console: String,
    /// Why the run stopped early, if it did (the console is still here).
    pub failure: Option<String>,
}

impl DirectReport {
    /// When stage `name` was reached.
    pub fn stage(&self, name: &str) -> Option<Duration> {
        self.stages
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
    }

    /// A few lines for people: stages, the reclaim, the phase table.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (n, t) in &self.stages {
            s += &format!("stage {n:<10} at {:6.2} s\n", t.as_secs_f64());
        }
        let d =
            |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        let mut rows = vec![("freed", &self.reclaim)];
        if let Some(r) = &self.reclaim_guest_free {
            rows.push(("guest MemFree regained", r));
        }
        for (what, r) in rows {
            s += &format!(
                "{what} {} MiB: RSS {:.1} -> {:.1} MiB ({:.0} % back); 50 % after {}, 90 % after {}, 99 % after {}\n",
                r.expected / MIB,
                r.start as f64 / MIB as f64,
                r.end as f64 / MIB as f64,
                r.fraction() * 100.0,
                d(r.p50),
                d(r.p90),
                d(r.p99),
            );
        }
        s += &self.timeline.phase_table();
        if let Some(f) = &self.failure {
            s += &format!("run failed: {f}\n");
        }
        s
    }
}

/// Boot `guest` under QEMU with `cfg` and follow it (see the module docs);
/// `progress` gets a line per stage and per second of samples.
pub fn run(
    guest: &Guest,
    cfg: &DirectConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<DirectReport, DirectError> {
    let mut qemu = Qemu::spawn(&cfg.qemu(guest))?;
    let start = qemu.started();
    let mut tl = Timeline::new();
    let mut obs = Observed::default();
    let mut stages = Vec::new();
    let mut next = 0;
    let mut stage_since = Instant::now();
    let mut seen = 0;
    let mut reporting_negotiated = None;
    let mut done_at: Option<Instant> = None;
    let mut steady_since = Instant::now();
    let mut last_host = 0u64;
    let mut last_progress = Instant::now();
    // MemFree at the last round's touch and free.
    let (mut free_touched, mut free_freed) = (None, None);
    let workload_time = Duration::from_millis(cfg.hold_ms * 2 * u64::from(cfg.rounds));
    let failure = loop {
        let t = start.elapsed();
        let lines = qemu.console().lines_from(seen);
        seen += lines.len();
        let mut error = None;
        for l in &lines {
            if let Some(st) = STAGES.get(next)
                && kernel_text(l).starts_with(st.line_start)
            {
                stages.push((st.name, t));
                tl.mark(t, st.name);
                progress(&format!(
                    "{:6.2} s  stage {}: {l}",
                    t.as_secs_f64(),
                    st.name
                ));
                next += 1;
                stage_since = Instant::now();
            }
            if let Some(rest) = l.strip_prefix("INIT|INFO: virtio_balloon bound to ") {
                reporting_negotiated = rest
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("reporting="))
                    .map(|v| v == "1");
            }
            if l.starts_with("WORKLOAD|INFO: phase=touched ") {
                free_touched = field(l, "memfree_mib");
            }
            if l.starts_with("WORKLOAD|INFO: phase=freed ") {
                free_freed = field(l, "memfree_mib");
            }
            for label in obs.line(l, t) {
                tl.mark(t, label);
            }
            if (l.contains("|ERROR") || l.starts_with("Kernel panic")) && error.is_none() {
                error = Some(l.clone());
            }
        }
        if let Some(e) = error {
            break Some(DirectError::Guest(e));
        }
        if let Some(status) = qemu.exited() {
            let stage = STAGES.get(next).map_or("settle", |s| s.name);
            break Some(DirectError::Exited { status, stage });
        }
        let host = qemu.rss()?;
        tl.push(Sample {
            t,
            host,
            guest: Some(obs.guest_bytes()),
            reported: None,
        });
        if last_progress.elapsed() >= Duration::from_secs(1) {
            progress(&tl.progress_line());
            last_progress = Instant::now();
        }
        if let Some(st) = STAGES.get(next) {
            let bound = if st.name == "done" {
                st.bound + workload_time
            } else {
                st.bound
            };
            if stage_since.elapsed() > bound {
                break Some(DirectError::Stage {
                    stage: st.name,
                    line: st.line_start,
                    waited: bound,
                });
            }
        } else {
            let d = *done_at.get_or_insert_with(|| {
                // Steady counts from the workload's end, not from its
                // touch (RSS holds still while it holds the memory).
                steady_since = Instant::now();
                Instant::now()
            });
            if host.abs_diff(last_host) >= MIB {
                steady_since = Instant::now();
                last_host = host;
            }
            if steady_since.elapsed() >= cfg.steady || d.elapsed() >= cfg.settle {
                break None;
            }
        }
        // The sampling period: RSS has no event to wait for.
        std::thread::sleep(cfg.period);
    };
    let end = start.elapsed();
    let from = obs.last_free.unwrap_or(end);
    // The last round's free: earlier rounds have translated the guest's
    // code paths already (QEMU's TCG code cache is in its RSS too).
    let reclaim = tl.reclaim(from, cfg.mib * MIB, Some(end));
    let reclaim_guest_free = match (free_touched, free_freed) {
        (Some(a), Some(b)) if b > a => Some(tl.reclaim(from, (b - a) * MIB, Some(end))),
        _ => None,
    };
    qemu.kill();
    Ok(DirectReport {
        stages,
        timeline: tl,
        observed: obs,
        reclaim,
        reclaim_guest_free,
        reporting_negotiated,
        console: qemu.console().text(),
        failure: failure.map(|e| e.to_string()),
    })
}

/// `runs` direct runs of the same configuration, one after another (the
/// baseline for the nested benchmark); a failed run stops the series.
pub fn measure(
    guest: &Guest,
    cfg: &DirectConfig,
    runs: u32,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<DirectReport>, DirectError> {
    let mut out = Vec::new();
    for n in 1..=runs {
        progress(&format!("run {n} of {runs}"));
        let r = run(guest, cfg, progress)?;
        let failed = r.failure.is_some();
        out.push(r);
        if failed {
            break;
        }
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// One row per run and a median row: time to userspace, and the RSS fall
/// after the free (against what was freed, and against what the guest's
/// MemFree regained): fraction back, and delays to 50/90/99 % (`-`: never).
pub fn table(reports: &[DirectReport]) -> String {
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let cols = |r: &DirectReport| -> [Option<f64>; 9] {
        let g = r.reclaim_guest_free;
        [
            secs(r.stage("userspace")),
            Some(r.reclaim.fraction() * 100.0),
            secs(r.reclaim.p50),
            secs(r.reclaim.p90),
            secs(r.reclaim.p99),
            g.map(|g| g.fraction() * 100.0),
            g.and_then(|g| secs(g.p50)),
            g.and_then(|g| secs(g.p90)),
            g.and_then(|g| secs(g.p99)),
        ]
    };
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    let mut s = String::from(
        "run  userspace_s  freed_back_%  p50_s  p90_s  p99_s  memfree_back_%  p50_s  p90_s  p99_s\n",
    );
    let rows: Vec<[Option<f64>; 9]> = reports.iter().map(cols).collect();
    let widths = [11, 12, 5, 5, 5, 14, 5, 5, 5];
    let mut line = |name: String, row: &[Option<f64>; 9]| {
        s += &format!("{name:<4}");
        for (v, w) in row.iter().zip(widths) {
            s += &format!(" {:>w$}", cell(*v));
        }
        s += "\n";
    };
    for (i, row) in rows.iter().enumerate() {
        line(format!("{}", i + 1), row);
    }
    // The median of each column over the runs that have a value (a
    // "never" leaves the run out of that column's median).
    let mut med = [None; 9];
    for (c, m) in med.iter_mut().enumerate() {
        *m = median(rows.iter().filter_map(|r| r[c]).collect());
    }
    line("med".into(), &med);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_leave_out_what_never_happened() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn kernel_time_stamps_are_stripped_and_nothing_else() {
        assert_eq!(
            kernel_text("[    0.000000] Booting Linux on physical CPU 0x0"),
            "Booting Linux on physical CPU 0x0"
        );
        assert_eq!(
            kernel_text("[   12.345678] Run /init as init process"),
            "Run /init as init process"
        );
        assert_eq!(kernel_text("INIT|INFO: x"), "INIT|INFO: x");
        assert_eq!(kernel_text("[not a time] x"), "[not a time] x");
    }

    #[test]
    fn the_command_line_carries_the_workload_parameters() {
        let mut c = DirectConfig::new(true, "/tmp/q".into());
        c.mib = 32;
        c.extra_append = "page_reporting.page_reporting_order=5".into();
        assert_eq!(
            c.append(),
            "console=ttyAMA0 rdinit=/init panic=-1 workload.mib=32 workload.hold_ms=2000 \
             workload.rounds=1 page_reporting.page_reporting_order=5"
        );
    }

    #[test]
    fn qemu_runs_a_plain_virt_machine_with_the_balloon() {
        let g = Guest {
            image: "/g/Image".into(),
            initramfs: "/g/initramfs.cpio.gz".into(),
            manifest_path: "/g/manifest.txt".into(),
            manifest: super::super::Manifest {
                packages: vec![],
                kernel_release: String::new(),
                modules: vec![],
                image_bytes: 0,
                initramfs_bytes: 0,
            },
            header: super::super::ImageHeader {
                text_offset: 0,
                image_size: 1,
            },
            downloaded: 0,
        };
        let cmd = crate::qemu::command(&DirectConfig::new(false, "/tmp/q".into()).qemu(&g));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = args.join(" ");
        assert_eq!(cmd.get_program(), "qemu-system-aarch64");
        assert!(
            line.starts_with("-machine virt -cpu cortex-a53 -m 1024M"),
            "{line}"
        );
        assert!(
            line.contains("-kernel /g/Image -initrd /g/initramfs.cpio.gz -append console=ttyAMA0"),
            "{line}"
        );
        assert!(
            line.contains("-device virtio-balloon-device,id=balloon0,free-page-reporting=off"),
            "{line}"
        );
        assert!(line.ends_with("-no-reboot"), "{line}");
    }
}
