//! The console's core: the operator's bytes in, requests to the memserver
//! and text for the terminal out, through a [`Port`] the PD (or a test)
//! provides.

use crate::command::{self, Command, CommandError};
use crate::line::{Key, LineEditor, LineError};
use core::fmt::{self, Write as _};
use memserver_api::{self as api, FromControl, ToControl, TunableKey};

/// The PD's two outlets.
pub trait Port {
    /// Write to the operator's terminal.
    fn write(&mut self, bytes: &[u8]);
    /// Queue `msg` for the memserver; false when its ring has no room.
    fn request(&mut self, msg: &FromControl) -> bool;
}

/// What a byte (a line, when it ends one) came to: the PD logs all but
/// [`Outcome::Nothing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Typing, an empty line, or `help`.
    Nothing,
    /// The request went to the memserver; its answer comes later.
    Sent { key: TunableKey, value: u64 },
    /// The memserver's request ring is full: nothing was sent.
    Busy { key: TunableKey, value: u64 },
    /// The line is not text.
    BadLine(LineError),
    /// The line is not a command.
    BadCommand(CommandError<'a>),
}

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nothing => Ok(()),
            Self::Sent { key, value } => write!(f, "asked for {}", key.pair(*value)),
            Self::Busy { key, value } => write!(
                f,
                "busy: the memserver has not taken the earlier requests; {} not sent",
                key.pair(*value)
            ),
            Self::BadLine(e) => write!(f, "refused: {e}"),
            Self::BadCommand(e) => write!(f, "refused: {e}"),
        }
    }
}

/// Text to a [`Port`].
struct Terminal<'p>(&'p mut dyn Port);

impl fmt::Write for Terminal<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

/// The operator's session.
#[derive(Debug, Default)]
pub struct Session {
    line: LineEditor,
    /// Requests sent, answers printed, answers that did not decode.
    pub sent: u64,
    pub answered: u64,
    pub bad_answers: u64,
}

impl Session {
    pub const fn new() -> Self {
        Session {
            line: LineEditor::new(),
            sent: 0,
            answered: 0,
            bad_answers: 0,
        }
    }

