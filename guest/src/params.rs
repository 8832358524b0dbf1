//! The guest workload's parameters.
//!
//! Text form (the host launcher passes it in the environment variable
//! `GUEST_PARAMS`, or `GUEST0_PARAMS` / `GUEST1_PARAMS` for one guest, which
//! wins; on Microkit and the bare platform, the text the image was built
//! with, `--guest-params` of `tools image`, `tools qemu` and `tools bare`,
//! else the defaults): comma-separated `key=value` pairs,
//! each key at most once, any subset, e.g.
//! `pattern=fragmented,mib=128,hold_ms=1000,rounds=3,live_mib=8`.
//!
//! | key       | default | meaning                                                   |
//! |-----------|---------|-----------------------------------------------------------|
//! | `pattern` | `bulk`  | `bulk`, `fragmented`, `churn` or `trace` (see [`Pattern`]) |
//! | `mib`     | 256     | MiB the pattern allocates (trace: at the curve's peak), 1..=65536 |
//! | `hold_ms` | 3000    | how long to hold memory between phases, 0..=600000        |
//! | `rounds`  | 4       | churn rounds, 1..=100000                                  |
//! | `live_mib`| 8       | MiB kept allocated the whole run and verified at the end, 0..=65536 |
//! | `speed`   | 1       | trace: replay this many times faster than recorded, 1..=1000 |
//! | `curve`   | `cargo-build` | trace: which recorded curve, `cargo-build`, `cppcheck-build` or `cppcheck-clang-build` (see [`Curve`]) |
//!
//! Whether `mib + live_mib` fits the guest's RAM is checked when the
//! workload starts ([`Params::check_fits`]).

use core::fmt;

/// The allocation pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Allocate `mib` in 4 MiB blocks (2 MiB when 4 MiB ones run out),
    /// touch every page, hold, free everything.
    Bulk,
    /// Allocate `mib` as blocks of orders 0..=3, hold, free every other
    /// block, hold, free the rest.
    Fragmented,
    /// `rounds` times: allocate `mib` in mixed orders (0..=3, 9, 10), touch,
    /// verify, free.
    Churn,
    /// Follow the memory curve recorded from a real program
    /// (`guest/traces/`, see its README), scaled so the curve's peak is
    /// `mib`: at each recorded sample allocate (mixed orders) or free
    /// (lowest addresses first) up to the recorded level; then free
    /// everything, hold, verify.
    Trace,
}

impl Pattern {
    /// The name used in the text form and in log lines.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Bulk => "bulk",
            Pattern::Fragmented => "fragmented",
            Pattern::Churn => "churn",
            Pattern::Trace => "trace",
        }
    }
}

/// The recorded memory curve a `trace` replays (`guest/traces/`, whose
/// README says how each was recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// A `cargo build --release -j2` of a crate using regex and serde_json:
    /// a few large rustc processes, long plateaus.
    CargoBuild,
    /// A `make -j2` of cppcheck 2.10 (C++, g++ -O2): many compiler
    /// processes, each rising and exiting, as a C++ build does.
    CppcheckBuild,
    /// The same build with clang++ 14: the kind of build free page
    /// reporting is usually measured on; its compilers are smaller and
    /// shorter-lived than g++'s.
    CppcheckClangBuild,
}

impl Curve {
    /// The name used in the text form.
    pub fn name(self) -> &'static str {
        match self {
            Curve::CargoBuild => "cargo-build",
            Curve::CppcheckBuild => "cppcheck-build",
            Curve::CppcheckClangBuild => "cppcheck-clang-build",
        }
    }
}

/// Workload parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub pattern: Pattern,
    pub mib: u64,
    pub hold_ms: u64,
    pub rounds: u32,
    pub live_mib: u64,
    pub speed: u32,
    pub curve: Curve,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            pattern: Pattern::Bulk,
            mib: 256,
            hold_ms: 3000,
            rounds: 4,
            live_mib: 8,
            speed: 1,
            curve: Curve::CargoBuild,
        }
    }
}

