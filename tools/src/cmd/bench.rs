//! `tools bench`: run the project's benchmarks and show the figures (see
//! `tools::bench`): tables on stdout and in `summary.md`, `summary.json`,
//! and plots in `--out`: `bench.svg`, the host's memory under each policy
//! (`policy-*.svg`, `qemu-*.svg`).
//!
//! Exit status: 0 when every part ran (and each reclaim run got at least
//! 90 % back), 1 when a part failed, 2 on bad arguments.

use super::image::{target_dir, workspace};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use tools::bare;
use tools::bench::QemuWorkload::{self, Bulk, CppTrace, Fragmented, Latency, Trace};
use tools::bench::{self, PlatformRun, ReclaimPoint, ReclaimRun, Results, Tunables};
use tools::demo::{self, DemoConfig};
use tools::image::{self, Board, ImageSpec, KernelConfig};
use tools::pd_build::BuiltIn;
use tools::qemu::{self, Arch, BalloonDevice};
use tools::sel4::{self, Sel4Run};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The memserver's allocator (memserver/benches/alloc.rs).
    Alloc,
    /// The balloon driver's reporting path (balloon/benches/report.rs).
    Report,
    /// The whole system on the host platform, over reporting tunables.
    Reclaim,
    /// The whole system in QEMU: the bare platform on both arches, and the
    /// Microkit image on seL4 (both boards, debug and release) when
    /// `MICROKIT_SDK` is set.
    Qemu,
    /// The reporting policies side by side (tools::policy_bench), on two
    /// 1 GiB guests (tools/systems/host-2x1g.xml).
    Policy,
    /// Linux in a VM on seL4 beside Linux directly under QEMU, the same
    /// workload (tools::nested_bench); needs `MICROKIT_SDK`.
    Nested,
}

/// The scenarios of the QEMU part ([`in_qemu`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QemuScenario {
    /// Each guest's default workload, every platform and kernel config.
    Bulk,
    /// 1 GiB freed by one guest ([`bench::QEMU_LATENCY`]).
    Latency,
    /// [`bench::QEMU_FRAGMENTED`].
    Fragmented,
    /// [`bench::QEMU_TRACE`].
    Trace,
    /// [`bench::QEMU_CPP_TRACE`].
    CppTrace,
    /// [`bench::QEMU_CHURN`] against reporting off.
    Churn,
}

impl QemuScenario {
    fn workload(self) -> Option<QemuWorkload> {
        match self {
            QemuScenario::Bulk => Some(Bulk),
            QemuScenario::Latency => Some(Latency),
            QemuScenario::Fragmented => Some(Fragmented),
            QemuScenario::Trace => Some(Trace),
            QemuScenario::CppTrace => Some(CppTrace),
            QemuScenario::Churn => None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A short run: criterion's --quick, one run per reclaim point with
    /// small guests and a 300 ms reporting delay.
    #[arg(long)]
    pub quick: bool,
    /// Only these parts (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Part>,
    /// Runs per reclaim point (default 3, 1 with --quick).
    #[arg(long)]
    pub runs: Option<u32>,
    /// Where summary.md, summary.json and bench.svg go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The PDs' host binaries for the reclaim part (default: build them
    /// next to this binary, as `tools demo` does).
    #[arg(long)]
    pub pd_dir: Option<PathBuf>,
    /// The policy part's scenarios (comma-separated: latency, fragmented,
    /// churn, trace, cpp-trace, clang-trace; default all).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = clap::builder::PossibleValuesParser::new(tools::policy_bench::SCENARIOS)
    )]
    pub policy_scenarios: Vec<String>,
    /// The QEMU part's scenarios (comma-separated; default all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub qemu_scenarios: Vec<QemuScenario>,
}