    /// One byte from the UART.
    pub fn byte(&mut self, b: u8, port: &mut dyn Port) -> Outcome<'_> {
        let line = match self.line.push(b) {
            Key::Echo(c) => {
                port.write(&[c]);
                return Outcome::Nothing;
            }
            Key::Erase => {
                port.write(b"\x08 \x08");
                return Outcome::Nothing;
            }
            Key::Nothing => return Outcome::Nothing,
            Key::Line(l) => l,
        };
        port.write(b"\r\n");
        let outcome = match line.map(command::parse) {
            Err(e) => Outcome::BadLine(e),
            Ok(Err(e)) => Outcome::BadCommand(e),
            Ok(Ok(Command::Nothing)) => Outcome::Nothing,
            Ok(Ok(Command::Help)) => {
                port.write(command::HELP.as_bytes());
                let mut t = Terminal(port);
                let _ = t.write_str("tunables:");
                for k in TunableKey::ALL {
                    let _ = write!(t, " {}", k.name());
                }
                let _ = t.write_str("\r\n");
                Outcome::Nothing
            }
            Ok(Ok(Command::SetTunable { key, value })) => {
                if port.request(&FromControl::SetTunable { key, value }) {
                    self.sent += 1;
                    Outcome::Sent { key, value }
                } else {
                    Outcome::Busy { key, value }
                }
            }
        };
        match outcome {
            // The answer is printed when it comes.
            Outcome::Nothing | Outcome::Sent { .. } => {}
            _ => {
                let _ = write!(Terminal(port), "{outcome}\r\n");
            }
        }
        outcome
    }

    /// One message from the memserver's answer ring: printed when it
    /// decodes, counted and said when it does not.
    pub fn answer(
        &mut self,
        bytes: &[u8],
        port: &mut dyn Port,
    ) -> Result<ToControl, api::DecodeError> {
        let r = api::decode::<ToControl>(bytes);
        let mut t = Terminal(port);
        match &r {
            Ok(a) => {
                self.answered += 1;
                let _ = write!(t, "{a}\r\n");
            }
            Err(e) => {
                self.bad_answers += 1;
                let _ = write!(t, "the memserver's answer did not decode: {e}\r\n");
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memserver_api::{SLOT_SIZE, TunableRefusal};
    use std::string::{String, ToString};
    use std::vec::Vec;

    /// A terminal that records, a ring with room for `room` requests.
    #[derive(Default)]
    struct Fake {
        screen: Vec<u8>,
        requests: Vec<FromControl>,
        room: usize,
    }

    impl Port for Fake {
        fn write(&mut self, bytes: &[u8]) {
            self.screen.extend_from_slice(bytes);
        }
        fn request(&mut self, msg: &FromControl) -> bool {
            if self.requests.len() == self.room {
                return false;
            }
            self.requests.push(*msg);
            true
        }
    }

    impl Fake {
        fn screen(&self) -> String {
            String::from_utf8(self.screen.clone()).unwrap()
        }
    }

    fn type_in(s: &mut Session, port: &mut Fake, text: &[u8]) -> Vec<String> {
        let mut said = Vec::new();
        for &b in text {
            let o = s.byte(b, port);
            if o != Outcome::Nothing {
                said.push(o.to_string());
            }
        }
        said
    }

    #[test]
    fn a_tunable_line_is_sent_and_its_answer_printed() {
        let mut s = Session::new();
        let mut port = Fake {
            room: 4,
            ..Fake::default()
        };
        let said = type_in(&mut s, &mut port, b"tunable delay_ms=250\r");
        assert_eq!(said, ["asked for delay_ms=250"]);
        assert_eq!(
            port.requests,
            [FromControl::SetTunable {
                key: TunableKey::DelayMs,
                value: 250
            }]
        );
        let mut buf = [0u8; SLOT_SIZE];
        let answer = ToControl::TunableSet {
            key: TunableKey::DelayMs,
            value: 250,
            refused: Some(TunableRefusal::OutOfRange),
        };
        let bytes = api::encode(&answer, &mut buf).unwrap();
        assert_eq!(s.answer(bytes, &mut port), Ok(answer));
        assert_eq!(
            port.screen(),
            "tunable delay_ms=250\r\ndelay_ms=250 refused: value out of range\r\n"
        );
        assert_eq!((s.sent, s.answered), (1, 1));
    }

    #[test]
    fn a_bad_line_is_refused_with_its_reason_and_nothing_is_sent() {
        let mut s = Session::new();
        let mut port = Fake {
            room: 4,
            ..Fake::default()
        };
        let said = type_in(
            &mut s,
            &mut port,
            b"tunable speed=1\nreboot\ntunable delay_ms=\x00\n\nhelp\n",
        );
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[0].starts_with("refused: unknown tunable 'speed'"));
        assert_eq!(said[1], "refused: unknown command 'reboot' (try help)");
        assert_eq!(said[2], "refused: byte 0x00 is not printable ASCII");
        assert!(port.requests.is_empty());
        let screen = port.screen();
        assert!(screen.contains("tunables: order delay_ms"), "{screen}");
        assert!(
            screen.ends_with("backoff_max churn_pages_per_s\r\n"),
            "{screen}"
        );
    }

    #[test]
    fn a_full_ring_is_said_and_the_request_dropped() {
        let mut s = Session::new();
        let mut port = Fake::default();
        let said = type_in(&mut s, &mut port, b"tunable age_ms=500\n");
        assert_eq!(
            said,
            ["busy: the memserver has not taken the earlier requests; age_ms=500 not sent"]
        );
        assert!(port.requests.is_empty());
        assert_eq!(s.sent, 0);
    }

    #[test]
    fn an_answer_that_does_not_decode_is_counted_not_trusted() {
        let mut s = Session::new();
        let mut port = Fake::default();
        assert!(s.answer(&[], &mut port).is_err());
        assert!(s.answer(&[0xff, 1, 2], &mut port).is_err());
        assert_eq!((s.answered, s.bad_answers), (0, 2));
        assert!(port.screen().contains("did not decode"));
    }
}
