//! The serial console, captured line by line, with bounded waits for
//! exact lines.

use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct ConsoleState {
    lines: Vec<String>,
    partial: Vec<u8>,
    open_streams: usize,
}

/// The serial console, split into lines (`\r` dropped, invalid UTF-8
/// replaced), shared with the reader threads.
#[derive(Debug, Clone, Default)]
pub struct Console {
    inner: Arc<(Mutex<ConsoleState>, Condvar)>,
}

impl Console {
    pub(super) fn attach(&self, mut r: impl Read + Send + 'static, prefix: &'static str) {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open_streams += 1;
        let me = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut own = Vec::new();
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let (lock, cv) = &*me.inner;
                let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
                // stderr lines are kept apart from the serial's partial line.
                let partial = if prefix.is_empty() {
                    &mut st.partial
                } else {
                    &mut own
                };
                partial.extend_from_slice(&buf[..n]);
                let mut done = Vec::new();
                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    let s = String::from_utf8_lossy(&line);
                    done.push(format!("{prefix}{}", s.trim_end_matches(['\n', '\r'])));
                }
                st.lines.extend(done);
                cv.notify_all();
            }
            let (lock, cv) = &*me.inner;
            let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
            st.open_streams -= 1;
            if st.open_streams == 0 && !st.partial.is_empty() {
                let rest = String::from_utf8_lossy(&st.partial).into_owned();
                st.partial.clear();
                st.lines.push(rest);
            }
            cv.notify_all();
        });
    }

    /// Lines from index `from` on.
    pub fn lines_from(&self, from: usize) -> Vec<String> {
        let st = self.inner.0.lock().unwrap_or_else(|e| e.into_inner());
        st.lines
            .get(from..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    /// Every line so far.
    pub fn text(&self) -> String {
        self.lines_from(0).join("\n")
    }

    /// Wait at most `timeout` for a line at index `from` or later that
    /// satisfies `pred`; its index and text.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.inner;
        let mut st = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = from;
        loop {
            while next < st.lines.len() {
                if pred(&st.lines[next]) {
                    return Some((next, st.lines[next].clone()));
                }
                next += 1;
            }
            let now = Instant::now();
            if now >= deadline || st.open_streams == 0 {
                return None;
            }
            st = cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wait for a line equal to `line`.
    pub fn wait_line(&self, line: &str, timeout: Duration) -> Option<usize> {
        self.wait_for(0, timeout, |l| l == line).map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn console_waits_for_exact_lines_with_a_bound() {
        let c = Console::default();
        let (r, mut w) = std::io::pipe().unwrap();
        c.attach(r, "");
        w.write_all(b"first\r\nMON|INFO: Microkit Monitor started!\npart")
            .unwrap();
        assert_eq!(
            c.wait_line(
                "MON|INFO: Microkit Monitor started!",
                Duration::from_secs(5)
            ),
            Some(1)
        );
        assert_eq!(c.wait_line("never", Duration::from_millis(50)), None);
        w.write_all(b"ial\n").unwrap();
        drop(w);
        assert_eq!(c.wait_line("partial", Duration::from_secs(5)), Some(2));
        assert_eq!(c.lines_from(0)[0], "first");
    }
}
