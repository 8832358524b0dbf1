//! A hostile guest on the bare platform (issue 8): the image of the hostile
//! variant of system.xml (guest1 runs `hostile.elf`, guest/src/bin/hostile.rs,
//! with its default parameters: there is no environment) booted in QEMU
//! with QEMU's own virtio-balloon, on aarch64 `virt` and x86_64 `pc`.
//!
//! Every hostile request must get the error its kind must get and the good
//! ones be served; the hostile PD's tag and ring checks stay clean; guest0
//! finishes with no error and its data intact; the memserver's own counters
//! saw every undecodable request and the illegal index moves; no page is
//! lost; and guest0's freed 256 MiB still goes back to the host (QEMU's RSS
//! falls, [`bare::verdict`]), and a QMP balloon target is still reached.
//!
//! Needs QEMU (`.ci/install-qemu`) and the *-unknown-none targets. Each wait
//! is bounded (the runner's timeout, its settle time, the balloon check's
//! 30 s); nothing sleeps for timing.

mod common;

use common::{BUILD, QEMU, tmp, workspace};
use std::time::Instant;
use tools::bare::{self, Variant};
use tools::qemu::{self, Arch, BalloonDevice};

const MIB: u64 = 1 << 20;

#[test]
fn the_hostile_variant_replaces_guest1_only() {
    let xml = bare::description(&workspace(), Variant::Hostile).unwrap();
    assert_eq!(bare::guests(&xml).unwrap(), ["GUEST0"]);
    let sys = sdf::System::parse(&xml).unwrap();
    let image = |pd: &str| sys.pd(pd).unwrap().program_image.clone().unwrap();
    assert_eq!(image("guest1"), "hostile.elf");
    assert_eq!(image("guest0"), "guest.elf");
    // The x86_64 description keeps it.
    let x86 = tools::image::board_sdf(&xml, tools::image::Board::X86_64Generic).unwrap();
    let sys = sdf::System::parse(&x86).unwrap();
    assert_eq!(
        sys.pd("guest1").unwrap().program_image.as_deref(),
        Some("hostile.elf")
    );
}

fn hostile(name: &str, arch: Arch) {
    let started = Instant::now();
    let out = tmp().join(format!("bare-hostile-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    let xml = bare::description(&workspace(), Variant::Hostile).unwrap();
    let kernel = {
        let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        // Not the outer cargo's target dir: it holds the lock while we run.
        bare::build(
            &workspace(),
            &tools::pd_build::target_dir(&tmp()),
            &out,
            arch,
            "system",
            &xml,
            &tools::pd_build::BuiltIn::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let guests = bare::guests(&xml).unwrap();
    let mut cfg = bare::run_config(
        arch,
        kernel,
        BalloonDevice {
            reporting: true,
            modern_mmio: false,
        },
        out.join("qmp.sock"),
        guests.clone(),
        Some(bare::HOSTILE_BALLOON_MIB * MIB),
    );
    cfg.done_lines = vec![bare::HOSTILE_DONE.to_string()];
    let built = started.elapsed();
    let (r, ran) = {
        let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
        let t = Instant::now();
        let r = qemu::run(&cfg, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        (r, t.elapsed())
    };
    std::fs::write(out.join("console.txt"), &r.console).unwrap();
    std::fs::write(out.join("timeline.csv"), r.timeline.csv()).unwrap();
    let ctx = || format!("{name}:\n{}\n{}", bare::summary(&r), r.console);

    println!("{name}:\n{}", bare::summary(&r));
    for l in r.console.lines().filter(|l| l.starts_with("HOSTILE|")) {
        println!("{l}");
    }
    // Every PD ran, guest1 as the hostile PD.
    for pd in ["TIMER", "BALLOON", "MEMSERVER", "GUEST0", "HOSTILE"] {
        assert!(
            r.observed.started.iter().any(|s| s == pd),
            "{pd} did not log\n{}",
            ctx()
        );
    }
    assert!(
        !r.observed.started.iter().any(|s| s == "GUEST1"),
        "{}",
        ctx()
    );
    // No ERROR or PANIC line from any PD.
    assert!(r.observed.problems.is_empty(), "{}", ctx());

    // The memserver held (every check of `hostile_verdict`: answers by
    // kind, the hostile PD's tag/ring/timer counters, guest0's done and
    // verified lines, the memserver's peers line after the hostile PD's
    // last request, every conservation line).
    let f = bare::hostile_verdict(&r.console, &guests).unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    println!("{}", f.peers);
    // The hostile PD's defaults (Params::default in hostile.rs).
    assert_eq!(f.rounds, 5, "{}", ctx());
    let sent = |k: &str| f.sent.iter().find(|(n, _)| n == k).unwrap().1;
    assert_eq!(sent("flood"), 5 * 256, "{}", ctx());
    // Both zones are counted, nothing more, nothing less.
    assert_eq!(f.total_pages, 2 * 512 * MIB / 4096, "{}", ctx());

    // guest0's frees still went back to the host, within the bound, and
    // the balloon reached the target afterwards.
    assert_eq!(r.observed.done, ["GUEST0"], "{}", ctx());
    assert_eq!(r.observed.freed, 256 * MIB, "{}", ctx());
    bare::verdict(&r, 0.9).unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    let b = r.balloon.unwrap();
    assert!(b.before > b.target && b.after <= b.target, "{}", ctx());
    println!(
        "{name}: {} attack requests refused as they must be, {}; build {:.0} s, QEMU run {:.0} s",
        f.sent.iter().skip(1).map(|(_, n)| n).sum::<u64>(),
        bare::freed_reclaim_line(&r),
        built.as_secs_f64(),
        ran.as_secs_f64()
    );
}

#[test]
fn aarch64_hostile_guest_gets_errors_and_guest0_memory_comes_back() {
    hostile("aarch64", Arch::Aarch64);
}

#[test]
fn x86_64_hostile_guest_gets_errors_and_guest0_memory_comes_back() {
    hostile("x86_64", Arch::X86_64);
}
