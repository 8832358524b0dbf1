//! Descriptions with other numbers of guests (tools/systems/one-guest.xml,
//! four-guests.xml): the PDs built from the description alone run every
//! guest on the host platform and the bare platform (real QEMU), each guest
//! verifies its data and the host gets what they freed back; a PD built for
//! one description refuses another in one line; descriptions the system
//! cannot run are refused with a clear error.
//!
//! The bare half needs QEMU (`.ci/install-qemu`) and aarch64-unknown-none.
//! Every wait is bounded; nothing sleeps for timing.

mod common;

use common::{BUILD, QEMU, host_pds_built_from, tmp, workspace};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tools::bare;
use tools::demo::{self, DemoConfig};
use tools::qemu::{self, Arch, BalloonDevice};

const MIB: u64 = 1 << 20;

fn system(name: &str) -> PathBuf {
    workspace().join("tools/systems").join(name)
}

fn config(system: &Path, bin_dir: &Path) -> DemoConfig {
    DemoConfig {
        system: system.to_path_buf(),
        bin_dir: bin_dir.to_path_buf(),
        guest_params: "pattern=bulk,mib=64,hold_ms=500,live_mib=8".into(),
        tunables: "delay_ms=500".into(),
        timeout: Duration::from_secs(60),
        period: Duration::from_millis(50),
        settle: Duration::from_secs(8),
        device: Default::default(),
        watch: None,
        set_tunables: Vec::new(),
        control_socket: None,
    }
}

fn host_run(file: &str, guests: usize) -> PathBuf {
    let system = system(file);
    let bins = host_pds_built_from(&system);
    let cfg = config(&system, &bins);
    let r = demo::run(&cfg, &mut |_| {}).unwrap_or_else(|e| panic!("{file}: {e}"));
    let ctx = || format!("{file}:\n{}\n{}", r.summary(), r.console.join("\n"));
    assert_eq!(demo::guest_names(&cfg).unwrap().len(), guests);
    assert!(r.guests_ok, "not every guest verified\n{}", ctx());
    for g in 0..guests {
        assert!(
            r.console
                .iter()
                .any(|l| l.starts_with(&format!("GUEST{g}|INFO: phase=verified ok"))),
            "GUEST{g} did not verify\n{}",
            ctx()
        );
    }
    assert_eq!(r.freed, guests as u64 * 64 * MIB, "{}", ctx());
    assert!(r.memory_came_back(0.9), "{}", ctx());
    assert!(r.problems.is_empty(), "{}", ctx());
    bins
}

/// One guest, four guests, and PDs built for four refusing the one-guest
/// description: one run after another, they share the build.
#[test]
fn the_host_platform_runs_one_and_four_guests_and_refuses_a_mismatch() {
    host_run("one-guest.xml", 1);
    let bins = host_run("four-guests.xml", 4);

    // The binaries are now the four-guest build: under the one-guest
    // description the launcher refuses them, before anything starts.
    let cfg = config(&system("one-guest.xml"), &bins);
    let e = demo::run(&cfg, &mut |_| {}).expect_err("a PD built for another description ran");
    assert!(!e.contains('\n'), "{e}");
    assert!(
        e.contains("was built for ") && e.contains("four-guests.xml (sha256 "),
        "{e}"
    );
    assert!(
        e.contains("not for ") && e.contains("one-guest.xml (sha256 "),
        "{e}"
    );

    // `tools run` says the same and starts nothing (exit status 2).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tools"))
        .arg("run")
        .arg(system("one-guest.xml"))
        .arg("--bin-dir")
        .arg(&bins)
        .args(["--timeout", "10"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("four-guests.xml") && err.contains("one-guest.xml"),
        "{err}"
    );

    // And the PD itself, started under the one-guest description (as a
    // launcher that skipped the check would), refuses in one line.
    let one = sdf::stamp::Stamp::of_file(&system("one-guest.xml")).unwrap();
    let out = std::process::Command::new(bins.join("memserver"))
        .env(pd::host::SYSTEM_ENV, format!("{} {}", one.sha256, one.path))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("was built for ")
            && err.contains("four-guests.xml (sha256 ")
            && err.contains(&format!(
                "not for {} (sha256 {})",
                one.path,
                &one.sha256[..12]
            )),
        "{err}"
    );
}

