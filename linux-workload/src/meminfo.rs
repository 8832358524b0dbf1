//! `/proc/meminfo`: the kernel's free memory, which the phase lines carry
//! so a run can tell the guest's own use from QEMU's.

/// `MemFree:` in KiB.
pub fn mem_free_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        l.strip_prefix("MemFree:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_free_is_read() {
        let m = "MemTotal:        1004784 kB\nMemFree:          912340 kB\nMemAvailable:     900000 kB\n";
        assert_eq!(mem_free_kib(m), Some(912340));
        assert_eq!(mem_free_kib("MemTotal: 1 kB\n"), None);
    }
}
