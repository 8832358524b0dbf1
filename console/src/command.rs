//! A line to a command.

use memserver_api::{PairError, TunableKey, parse_tunable_pair};

/// What a line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// An empty (or blank) line.
    Nothing,
    /// `help`.
    Help,
    /// `tunable KEY=VALUE`: only the syntax is checked here; the range is
    /// the memserver's to check.
    SetTunable { key: TunableKey, value: u64 },
}

/// Why a line is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError<'a> {
    /// The first word names no command.
    Unknown(&'a str),
    /// `tunable` without a `KEY=VALUE`, or with more than one.
    Usage,
    /// The `KEY=VALUE` is not a tunable.
    Pair(PairError<'a>),
}

impl core::fmt::Display for CommandError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unknown(word) => write!(f, "unknown command '{word}' (try help)"),
            Self::Usage => f.write_str("usage: tunable KEY=VALUE"),
            Self::Pair(e) => write!(f, "{e}"),
        }
    }
}

/// The text `help` prints: the commands, then the tunables' names.
pub const HELP: &str =
    "commands: tunable KEY=VALUE (set a reporting tunable while the system runs), help\r\n";

/// Parse one line (as [`crate::LineEditor`] gives it: printable ASCII).
pub fn parse(line: &str) -> Result<Command, CommandError<'_>> {
    let mut words = line.split_ascii_whitespace();
    match words.next() {
        None => Ok(Command::Nothing),
        Some("help") => Ok(Command::Help),
        Some("tunable") => match (words.next(), words.next()) {
            (Some(pair), None) => parse_tunable_pair(pair)
                .map(|(key, value)| Command::SetTunable { key, value })
                .map_err(CommandError::Pair),
            _ => Err(CommandError::Usage),
        },
        Some(other) => Err(CommandError::Unknown(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn a_tunable_line_is_one_key_and_value() {
        assert_eq!(
            parse("tunable delay_ms=250"),
            Ok(Command::SetTunable {
                key: TunableKey::DelayMs,
                value: 250
            })
        );
        assert_eq!(
            parse("  tunable   policy=linux "),
            Ok(Command::SetTunable {
                key: TunableKey::Policy,
                value: 0
            })
        );
        assert_eq!(parse(""), Ok(Command::Nothing));
        assert_eq!(parse("   "), Ok(Command::Nothing));
        assert_eq!(parse("help"), Ok(Command::Help));
    }

    #[test]
    fn every_mistake_is_named() {
        let said = |l: &str| parse(l).unwrap_err().to_string();
        assert_eq!(said("reboot"), "unknown command 'reboot' (try help)");
        assert_eq!(said("tunable"), "usage: tunable KEY=VALUE");
        assert_eq!(said("tunable a=1 b=2"), "usage: tunable KEY=VALUE");
        assert_eq!(said("tunable delay_ms"), "'delay_ms' is not key=value");
        assert!(
            said("tunable speed=9").starts_with("unknown tunable 'speed' (known: order, delay_ms,")
        );
        assert_eq!(said("tunable delay_ms=-1"), "bad value '-1' for 'delay_ms'");
        assert_eq!(
            said("tunable delay_ms=99999999999999999999"),
            "bad value '99999999999999999999' for 'delay_ms'"
        );
        assert_eq!(
            said("tunable policy=fast"),
            "bad policy 'fast' (linux or adaptive)"
        );
    }
}
