//! The cargo target dir that the bare-metal builds of the PD crates share.
//!
//! Every image (`tools image`, `tools bare`, the tests, the benches) builds
//! the same crates for `*-unknown-none` in release, and differs only in the
//! description its build scripts read (`SYSTEM_XML`, `VMM_GUEST_DIR`) and in
//! the kernel's features. Most of a target dir is the host-built
//! dependencies of those build scripts, so one dir per image would hold the
//! same few hundred MiB many times over (a CI disk ran out that way). One
//! shared dir rebuilds only the PD crates when the description changes.
//!
//! Its ELFs are rewritten by the next build, so a builder holds [`lock`]
//! from `cargo build` until it has copied what it needs out of the dir:
//! cargo's own lock ends with cargo, too early for that. The lock is a
//! `flock` on a file in the dir, so it holds across threads and processes.
//!
//! The memserver's reporting tunables and the guests' workload reach such a
//! build through cargo's environment ([`BuiltIn`]): a PD there has no
//! environment of its own.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared dir under `base` (a target dir's `tmp`, or the tools'
/// output dir).
pub fn target_dir(base: &Path) -> PathBuf {
    base.join("pd-build-none")
}

/// Held while a build uses the target dir; unlocked on drop.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Wait for, then take, the build lock of `target_dir` (created if need
/// be).
pub fn lock(target_dir: &Path) -> Result<Lock, String> {
    std::fs::create_dir_all(target_dir).map_err(|e| format!("{}: {e}", target_dir.display()))?;
    let path = target_dir.join("tools-build.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.lock()
        .map_err(|e| format!("locking {}: {e}", path.display()))?;
    Ok(Lock { _file: file })
}

/// What a PD on Microkit or the bare platform would read from its
/// environment on the host platform, built into the image instead (read by
/// the PDs' `option_env!`). Also the `--tunables` and `--guest-params`
/// options of `tools image` and `tools qemu`, checked when parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct BuiltIn {
    /// The memserver's reporting tunables, built into the image:
    /// `key=value,...` as `tools demo --tunables` (e.g. `policy=linux` for
    /// Linux's rules, `delay_ms=500`), or `off`. Default: the adaptive
    /// policy with Linux's numbers.
    #[arg(long, value_parser = checked_tunables)]
    pub tunables: Option<String>,
    /// The workload every guest PD runs, built into the image: `key=value,...`
    /// as `GUEST_PARAMS` of `tools demo` (e.g. `pattern=fragmented,mib=128`).
    /// Default: the bulk pattern sized to the guest's RAM.
    #[arg(long, value_parser = checked_guest_params)]
    pub guest_params: Option<String>,
}

/// `s` if the memserver's own parser takes it as tunables.
pub fn checked_tunables(s: &str) -> Result<String, String> {
    memserver::params::parse_tunables(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// `s` if the guests' own parser takes it as their parameters.
pub fn checked_guest_params(s: &str) -> Result<String, String> {
    guest::params::Params::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// A text's check: [`checked_tunables`] or [`checked_guest_params`].
type Checked = fn(&str) -> Result<String, String>;

impl BuiltIn {
    /// Give `cmd` (a cargo build of the PDs) these texts, and nothing that
    /// our own environment says, after checking each with its PD's own
    /// parser: a PD on Microkit cannot refuse to start, so a bad text must
    /// stop the build.
    pub fn apply(&self, cmd: &mut Command) -> Result<(), String> {
        let texts: [(&str, &str, &Option<String>, Checked); 2] = [
            (
                "MEMSERVER_TUNABLES",
                "--tunables",
                &self.tunables,
                checked_tunables,
            ),
            (
                "GUEST_PARAMS",
                "--guest-params",
                &self.guest_params,
                checked_guest_params,
            ),
        ];
        for (var, flag, text, check) in texts {
            match text {
                Some(t) => {
                    check(t).map_err(|e| format!("{flag} \"{t}\": {e}"))?;
                    cmd.env(var, t);
                }
                None => {
                    cmd.env_remove(var);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_texts_reach_cargo_checked_and_none_clears_ours() {
        let mut cmd = Command::new("cargo");
        cmd.env("GUEST_PARAMS", "inherited");
        BuiltIn {
            tunables: Some("policy=linux".into()),
            guest_params: None,
        }
        .apply(&mut cmd)
        .unwrap();
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&("MEMSERVER_TUNABLES".as_ref(), Some("policy=linux".as_ref()))));
        // Not ours to pass on: the guests get their defaults.
        assert!(envs.contains(&("GUEST_PARAMS".as_ref(), None)));

        let both = BuiltIn {
            tunables: None,
            guest_params: Some("pattern=fragmented,mib=64".into()),
        };
        let mut cmd = Command::new("cargo");
        both.apply(&mut cmd).unwrap();
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&(
            "GUEST_PARAMS".as_ref(),
            Some("pattern=fragmented,mib=64".as_ref())
        )));
        assert!(envs.contains(&("MEMSERVER_TUNABLES".as_ref(), None)));

        for bad in [
            BuiltIn {
                tunables: Some("policy=nonsense".into()),
                guest_params: None,
            },
            BuiltIn {
                tunables: None,
                guest_params: Some("pattern=nonsense".into()),
            },
        ] {
            let e = bad.apply(&mut Command::new("cargo")).unwrap_err();
            assert!(e.contains("nonsense"), "{e}");
        }
    }

    #[test]
    fn the_lock_excludes_another_open_of_its_file_until_dropped() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let held = lock(&dir).unwrap();
        // Another open file description, as another thread or process has.
        let other = File::options()
            .write(true)
            .open(dir.join("tools-build.lock"))
            .unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        other.try_lock().unwrap();
    }
}
