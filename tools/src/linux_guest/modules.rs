//! The kernel modules the guest needs: the virtio core and ring, the
//! virtio-mmio transport, the balloon and the console, with everything they
//! depend on, in load order.
//!
//! A Debian kernel package ships no `modules.dep` (its postinst runs
//! depmod), so the dependencies are read where depmod reads them: the
//! `depends=` entry of each module's `.modinfo` section. A module listed in
//! `modules.builtin` is part of the kernel and needs no loading. Modules
//! compressed with xz (`.ko.xz`, other kernel configs) are decompressed
//! here, since BusyBox's insmod loads plain ELF.

use super::error::{GuestError, io};
use object::{Object, ObjectSection};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The modules the guest asks for (their dependencies come along).
pub const WANTED: [&str; 5] = [
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_balloon",
    "virtio_console",
];

/// A module ready for the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Its name (`virtio_mmio`).
    pub name: String,
    /// The plain ELF.
    pub elf: Vec<u8>,
}

/// Module names treat `-` and `_` alike (kmod does).
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// The `key=value` strings of a module's `.modinfo` section.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, String> {
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF module: {e}"))?;
    if file.architecture() != object::Architecture::Aarch64 {
        return Err(format!("built for {:?}, not aarch64", file.architecture()));
    }
    let sec = file
        .section_by_name(".modinfo")
        .ok_or("no .modinfo section")?;
    let data = sec.data().map_err(|e| format!(".modinfo: {e}"))?;
    Ok(data
        .split(|b| *b == 0)
        .filter_map(|s| {
            let s = std::str::from_utf8(s).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

/// The plain ELF of a module file (`.ko`, or `.ko.xz` decompressed).
pub fn read_module(path: &Path) -> Result<Vec<u8>, GuestError> {
    let raw = std::fs::read(path).map_err(io(path))?;
    if path.extension().is_some_and(|e| e == "xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out).map_err(|e| {
            GuestError::BadModule {
                path: path.to_path_buf(),
                reason: format!("xz: {e}"),
            }
        })?;
        return Ok(out);
    }
    if path.extension().is_some_and(|e| e != "ko") {
        return Err(GuestError::BadModule {
            path: path.to_path_buf(),
            reason: "compressed in a way this builder does not read (only .ko and .ko.xz)".into(),
        });
    }
    Ok(raw)
}

/// Every module file under `dir`, by canonical name.
fn index(dir: &Path, out: &mut HashMap<String, PathBuf>) -> Result<(), GuestError> {
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let p = e.path();
        if e.file_type().map_err(io(&p))?.is_dir() {
            index(&p, out)?;
        } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
            && let Some(stem) = name
                .strip_suffix(".ko")
                .or_else(|| name.split_once(".ko.").map(|(s, _)| s))
        {
            out.insert(canonical(stem), p);
        }
    }
    Ok(())
}

/// The names in `modules.builtin` (`kernel/drivers/virtio/virtio.ko`
/// lines).
pub fn builtin(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.rsplit('/').next())
        .map(|f| canonical(f.trim_end_matches(".ko")))
        .collect()
}

/// The modules of `wanted` and their dependencies that are not built in,
/// in load order (each after what it depends on), from the kernel tree
/// `modules_dir` (`lib/modules/<version>`).
pub fn collect(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<Module>, GuestError> {
    let kernel = modules_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut files = HashMap::new();
    index(&modules_dir.join("kernel"), &mut files)?;
    let builtin_path = modules_dir.join("modules.builtin");
    let builtin = builtin(&std::fs::read_to_string(&builtin_path).map_err(io(&builtin_path))?);
    let mut order = Vec::new();
    let mut visiting = Vec::new();
    for w in wanted {
        visit(
            &canonical(w),
            &kernel,
            &files,
            &builtin,
            &mut visiting,
            &mut order,
        )?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    kernel: &str,
    files: &HashMap<String, PathBuf>,
    builtin: &[String],
    visiting: &mut Vec<String>,
    order: &mut Vec<Module>,
) -> Result<(), GuestError> {
    if order.iter().any(|m| m.name == name)
        || builtin.iter().any(|b| b == name)
        || visiting.iter().any(|v| v == name)
    {
        // Loaded already, part of the kernel, or a cycle (which modpost
        // forbids; stop rather than recurse).
        return Ok(());
    }
    let path = files.get(name).ok_or_else(|| GuestError::MissingModule {
        module: name.to_string(),
        kernel: kernel.to_string(),
    })?;
    let elf = read_module(path)?;
    let bad = |reason: String| GuestError::BadModule {
        path: path.clone(),
        reason,
    };
    let info = modinfo(&elf).map_err(bad)?;
    let get = |k: &str| {
        info.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    // The kernel refuses a module built for another version.
    let vermagic = get("vermagic").unwrap_or("");
    if !kernel.is_empty() && !vermagic.starts_with(&format!("{kernel} ")) {
        return Err(bad(format!(
            "vermagic `{vermagic}` is not kernel {kernel}'s"
        )));
    }
    visiting.push(name.to_string());
    for dep in get("depends")
        .unwrap_or("")
        .split(',')
        .filter(|d| !d.is_empty())
    {
        visit(&canonical(dep), kernel, files, builtin, visiting, order)?;
    }
    visiting.pop();
    order.push(Module {
        name: name.to_string(),
        elf,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lines_give_names() {
        let b =
            builtin("kernel/drivers/virtio/virtio.ko\nkernel/drivers/tty/serial/8250-core.ko\n");
        assert_eq!(b, ["virtio", "8250_core"]);
    }

    #[test]
    fn a_missing_module_is_named_in_one_line() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("6.1.0-0-test");
        std::fs::create_dir_all(dir.join("kernel/drivers")).unwrap();
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\n",
        )
        .unwrap();
        // Built in: nothing to load.
        assert_eq!(collect(&dir, &["virtio"]).unwrap(), []);
        let e = collect(&dir, &["virtio_balloon"]).unwrap_err().to_string();
        assert_eq!(
            e,
            "kernel 6.1.0-0-test has no module virtio_balloon (neither a .ko in the package nor in modules.builtin)"
        );
        // A file that is not an ELF module.
        std::fs::write(dir.join("kernel/drivers/virtio_balloon.ko"), b"junk").unwrap();
        let e = collect(&dir, &["virtio-balloon"]).unwrap_err().to_string();
        assert!(
            e.ends_with("virtio_balloon.ko: not an ELF module: Could not read file magic"),
            "{e}"
        );
        // xz that is not xz.
        std::fs::remove_file(dir.join("kernel/drivers/virtio_balloon.ko")).unwrap();
        std::fs::write(dir.join("kernel/drivers/virtio_balloon.ko.xz"), b"junk").unwrap();
        let e = collect(&dir, &["virtio_balloon"]).unwrap_err().to_string();
        assert!(e.contains("virtio_balloon.ko.xz: xz: "), "{e}");
    }

    #[test]
    fn xz_modules_are_decompressed() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &b"\x7fELF module"[..], &mut xz).unwrap();
        let p = dir.join("m.ko.xz");
        std::fs::write(&p, &xz).unwrap();
        assert_eq!(read_module(&p).unwrap(), b"\x7fELF module");
    }
}
