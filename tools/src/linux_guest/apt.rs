//! The packages, from Debian's archive through apt: resolve the kernel's
//! exact name, read each package's version and SHA256 from apt's Packages
//! index (`apt-cache show`), download with `apt-get download`, check the
//! hash, keep the .deb in a cache reused while its hash still matches.
//!
//! The Packages index is what apt verified against the archive's signed
//! Release file, so its SHA256 ties the .deb to the archive.

use super::error::{GuestError, io};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The metapackage that names the current cloud kernel of bookworm (6.1).
pub const KERNEL_META: &str = "linux-image-cloud-arm64";
/// The kernel series the guest is built for.
pub const KERNEL_SERIES: &str = "6.1.";
/// BusyBox, statically linked: the guest's shell, mount and insmod.
pub const BUSYBOX: &str = "busybox-static";
/// The packages' architecture.
pub const ARCH: &str = "arm64";

/// A package as apt's index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    /// Path in the archive (`pool/main/...deb`).
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

impl PackageInfo {
    /// The file name of the cached .deb (the archive's).
    pub fn deb_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }
}

/// A field of one `apt-cache show` record (`Key: value`).
pub fn field<'a>(record: &'a str, key: &str) -> Option<&'a str> {
    record.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// The exact kernel package a metapackage's record depends on:
/// `Depends: linux-image-6.1.0-57-cloud-arm64 (= 6.1.192-3)` ->
/// `linux-image-6.1.0-57-cloud-arm64`.
pub fn kernel_dependency(meta_record: &str) -> Option<&str> {
    field(meta_record, "Depends")?
        .split(',')
        .map(|d| d.trim().split([' ', '(']).next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && d.ends_with("-cloud-arm64"))
}

/// Parse a record into a [`PackageInfo`].
pub fn parse_record(record: &str) -> Option<PackageInfo> {
    Some(PackageInfo {
        name: field(record, "Package")?.to_string(),
        version: field(record, "Version")?.to_string(),
        filename: field(record, "Filename")?.to_string(),
        size: field(record, "Size")?.parse().ok()?,
        sha256: field(record, "SHA256")?.to_ascii_lowercase(),
    })
}

