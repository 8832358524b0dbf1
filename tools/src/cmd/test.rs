//! `tools test`: the project's one test command (README.md; `.ci/run` calls
//! it too). Format check, clippy with warnings denied, and every test of the
//! workspace, including the end-to-end runs on the host platform and in QEMU.
//!
//! QEMU comes from `.ci/install-qemu` (Debian bookworm-backports) when it is
//! missing and we may install packages (root); otherwise the command says
//! what to install and stops.

use super::image::workspace;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;
use tools::image::{self, Board, KernelConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the format check and clippy (tests only).
    #[arg(long)]
    pub tests_only: bool,
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn step(name: &str, dir: &Path, program: &str, args: &[&str]) -> Result<(), String> {
    step_with_env(name, dir, &[], program, args)
}

fn step_with_env(
    name: &str,
    dir: &Path,
    env: &[(&str, &std::ffi::OsStr)],
    program: &str,
    args: &[&str],
) -> Result<(), String> {
    println!("==> {name}: {program} {}", args.join(" "));
    let t = Instant::now();
    let status = Command::new(program)
        .current_dir(dir)
        .envs(env.iter().copied())
        .args(args)
        .status()
        .map_err(|e| format!("{name}: running {program}: {e}"))?;
    println!(
        "==> {name}: {status} after {:.0} s; {}",
        t.elapsed().as_secs_f64(),
        free_disk(dir)
    );
    if status.success() {
        Ok(())
    } else {
        Err(format!("{name} failed ({status})"))
    }
}

/// The free space of the file system holding `dir` (the target dir's,
/// in a clean clone): the builds and images fill it, and a small CI disk
/// has run out.
fn free_disk(dir: &Path) -> String {
    match rustix::fs::statvfs(dir) {
        Ok(s) => format!(
            "{:.1} GiB free on disk",
            (s.f_bavail * s.f_frsize) as f64 / (1u64 << 30) as f64
        ),
        Err(e) => format!("free disk unknown ({e})"),
    }
}

fn ensure_qemu(ws: &Path) -> Result<(), String> {
    if have("qemu-system-aarch64") && have("qemu-system-x86_64") {
        return Ok(());
    }
    if rustix::process::geteuid().is_root() {
        return step("install QEMU", ws, "bash", &[".ci/install-qemu"]);
    }
    Err(
        "QEMU is missing: run `sudo bash .ci/install-qemu` (qemu-system-arm and \
         qemu-system-x86 from Debian bookworm-backports), then this again"
            .into(),
    )
}

fn run(args: &Args) -> Result<(), String> {
    let ws = workspace();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    ensure_qemu(&ws)?;
    if !args.tests_only {
        step("format", &ws, &cargo, &["fmt", "--all", "--check"])?;
        step(
            "clippy",
            &ws,
            &cargo,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
        )?;
        clippy_bare_metal(&ws, &cargo)?;
    }
    // cargo captures a passing test's output, so say it here: the seL4
    // boot tests (tools/tests/sel4_qemu.rs) only run with an SDK, and a
    // wrong one is named before anything is built.
    match std::env::var_os("MICROKIT_SDK").filter(|s| !s.is_empty()) {
        Some(sdk) => {
            let sdk = Path::new(&sdk);
            for board in Board::ALL {
                for config in [KernelConfig::Debug, KernelConfig::Release] {
                    image::check_sdk(sdk, board, config).map_err(|e| e.to_string())?;
                }
            }
            println!(
                "==> seL4: MICROKIT_SDK={}: the Microkit image tests run (both boards, debug and release)",
                sdk.display()
            );
        }
        None => println!(
            "==> seL4: MICROKIT_SDK is not set: the Microkit image tests are skipped \
             (they pass without booting); set it to a Microkit 2.3.0 SDK to run them"
        ),
    }
    let mut test = vec!["test", "--workspace", "--locked"];
    if !args.cargo_test_args.is_empty() {
        test.push("--");
        test.extend(args.cargo_test_args.iter().map(String::as_str));
    }
    step("tests", &ws, &cargo, &test)
}

/// The PD crates' bare-metal code (`target_os = "none"`: the Microkit
/// runtime, the VMM's vCPU loop, the bare platform) is compiled only for
/// the `*-unknown-none` targets, which the workspace's clippy does not
/// build: lint it there too, each board's target, with the description the
/// images are built from (the crates' build scripts read it): the crates
/// of the PD programs the images hold, and on its own the bare platform,
/// which links every PD with `pd/bare`.
fn clippy_bare_metal(ws: &Path, cargo: &str) -> Result<(), String> {
    let system = ws.join("system.xml");
    let env = [("SYSTEM_XML", system.as_os_str())];
    let pds = image::pd_packages();
    for board in Board::ALL {
        let target = board.target();
        for packages in [&pds[..], &["bare"]] {
            let mut args = vec!["clippy", "--release", "--locked", "--target", target];
            args.extend(packages.iter().flat_map(|p| ["-p", p]));
            args.extend(["--bins", "--", "-D", "warnings"]);
            step_with_env(&format!("clippy {target}"), ws, &env, cargo, &args)?;
        }
    }
    Ok(())
}

pub fn main(args: Args) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test: {e}");
            ExitCode::FAILURE
        }
    }
}
