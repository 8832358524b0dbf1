//! The workload's program, over a small [`Os`] so the host tests run it
//! against a fake: per round map `mib` MiB, write a stamp into every 4 KiB
//! page (which makes the kernel back it, and QEMU with it), hold, check the
//! stamps, unmap, and wait `hold_ms` before the next round.
//!
//! Every step ends with one console line (see [`crate::line`]), the shape of
//! the native guests' (`guest::workload`), so `tools::qemu::Observed` folds
//! them the same way: `phase=start`, `phase=touched mib=N round=R`,
//! `phase=held ms=N`, `phase=verified ok|failed bad_pages=N`,
//! `phase=freed mib=N round=R`, `phase=done rounds=N freed_mib=N
//! bad_pages=N`, and `phase=failed reason="..."` (ERROR) when the OS said
//! no; each with `memfree_mib=N` (the kernel's MemFree) when known. The stamp check catches a host that discarded a page the guest
//! still held (a broken reporting path), not just a crash.

use crate::Params;
use crate::line::{Level, line};

/// Page size the stamps are spaced by (arm64 and x86_64 Linux).
pub const PAGE: usize = 4096;

/// What the workload needs from the system.
pub trait Os {
    /// A mapping of anonymous memory.
    type Region;
    /// CLOCK_MONOTONIC in ms.
    fn now_ms(&mut self) -> u64;
    /// Map `bytes` of fresh anonymous memory.
    fn map(&mut self, bytes: usize) -> Result<Self::Region, String>;
    /// The memory of `region`.
    fn bytes<'a>(&'a mut self, region: &'a mut Self::Region) -> &'a mut [u8];
    /// Give it back to the kernel.
    fn unmap(&mut self, region: Self::Region) -> Result<(), String>;
    fn sleep_ms(&mut self, ms: u64);
    /// One console line (without newline).
    fn emit(&mut self, line: &str);
    /// The kernel's free memory (`MemFree` of /proc/meminfo) in MiB, if
    /// known: the guest's side of what the host sees in QEMU's RSS.
    fn mem_free_mib(&mut self) -> Option<u64> {
        None
    }
}

/// How a run went (the `phase=done` line's numbers).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub rounds: u32,
    pub freed_mib: u64,
    pub bad_pages: u64,
}

