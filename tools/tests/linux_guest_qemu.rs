//! The Linux guest of issue 13 without seL4: `tools::linux_guest` builds
//! the kernel Image and initramfs from Debian's arm64 packages, and QEMU
//! boots them directly (`-M virt -cpu cortex-a53 -m 1G`, QEMU's
//! virtio-balloon on virtio-mmio). The run must reach each boot stage's
//! exact console line within its bound (kernel, /init, userspace, virtio
//! modules loaded, workload started, workload done), and QEMU's RSS must
//! fall after the workload frees, by Linux's own free page reporting; the
//! control run with `free-page-reporting=off` keeps the memory.
//!
//! Needs QEMU (`.ci/install-qemu`), the aarch64-unknown-linux-musl target,
//! and apt able to fetch the arm64 packages (`.ci/run` sets that up) unless
//! `target/linux-guest/cache` has them; otherwise it fails saying which.

mod common;

use common::{QEMU, tmp, workspace};
use std::sync::OnceLock;
use std::time::Duration;
use tools::linux_guest::direct::{self, DirectConfig, DirectReport, STAGES};
use tools::linux_guest::{self, Guest, Spec};

const MIB: u64 = 1 << 20;

fn guest() -> &'static Guest {
    static G: OnceLock<Guest> = OnceLock::new();
    G.get_or_init(|| {
        let spec = Spec::new(&workspace());
        // The steps go into the panic message, after the error, so a
        // truncated log still shows why.
        let mut steps = Vec::new();
        let g = linux_guest::prepare(&spec, &mut |l| steps.push(format!("guest: {l}")))
            .unwrap_or_else(|e| {
                panic!(
                    "preparing the Linux guest: {e}\n(disk: {})\n{}",
                    free_disk(&spec.out_dir),
                    steps.join("\n")
                )
            });
        println!("{}", steps.join("\n"));
        // A second call is served from the cache: nothing downloaded, the
        // same packages.
        let again = linux_guest::prepare(&spec, &mut |_| {})
            .unwrap_or_else(|e| panic!("preparing the Linux guest again: {e}"));
        assert_eq!(again.downloaded, 0);
        assert_eq!(again.manifest.packages, g.manifest.packages);
        again
    })
}

/// `df`'s word on the free space where the guest is built.
fn free_disk(dir: &std::path::Path) -> String {
    std::process::Command::new("df")
        .arg("-h")
        .arg(dir)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', " | ")
        })
        .unwrap_or_else(|e| format!("df: {e}"))
}

fn boot(name: &str, reporting: bool) -> DirectReport {
    let g = guest();
    let out = tmp().join(format!("linux-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg = DirectConfig::new(reporting, out.join("qmp.sock"));
    cfg.mib = 128;
    let r = {
        let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
        direct::run(g, &cfg, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    std::fs::write(out.join("console.txt"), &r.console).unwrap();
    std::fs::write(out.join("timeline.csv"), r.timeline.csv()).unwrap();
    println!("{name}:\n{}", r.summary());
    r
}

fn ctx(r: &DirectReport) -> String {
    format!("{}\n{}", r.summary(), r.console)
}

/// Every stage's line came, in order, and the workload ran clean.
fn booted_and_ran(r: &DirectReport) {
    assert_eq!(r.failure, None, "{}", ctx(r));
    let names: Vec<&str> = r.stages.iter().map(|(n, _)| *n).collect();
    let want: Vec<&str> = STAGES.iter().map(|s| s.name).collect();
    assert_eq!(names, want, "{}", ctx(r));
    assert_eq!(r.observed.freed, 128 * MIB, "{}", ctx(r));
    assert!(r.observed.problems.is_empty(), "{}", ctx(r));
    assert!(
        r.console
            .contains("WORKLOAD|INFO: phase=verified ok bad_pages=0"),
        "{}",
        ctx(r)
    );
    // The guest's memory was really touched: RSS rose by most of it.
    let touched = r
        .timeline
        .marks()
        .iter()
        .find(|m| m.label == "WORKLOAD touched 128 MiB")
        .map(|m| m.t)
        .expect("touched mark");
    let before = r.timeline.at(r.stage("workload").unwrap()).unwrap().host;
    let after = r.timeline.at(touched).unwrap().host;
    assert!(
        after >= before + 100 * MIB,
        "RSS rose from {before} to {after} only\n{}",
        ctx(r)
    );
}

#[test]
fn linux_gives_freed_memory_back_through_free_page_reporting() {
    let r = boot("reporting", true);
    booted_and_ran(&r);
    assert_eq!(r.reporting_negotiated, Some(true), "{}", ctx(&r));
    assert!(
        r.console.contains("Free page reporting enabled"),
        "{}",
        ctx(&r)
    );
    // Linux reports within its 2 s delay of a free, in 2 MiB and larger
    // blocks: most of what the workload freed comes back, half of it soon.
    // Not all: Linux keeps some freed pages on its per-CPU lists (about
    // 20 MiB here), outside MemFree and the free lists reporting walks. Of
    // what MemFree regained, nearly all comes back.
    assert!(
        r.reclaim.fraction() >= 0.6,
        "only {:.0} % of the freed memory came back\n{}",
        r.reclaim.fraction() * 100.0,
        ctx(&r)
    );
    let p50 = r.reclaim.p50.expect("50 % back");
    assert!(p50 <= Duration::from_secs(10), "{p50:?}\n{}", ctx(&r));
    let g = r
        .reclaim_guest_free
        .expect("memfree_mib on the phase lines");
    assert!(
        g.expected >= 64 * MIB && g.fraction() >= 0.9,
        "{:.0} % of the {} MiB the guest regained came back\n{}",
        g.fraction() * 100.0,
        g.expected / MIB,
        ctx(&r)
    );
}

#[test]
fn without_reporting_the_memory_stays_with_qemu() {
    let r = boot("control", false);
    booted_and_ran(&r);
    assert_eq!(r.reporting_negotiated, Some(false), "{}", ctx(&r));
    assert!(
        r.reclaim.fraction() < 0.1,
        "{:.0} % came back without reporting\n{}",
        r.reclaim.fraction() * 100.0,
        ctx(&r)
    );
}
