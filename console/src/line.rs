//! The line editor: bytes from the UART to whole lines, with what to echo.
//!
//! A line ends at CR or LF (a terminal sends CR, a pipe LF; CR LF counts
//! once). Backspace and DEL erase the last character. Printable ASCII (and
//! tab, kept as a space) is taken up to [`LINE_MAX`] bytes; a longer line,
//! or one with any other byte (an escape sequence, a byte of UTF-8, noise),
//! is refused whole when it ends: a command is never run from part of a
//! line.

/// The longest line taken (`tunable watermark_pages=` and a 20-digit value
/// fit with room to spare).
pub const LINE_MAX: usize = 96;

/// Why a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// More than [`LINE_MAX`] bytes.
    TooLong,
    /// A byte that is not printable ASCII (its first such byte).
    NotText(u8),
}

impl core::fmt::Display for LineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLong => write!(f, "line longer than {LINE_MAX} bytes"),
            Self::NotText(b) => write!(f, "byte {b:#04x} is not printable ASCII"),
        }
    }
}

/// What one byte did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// Taken: echo it.
    Echo(u8),
    /// The last character was erased: erase it on the terminal.
    Erase,
    /// The line ended: the line, or why it is refused.
    Line(Result<&'a str, LineError>),
    /// Nothing to show (an erase at the start of a line, the LF of CR LF,
    /// a byte of a line already refused).
    Nothing,
}

/// The line being typed.
#[derive(Debug, Clone)]
pub struct LineEditor {
    buf: [u8; LINE_MAX],
    len: usize,
    refused: Option<LineError>,
    after_cr: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    pub const fn new() -> Self {
        LineEditor {
            buf: [0; LINE_MAX],
            len: 0,
            refused: None,
            after_cr: false,
        }
    }

    /// Take one byte.
    pub fn push(&mut self, b: u8) -> Key<'_> {
        let after_cr = core::mem::replace(&mut self.after_cr, b == b'\r');
        match b {
            b'\n' if after_cr => Key::Nothing,
            b'\r' | b'\n' => {
                let len = core::mem::take(&mut self.len);
                match self.refused.take() {
                    Some(e) => Key::Line(Err(e)),
                    // Only printable ASCII was stored.
                    None => Key::Line(
                        core::str::from_utf8(&self.buf[..len]).map_err(|_| LineError::NotText(0)),
                    ),
                }
            }
            0x08 | 0x7f => {
                if self.refused.is_none() && self.len > 0 {
                    self.len -= 1;
                    Key::Erase
                } else {
                    Key::Nothing
                }
            }
            b'\t' | 0x20..=0x7e => {
                if self.refused.is_some() {
                    return Key::Nothing;
                }
                if self.len == LINE_MAX {
                    self.refused = Some(LineError::TooLong);
                    return Key::Nothing;
                }
                let b = if b == b'\t' { b' ' } else { b };
                self.buf[self.len] = b;
                self.len += 1;
                Key::Echo(b)
            }
            other => {
                if self.refused.is_none() {
                    self.refused = Some(LineError::NotText(other));
                }
                Key::Nothing
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::String;
    use std::vec::Vec;

    /// Every line `bytes` ends, as owned results.
    fn lines(bytes: &[u8]) -> Vec<Result<String, LineError>> {
        let mut ed = LineEditor::new();
        let mut out = Vec::new();
        for &b in bytes {
            if let Key::Line(l) = ed.push(b) {
                out.push(l.map(String::from));
            }
        }
        out
    }

    #[test]
    fn cr_lf_and_crlf_each_end_one_line() {
        assert_eq!(
            lines(b"help\rtunable a=1\nx\r\n\r\n"),
            [
                Ok("help".into()),
                Ok("tunable a=1".into()),
                Ok("x".into()),
                Ok(String::new())
            ]
        );
    }

    #[test]
    fn erase_takes_back_the_last_character_and_says_so() {
        let mut ed = LineEditor::new();
        assert_eq!(ed.push(0x7f), Key::Nothing, "nothing to erase");
        assert_eq!(ed.push(b'a'), Key::Echo(b'a'));
        assert_eq!(ed.push(b'b'), Key::Echo(b'b'));
        assert_eq!(ed.push(0x08), Key::Erase);
        assert_eq!(ed.push(b'c'), Key::Echo(b'c'));
        assert_eq!(ed.push(b'\r'), Key::Line(Ok("ac")));
    }

    #[test]
    fn a_line_with_a_control_byte_is_refused_whole_and_the_next_is_clean() {
        // An arrow key: ESC [ A.
        assert_eq!(
            lines(b"tunable delay_ms=2\x1b[A50\nhelp\n"),
            [Err(LineError::NotText(0x1b)), Ok("help".into())]
        );
        assert_eq!(lines(b"\xc3\xa9\n"), [Err(LineError::NotText(0xc3))]);
    }

    #[test]
    fn a_line_longer_than_the_buffer_is_refused_not_cut() {
        let mut long = [b'x'; LINE_MAX + 1].to_vec();
        long.push(b'\n');
        long.extend_from_slice(b"help\n");
        assert_eq!(lines(&long), [Err(LineError::TooLong), Ok("help".into())]);
        let mut exact = [b'y'; LINE_MAX].to_vec();
        exact.push(b'\n');
        assert_eq!(lines(&exact), [Ok("y".repeat(LINE_MAX))]);
    }

    proptest! {
        /// Any bytes: no panic, every line taken is printable ASCII within
        /// the bound, and a line of only printable bytes comes back as typed.
        #[test]
        fn any_bytes_give_bounded_printable_lines(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            for l in lines(&bytes).into_iter().flatten() {
                prop_assert!(l.len() <= LINE_MAX);
                prop_assert!(l.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            }
        }

        #[test]
        fn printable_text_comes_back_as_typed(text in "[ -~]{0,96}") {
            let mut bytes = text.clone().into_bytes();
            bytes.push(b'\n');
            prop_assert_eq!(lines(&bytes), [Ok(text)]);
        }
    }
}
