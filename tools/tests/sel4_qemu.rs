//! The seL4 Microkit image in QEMU: both boards, debug and release kernels,
//! and for each the reporting run (the guests' freed memory and the
//! boot-time free memory come back to the host, the QMP balloon target is
//! reached), the control run (QEMU's device without reporting: the memory
//! stays) and the hostile variant (guest1 runs `hostile.elf`: every attack
//! gets its error, guest0 is served as if nothing happened).
//!
//! The reporting runs of system.xml also type an operator's session on the
//! console PD's serial line (`tools::console_session`): a tunable set, one
//! the memserver refuses, two lines the console refuses itself.
//!
//! Every run is judged by `tools::sel4::verdict` from the PDs' log pages
//! (read through QMP `pmemsave`), QEMU's RSS and QMP, never from the
//! console, since a release kernel prints nothing.
//!
//! On qemu_virt_aarch64 also `systems/linux-vm.xml`: the VMM with its smoke
//! guest (PSCI answered, then a store to nothing stops that VM alone), and
//! Debian's Linux booting to userspace in the VM and running its workload,
//! in debug and release, while the native guests' memory comes back.
//!
//! Needs a Microkit 2.3.0 SDK at `MICROKIT_SDK` (`.ci/run` points it at the
//! one beside the checkout); without it each test says why it is skipped.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use tools::console_session;
use tools::image::{self, Board, Image, ImageSpec, KernelConfig};
use tools::qemu;
use tools::sel4::{self, Sel4Run};

