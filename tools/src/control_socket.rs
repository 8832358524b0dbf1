//! The operator's console of a running `tools demo`, as a Unix socket: the
//! host platform's counterpart of Linux's writable
//! `/sys/module/page_reporting/parameters/page_reporting_order`. While
//! `tools demo --control-socket PATH` runs, `tools tunable --socket PATH
//! delay_ms=250` (or any program that writes lines to PATH) asks for a
//! change; the demo passes it to the memserver's control port and writes
//! the memserver's answer back, one line per request, in order.
//!
//! The protocol is text: a request is a `key=value` line, an answer is one
//! line (`delay_ms=250 set`, `order=11 refused: value out of range`, or
//! `error: ...` for a request that never reached the memserver). Clients
//! are not trusted: a line longer than [`MAX_LINE`] bytes closes its
//! connection, a client that stops reading loses its answers, and neither
//! stalls the demo (every socket is non-blocking).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest request line, in bytes (a `key=value` needs a few dozen).
pub const MAX_LINE: usize = 256;

/// Where `tools demo --control-socket` listens and `tools tunable`
/// connects when no path is given (relative to the working directory, next
/// to the demo's plot).
pub const DEFAULT_PATH: &str = "target/demo/control.sock";

/// One connection of a [`ControlSocket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client(u64);

#[derive(Debug)]
struct Connection {
    id: u64,
    stream: UnixStream,
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    /// Lines handed out by [`ControlSocket::poll`] and not yet answered.
    unanswered: usize,
    /// The client closed its end for writing: no more requests, but the
    /// answers still go to it.
    eof: bool,
    /// Reading or writing failed: dropped at the next poll or reply.
    broken: bool,
}

/// The demo's end: a listening socket and its connections.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
    connections: Vec<Connection>,
    next_id: u64,
}

impl ControlSocket {
    /// Listen at `path` (its directory is created). A socket left there by
    /// an earlier run is replaced; any other file is refused.
    pub fn bind(path: &Path) -> Result<ControlSocket, String> {
        let at = || format!("control socket {}", path.display());
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(|e| format!("{}: {e}", at()))?
            }
            Ok(_) => return Err(format!("{}: exists and is not a socket", at())),
            Err(_) => {}
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", at()))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", at()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("{}: {e}", at()))?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            listener,
            connections: Vec::new(),
            next_id: 0,
        })
    }

    /// Accept new connections and return every whole, non-empty line that
    /// arrived since the last call, with its client, in arrival order per
    /// client. Each must get one [`Self::reply`].
    pub fn poll(&mut self) -> Vec<(Client, String)> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.connections.push(Connection {
                        id: self.next_id,
                        stream,
                        partial: Vec::new(),
                        unanswered: 0,
                        eof: false,
                        broken: false,
                    });
                    self.next_id += 1;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // WouldBlock: no one else is waiting. Any other error is
                // the listener's; the demo goes on without new clients.
                Err(_) => break,
            }
        }
        let mut lines = Vec::new();
        for c in &mut self.connections {
            c.read_lines(&mut lines);
        }
        self.drop_finished();
        lines
    }

    /// Answer `client`'s oldest unanswered line with `text`. A client that
    /// has gone, or does not take the line at once, loses it.
    pub fn reply(&mut self, client: Client, text: &str) {
        if let Some(c) = self.connections.iter_mut().find(|c| c.id == client.0) {
            c.unanswered = c.unanswered.saturating_sub(1);
            let line = format!("{text}\n");
            if c.stream.write_all(line.as_bytes()).is_err() {
                c.broken = true;
            }
        }
        self.drop_finished();
    }

    fn drop_finished(&mut self) {
        // Gone: broken, or done asking and every answer written.
        let gone = |c: &Connection| c.broken || (c.eof && c.unanswered == 0);
        self.connections.retain(|c| !gone(c));
    }
}

