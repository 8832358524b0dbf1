//! The operator's session the QEMU tests type on the console PD's serial
//! line (seL4 and the bare platform), and its verdict: a tunable set, one
//! refused by the memserver, and two lines the console itself refuses,
//! which never reach the memserver.
//!
//! The session changes `delay_ms` from 2000 to 1500 in a run whose
//! verdict only gets easier for it; it is typed by the tests, not by
//! `tools qemu` or the benchmarks, whose figures it would move.

/// One line typed, and the PD line it must get.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub typed: &'static str,
    pub answer: &'static str,
}

/// The session, in order.
pub const EXCHANGES: [Exchange; 4] = [
    Exchange {
        typed: "tunable delay_ms=1500",
        answer: "MEMSERVER|INFO: control: tunable delay_ms=1500 set",
    },
    Exchange {
        typed: "tunable delay_ms=0",
        answer: "MEMSERVER|INFO: control: tunable delay_ms=0 refused: value out of range",
    },
    Exchange {
        typed: "tunable speed=1",
        answer: "CONSOLE|INFO: refused: unknown tunable 'speed'",
    },
    // An arrow key in the middle of a line: refused whole.
    Exchange {
        typed: "tunable delay_ms=1\x1b[A000",
        answer: "CONSOLE|INFO: refused: byte 0x1b is not printable ASCII",
    },
];

/// How many of [`EXCHANGES`] reach the memserver.
const TO_MEMSERVER: usize = 2;

/// The lines to type.
pub fn lines() -> Vec<String> {
    EXCHANGES.iter().map(|e| e.typed.to_string()).collect()
}

/// Whether the description (text) has a console PD.
pub fn has_console(description: &str) -> bool {
    sdf::System::parse(description).is_ok_and(|sys| {
        sys.pds
            .iter()
            .any(|p| p.program_image.as_deref() == Some("console.elf"))
    })
}

/// Every answer in the PD log, and no other request at the memserver.
pub fn verdict(log: &str) -> Result<String, String> {
    let segments: Vec<&str> = log.lines().flat_map(crate::qemu::segments).collect();
    for e in &EXCHANGES {
        if !segments.iter().any(|s| s.starts_with(e.answer)) {
            return Err(format!(
                "console: typed {:?}, never saw {:?}",
                e.typed, e.answer
            ));
        }
    }
    let at_memserver = segments
        .iter()
        .filter(|s| s.starts_with("MEMSERVER|INFO: control:"))
        .count();
    if at_memserver != TO_MEMSERVER {
        return Err(format!(
            "console: the memserver answered {at_memserver} requests, not {TO_MEMSERVER} (the console must refuse the rest)"
        ));
    }
    Ok(format!(
        "console: {} lines typed, each answered ({TO_MEMSERVER} by the memserver)",
        EXCHANGES.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_wants_every_answer_and_no_stray_request() {
        let all: String = EXCHANGES
            .iter()
            .map(|e| format!("{}\n", e.answer))
            .collect();
        assert!(verdict(&all).is_ok());
        // One missing.
        let short: String = EXCHANGES[1..]
            .iter()
            .map(|e| format!("{}\n", e.answer))
            .collect();
        assert!(verdict(&short).unwrap_err().contains("delay_ms=1500"));
        // A refused line that reached the memserver anyway.
        let extra = format!("{all}MEMSERVER|INFO: control: tunable speed=1 set\n");
        assert!(verdict(&extra).unwrap_err().contains("answered 3 requests"));
        // Lines run together on a debug kernel's console still count.
        let joined = format!("GUEST0|INFO: x {}", all.replace('\n', " "));
        assert!(verdict(&joined).is_ok(), "{joined}");
    }
}
