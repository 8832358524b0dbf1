//! The Linux guest of issue 13, from real packages: Debian bookworm's
//! `linux-image-*-cloud-arm64` (6.1) and `busybox-static` for arm64,
//! fetched with apt and checked against the archive's hashes ([`apt`]),
//! made into an arm64 `Image` ([`kernel`]) and an initramfs ([`initramfs`])
//! holding BusyBox, the virtio modules the kernel needs ([`modules`]) and
//! the Rust workload ([`workload`]). [`prepare`] does it all and returns
//! the paths, for `tools guest`, the VMM's build and the tests; [`direct`]
//! boots the result straight under QEMU, the baseline the nested (seL4 VM)
//! run is compared with.
//!
//! Outputs, under `target/linux-guest/`: `Image`, `initramfs.cpio.gz`,
//! `manifest.txt` ([`manifest`]); the .debs are cached in `cache/`.

pub mod apt;
pub mod direct;
pub mod error;
pub mod initramfs;
pub mod kernel;
pub mod manifest;
pub mod modules;
pub mod workload;

pub use error::GuestError;
pub use kernel::ImageHeader;
pub use manifest::Manifest;

use error::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where things go.
#[derive(Debug, Clone)]
pub struct Spec {
    pub workspace: PathBuf,
    /// The outputs (`target/linux-guest`).
    pub out_dir: PathBuf,
    /// The downloaded .debs, reused while their hashes match.
    pub cache_dir: PathBuf,
    /// The workload's cargo target dir (not the outer build's, which is
    /// locked while tests run).
    pub build_dir: PathBuf,
}

impl Spec {
    /// The defaults under `workspace/target/linux-guest`.
    pub fn new(workspace: &Path) -> Spec {
        let out = workspace.join("target/linux-guest");
        Spec {
            workspace: workspace.to_path_buf(),
            cache_dir: out.join("cache"),
            build_dir: out.join("build"),
            out_dir: out,
        }
    }
}

/// A prepared guest.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The uncompressed arm64 Image.
    pub image: PathBuf,
    /// The gzipped newc initramfs.
    pub initramfs: PathBuf,
    pub manifest_path: PathBuf,
    pub manifest: Manifest,
    pub header: ImageHeader,
    /// Bytes downloaded this time (0 when everything was cached).
    pub downloaded: u64,
}

