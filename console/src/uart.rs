//! The two UARTs the console drives, each over a small register trait so
//! the drivers run against a model in the tests.
//!
//! - [`Pl011`]: ARM's PL011 (qemu_virt_aarch64: 0x0900_0000, SPI 1 = GIC
//!   33, level). The receive and receive-timeout interrupts are enabled;
//!   the line stays high while the FIFO holds bytes, so draining it is the
//!   acknowledgement.
//! - [`Ns16550`]: the PC's COM1 (ports 0x3f8..0x400, ISA IRQ 4, edge). The
//!   "data available" interrupt is enabled, and OUT2, which gates the
//!   line on a PC.
//!
//! Transmission waits for room a bounded number of polls: a UART that
//! never drains costs bytes ([`Uart::dropped`]), never the PD.

pub mod ns16550;
pub mod pl011;

pub use ns16550::Ns16550;
pub use pl011::Pl011;

/// How many times a driver polls for room before it drops a byte.
pub const TX_POLLS: u32 = 1 << 20;

/// Poll `ready` up to [`TX_POLLS`] times; whether it said yes.
pub(crate) fn poll_until(mut ready: impl FnMut() -> bool) -> bool {
    (0..TX_POLLS).any(|_| ready())
}

/// What the console needs of a UART.
pub trait Uart {
    /// Enable the receiver and its interrupt.
    fn init(&mut self);
    /// The next received byte, if any; a byte received with an error
    /// (framing, parity, break, overrun) is dropped and counted.
    fn read(&mut self) -> Option<u8>;
    /// Send one byte.
    fn write(&mut self, b: u8);
    /// Bytes dropped: received with an error, or not sent for want of room.
    fn dropped(&self) -> u64;
}

/// 32-bit registers at byte offsets (MMIO).
pub trait Regs32 {
    fn read(&mut self, offset: usize) -> u32;
    fn write(&mut self, offset: usize, value: u32);
}

/// 8-bit registers at port offsets (x86 port I/O).
pub trait Regs8 {
    fn read(&mut self, offset: u16) -> u8;
    fn write(&mut self, offset: u16, value: u8);
}