fn sdk() -> Option<PathBuf> {
    match image::sdk_from_env() {
        Ok(p) => Some(p),
        Err(e) => {
            // Said on both streams: cargo shows stdout only for failures.
            println!("skipped: {e}");
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One image build at a time: the builds of one variant share a target
/// dir, and two QEMUs under TCG plus a PD build would starve each other on
/// a 2-core machine.
static BUILD: Mutex<()> = Mutex::new(());

/// `other`: a description of tools/systems (e.g. four-guests.xml) instead
/// of the workspace's.
fn build(
    board: Board,
    config: KernelConfig,
    run: Sel4Run,
    sdk: PathBuf,
    other: Option<&str>,
) -> (Image, PathBuf) {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // The control run boots the reporting run's image: it differs only in
    // QEMU's device. The hostile variant has its own description.
    let variant = match (run, other) {
        (_, Some(file)) => file.trim_end_matches(".xml"),
        (Sel4Run::Hostile, _) => "hostile",
        (Sel4Run::LinuxVm | Sel4Run::LinuxVmControl | Sel4Run::SmokeVm | Sel4Run::HostileVm, _) => {
            run.name()
        }
        _ => "system",
    };
    let description = match other {
        Some(file) => workspace().join("tools/systems").join(file),
        None if run.has_vm() => workspace().join("systems/linux-vm.xml"),
        None => workspace().join("system.xml"),
    };
    // One directory per board and variant for both kernel configs: the PDs
    // build from the description in it (SYSTEM_XML), and the same path
    // keeps cargo from rebuilding them when the config flips.
    let img_dir = tmp.join(format!("sel4-{board}-{variant}"));
    let run_dir = tmp.join(format!(
        "sel4-{}{}",
        sel4::label(board, config, run).replace(' ', "-"),
        other.map_or(String::new(), |_| format!("-{variant}"))
    ));
    std::fs::create_dir_all(&run_dir).unwrap();
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let system = sel4::description(&description, run, &img_dir).unwrap();
    // The Linux VM's guest: Debian's packages (fetched once, checked).
    let vm_guest = if run.has_linux() {
        let sys = sdf::System::parse(&std::fs::read_to_string(&system).unwrap()).unwrap();
        tools::vm_guest::prepare(
            &sys,
            &workspace(),
            &img_dir.join("vm-guest"),
            tools::vm_guest::WORKLOAD,
            &mut |l| eprintln!("guest: {l}"),
        )
        .unwrap_or_else(|e| panic!("the VM's guest: {e}"))
    } else if run == Sel4Run::HostileVm {
        let sys = sdf::System::parse(&std::fs::read_to_string(&system).unwrap()).unwrap();
        let plan = tools::vm_guest::plan(&sys).unwrap().expect("a VM");
        Some(
            tools::vm_guest::hostile_guest(
                &workspace(),
                &tools::pd_build::target_dir(tmp),
                &img_dir.join("vm-guest"),
                plan.ram_base,
            )
            .unwrap_or_else(|e| panic!("the hostile VM guest: {e}")),
        )
    } else {
        None
    };
    let mut img = image::build(&ImageSpec {
        board,
        config,
        system,
        sdk,
        workspace: workspace(),
        // Not the outer build's target dir: cargo holds its lock. Shared
        // by every variant and the bare tests (tools::pd_build).
        target_dir: tools::pd_build::target_dir(tmp),
        out_dir: img_dir,
        built_in: Default::default(),
        vm_guest,
    })
    .unwrap_or_else(|e| panic!("tools image for {board} {config}: {e}"));
    // The next build rewrites the image: boot a copy of this one.
    fn copy(from: &Path, dir: &Path) -> PathBuf {
        let to = dir.join(from.file_name().unwrap());
        std::fs::copy(from, &to).unwrap();
        to
    }
    img.loader = copy(&img.loader, &run_dir);
    img.board_sdf = copy(&img.board_sdf, &run_dir);
    img.kernel = img.kernel.as_deref().map(|k| copy(k, &run_dir));
    (img, run_dir)
}

fn check(board: Board, config: KernelConfig, run: Sel4Run) {
    check_with(board, config, run, None);
}

fn check_with(board: Board, config: KernelConfig, run: Sel4Run, other: Option<&str>) {
    let Some(sdk) = sdk() else { return };
    let (img, run_dir) = build(board, config, run, sdk, other);
    let mut cfg = sel4::run_config(&img, run, &run_dir, Duration::from_secs(240)).unwrap();
    // The operator's session on the console PD, in the reporting runs of
    // descriptions that have one.
    let console = run == Sel4Run::Reporting
        && console_session::has_console(&std::fs::read_to_string(&img.board_sdf).unwrap());
    if console {
        cfg.console_lines = console_session::lines();
    }
    let label = sel4::label(board, config, run);
    let r = qemu::run(&cfg, &mut |_| {}).unwrap_or_else(|e| panic!("{label}: {e}"));
    std::fs::write(run_dir.join("console.txt"), &r.console).unwrap();
    std::fs::write(run_dir.join("pd-log.txt"), &r.log).unwrap();
    println!("{label}:\n{}", r.summary());
    match sel4::verdict(&img, run, &r) {
        Ok(lines) => println!("{label}: {}", lines.join("; ")),
        Err(e) => panic!(
            "{label}: {e}\n{}\nPD log ({}):\n{}",
            r.summary(),
            run_dir.display(),
            r.log
        ),
    }
    if console {
        match console_session::verdict(&r.log) {
            Ok(line) => println!("{label}: {line}"),
            Err(e) => panic!("{label}: {e}\nPD log ({}):\n{}", run_dir.display(), r.log),
        }
    }
    // A release kernel has no console of its own: every PD line the run
    // was judged by came from the log pages.
    if config == KernelConfig::Release {
        assert!(
            !r.console.contains("MEMSERVER|"),
            "{label}: a release kernel printed PD lines:\n{}",
            r.console
        );
    }
}

macro_rules! sel4_tests {
    ($($name:ident: $board:ident $config:ident $run:ident;)*) => {$(
        #[test]
        fn $name() {
            check(Board::$board, KernelConfig::$config, Sel4Run::$run);
        }
    )*};
}

sel4_tests! {
    aarch64_debug_gives_memory_back: QemuVirtAarch64 Debug Reporting;
    aarch64_debug_control_keeps_memory: QemuVirtAarch64 Debug Control;
    aarch64_debug_hostile_guest_is_contained: QemuVirtAarch64 Debug Hostile;
    aarch64_release_gives_memory_back: QemuVirtAarch64 Release Reporting;
    aarch64_release_control_keeps_memory: QemuVirtAarch64 Release Control;
    aarch64_release_hostile_guest_is_contained: QemuVirtAarch64 Release Hostile;
    x86_64_debug_gives_memory_back: X86_64Generic Debug Reporting;
    x86_64_debug_control_keeps_memory: X86_64Generic Debug Control;
    x86_64_debug_hostile_guest_is_contained: X86_64Generic Debug Hostile;
    x86_64_release_gives_memory_back: X86_64Generic Release Reporting;
    x86_64_release_control_keeps_memory: X86_64Generic Release Control;
    x86_64_release_hostile_guest_is_contained: X86_64Generic Release Hostile;
    aarch64_debug_vm_traps_where_expected: QemuVirtAarch64 Debug SmokeVm;
    aarch64_debug_linux_vm_boots_to_userspace: QemuVirtAarch64 Debug LinuxVm;
    aarch64_release_linux_vm_boots_to_userspace: QemuVirtAarch64 Release LinuxVm;
    aarch64_release_linux_vm_control_keeps_memory: QemuVirtAarch64 Release LinuxVmControl;
    aarch64_release_hostile_vm_is_refused_and_contained: QemuVirtAarch64 Release HostileVm;
}

/// Four guests of three sizes (128, 128, 192, 256 MiB), from the
/// description alone (tools/systems/four-guests.xml), sharing one
/// guest.elf: the memserver has a zone for each, every guest verifies,
/// and what they freed comes back.
#[test]
fn aarch64_debug_four_guests_give_memory_back() {
    check_with(
        Board::QemuVirtAarch64,
        KernelConfig::Debug,
        Sel4Run::Reporting,
        Some("four-guests.xml"),
    );
}