pub fn main(args: Args) -> ExitCode {
    let parts = if args.only.is_empty() {
        vec![
            Part::Alloc,
            Part::Report,
            Part::Reclaim,
            Part::Policy,
            Part::Qemu,
        ]
    } else {
        args.only.clone()
    };
    let started = Instant::now();
    let mut r = Results::default();
    let mut policies = None;
    let mut nested = None;
    for part in &parts {
        let res = match part {
            Part::Alloc => alloc(&args, &mut r),
            Part::Report => report(&args, &mut r),
            Part::Reclaim => reclaim(&args, &mut r),
            Part::Qemu => in_qemu(&args.qemu_scenarios, &mut r),
            Part::Policy => policy(&args).map(|c| policies = Some(c)),
            Part::Nested => nested_vs_direct(&args).map(|c| nested = Some(c)),
        };
        if let Err(e) = res {
            eprintln!("bench: {part:?}: {e}");
            r.errors.push(format!("{part:?}: {e}"));
        }
    }
    match write(
        &args,
        &r,
        policies.as_ref(),
        nested.as_ref(),
        started.elapsed(),
    ) {
        Ok(()) if r.errors.is_empty() => ExitCode::SUCCESS,
        Ok(()) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(1)
        }
    }
}

/// `cargo bench -p <pkg> --bench <bench>`, its output shown as it comes
/// (criterion says what it measures, so that is the progress) and kept.
fn cargo_bench(pkg: &str, bench: &str, quick: bool) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace())
        .args(["bench", "-p", pkg, "--bench", bench, "--"])
        .stdout(Stdio::piped());
    if quick {
        cmd.arg("--quick");
    }
    eprintln!("bench: cargo bench -p {pkg} --bench {bench}");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("running cargo bench: {e}"))?;
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| format!("reading cargo bench: {e}"))?;
            eprintln!("  {bench}| {line}");
            out.push_str(&line);
            out.push('\n');
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo bench: {e}"))?;
    if !status.success() {
        return Err(format!("cargo bench -p {pkg} --bench {bench}: {status}"));
    }
    Ok(out)
}

fn estimates(r: &mut Results, ids: &[&str]) -> Result<(), String> {
    for id in ids {
        let e = bench::read_estimate(&target_dir(), id)?;
        r.estimates.push((id.to_string(), e));
    }
    Ok(())
}

fn alloc(args: &Args, r: &mut Results) -> Result<(), String> {
    // Computed, not remembered: the metadata the core asks for a 1 GiB zone.
    let zone = [memserver::ZoneSpec {
        base_pfn: 0x40000,
        pages: 262_144,
        owner: 0,
    }];
    r.metadata_per_page = Some(memserver::metadata_bytes(&zone) as f64 / 262_144.0);
    let out = cargo_bench("memserver", "alloc", args.quick)?;
    let s = bench::parse_alloc_output(&out);
    if s.variants.is_empty() {
        return Err("the alloc bench printed no interleaved figures".into());
    }
    r.alloc = Some(s);
    estimates(
        r,
        &[
            "alloc_free_1GiB/memserver_reporting_off",
            "alloc_free_1GiB/memserver_reporting_on",
            "alloc_free_1GiB/buddy_system_allocator",
        ],
    )
}

fn report(args: &Args, r: &mut Results) -> Result<(), String> {
    cargo_bench("balloon", "report", args.quick)?;
    estimates(
        r,
        &[
            "discard_64MiB/raw_punch_hole",
            "discard_64MiB/refault_after_punch_hole",
            "discard_64MiB/touch_resident",
            "discard_64MiB/driver_report_batch",
            "report_roundtrip_4KiB",
            "report_roundtrip_4KiB_futex_doorbell",
        ],
    )
}

/// The PDs' binaries: `--pd-dir`, or built next to this binary.
fn pd_dir(args: &Args) -> Result<PathBuf, String> {
    if let Some(d) = &args.pd_dir {
        return Ok(d.clone());
    }
    demo::pds_next_to_this_binary(&workspace(), true, None)
}