#[test]
fn descriptions_the_system_cannot_run_are_refused() {
    let dir = tmp().join("bad-descriptions");
    std::fs::create_dir_all(&dir).unwrap();
    let one = std::fs::read_to_string(system("one-guest.xml")).unwrap();
    let check = |name: &str, xml: &str| {
        let path = dir.join(name);
        std::fs::write(&path, xml).unwrap();
        demo::check(&config(&path, &dir)).expect_err(name)
    };
    // No guest at all.
    let e = demo::check(&config(&common::pingpong("system.xml"), &dir)).unwrap_err();
    assert!(
        e.ends_with("the description has no guest: no protection_domain runs guest.elf"),
        "{e}"
    );
    // A guest without its RAM.
    let no_ram: String = one
        .lines()
        .filter(|l| !l.contains("setvar_vaddr=\"ram\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = check("no-ram.xml", &no_ram);
    assert!(
        e.ends_with("guest PD 'guest0' has no <map setvar_vaddr=\"ram\"> (its ram region)"),
        "{e}"
    );
    // A guest whose RAM region does not exist.
    let e = check(
        "missing-region.xml",
        &one.replace(
            "<memory_region name=\"guest0_ram\"",
            "<memory_region name=\"other_ram\"",
        ),
    );
    assert!(
        e.ends_with("guest PD 'guest0' maps memory_region 'guest0_ram', which does not exist"),
        "{e}"
    );
    // More guests than Microkit has room for beside the three servers.
    let mut many = String::from("<system>\n");
    for i in 0..=sdf::guests::MAX_GUESTS {
        many += &format!(
            "<memory_region name=\"r{i}\" size=\"0x1000\"/><protection_domain name=\"g{i}\" priority=\"100\">\
             <program_image path=\"guest.elf\"/><map mr=\"r{i}\" vaddr=\"0x40000000\" perms=\"rw\" setvar_vaddr=\"ram\"/>\
             <map mr=\"r{i}\" vaddr=\"0x50000000\" perms=\"rw\" setvar_vaddr=\"req\"/>\
             <map mr=\"r{i}\" vaddr=\"0x60000000\" perms=\"rw\" setvar_vaddr=\"resp\"/></protection_domain>\n"
        );
    }
    many += "</system>\n";
    let e = check("too-many.xml", &many);
    assert!(
        e.ends_with(
            "the description has 61 guests; at most 60 (Microkit's 63 PDs less the memserver, balloon and timer)"
        ),
        "{e}"
    );
}

fn bare_run(file: &str, guests: usize) {
    let path = system(file);
    let xml = bare::description_of(&path, bare::Variant::System).unwrap();
    let out = tmp().join(format!("bare-{file}"));
    let kernel = {
        let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        // Not the outer cargo's target dir: it holds the lock while we run.
        bare::build(
            &workspace(),
            &tools::pd_build::target_dir(&tmp()),
            &out,
            Arch::Aarch64,
            "system",
            &xml,
            &tools::pd_build::BuiltIn::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let names = bare::guests(&xml).unwrap();
    assert_eq!(names.len(), guests);
    let balloon = BalloonDevice {
        reporting: true,
        modern_mmio: false,
    };
    let cfg = bare::run_config(
        Arch::Aarch64,
        kernel,
        balloon,
        out.join("qmp.sock"),
        names.clone(),
        None,
    );
    let r = {
        let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
        qemu::run(&cfg, &mut |_| {}).unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    std::fs::write(out.join("console.txt"), &r.console).unwrap();
    let ctx = || format!("{file}:\n{}\n{}", bare::summary(&r), r.console);
    let mut verified = r.observed.verified.clone();
    verified.sort();
    assert_eq!(verified, names, "{}", ctx());
    assert!(r.observed.problems.is_empty(), "{}", ctx());
    assert!(r.observed.freed > 0, "{}", ctx());
    bare::verdict(&r, 0.9).unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
}

/// One after the other: they share the image's build (and its path).
#[test]
fn the_bare_platform_runs_one_and_four_guests() {
    bare_run("one-guest.xml", 1);
    bare_run("four-guests.xml", 4);
}
