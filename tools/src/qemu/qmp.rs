//! A small QMP client: one command at a time, events skipped.

use super::{BALLOON_ID, QemuError};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A QMP connection (one command at a time; events are skipped).
#[derive(Debug)]
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connect to `path` and negotiate (`qmp_capabilities`).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QemuError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(QemuError::Qmp(format!(
                        "connecting to {}: {e}",
                        path.display()
                    )));
                }
                // QEMU creates the socket while it starts: poll for it.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream
            .set_read_timeout(Some(timeout.max(Duration::from_secs(1))))
            .map_err(|e| QemuError::Qmp(e.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|e| QemuError::Qmp(e.to_string()))?;
        let mut q = Qmp {
            writer,
            reader: BufReader::new(stream),
        };
        let greeting = q.read_reply()?;
        if greeting.get("QMP").is_none() {
            return Err(QemuError::Qmp(format!("unexpected greeting {greeting}")));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// The next message that is not an asynchronous event (e.g.
    /// BALLOON_CHANGE). Events come at any time, before the greeting too:
    /// connected while QEMU started, a seL4 boot test read the VM's RESUME
    /// first (QEMU 10.0, aarch64, once in many runs).
    fn read_reply(&mut self) -> Result<serde_json::Value, QemuError> {
        loop {
            let m = self.read_message()?;
            if m.get("event").is_none() {
                return Ok(m);
            }
        }
    }

    fn read_message(&mut self) -> Result<serde_json::Value, QemuError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| QemuError::Qmp(format!("reading: {e}")))?;
        if n == 0 {
            return Err(QemuError::Qmp("QEMU closed the connection".into()));
        }
        serde_json::from_str(&line).map_err(|e| QemuError::Qmp(format!("bad JSON {line:?}: {e}")))
    }

    /// Run `command` with `arguments`; its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, QemuError> {
        let mut msg = serde_json::json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| QemuError::Qmp(format!("writing: {e}")))?;
        loop {
            let m = self.read_reply()?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                return Err(QemuError::Qmp(format!("{command}: {e}")));
            }
            // Neither: not our answer either.
        }
    }

    /// `query-balloon`: the guest's memory size as the driver reports it
    /// (`actual`, bytes).
    pub fn query_balloon(&mut self) -> Result<u64, QemuError> {
        let r = self.execute("query-balloon", None)?;
        r.get("actual")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| QemuError::Qmp(format!("query-balloon answered {r}")))
    }

    /// `pmemsave`: write `size` bytes of guest-physical memory from `paddr`
    /// to the file `to` (QEMU writes it before it answers).
    pub fn pmemsave(&mut self, paddr: u64, size: u64, to: &Path) -> Result<(), QemuError> {
        let filename = to
            .to_str()
            .ok_or_else(|| QemuError::Qmp(format!("{}: not UTF-8", to.display())))?;
        self.execute(
            "pmemsave",
            Some(serde_json::json!({ "val": paddr, "size": size, "filename": filename })),
        )
        .map(|_| ())
    }

    /// Ask QEMU to request the guest's statistics every `seconds` on the
    /// balloon's stats queue (`guest-stats-polling-interval`).
    pub fn poll_guest_stats(&mut self, seconds: u64) -> Result<(), QemuError> {
        self.execute(
            "qom-set",
            Some(serde_json::json!({
                "path": BALLOON_ID, "property": "guest-stats-polling-interval", "value": seconds,
            })),
        )
        .map(|_| ())
    }

    /// The balloon's `guest-stats`: what the driver last put on the stats
    /// queue (`stat-free-memory`, `stat-total-memory`, ... in bytes; QEMU
    /// says -1 for a statistic never given, left out here) and when
    /// (`last-update`, seconds since the epoch; 0 before the first).
    pub fn guest_stats(&mut self) -> Result<GuestStats, QemuError> {
        let r = self.execute(
            "qom-get",
            Some(serde_json::json!({ "path": BALLOON_ID, "property": "guest-stats" })),
        )?;
        let last_update = r
            .get("last-update")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| QemuError::Qmp(format!("guest-stats answered {r}")))?;
        let stats = r
            .get("stats")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| QemuError::Qmp(format!("guest-stats answered {r}")))?
            .iter()
            .filter_map(|(k, v)| v.as_u64().map(|v| (k.clone(), v)))
            .collect();
        Ok(GuestStats { last_update, stats })
    }

    /// `balloon`: ask the driver to bring the guest to `bytes`.
    pub fn balloon(&mut self, bytes: u64) -> Result<(), QemuError> {
        self.execute("balloon", Some(serde_json::json!({ "value": bytes })))
            .map(|_| ())
    }
}

/// The balloon's `guest-stats` as QMP gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Seconds since the epoch of the last update; 0: none yet.
    pub last_update: u64,
    /// The statistics the driver gave, by QEMU's name, in bytes.
    pub stats: std::collections::BTreeMap<String, u64>,
}

impl GuestStats {
    /// Statistic `name` (`stat-free-memory`, ...), if the driver gave it.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.stats.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A QMP server that writes `first` on connection, then answers the
    /// client's first command, if it sends one, with an empty return.
    fn serve(first: String) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(first.as_bytes()).unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            if reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                let _ = s.write_all(b"{\"return\": {}}\n");
            }
        });
        (dir, path)
    }

    const GREETING: &str = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n";

    #[test]
    fn an_event_before_the_greeting_is_skipped() {
        let first =
            "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n";
        let (_dir, path) = serve(format!("{first}{GREETING}"));
        Qmp::connect(&path, Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn something_else_than_qmp_is_refused() {
        let (_dir, path) = serve("{\"hello\": 1}\n".into());
        let e = Qmp::connect(&path, Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("unexpected greeting"), "{e}");
        let (_dir, path) = serve(GREETING.into());
        Qmp::connect(&path, Duration::from_secs(10)).unwrap();
    }
}
