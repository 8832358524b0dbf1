//! The timer's PPC protocol (see the crate docs for the table): labels,
//! decoding a call, the reply. Pure functions, tested on the host.

use core::fmt;
use pd::MessageInfo;

/// Call label: the current time. Reply: mr0 = now in ns.
pub const GET_TIME: u64 = 0;
/// Call label: mr0 = relative ns; replaces the caller's pending timeout.
pub const SET_TIMEOUT: u64 = 1;
/// Call label: cancel the caller's timeout. Reply: mr0 = 1 if one was pending.
pub const CANCEL: u64 = 2;

/// Reply label of success; every other label is an error.
pub const OK: u64 = 0;
/// Reply label: the call's label is unknown.
pub const ERR_UNKNOWN_LABEL: u64 = 1;
/// Reply label: the call carried the wrong number of registers.
pub const ERR_BAD_COUNT: u64 = 2;
/// Reply label: the caller's channel is not a client id the timer can track.
pub const ERR_BAD_CLIENT: u64 = 3;

/// A decoded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    GetTime,
    SetTimeout { ns: u64 },
    Cancel,
}

/// Why a call was refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    UnknownLabel(u64),
    BadCount { label: u64, count: usize },
    BadClient(usize),
}

impl ProtocolError {
    /// The (non-zero) label of the error reply.
    pub fn reply_label(self) -> u64 {
        match self {
            ProtocolError::UnknownLabel(_) => ERR_UNKNOWN_LABEL,
            ProtocolError::BadCount { .. } => ERR_BAD_COUNT,
            ProtocolError::BadClient(_) => ERR_BAD_CLIENT,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownLabel(l) => write!(f, "unknown call label {l}"),
            ProtocolError::BadCount { label, count } => {
                write!(
                    f,
                    "call label {label} with {count} registers (expected {})",
                    expected_count(*label)
                )
            }
            ProtocolError::BadClient(c) => write!(f, "channel {c} is not a timer client"),
        }
    }
}

fn expected_count(label: u64) -> usize {
    if label == SET_TIMEOUT { 1 } else { 0 }
}

impl Call {
    /// Decode a call from its label, register count and mr0 (only read for
    /// `SET_TIMEOUT`). Counts must be exact: a client that sends more than
    /// the protocol has disagrees with us about it.
    pub fn decode(label: u64, count: usize, mr0: u64) -> Result<Call, ProtocolError> {
        let call = match label {
            GET_TIME => Call::GetTime,
            SET_TIMEOUT => Call::SetTimeout { ns: mr0 },
            CANCEL => Call::Cancel,
            other => return Err(ProtocolError::UnknownLabel(other)),
        };
        if count != expected_count(label) {
            return Err(ProtocolError::BadCount { label, count });
        }
        Ok(call)
    }

    /// The call's message info (the client side; mr0 is set separately).
    pub fn info(self) -> MessageInfo {
        match self {
            Call::GetTime => MessageInfo::new(GET_TIME, 0),
            Call::SetTimeout { .. } => MessageInfo::new(SET_TIMEOUT, 1),
            Call::Cancel => MessageInfo::new(CANCEL, 0),
        }
    }
}

/// A reply: label and at most one register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub label: u64,
    /// `Some(mr0)` when the reply carries one register.
    pub mr0: Option<u64>,
}

impl Reply {
    /// Success with no register.
    pub const fn ok() -> Self {
        Reply {
            label: OK,
            mr0: None,
        }
    }
    /// Success with mr0.
    pub const fn value(v: u64) -> Self {
        Reply {
            label: OK,
            mr0: Some(v),
        }
    }
    /// A refusal.
    pub fn error(e: ProtocolError) -> Self {
        Reply {
            label: e.reply_label(),
            mr0: None,
        }
    }
    /// The reply's message info.
    pub fn info(self) -> MessageInfo {
        MessageInfo::new(self.label, usize::from(self.mr0.is_some()))
    }
}

/// What a client makes of the timer's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerError {
    /// The timer answered with an error label (see `ERR_*`), or the call
    /// could not be made (the runtime answers an invalid channel with label 0
    /// and no registers, which [`TimerError::BadReply`] catches).
    Refused { label: u64 },
    /// A success reply without the register the call returns.
    BadReply { count: usize },
}

impl fmt::Display for TimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerError::Refused { label } => {
                write!(f, "the timer refused the call (reply label {label})")
            }
            TimerError::BadReply { count } => {
                write!(f, "the timer's reply has {count} registers, expected 1")
            }
        }
    }
}

/// Check a reply to a call returning one value (`GET_TIME`, `CANCEL`).
pub fn reply_value(info: MessageInfo, mr0: u64) -> Result<u64, TimerError> {
    if info.label() != OK {
        return Err(TimerError::Refused {
            label: info.label(),
        });
    }
    if info.count() < 1 {
        return Err(TimerError::BadReply {
            count: info.count(),
        });
    }
    Ok(mr0)
}

/// Check a reply to `SET_TIMEOUT`.
pub fn reply_unit(info: MessageInfo) -> Result<(), TimerError> {
    if info.label() != OK {
        return Err(TimerError::Refused {
            label: info.label(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_the_three_calls() {
        assert_eq!(Call::decode(GET_TIME, 0, 7), Ok(Call::GetTime));
        assert_eq!(
            Call::decode(SET_TIMEOUT, 1, 7),
            Ok(Call::SetTimeout { ns: 7 })
        );
        assert_eq!(Call::decode(CANCEL, 0, 7), Ok(Call::Cancel));
        for c in [Call::GetTime, Call::SetTimeout { ns: 3 }, Call::Cancel] {
            let i = c.info();
            assert_eq!(Call::decode(i.label(), i.count(), 3), Ok(c));
        }
    }

    proptest! {
        /// Anything but the exact label/count pairs is an error with a
        /// non-zero reply label.
        #[test]
        fn bad_calls_are_errors(label in 0u64..1 << 52, count in 0usize..130, mr0 in any::<u64>()) {
            let good = matches!((label, count), (GET_TIME, 0) | (SET_TIMEOUT, 1) | (CANCEL, 0));
            match Call::decode(label, count, mr0) {
                Ok(_) => prop_assert!(good),
                Err(e) => {
                    prop_assert!(!good);
                    prop_assert_ne!(Reply::error(e).label, OK);
                    prop_assert_eq!(Reply::error(e).info().count(), 0);
                }
            }
        }
    }

    #[test]
    fn client_side_checks_replies() {
        assert_eq!(reply_value(MessageInfo::new(0, 1), 42), Ok(42));
        assert_eq!(
            reply_value(MessageInfo::new(0, 0), 42),
            Err(TimerError::BadReply { count: 0 })
        );
        assert_eq!(
            reply_value(MessageInfo::new(ERR_BAD_COUNT, 0), 0),
            Err(TimerError::Refused { label: 2 })
        );
        assert_eq!(reply_unit(Reply::ok().info()), Ok(()));
        assert_eq!(
            reply_unit(Reply::error(ProtocolError::UnknownLabel(9)).info()),
            Err(TimerError::Refused {
                label: ERR_UNKNOWN_LABEL
            })
        );
    }
}