fn reclaim(args: &Args, r: &mut Results) -> Result<(), String> {
    let bin_dir = pd_dir(args)?;
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    // Linux's defaults are order 9, delay 2 s, capacity 32, one batch in
    // flight; the sweep varies what sets the reporting work's pace.
    let delay_ms = if args.quick { 300 } else { 2000 };
    let guest_mib = if args.quick { 32 } else { 256 };
    // The guests hold what they touched long enough for the boot-time
    // report to end (at capacity 8 a 512 MiB zone takes 8 passes, one
    // delay apart), so their frees meet an idle worker and the time from
    // the free measures one delay plus the reporting of what they freed.
    let hold_ms = delay_ms * 10;
    let workload = format!("pattern=bulk,mib={guest_mib},hold_ms={hold_ms},rounds=1,live_mib=8");
    r.reclaim_workload = format!("2 guests: {workload}");
    let points: Vec<Tunables> = [8u16, 32]
        .iter()
        .flat_map(|&capacity| {
            [1u8, 4].map(|in_flight| Tunables {
                order: 9,
                delay_ms,
                capacity,
                in_flight,
            })
        })
        .collect();
    let total = points.len() * runs as usize;
    let mut n = 0;
    let mut failures = Vec::new();
    for t in points {
        let mut point = ReclaimPoint {
            tunables: t,
            runs: Vec::new(),
        };
        for _ in 0..runs {
            n += 1;
            eprintln!("bench: reclaim {n}/{total}: {}", t.env_text());
            let cfg = DemoConfig {
                system: workspace().join("system.xml"),
                bin_dir: bin_dir.clone(),
                guest_params: workload.clone(),
                tunables: t.env_text(),
                timeout: Duration::from_secs(120),
                period: Duration::from_millis(20),
                // Up to 8 passes for what the guests freed, as above.
                settle: Duration::from_millis(delay_ms * 12) + Duration::from_secs(5),
                device: balloon::model::DeviceConfig::default(),
                watch: None,
                set_tunables: Vec::new(),
                control_socket: None,
            };
            let report = demo::run(&cfg, &mut |_| {})?;
            let run = ReclaimRun::from_report(&report);
            if !report.memory_came_back(0.9) {
                failures.push(format!(
                    "{}: {:.1} % back{}",
                    t.env_text(),
                    run.fraction * 100.0,
                    if report.problems.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", report.problems.join("; "))
                    }
                ));
            }
            point.runs.push(run);
        }
        r.reclaim.push(point);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("less than 90 % came back: {}", failures.join(", ")))
    }
}

