//! The console PD's core against any bytes typed on the serial line and
//! any bytes in the memserver's answer ring: no panic; every request it
//! queues is one a line asked for (`tunable KEY=VALUE`, which parses back
//! to the same request); everything it writes to the terminal is bounded
//! by what it was given.
#![no_main]

use console::session::{Port, Session};
use libfuzzer_sys::fuzz_target;
use memserver_api::FromControl;

#[derive(Default)]
struct Recorder {
    written: usize,
    requests: Vec<FromControl>,
    room: bool,
}

impl Port for Recorder {
    fn write(&mut self, bytes: &[u8]) {
        self.written += bytes.len();
    }
    fn request(&mut self, msg: &FromControl) -> bool {
        if self.room {
            self.requests.push(*msg);
        }
        self.room
    }
}

fuzz_target!(|input: (Vec<u8>, Vec<Vec<u8>>, bool)| {
    let (typed, answers, room) = input;
    let mut s = Session::new();
    let mut port = Recorder {
        room,
        ..Recorder::default()
    };
    let lines = typed.iter().filter(|&&b| b == b'\r' || b == b'\n').count();
    for &b in &typed {
        let _ = s.byte(b, &mut port);
    }
    assert!(port.requests.len() <= lines);
    assert_eq!(s.sent as usize, port.requests.len());
    for a in &answers {
        let _ = s.answer(a, &mut port);
    }
    assert_eq!(s.answered + s.bad_answers, answers.len() as u64);
    // Echo, erase and a reply per line: bounded by the input, whatever it is.
    assert!(port.written <= 8 * typed.len() + 512 * (lines + answers.len()) + 1024);
});
