//! The memory timeline of a run: samples of the memory the host holds for
//! guest RAM, what the guests hold, and what has been reported, plus phase
//! marks. `tools demo` (host platform) and `tools qemu` (bare and seL4 in
//! QEMU) fill it from different sources and share the progress line, the
//! phase table, the reclaim latencies and the plot.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

const MIB: f64 = 1024.0 * 1024.0;

/// One sample, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Time since the run started.
    pub t: Duration,
    /// Memory the host holds for guest RAM (memfd blocks, or QEMU's RSS).
    pub host: u64,
    /// Memory the guests hold (allocated through the memserver), if known.
    pub guest: Option<u64>,
    /// Bytes reported (discarded) by the device so far, if known.
    pub reported: Option<u64>,
}

/// A named point in time: a phase boundary.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// Time since the run started.
    pub t: Duration,
    /// What happened, e.g. `guests touched 512 MiB`.
    pub label: String,
}

/// Time from a mark until the host gave back 50, 90 and 99 % of an amount.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reclaim {
    /// Bytes the host held at the mark.
    pub start: u64,
    /// Bytes the host held at the end of the window.
    pub end: u64,
    /// The least the host held in the window (`start` when it never fell).
    pub lowest: u64,
    /// Bytes that should come back.
    pub expected: u64,
    /// Delay until 50 %, 90 %, 99 % of `expected` came back.
    pub p50: Option<Duration>,
    /// See `p50`.
    pub p90: Option<Duration>,
    /// See `p50`.
    pub p99: Option<Duration>,
}

impl Reclaim {
    /// Bytes of `expected` that came back by the end of the window: the
    /// fall of the host's memory, but never more than was expected (what
    /// else the host dropped meanwhile is not what was freed).
    pub fn back(&self) -> u64 {
        self.start.saturating_sub(self.end).min(self.expected)
    }

    /// Fraction of `expected` that came back by the end of the window, at
    /// most 1.
    pub fn fraction(&self) -> f64 {
        self.share(self.back())
    }

    /// Bytes of `expected` the host's memory had fallen by at its lowest in
    /// the window: what came back, even if the workload took part of it
    /// again before the window ended.
    pub fn most_back(&self) -> u64 {
        self.start.saturating_sub(self.lowest).min(self.expected)
    }

    /// [`Reclaim::most_back`] as a fraction of `expected`.
    pub fn deepest_fraction(&self) -> f64 {
        self.share(self.most_back())
    }

    /// `bytes` as a fraction of `expected` (0 when nothing was expected).
    fn share(&self, bytes: u64) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        bytes as f64 / self.expected as f64
    }
}

/// Samples and marks of one run.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    samples: Vec<Sample>,
    marks: Vec<Mark>,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

