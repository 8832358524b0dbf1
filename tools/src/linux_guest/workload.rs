//! The guest workload (`linux-workload/`), built for
//! aarch64-unknown-linux-musl: static, linked by rust-lld with Rust's
//! self-contained musl CRT and libc, so no cross gcc is needed.

use super::error::{GuestError, io};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workload's Rust target.
pub const TARGET: &str = "aarch64-unknown-linux-musl";

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The target's standard library is installed (rustup target add).
fn check_target(workspace: &Path) -> Result<(), GuestError> {
    let out = Command::new("rustc")
        .current_dir(workspace)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| GuestError::Command {
            what: "rustc --print sysroot".into(),
            detail: e.to_string(),
        })?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !Path::new(&sysroot)
        .join("lib/rustlib")
        .join(TARGET)
        .is_dir()
    {
        return Err(GuestError::NoMuslTarget(sysroot));
    }
    Ok(())
}

/// Build it (release, stripped) in `target_dir`; the binary's path.
pub fn build(workspace: &Path, target_dir: &Path) -> Result<PathBuf, GuestError> {
    check_target(workspace)?;
    let out = Command::new(cargo())
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "-p",
            "linux-workload",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        // rust-lld instead of the default `cc`, which would be the host's
        // x86_64 gcc; the musl target links its own CRT and libc.
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .output()
        .map_err(|e| GuestError::Command {
            what: "cargo build -p linux-workload".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let detail = err
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or_else(|| err.lines().last().unwrap_or(""));
        return Err(GuestError::Command {
            what: format!("cargo build -p linux-workload --target {TARGET}"),
            detail: detail.to_string(),
        });
    }
    let bin = target_dir.join(TARGET).join("release/linux-workload");
    std::fs::metadata(&bin).map_err(io(&bin))?;
    Ok(bin)
}
