//! QEMU's command line per arch, with QEMU's virtio-balloon (DESIGN §4:
//! verified by booting).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

/// The guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Aarch64,
    X86_64,
}

/// What QEMU boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// A Microkit image: `loader.img` (aarch64: loaded at 0x70000000 and
    /// started there; x86_64: the multiboot module of `kernel`).
    Microkit {
        loader: PathBuf,
        kernel: Option<PathBuf>,
    },
    /// An ELF QEMU boots directly with `-kernel` (the bare platform).
    Kernel(PathBuf),
    /// Linux booted directly (`-kernel Image -initrd .. -append ..`) on a
    /// plain `virt` machine without EL2: the baseline the guest VM under
    /// seL4 is compared with (`linux_guest::direct`).
    Linux {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
}

/// QEMU's virtio-balloon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonDevice {
    /// `free-page-reporting=on`.
    pub reporting: bool,
    /// aarch64: `-global virtio-mmio.force-legacy=false` (virtio-mmio v2).
    pub modern_mmio: bool,
}

/// How to start QEMU.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub arch: Arch,
    pub boot: Boot,
    /// Guest RAM; the Microkit kernels are built for 2048.
    pub memory_mib: u32,
    pub balloon: Option<BalloonDevice>,
    /// The QMP socket to create.
    pub qmp: PathBuf,
    /// More arguments, appended.
    pub extra: Vec<OsString>,
}

/// The balloon device's QOM id, for QMP's `qom-get` / `qom-set`.
pub const BALLOON_ID: &str = "balloon0";

/// `path` as the value in one of QEMU's `key=value,...` option lists,
/// where a comma ends the value unless doubled (QemuOpts, keyval): a path
/// with a comma in it (an output dir named after tunables, say) would
/// otherwise be cut there, and the rest read as options.
fn option_value(path: &std::path::Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut v = Vec::with_capacity(path.as_os_str().len());
    for &b in path.as_os_str().as_bytes() {
        v.push(b);
        if b == b',' {
            v.push(b',');
        }
    }
    OsString::from_vec(v)
}

/// The QEMU command line for `cfg` (DESIGN §4: verified by booting).
pub fn command(cfg: &QemuConfig) -> Command {
    let mut c;
    match cfg.arch {
        Arch::Aarch64 => {
            c = Command::new("qemu-system-aarch64");
            // seL4 is a hypervisor (DESIGN §8); Linux directly needs no EL2.
            let machine = match cfg.boot {
                Boot::Linux { .. } => "virt",
                _ => "virt,virtualization=on",
            };
            c.args(["-machine", machine, "-cpu", "cortex-a53"]);
        }
        Arch::X86_64 => {
            c = Command::new("qemu-system-x86_64");
            // seL4 needs these CPU features; TCG (KVM cannot run it here).
            c.args(["-cpu", "qemu64,+fsgsbase,+pdpe1gb,+xsaveopt,+xsave"]);
        }
    }
    c.args(["-m", &format!("{}M", cfg.memory_mib)]);
    c.args(["-nographic", "-serial", "mon:stdio"]);
    match (&cfg.boot, cfg.arch) {
        (Boot::Microkit { loader, .. }, Arch::Aarch64) => {
            let mut a = OsString::from("loader,file=");
            a.push(option_value(loader));
            a.push(",addr=0x70000000,cpu-num=0");
            c.arg("-device").arg(a);
        }
        (Boot::Microkit { loader, kernel }, Arch::X86_64) => {
            if let Some(k) = kernel {
                c.arg("-kernel").arg(k);
            }
            c.arg("-initrd").arg(loader);
        }
        (Boot::Kernel(k), _) => {
            c.arg("-kernel").arg(k);
        }
        (
            Boot::Linux {
                kernel,
                initrd,
                append,
            },
            _,
        ) => {
            c.arg("-kernel").arg(kernel);
            c.arg("-initrd").arg(initrd);
            c.args(["-append", append]);
        }
    }
    if let Some(b) = cfg.balloon {
        let onoff = if b.reporting { "on" } else { "off" };
        match cfg.arch {
            Arch::Aarch64 => {
                if b.modern_mmio {
                    c.args(["-global", "virtio-mmio.force-legacy=false"]);
                }
                c.args([
                    "-device",
                    &format!("virtio-balloon-device,id={BALLOON_ID},free-page-reporting={onoff}"),
                ]);
            }
            Arch::X86_64 => {
                c.args([
                    "-device",
                    &format!("virtio-balloon-pci,id={BALLOON_ID},free-page-reporting={onoff}"),
                ]);
            }
        }
    }
    let mut q = OsString::from("unix:");
    q.push(option_value(&cfg.qmp));
    q.push(",server=on,wait=off");
    c.arg("-qmp").arg(q);
    c.args(&cfg.extra);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command's arguments, as one line.
    fn args_line(c: &std::process::Command) -> String {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn command_lines_follow_the_verified_ones() {
        let cfg = QemuConfig {
            arch: Arch::Aarch64,
            boot: Boot::Microkit {
                loader: "/b/loader.img".into(),
                kernel: None,
            },
            memory_mib: 2048,
            balloon: Some(BalloonDevice {
                reporting: true,
                modern_mmio: true,
            }),
            qmp: "/t/q.sock".into(),
            extra: vec![],
        };
        let line = args_line(&command(&cfg));
        assert!(line.contains("-machine virt,virtualization=on -cpu cortex-a53 -m 2048M"));
        assert!(line.contains("-device loader,file=/b/loader.img,addr=0x70000000,cpu-num=0"));
        assert!(line.contains("-global virtio-mmio.force-legacy=false -device virtio-balloon-device,id=balloon0,free-page-reporting=on"));
        assert!(line.ends_with("-qmp unix:/t/q.sock,server=on,wait=off"));
        let x86 = QemuConfig {
            arch: Arch::X86_64,
            boot: Boot::Microkit {
                loader: "/b/loader.img".into(),
                kernel: Some("/b/sel4_32.elf".into()),
            },
            ..cfg
        };
        let c = command(&x86);
        assert_eq!(c.get_program(), "qemu-system-x86_64");
        let line = args_line(&c);
        assert!(line.contains("-kernel /b/sel4_32.elf -initrd /b/loader.img"));
        assert!(line.contains("-device virtio-balloon-pci,id=balloon0,free-page-reporting=on"));
        assert!(!line.contains("force-legacy"));
    }

    #[test]
    fn commas_in_paths_are_doubled_inside_option_lists() {
        let cfg = QemuConfig {
            arch: Arch::Aarch64,
            boot: Boot::Microkit {
                loader: "/b/policy=linux,delay_ms=250/loader.img".into(),
                kernel: None,
            },
            memory_mib: 2048,
            balloon: None,
            qmp: "/t/a,b/q.sock".into(),
            extra: vec![],
        };
        let line = args_line(&command(&cfg));
        assert!(
            line.contains("loader,file=/b/policy=linux,,delay_ms=250/loader.img,addr="),
            "{line}"
        );
        assert!(
            line.ends_with("-qmp unix:/t/a,,b/q.sock,server=on,wait=off"),
            "{line}"
        );
    }
}
