//! `manifest.txt` beside the outputs: what the guest was made of, one
//! `key=value` line each, so a run or a benchmark can name it and a later
//! `tools guest` can reuse the cached packages without asking apt.

use super::apt::PackageInfo;
use std::fmt::Write as _;

/// What went into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub packages: Vec<PackageInfo>,
    /// `uname -r` of the kernel (`6.1.0-57-cloud-arm64`).
    pub kernel_release: String,
    /// Modules in load order.
    pub modules: Vec<String>,
    pub image_bytes: u64,
    pub initramfs_bytes: u64,
}

impl Manifest {
    /// The text form.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for p in &self.packages {
            let _ = writeln!(
                s,
                "package={} version={} arch=arm64 size={} sha256={} file={}",
                p.name, p.version, p.size, p.sha256, p.filename
            );
        }
        let _ = writeln!(s, "kernel_release={}", self.kernel_release);
        let _ = writeln!(s, "modules={}", self.modules.join(","));
        let _ = writeln!(s, "image_bytes={}", self.image_bytes);
        let _ = writeln!(s, "initramfs_bytes={}", self.initramfs_bytes);
        s
    }

    /// The packages of a text form (what the cache is checked against when
    /// apt cannot be asked).
    pub fn packages_of(text: &str) -> Vec<PackageInfo> {
        text.lines()
            .filter_map(|l| l.strip_prefix("package="))
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let name = words.next()?.to_string();
                let get = |k: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .map(str::to_string)
                };
                Some(PackageInfo {
                    name,
                    version: get("version=")?,
                    filename: get("file=")?,
                    size: get("size=")?.parse().ok()?,
                    sha256: get("sha256=")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_survive_the_text_form() {
        let m = Manifest {
            packages: vec![PackageInfo {
                name: "busybox-static".into(),
                version: "1:1.35.0-4+deb12u1+b1".into(),
                filename: "pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_arm64.deb".into(),
                size: 822236,
                sha256: "ab".repeat(32),
            }],
            kernel_release: "6.1.0-57-cloud-arm64".into(),
            modules: vec!["virtio_ring".into(), "virtio".into()],
            image_bytes: 1,
            initramfs_bytes: 2,
        };
        let t = m.to_text();
        assert!(t.contains("modules=virtio_ring,virtio\n"));
        assert_eq!(Manifest::packages_of(&t), m.packages);
    }
}