/// The stamp of page `page` in round `round`: differs between rounds, so a
/// page left over from an earlier round is caught too.
pub fn stamp(round: u32, page: usize) -> u64 {
    (u64::from(round) << 40) ^ (page as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn touch(mem: &mut [u8], round: u32) {
    for (i, page) in mem.chunks_mut(PAGE).enumerate() {
        if page.len() >= 8 {
            page[..8].copy_from_slice(&stamp(round, i).to_le_bytes());
        }
    }
}

fn bad_pages(mem: &[u8], round: u32) -> u64 {
    mem.chunks(PAGE)
        .enumerate()
        .filter(|(i, page)| page.len() >= 8 && page[..8] != stamp(round, *i).to_le_bytes())
        .count() as u64
}

fn say<O: Os>(os: &mut O, level: Level, text: core::fmt::Arguments<'_>) {
    let t = os.now_ms();
    let l = match os.mem_free_mib() {
        Some(m) => line(level, format_args!("{text} memfree_mib={m}"), t),
        None => line(level, text, t),
    };
    os.emit(&l);
}

/// Run `params` on `os`; `Err` after a `phase=failed` line.
pub fn run<O: Os>(params: &Params, os: &mut O) -> Result<Summary, String> {
    say(os, Level::Info, format_args!("phase=start {params}"));
    let mut s = Summary::default();
    for round in 1..=params.rounds {
        let mut region = match os.map(params.bytes()) {
            Ok(r) => r,
            Err(e) => {
                let reason = format!("mapping {} MiB: {e}", params.mib);
                say(
                    os,
                    Level::Error,
                    format_args!("phase=failed reason=\"{reason}\""),
                );
                return Err(reason);
            }
        };
        touch(os.bytes(&mut region), round);
        say(
            os,
            Level::Info,
            format_args!("phase=touched mib={} round={round}", params.mib),
        );
        os.sleep_ms(params.hold_ms);
        say(
            os,
            Level::Info,
            format_args!("phase=held ms={}", params.hold_ms),
        );
        let bad = bad_pages(os.bytes(&mut region), round);
        s.bad_pages += bad;
        let verdict = if bad == 0 { "ok" } else { "failed" };
        let level = if bad == 0 { Level::Info } else { Level::Error };
        say(
            os,
            level,
            format_args!("phase=verified {verdict} bad_pages={bad}"),
        );
        if let Err(e) = os.unmap(region) {
            let reason = format!("unmapping {} MiB: {e}", params.mib);
            say(
                os,
                Level::Error,
                format_args!("phase=failed reason=\"{reason}\""),
            );
            return Err(reason);
        }
        s.freed_mib += params.mib;
        s.rounds = round;
        say(
            os,
            Level::Info,
            format_args!("phase=freed mib={} round={round}", params.mib),
        );
        if round < params.rounds {
            os.sleep_ms(params.hold_ms);
        }
    }
    say(
        os,
        Level::Info,
        format_args!(
            "phase=done rounds={} freed_mib={} bad_pages={}",
            s.rounds, s.freed_mib, s.bad_pages
        ),
    );
    Ok(s)
}

/// After the run: one `phase=alive` line (with the kernel's free memory)
/// every `period_ms`, forever, so the host sees the guest stay alive and
/// whether its free memory settles.
pub fn stay_alive<O: Os>(os: &mut O, period_ms: u64, beats: Option<u64>) {
    let mut n = 0u64;
    while beats.is_none_or(|b| n < b) {
        os.sleep_ms(period_ms);
        n += 1;
        say(os, Level::Info, format_args!("phase=alive n={n}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake system: a virtual clock moved by sleeps, regions as vectors,
    /// and optionally a page that "the host discards" (zeroes) while the
    /// workload holds it, as a broken reporting path would.
    #[derive(Default)]
    struct Fake {
        now: u64,
        lines: Vec<String>,
        regions: Vec<Vec<u8>>,
        live: Vec<usize>,
        unmapped: usize,
        fail_map: bool,
        discard_page: Option<usize>,
        mem_free: Option<u64>,
    }

    impl Os for Fake {
        type Region = usize;
        fn now_ms(&mut self) -> u64 {
            self.now
        }
        fn map(&mut self, bytes: usize) -> Result<usize, String> {
            if self.fail_map {
                return Err("ENOMEM".into());
            }
            self.regions.push(vec![0; bytes]);
            self.live.push(self.regions.len() - 1);
            Ok(self.regions.len() - 1)
        }
        fn bytes<'a>(&'a mut self, r: &'a mut usize) -> &'a mut [u8] {
            &mut self.regions[*r]
        }
        fn unmap(&mut self, r: usize) -> Result<(), String> {
            self.live.retain(|l| *l != r);
            self.unmapped += self.regions[r].len();
            Ok(())
        }
        fn sleep_ms(&mut self, ms: u64) {
            self.now += ms;
            if let Some(p) = self.discard_page {
                for &r in &self.live {
                    self.regions[r][p * PAGE..(p + 1) * PAGE].fill(0);
                }
            }
        }
        fn emit(&mut self, line: &str) {
            self.lines.push(line.to_string());
        }
        fn mem_free_mib(&mut self) -> Option<u64> {
            self.mem_free
        }
    }

    #[test]
    fn a_round_touches_holds_verifies_and_frees_in_order() {
        let mut os = Fake::default();
        let p = Params {
            mib: 2,
            hold_ms: 500,
            rounds: 2,
        };
        let s = run(&p, &mut os).unwrap();
        assert_eq!(
            s,
            Summary {
                rounds: 2,
                freed_mib: 4,
                bad_pages: 0
            }
        );
        assert_eq!(os.regions.len(), 2);
        assert!(os.live.is_empty());
        assert_eq!(os.unmapped, 4 << 20);
        let want = [
            "WORKLOAD|INFO: phase=start mib=2 hold_ms=500 rounds=2 t_ms=0",
            "WORKLOAD|INFO: phase=touched mib=2 round=1 t_ms=0",
            "WORKLOAD|INFO: phase=held ms=500 t_ms=500",
            "WORKLOAD|INFO: phase=verified ok bad_pages=0 t_ms=500",
            "WORKLOAD|INFO: phase=freed mib=2 round=1 t_ms=500",
            "WORKLOAD|INFO: phase=touched mib=2 round=2 t_ms=1000",
            "WORKLOAD|INFO: phase=held ms=500 t_ms=1500",
            "WORKLOAD|INFO: phase=verified ok bad_pages=0 t_ms=1500",
            "WORKLOAD|INFO: phase=freed mib=2 round=2 t_ms=1500",
            "WORKLOAD|INFO: phase=done rounds=2 freed_mib=4 bad_pages=0 t_ms=1500",
        ];
        assert_eq!(os.lines, want);
        // Every page was stamped, each round with its own stamp.
        for (i, mem) in os.regions.iter().enumerate() {
            let round = i as u32 + 1;
            assert_eq!(bad_pages(mem, round), 0);
            assert_eq!(bad_pages(mem, round + 1), 512);
        }
    }

    #[test]
    fn a_page_lost_while_held_is_an_error_line() {
        let mut os = Fake {
            discard_page: Some(3),
            ..Fake::default()
        };
        let p = Params {
            mib: 1,
            hold_ms: 10,
            rounds: 1,
        };
        assert_eq!(run(&p, &mut os).unwrap().bad_pages, 1);
        assert!(
            os.lines
                .contains(&"WORKLOAD|ERROR: phase=verified failed bad_pages=1 t_ms=10".to_string())
        );
        assert_eq!(
            os.lines.last().unwrap(),
            "WORKLOAD|INFO: phase=done rounds=1 freed_mib=1 bad_pages=1 t_ms=10"
        );
    }

    #[test]
    fn lines_carry_the_kernels_free_memory_when_known() {
        let mut os = Fake {
            mem_free: Some(900),
            ..Fake::default()
        };
        let p = Params {
            mib: 1,
            hold_ms: 0,
            rounds: 1,
        };
        run(&p, &mut os).unwrap();
        assert_eq!(
            os.lines[1],
            "WORKLOAD|INFO: phase=touched mib=1 round=1 memfree_mib=900 t_ms=0"
        );
    }

    #[test]
    fn it_stays_alive_with_a_heartbeat() {
        let mut os = Fake::default();
        stay_alive(&mut os, 5000, Some(2));
        assert_eq!(
            os.lines,
            [
                "WORKLOAD|INFO: phase=alive n=1 t_ms=5000",
                "WORKLOAD|INFO: phase=alive n=2 t_ms=10000"
            ]
        );
    }

    #[test]
    fn a_refused_mapping_is_a_failed_line() {
        let mut os = Fake {
            fail_map: true,
            ..Fake::default()
        };
        let e = run(&Params::default(), &mut os).unwrap_err();
        assert_eq!(e, "mapping 64 MiB: ENOMEM");
        assert_eq!(
            os.lines.last().unwrap(),
            "WORKLOAD|ERROR: phase=failed reason=\"mapping 64 MiB: ENOMEM\" t_ms=0"
        );
    }
}
