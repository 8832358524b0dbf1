//! The initramfs: a gzipped newc cpio (what Linux unpacks at boot,
//! `Documentation/driver-api/early-userspace/buffer-format.rst`) written
//! with the `cpio` crate: BusyBox, `/init`, the modules and the workload.
//!
//! `/dev/console` is in the archive because the kernel opens it for init's
//! stdin/out/err before init runs (and this kernel does not mount devtmpfs
//! by itself): without it the workload's lines would go nowhere.

use super::error::{GuestError, io};
use cpio::newc::{Builder, ModeFileType};
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

/// Where the modules go in the guest.
pub const MODULE_DIR: &str = "lib/modules";
/// The workload's path in the guest.
pub const WORKLOAD: &str = "bin/linux-workload";

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir(String),
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// `/init`: mount the pseudo filesystems, install the BusyBox applets,
/// load `modules` in order, say what bound, start the workload, and keep
/// PID 1 alive whatever it does (init exiting panics the kernel). Each
/// step prints an `INIT|LEVEL:` line the host waits for.
pub fn init_script(modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         # Written by tools::linux_guest (tools guest).\n\
         /bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin /tmp\n\
         /bin/busybox --install -s\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         echo \"INIT|INFO: userspace started uptime=$(cut -d' ' -f1 /proc/uptime)\"\n\
         failed=\"\"\n",
    );
    for m in modules {
        s += &format!(
            "insmod /{MODULE_DIR}/{m}.ko || {{ echo \"INIT|ERROR: insmod {m} failed\"; failed=\"$failed {m}\"; }}\n"
        );
    }
    s += &format!(
        "if [ -z \"$failed\" ]; then echo \"INIT|INFO: modules loaded: {}\"; fi\n",
        modules.join(" ")
    );
    // The balloon's negotiated features (a bit string, bit 0 first): bit 5
    // is VIRTIO_BALLOON_F_REPORTING.
    s += "for d in /sys/bus/virtio/drivers/virtio_balloon/virtio*; do\n\
          \x20   [ -e \"$d\" ] || { echo \"INIT|ERROR: no device bound to virtio_balloon\"; continue; }\n\
          \x20   f=$(cat \"$d/features\")\n\
          \x20   echo \"INIT|INFO: virtio_balloon bound to $(basename \"$d\") reporting=$(echo \"$f\" | cut -c6) features=$f\"\n\
          done\n\
          echo \"INIT|INFO: starting workload\"\n\
          /bin/linux-workload\n\
          echo \"INIT|ERROR: workload exited status=$?\"\n\
          while true; do sleep 3600; done\n";
    s
}

/// Every entry of the guest's initramfs.
pub fn entries(
    busybox: Vec<u8>,
    modules: &[super::modules::Module],
    workload: Vec<u8>,
) -> Vec<Entry> {
    let mut e: Vec<Entry> = ["bin", "dev", "lib", MODULE_DIR, "proc", "sys", "tmp"]
        .iter()
        .map(|d| Entry::Dir(d.to_string()))
        .collect();
    e.push(Entry::CharDev {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    e.push(Entry::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: busybox,
    });
    // /init's interpreter, before `busybox --install` has run.
    e.push(Entry::Symlink {
        path: "bin/sh".into(),
        target: "busybox".into(),
    });
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    e.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: init_script(&names).into_bytes(),
    });
    for m in modules {
        e.push(Entry::File {
            path: format!("{MODULE_DIR}/{}.ko", m.name),
            mode: 0o644,
            data: m.elf.clone(),
        });
    }
    e.push(Entry::File {
        path: WORKLOAD.into(),
        mode: 0o755,
        data: workload,
    });
    e
}

/// The newc archive of `entries`, uncompressed.
pub fn cpio(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        // Unique inode numbers: the kernel links entries with equal ones.
        let ino = i as u32 + 1;
        let (b, data): (Builder, &[u8]) = match e {
            Entry::Dir(p) => (
                Builder::new(p)
                    .mode(0o755)
                    .nlink(2)
                    .set_mode_file_type(ModeFileType::Directory),
                &[],
            ),
            Entry::File { path, mode, data } => (
                Builder::new(path)
                    .mode(*mode)
                    .set_mode_file_type(ModeFileType::Regular),
                data,
            ),
            Entry::Symlink { path, target } => (
                Builder::new(path)
                    .mode(0o777)
                    .set_mode_file_type(ModeFileType::Symlink),
                target.as_bytes(),
            ),
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => (
                Builder::new(path)
                    .mode(*mode)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .set_mode_file_type(ModeFileType::Char),
                &[],
            ),
        };
        let size =
            u32::try_from(data.len()).map_err(|_| std::io::Error::other("an entry over 4 GiB"))?;
        let mut w = b.ino(ino).write(&mut out, size);
        w.write_all(data)?;
        w.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// Write `entries` to `path` as a gzipped newc cpio; its size.
pub fn write(path: &Path, entries: &[Entry]) -> Result<u64, GuestError> {
    let archive = cpio(entries).map_err(io(path))?;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&archive).map_err(io(path))?;
    let bytes = gz.finish().map_err(io(path))?;
    std::fs::write(path, &bytes).map_err(io(path))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux_guest::modules::Module;

    /// An entry read back: name, mode, (rdev major, minor), data.
    type ReadBack = (String, u32, (u32, u32), Vec<u8>);

    /// Read an archive back with the crate's reader.
    fn read_back(mut archive: &[u8]) -> Vec<ReadBack> {
        let mut out = Vec::new();
        loop {
            let r = cpio::NewcReader::new(archive).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            let head = (
                e.name().to_string(),
                e.mode(),
                (e.rdev_major(), e.rdev_minor()),
            );
            let mut data = Vec::new();
            archive = r.to_writer(&mut data).unwrap();
            out.push((head.0, head.1, head.2, data));
        }
        out
    }

    #[test]
    fn the_archive_holds_init_busybox_modules_and_the_workload() {
        let mods = [
            Module {
                name: "virtio_ring".into(),
                elf: b"ring".to_vec(),
            },
            Module {
                name: "virtio".into(),
                elf: b"core".to_vec(),
            },
        ];
        let entries = entries(b"bb".to_vec(), &mods, b"wl".to_vec());
        let got = read_back(&cpio(&entries).unwrap());
        let find = |n: &str| {
            got.iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(find("bin/busybox").1, 0o100755);
        assert_eq!(find("bin/busybox").3, b"bb");
        assert_eq!(find("bin/sh").1, 0o120777);
        assert_eq!(find("bin/sh").3, b"busybox");
        assert_eq!(find("dev/console").1, 0o020600);
        assert_eq!(find("dev/console").2, (5, 1));
        assert_eq!(find("proc").1, 0o040755);
        assert_eq!(find("lib/modules/virtio.ko").3, b"core");
        assert_eq!(find("bin/linux-workload").3, b"wl");
        let init = String::from_utf8(find("init").3.clone()).unwrap();
        assert_eq!(find("init").1, 0o100755);
        assert!(init.starts_with("#!/bin/sh\n"));
        // Modules are loaded in the order given (dependencies first).
        let ring = init.find("insmod /lib/modules/virtio_ring.ko").unwrap();
        let core = init.find("insmod /lib/modules/virtio.ko").unwrap();
        assert!(ring < core);
        assert!(init.contains("INIT|INFO: modules loaded: virtio_ring virtio\""));
        assert!(init.contains("/bin/linux-workload\n"));
    }
}
