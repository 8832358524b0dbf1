//! The Microkit image on seL4 in QEMU (DESIGN §4, §5.1; issues 7 and 12):
//! which runs there are, how each is set up, and how each is judged. Shared
//! by `tools qemu --board`, the seL4 tests and `tools bench`.
//!
//! Every run is judged from the PDs' log pages (`tools image` gives each PD
//! one; [`crate::log_pages`] reads them through QMP) and from QEMU's RSS and
//! QMP, never from the console: a release kernel prints nothing, and a debug
//! one is judged the same way, so both give the same table.

use crate::bare;
use crate::image::{Board, Image, ImageError, KernelConfig};
use crate::qemu::{Arch, BalloonDevice, Boot, QemuConfig, RunConfig, RunReport};
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Share of the memory that must come back (issue 6 asks 90 %).
pub const FRACTION: f64 = 0.9;

/// Share of the native guests' frees that must come back beside a VM.
pub const VM_FRACTION: f64 = 0.8;

/// What the control run may give back at most of what the guests freed:
/// without reporting nothing is discarded (RSS noise stays far below this).
pub const CONTROL_MAX_FRACTION: f64 = 0.1;

/// QEMU's RAM: the SDK's kernels are built for 2 GiB (DESIGN §4).
pub const MEMORY_MIB: u32 = 2048;

/// The balloon target of the reporting and hostile runs, asked through QMP
/// once the run settled: 256 MiB in, within what the memserver holds free.
pub const BALLOON_MIB: u64 = bare::HOSTILE_BALLOON_MIB;

/// How much of the Linux VM's RAM the Linux-VM run's balloon target asks
/// for, beyond all the native guests' RAM: the native zones cannot give
/// it (they keep their watermarks, too), so the memserver raises the VM's
/// balloon target and Linux inflates. Then the target goes back to all of
/// QEMU's RAM and everything deflates, the VM's pages too.
pub const VM_BALLOON_MIB: u64 = 24;

/// The memserver's line on the VM's balloon (`memserver::vm_balloon`).
pub const VM_BALLOON_LINE: &str = "vm balloon:";
/// The VM's balloon is empty again (what the Linux-VM run waits for after
/// the balloon came back).
pub const VM_BALLOON_EMPTY: &str = "target_pages=0 held_pages=0 passed_pages=0";
/// The VMM's line when the memserver sets the VM's balloon target.
pub const VMM_BALLOON_TARGET: &str = "balloon target";

/// The Linux VM's lines on the console (Linux writes to the passed-through
/// PL011 itself, so they are there with a release kernel too): its first
/// line, userspace, the workload's end.
pub const LINUX_FIRST: &str = "Booting Linux on physical CPU";
pub const LINUX_USERSPACE: &str = "INIT|INFO: userspace started";
pub const LINUX_DONE: &str = "WORKLOAD|INFO: phase=done";
/// The workload freed its memory (the nested verdict measures from here).
pub const LINUX_FREED: &str = "WORKLOAD|INFO: phase=freed";
/// Linux bound its balloon driver to the VMM's device, and whether it
/// negotiated REPORTING (`reporting=1`).
pub const LINUX_BALLOON: &str = "INIT|INFO: virtio_balloon bound to";
/// The timeline's label of [`LINUX_FREED`].
const LINUX_FREED_MARK: &str = "Linux: workload freed";
/// The VMM's line when the VM first idles in WFI and its vCPU is
/// suspended rather than stepped over (its log page).
pub const VMM_WFI_SLEEP: &str = "its vCPU sleeps in WFI until";
const LINUX_MARKS: [(&str, &str); 4] = [
    (LINUX_FIRST, "Linux: first console line"),
    (LINUX_USERSPACE, "Linux: userspace"),
    (LINUX_FREED, LINUX_FREED_MARK),
    (LINUX_DONE, "Linux: workload done"),
];

/// The smoke guest's lines: PSCI answered, then the VM stopped (the VMM's
/// log page).
pub const SMOKE_PSCI: &str = "VMM|INFO: PSCI 0x84000000 -> 0x10000";
pub const SMOKE_STOP: &str =
    "VMM|ERROR: VM 'linux' stopped: write to unemulated address 0x12340000 at pc 0x4000000c";

