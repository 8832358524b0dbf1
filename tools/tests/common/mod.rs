//! Shared by the tools tests: build the pd crate's test PDs once per test
//! binary, with the same cargo, in a target dir of their own (the outer
//! build's target dir is locked while tests run).

#![allow(dead_code)] // each test binary uses part of this module

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The test binary's scratch directory.
pub fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// One cargo build at a time in a test binary (they share a target dir and
/// its lock).
pub static BUILD: Mutex<()> = Mutex::new(());
/// One QEMU at a time in a test binary: each holds up to 600 MiB, and
/// timings measured on a machine loaded by another QEMU would say little.
/// (Cargo runs test binaries one after another.)
pub static QEMU: Mutex<()> = Mutex::new(());

pub fn pingpong(file: &str) -> PathBuf {
    workspace().join("pd/examples/pingpong").join(file)
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("pd-build")
}

/// `cargo build -p pd --bins` with `extra` args; panics with cargo's output.
pub fn build_pd(extra: &[&str]) {
    let out = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["build", "-q", "-p", "pd", "--bins", "--target-dir"])
        .arg(target_dir())
        .args(extra)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo build {extra:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The directory holding the host builds of ping, pong and crasher.
pub fn host_bins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        build_pd(&["--features", "host"]);
        target_dir().join("debug")
    })
}

/// The Microkit build of `bin` for `target`.
pub fn microkit_elf(target: &str, bin: &str) -> PathBuf {
    build_pd(&["--target", target]);
    target_dir().join(target).join("debug").join(bin)
}

/// The PDs' host binaries built from description `system` (their zones,
/// rings and channels are generated from it). Every test binary that runs
/// PDs from a description of its own builds them in this one target dir:
/// cargo runs test binaries one after another, so the dependencies are
/// built once and a new description rebuilds only the PD crates.
pub fn host_pds_built_from(system: &Path) -> PathBuf {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let target = tmp().join("pds-descriptions");
    tools::demo::build_pds_from(&workspace(), &target, "dev", Some(system))
        .unwrap_or_else(|e| panic!("{e}"));
    target.join("debug")
}

/// `tools demo --no-build --timeout 5 ARGS`: for tests of what the command
/// line refuses before anything is built or launched.
pub fn demo_no_build(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tools"))
        .arg("demo")
        .args(["--no-build", "--timeout", "5"])
        .args(args)
        .output()
        .expect("run tools demo")
}