/// The packages: apt's current ones; when apt has no arm64 index but the
/// cache holds what the last manifest names (hashes checked), those; else
/// add arm64, update apt's lists (saying so) and ask again.
fn packages(
    spec: &Spec,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<apt::PackageInfo>, GuestError> {
    progress(&format!(
        "asking apt for {}:arm64's kernel and {}:arm64 (apt-cache show)",
        apt::KERNEL_META,
        apt::BUSYBOX
    ));
    match apt::resolve() {
        Ok(p) => return Ok(p),
        Err(GuestError::NoPackage { .. }) => {}
        Err(e) => return Err(e),
    }
    let manifest = spec.out_dir.join("manifest.txt");
    if let Ok(text) = std::fs::read_to_string(&manifest) {
        let cached = Manifest::packages_of(&text);
        if cached.len() == 2
            && cached
                .iter()
                .all(|p| apt::cached(&spec.cache_dir, p).is_some())
        {
            progress(
                "apt has no arm64 index here; the cached packages match the hashes of the last manifest: using them",
            );
            return Ok(cached);
        }
    }
    progress("the arm64 packages are not cached and apt cannot name them yet");
    apt::add_arm64_and_update(progress)?;
    apt::resolve()
}

fn extract(deb: &Path, dir: &Path) -> Result<(), GuestError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dir)
        .output()
        .map_err(|e| GuestError::Command {
            what: "dpkg-deb -x".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(GuestError::Command {
            what: format!("dpkg-deb -x {}", deb.display()),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// `boot/vmlinuz-<release>` in an extracted kernel package.
fn find_vmlinuz(root: &Path) -> Result<(PathBuf, String), GuestError> {
    let boot = root.join("boot");
    for e in std::fs::read_dir(&boot).map_err(io(&boot))? {
        let p = e.map_err(io(&boot))?.path();
        if let Some(release) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
        {
            return Ok((p.clone(), release.to_string()));
        }
    }
    Err(GuestError::NotArm64Image {
        path: boot,
        reason: "the kernel package has no boot/vmlinuz-*".into(),
    })
}

/// Write `bytes` to `path` through a temporary file, so a reader never
/// sees half of it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), GuestError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Fetch, check and build everything; `progress` gets a line per step.
/// Concurrent callers (a test and `tools guest`) take turns on a lock in
/// `out_dir`.
pub fn prepare(spec: &Spec, progress: &mut dyn FnMut(&str)) -> Result<Guest, GuestError> {
    for d in [&spec.out_dir, &spec.cache_dir] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    let lock_path = spec.out_dir.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| GuestError::Io(lock_path.clone(), e.into()))?;

    let packages = packages(spec, progress)?;
    let mut debs = Vec::new();
    let mut downloaded = 0;
    for p in &packages {
        let (deb, fresh) = apt::fetch(&spec.cache_dir, p, progress)?;
        if fresh {
            downloaded += p.size;
        }
        debs.push(deb);
    }
    let root = spec.out_dir.join("extract");
    let (kroot, broot) = (root.join("kernel"), root.join("busybox"));
    progress("extracting the packages (dpkg-deb -x)");
    extract(&debs[0], &kroot)?;
    extract(&debs[1], &broot)?;

    let (vmlinuz, release) = find_vmlinuz(&kroot)?;
    let image_path = spec.out_dir.join("Image");
    let tmp_image = spec.out_dir.join("Image.tmp");
    let header = kernel::make_image(&vmlinuz, &tmp_image)?;
    std::fs::rename(&tmp_image, &image_path).map_err(io(&image_path))?;
    progress(&format!(
        "kernel {release}: arm64 Image, text_offset {:#x}, image_size {} MiB",
        header.text_offset,
        header.image_size >> 20
    ));

    let mods = modules::collect(&kroot.join("lib/modules").join(&release), &modules::WANTED)?;
    let names: Vec<String> = mods.iter().map(|m| m.name.clone()).collect();
    progress(&format!("modules, in load order: {}", names.join(" ")));

    let bb_path = broot.join("bin/busybox");
    let busybox = std::fs::read(&bb_path).map_err(io(&bb_path))?;
    progress("building the workload for aarch64-unknown-linux-musl");
    let wl_path = workload::build(&spec.workspace, &spec.build_dir)?;
    let wl = std::fs::read(&wl_path).map_err(io(&wl_path))?;

    let initramfs_path = spec.out_dir.join("initramfs.cpio.gz");
    let tmp_initramfs = spec.out_dir.join("initramfs.cpio.gz.tmp");
    let entries = initramfs::entries(busybox, &mods, wl);
    let initramfs_bytes = initramfs::write(&tmp_initramfs, &entries)?;
    std::fs::rename(&tmp_initramfs, &initramfs_path).map_err(io(&initramfs_path))?;
    progress(&format!(
        "initramfs: {} entries, {:.1} MiB gzipped",
        entries.len(),
        initramfs_bytes as f64 / (1 << 20) as f64
    ));
    let _ = std::fs::remove_dir_all(&root);

    let manifest = Manifest {
        packages,
        kernel_release: release,
        modules: names,
        image_bytes: std::fs::metadata(&image_path)
            .map_err(io(&image_path))?
            .len(),
        initramfs_bytes,
    };
    let manifest_path = spec.out_dir.join("manifest.txt");
    write_atomic(&manifest_path, manifest.to_text().as_bytes())?;
    drop(lock);
    Ok(Guest {
        image: image_path,
        initramfs: initramfs_path,
        manifest_path,
        manifest,
        header,
        downloaded,
    })
}
