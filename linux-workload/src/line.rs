//! The console line format: `WORKLOAD|LEVEL: <text> t_ms=<CLOCK_MONOTONIC
//! ms>`, the `PREFIX|LEVEL:` shape of every PD's log line, so the host's
//! parsers (`tools::qemu::parse_phase`, `field`, `log_prefix`) read it.

use core::fmt;

/// The log prefix of the workload's lines.
pub const PREFIX: &str = "WORKLOAD";

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Error => "ERROR",
        }
    }
}

/// One line, without the newline.
pub fn line(level: Level, text: fmt::Arguments<'_>, t_ms: u64) -> String {
    format!("{PREFIX}|{}: {text} t_ms={t_ms}", level.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_pd_shape() {
        let l = line(Level::Info, format_args!("phase=touched mib={}", 64), 1234);
        assert_eq!(l, "WORKLOAD|INFO: phase=touched mib=64 t_ms=1234");
        let l = line(Level::Error, format_args!("phase=failed reason=\"x\""), 0);
        assert_eq!(l, "WORKLOAD|ERROR: phase=failed reason=\"x\" t_ms=0");
    }
}
