//! The bare platform in QEMU (DESIGN §5.3, issue 6): build the `bare` image
//! (every PD of `system.xml` in one ELF), boot it with QEMU's own
//! virtio-balloon through the shared runner ([`crate::qemu`]), and judge the
//! run.
//!
//! Unlike seL4, the bare image does not zero RAM at boot, so QEMU's RSS
//! starts low and the boot-time report returns nothing measurable; the
//! verdict is about what the guests touched and freed.

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

/// A failure to build the image.
#[derive(Debug)]
pub enum BareError {
    /// cargo could not be run or failed (its stderr).
    Cargo(String),
}

impl fmt::Display for BareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BareError::Cargo(m) => write!(f, "building the bare image: {m}"),
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

/// Build image `bin` (`system` or `pingpong`) of the `bare` crate for
/// `arch`, release profile, in `target_dir` (not the target dir of a cargo
/// that is running us: it holds the lock), and return the ELF's path.
pub fn build(
    workspace: &Path,
    target_dir: &Path,
    arch: Arch,
    bin: &str,
) -> Result<PathBuf, BareError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "-p", "bare", "--bin", bin])
        .args(["--target", target(arch)])
        .arg("--target-dir")
        .arg(target_dir);
    if arch == Arch::X86_64 {
        // The PDs see the PC as on Microkit: the x86_64_generic variant of
        // system.xml (HPET, PCI configuration ports, IOAPIC pins).
        let xml = std::fs::read_to_string(workspace.join("system.xml"))
            .map_err(|e| BareError::Cargo(format!("system.xml: {e}")))?;
        let x86 = crate::image::board_sdf(&xml, crate::image::Board::X86_64Generic)
            .map_err(|e| BareError::Cargo(format!("the x86_64 variant of system.xml: {e}")))?;
        std::fs::create_dir_all(target_dir)
            .map_err(|e| BareError::Cargo(format!("{}: {e}", target_dir.display())))?;
        let path = target_dir.join("system-x86_64.xml");
        std::fs::write(&path, x86)
            .map_err(|e| BareError::Cargo(format!("{}: {e}", path.display())))?;
        cmd.env("SYSTEM_XML", path);
    }
    let out = cmd
        .output()
        .map_err(|e| BareError::Cargo(format!("running cargo: {e}")))?;
    if !out.status.success() {
        return Err(BareError::Cargo(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(target_dir.join(target(arch)).join("release").join(bin))
}

/// The guests of `system.xml` as the runner waits for them (log prefixes).
pub fn guests(system_xml: &str) -> Result<Vec<String>, String> {
    let sys = sdf::System::parse(system_xml).map_err(|e| e.to_string())?;
    Ok(sys
        .pds
        .iter()
        .filter(|p| p.program_image.as_deref() == Some("guest.elf"))
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
        timeout: Duration::from_secs(180),
        period: Duration::from_millis(250),
        steady: Duration::from_secs(3),
        // Long enough for the reporting delay plus RECLAIM_BOUND after the
        // guests are done.
        settle: Duration::from_secs(15),
        balloon_target,
    }
}

/// What came back of everything the guests freed, measured from the RSS at
/// their *first* free (the runner's `reclaim` starts at the last one, which
/// misses what was reported in between when the frees are further apart
/// than the reporting delay, as on a loaded machine), with the 50/90/99 %
/// times counted from the *last* free (zero if reached before it).
pub fn freed_reclaim(r: &RunReport) -> Option<Reclaim> {
    let first = r
        .timeline
        .marks()
        .iter()
        .filter(|m| m.label.contains(" freed "))
        .map(|m| m.t)
        .min()?;
    let last = r.observed.last_free.unwrap_or(first).max(first);
    let mut rc = r.timeline.reclaim(first, r.observed.freed, None);
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
    match rc.p90 {
        Some(d) if d <= RECLAIM_BOUND => {}
        other => {
            return Err(format!(
                "90 % came back after {other:?}, not within {RECLAIM_BOUND:?}"
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