/// The hostile VM guest's last line (on the console) and what it must say:
/// a report buffer outside or straddling the end of the VM's RAM, a
/// descriptor past the ring and a looping chain each put the device into
/// DEVICE_NEEDS_RESET (the device side checks every buffer against guest
/// RAM, so the VMM's and the memserver's own range checks are the second
/// and third line); the flood all came back, the memserver refusing what
/// it would not hold.
pub const HOSTILE_VM_DONE: &str = "HOSTILE-VM|INFO: done";
const HOSTILE_VM_WANT: &str = "outside=needs_reset straddle=needs_reset flood=returned flood_back=6/6 past_ring=needs_reset loop=needs_reset deflate_unheld=returned inflate_twice=returned deflate_held=returned";

/// Which run of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sel4Run {
    /// `system.xml` with a free-page-reporting balloon: the memory the
    /// guests free comes back to the host.
    Reporting,
    /// The same image, QEMU's device without reporting: nothing comes back.
    Control,
    /// The hostile variant (guest1 runs `hostile.elf`, issue 8).
    Hostile,
    /// `systems/linux-vm.xml`: Debian's Linux in a VM under the VMM beside
    /// the native guests (issue 13); qemu_virt_aarch64 only. What its
    /// workload frees comes back to the host through the memserver
    /// (nested reporting, issue 14).
    LinuxVm,
    /// The same, QEMU's device without reporting: the memserver refuses
    /// the VM's reports and the host keeps the memory.
    LinuxVmControl,
    /// The same description with the hostile guest (`vmm/hostile-guest`)
    /// in the VM: reports outside its RAM, a flood, a descriptor past the
    /// ring, a chain that loops. Each is refused; the VM alone is affected.
    HostileVm,
    /// The same description with the VMM's smoke guest: PSCI over SMC,
    /// then a store to nothing, which stops that VM alone.
    SmokeVm,
}

impl Sel4Run {
    pub const ALL: [Sel4Run; 3] = [Sel4Run::Reporting, Sel4Run::Control, Sel4Run::Hostile];

    /// Whether the run boots `systems/linux-vm.xml`.
    pub fn has_vm(self) -> bool {
        matches!(
            self,
            Sel4Run::LinuxVm | Sel4Run::LinuxVmControl | Sel4Run::SmokeVm | Sel4Run::HostileVm
        )
    }

    /// Whether the run boots Linux in the VM.
    pub fn has_linux(self) -> bool {
        matches!(self, Sel4Run::LinuxVm | Sel4Run::LinuxVmControl)
    }

    /// Whether QEMU's device offers free page reporting.
    pub fn reporting(self) -> bool {
        !matches!(self, Sel4Run::Control | Sel4Run::LinuxVmControl)
    }

    /// For directory names and tables.
    pub fn name(self) -> &'static str {
        match self {
            Sel4Run::Reporting => "reporting",
            Sel4Run::Control => "control",
            Sel4Run::Hostile => "hostile",
            Sel4Run::LinuxVm => "linux-vm",
            Sel4Run::LinuxVmControl => "linux-vm-control",
            Sel4Run::HostileVm => "hostile-vm",
            Sel4Run::SmokeVm => "smoke-vm",
        }
    }
}

/// QEMU's architecture for `board`.
pub fn arch(board: Board) -> Arch {
    match board {
        Board::QemuVirtAarch64 => Arch::Aarch64,
        Board::X86_64Generic => Arch::X86_64,
    }
}

/// The description `run` boots, written into `out_dir` when it differs
/// from `system` (the hostile variant).
pub fn description(system: &Path, run: Sel4Run, out_dir: &Path) -> Result<PathBuf, ImageError> {
    if run != Sel4Run::Hostile {
        return Ok(system.to_path_buf());
    }
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| ImageError::Io(p, e)
    };
    let xml = std::fs::read_to_string(system).map_err(io(system))?;
    let xml = crate::image::variant(&xml, bare::HOSTILE_PD, bare::HOSTILE_IMAGE)?;
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let path = out_dir.join("system-hostile.xml");
    std::fs::write(&path, xml).map_err(io(&path))?;
    Ok(path)
}

/// The guests of the image's description, as the runner waits for them.
pub fn guests(img: &Image) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(&img.board_sdf)
        .map_err(|e| format!("{}: {e}", img.board_sdf.display()))?;
    bare::guests(&text)
}