fn run(what: &str, cmd: &mut Command) -> Result<String, GuestError> {
    let out = cmd.output().map_err(|e| GuestError::Command {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let detail = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(GuestError::Command {
            what: what.to_string(),
            detail: format!("{} ({})", detail.trim(), out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `apt-cache show --no-all-versions <pkg>:arm64 ...`: each candidate's
/// record, in the order asked (one call: apt-cache takes seconds to load
/// its index with two architectures).
pub fn show(packages: &[&str]) -> Result<Vec<String>, GuestError> {
    let specs: Vec<String> = packages.iter().map(|p| format!("{p}:{ARCH}")).collect();
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(&specs)
        .output()
        .map_err(|e| GuestError::Command {
            what: "apt-cache show".into(),
            detail: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let records: Vec<&str> = text
        .split("\n\n")
        .filter(|r| !r.trim().is_empty())
        .collect();
    let err = String::from_utf8_lossy(&out.stderr);
    let detail = err.lines().next().unwrap_or("no record").trim().to_string();
    packages
        .iter()
        .zip(&specs)
        .map(|(p, spec)| {
            records
                .iter()
                .find(|r| field(r, "Package") == Some(p))
                .map(|r| r.to_string())
                .ok_or_else(|| GuestError::NoPackage {
                    package: spec.clone(),
                    detail: detail.clone(),
                })
        })
        .collect()
}

fn info(name: &str, record: &str) -> Result<PackageInfo, GuestError> {
    parse_record(record).ok_or_else(|| GuestError::NoPackage {
        package: format!("{name}:{ARCH}"),
        detail: "its record lacks Version, Filename, Size or SHA256".into(),
    })
}

/// The two packages the guest is made of, as apt's index has them now:
/// the kernel the metapackage depends on, and busybox-static.
pub fn resolve() -> Result<Vec<PackageInfo>, GuestError> {
    let first = show(&[KERNEL_META, BUSYBOX])?;
    let kernel = kernel_dependency(&first[0]).ok_or_else(|| GuestError::NoPackage {
        package: format!("{KERNEL_META}:{ARCH}"),
        detail: "its Depends names no linux-image-*-cloud-arm64".into(),
    })?;
    let busybox = info(BUSYBOX, &first[1])?;
    let kernel = info(kernel, &show(&[kernel])?[0])?;
    if !kernel.version.starts_with(KERNEL_SERIES) {
        return Err(GuestError::WrongKernel {
            package: kernel.name,
            version: kernel.version,
        });
    }
    Ok(vec![kernel, busybox])
}

/// Whether dpkg already knows the arm64 architecture.
pub fn has_arm64() -> Result<bool, GuestError> {
    let out = run(
        "dpkg --print-foreign-architectures",
        Command::new("dpkg").arg("--print-foreign-architectures"),
    )?;
    Ok(out.split_whitespace().any(|a| a == ARCH))
}

/// `dpkg --add-architecture arm64` when missing, then `apt-get update`
/// (needs root and the archive).
pub fn add_arm64_and_update(progress: &mut dyn FnMut(&str)) -> Result<(), GuestError> {
    if !has_arm64()? {
        progress("adding the arm64 architecture (dpkg --add-architecture arm64)");
        run(
            "dpkg --add-architecture arm64",
            Command::new("dpkg").args(["--add-architecture", ARCH]),
        )?;
    }
    progress("updating apt's package lists (apt-get update), for the arm64 packages");
    run(
        "apt-get update",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    Ok(())
}

/// SHA256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, GuestError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// `path` has the hash `info` says, or a [`GuestError::HashMismatch`].
pub fn verify(path: &Path, sha256: &str) -> Result<(), GuestError> {
    let actual = sha256_file(path)?;
    if actual != sha256 {
        return Err(GuestError::HashMismatch {
            file: path.to_path_buf(),
            expected: sha256.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Where `info`'s .deb is cached, if it is there with the right hash.
pub fn cached(cache: &Path, info: &PackageInfo) -> Option<PathBuf> {
    let p = cache.join(info.deb_name());
    verify(&p, &info.sha256).ok().map(|()| p)
}

/// The cached .deb of `info`: reused when its hash matches, else
/// downloaded with `apt-get download`, checked, and moved into `cache`.
/// The bool says whether it was downloaded.
pub fn fetch(
    cache: &Path,
    info: &PackageInfo,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, bool), GuestError> {
    if let Some(p) = cached(cache, info) {
        progress(&format!(
            "{} {}: cached, hash matches",
            info.name, info.version
        ));
        return Ok((p, false));
    }
    // Download into a directory of its own: apt names the file after the
    // version with its epoch escaped (`1%3a1.35.0...`), not the pool name.
    let dl = cache.join(format!("download-{}", info.name));
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).map_err(io(&dl))?;
    progress(&format!(
        "{} {}: downloading {:.1} MiB (apt-get download)",
        info.name,
        info.version,
        info.size as f64 / (1 << 20) as f64
    ));
    let spec = format!("{}:{ARCH}={}", info.name, info.version);
    run(
        &format!("apt-get download {spec}"),
        Command::new("apt-get")
            .current_dir(&dl)
            // The download directory is root's; apt's sandbox user could not
            // write it.
            .args(["-o", "APT::Sandbox::User=root", "-qq", "download", &spec]),
    )?;
    let deb = std::fs::read_dir(&dl)
        .map_err(io(&dl))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| GuestError::Command {
            what: format!("apt-get download {spec}"),
            detail: format!("no .deb appeared in {}", dl.display()),
        })?;
    verify(&deb, &info.sha256)?;
    let dest = cache.join(info.deb_name());
    std::fs::rename(&deb, &dest).map_err(io(&dest))?;
    let _ = std::fs::remove_dir_all(&dl);
    progress(&format!(
        "{} {}: SHA256 matches the index",
        info.name, info.version
    ));
    Ok((dest, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = "Package: linux-image-cloud-arm64\nSource: linux-signed-arm64 (6.1.192+3)\n\
Version: 6.1.192-3\nArchitecture: arm64\n\
Depends: linux-image-6.1.0-57-cloud-arm64 (= 6.1.192-3)\nDescription: Linux for arm64 cloud (meta-package)\n";

    const BUSYBOX_RECORD: &str = "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\n\
Architecture: arm64\nFilename: pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_arm64.deb\n\
Size: 822236\nMD5sum: 0123\n\
SHA256: 732C9135564FC71337E0E05FB4DA4D11E6C28C1834BCE3E405E575AFEF2A52F5\n";

    #[test]
    fn the_kernel_is_resolved_from_the_metapackage() {
        assert_eq!(
            kernel_dependency(META),
            Some("linux-image-6.1.0-57-cloud-arm64")
        );
        assert_eq!(kernel_dependency("Package: x\nDepends: libc6\n"), None);
    }

    #[test]
    fn records_give_version_file_size_and_hash() {
        let p = parse_record(BUSYBOX_RECORD).unwrap();
        assert_eq!(p.name, "busybox-static");
        assert_eq!(p.version, "1:1.35.0-4+deb12u1+b1");
        assert_eq!(p.deb_name(), "busybox-static_1.35.0-4+deb12u1+b1_arm64.deb");
        assert_eq!(p.size, 822236);
        assert_eq!(
            p.sha256,
            "732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5"
        );
        assert!(parse_record("Package: x\nVersion: 1\n").is_none());
    }

    #[test]
    fn a_file_with_another_hash_is_refused_in_one_line() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let f = dir.join("x.deb");
        std::fs::write(&f, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&f).unwrap(), abc);
        verify(&f, abc).unwrap();
        let e = verify(&f, &"0".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("x.deb: SHA256 ba7816bf"), "{e}");
        assert!(e.ends_with("the hash in apt's Packages index"), "{e}");
        assert!(!e.contains('\n'));
        let info = PackageInfo {
            name: "x".into(),
            version: "1".into(),
            filename: "pool/x.deb".into(),
            size: 3,
            sha256: "0".repeat(64),
        };
        // A cached file whose hash no longer matches is not reused.
        assert_eq!(cached(&dir, &info), None);
        let info = PackageInfo {
            sha256: abc.into(),
            ..info
        };
        assert_eq!(cached(&dir, &info), Some(f));
    }
}