/// The system in QEMU with QEMU's virtio-balloon: the bare platform on
/// both arches, then seL4 on both boards in both kernel configs (skipped,
/// and said, without an SDK), each also with Linux's policy built in (seL4:
/// release). One run each; the runs are the tests' runs (`tools::bare`,
/// `tools::sel4`), measured the same way. Then 1 GiB freed by one guest
/// ([`bench::QEMU_LATENCY`], on its own description), the fragmented
/// ([`bench::QEMU_FRAGMENTED`]) and the trace ([`bench::QEMU_TRACE`])
/// workloads, on the bare platform and seL4 release, both policies side by
/// side. Last the churn workload ([`bench::QEMU_CHURN`]) against reporting
/// off, on the bare platform and seL4 release, both arches. Only
/// `scenarios`, when some are named.
fn in_qemu(scenarios: &[QemuScenario], r: &mut Results) -> Result<(), String> {
    let wanted = |s: QemuScenario| scenarios.is_empty() || scenarios.contains(&s);
    let workloads: Vec<QemuWorkload> = [
        QemuScenario::Bulk,
        QemuScenario::Latency,
        QemuScenario::Fragmented,
        QemuScenario::Trace,
        QemuScenario::CppTrace,
    ]
    .into_iter()
    .filter(|&s| wanted(s))
    .filter_map(QemuScenario::workload)
    .collect();
    let out = target_dir().join("bench").join("qemu");
    let mut failures = Vec::new();
    // Each image with the default (adaptive) policy, then with Linux's
    // rules built in (`--tunables policy=linux`), side by side; each run
    // in a dir of its own (`<name><suffix>`).
    // The plots of QEMU's memory put each run beside the others of its
    // scenario (`r.memory`), labelled by policy.
    const LINUX: (&str, &str, Option<&str>) = (", policy linux", "-linux", Some("policy=linux"));
    const POLICIES: [(&str, &str, Option<&str>); 2] = [("", "", None), LINUX];
    let policy = |tunables: Option<&str>| {
        if tunables.is_some() {
            "linux"
        } else {
            "adaptive"
        }
    };
    let description = |workload: QemuWorkload| {
        bare::description_of(&workspace().join(workload.system()), bare::Variant::System)
            .map_err(|e| e.to_string())
    };
    for &workload in &workloads {
        let xml = description(workload)?;
        for arch in [Arch::Aarch64, Arch::X86_64] {
            for (label, suffix, tunables) in POLICIES {
                let name = format!("bare {}{label}{}", bare::target(arch), workload.label());
                eprintln!("bench: {name}: building and booting");
                let dir = out.join(format!(
                    "{}{suffix}{}",
                    bare::target(arch),
                    workload.dir_suffix()
                ));
                let built_in = BuiltIn {
                    tunables: tunables.map(String::from),
                    guest_params: workload.guest_params().map(String::from),
                };
                let cfg = bare_run(&dir, arch, &xml, &built_in)?;
                let report = qemu::run(&cfg, &mut |l| eprintln!("  {name}| {l}"))
                    .map_err(|e| e.to_string())?;
                if let Err(e) = bare::verdict(&report, sel4::FRACTION) {
                    failures.push(format!("{name}: {e}"));
                }
                let scenario = format!("bare {}{}", bare::target(arch), workload.label());
                record(r, &name, &report, workload, (&scenario, policy(tunables)));
            }
        }
    }
    if wanted(QemuScenario::Churn) {
        let xml = description(Bulk)?;
        for arch in [Arch::Aarch64, Arch::X86_64] {
            let churn = churn_runs(
                &format!("bare {}", bare::target(arch)),
                &mut |variant, tunables| {
                    let dir = out.join(format!("{}-churn-{variant}", bare::target(arch)));
                    let built_in = BuiltIn {
                        tunables: Some(tunables.into()),
                        guest_params: Some(bench::QEMU_CHURN.into()),
                    };
                    bare_run(&dir, arch, &xml, &built_in)
                },
                &mut failures,
                &mut r.memory,
            )?;
            r.churn.push(churn);
        }
    }
    let sdk = match image::sdk_from_env() {
        Ok(sdk) => sdk,
        Err(e) => {
            eprintln!("bench: seL4 rows skipped: {e}");
            return finish(failures);
        }
    };
    // Bulk: both kernel configs, Linux's policy in release; the other
    // workloads: both policies in release.
    let runs = Board::ALL
        .into_iter()
        .filter(|_| workloads.contains(&Bulk))
        .flat_map(|board| {
            [
                (board, KernelConfig::Debug, POLICIES[0], Bulk),
                (board, KernelConfig::Release, POLICIES[0], Bulk),
                (board, KernelConfig::Release, LINUX, Bulk),
            ]
        });
    let other_runs = workloads
        .iter()
        .copied()
        .filter(|&w| w != Bulk)
        .flat_map(|workload| {
            Board::ALL.into_iter().flat_map(move |board| {
                POLICIES.map(|policy| (board, KernelConfig::Release, policy, workload))
            })
        });
    for (board, config, (label, suffix, tunables), workload) in runs.chain(other_runs) {
        let name = format!("seL4 {board} {config}{label}{}", workload.label());
        eprintln!("bench: {name}: building and booting");
        let dir = out.join(format!(
            "sel4-{board}-{config}{suffix}{}",
            workload.dir_suffix()
        ));
        let built_in = BuiltIn {
            tunables: tunables.map(String::from),
            guest_params: workload.guest_params().map(String::from),
        };
        let img = sel4_image(&sdk, board, config, workload.system(), &dir, built_in)?;
        let cfg = sel4::run_config(&img, Sel4Run::Reporting, &dir, Duration::from_secs(240))?;
        let report =
            qemu::run(&cfg, &mut |l| eprintln!("  {name}| {l}")).map_err(|e| e.to_string())?;
        if let Err(e) = sel4::verdict(&img, Sel4Run::Reporting, &report) {
            failures.push(format!("{name}: {e}"));
        }
        let scenario = format!("seL4 {board} {config}{}", workload.label());
        record(r, &name, &report, workload, (&scenario, policy(tunables)));
    }
    if !wanted(QemuScenario::Churn) {
        return finish(failures);
    }
    let config = KernelConfig::Release;
    for board in Board::ALL {
        let churn = churn_runs(
            &format!("seL4 {board} {config}"),
            &mut |variant, tunables| {
                let dir = out.join(format!("sel4-{board}-{config}-churn-{variant}"));
                let built_in = BuiltIn {
                    tunables: Some(tunables.into()),
                    guest_params: Some(bench::QEMU_CHURN.into()),
                };
                let img = sel4_image(&sdk, board, config, Bulk.system(), &dir, built_in)?;
                sel4::run_config(&img, Sel4Run::Reporting, &dir, Duration::from_secs(240))
            },
            &mut failures,
            &mut r.memory,
        )?;
        r.churn.push(churn);
    }
    finish(failures)
}

