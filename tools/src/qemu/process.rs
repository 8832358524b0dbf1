//! A running QEMU: its process, console and resident set.

use super::{Console, QemuConfig, QemuError, Qmp, command};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

/// QEMU's resident set: the host memory it holds (`VmRSS`), in bytes.
pub fn rss(pid: u32) -> std::io::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| std::io::Error::other(format!("{path}: no VmRSS")))
}

/// A running QEMU; killed when dropped.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    /// The serial line's input (`-serial mon:stdio`): what
    /// [`Qemu::type_line`] types.
    stdin: Option<ChildStdin>,
    console: Console,
    qmp_path: PathBuf,
    started: Instant,
}

impl Qemu {
    /// Start QEMU with `cfg`; the console is captured from now on.
    pub fn spawn(cfg: &QemuConfig) -> Result<Qemu, QemuError> {
        let _ = std::fs::remove_file(&cfg.qmp);
        let mut cmd = command(cfg);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(QemuError::Spawn)?;
        let console = Console::default();
        let stdin = child.stdin.take();
        if let Some(out) = child.stdout.take() {
            console.attach(out, "");
        }
        if let Some(err) = child.stderr.take() {
            console.attach(err, "qemu: ");
        }
        Ok(Qemu {
            child,
            stdin,
            console,
            qmp_path: cfg.qmp.clone(),
            started: Instant::now(),
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The console.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// QEMU's RSS in bytes.
    pub fn rss(&self) -> Result<u64, QemuError> {
        rss(self.pid()).map_err(|e| QemuError::Io(format!("/proc/{}", self.pid()).into(), e))
    }

    /// Whether QEMU has ended (and how).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Connect to QEMU's QMP socket (waiting at most `timeout` for QEMU to
    /// create it) and leave capabilities negotiation mode.
    pub fn qmp(&self, timeout: Duration) -> Result<Qmp, QemuError> {
        Qmp::connect(&self.qmp_path, timeout)
    }

    /// Type `line` on the guest's serial line, ended by CR as a terminal
    /// sends it. QEMU takes the bytes as fast as the UART's receiver has
    /// room; the rest wait in the pipe.
    pub fn type_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("QEMU's serial input is closed"))?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\r")?;
        stdin.flush()
    }

    /// Stop QEMU.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.qmp_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_of_this_process_is_plausible() {
        let r = rss(std::process::id()).unwrap();
        assert!(r > 1 << 20 && r < 1 << 40, "{r}");
    }
}
