//! The bare platform in QEMU (DESIGN §5.3, issue 6): build the `bare` image
//! (every PD of `system.xml` in one ELF), boot it with QEMU's own
//! virtio-balloon through the shared runner ([`crate::qemu`]), and judge the
//! run.
//!
//! Unlike seL4, the bare image does not zero RAM at boot, so QEMU's RSS
//! starts low and the boot-time report returns nothing measurable; the
//! verdict is about what the guests touched and freed.
//!
//! The image holds `system.xml` or its test-only hostile [`Variant`]
//! (issue 8: guest1 runs `hostile.elf`), judged by [`hostile_verdict`] as
//! well.

use crate::qemu::{Arch, BalloonDevice, Boot, QemuConfig, RunConfig, RunReport};
use crate::timeline::{Reclaim, Timeline};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// QEMU's RAM for the image: the layout in bare/src/lib.rs assumes 2 GiB.
pub const MEMORY_MIB: u32 = 2048;

/// The memserver's reporting delay (DESIGN §2 default, `Tunables`).
pub const REPORTING_DELAY: Duration = Duration::from_secs(2);

/// How long after the guests' last free 90 % of it must be back: the
/// reporting delay (the worker is scheduled at most that long after the free
/// that requested it; an earlier pending request only makes it sooner), plus
/// 5 s for the reporting itself: 512 MiB is 8 batches of 32 blocks, one
/// virtqueue round trip each, which took 0.1-0.5 s under TCG here, so 5 s
/// leaves a 10x margin for a loaded CI machine, plus the 250 ms sampling.
pub const RECLAIM_BOUND: Duration = Duration::from_secs(7);

/// How long after the guests' last free 90 % of `freed` bytes must be
/// back: [`RECLAIM_BOUND`] for up to 512 MiB, and 5 s more per 512 MiB
/// beyond (Linux's rules report a fixed share of each free list per pass,
/// so more memory takes more passes: 1 GiB takes them about 8 s).
pub fn reclaim_bound(freed: u64) -> Duration {
    const PER: u64 = 512 * MIB;
    let beyond = freed.saturating_sub(PER);
    RECLAIM_BOUND + Duration::from_secs(5).mul_f64(beyond as f64 / PER as f64)
}

/// A failure to build the image.
#[derive(Debug)]
pub enum BareError {
    /// cargo could not be run or failed (its stderr).
    Cargo(String),
    /// The system description could not be read, derived or written.
    Description(String),
}

impl fmt::Display for BareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BareError::Cargo(m) => write!(f, "building the bare image: {m}"),
            BareError::Description(m) => write!(f, "the bare image's system description: {m}"),
        }
    }
}

impl std::error::Error for BareError {}

/// The Rust target of the image.
pub fn target(arch: Arch) -> &'static str {
    match arch {
        Arch::Aarch64 => "aarch64-unknown-none",
        Arch::X86_64 => "x86_64-unknown-none",
    }
}

/// Which system the `system` image holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `system.xml` as it is.
    System,
    /// Test-only (issue 8): [`HOSTILE_PD`] runs [`HOSTILE_IMAGE`], which
    /// attacks the memserver while guest0 runs its workload.
    Hostile,
}

impl Variant {
    /// For directory names.
    pub fn name(self) -> &'static str {
        match self {
            Variant::System => "system",
            Variant::Hostile => "hostile",
        }
    }
}

/// The PD the hostile variant replaces, and what it runs instead
/// (guest/src/bin/hostile.rs).
pub const HOSTILE_PD: &str = "guest1";
pub const HOSTILE_IMAGE: &str = "hostile.elf";
/// The hostile PD's summary line, its last: the runner waits for it too.
pub const HOSTILE_DONE: &str = "HOSTILE|INFO: done";

/// The QEMU size (MiB) the hostile runs ask the balloon for once the run
/// settled: 256 MiB less than [`MEMORY_MIB`]. The inflate makes the
/// memserver log its counters (`peers:`) after the hostile PD finished,
/// which [`hostile_verdict`] reads; it logs them only when a reporting or
/// balloon pass settles.
pub const HOSTILE_BALLOON_MIB: u64 = 1792;