/// Build the bare image of `xml` for `arch` with `built_in` into `dir`;
/// the config of its run against QEMU's balloon with reporting.
fn bare_run(
    dir: &Path,
    arch: Arch,
    xml: &str,
    built_in: &BuiltIn,
) -> Result<qemu::RunConfig, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let kernel = bare::build(
        &workspace(),
        &tools::pd_build::target_dir(&target_dir()),
        dir,
        arch,
        "system",
        xml,
        built_in,
    )
    .map_err(|e| e.to_string())?;
    let balloon = BalloonDevice {
        reporting: true,
        modern_mmio: false,
    };
    let guests = bare::guests(xml)?;
    Ok(bare::run_config(
        arch,
        kernel,
        balloon,
        dir.join("qmp.sock"),
        guests,
        None,
    ))
}

/// Build the Microkit image of `system` (in the workspace) for `board` in
/// `config` with `built_in` into `dir`.
fn sel4_image(
    sdk: &Path,
    board: Board,
    config: KernelConfig,
    system: &str,
    dir: &Path,
    built_in: BuiltIn,
) -> Result<image::Image, String> {
    image::build(&ImageSpec {
        board,
        config,
        system: workspace().join(system),
        sdk: sdk.to_path_buf(),
        workspace: workspace(),
        target_dir: tools::pd_build::target_dir(&target_dir()),
        out_dir: dir.to_path_buf(),
        built_in,
        vm_guest: None,
    })
    .map_err(|e| e.to_string())
}

/// The churn runs of one platform in QEMU: each of
/// [`bench::QEMU_CHURN_VARIANTS`] built once (`build` makes its image and
/// gives its run's config), then run [`bench::QEMU_CHURN_RUNS`] times,
/// taking turns. A run whose guests did not verify, or that failed, adds to
/// `failures` instead of to the figures. The first good run of each variant
/// goes to `memory`, for the scenario's plot.
fn churn_runs(
    platform: &str,
    build: &mut dyn FnMut(&str, &str) -> Result<qemu::RunConfig, String>,
    failures: &mut Vec<String>,
    memory: &mut Vec<bench::MemoryRun>,
) -> Result<bench::ChurnRuns, String> {
    let mut configs = Vec::new();
    for (variant, tunables) in bench::QEMU_CHURN_VARIANTS {
        eprintln!("bench: {platform}, churn, {variant}: building");
        configs.push((variant, build(variant, tunables)?));
    }
    let mut times: Vec<(String, Vec<f64>)> = bench::QEMU_CHURN_VARIANTS
        .iter()
        .map(|(v, _)| (v.to_string(), Vec::new()))
        .collect();
    for i in 0..bench::QEMU_CHURN_RUNS {
        for (k, (variant, cfg)) in configs.iter().enumerate() {
            let name = format!(
                "{platform}, churn, {variant}, run {}/{}",
                i + 1,
                bench::QEMU_CHURN_RUNS
            );
            eprintln!("bench: {name}: booting");
            let report =
                qemu::run(cfg, &mut |l| eprintln!("  {name}| {l}")).map_err(|e| e.to_string())?;
            let o = &report.observed;
            let bad = report
                .failure
                .clone()
                .or_else(|| o.problems.first().cloned())
                .or_else(|| {
                    (!o.all_verified(&cfg.guests))
                        .then(|| format!("guests verified: {:?}", o.verified))
                });
            match (bad, o.workload_time()) {
                (None, Some(t)) => {
                    eprintln!("bench: {name}: {:.2} s", t.as_secs_f64());
                    if times[k].1.is_empty() {
                        memory.push(bench::MemoryRun {
                            scenario: format!("{platform}, churn"),
                            variant: variant.to_string(),
                            timeline: report.timeline.clone(),
                        });
                    }
                    times[k].1.push(t.as_secs_f64());
                }
                (bad, _) => failures.push(format!(
                    "{name}: {}",
                    bad.unwrap_or_else(|| "no workload time on the console".into())
                )),
            }
        }
    }
    Ok(bench::ChurnRuns {
        platform: platform.to_string(),
        times,
    })
}

