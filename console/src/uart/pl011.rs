//! ARM PrimeCell UART (PL011), as QEMU's virt board has it (ARM DDI 0183).

use super::{Regs32, Uart, poll_until};

/// Data register: the byte in bits 0..8, receive errors in 8..12.
const DR: usize = 0x00;
/// Flag register.
const FR: usize = 0x18;
const FR_RXFE: u32 = 1 << 4;
const FR_TXFF: u32 = 1 << 5;
/// Control register.
const CR: usize = 0x30;
const CR_UARTEN: u32 = 1 << 0;
const CR_TXE: u32 = 1 << 8;
const CR_RXE: u32 = 1 << 9;
/// Interrupt mask set/clear.
const IMSC: usize = 0x38;
/// Interrupt clear.
const ICR: usize = 0x44;
/// Receive, receive timeout.
const RX_INTS: u32 = (1 << 4) | (1 << 6);
/// Framing, parity, break, overrun.
const DR_ERRORS: u32 = 0xf00;

/// A PL011 over its registers.
#[derive(Debug)]
pub struct Pl011<R> {
    regs: R,
    dropped: u64,
}

impl<R: Regs32> Pl011<R> {
    pub fn new(regs: R) -> Self {
        Pl011 { regs, dropped: 0 }
    }
}

impl<R: Regs32> Uart for Pl011<R> {
    fn init(&mut self) {
        // The kernel's debug output may already use the transmitter: only
        // bits are added, none cleared.
        let cr = self.regs.read(CR);
        self.regs.write(CR, cr | CR_UARTEN | CR_TXE | CR_RXE);
        self.regs.write(ICR, RX_INTS);
        let imsc = self.regs.read(IMSC);
        self.regs.write(IMSC, imsc | RX_INTS);
    }

    fn read(&mut self) -> Option<u8> {
        loop {
            if self.regs.read(FR) & FR_RXFE != 0 {
                return None;
            }
            let dr = self.regs.read(DR);
            if dr & DR_ERRORS == 0 {
                return Some(dr as u8);
            }
            self.dropped += 1;
        }
    }

    fn write(&mut self, b: u8) {
        if poll_until(|| self.regs.read(FR) & FR_TXFF == 0) {
            self.regs.write(DR, u32::from(b));
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

    /// The registers the driver touches, with a receive FIFO behind DR.
    #[derive(Default)]
    struct Model {
        rx: VecDeque<u32>,
        tx: Vec<u8>,
        cr: u32,
        imsc: u32,
        tx_full: bool,
    }

    impl Regs32 for &mut Model {
        fn read(&mut self, offset: usize) -> u32 {
            match offset {
                FR => {
                    (if self.rx.is_empty() { FR_RXFE } else { 0 })
                        | (if self.tx_full { FR_TXFF } else { 0 })
                }
                DR => self.rx.pop_front().unwrap_or(0),
                CR => self.cr,
                IMSC => self.imsc,
                _ => 0,
            }
        }
        fn write(&mut self, offset: usize, value: u32) {
            match offset {
                DR => self.tx.push(value as u8),
                CR => self.cr = value,
                IMSC => self.imsc = value,
                _ => {}
            }
        }
    }

    #[test]
    fn init_enables_the_receiver_and_keeps_what_was_on() {
        let mut m = Model {
            cr: CR_TXE | (1 << 11),
            ..Model::default()
        };
        Pl011::new(&mut m).init();
        assert_eq!(m.cr, CR_TXE | (1 << 11) | CR_UARTEN | CR_RXE);
        assert_eq!(m.imsc, RX_INTS);
    }

    #[test]
    fn bytes_with_a_receive_error_are_dropped_and_counted() {
        let mut m = Model {
            rx: [b'a'.into(), 0x100 | u32::from(b'x'), b'b'.into()].into(),
            ..Model::default()
        };
        let mut u = Pl011::new(&mut m);
        assert_eq!(u.read(), Some(b'a'));
        assert_eq!(u.read(), Some(b'b'));
        assert_eq!(u.read(), None);
        assert_eq!(u.dropped(), 1);
    }

    #[test]
    fn a_transmitter_that_never_drains_costs_the_byte_not_the_pd() {
        let mut m = Model {
            tx_full: true,
            ..Model::default()
        };
        let mut u = Pl011::new(&mut m);
        u.write(b'x');
        assert_eq!(u.dropped(), 1);
        m.tx_full = false;
        Pl011::new(&mut m).write(b'y');
        assert_eq!(m.tx, b"y");
    }
}