/// The run `run` of `img`; the QMP socket and the log-page dumps go to
/// `out_dir`.
pub fn run_config(
    img: &Image,
    run: Sel4Run,
    out_dir: &Path,
    timeout: Duration,
) -> Result<RunConfig, String> {
    Ok(RunConfig {
        qemu: QemuConfig {
            arch: arch(img.board),
            boot: Boot::Microkit {
                loader: img.loader.clone(),
                kernel: img.kernel.clone(),
            },
            memory_mib: MEMORY_MIB,
            balloon: Some(BalloonDevice {
                reporting: run.reporting(),
                modern_mmio: false,
            }),
            qmp: out_dir.join("qmp.sock"),
            extra: Vec::new(),
        },
        guests: guests(img)?,
        done_lines: match run {
            Sel4Run::Hostile => vec![bare::HOSTILE_DONE.to_string()],
            Sel4Run::LinuxVm | Sel4Run::LinuxVmControl => vec![LINUX_DONE.to_string()],
            Sel4Run::SmokeVm => vec![SMOKE_STOP.to_string()],
            Sel4Run::HostileVm => vec![HOSTILE_VM_DONE.to_string()],
            _ => Vec::new(),
        },
        console_marks: if run.has_linux() {
            LINUX_MARKS
                .iter()
                .map(|(n, l)| (n.to_string(), l.to_string()))
                .collect()
        } else {
            Vec::new()
        },
        timeout,
        period: Duration::from_millis(250),
        // Linux reports in passes 2 s apart: RSS that held still for 3 s
        // may still fall; 8 s, as the direct Linux run waits.
        steady: Duration::from_secs(if run.has_linux() { 8 } else { 3 }),
        settle: Duration::from_secs(if run.has_linux() { 40 } else { 30 }),
        balloon_target: match run {
            Sel4Run::LinuxVm => {
                Some(u64::from(MEMORY_MIB) * MIB - ram(img)?.0 - VM_BALLOON_MIB * MIB)
            }
            _ => run.reporting().then_some(BALLOON_MIB * MIB),
        },
        balloon_back: (run == Sel4Run::LinuxVm).then_some(u64::from(MEMORY_MIB) * MIB),
        balloon_back_line: (run == Sel4Run::LinuxVm).then(|| VM_BALLOON_EMPTY.to_string()),
        log_pages: img.log_pages.clone(),
        console_lines: Vec::new(),
        console_stdin: false,
    })
}

/// The RAM of the image's description (bytes): the native guests' (what
/// the native zones hold) and the VM's (the region the memserver's
/// `vm_ram_paddr` names; 0 without a VM).
fn ram(img: &Image) -> Result<(u64, u64), String> {
    let text = std::fs::read_to_string(&img.board_sdf)
        .map_err(|e| format!("{}: {e}", img.board_sdf.display()))?;
    let sys = sdf::System::parse(&text).map_err(|e| e.to_string())?;
    let guests = sdf::guests::guests(&sys).map_err(|e| e.to_string())?;
    let vm = sys
        .pd("memserver")
        .and_then(|pd| pd.setvars.iter().find(|v| v.symbol == "vm_ram_paddr"))
        .and_then(|v| sys.memory_regions.iter().find(|m| m.name == v.region_paddr))
        .map_or(0, |m| m.size);
    Ok((guests.iter().map(|g| g.ram.size).sum(), vm))
}

/// The memserver's last `conservation:` line and the pages it manages
/// (`total=`).
fn managed_pages(r: &RunReport) -> Result<(u64, &str), String> {
    let line = r
        .log
        .lines()
        .rev()
        .find(|l| l.starts_with("MEMSERVER|INFO: conservation: "))
        .ok_or("the memserver logged no conservation line")?;
    let pages = crate::qemu::field(line, "total").ok_or(format!("no total= in: {line}"))?;
    Ok((pages, line))
}

