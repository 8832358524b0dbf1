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
/// the PDs' `option_env!`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuiltIn {
    /// The memserver's reporting tunables (`MEMSERVER_TUNABLES`,
    /// `memserver::params` syntax); `None`: its defaults.
    pub tunables: Option<String>,
    /// Every guest PD's workload (`GUEST_PARAMS`, `guest::params` syntax);
    /// `None`: the defaults for its RAM.
    pub guest_params: Option<String>,
}

impl BuiltIn {
    /// Just the memserver's `tunables`.
    pub fn tunables(tunables: Option<&str>) -> Self {
        Self {
            tunables: tunables.map(String::from),
            guest_params: None,
        }
    }

    /// Give `cmd` (a cargo build of the PDs) these texts, and nothing that
    /// our own environment says, after checking each with its PD's own
    /// parser: a PD on Microkit cannot refuse to start, so a bad text must
    /// stop the build.
    pub fn apply(&self, cmd: &mut Command) -> Result<(), String> {
        match &self.tunables {
            Some(t) => {
                memserver::params::parse_tunables(t)
                    .map_err(|e| format!("--tunables \"{t}\": {e}"))?;
                cmd.env("MEMSERVER_TUNABLES", t);
            }
            None => {
                cmd.env_remove("MEMSERVER_TUNABLES");
            }
        }
        match &self.guest_params {
            Some(p) => {
                guest::params::Params::parse(p)
                    .map_err(|e| format!("--guest-params \"{p}\": {e}"))?;
                cmd.env("GUEST_PARAMS", p);
            }
            None => {
                cmd.env_remove("GUEST_PARAMS");
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
        BuiltIn::tunables(Some("policy=linux"))
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
            BuiltIn::tunables(Some("policy=nonsense")),
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
        let dir = std::env::temp_dir().join(format!("pd-build-lock-{}", std::process::id()));
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