/// Add run `report` of `workload` to its table of QEMU runs in `r`, and its
/// timeline to the plot of `scenario`, labelled `variant`.
fn record(
    r: &mut Results,
    name: &str,
    report: &qemu::RunReport,
    workload: QemuWorkload,
    (scenario, variant): (&str, &str),
) {
    r.memory.push(bench::MemoryRun {
        scenario: scenario.to_string(),
        variant: variant.to_string(),
        timeline: report.timeline.clone(),
    });
    match workload {
        Trace | CppTrace => {
            let t = bench::TraceRun::from_report(
                name,
                workload.guest_params().unwrap_or_default(),
                report,
            );
            eprintln!(
                "bench: {name}: {} MiB averaged over the replay",
                t.avg_mib.map_or("-".into(), |m| format!("{m:.0}"))
            );
            r.trace.push(t);
        }
        Fragmented => {
            let f = bench::FragmentedRun::from_report(name, report, bench::FRAGMENTED_WINDOW);
            eprintln!(
                "bench: {name}: {}",
                match &f.back {
                    Ok(x) => format!(
                        "{:.1} % of the first free back within the window",
                        x * 100.0
                    ),
                    Err(e) => e.clone(),
                }
            );
            r.fragmented.push(f);
        }
        Bulk | Latency => r.platforms.push(PlatformRun::from_report(name, report)),
    }
}

fn finish(failures: Vec<String>) -> Result<(), String> {
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Nested against direct, `--runs` runs of each (default 3).
fn nested_vs_direct(args: &Args) -> Result<tools::nested_bench::Comparison, String> {
    let sdk = image::sdk_from_env().map_err(|e| e.to_string())?;
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 });
    let out = target_dir().join("bench").join("nested");
    let c = tools::nested_bench::run(&sdk, &workspace(), &out, runs, &mut |l| {
        eprintln!("bench: {l}")
    })?;
    let problems = c.problems();
    if problems.is_empty() {
        Ok(c)
    } else {
        eprintln!("{}", c.markdown());
        Err(format!("nested runs had problems: {problems:?}"))
    }
}

/// Both policies on the 2 x 1 GiB description, the PDs built from it into
/// their own target directory (the layout is generated at build time).
fn policy(args: &Args) -> Result<tools::policy_bench::Comparison, String> {
    let system = workspace().join("tools/systems/host-2x1g.xml");
    let target = target_dir().join("policy-2x1g");
    eprintln!("bench: building the PDs from {}", system.display());
    demo::build_pds_from(&workspace(), &target, "release", Some(&system))?;
    let c = tools::policy_bench::run(
        &system,
        &target.join("release"),
        &args.out,
        &args.policy_scenarios,
        &mut |l| eprintln!("bench: {l}"),
    )?;
    let problems: Vec<&String> = c.figures.iter().flat_map(|f| &f.problems).collect();
    if problems.is_empty() {
        Ok(c)
    } else {
        eprintln!("{}", c.markdown());
        Err(format!("policy runs had problems: {problems:?}"))
    }
}

fn write(
    args: &Args,
    r: &Results,
    policies: Option<&tools::policy_bench::Comparison>,
    nested: Option<&tools::nested_bench::Comparison>,
    took: Duration,
) -> Result<(), String> {
    let out: &Path = &args.out;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let header = format!(
        "# tools bench{}\n\n{cores} cores; took {:.0} s. Commands: `cargo bench -p memserver --bench alloc`, \
         `cargo bench -p balloon --bench report`, and `tools::demo` runs (as `tools demo`).\n\n",
        if args.quick { " --quick" } else { "" },
        took.as_secs_f64()
    );
    let memory_plots = r.plot_memory(out)?;
    let mut md = format!("{header}{}", r.markdown());
    if !memory_plots.is_empty() {
        md.push_str("\nQEMU's memory over each scenario's runs, a line per policy:");
        for p in &memory_plots {
            md.push_str(&format!(" `{}`", p.display()));
        }
        md.push('\n');
    }
    if let Some(c) = policies {
        md.push('\n');
        md.push_str(&c.markdown());
    }
    if let Some(c) = nested {
        md.push('\n');
        md.push_str(&c.markdown());
    }
    println!("{md}");
    let write = |name: &str, text: &str| {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    write("summary.md", &md)?;
    let json = serde_json::to_string_pretty(&r.json()).map_err(|e| e.to_string())?;
    write("summary.json", &json)?;
    let svg = out.join("bench.svg");
    r.plot_svg(&svg)?;
    println!(
        "summary: {}  data: {}  plot: {}",
        out.join("summary.md").display(),
        out.join("summary.json").display(),
        svg.display()
    );
    Ok(())
}