/// Why parameters were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError<'s> {
    /// An item without `=`.
    NotKeyValue(&'s str),
    UnknownKey(&'s str),
    DuplicateKey(&'s str),
    UnknownPattern(&'s str),
    UnknownCurve(&'s str),
    /// Not a decimal number.
    NotANumber {
        key: &'s str,
        value: &'s str,
    },
    OutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    /// `mib + live_mib` exceed the guest's RAM.
    TooBig {
        need_mib: u64,
        ram_mib: u64,
    },
}

impl fmt::Display for ParamError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::NotKeyValue(s) => write!(f, "'{s}' is not key=value"),
            ParamError::UnknownKey(k) => {
                write!(
                    f,
                    "unknown key '{k}' (known: pattern, mib, hold_ms, rounds, live_mib, speed, curve)"
                )
            }
            ParamError::DuplicateKey(k) => write!(f, "key '{k}' given twice"),
            ParamError::UnknownPattern(p) => {
                write!(f, "unknown pattern '{p}' (bulk, fragmented, churn, trace)")
            }
            ParamError::UnknownCurve(c) => {
                write!(
                    f,
                    "unknown curve '{c}' (cargo-build, cppcheck-build, cppcheck-clang-build)"
                )
            }
            ParamError::NotANumber { key, value } => {
                write!(f, "{key}='{value}' is not a decimal number")
            }
            ParamError::OutOfRange {
                key,
                value,
                min,
                max,
            } => {
                write!(f, "{key}={value} is outside {min}..={max}")
            }
            ParamError::TooBig { need_mib, ram_mib } => {
                write!(
                    f,
                    "mib + live_mib = {need_mib} MiB does not fit the guest's {ram_mib} MiB of RAM"
                )
            }
        }
    }
}

fn number<'s>(
    key: &'s str,
    value: &'s str,
    name: &'static str,
    min: u64,
    max: u64,
) -> Result<u64, ParamError<'s>> {
    // Plain decimal only: no sign, no spaces, no overflow.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParamError::NotANumber { key, value });
    }
    let v: u64 = value
        .parse()
        .map_err(|_| ParamError::NotANumber { key, value })?;
    if v < min || v > max {
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
    /// Parse the text form (see the module docs); an empty string gives the
    /// defaults.
    pub fn parse(text: &str) -> Result<Params, ParamError<'_>> {
        let mut p = Params::default();
        let mut seen = 0u8;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or(ParamError::NotKeyValue(item))?;
            let (key, value) = (key.trim(), value.trim());
            let bit = match key {
                "pattern" => {
                    p.pattern = match value {
                        "bulk" => Pattern::Bulk,
                        "fragmented" => Pattern::Fragmented,
                        "churn" => Pattern::Churn,
                        "trace" => Pattern::Trace,
                        other => return Err(ParamError::UnknownPattern(other)),
                    };
                    1
                }
                "mib" => {
                    p.mib = number(key, value, "mib", 1, 65536)?;
                    2
                }
                "hold_ms" => {
                    p.hold_ms = number(key, value, "hold_ms", 0, 600_000)?;
                    4
                }
                "rounds" => {
                    p.rounds = number(key, value, "rounds", 1, 100_000)? as u32;
                    8
                }
                "live_mib" => {
                    p.live_mib = number(key, value, "live_mib", 0, 65536)?;
                    16
                }
                "speed" => {
                    p.speed = number(key, value, "speed", 1, 1000)? as u32;
                    32
                }
                "curve" => {
                    p.curve = match value {
                        "cargo-build" => Curve::CargoBuild,
                        "cppcheck-build" => Curve::CppcheckBuild,
                        "cppcheck-clang-build" => Curve::CppcheckClangBuild,
                        other => return Err(ParamError::UnknownCurve(other)),
                    };
                    64
                }
                other => return Err(ParamError::UnknownKey(other)),
            };
            if seen & bit != 0 {
                return Err(ParamError::DuplicateKey(key));
            }
            seen |= bit;
        }
        Ok(p)
    }

    /// The defaults for a guest with `ram_bytes` of RAM (Microkit and the
    /// bare platform, where nothing passes parameters): `mib` lowered, when
    /// the default does not fit, to three quarters of the RAM less the live
    /// set, in whole 4 MiB blocks, so a description with small guests runs.
    pub fn default_for(ram_bytes: u64) -> Params {
        let d = Params::default();
        if d.check_fits(ram_bytes).is_ok() {
            return d;
        }
        let ram_mib = ram_bytes / crate::MIB;
        let mib = ((ram_mib * 3 / 4).saturating_sub(d.live_mib) / 4 * 4).max(1);
        Params { mib, ..d }
    }

    /// Refuse parameters whose memory does not fit `ram_bytes`.
    pub fn check_fits(&self, ram_bytes: u64) -> Result<(), ParamError<'static>> {
        let need_mib = self.mib + self.live_mib;
        let ram_mib = ram_bytes / crate::MIB;
        if need_mib > ram_mib {
            return Err(ParamError::TooBig { need_mib, ram_mib });
        }
        Ok(())
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pattern={},mib={},hold_ms={},rounds={},live_mib={},speed={}",
            self.pattern.name(),
            self.mib,
            self.hold_ms,
            self.rounds,
            self.live_mib,
            self.speed
        )?;
        // The default curve is left out: the lines of every other pattern
        // stay as they were.
        if self.curve != Curve::CargoBuild {
            write!(f, ",curve={}", self.curve.name())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::ToString;

    #[test]
    fn the_defaults_fit_a_small_guest() {
        assert_eq!(Params::default_for(512 * crate::MIB), Params::default());
        let p = Params::default_for(64 * crate::MIB);
        assert_eq!(p.mib, 40);
        assert!(p.check_fits(64 * crate::MIB).is_ok());
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(Params::parse(""), Ok(Params::default()));
        let t = Params::parse("pattern=trace,speed=4").unwrap();
        assert_eq!((t.pattern, t.speed), (Pattern::Trace, 4));
        assert_eq!(Params::parse(&t.to_string()), Ok(t));
        let c = Params::parse("pattern=trace,curve=cppcheck-build").unwrap();
        assert_eq!(c.curve, Curve::CppcheckBuild);
        assert!(c.to_string().ends_with(",curve=cppcheck-build"));
        assert_eq!(Params::parse(&c.to_string()), Ok(c));
        let c = Params::parse("pattern=trace,curve=cppcheck-clang-build").unwrap();
        assert_eq!(c.curve, Curve::CppcheckClangBuild);
        assert_eq!(Params::parse(&c.to_string()), Ok(c));
        assert_eq!(
            Params::parse("curve=clang"),
            Err(ParamError::UnknownCurve("clang"))
        );
        let p = Params::parse("pattern=churn, mib=64,rounds=7").unwrap();
        assert_eq!(
            p,
            Params {
                pattern: Pattern::Churn,
                mib: 64,
                rounds: 7,
                ..Params::default()
            }
        );
        assert_eq!(Params::parse(&p.to_string()), Ok(p));
    }

    #[test]
    fn bad_params_are_clear_errors() {
        assert_eq!(Params::parse("mib"), Err(ParamError::NotKeyValue("mib")));
        assert_eq!(Params::parse("size=3"), Err(ParamError::UnknownKey("size")));
        assert_eq!(
            Params::parse("mib=1,mib=2"),
            Err(ParamError::DuplicateKey("mib"))
        );
        assert_eq!(
            Params::parse("pattern=random"),
            Err(ParamError::UnknownPattern("random"))
        );
        assert_eq!(
            Params::parse("mib=-1"),
            Err(ParamError::NotANumber {
                key: "mib",
                value: "-1"
            })
        );
        assert_eq!(
            Params::parse("mib=99999999999999999999999"),
            Err(ParamError::NotANumber {
                key: "mib",
                value: "99999999999999999999999"
            })
        );
        assert_eq!(
            Params::parse("rounds=0"),
            Err(ParamError::OutOfRange {
                key: "rounds",
                value: 0,
                min: 1,
                max: 100_000
            })
        );
        let p = Params::parse("mib=510,live_mib=8").unwrap();
        assert_eq!(
            p.check_fits(512 << 20),
            Err(ParamError::TooBig {
                need_mib: 518,
                ram_mib: 512
            })
        );
        assert_eq!(Params::default().check_fits(512 << 20), Ok(()));
        assert!(
            ParamError::UnknownKey("x")
                .to_string()
                .contains("unknown key 'x'")
        );
    }

    proptest! {
        /// Any input is either parsed or refused with an error, never a panic.
        #[test]
        fn never_panics(s in "[a-z_=,0-9 -]{0,60}") {
            let _ = Params::parse(&s);
        }
    }
}