/// The outer host's balloon target reached the VM and went back: both
/// QMP targets were reached, the memserver passed pages of the VM's RAM to
/// the outer balloon, and at the end the VM's balloon is empty again (its
/// target 0, nothing held, nothing passed).
fn vm_balloon_verdict(img: &Image, r: &RunReport) -> Result<String, String> {
    let (Some(inflate), Some(back)) = (&r.balloon, &r.balloon_back) else {
        return Err(format!(
            "the QMP balloon target never reached the VM's pages: {:?}",
            r.balloon
        ));
    };
    let lines: Vec<&str> = r
        .log
        .lines()
        .filter(|l| l.contains(VM_BALLOON_LINE))
        .collect();
    let passed = lines
        .iter()
        .filter_map(|l| crate::qemu::field(l, "passed_pages"))
        .max()
        .unwrap_or(0);
    let last = lines
        .last()
        .copied()
        .unwrap_or("MEMSERVER: no vm balloon line");
    let empty = ["target_pages", "held_pages", "passed_pages"]
        .iter()
        .all(|k| crate::qemu::field(last, k) == Some(0));
    let said = format!(
        "VM balloon: the outer target took {} MiB of the VM's RAM ({:.2} s to reach {} MiB), all back after {}; {last}",
        passed / 256,
        inflate.reached.map_or(f64::NAN, |d| d.as_secs_f64()),
        inflate.target / MIB,
        back.reached.map_or_else(
            || "never".to_string(),
            |d| format!("{:.2} s", d.as_secs_f64())
        ),
    );
    let vmm_told = r.log.contains(VMM_BALLOON_TARGET);
    if !(inflate.reached.is_some() && back.reached.is_some() && passed > 0 && empty && vmm_told) {
        return Err(said);
    }
    // The VM's statistics reach QMP's guest-stats: the total is the native
    // zones' plus what Linux says it has (its MemTotal, short of its RAM
    // by what the kernel keeps), so above the native zones by half the
    // VM's RAM at least.
    let native = managed_pages(r)?.0 * 4096;
    let total = r
        .guest_stats
        .as_ref()
        .and_then(|g| g.get("stat-total-memory"))
        .ok_or("no QMP guest-stats total")?;
    let vm_ram = ram(img)?.1;
    if total < native + vm_ram / 2 || total > native + vm_ram {
        return Err(format!(
            "QMP guest-stats total {} MiB: not the native zones' {} MiB plus the VM's (of {} MiB RAM)",
            total / MIB,
            native / MIB,
            vm_ram / MIB
        ));
    }
    Ok(format!(
        "{said}; QMP guest-stats total {} MiB = native {} MiB + the VM's {} MiB",
        total / MIB,
        native / MIB,
        (total - native) / MIB
    ))
}

/// Every PD of the image logged under its own prefix (its name; the
/// hostile PD's program logs as `HOSTILE`).
fn every_pd_logged(img: &Image, run: Sel4Run, r: &RunReport) -> Result<(), String> {
    for page in &img.log_pages {
        let prefix = if run == Sel4Run::Hostile && page.pd == bare::HOSTILE_PD {
            "HOSTILE".to_string()
        } else {
            page.pd.to_uppercase()
        };
        if !r.observed.started.contains(&prefix) {
            return Err(format!("PD {} never logged ({prefix}|...)", page.pd));
        }
    }
    Ok(())
}

/// The memserver's last `nested:` line (its nested-reporting figures).
fn last_nested_line(r: &RunReport) -> Option<&str> {
    r.log
        .lines()
        .rfind(|l| l.starts_with("MEMSERVER|INFO: nested:"))
}

/// The hostile VM's side: its last line says every attack got the answer
/// it must; the VMM gave back the reports outside its RAM unsent and said
/// the device needs a reset; the memserver refused the reports it would
/// not hold and the VM then switched itself off, the VMM still running.
fn hostile_vm_verdict(r: &RunReport) -> Result<String, String> {
    let done = r
        .console
        .lines()
        .find(|l| l.contains(HOSTILE_VM_DONE))
        .ok_or("the hostile VM never finished")?;
    if !done.contains(HOSTILE_VM_WANT) {
        return Err(format!(
            "the hostile VM got: {done}; it must get: {HOSTILE_VM_WANT}"
        ));
    }
    // The memserver refused the deflate of pages never inflated and the
    // second inflate of one page, and the VM's balloon ended empty.
    let balloon = r
        .log
        .lines()
        .rfind(|l| l.contains(VM_BALLOON_LINE))
        .ok_or("the memserver never said how the VM's balloon stands")?;
    let field = |k| crate::qemu::field(balloon, k);
    if field("refused") != Some(2) || field("held_pages") != Some(0) {
        return Err(format!(
            "the memserver's VM balloon must have refused 2 messages and hold nothing: {balloon}"
        ));
    }
    for (want, what) in [
        (
            "0x80000000+0x200000 lies outside guest RAM: the device needs a reset",
            "the report outside the VM's RAM",
        ),
        (
            "descriptor index 200 >= queue size 8: the device needs a reset",
            "the descriptor past the ring",
        ),
        ("loops or is longer than", "the looping chain"),
        ("switched itself off (PSCI)", "the VM's end"),
    ] {
        if !r
            .log
            .lines()
            .any(|l| l.starts_with("VMM|") && l.contains(want))
        {
            return Err(format!("the VMM never said '{want}' ({what})"));
        }
    }
    let nested = last_nested_line(r).ok_or("the memserver never saw a nested report")?;
    let refused = crate::qemu::field(nested, "refused").unwrap_or(0);
    if refused == 0 {
        return Err(format!("the memserver refused none of the flood: {nested}"));
    }
    Ok(format!("ok: {done}; {nested}"))
}

