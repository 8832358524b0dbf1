//! Nested reporting against Linux directly under QEMU (issue 14): the
//! same Linux guest and workload (`vm_guest::WORKLOAD`: touch 128 MiB,
//! hold 3 s, free) as a VM under the VMM on seL4 (qemu_virt_aarch64,
//! release kernel, `systems/linux-vm.xml`), and directly under the same
//! QEMU with the same RAM, one run of each in turn. For each: what of the
//! freed memory came back to the host, and after how long 50, 90 and 99 %
//! of it had (RSS sampled every 250 ms on seL4, 50 ms directly).

use crate::image::{self, Board, ImageSpec, KernelConfig};
use crate::linux_guest::{self, Spec, direct};
use crate::qemu;
use crate::sel4::{self, Sel4Run};
use crate::timeline::Reclaim;
use std::path::Path;
use std::time::Duration;

/// One run: which path, what came back, and what the run's verdict said
/// when it failed.
#[derive(Debug, Clone)]
pub struct Run {
    pub path: &'static str,
    pub reclaim: Option<Reclaim>,
    pub problem: Option<String>,
}

/// Every run of both paths.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    pub runs: Vec<Run>,
}

/// The VM's RAM in `systems/linux-vm.xml`: the direct guest gets as much.
const VM_RAM_MIB: u32 = 256;

/// `runs` runs of each path, the seL4 image built with `sdk` into `out`.
pub fn run(
    sdk: &Path,
    workspace: &Path,
    out: &Path,
    runs: u32,
    progress: &mut dyn FnMut(&str),
) -> Result<Comparison, String> {
    let system = workspace.join("systems/linux-vm.xml");
    let sys = sdf::System::parse(
        &std::fs::read_to_string(&system).map_err(|e| format!("{}: {e}", system.display()))?,
    )
    .map_err(|e| format!("{}:{e}", system.display()))?;
    progress("preparing the Linux guest");
    let vm_guest = crate::vm_guest::prepare(
        &sys,
        workspace,
        &out.join("vm-guest"),
        crate::vm_guest::WORKLOAD,
        progress,
    )?;
    progress("building the seL4 image (qemu_virt_aarch64 release)");
    let img = image::build(&ImageSpec {
        board: Board::QemuVirtAarch64,
        config: KernelConfig::Release,
        system,
        sdk: sdk.to_path_buf(),
        workspace: workspace.to_path_buf(),
        target_dir: out.join("pd-build"),
        out_dir: out.join("image"),
        built_in: Default::default(),
        vm_guest,
    })
    .map_err(|e| e.to_string())?;
    let guest = linux_guest::prepare(&Spec::new(workspace), progress).map_err(|e| e.to_string())?;
    let mut direct_cfg = direct::DirectConfig::new(true, out.join("direct-qmp.sock"));
    direct_cfg.memory_mib = VM_RAM_MIB;
    direct_cfg.mib = crate::vm_guest::WORKLOAD_MIB;
    direct_cfg.hold_ms = 3000;
    direct_cfg.rounds = 1;
    let mut c = Comparison::default();
    for n in 1..=runs {
        progress(&format!("nested (seL4 VM), run {n} of {runs}"));
        let dir = out.join(format!("nested-{n}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cfg = sel4::run_config(&img, Sel4Run::LinuxVm, &dir, Duration::from_secs(240))?;
        let r = qemu::run(&cfg, &mut |l| progress(&format!("  seL4| {l}")))
            .map_err(|e| e.to_string())?;
        c.runs.push(Run {
            path: "Linux in a VM on seL4 (nested)",
            reclaim: sel4::nested_reclaim(&r),
            problem: sel4::verdict(&img, Sel4Run::LinuxVm, &r).err(),
        });
        progress(&format!("direct (Linux under QEMU), run {n} of {runs}"));
        let r = direct::run(&guest, &direct_cfg, &mut |l| {
            progress(&format!("  direct| {l}"))
        })
        .map_err(|e| e.to_string())?;
        c.runs.push(Run {
            path: "Linux directly under QEMU",
            reclaim: Some(r.reclaim),
            problem: r.failure.clone(),
        });
    }
    Ok(c)
}

impl Comparison {
    /// The table: one row per run, then the medians per path.
    pub fn markdown(&self) -> String {
        let secs = |d: Option<Duration>| {
            d.map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        let mut s = format!(
            "## Nested reporting: Linux in a VM on seL4 beside Linux directly under QEMU\n\n\
             Workload: touch {} MiB, hold 3 s, free; the VM and the direct guest have {VM_RAM_MIB} MiB. \
             Times from the workload's free.\n\n\
             | path | run | back | 50 % | 90 % | 99 % | problem |\n|---|---|---|---|---|---|---|\n",
            crate::vm_guest::WORKLOAD_MIB
        );
        let mut n = std::collections::BTreeMap::<&str, u32>::new();
        for r in &self.runs {
            let k = n.entry(r.path).or_insert(0);
            *k += 1;
            let (back, p50, p90, p99) = match &r.reclaim {
                Some(x) => (
                    format!("{:.1} %", 100.0 * x.fraction()),
                    secs(x.p50),
                    secs(x.p90),
                    secs(x.p99),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            s += &format!(
                "| {} | {k} | {back} | {p50} | {p90} | {p99} | {} |\n",
                r.path,
                r.problem.as_deref().unwrap_or("")
            );
        }
        s
    }

    /// The runs whose verdict failed.
    pub fn problems(&self) -> Vec<String> {
        self.runs
            .iter()
            .filter_map(|r| r.problem.as_ref().map(|p| format!("{}: {p}", r.path)))
            .collect()
    }
}
