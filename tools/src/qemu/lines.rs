//! The PDs' log lines, read: the console contract. `GUEST0|INFO:
//! phase=touched mib=N ...` and the other `phase=` lines of
//! `guest::workload`, and `MEMSERVER|INFO: reported: reported_mib=N ...`
//! when a reporting pass has settled; folded into [`Observed`].

use std::time::Duration;

const MIB: u64 = 1 << 20;

/// The PD prefix just before `|` at the end of `head`: the console of two
/// PDs at one priority can interleave mid-line (each character is a
/// DebugPutChar syscall and the kernel may switch between them), so the
/// prefix is the trailing run of `[A-Z0-9_]`, not the line's start.
fn trailing_prefix(head: &str) -> &str {
    let start = head
        .rfind(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .map_or(0, |i| i + 1);
    // A prefix starts with a letter: digits before it belong to the text
    // it cut into (`t_ns=14GUEST1|...`).
    let run = &head[start..];
    let letter = run
        .find(|c: char| c.is_ascii_uppercase())
        .unwrap_or(run.len());
    &run[letter..]
}

/// `line` cut before each `PREFIX|LEVEL:` that does not start it.
pub fn segments(line: &str) -> Vec<&str> {
    let mut starts = vec![0];
    for level in ["|INFO:", "|WARN:", "|ERROR:", "|PANIC:"] {
        for (i, _) in line.match_indices(level) {
            let head = &line[..i];
            let start = head.len() - trailing_prefix(head).len();
            if start > 0 && start < i {
                starts.push(start);
            }
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let mut out = Vec::with_capacity(starts.len());
    for (k, &a) in starts.iter().enumerate() {
        let b = starts.get(k + 1).copied().unwrap_or(line.len());
        out.push(&line[a..b]);
    }
    out
}

/// A guest's `phase=` line: `(guest prefix, phase, mib)`.
pub fn parse_phase(line: &str) -> Option<(&str, &str, Option<u64>)> {
    let (prefix, rest) = line.split_once("|INFO: phase=")?;
    let prefix = trailing_prefix(prefix);
    let mut words = rest.split_whitespace();
    let phase = words.next()?;
    let mib = words
        .find_map(|w| w.strip_prefix("mib="))
        .and_then(|v| v.parse().ok());
    Some((prefix.trim(), phase, mib))
}

/// `reported_mib` of a memserver summary line.
pub fn parse_reported(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("MEMSERVER|INFO: reported: ")?;
    rest.split_whitespace()
        .find_map(|w| w.strip_prefix("reported_mib="))
        .and_then(|v| v.parse().ok())
}

/// The number after `key=` among the words of a log line
/// (`MEMSERVER|INFO: peers: requests=12 errors=3` -> `errors` = 3).
pub fn field(line: &str, key: &str) -> Option<u64> {
    let k = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(k.as_str()))
        .and_then(|v| v.parse().ok())
}

/// The log prefix of a PD line (`MEMSERVER|INFO: ...` -> `MEMSERVER`).
pub fn log_prefix(line: &str) -> Option<&str> {
    let (p, rest) = line.split_once('|')?;
    let level = rest.split([':', '|']).next()?;
    let ok = !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && ["INFO", "WARN", "ERROR", "PANIC"].contains(&level);
    ok.then_some(p)
}

/// What the console said so far, folded.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// PD log prefixes seen, in order of first appearance.
    pub started: Vec<String>,
    /// Bytes each guest holds (by prefix), from its phase lines.
    pub holding: Vec<(String, u64)>,
    /// Bytes the guests freed (sum of `freed`/`freed_half` lines).
    pub freed: u64,
    /// When the guests' first and last frees (of any memory) were seen.
    pub first_free: Option<Duration>,
    pub last_free: Option<Duration>,
    /// Of those, the bytes of the `freed_half` lines (the fragmented
    /// pattern's first free: every other block), and when the first and
    /// the last of those lines were seen.
    pub freed_half: u64,
    pub half_frees: Option<(Duration, Duration)>,
    /// When the first `freed` line (a guest freeing the rest, or all) was
    /// seen.
    pub first_whole_free: Option<Duration>,
    /// Bytes each guest freed in its latest `freed` line (the last round
    /// of a churn), by prefix.
    pub latest_freed: Vec<(String, u64)>,
    /// Bytes the guests keep live the whole run (`live_touched` lines).
    pub live: u64,
    /// The latest `reported_mib`, in bytes.
    pub reported: Option<u64>,
    /// The first `reported_mib` and when: the boot-time free memory.
    pub boot_report: Option<(Duration, u64)>,
    /// The guests' workload on their own clock (`t_ns`, since the timer
    /// started): the earliest `phase=start` and the latest `phase=done`.
    pub started_ns: Option<u64>,
    pub done_ns: Option<u64>,
    /// Guests that printed `phase=done`, and `phase=verified ok`.
    pub done: Vec<String>,
    pub verified: Vec<String>,
    /// ERROR/PANIC lines and monitor faults.
    pub problems: Vec<String>,
}

impl Observed {
    fn hold(&mut self, guest: &str) -> &mut u64 {
        if let Some(i) = self.holding.iter().position(|(g, _)| g == guest) {
            return &mut self.holding[i].1;
        }
        self.holding.push((guest.to_string(), 0));
        &mut self.holding.last_mut().expect("just pushed").1
    }

    /// From the first guest's start to the last one's `done`, on the
    /// guests' clock: how long the workload took.
    pub fn workload_time(&self) -> Option<Duration> {
        let (s, d) = (self.started_ns?, self.done_ns?);
        d.checked_sub(s).map(Duration::from_nanos)
    }

    /// Bytes all guests hold.
    pub fn guest_bytes(&self) -> u64 {
        self.holding.iter().map(|(_, b)| b).sum()
    }

    /// Every guest of `guests` (log prefixes) printed `phase=done`.
    pub fn all_done(&self, guests: &[String]) -> bool {
        guests.iter().all(|g| self.done.contains(g))
    }

    /// Every guest of `guests` printed `phase=verified ok`.
    pub fn all_verified(&self, guests: &[String]) -> bool {
        guests.iter().all(|g| self.verified.contains(g))
    }

    /// Fold one console line at time `t`; the phase marks it holds. A line
    /// where PDs interleaved is cut before every `PREFIX|LEVEL:` in it, and
    /// each piece is read on its own.
    pub fn line(&mut self, line: &str, t: Duration) -> Vec<String> {
        segments(line)
            .into_iter()
            .filter_map(|seg| self.segment(seg, t))
            .collect()
    }

    fn segment(&mut self, line: &str, t: Duration) -> Option<String> {
        if let Some(p) = log_prefix(line)
            && !self.started.iter().any(|s| s == p)
        {
            self.started.push(p.to_string());
        }
        if line.contains("|ERROR") || line.contains("|PANIC") {
            self.problems.push(line.to_string());
        }
        if let Some(mib) = parse_reported(line) {
            self.reported = Some(mib * MIB);
            if self.boot_report.is_none() {
                self.boot_report = Some((t, mib * MIB));
                // Say what it was: with small guests the first report can
                // come after their frees, and then holds them too.
                return Some(if self.first_free.is_some() {
                    format!("first report: {mib} MiB free reported, the guests' frees with it")
                } else {
                    format!("boot: {mib} MiB free reported")
                });
            }
            return None;
        }
        let (guest, phase, mib) = parse_phase(line)?;
        let bytes = mib.unwrap_or(0) * MIB;
        match phase {
            "live_touched" => {
                let live = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("live_mib="))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                *self.hold(guest) += live * MIB;
                self.live += live * MIB;
                None
            }
            "touched" => {
                *self.hold(guest) += bytes;
                Some(format!("{guest} touched {} MiB", bytes / MIB))
            }
            "freed_half" | "freed" => {
                let h = self.hold(guest);
                *h = h.saturating_sub(bytes);
                self.freed += bytes;
                if phase == "freed_half" {
                    self.freed_half += bytes;
                    let (first, _) = self.half_frees.get_or_insert((t, t));
                    self.half_frees = Some((*first, t));
                } else {
                    self.first_whole_free.get_or_insert(t);
                    match self.latest_freed.iter_mut().find(|(g, _)| g == guest) {
                        Some((_, b)) => *b = bytes,
                        None => self.latest_freed.push((guest.to_string(), bytes)),
                    }
                }
                if bytes > 0 {
                    self.first_free.get_or_insert(t);
                    self.last_free = Some(t);
                }
                Some(format!("{guest} freed {} MiB", bytes / MIB))
            }
            "trace_start" => Some(format!("{guest} trace start")),
            "traced" => Some(format!("{guest} trace end")),
            "verified" => {
                if line.contains("phase=verified ok") {
                    self.verified.push(guest.to_string());
                }
                None
            }
            "start" => {
                if let Some(t) = field(line, "t_ns") {
                    self.started_ns = Some(self.started_ns.map_or(t, |s| s.min(t)));
                }
                None
            }
            "done" => {
                self.done.push(guest.to_string());
                if let Some(t) = field(line, "t_ns") {
                    self.done_ns = Some(self.done_ns.map_or(t, |d| d.max(t)));
                }
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_lines_are_parsed() {
        assert_eq!(
            parse_phase("GUEST0|INFO: phase=touched mib=256 blocks=64 t_ns=5"),
            Some(("GUEST0", "touched", Some(256)))
        );
        assert_eq!(
            parse_phase("GUEST1|INFO: phase=done allocs=3 t_ns=1"),
            Some(("GUEST1", "done", None))
        );
        assert_eq!(parse_phase("MEMSERVER|INFO: ready"), None);
    }

    #[test]
    fn console_lines_are_folded_into_marks_and_holdings() {
        let mut o = Observed::default();
        let t = Duration::from_secs(1);
        assert!(o.line("MEMSERVER|INFO: ready, 2 clients", t).is_empty());
        let m = o.line(
            "MEMSERVER|INFO: reported: reported_mib=990 free_mib=1000 allocated_mib=16 batches_ok=3 batches_failed=0",
            t,
        );
        assert_eq!(m, ["boot: 990 MiB free reported"]);
        assert_eq!(o.boot_report, Some((t, 990 * MIB)));
        // A first report after a guest's free says so.
        let mut late = Observed::default();
        late.line("GUEST0|INFO: phase=freed mib=64 blocks=16 t_ns=1", t);
        assert_eq!(
            late.line("MEMSERVER|INFO: reported: reported_mib=70 free_mib=70 allocated_mib=0 batches_ok=1 batches_failed=0", t),
            ["first report: 70 MiB free reported, the guests' frees with it"]
        );
        o.line(
            "GUEST0|INFO: phase=live_touched live_mib=8 blocks=2 t_ns=1",
            t,
        );
        let m = o.line("GUEST0|INFO: phase=touched mib=64 blocks=16 t_ns=1", t);
        assert_eq!(m, ["GUEST0 touched 64 MiB"]);
        assert_eq!(o.guest_bytes(), 72 * MIB);
        o.line("GUEST0|INFO: phase=freed mib=64 blocks=16 t_ns=1", t);
        assert_eq!((o.guest_bytes(), o.freed), (8 * MIB, 64 * MIB));
        assert_eq!(
            (o.first_free, o.last_free, o.live),
            (Some(t), Some(t), 8 * MIB)
        );
        let both = ["GUEST0".to_string(), "GUEST1".to_string()];
        assert!(!o.all_done(&both[..1]));
        o.line(
            "GUEST0|INFO: phase=verified ok live_mib=8 bad_pages=0 t_ns=1",
            t,
        );
        o.line("GUEST0|INFO: phase=done allocs=1 t_ns=1", t);
        assert!(o.all_done(&both[..1]) && o.all_verified(&both[..1]));
        assert!(!o.all_done(&both));
        o.line("GUEST1|ERROR: phase=failed reason=\"x\" t_ns=0", t);
        // Interleaved output of two PDs still counts for the right one.
        let m = o.line(
            "GUEST1|ERROR: mGUEST0|INFO: phase=touched mib=4 blocks=1 t_ns=1",
            t,
        );
        assert_eq!(m, ["GUEST0 touched 4 MiB"]);
        // Two lines run together: both count.
        o.line(
            "GUEST1|INFO: phase=verified ok live_mib=0 bad_pages=0 t_ns=14GUEST1|INFO: phase=done allocs=0 t_ns=1",
            t,
        );
        assert_eq!(o.started, ["MEMSERVER", "GUEST0", "GUEST1"]);
        assert_eq!(
            (o.done.len(), o.verified.len(), o.problems.len()),
            (2, 2, 2)
        );
        // The second report is a sample, not a mark.
        assert!(
            o.line("MEMSERVER|INFO: reported: reported_mib=1050 free_mib=1 allocated_mib=1 batches_ok=1 batches_failed=0", t)
                .is_empty()
        );
        assert_eq!(o.reported, Some(1050 * MIB));
    }

    #[test]
    fn the_fragmented_patterns_first_free_is_told_from_the_rest() {
        let mut o = Observed::default();
        let s = Duration::from_secs;
        o.line("GUEST0|INFO: phase=freed_half mib=60 blocks=9 t_ns=1", s(1));
        o.line("GUEST1|INFO: phase=freed_half mib=61 blocks=9 t_ns=1", s(2));
        assert_eq!(
            (o.freed_half, o.half_frees),
            (121 * MIB, Some((s(1), s(2))))
        );
        assert_eq!(o.first_whole_free, None);
        o.line("GUEST0|INFO: phase=freed mib=68 blocks=9 t_ns=1", s(15));
        o.line("GUEST1|INFO: phase=freed mib=67 blocks=9 t_ns=1", s(16));
        assert_eq!(
            (o.freed, o.freed_half, o.first_whole_free),
            (256 * MIB, 121 * MIB, Some(s(15)))
        );
        assert_eq!((o.first_free, o.last_free), (Some(s(1)), Some(s(16))));
    }

    #[test]
    fn the_workload_time_runs_from_the_first_start_to_the_last_done() {
        let mut o = Observed::default();
        let t = Duration::from_secs(1);
        assert_eq!(o.workload_time(), None);
        o.line(
            "GUEST1|INFO: phase=start pattern=churn,mib=8 ram_mib=16 t_ns=3000",
            t,
        );
        o.line(
            "GUEST0|INFO: phase=start pattern=churn,mib=8 ram_mib=16 t_ns=2000",
            t,
        );
        o.line("GUEST0|INFO: phase=done allocs=1 freed_mib=8 t_ns=9000", t);
        assert_eq!(o.workload_time(), Some(Duration::from_nanos(7000)));
        o.line("GUEST1|INFO: phase=done allocs=1 freed_mib=8 t_ns=12000", t);
        assert_eq!(o.workload_time(), Some(Duration::from_nanos(10_000)));
    }

    #[test]
    fn interleaved_lines_are_cut_at_each_prefix() {
        assert_eq!(
            segments("GUEST0|INFO: phase=done t_ns=14GUEST1|INFO: phase=done t_ns=1"),
            [
                "GUEST0|INFO: phase=done t_ns=14",
                "GUEST1|INFO: phase=done t_ns=1"
            ]
        );
        assert_eq!(
            segments("MON|INFO: Microkit Monitor started!"),
            ["MON|INFO: Microkit Monitor started!"]
        );
        assert_eq!(segments("x|INFO: y"), ["x|INFO: y"]);
        assert_eq!(segments(""), [""]);
    }

    #[test]
    fn log_prefixes_are_recognised_strictly() {
        assert_eq!(log_prefix("TIMER|INFO: started"), Some("TIMER"));
        assert_eq!(log_prefix("GUEST1|PANIC: x"), Some("GUEST1"));
        assert_eq!(log_prefix("LDR|INFO|CPU0: x"), Some("LDR"));
        assert_eq!(log_prefix("a|INFO: lower case"), None);
        assert_eq!(
            log_prefix("GUEST1|INFO: phase=staGUEST0|INFO: x"),
            Some("GUEST1")
        );
        assert_eq!(log_prefix("no bar"), None);
    }
}
