//! The workload's parameters, from the kernel command line and argv.
//!
//! Each parameter is a `key=value` word. On the kernel command line (read
//! from `/proc/cmdline`) the keys carry the `workload.` prefix
//! (`workload.mib=64`): Linux treats a dotted word as a parameter of a
//! module it does not know and neither warns nor passes it on to init, so
//! the words stay out of the way. In argv they come bare (`mib=64`) and win
//! over the command line. Other command line words are not ours and are
//! skipped; an unknown bare key in argv, or a bad value anywhere, is an
//! error.
//!
//! | key       | default | meaning                                      |
//! |-----------|---------|----------------------------------------------|
//! | `mib`     | 64      | MiB to map and touch per round, 1..=65536    |
//! | `hold_ms` | 2000    | how long to hold it, and to wait after each free before the next round, 0..=600000 |
//! | `rounds`  | 1       | touch/hold/free rounds, 1..=10000            |

use core::fmt;

/// The prefix of the workload's words on the kernel command line.
pub const CMDLINE_PREFIX: &str = "workload.";

/// Workload parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub mib: u64,
    pub hold_ms: u64,
    pub rounds: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            mib: 64,
            hold_ms: 2000,
            rounds: 1,
        }
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mib={} hold_ms={} rounds={}",
            self.mib, self.hold_ms, self.rounds
        )
    }
}

/// Why parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// An argv word without `=`.
    NotKeyValue(String),
    UnknownKey(String),
    NotANumber {
        key: String,
        value: String,
    },
    OutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::NotKeyValue(w) => write!(f, "`{w}` is not key=value"),
            ParamError::UnknownKey(k) => {
                write!(f, "unknown parameter `{k}` (known: mib, hold_ms, rounds)")
            }
            ParamError::NotANumber { key, value } => {
                write!(f, "{key}=`{value}` is not a decimal number")
            }
            ParamError::OutOfRange {
                key,
                value,
                min,
                max,
            } => write!(f, "{key}={value} is outside {min}..={max}"),
        }
    }
}

impl std::error::Error for ParamError {}

fn number(
    key: &str,
    value: &str,
    name: &'static str,
    min: u64,
    max: u64,
) -> Result<u64, ParamError> {
    let bad = || ParamError::NotANumber {
        key: key.to_string(),
        value: value.to_string(),
    };
    // Plain decimal only: no sign, no spaces, no overflow.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let v: u64 = value.parse().map_err(|_| bad())?;
    if !(min..=max).contains(&v) {
        return Err(ParamError::OutOfRange {
            key: name,
            value: v,
            min,
            max,
        });
    }
    Ok(v)
}

impl Params {
    /// Set one parameter.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ParamError> {
        match key {
            "mib" => self.mib = number(key, value, "mib", 1, 65536)?,
            "hold_ms" => self.hold_ms = number(key, value, "hold_ms", 0, 600_000)?,
            "rounds" => self.rounds = number(key, value, "rounds", 1, 10_000)? as u32,
            other => return Err(ParamError::UnknownKey(other.to_string())),
        }
        Ok(())
    }

    /// The defaults, then the `workload.` words of `cmdline`, then the
    /// `key=value` words of `args` (argv without the program name).
    pub fn from_sources<S: AsRef<str>>(cmdline: &str, args: &[S]) -> Result<Params, ParamError> {
        let mut p = Params::default();
        for word in cmdline.split_whitespace() {
            let Some(kv) = word.strip_prefix(CMDLINE_PREFIX) else {
                continue;
            };
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ParamError::NotKeyValue(word.to_string()))?;
            p.set(k, v)?;
        }
        for word in args {
            let word = word.as_ref();
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| ParamError::NotKeyValue(word.to_string()))?;
            p.set(k, v)?;
        }
        Ok(p)
    }

    /// Bytes mapped per round.
    pub fn bytes(&self) -> usize {
        (self.mib << 20) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_cmdline_then_argv() {
        let none: [&str; 0] = [];
        assert_eq!(Params::from_sources("", &none).unwrap(), Params::default());
        let cmdline = "console=ttyAMA0 rdinit=/init workload.mib=128 workload.rounds=3 quiet";
        let p = Params::from_sources(cmdline, &none).unwrap();
        assert_eq!(
            p,
            Params {
                mib: 128,
                hold_ms: 2000,
                rounds: 3
            }
        );
        let p = Params::from_sources(cmdline, &["mib=16", "hold_ms=0"]).unwrap();
        assert_eq!(
            p,
            Params {
                mib: 16,
                hold_ms: 0,
                rounds: 3
            }
        );
    }

    #[test]
    fn bad_words_are_named() {
        let none: [&str; 0] = [];
        let e = Params::from_sources("workload.mib=0", &none).unwrap_err();
        assert_eq!(e.to_string(), "mib=0 is outside 1..=65536");
        let e = Params::from_sources("workload.mib=-1", &none).unwrap_err();
        assert_eq!(e.to_string(), "mib=`-1` is not a decimal number");
        let e = Params::from_sources("workload.size=3", &none).unwrap_err();
        assert!(e.to_string().starts_with("unknown parameter `size`"));
        let e = Params::from_sources("", &["64"]).unwrap_err();
        assert_eq!(e.to_string(), "`64` is not key=value");
        let e = Params::from_sources("workload.mib", &none).unwrap_err();
        assert_eq!(e.to_string(), "`workload.mib` is not key=value");
        let e = Params::from_sources("", &["rounds=99999999999999999999"]).unwrap_err();
        assert!(matches!(e, ParamError::NotANumber { .. }));
    }
}
