//! `linux-workload [mib=N] [hold_ms=N] [rounds=N]`: see the crate docs.
//! Parameters come from `/proc/cmdline` (`workload.mib=N`, ...) and argv.
//! After the last round it stays alive (the VM keeps running for the host
//! to measure), with a `phase=alive` line every 5 s; a bad parameter is a `phase=failed` line and exit status 2.

use linux_workload::line::{Level, line};
use linux_workload::{Os, Params, run};
use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use rustix::time::{ClockId, clock_gettime};
use std::io::Write;
use std::ptr::NonNull;
use std::time::Duration;

/// An anonymous private mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

struct Linux;

impl Os for Linux {
    type Region = Mapping;

    fn now_ms(&mut self) -> u64 {
        let t = clock_gettime(ClockId::Monotonic);
        t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
    }

    fn map(&mut self, bytes: usize) -> Result<Mapping, String> {
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let p = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                bytes,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .map_err(|e| e.to_string())?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Mapping { ptr, len: bytes })
    }

    fn bytes<'a>(&'a mut self, r: &'a mut Mapping) -> &'a mut [u8] {
        // SAFETY: the mapping is `len` readable and writable bytes, owned
        // by `r` until `unmap` consumes it; the borrow of `r` keeps it alive.
        unsafe { std::slice::from_raw_parts_mut(r.ptr.as_ptr(), r.len) }
    }

    fn unmap(&mut self, r: Mapping) -> Result<(), String> {
        // SAFETY: `r` is a live mapping of `len` bytes from `map`, consumed
        // here, so no slice of it outlives this call.
        unsafe { munmap(r.ptr.as_ptr().cast(), r.len) }.map_err(|e| e.to_string())
    }

    fn sleep_ms(&mut self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }

    fn mem_free_mib(&mut self) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        linux_workload::meminfo::mem_free_kib(&text).map(|k| k >> 10)
    }

    fn emit(&mut self, l: &str) {
        // The console is the point: a failed write has nowhere to go.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{l}");
        let _ = out.flush();
    }
}

fn main() -> std::process::ExitCode {
    let mut os = Linux;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let params = match Params::from_sources(&cmdline, &args) {
        Ok(p) => p,
        Err(e) => {
            let t = os.now_ms();
            os.emit(&line(
                Level::Error,
                format_args!("phase=failed reason=\"parameters: {e}\""),
                t,
            ));
            return std::process::ExitCode::from(2);
        }
    };
    // A failure already printed its `phase=failed` line; stay alive either
    // way, so the VM and its console remain for the host to read.
    let _ = run(&params, &mut os);
    linux_workload::run::stay_alive(&mut os, 5000, None);
    std::process::ExitCode::SUCCESS
}
