//! Debug console output and a tiny log prefix helper.

use core::fmt;

/// Write bytes to the debug console (seL4 DebugPutChar, or stdout on the host).
pub fn debug_write(bytes: &[u8]) {
    crate::sys::put_bytes(bytes)
}

#[doc(hidden)]
pub fn print_fmt(args: fmt::Arguments<'_>) {
    crate::sys::print_fmt(args)
}

/// Print to the debug console, like `print!`.
#[macro_export]
macro_rules! debug_print {
    ($($arg:tt)*) => { $crate::__debug_print_fmt(::core::format_args!($($arg)*)) };
}

/// Print a line to the debug console, like `println!`.
#[macro_export]
macro_rules! debug_println {
    () => { $crate::debug_print!("\n") };
    ($($arg:tt)*) => { $crate::__debug_print_fmt(::core::format_args!("{}\n", ::core::format_args!($($arg)*))) };
}

/// Log lines prefixed with the component and level: `MEMSERVER|INFO: ...`
/// (the sDDF convention). `const LOG: pd::Log = pd::Log::new("MEMSERVER");`
#[derive(Debug, Clone, Copy)]
pub struct Log {
    prefix: &'static str,
}

impl Log {
    pub const fn new(prefix: &'static str) -> Self {
        Log { prefix }
    }
    pub fn info(&self, args: fmt::Arguments<'_>) {
        print_fmt(format_args!("{}|INFO: {}\n", self.prefix, args))
    }
    pub fn warn(&self, args: fmt::Arguments<'_>) {
        print_fmt(format_args!("{}|WARN: {}\n", self.prefix, args))
    }
    pub fn error(&self, args: fmt::Arguments<'_>) {
        print_fmt(format_args!("{}|ERROR: {}\n", self.prefix, args))
    }
}