/// The description of `variant`, from the workspace's `system.xml`
/// (written for qemu_virt_aarch64; [`build`] derives the x86_64 one).
pub fn description(workspace: &Path, variant: Variant) -> Result<String, BareError> {
    description_of(&workspace.join("system.xml"), variant)
}

/// As [`description`], from the description at `path`.
pub fn description_of(path: &Path, variant: Variant) -> Result<String, BareError> {
    let xml = std::fs::read_to_string(path)
        .map_err(|e| BareError::Description(format!("{}: {e}", path.display())))?;
    // The guests it has: one at least, no more than the memserver serves.
    let sys = sdf::System::parse(&xml)
        .map_err(|e| BareError::Description(format!("{}:{e}", path.display())))?;
    sdf::guests::guests(&sys)
        .map_err(|e| BareError::Description(format!("{}: {e}", path.display())))?;
    match variant {
        Variant::System => Ok(xml),
        Variant::Hostile => crate::image::variant(&xml, HOSTILE_PD, HOSTILE_IMAGE)
            .map_err(|e| BareError::Description(e.to_string())),
    }
}

/// Build image `bin` (`system` or `pingpong`) of the `bare` crate for
/// `arch`, release profile, in `target_dir` (shared by the builds of every
/// description, [`crate::pd_build`]; not the target dir of a cargo that is
/// running us: it holds the lock), with the memserver's reporting tunables
/// and the guests' workload `built_in` (checked first), and copy the ELF to
/// `out_dir/<bin>`, the path returned.
/// The `system` image holds the PDs of `system` (a description written for
/// qemu_virt_aarch64, e.g. from [`description`]); bare/build.rs gets it
/// through `SYSTEM_XML`.
pub fn build(
    workspace: &Path,
    target_dir: &Path,
    out_dir: &Path,
    arch: Arch,
    bin: &str,
    system: &str,
    built_in: &crate::pd_build::BuiltIn,
) -> Result<PathBuf, BareError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "-p", "bare", "--bin", bin])
        .args(["--target", target(arch)])
        .arg("--target-dir")
        .arg(target_dir);
    built_in.apply(&mut cmd).map_err(BareError::Cargo)?;
    let xml = match arch {
        Arch::Aarch64 => system.to_string(),
        // The PDs see the PC as on Microkit: the x86_64_generic variant
        // (HPET, PCI configuration ports, IOAPIC pins).
        Arch::X86_64 => crate::image::board_sdf(system, crate::image::Board::X86_64Generic)
            .map_err(|e| BareError::Description(format!("its x86_64 variant: {e}")))?,
    };
    // Until the ELF is copied out: the next build rewrites it.
    let _lock = crate::pd_build::lock(target_dir).map_err(BareError::Cargo)?;
    let path = target_dir.join(format!("system-{}.xml", target(arch)));
    write_if_changed(&path, &xml).map_err(BareError::Description)?;
    cmd.env("SYSTEM_XML", &path);
    let out = cmd
        .output()
        .map_err(|e| BareError::Cargo(format!("running cargo: {e}")))?;
    if !out.status.success() {
        return Err(BareError::Cargo(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let elf = target_dir.join(target(arch)).join("release").join(bin);
    if bin == "system" {
        // The image must hold the PDs of the description it is booted for.
        let want = sdf::stamp::Stamp::of_file(&path).map_err(BareError::Description)?;
        sdf::stamp::check(&elf, "the bare image", &want).map_err(BareError::Description)?;
    }
    std::fs::create_dir_all(out_dir)
        .map_err(|e| BareError::Cargo(format!("{}: {e}", out_dir.display())))?;
    let copy = out_dir.join(bin);
    std::fs::copy(&elf, &copy)
        .map_err(|e| BareError::Cargo(format!("copying {}: {e}", elf.display())))?;
    Ok(copy)
}

/// Write `text` to `path` unless it holds it already: bare/build.rs reruns
/// when the file changes (`rerun-if-changed`), and a new mtime alone would
/// rebuild the image every time.
fn write_if_changed(path: &Path, text: &str) -> Result<(), String> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The guests of `system.xml` as the runner waits for them (log prefixes).
pub fn guests(system_xml: &str) -> Result<Vec<String>, String> {
    let sys = sdf::System::parse(system_xml).map_err(|e| e.to_string())?;
    Ok(sys
        .pds
        .iter()
        .filter(|p| p.program_image.as_deref() == Some(sdf::guests::GUEST_IMAGES[0]))
        .map(|p| p.name.to_uppercase())
        .collect())
}

/// The run of `kernel` (a bare image) with `balloon`, following `guests`.
pub fn run_config(
    arch: Arch,
    kernel: PathBuf,
    balloon: BalloonDevice,
    qmp: PathBuf,
    guests: Vec<String>,
    balloon_target: Option<u64>,
) -> RunConfig {
    RunConfig {
        qemu: QemuConfig {
            arch,
            boot: Boot::Kernel(kernel),
            memory_mib: MEMORY_MIB,
            balloon: Some(balloon),
            qmp,
            // A crash must end the run, not reboot into it again.
            extra: vec!["-no-reboot".into()],
        },
        guests,
        done_lines: Vec::new(),
        console_marks: Vec::new(),
        timeout: Duration::from_secs(180),
        period: Duration::from_millis(250),
        steady: Duration::from_secs(3),
        // Long enough for the reporting delay plus RECLAIM_BOUND after the
        // guests are done.
        settle: Duration::from_secs(15),
        balloon_target,
        balloon_back: None,
        balloon_back_line: None,
        // One image, one UART, no seL4: the console is the PDs' log.
        log_pages: Vec::new(),
        console_lines: Vec::new(),
        console_stdin: false,
    }
}

/// What came back of everything the guests freed, measured from the RSS
/// peak before their *first* free (the runner's `reclaim` starts at the last one, which
/// misses what was reported in between when the frees are further apart
/// than the reporting delay, as on a loaded machine), with the 50/90/99 %
/// times counted from the *last* free (zero if reached before it).
pub fn freed_reclaim(r: &RunReport) -> Option<Reclaim> {
    let first = r.observed.first_free?;
    let last = r.observed.last_free.unwrap_or(first).max(first);
    // The bare image zeroes nothing at boot, so QEMU's RSS only grows until
    // the guests free: its peak before the first free is the memory before
    // it. (The last sample before the free's line is not: a policy that
    // reports a quiet zone at once can give part back before the line is
    // read, and the window would miss it.) With more guests than cores the
    // guests run one after another, and a late one may still be touching
    // memory after an early one freed: the RSS grows past that peak until
    // the last free, by memory that is freed later. So: the peak before
    // the last free.
    let start = r.timeline.peak_before(last);
    let mut rc = r
        .timeline
        .reclaim_from(start, first, r.observed.freed, None);
    for p in [&mut rc.p50, &mut rc.p90, &mut rc.p99] {
        *p = p.map(|d| (first + d).saturating_sub(last));
    }
    Some(rc)
}

/// The runner's summary without its boot-time line (the bare image does
/// not zero RAM at boot, so there is nothing to give back then), plus
/// [`freed_reclaim_line`].
pub fn summary(r: &RunReport) -> String {
    let mut shown = r.clone();
    shown.boot = None;
    format!("{}{}", shown.summary(), freed_reclaim_line(r))
}

/// [`freed_reclaim`] as one line for people.
pub fn freed_reclaim_line(r: &RunReport) -> String {
    match freed_reclaim(r) {
        Some(rc) => {
            Timeline::reclaim_line("of all the guests freed (times after the last free)", &rc)
        }
        None => "the guests freed nothing".into(),
    }
}

/// Why a run did not show the host getting the memory back.
pub fn verdict(r: &RunReport, fraction: f64) -> Result<(), String> {
    if let Some(f) = &r.failure {
        return Err(format!("the run failed: {f}"));
    }
    let guests = r.observed.done.len();
    if guests == 0 || r.observed.verified.len() != guests {
        return Err(format!(
            "guests done {:?}, verified {:?}",
            r.observed.done, r.observed.verified
        ));
    }
    if r.observed.freed == 0 {
        return Err("the guests freed nothing".into());
    }
    let rc = freed_reclaim(r).ok_or("no free of the guests on the timeline")?;
    if rc.fraction() < fraction {
        return Err(format!(
            "{:.0} % of the {} MiB the guests freed came back, not {:.0} %",
            100.0 * rc.fraction(),
            r.observed.freed / MIB,
            100.0 * fraction
        ));
    }
    let bound = reclaim_bound(r.observed.freed);
    match rc.p90 {
        Some(d) if d <= bound => {}
        other => {
            return Err(format!(
                "90 % came back after {other:?}, not within {bound:?}"
            ));
        }
    }
    if let Some(b) = &r.balloon
        && b.reached.is_none()
    {
        return Err(format!(
            "QMP balloon: actual {} MiB never reached the target {} MiB",
            b.after / MIB,
            b.target / MIB
        ));
    }
    Ok(())
}

/// The attacks of the hostile PD (guest/src/bin/hostile.rs `Kind`, without
/// `legit`), each with its `HOSTILE|INFO: attack=` line.
pub const ATTACKS: [&str; 10] = [
    "never_got",
    "other_zone",
    "double_free",
    "misaligned",
    "wrong_order",
    "mixed_batch",
    "garbage",
    "future_version",
    "out_of_range",
    "flood",
];

/// What a run of the hostile variant showed, for people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostileFigures {
    /// Rounds the hostile PD ran.
    pub rounds: u64,
    /// Requests sent per kind (`legit` first, then [`ATTACKS`]).
    pub sent: Vec<(String, u64)>,
    /// The memserver's last `peers:` line.
    pub peers: String,
    /// `conservation: ok` lines, all adding up, and their `total`.
    pub conservation_lines: usize,
    pub total_pages: u64,
}

/// Whether the console of a hostile run (issue 8) shows the memserver
/// holding: every hostile request answered with the error its kind must
/// get and the good ones served; the hostile PD's ring and tag checks
/// clean; `guests` (log prefixes) done without an error and their data
/// verified; the memserver's own counters, in its last `peers:` line after
/// the hostile PD finished, saw every undecodable request and the illegal
/// index moves; every `conservation:` line adds up.
pub fn hostile_verdict(console: &str, guests: &[String]) -> Result<HostileFigures, String> {
    use crate::qemu::{field, segments};
    let lines: Vec<&str> = console.lines().flat_map(segments).collect();
    let find = |start: &str| lines.iter().position(|l| l.starts_with(start));
    let get = |l: &str, k: &str| field(l, k).ok_or_else(|| format!("no {k}= in: {l}"));
    let start = find("HOSTILE|INFO: start ").ok_or("the hostile PD did not start")?;
    let rounds = get(lines[start], "rounds")?;
    let flood = get(lines[start], "flood")?;
    let mut fig = HostileFigures {
        rounds,
        ..HostileFigures::default()
    };
    let mut undecodable = 0;
    for kind in std::iter::once("legit").chain(ATTACKS) {
        let l = lines[find(&format!("HOSTILE|INFO: attack={kind} "))
            .ok_or_else(|| format!("no attack={kind} line"))?];
        let [sent, answered, errors, expected] =
            ["sent", "answered", "errors", "expected"].map(|k| field(l, k));
        let (Some(sent), Some(answered), Some(errors), Some(expected)) =
            (sent, answered, errors, expected)
        else {
            return Err(format!("unreadable: {l}"));
        };
        let ok = if kind == "legit" {
            // The requests a good client makes are served.
            sent > 0 && answered == sent && errors == 0 && expected == sent
        } else {
            sent >= rounds && answered == sent && errors == sent && expected == sent
        };
        if !ok {
            return Err(format!("not every request answered as it must be: {l}"));
        }
        if kind == "flood" && sent != rounds * flood {
            return Err(format!("{flood} a round for {rounds} rounds expected: {l}"));
        }
        if ["garbage", "future_version", "out_of_range"].contains(&kind) {
            undecodable += sent;
        }
        fig.sent.push((kind.to_string(), sent));
    }
    let done_at = find(HOSTILE_DONE).ok_or("the hostile PD did not finish")?;
    let done = lines[done_at];
    // Four illegal index moves a round, three followed by a Stats request
    // that must be served.
    for (k, want) in [
        ("rounds", rounds),
        ("bad_answers", 0),
        ("ring_errors", 0),
        ("timer_errors", 0),
        ("scribbles", 4 * rounds),
        ("recovered", 3 * rounds),
    ] {
        if get(done, k)? != want {
            return Err(format!("{k} is not {want}: {done}"));
        }
    }
    for g in guests {
        let l = lines[find(&format!("{g}|INFO: phase=done"))
            .ok_or_else(|| format!("{g} did not finish"))?];
        if get(l, "errors")? != 0 {
            return Err(format!("{g} saw errors: {l}"));
        }
        let v = lines[find(&format!("{g}|INFO: phase=verified"))
            .ok_or_else(|| format!("{g} did not verify its data"))?];
        if !v.contains("phase=verified ok") || get(v, "bad_pages")? != 0 {
            return Err(format!("{g}'s data did not survive: {v}"));
        }
    }
    // The server's own counters, after the hostile PD's last request: the
    // last whole line (on seL4 another PD's output can cut one short, as
    // `BALLOON|INFO: ...` did after `malformed=1`; `reclaims` is its last
    // field).
    let peers = lines[done_at..]
        .iter()
        .rev()
        .find(|l| l.starts_with("MEMSERVER|INFO: peers:") && field(l, "reclaims").is_some())
        .ok_or("no whole memserver peers line after the hostile PD finished")?;
    if get(peers, "malformed")? != undecodable
        || get(peers, "client_misbehaviour")? < 1
        || get(peers, "balloon_misbehaviour")? != 0
        || get(peers, "errors")? < get(done, "hostile_errors")?
    {
        return Err(format!(
            "the memserver's counters disagree ({undecodable} undecodable requests sent, at least one \
             illegal index move, {} error answers): {peers}",
            get(done, "hostile_errors")?
        ));
    }
    fig.peers = peers.to_string();
    for l in lines.iter().filter(|l| l.contains("conservation:")) {
        if !l.starts_with("MEMSERVER|INFO: conservation: ok") {
            return Err(format!("conservation broken: {l}"));
        }
        let [total, free, alloc, iso, ball] =
            ["total", "free", "allocated", "isolated", "ballooned"].map(|k| field(l, k));
        let (Some(total), Some(free), Some(alloc), Some(iso), Some(ball)) =
            (total, free, alloc, iso, ball)
        else {
            return Err(format!("unreadable: {l}"));
        };
        if total != free + alloc + iso + ball
            || (fig.conservation_lines > 0 && total != fig.total_pages)
        {
            return Err(format!("pages lost: {l}"));
        }
        fig.conservation_lines += 1;
        fig.total_pages = total;
    }
    if fig.conservation_lines == 0 {
        return Err("no conservation line".into());
    }
    Ok(fig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reclaim_bound_grows_with_what_was_freed() {
        assert_eq!(reclaim_bound(256 * MIB), RECLAIM_BOUND);
        assert_eq!(reclaim_bound(512 * MIB), RECLAIM_BOUND);
        assert_eq!(reclaim_bound(1024 * MIB), Duration::from_secs(12));
    }

    fn console() -> String {
        let mut c = String::from(
            "MEMSERVER|INFO: ready, 2 clients\n\
             HOSTILE|INFO: start rounds=2 flood=4 zone_pfn=0x80000 zone_pages=131072 other_zone_pfn=0x60000\n\
             GUEST0|INFO: phase=verified ok live_mib=8 bad_pages=0 t_ns=1\n\
             GUEST0|INFO: phase=done allocs=1 errors=0 t_ns=1\n\
             MEMSERVER|INFO: conservation: ok total=10 free=5 allocated=3 isolated=1 ballooned=1\n\
             HOSTILE|INFO: attack=legit sent=9 answered=9 errors=0 expected=9 error_kinds=-\n",
        );
        for a in ATTACKS {
            let n = if a == "flood" { 8 } else { 3 };
            c += &format!(
                "HOSTILE|INFO: attack={a} sent={n} answered={n} errors={n} expected={n} error_kinds=X:{n}\n"
            );
        }
        c += "HOSTILE|INFO: done rounds=2 hostile_sent=35 hostile_answered=35 hostile_errors=35 \
              hostile_expected=35 scribbles=8 recovered=6 bad_answers=0 ring_errors=0 timer_errors=0\n\
              MEMSERVER|INFO: peers: requests=80 errors=40 malformed=9 client_misbehaviour=2 \
              balloon_misbehaviour=0 balloon_refused=0 reclaims=0\n";
        c
    }

    #[test]
    fn a_clean_hostile_run_passes_with_its_figures() {
        let f = hostile_verdict(&console(), &["GUEST0".into()]).unwrap();
        assert_eq!((f.rounds, f.conservation_lines, f.total_pages), (2, 1, 10));
        assert_eq!(f.sent.len(), 11);
        assert_eq!(f.sent[0], ("legit".into(), 9));
        assert!(f.peers.contains("malformed=9"));
        // A later peers line cut short by another PD's output (seen on
        // seL4) is passed over for the last whole one.
        let cut = console()
            + "MEMSERVER|INFO: peers: requests=80 errors=40 malformed=1BALLOON|INFO: balloon at 65536 pages\n";
        let f = hostile_verdict(&cut, &["GUEST0".into()]).unwrap();
        assert!(f.peers.contains("malformed=9"), "{}", f.peers);
    }

    #[test]
    fn each_failure_is_caught() {
        let g = ["GUEST0".to_string()];
        for (from, to) in [
            // An attack answered with success, or not answered.
            (
                "attack=misaligned sent=3 answered=3 errors=3 expected=3",
                "attack=misaligned sent=3 answered=3 errors=2 expected=2",
            ),
            (
                "attack=garbage sent=3 answered=3",
                "attack=garbage sent=3 answered=2",
            ),
            (
                "attack=flood sent=8 answered=8 errors=8 expected=8",
                "attack=flood sent=6 answered=6 errors=6 expected=6",
            ),
            (
                "attack=legit sent=9 answered=9 errors=0",
                "attack=legit sent=9 answered=9 errors=1",
            ),
            ("bad_answers=0", "bad_answers=1"),
            ("recovered=6", "recovered=5"),
            (
                "GUEST0|INFO: phase=done allocs=1 errors=0",
                "GUEST0|INFO: phase=done allocs=1 errors=4",
            ),
            ("bad_pages=0", "bad_pages=3"),
            ("malformed=9", "malformed=8"),
            ("client_misbehaviour=2", "client_misbehaviour=0"),
            ("ballooned=1", "ballooned=2"),
            ("conservation: ok total=10", "conservation: BROKEN total=10"),
            ("HOSTILE|INFO: done", "HOSTILE|INFO: gone"),
        ] {
            let c = console();
            assert!(c.contains(from), "{from}");
            let bad = c.replace(from, to);
            assert!(hostile_verdict(&bad, &g).is_err(), "{to}");
        }
        // The peers line must come after the hostile PD's summary.
        let c = console();
        let (head, peers) = c.rsplit_once("MEMSERVER|INFO: peers:").unwrap();
        let moved = format!("MEMSERVER|INFO: peers:{peers}{head}");
        assert!(hostile_verdict(&moved, &g).is_err());
    }
}
