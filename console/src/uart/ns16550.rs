//! The PC's 16550 UART (COM1), as QEMU's pc machine has it.

use super::{Regs8, Uart, poll_until};

/// Receive buffer (read) / transmit holding (write).
const DATA: u16 = 0;
/// Interrupt enable.
const IER: u16 = 1;
const IER_RX: u8 = 1 << 0;
/// FIFO control (write).
const FCR: u16 = 2;
/// Enable and clear both FIFOs.
const FCR_ON: u8 = 0x07;
/// Modem control: DTR, RTS and OUT2 (which gates the IRQ line on a PC).
const MCR: u16 = 4;
const MCR_ON: u8 = 0x0b;
/// Line status.
const LSR: u16 = 5;
const LSR_DR: u8 = 1 << 0;
/// Overrun, parity, framing, break.
const LSR_ERRORS: u8 = 0x1e;
const LSR_THRE: u8 = 1 << 5;

/// A 16550 over its ports.
#[derive(Debug)]
pub struct Ns16550<R> {
    regs: R,
    dropped: u64,
}

impl<R: Regs8> Ns16550<R> {
    pub fn new(regs: R) -> Self {
        Ns16550 { regs, dropped: 0 }
    }
}

impl<R: Regs8> Uart for Ns16550<R> {
    fn init(&mut self) {
        // The line's speed and format stay as the firmware set them (the
        // kernel's debug output uses them).
        self.regs.write(FCR, FCR_ON);
        self.regs.write(MCR, MCR_ON);
        self.regs.write(IER, IER_RX);
    }

    fn read(&mut self) -> Option<u8> {
        loop {
            let lsr = self.regs.read(LSR);
            if lsr & LSR_DR == 0 {
                return None;
            }
            let b = self.regs.read(DATA);
            if lsr & LSR_ERRORS == 0 {
                return Some(b);
            }
            self.dropped += 1;
        }
    }

    fn write(&mut self, b: u8) {
        if poll_until(|| self.regs.read(LSR) & LSR_THRE != 0) {
            self.regs.write(DATA, b);
        } else {
            self.dropped += 1;
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::vec::Vec;

    /// Received bytes with the line status each arrives with.
    #[derive(Default)]
    struct Model {
        rx: VecDeque<(u8, u8)>,
        tx: Vec<u8>,
        writes: Vec<(u16, u8)>,
        busy: bool,
    }

    impl Regs8 for &mut Model {
        fn read(&mut self, offset: u16) -> u8 {
            match offset {
                LSR => {
                    let thre = if self.busy { 0 } else { LSR_THRE };
                    self.rx.front().map_or(thre, |&(_, st)| st | LSR_DR | thre)
                }
                DATA => self.rx.pop_front().map_or(0, |(b, _)| b),
                _ => 0,
            }
        }
        fn write(&mut self, offset: u16, value: u8) {
            if offset == DATA {
                self.tx.push(value);
            } else {
                self.writes.push((offset, value));
            }
        }
    }

    #[test]
    fn init_turns_on_the_fifo_out2_and_the_receive_interrupt() {
        let mut m = Model::default();
        Ns16550::new(&mut m).init();
        assert_eq!(m.writes, [(FCR, FCR_ON), (MCR, MCR_ON), (IER, IER_RX)]);
    }

    #[test]
    fn a_byte_with_a_line_error_is_dropped_and_counted() {
        let mut m = Model {
            rx: [(b'a', 0), (b'?', 0x08), (b'b', 0)].into(),
            ..Model::default()
        };
        let mut u = Ns16550::new(&mut m);
        assert_eq!(
            [u.read(), u.read(), u.read()],
            [Some(b'a'), Some(b'b'), None]
        );
        assert_eq!(u.dropped(), 1);
    }

    #[test]
    fn a_transmitter_that_never_empties_costs_the_byte() {
        let mut m = Model {
            busy: true,
            ..Model::default()
        };
        let mut u = Ns16550::new(&mut m);
        u.write(b'x');
        assert_eq!(u.dropped(), 1);
        m.busy = false;
        Ns16550::new(&mut m).write(b'y');
        assert_eq!(m.tx, b"y");
    }
}
