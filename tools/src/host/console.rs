//! PD console output: every line of every PD, in arrival order.

use rustix::fd::OwnedFd;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct Inner {
    lines: Vec<String>,
    watch: Option<String>,
    matched: Option<String>,
    /// Reader threads whose pipe has not reached its end yet.
    open_readers: usize,
}

/// The collected console. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Console {
    inner: Mutex<Inner>,
    cv: Condvar,
    echo: bool,
    /// Signalled when a line matches the watch string, so the launcher's
    /// wait can poll it with the PDs' pidfds.
    pub(crate) watch_event: OwnedFd,
}

impl Console {
    pub(crate) fn new(echo: bool) -> std::io::Result<Arc<Self>> {
        let ev = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Arc::new(Console {
            inner: Mutex::new(Inner::default()),
            cv: Condvar::new(),
            echo,
            watch_event: ev,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A reader thread that panicked holding the lock leaves whole lines:
        // the data is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watch for a line containing `needle`: [`crate::host::Event::Matched`].
    pub fn watch(&self, needle: &str) {
        let mut g = self.lock();
        g.watch = Some(needle.to_string());
        if let Some(l) = g.lines.iter().find(|l| l.contains(needle)).cloned() {
            g.matched = Some(l);
            let _ = rustix::io::write(&self.watch_event, &1u64.to_ne_bytes());
        }
    }

    pub(crate) fn take_match(&self) -> Option<String> {
        self.lock().matched.take()
    }

    pub(crate) fn push(&self, line: String) {
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        let mut g = self.lock();
        if g.matched.is_none() && g.watch.as_deref().is_some_and(|w| line.contains(w)) {
            g.matched = Some(line.clone());
            let _ = rustix::io::write(&self.watch_event, &1u64.to_ne_bytes());
        }
        g.lines.push(line);
        self.cv.notify_all();
    }

    /// Forward the lines of `pipe` (a PD's stdout, or its stderr with a
    /// prefix) until it closes.
    pub(crate) fn spawn_reader(
        self: &Arc<Self>,
        pipe: impl Read + Send + 'static,
        prefix: Option<String>,
    ) {
        let me = Arc::clone(self);
        self.lock().open_readers += 1;
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line).into_owned();
                me.push(match &prefix {
                    Some(p) => format!("{p}{text}"),
                    None => text,
                });
            }
            me.lock().open_readers -= 1;
            me.cv.notify_all();
        });
    }

    /// Wait up to `timeout` until every pipe has been read to its end (the
    /// PDs are gone): each PD has its own reader thread, so a line one PD
    /// wrote before another's matching line may still be in its pipe when
    /// the match is seen. Whether all were drained.
    pub(crate) fn drain(&self, timeout: Duration) -> bool {
        self.wait_state(timeout, |g| g.open_readers == 0)
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Wait up to `timeout` for a line satisfying `pred`; the first such line.
    /// `pred` runs with the console locked: it must not call the console.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let mut found = None;
        self.wait_until(timeout, |lines| {
            found = lines.iter().find(|l| pred(l)).cloned();
            found.is_some()
        });
        found
    }

    /// Wait up to `timeout` until `pred` holds for all lines so far; whether
    /// it did. `pred` runs with the console locked: it must not call the console.
    pub fn wait_until(&self, timeout: Duration, mut pred: impl FnMut(&[String]) -> bool) -> bool {
        self.wait_state(timeout, |g| pred(&g.lines))
    }

    /// Wait up to `timeout` until `done` holds for the console's state,
    /// woken by each new line and each reader's end; whether it did.
    fn wait_state(&self, timeout: Duration, mut done: impl FnMut(&Inner) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if done(&g) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
