//! The PDs' log pages (`pd::log_page`) read from a running QEMU.
//!
//! `tools image` gives every PD a page at a fixed physical address where the
//! PD appends what it logs. Each sample, the host copies every page out of
//! the guest with QMP `pmemsave` and turns the new bytes into whole lines,
//! one PD at a time. A release kernel prints nothing, so this is how a
//! release image is judged; a debug image is judged the same way, so both
//! configurations give the same table. The pages are another party's
//! memory: a page that goes backwards or overflows between two samples is a
//! problem the run reports, never a panic.

use crate::image::LogPage;
use crate::qemu::{QemuError, Qmp};
use pd::log_page::{PageError, Reader};
use std::path::{Path, PathBuf};

/// One PD's page and what the host has read of it.
#[derive(Debug)]
struct Page {
    page: LogPage,
    reader: Reader,
    /// Bytes after the last newline.
    partial: Vec<u8>,
    /// After an overrun the surviving bytes start inside a line: drop them
    /// up to the next newline.
    resync: bool,
}

/// Reads every PD's log page through QMP.
#[derive(Debug)]
pub struct LogPoller {
    pages: Vec<Page>,
    /// Where `pmemsave` writes (QEMU writes the file; we read it back).
    dump: PathBuf,
    /// Problems seen (overruns, pages rewritten): one line each.
    problems: Vec<String>,
}

/// A line longer than this without a newline is cut: a PD that never ends
/// its line cannot make the host hold its whole page forever.
const MAX_LINE: usize = 4096;

impl LogPoller {
    /// A poller for `pages`, dumping them through files in `dir`.
    pub fn new(pages: &[LogPage], dir: &Path) -> LogPoller {
        LogPoller {
            pages: pages
                .iter()
                .map(|p| Page {
                    page: p.clone(),
                    reader: Reader::default(),
                    partial: Vec::new(),
                    resync: false,
                })
                .collect(),
            dump: dir.join("log-page.bin"),
            problems: Vec::new(),
        }
    }

    /// Whether there is anything to read.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Problems with the pages so far, one line each.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Copy every page out of the guest and return the whole lines written
    /// since the last poll, page by page (each PD's lines in order).
    pub fn poll(&mut self, qmp: &mut Qmp) -> Result<Vec<String>, QemuError> {
        let mut lines = Vec::new();
        for i in 0..self.pages.len() {
            let (paddr, size) = (self.pages[i].page.paddr, self.pages[i].page.size);
            qmp.pmemsave(paddr, size, &self.dump)?;
            let bytes =
                std::fs::read(&self.dump).map_err(|e| QemuError::Io(self.dump.clone(), e))?;
            lines.extend(self.take(i, &bytes));
        }
        Ok(lines)
    }

    /// The new whole lines in `snapshot`, a copy of page `i`.
    fn take(&mut self, i: usize, snapshot: &[u8]) -> Vec<String> {
        let page = &mut self.pages[i];
        let update = match page.reader.update(snapshot) {
            Ok(u) => u,
            // The PD has not logged yet.
            Err(PageError::NoMagic) => return Vec::new(),
            Err(e) => {
                self.problems
                    .push(format!("log page of PD {}: {e}", page.page.pd));
                return Vec::new();
            }
        };
        if update.lost > 0 {
            self.problems.push(format!(
                "log page of PD {}: {} bytes were overwritten before the host read them",
                page.page.pd, update.lost
            ));
            // The line in progress lost its middle, and what survived
            // starts inside a line: drop both up to the next newline.
            page.partial.clear();
            page.resync = true;
        }
        page.partial
            .extend_from_slice(&snapshot[update.first.clone()]);
        page.partial
            .extend_from_slice(&snapshot[update.second.clone()]);
        if page.resync {
            match page.partial.iter().position(|b| *b == b'\n') {
                Some(n) => {
                    page.partial.drain(..=n);
                    page.resync = false;
                }
                None => page.partial.clear(),
            }
        }
        let mut lines = Vec::new();
        while let Some(n) = page.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = page.partial.drain(..=n).collect();
            lines.push(
                String::from_utf8_lossy(&line)
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            );
        }
        if page.partial.len() > MAX_LINE {
            lines.push(String::from_utf8_lossy(&page.partial).into_owned());
            page.partial.clear();
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pd::log_page::{HEADER, page_of as page};

    fn poller(n: usize) -> LogPoller {
        let pages: Vec<LogPage> = (0..n)
            .map(|i| LogPage {
                pd: format!("pd{i}"),
                paddr: 0x1000 * i as u64,
                size: 64,
            })
            .collect();
        LogPoller::new(&pages, Path::new("/nonexistent"))
    }

    #[test]
    fn whole_lines_come_out_once_and_partial_ones_wait() {
        let mut p = poller(1);
        assert!(p.take(0, &[0u8; 64]).is_empty(), "no magic: nothing yet");
        let log = b"A|INFO: one\nA|INFO: tw";
        assert_eq!(p.take(0, &page(64, log)), ["A|INFO: one"]);
        let log = b"A|INFO: one\nA|INFO: two\r\nA|INFO: three\n";
        assert_eq!(p.take(0, &page(64, log)), ["A|INFO: two", "A|INFO: three"]);
        assert!(p.take(0, &page(64, log)).is_empty());
        assert!(p.problems().is_empty());
    }

    #[test]
    fn pages_are_kept_apart() {
        let mut p = poller(2);
        assert_eq!(p.take(0, &page(64, b"A|INFO: x")), Vec::<String>::new());
        assert_eq!(p.take(1, &page(64, b"B|INFO: y\n")), ["B|INFO: y"]);
        assert_eq!(p.take(0, &page(64, b"A|INFO: x\n")), ["A|INFO: x"]);
    }

    #[test]
    fn an_overrun_and_a_rewrite_are_problems_not_lines() {
        let mut p = poller(1);
        p.take(0, &page(64, b"A|INFO: half a li"));
        // 100 more bytes through a 48-byte page: the line in progress lost
        // its middle and is dropped; what follows its end is kept.
        let mut log = b"A|INFO: half a li".to_vec();
        log.extend(std::iter::repeat_n(b'x', 100));
        log.extend(b"\nA|INFO: after\n");
        assert_eq!(p.take(0, &page(64, &log)), ["A|INFO: after"]);
        assert!(
            p.problems()[0].contains("overwritten"),
            "{:?}",
            p.problems()
        );
        // The count going backwards changes nothing and is reported.
        assert!(p.take(0, &page(64, b"A|INFO: new\n")).is_empty());
        assert!(p.problems()[1].contains("backwards"), "{:?}", p.problems());
        assert_eq!(p.problems().len(), 2);
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_bound() {
        let mut p = poller(1);
        let size = HEADER + 2 * MAX_LINE;
        let log = vec![b'y'; MAX_LINE + 1];
        let lines = p.take(0, &page(size, &log));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE + 1);
    }
}