impl Connection {
    fn read_lines(&mut self, lines: &mut Vec<(Client, String)>) {
        let mut chunk = [0u8; 512];
        while !self.eof && !self.broken {
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.partial.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.broken = true,
            }
            while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..end]).trim().to_string();
                if !text.is_empty() {
                    self.unanswered += 1;
                    lines.push((Client(self.id), text));
                }
            }
            if self.partial.len() > MAX_LINE {
                let _ = self
                    .stream
                    .write_all(format!("error: a line longer than {MAX_LINE} bytes\n").as_bytes());
                self.broken = true;
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The client's end (`tools tunable`): send `requests`, one line each, to
/// the demo listening at `path`, and return its answers in order. Each
/// answer may take up to `timeout`.
pub fn ask(path: &Path, requests: &[String], timeout: Duration) -> Result<Vec<String>, String> {
    let mut stream = UnixStream::connect(path).map_err(|e| {
        format!(
            "{}: {e} (is `tools demo --control-socket` running?)",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for r in requests {
        writeln!(stream, "{r}").map_err(|e| format!("sending '{r}': {e}"))?;
    }
    let mut answers = Vec::with_capacity(requests.len());
    let mut reader = BufReader::new(stream);
    for r in requests {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(format!("the demo ended before it answered '{r}'")),
            Ok(_) => answers.push(line.trim_end().to_string()),
            Err(e) => return Err(format!("waiting for the answer to '{r}': {e}")),
        }
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path in a scratch directory, which goes when the `TempDir` does.
    fn socket_path(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        (dir, path)
    }

    /// Poll until `n` lines arrived (bounded: the client wrote them before
    /// this is called, so they are in the socket's buffer already).
    fn lines(s: &mut ControlSocket, n: usize) -> Vec<(Client, String)> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < n {
            assert!(std::time::Instant::now() < deadline, "got only {got:?}");
            got.extend(s.poll());
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    #[test]
    fn answers_go_back_in_order_to_the_client_that_asked() {
        let (_scratch, path) = socket_path("order.sock");
        let mut s = ControlSocket::bind(&path).unwrap();
        let client = std::thread::spawn({
            let path = path.clone();
            move || {
                ask(
                    &path,
                    &["delay_ms=250".into(), "order=11".into()],
                    Duration::from_secs(10),
                )
            }
        });
        let got = lines(&mut s, 2);
        assert_eq!(got[0].1, "delay_ms=250");
        assert_eq!(got[1].1, "order=11");
        assert_eq!(got[0].0, got[1].0);
        s.reply(got[0].0, "delay_ms=250 set");
        s.reply(got[1].0, "order=11 refused: value out of range");
        assert_eq!(
            client.join().unwrap().unwrap(),
            ["delay_ms=250 set", "order=11 refused: value out of range"]
        );
    }

    #[test]
    fn a_line_too_long_closes_only_its_connection() {
        let (_scratch, path) = socket_path("long.sock");
        let mut s = ControlSocket::bind(&path).unwrap();
        let mut hostile = UnixStream::connect(&path).unwrap();
        hostile.write_all(&[b'x'; MAX_LINE + 1]).unwrap();
        let mut good = UnixStream::connect(&path).unwrap();
        good.write_all(b"delay_ms=250\n").unwrap();
        let got = lines(&mut s, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, "delay_ms=250");
        hostile
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        BufReader::new(&hostile).read_line(&mut answer).unwrap();
        assert_eq!(
            answer,
            format!("error: a line longer than {MAX_LINE} bytes\n")
        );
        s.reply(got[0].0, "delay_ms=250 set");
        good.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = String::new();
        BufReader::new(&good).read_line(&mut answer).unwrap();
        assert_eq!(answer, "delay_ms=250 set\n");
    }

    #[test]
    fn a_file_in_the_way_is_refused_and_the_socket_is_removed_at_the_end() {
        let (_scratch, path) = socket_path("file-in-the-way");
        std::fs::write(&path, "mine").unwrap();
        let e = ControlSocket::bind(&path).unwrap_err();
        assert!(e.contains("exists and is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
        std::fs::remove_file(&path).unwrap();
        let s = ControlSocket::bind(&path).unwrap();
        assert!(path.exists());
        drop(s);
        assert!(!path.exists());
    }

    #[test]
    fn no_demo_listening_is_a_clear_error() {
        let (_scratch, path) = socket_path("nobody.sock");
        let _ = std::fs::remove_file(&path);
        let e = ask(&path, &["delay_ms=250".into()], Duration::from_secs(1)).unwrap_err();
        assert!(
            e.contains("is `tools demo --control-socket` running?"),
            "{e}"
        );
    }
}
