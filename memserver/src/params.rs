//! Reporting tunables as text, `key=value` pairs separated by commas, for the
//! host platform's command line (`tools demo --order 9 ...` passes them to
//! the PD in `MEMSERVER_TUNABLES`). On Microkit and the bare platform, where a
//! PD has no environment, the same text is built in (`tools image
//! --tunables`, `tools qemu --tunables`: `MEMSERVER_TUNABLES` in cargo's
//! environment, read by the memserver's `option_env!`).
//!
//! Keys: `policy` (`adaptive`, the default, or `linux`), `order`,
//! `delay_ms`, `capacity`, `budget_divisor`, `watermark_pages`, `in_flight`,
//! and the adaptive policy's `quiet_order`, `age_ms`, `busy_pages`,
//! `backoff_max`, `churn_pages_per_s`; or the single word `off` to disable
//! reporting. Unknown keys and out-of-range values are errors.

use crate::{Error, Policy, TunableKey, Tunables};
use core::fmt;

/// Why a tunables string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamError<'a> {
    /// A pair without `=`.
    NotAPair(&'a str),
    /// A key this parser does not know.
    UnknownKey(&'a str),
    /// A value that is not a number in range for its field.
    BadValue {
        /// The key.
        key: &'a str,
        /// Its value.
        value: &'a str,
    },
    /// The numbers parsed, but the tunables are out of range together.
    Invalid(Error),
}

impl fmt::Display for ParamError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::NotAPair(p) => write!(f, "'{p}' is not key=value"),
            ParamError::UnknownKey(k) => write!(
                f,
                "unknown tunable '{k}' (known: policy, order, delay_ms, capacity, budget_divisor, watermark_pages, in_flight, quiet_order, age_ms, busy_pages, backoff_max, churn_pages_per_s)"
            ),
            ParamError::BadValue { key, value } => write!(f, "bad value '{value}' for '{key}'"),
            ParamError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// Parse `text` over the system's defaults ([`Tunables::adaptive`]: Linux's
/// numbers, the adaptive policy). `Ok(None)`: reporting off.
pub fn parse_tunables(text: &str) -> Result<Option<Tunables>, ParamError<'_>> {
    let text = text.trim();
    if text == "off" {
        return Ok(None);
    }
    let mut t = Tunables::adaptive();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or(ParamError::NotAPair(pair))?;
        let (key, value) = (key.trim(), value.trim());
        let bad = ParamError::BadValue { key, value };
        if key == "policy" {
            t.policy = match value {
                "linux" => Policy::Linux,
                "adaptive" => Policy::Adaptive,
                _ => return Err(bad),
            };
            continue;
        }
        let key = TunableKey::from_name(key).ok_or(ParamError::UnknownKey(key))?;
        let num = value.parse::<u64>().map_err(|_| bad)?;
        t.set(key, num).map_err(ParamError::Invalid)?;
    }
    t.validate().map_err(ParamError::Invalid)?;
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_the_adaptive_policy_with_linux_numbers() {
        assert_eq!(parse_tunables(""), Ok(Some(Tunables::adaptive())));
        assert_eq!(
            parse_tunables("policy=linux"),
            Ok(Some(Tunables::default()))
        );
    }

    #[test]
    fn every_key_sets_its_field() {
        let t = parse_tunables(
            "order=5, delay_ms=250,capacity=16,budget_divisor=8,watermark_pages=0,in_flight=2",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.reporting_order, 5);
        assert_eq!(t.delay_ns, 250_000_000);
        assert_eq!(t.capacity, 16);
        assert_eq!(t.budget_divisor, 8);
        assert_eq!(t.low_watermark_pages, 0);
        assert_eq!(t.max_in_flight, 2);
        let t = parse_tunables(
            "policy=adaptive,quiet_order=2,age_ms=500,busy_pages=7,backoff_max=5,churn_pages_per_s=9",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.policy, Policy::Adaptive);
        assert_eq!(t.quiet_order, 2);
        assert_eq!(t.age_ns, 500_000_000);
        assert_eq!(t.busy_pages, 7);
        assert_eq!(t.backoff_max, 5);
        assert_eq!(t.churn_pages_per_s, 9);
    }

    #[test]
    fn off_disables_reporting() {
        assert_eq!(parse_tunables(" off "), Ok(None));
    }

    #[test]
    fn bad_input_is_refused_with_the_culprit() {
        assert_eq!(parse_tunables("order"), Err(ParamError::NotAPair("order")));
        assert_eq!(
            parse_tunables("speed=3"),
            Err(ParamError::UnknownKey("speed"))
        );
        assert_eq!(
            parse_tunables("order=x"),
            Err(ParamError::BadValue {
                key: "order",
                value: "x"
            })
        );
        assert_eq!(
            parse_tunables("order=300"),
            Err(ParamError::Invalid(Error::BadTunable("order")))
        );
        assert!(matches!(
            parse_tunables("order=11"),
            Err(ParamError::Invalid(_))
        ));
        assert_eq!(
            parse_tunables("policy=fast"),
            Err(ParamError::BadValue {
                key: "policy",
                value: "fast"
            })
        );
        assert!(matches!(
            parse_tunables("quiet_order=11"),
            Err(ParamError::Invalid(_))
        ));
        assert!(matches!(
            parse_tunables("backoff_max=9"),
            Err(ParamError::Invalid(_))
        ));
        assert!(matches!(
            parse_tunables("capacity=0"),
            Err(ParamError::Invalid(_))
        ));
    }
}