fn opt_mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_string(), |b| format!("{:.1}", mib(b)))
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_string(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

impl Timeline {
    /// An empty timeline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a sample; samples must come in time order.
    pub fn push(&mut self, sample: Sample) {
        debug_assert!(self.samples.last().is_none_or(|s| s.t <= sample.t));
        self.samples.push(sample);
    }

    /// Mark a phase boundary at `t`.
    pub fn mark(&mut self, t: Duration, label: impl Into<String>) {
        self.marks.push(Mark {
            t,
            label: label.into(),
        });
    }

    /// The samples so far.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The marks so far.
    pub fn marks(&self) -> &[Mark] {
        &self.marks
    }

    /// When the latest mark at or before `t` whose label holds `what` was
    /// made.
    pub fn last_mark_before(&self, what: &str, t: Duration) -> Option<Duration> {
        self.marks
            .iter()
            .filter(|m| m.label.contains(what) && m.t <= t)
            .map(|m| m.t)
            .max()
    }

    /// The last sample taken at or before `t`.
    pub fn at(&self, t: Duration) -> Option<&Sample> {
        let i = self.samples.partition_point(|s| s.t <= t);
        i.checked_sub(1).map(|i| &self.samples[i])
    }

    /// One line of live progress for the latest sample.
    pub fn progress_line(&self) -> String {
        let Some(s) = self.samples.last() else {
            return String::from("waiting for the first sample");
        };
        // The last event and how long ago: a label alone would read as
        // what is happening now, long after it happened.
        let phase = self.marks.last().map_or_else(
            || "starting".to_string(),
            |m| {
                format!(
                    "last: {} {:.1} s ago",
                    m.label,
                    s.t.saturating_sub(m.t).as_secs_f64()
                )
            },
        );
        format!(
            "{:6.1} s  host {:7.1} MiB  guests {:>7} MiB  reported {:>7} MiB  [{phase}]",
            s.t.as_secs_f64(),
            mib(s.host),
            opt_mib(s.guest),
            opt_mib(s.reported),
        )
    }

    /// How the host memory fell after the mark at `from`, measured from the
    /// last sample before it: the delays until 50/90/99 % of `expected`
    /// bytes came back, within the samples up to `until` (or the end).
    pub fn reclaim(&self, from: Duration, expected: u64, until: Option<Duration>) -> Reclaim {
        // The memory before the event: the last sample taken before the
        // mark (the one taken with it may already show the memory back,
        // when the event's console line is read after the sample that
        // follows it, as a hostile PD's busy worker makes happen).
        let i = self.samples.partition_point(|s| s.t < from);
        let start = i
            .checked_sub(1)
            .map(|i| &self.samples[i])
            .or_else(|| self.at(from))
            .map_or(0, |s| s.host);
        self.reclaim_from(start, from, expected, until)
    }

    /// The most memory the host held before `t`: where a system that only
    /// grows until an event (nothing zeroed at boot) stood before it, even
    /// when a fast reporter gave part of it back before the event's line
    /// was read.
    pub fn peak_before(&self, t: Duration) -> u64 {
        self.samples
            .iter()
            .filter(|s| s.t < t)
            .map(|s| s.host)
            .max()
            .unwrap_or(0)
    }

    /// The most memory the host held in the `lag` before `t`: where it
    /// stood just before an event whose line is read up to `lag` after it
    /// happened (the PDs' log pages are copied out periodically), so a
    /// fast reporter's fall inside that lag is not missed.
    pub fn peak_within(&self, t: Duration, lag: Duration) -> u64 {
        let from = t.saturating_sub(lag);
        self.samples
            .iter()
            .filter(|s| s.t < t && s.t >= from)
            .map(|s| s.host)
            .max()
            .or_else(|| self.at(t).map(|s| s.host))
            .unwrap_or(0)
    }

    /// As [`Self::reclaim`], with the memory before the event given.
    pub fn reclaim_from(
        &self,
        start: u64,
        from: Duration,
        expected: u64,
        until: Option<Duration>,
    ) -> Reclaim {
        let window = self
            .samples
            .iter()
            .filter(|s| s.t >= from && until.is_none_or(|u| s.t <= u));
        let mut r = Reclaim {
            start,
            end: start,
            lowest: start,
            expected,
            ..Reclaim::default()
        };
        for s in window {
            r.end = s.host;
            r.lowest = r.lowest.min(s.host);
            let back = start.saturating_sub(s.host) as u128;
            let hit = |pct: u128| back * 100 >= expected as u128 * pct;
            for (slot, pct) in [(&mut r.p50, 50), (&mut r.p90, 90), (&mut r.p99, 99)] {
                if slot.is_none() && expected > 0 && hit(pct) {
                    *slot = Some(s.t - from);
                }
            }
        }
        r
    }

    /// A table with one row per mark: the memory at that moment.
    pub fn phase_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>8}  {:<40} {:>10} {:>10} {:>10}",
            "time", "phase", "host MiB", "guest MiB", "reported"
        );
        for m in &self.marks {
            // The state a phase ends in is the last sample before the next
            // mark; the row shows the state at the mark itself.
            let s = self.at(m.t);
            let _ = writeln!(
                out,
                "{:>6.1} s  {:<40} {:>10} {:>10} {:>10}",
                m.t.as_secs_f64(),
                m.label,
                s.map_or_else(|| "-".into(), |s| format!("{:.1}", mib(s.host))),
                opt_mib(s.and_then(|s| s.guest)),
                opt_mib(s.and_then(|s| s.reported)),
            );
        }
        if let Some(s) = self.samples.last() {
            let _ = writeln!(
                out,
                "{:>6.1} s  {:<40} {:>10.1} {:>10} {:>10}",
                s.t.as_secs_f64(),
                "end",
                mib(s.host),
                opt_mib(s.guest),
                opt_mib(s.reported),
            );
        }
        out
    }

    /// The samples as CSV (seconds, then bytes), for other tools.
    pub fn csv(&self) -> String {
        let mut out = String::from("t_s,host_bytes,guest_bytes,reported_bytes\n");
        let opt = |v: Option<u64>| v.map_or_else(String::new, |v| v.to_string());
        for s in &self.samples {
            let _ = writeln!(
                out,
                "{:.3},{},{},{}",
                s.t.as_secs_f64(),
                s.host,
                opt(s.guest),
                opt(s.reported)
            );
        }
        out
    }

    /// A summary of a [`Reclaim`], for tables and notes.
    pub fn reclaim_line(label: &str, r: &Reclaim) -> String {
        format!(
            "{label}: {:.1} of {:.1} MiB back ({:.1} %), 50 % after {}, 90 % after {}, 99 % after {}",
            mib(r.back()),
            mib(r.expected),
            r.fraction() * 100.0,
            secs(r.p50),
            secs(r.p90),
            secs(r.p99),
        ) + &if r.most_back() > r.back() {
            format!(
                "; at most {:.1} MiB ({:.1} %) before the workload took some again",
                mib(r.most_back()),
                r.deepest_fraction() * 100.0
            )
        } else {
            String::new()
        }
    }

    /// Write an SVG plot over time: the host's memory for guest RAM and
    /// what the guests hold on the left axis, the cumulative bytes reported
    /// on the right axis (it grows far beyond the others), and the marks as
    /// vertical lines with staggered labels.
    pub fn plot_svg(&self, path: &Path, title: &str) -> Result<(), String> {
        use plotters::prelude::*;
        let err = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
        let t_end = self
            .samples
            .last()
            .map_or(1.0, |s| s.t.as_secs_f64())
            .max(1.0);
        let top = |it: &mut dyn Iterator<Item = u64>| it.max().map_or(1.0, mib).max(1.0) * 1.15;
        let y_max = top(&mut self
            .samples
            .iter()
            .flat_map(|s| [Some(s.host), s.guest])
            .flatten());
        let y2_max = top(&mut self.samples.iter().filter_map(|s| s.reported));
        let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0f64..t_end, 0f64..y_max)
            .map_err(|e| err(&e))?
            .set_secondary_coord(0f64..t_end, 0f64..y2_max);
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("MiB held")
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .configure_secondary_axes()
            .y_desc("MiB reported (cumulative)")
            .draw()
            .map_err(|e| err(&e))?;
        let points = |pick: fn(&Sample) -> Option<u64>| -> Vec<(f64, f64)> {
            self.samples
                .iter()
                .filter_map(|s| pick(s).map(|v| (s.t.as_secs_f64(), mib(v))))
                .collect()
        };
        type Pick = fn(&Sample) -> Option<u64>;
        let left: [(&str, RGBColor, Pick); 2] = [
            ("host memory for guest RAM", RED, |s| Some(s.host)),
            ("held by guests", BLUE, |s| s.guest),
        ];
        for (name, color, pick) in left {
            let p = points(pick);
            if p.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(p, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        let reported = points(|s| s.reported);
        if !reported.is_empty() {
            let green = RGBColor(0, 150, 0);
            chart
                .draw_secondary_series(LineSeries::new(reported, green.stroke_width(1)))
                .map_err(|e| err(&e))?
                .label("reported, cumulative (right axis)")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], green));
        }
        for (i, m) in self.marks.iter().enumerate() {
            let x = m.t.as_secs_f64();
            chart
                .draw_series(LineSeries::new(
                    [(x, 0.0), (x, y_max)],
                    BLACK.mix(0.3).stroke_width(1),
                ))
                .map_err(|e| err(&e))?;
            // Four label rows, so labels of nearby marks do not overlap.
            let row = (i % 4) as f64;
            chart
                .draw_series(std::iter::once(Text::new(
                    m.label.clone(),
                    (x, y_max * (0.97 - 0.05 * row)),
                    ("sans-serif", 11).into_font().color(&BLACK),
                )))
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn s(t_ms: u64, host_mib: u64) -> Sample {
        Sample {
            t: Duration::from_millis(t_ms),
            host: host_mib * M,
            guest: None,
            reported: None,
        }
    }

    #[test]
    fn the_last_mark_before_a_time_is_found_by_its_label() {
        let mut tl = Timeline::new();
        let s = Duration::from_secs;
        tl.mark(s(1), "GUEST0 touched 8 MiB");
        tl.mark(s(2), "GUEST0 freed 8 MiB");
        tl.mark(s(3), "GUEST1 touched 8 MiB");
        assert_eq!(tl.last_mark_before("touched", s(2)), Some(s(1)));
        assert_eq!(tl.last_mark_before("touched", s(3)), Some(s(3)));
        assert_eq!(tl.last_mark_before("touched", Duration::ZERO), None);
        assert_eq!(tl.last_mark_before("verified", s(9)), None);
    }

    #[test]
    fn reclaim_finds_the_first_sample_past_each_threshold() {
        let mut tl = Timeline::new();
        for (t, h) in [(0, 100), (1000, 100), (2000, 60), (3000, 20), (4000, 5)] {
            tl.push(s(t, h));
        }
        let r = tl.reclaim(Duration::from_millis(1000), 100 * M, None);
        assert_eq!(r.start, 100 * M);
        assert_eq!(r.end, 5 * M);
        assert_eq!(r.p50, Some(Duration::from_millis(2000)));
        assert_eq!(r.p90, Some(Duration::from_millis(3000)));
        assert_eq!(r.p99, None);
        assert!((r.fraction() - 0.95).abs() < 1e-9);
    }

    #[test]
    fn reclaim_starts_before_a_mark_whose_sample_already_fell() {
        // The event's line was read with a sample that already shows the
        // memory back: the start is the sample before.
        let mut tl = Timeline::new();
        for (t, h) in [(0, 300), (250, 300), (500, 50), (750, 50)] {
            tl.push(s(t, h));
        }
        let r = tl.reclaim(Duration::from_millis(500), 250 * M, None);
        assert_eq!((r.start, r.end), (300 * M, 50 * M));
        assert_eq!(r.p99, Some(Duration::ZERO));
        assert!((r.fraction() - 1.0).abs() < 1e-9);
    }

    /// "512.0 of 510.0 MiB back (100.4 %)": what else the host dropped is
    /// not what was freed; back and fraction stop at what was expected.
    #[test]
    fn back_is_measured_against_what_was_freed_and_never_passes_it() {
        let mut tl = Timeline::new();
        for (t, h) in [(0, 600), (1000, 88)] {
            tl.push(s(t, h));
        }
        let r = tl.reclaim(Duration::from_millis(500), 510 * M, None);
        assert_eq!(r.back(), 510 * M);
        assert_eq!(r.fraction(), 1.0);
        let line = Timeline::reclaim_line("x", &r);
        assert!(line.contains("510.0 of 510.0 MiB back (100.0 %)"), "{line}");
    }

    /// The live line says what happened last and when, not a label that
    /// reads as what is happening now.
    #[test]
    fn the_progress_line_ages_the_last_event() {
        let mut tl = Timeline::new();
        assert!(tl.progress_line().contains("first sample"));
        tl.push(s(0, 10));
        assert!(tl.progress_line().contains("[starting]"));
        tl.mark(Duration::from_millis(500), "guest0 freed 256 MiB");
        tl.push(s(3000, 10));
        let line = tl.progress_line();
        assert!(
            line.contains("[last: guest0 freed 256 MiB 2.5 s ago]"),
            "{line}"
        );
    }

    /// The peak within a lag before a mark: an earlier, higher stand (a
    /// boot-time report not yet made) is outside the lag and not counted.
    #[test]
    fn the_peak_within_the_lag_ignores_what_stood_before_it() {
        let mut tl = Timeline::new();
        for (t, h) in [(0, 900), (500, 600), (1000, 600), (1250, 330), (1500, 70)] {
            tl.push(s(t, h));
        }
        let lag = Duration::from_millis(1000);
        assert_eq!(tl.peak_within(Duration::from_millis(1500), lag), 600 * M);
        assert_eq!(tl.peak_before(Duration::from_millis(1500)), 900 * M);
        let r = tl.reclaim_from(
            tl.peak_within(Duration::from_millis(1500), lag),
            Duration::from_millis(1500),
            512 * M,
            None,
        );
        assert_eq!(r.start, 600 * M);
        assert_eq!(r.fraction(), 1.0, "{r:?}");
    }

    /// A fast reporter gave part of the memory back before the free's line
    /// was read: the peak before the mark is where the memory stood.
    #[test]
    fn reclaim_from_the_peak_sees_what_came_back_before_the_line() {
        let mut tl = Timeline::new();
        for (t, h) in [(0, 100), (1000, 600), (1500, 330), (2000, 70)] {
            tl.push(s(t, h));
        }
        // The free's line came with the 2000 ms sample; the one before it
        // already had half back.
        let late = tl.reclaim(Duration::from_millis(2000), 512 * M, None);
        assert!((late.fraction() - 0.5).abs() < 0.01, "{late:?}");
        let start = tl.peak_before(Duration::from_millis(2000));
        assert_eq!(start, 600 * M);
        let r = tl.reclaim_from(start, Duration::from_millis(2000), 512 * M, None);
        assert_eq!(r.fraction(), 1.0);
        assert_eq!(r.p90, Some(Duration::ZERO));
    }

    #[test]
    fn reclaim_respects_the_window_end() {
        let mut tl = Timeline::new();
        for (t, h) in [(0, 100), (1000, 40), (2000, 0)] {
            tl.push(s(t, h));
        }
        let r = tl.reclaim(Duration::ZERO, 100 * M, Some(Duration::from_millis(1000)));
        assert_eq!(r.end, 40 * M);
        assert_eq!(r.p50, Some(Duration::from_millis(1000)));
        assert_eq!(r.p90, None);
    }

    #[test]
    fn deepest_fraction_keeps_what_came_back_before_the_workload_took_it() {
        let mut tl = Timeline::new();
        // 500 MiB reported: 480 came back, then the guests took 80 again.
        for (t, h) in [(0, 1400), (1000, 920), (2000, 1000)] {
            tl.push(s(t, h));
        }
        let r = tl.reclaim(Duration::from_millis(500), 500 * M, None);
        assert_eq!((r.end, r.lowest), (1000 * M, 920 * M));
        assert!((r.fraction() - 0.8).abs() < 1e-9, "{r:?}");
        assert!((r.deepest_fraction() - 0.96).abs() < 1e-9, "{r:?}");
        let line = Timeline::reclaim_line("boot", &r);
        assert!(line.contains("400.0 of 500.0 MiB back (80.0 %)"), "{line}");
        assert!(line.contains("at most 480.0 MiB (96.0 %) before"), "{line}");
        // Never more than expected, and nothing when it never fell.
        let flat = tl.reclaim(Duration::from_millis(1500), 500 * M, None);
        assert_eq!(flat.deepest_fraction(), 0.0);
        let all = tl.reclaim(Duration::from_millis(500), 100 * M, None);
        assert_eq!(all.deepest_fraction(), 1.0);
    }

    #[test]
    fn table_has_a_row_per_mark_with_the_state_at_the_mark() {
        let mut tl = Timeline::new();
        tl.push(s(0, 0));
        tl.push(s(500, 256));
        tl.mark(Duration::from_millis(600), "touched");
        tl.push(s(900, 10));
        let table = tl.phase_table();
        let row = table.lines().find(|l| l.contains("touched")).unwrap();
        assert!(row.contains("256.0"), "{row}");
        let end = table.lines().last().unwrap();
        assert!(end.contains("end") && end.contains("10.0"), "{end}");
    }

    #[test]
    fn csv_has_a_header_and_a_row_per_sample() {
        let mut tl = Timeline::new();
        tl.push(s(0, 1));
        tl.push(Sample {
            guest: Some(5),
            ..s(1500, 2)
        });
        let csv = tl.csv();
        let rows: Vec<_> = csv.lines().collect();
        assert_eq!(rows[0], "t_s,host_bytes,guest_bytes,reported_bytes");
        assert_eq!(rows[1], format!("0.000,{},,", M));
        assert_eq!(rows[2], format!("1.500,{},5,", 2 * M));
    }

    #[test]
    fn plot_writes_an_svg_with_the_series_and_marks() {
        let mut tl = Timeline::new();
        tl.push(s(0, 0));
        tl.push(s(1000, 300));
        tl.mark(Duration::from_millis(1000), "freed");
        tl.push(s(2000, 3));
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        let path = dir.join("plot.svg");
        tl.plot_svg(&path, "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("freed"));
        assert!(svg.contains("host memory for guest RAM"));
    }
}
