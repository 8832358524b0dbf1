//! The host platform with the device model in reach (issue 8): a system
//! description, the launcher, the device model on its thread, and waits
//! on console lines and device counters, all bounded.

#![allow(dead_code)]

use balloon::model::DeviceConfig;
use balloon::model::host::{HostDevice, Memfd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tools::demo;
use tools::host::{Console, Event, Launcher};

pub const MIB: u64 = 1 << 20;
pub const PAGES_PER_MIB: u64 = MIB / 4096;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The PDs' host binaries (hostile.elf included: it is a bin of guest), built
/// once per test binary in a target dir of their own.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pds");
        demo::build_pds(&workspace(), &target, "dev").expect("build the PDs");
        target.join("debug")
    })
}

/// `system.xml` with the program_image of PD `pd` replaced by `image`
/// (`tools::image::variant`, shared with the bare platform's build).
pub fn variant(pd: &str, image: &str) -> String {
    let xml = std::fs::read_to_string(workspace().join("system.xml")).unwrap();
    tools::image::variant(&xml, pd, image).unwrap_or_else(|e| panic!("{e}"))
}

/// A running system: launcher, console, device model.
pub struct Run {
    pub launcher: Launcher,
    pub console: Arc<Console>,
    pub device: HostDevice,
    pub start: Instant,
}

impl Run {
    /// Start the system of `xml` with these environment variables (the
    /// host platform's way of passing parameters).
    pub fn start(xml: &str, env: &[(&str, &str)]) -> Run {
        let sys = sdf::System::parse(xml).expect("system description");
        let mut launcher = Launcher::new(sys, bin_dir(), false).expect("launcher");
        for (k, v) in env {
            launcher.set_env(k, v);
        }
        let memfd = |name: &str| Memfd {
            fd: launcher.region_fd(name).unwrap(),
            paddr: launcher.region_paddr(name).unwrap(),
            len: launcher.system().region(name).unwrap().size as usize,
        };
        let irq = launcher.irq_line("balloon", 0).expect("balloon irq");
        let ram = [memfd("guest0_ram"), memfd("guest1_ram")];
        let device = HostDevice::start(
            memfd("virtio_mmio").fd,
            memfd("balloon_dma"),
            &ram,
            Box::new(move || {
                let _ = irq.raise();
            }),
            DeviceConfig::default(),
        )
        .expect("device model");
        launcher.start().expect("start the PDs");
        let console = launcher.console();
        Run {
            launcher,
            console,
            device,
            start: Instant::now(),
        }
    }

    /// Wait until `cond` holds, at most `timeout`, waking on console lines
    /// and every 20 ms (for device counters). Panics, with the console, if
    /// a PD exits or the time runs out.
    pub fn wait(&mut self, what: &str, timeout: Duration, mut cond: impl FnMut(&mut Run) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.dump();
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            match self
                .launcher
                .wait(Some(left.min(Duration::from_millis(20))))
            {
                Ok(Event::Exited(e)) => {
                    self.dump();
                    panic!("waiting for {what}: a PD exited: {e}");
                }
                Ok(_) => {}
                Err(e) => panic!("launcher: {e}"),
            }
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.console.lines()
    }

    /// The first line with `needle`.
    pub fn line(&self, needle: &str) -> Option<String> {
        self.lines().into_iter().find(|l| l.contains(needle))
    }

    pub fn dump(&self) {
        for l in self.lines() {
            println!("  {l}");
        }
        println!("  device: {:?}", self.device.counters());
    }

    /// Lines of errors, warnings and stderr, except those of PDs in
    /// `except` (prefixes, e.g. "HOSTILE").
    pub fn problems(&self, except: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains("|ERROR") || l.contains("|WARN") || l.contains("|stderr"))
            .filter(|l| !except.iter().any(|p| l.starts_with(p)))
            .collect()
    }

    pub fn stop(&mut self) {
        let _ = self.launcher.stop(Duration::from_secs(2));
        self.device.stop();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `key=value` of a log line.
pub use tools::qemu::field;

/// The memserver's conservation line: `(total, free, allocated, isolated,
/// ballooned)`; panics on a broken one.
pub fn conservation(line: &str) -> Option<[u64; 5]> {
    assert!(!line.contains("conservation: BROKEN"), "{line}");
    if !line.starts_with("MEMSERVER|INFO: conservation: ok") {
        return None;
    }
    let f = |k| field(line, k).expect("conservation field");
    Some([
        f("total"),
        f("free"),
        f("allocated"),
        f("isolated"),
        f("ballooned"),
    ])
}

/// The last conservation line after line index `from`, if any.
pub fn last_conservation(lines: &[String], from: usize) -> Option<[u64; 5]> {
    for l in lines {
        assert!(!l.contains("conservation: BROKEN"), "{l}");
    }
    lines.iter().skip(from).rev().find_map(|l| conservation(l))
}

/// A guest's `phase=done` line says no request failed, and its
/// `phase=verified ok` says its live data survived.
pub fn assert_guest_clean(run: &Run, prefix: &str) {
    let done = run
        .line(&format!("{prefix}|INFO: phase=done"))
        .unwrap_or_else(|| panic!("{prefix} did not finish"));
    assert_eq!(field(&done, "errors"), Some(0), "{done}");
    let verified = run
        .line(&format!("{prefix}|INFO: phase=verified"))
        .unwrap_or_else(|| panic!("{prefix} did not verify"));
    assert!(verified.contains("phase=verified ok"), "{verified}");
    assert_eq!(field(&verified, "bad_pages"), Some(0), "{verified}");
}