/// How the host's memory fell after the Linux VM's workload freed its
/// memory: from that line to the QMP balloon request (or the run's end),
/// against what the workload freed. `None` when it never freed.
pub fn nested_reclaim(r: &RunReport) -> Option<crate::timeline::Reclaim> {
    let marks = r.timeline.marks();
    let freed = marks.iter().find(|m| m.label == LINUX_FREED_MARK)?.t;
    let until = marks
        .iter()
        .find(|m| m.t > freed && m.label.starts_with("QMP balloon"))
        .map(|m| m.t);
    let expected = crate::vm_guest::WORKLOAD_MIB * MIB;
    Some(r.timeline.reclaim(freed, expected, until))
}

/// The Linux VM's part of the nested verdict: Linux bound its balloon with
/// REPORTING, and from its workload's free to the end of the window (the
/// QMP balloon request, or the run's end) the host got at least
/// [`FRACTION`] of what it freed back (or, in the control, at most
/// [`CONTROL_MAX_FRACTION`]). The window is the run's settle: RSS still
/// for 8 s after the workload's end, at most 40 s; Linux reports 2 s after
/// a free, in passes 2 s apart.
fn nested_verdict(run: Sel4Run, r: &RunReport) -> Result<String, String> {
    let bound = r
        .console
        .lines()
        .find(|l| l.contains(LINUX_BALLOON))
        .ok_or("Linux never bound its balloon driver to the VMM's device")?;
    if !bound.contains("reporting=1") {
        return Err(format!(
            "Linux did not negotiate free page reporting: {bound}"
        ));
    }
    let back = nested_reclaim(r).ok_or("the VM's workload never freed")?;
    let nested = last_nested_line(r).unwrap_or("MEMSERVER: no nested line");
    let said = format!(
        "nested: {}; {nested}",
        crate::timeline::Timeline::reclaim_line("the VM's workload freed", &back)
    );
    let ok = if run.reporting() {
        back.fraction() >= FRACTION
    } else {
        back.fraction() <= CONTROL_MAX_FRACTION
    };
    if ok { Ok(said) } else { Err(said) }
}

