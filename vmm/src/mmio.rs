//! The VM's emulated windows: which device answers an access at a
//! guest-physical address. Everything the VM can reach is either mapped
//! (RAM, the console, the GIC's CPU interface) or in this table; an access
//! to anything else stops that VM with one line ([`Unemulated`]) while the
//! other PDs and VMs keep running.

use core::fmt;

/// A window of `size` bytes at `base` answered by device `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<Id> {
    pub base: u64,
    pub size: u64,
    pub id: Id,
}

/// Up to `N` windows, never overlapping.
#[derive(Debug, Clone)]
pub struct Table<Id, const N: usize> {
    windows: heapless::Vec<Window<Id>, N>,
}

/// A window that could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    Full,
    Empty,
    Overlap { base: u64 },
}

impl<Id: Copy, const N: usize> Default for Table<Id, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Id: Copy, const N: usize> Table<Id, N> {
    pub const fn new() -> Self {
        Table {
            windows: heapless::Vec::new(),
        }
    }

    /// Add `[base, base + size)` for `id`.
    pub fn add(&mut self, base: u64, size: u64, id: Id) -> Result<(), TableError> {
        let end = base
            .checked_add(size)
            .filter(|_| size > 0)
            .ok_or(TableError::Empty)?;
        if self
            .windows
            .iter()
            .any(|w| base < w.base + w.size && w.base < end)
        {
            return Err(TableError::Overlap { base });
        }
        self.windows
            .push(Window { base, size, id })
            .map_err(|_| TableError::Full)
    }

    /// The device at `addr` and the offset into its window.
    pub fn lookup(&self, addr: u64) -> Option<(Id, u64)> {
        self.windows
            .iter()
            .find(|w| addr >= w.base && addr - w.base < w.size)
            .map(|w| (w.id, addr - w.base))
    }
}

/// The line a VM's access to nothing emulated gets, once, as it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unemulated<'a> {
    pub vm: &'a str,
    pub addr: u64,
    pub pc: u64,
    pub esr: u64,
    pub write: Option<bool>,
}

impl fmt::Display for Unemulated<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.write {
            Some(true) => "write to",
            Some(false) => "read of",
            None => "access to",
        };
        write!(
            f,
            "VM '{}' stopped: {what} unemulated address {:#x} at pc {:#x} (ESR {:#x})",
            self.vm, self.addr, self.pc, self.esr
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_found_by_address_and_never_overlap() {
        let mut t: Table<u8, 4> = Table::new();
        t.add(0x0800_0000, 0x1_0000, 1).unwrap();
        t.add(0x0a00_0000, 0x200, 2).unwrap();
        assert_eq!(t.lookup(0x0800_0104), Some((1, 0x104)));
        assert_eq!(t.lookup(0x0a00_01ff), Some((2, 0x1ff)));
        assert_eq!(t.lookup(0x0a00_0200), None);
        assert_eq!(t.lookup(0x07ff_ffff), None);
        assert_eq!(
            t.add(0x0800_f000, 0x2000, 3),
            Err(TableError::Overlap { base: 0x0800_f000 })
        );
        assert_eq!(t.add(0x1000, 0, 3), Err(TableError::Empty));
        assert_eq!(t.add(u64::MAX, 2, 3), Err(TableError::Empty));
    }

    #[test]
    fn the_stop_line_names_address_pc_and_esr() {
        let line = Unemulated {
            vm: "linux",
            addr: 0x1234_0000,
            pc: 0x4000_000c,
            esr: 0x9200_0046,
            write: Some(true),
        }
        .to_string();
        assert_eq!(
            line,
            "VM 'linux' stopped: write to unemulated address 0x12340000 at pc 0x4000000c (ESR 0x92000046)"
        );
    }
}