/// Why run `run` of `img` did not show what it must; `Ok` with the lines
/// for people when it did. For the reporting run: every PD logged, 90 % of
/// the boot-time report and of the guests' frees came back, the guests
/// verified their data, QMP's balloon target was reached. For the control
/// run: the guests ran and verified, and almost nothing came back. For the
/// hostile run: [`bare::hostile_verdict`] on the PDs' log, and over the
/// whole run RSS fell by what the memserver reported free at the end.
pub fn verdict(img: &Image, run: Sel4Run, r: &RunReport) -> Result<Vec<String>, String> {
    if let Some(f) = &r.failure {
        return Err(format!("the run failed: {f}"));
    }
    // The smoke VM's stop is the one ERROR line that run must have.
    let problems: Vec<&String> = r
        .observed
        .problems
        .iter()
        .filter(|p| !(run == Sel4Run::SmokeVm && p.starts_with(SMOKE_STOP)))
        .collect();
    if !problems.is_empty() {
        return Err(format!("problems: {problems:?}"));
    }
    every_pd_logged(img, run, r)?;
    let guests = guests(img)?;
    let mut said = Vec::new();
    let balloon_reached = || match &r.balloon {
        Some(b) if b.reached.is_some() && b.after <= b.target => Ok(()),
        Some(b) => Err(format!(
            "QMP balloon: actual {} MiB never reached the target {} MiB",
            b.after / MIB,
            b.target / MIB
        )),
        None => Err("no QMP balloon check".to_string()),
    };
    match run {
        Sel4Run::HostileVm => {
            said.push(hostile_vm_verdict(r)?);
            if !r.observed.all_done(&guests)
                || !r.observed.all_verified(&guests)
                || r.reclaim.fraction() < VM_FRACTION
            {
                return Err(format!(
                    "beside the hostile VM: guests done {:?}, verified {:?}, {:.0} % of what they freed came back",
                    r.observed.done,
                    r.observed.verified,
                    100.0 * r.reclaim.fraction()
                ));
            }
            said.push(format!(
                "ok: the native guests ran, verified, and got {:.0} % back beside the hostile VM",
                100.0 * r.reclaim.fraction()
            ));
        }
        Sel4Run::LinuxVm | Sel4Run::LinuxVmControl | Sel4Run::SmokeVm => {
            let text = if run.has_linux() { &r.console } else { &r.log };
            let want: &[&str] = if run.has_linux() {
                &[LINUX_FIRST, LINUX_USERSPACE, LINUX_DONE]
            } else {
                &[SMOKE_PSCI, SMOKE_STOP]
            };
            for w in want {
                if !text.contains(w) {
                    return Err(format!("the VM never said '{w}'"));
                }
            }
            if run.has_linux() {
                said.push(nested_verdict(run, r)?);
                if run.reporting() {
                    said.push(vm_balloon_verdict(img, r)?);
                }
                let done = text
                    .lines()
                    .find(|l| l.contains(LINUX_DONE))
                    .unwrap_or_default();
                if crate::qemu::field(done, "bad_pages") != Some(0) {
                    return Err(format!("the VM's workload lost data: {done}"));
                }
                // Idle Linux waits in WFI: the VMM must sleep the vCPU,
                // not step over every WFI.
                if !r.log.contains(VMM_WFI_SLEEP) {
                    return Err("the VMM never slept the vCPU in a WFI (it spins)".to_string());
                }
                for (_, label) in LINUX_MARKS {
                    if let Some(m) = r.timeline.marks().iter().find(|m| m.label == label) {
                        said.push(format!(
                            "{label} {:.1} s after QEMU started",
                            m.t.as_secs_f64()
                        ));
                    }
                }
            }
            // And beside it the rest of the system did its work. The VM's
            // own RAM is not reported yet (nested reporting), and Linux
            // booting while the guests free raises QEMU's RSS in the same
            // window (93-94 % came back in every run here): 80 %.
            let native_ok = if run.reporting() {
                r.reclaim.fraction() >= VM_FRACTION
            } else {
                r.reclaim.fraction() <= CONTROL_MAX_FRACTION
            };
            if !r.observed.all_done(&guests) || r.observed.freed == 0 || !native_ok {
                return Err(format!(
                    "beside the VM: guests done {:?}, {:.0} % of what they freed came back",
                    r.observed.done,
                    100.0 * r.reclaim.fraction()
                ));
            }
            said.push(format!(
                "ok: the VM ran ({}) and the native guests' memory {} ({:.0} % back)",
                run.name(),
                if run.reporting() {
                    "came back"
                } else {
                    "stayed with the host"
                },
                100.0 * r.reclaim.fraction()
            ));
        }
        Sel4Run::Reporting => {
            if !r.observed.all_done(&guests) || !r.observed.all_verified(&guests) {
                return Err(format!(
                    "guests {guests:?}: done {:?}, verified {:?}",
                    r.observed.done, r.observed.verified
                ));
            }
            // The report waits the delay after boot, so the guests' first
            // allocations may straddle it and take part of it back before
            // their first free: what counts is how far the host fell.
            let boot = r.boot.ok_or("no boot-time report")?;
            if boot.deepest_fraction() < FRACTION {
                return Err(format!(
                    "{:.0} % of the boot-time report came back, not {:.0} %",
                    100.0 * boot.deepest_fraction(),
                    100.0 * FRACTION
                ));
            }
            if r.observed.freed == 0 || r.reclaim.fraction() < FRACTION {
                return Err(format!(
                    "{:.0} % of the {} MiB the guests freed came back, not {:.0} %",
                    100.0 * r.reclaim.fraction(),
                    r.observed.freed / MIB,
                    100.0 * FRACTION
                ));
            }
            balloon_reached()?;
            said.push(guest_stats_match(r)?);
            said.push("ok: the host got the memory back".to_string());
        }
        Sel4Run::Control => {
            if !r.observed.all_done(&guests) || !r.observed.all_verified(&guests) {
                return Err(format!(
                    "guests {guests:?}: done {:?}, verified {:?}",
                    r.observed.done, r.observed.verified
                ));
            }
            if r.observed.freed == 0 {
                return Err("the guests freed nothing".into());
            }
            if r.reclaim.fraction() > CONTROL_MAX_FRACTION {
                return Err(format!(
                    "without reporting {:.0} % of what the guests freed came back: \
                     the control must keep it",
                    100.0 * r.reclaim.fraction()
                ));
            }
            said.push(format!(
                "ok: without reporting the host kept the memory ({:.1} % back)",
                100.0 * r.reclaim.fraction()
            ));
        }
        Sel4Run::Hostile => {
            let fig = bare::hostile_verdict(&r.log, &["GUEST0".to_string()])?;
            if r.observed.verified != ["GUEST0"] {
                return Err(format!("verified: {:?}", r.observed.verified));
            }
            // The hostile PD's frees keep the reporting worker busy, so the
            // boot-time report and guest0's free overlap and neither has a
            // window of its own. Judged over the whole run instead: at the
            // end the memserver had reported what was free (guest0's free
            // among it), and QEMU's RSS fell from the boot by that much.
            let last = r
                .log
                .lines()
                .rev()
                .find(|l| l.starts_with("MEMSERVER|INFO: reported: "))
                .ok_or("the memserver never said what it reported")?;
            let field = |k| crate::qemu::field(last, k).ok_or(format!("no {k}= in: {last}"));
            let (reported, free) = (field("reported_mib")?, field("free_mib")?);
            if r.observed.freed == 0 || (reported as f64) < FRACTION * free as f64 {
                return Err(format!(
                    "guests freed {} MiB; at the end {reported} of {free} MiB free were reported: {last}",
                    r.observed.freed / MIB
                ));
            }
            let (back, _) = r.whole_run().ok_or("no boot or end sample")?;
            if (back as f64) < FRACTION * (reported * MIB) as f64 {
                return Err(format!(
                    "QEMU's RSS fell by {} MiB over the run, less than {:.0} % of the {reported} MiB reported",
                    back / MIB,
                    100.0 * FRACTION
                ));
            }
            said.push(format!(
                "ok: over the run QEMU's RSS fell by {} MiB; {reported} of {free} MiB free were reported",
                back / MIB
            ));
            balloon_reached()?;
            said.push(format!(
                "ok: the memserver held against the hostile PD ({} rounds); {}",
                fig.rounds, fig.peers
            ));
        }
    }
    Ok(said)
}

/// QMP's `guest-stats` carry the memserver's figures: the total it manages
/// (its last `conservation:` line, in pages) and a free amount within it.
fn guest_stats_match(r: &RunReport) -> Result<String, String> {
    let g = r.guest_stats.as_ref().ok_or("no QMP guest-stats")?;
    if g.last_update == 0 {
        return Err(
            "QMP guest-stats were never updated: the driver answered no stats request".into(),
        );
    }
    let (pages, line) = managed_pages(r)?;
    let total = g
        .get("stat-total-memory")
        .ok_or("guest-stats without stat-total-memory")?;
    let free = g
        .get("stat-free-memory")
        .ok_or("guest-stats without stat-free-memory")?;
    if total != pages * 4096 || free > total {
        return Err(format!(
            "QMP guest-stats total {total} free {free} bytes, the memserver manages {pages} pages ({line})"
        ));
    }
    Ok(format!(
        "ok: QMP guest-stats carry the memserver's figures: total {} MiB (= {pages} pages), free {} MiB",
        total / MIB,
        free / MIB
    ))
}

/// A one-line name for a run.
pub fn label(board: Board, config: KernelConfig, run: Sel4Run) -> String {
    format!("{board} {config} {}", run.name())
}
