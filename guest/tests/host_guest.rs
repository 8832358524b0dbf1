//! The guest binary on the host platform, started as `guest1` with this test
//! as its launcher, its memserver (the rings in shared memfds, a first-fit
//! allocator) and its timer (PPC over the socket): the binary finds guest1's
//! layout by name, reads `GUEST1_PARAMS`, runs a workload to `phase=done`, and
//! leaves exactly its live set allocated.

use memserver_api::{
    Block, ClientError, ClientRequest, ClientResponse, Response, SLOT_SIZE, decode_request, encode,
};
use pd::host::{CONFIG_ENV, HostChannel, HostConfig, HostRegion};
use pd_ring::{Consumer, Producer};
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::fs::{MemfdFlags, ftruncate, memfd_create};
use rustix::mm::{MapFlags, ProtFlags, mmap};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const RAM: u64 = 16 << 20;
const RAM_PADDR: u64 = 0x4000_0000;
const RING: u64 = 0x10000;

fn memfd(name: &str, size: u64) -> OwnedFd {
    // No CLOEXEC: the child inherits it, as the launcher arranges.
    let fd = memfd_create(name, MemfdFlags::empty()).unwrap();
    ftruncate(&fd, size).unwrap();
    fd
}

fn map(fd: &OwnedFd, size: u64) -> *mut u8 {
    // SAFETY: a new shared mapping of our own memfd; it aliases nothing in
    // this process and is only accessed through raw pointers and the rings.
    unsafe {
        mmap(
            std::ptr::null_mut(),
            size as usize,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            0,
        )
    }
    .unwrap()
    .cast()
}

fn efd() -> OwnedFd {
    eventfd(0, EventfdFlags::NONBLOCK).unwrap()
}

fn signal(fd: &OwnedFd) {
    rustix::io::write(fd, &1u64.to_ne_bytes()).unwrap();
}

struct Guest {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Peer {
    guest: Guest,
    ram: *mut u8,
    req: Consumer<'static>,
    resp: Producer<'static>,
    /// Guest -> memserver notifications.
    from_guest: OwnedFd,
    /// Memserver -> guest, timer -> guest.
    to_guest_ms: OwnedFd,
    to_guest_timer: OwnedFd,
    ppc: OwnedFd,
    used: Vec<bool>,
    heads: Vec<Option<u8>>,
    _keep: Vec<OwnedFd>,
}

fn start(params: &str) -> Peer {
    let (ram_fd, req_fd, resp_fd) = (
        memfd("guest1_ram", RAM),
        memfd("guest1_req", RING),
        memfd("guest1_resp", RING),
    );
    let (ms_in, ms_out, timer_in) = (efd(), efd(), efd());
    let (ppc, ppc_guest) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::empty(),
        None,
    )
    .unwrap();
    let region = |name: &str, fd: &OwnedFd, size: u64, paddr: u64| HostRegion {
        name: name.into(),
        fd: fd.as_raw_fd(),
        size,
        writable: true,
        paddr,
    };
    let cfg = HostConfig {
        name: "guest1".into(),
        regions: vec![
            region("guest1_ram", &ram_fd, RAM, RAM_PADDR),
            region("guest1_req", &req_fd, RING, 0x1000_0000),
            region("guest1_resp", &resp_fd, RING, 0x1001_0000),
        ],
        paddrs: vec![("guest1_ram".into(), RAM_PADDR)],
        channels: vec![
            HostChannel {
                id: 0,
                input: ms_in.as_raw_fd(),
                output: Some(ms_out.as_raw_fd()),
            },
            HostChannel {
                id: 1,
                input: timer_in.as_raw_fd(),
                output: None,
            },
        ],
        ppc_out: vec![(1, ppc_guest.as_raw_fd())],
        ..HostConfig::default()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_guest"))
        .env(CONFIG_ENV, cfg.encode())
        .env("GUEST1_PARAMS", params)
        .env("GUEST_PARAMS", "pattern=nonsense")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let ram = map(&ram_fd, RAM);
    let (req_p, resp_p) = (map(&req_fd, RING), map(&resp_fd, RING));
    // SAFETY: both mappings stay for the life of the test process (never
    // unmapped) and are accessed only through these handles.
    let req = unsafe { Consumer::from_raw(req_p, RING as usize, SLOT_SIZE) }.unwrap();
    // SAFETY: as above.
    let resp = unsafe { Producer::from_raw(resp_p, RING as usize, SLOT_SIZE) }.unwrap();
    let pages = (RAM / 4096) as usize;
    Peer {
        guest: Guest { child, lines },
        ram,
        req,
        resp,
        from_guest: ms_out,
        to_guest_ms: ms_in,
        to_guest_timer: timer_in,
        ppc,
        used: vec![false; pages],
        heads: vec![None; pages],
        _keep: vec![ram_fd, req_fd, resp_fd, ppc_guest],
    }
}

fn now_ns() -> u64 {
    timer::clock::host::monotonic_ns()
}

impl Peer {
    fn alloc(&mut self, order: u8) -> ClientResponse {
        let n = 1usize << order;
        let mut i = 0;
        while i + n <= self.used.len() {
            if self.used[i..i + n].iter().all(|u| !u) {
                self.used[i..i + n].fill(true);
                self.heads[i] = Some(order);
                return ClientResponse::Allocated(Block {
                    pfn: RAM_PADDR / 4096 + i as u64,
                    order,
                });
            }
            i += n;
        }
        ClientResponse::Error(ClientError::NoMemory)
    }

    fn free(&mut self, b: Block) -> bool {
        let Some(i) = b
            .pfn
            .checked_sub(RAM_PADDR / 4096)
            .map(|i| i as usize)
            .filter(|i| *i < self.used.len())
        else {
            return false;
        };
        if self.heads[i] != Some(b.order) {
            return false;
        }
        self.heads[i] = None;
        self.used[i..i + (1 << b.order)].fill(false);
        // Discard, as the host would: the page reads back as zeros.
        // SAFETY: pages i.. of our RAM mapping (checked in range above).
        unsafe { std::ptr::write_bytes(self.ram.wrapping_add(i * 4096), 0, 4096 << b.order) };
        true
    }

    /// Serve the request ring (memserver side of pd-ring's protocol).
    fn serve(&mut self) {
        let mut buf = [0u8; SLOT_SIZE];
        loop {
            let Some(n) = self.req.pop(&mut buf).unwrap() else {
                self.req.request_signal();
                if self.req.is_empty().unwrap() {
                    break;
                }
                continue;
            };
            let r = decode_request(&buf[..n]).unwrap();
            let body = match r.body {
                ClientRequest::Alloc { order } => self.alloc(order),
                ClientRequest::FreeBatch(bs) => {
                    let ok = bs.iter().filter(|b| self.free(**b)).count();
                    assert_eq!(ok, bs.len(), "the guest freed only blocks it owned");
                    ClientResponse::Freed { count: ok as u16 }
                }
                other => panic!("unexpected request {other:?}"),
            };
            let mut out = [0u8; SLOT_SIZE];
            self.resp
                .push(
                    encode(
                        &Response {
                            tag: Some(r.tag),
                            body,
                        },
                        &mut out,
                    )
                    .unwrap(),
                )
                .unwrap();
        }
        if self.resp.needs_notify() {
            signal(&self.to_guest_ms);
        }
    }

    /// Run until a console line contains `until` (bounded); all lines.
    fn run_until(&mut self, until: &str, limit: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut lines = Vec::new();
        let mut timer_deadline: Option<u64> = None;
        while start.elapsed() < limit {
            while let Ok(l) = self.guest.lines.try_recv() {
                let done = l.contains(until);
                lines.push(l);
                if done {
                    return lines;
                }
            }
            let wait_ms = timer_deadline.map_or(20, |d| {
                d.saturating_sub(now_ns()).div_ceil(1_000_000).min(20)
            });
            let ts = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: wait_ms as i64 * 1_000_000,
            };
            let mut fds = [
                PollFd::new(&self.ppc, PollFlags::IN),
                PollFd::new(&self.from_guest, PollFlags::IN),
            ];
            poll(&mut fds, Some(&ts)).unwrap();
            let (ppc_ready, ms_ready) =
                (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
            if ppc_ready {
                let mut buf = [0u8; 8 * 121];
                let n = rustix::io::read(&self.ppc, &mut buf).unwrap();
                let w: Vec<u64> = buf[..n]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                let reply: Vec<u64> = match w[0] >> 12 {
                    timer::GET_TIME => vec![1, now_ns()],
                    timer::SET_TIMEOUT => {
                        timer_deadline = Some(now_ns() + w[1]);
                        vec![0]
                    }
                    _ => vec![1 << 12],
                };
                let bytes: Vec<u8> = reply.iter().flat_map(|x| x.to_le_bytes()).collect();
                rustix::io::write(&self.ppc, &bytes).unwrap();
            }
            if ms_ready {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&self.from_guest, &mut b);
            }
            self.serve();
            if timer_deadline.is_some_and(|d| now_ns() >= d) {
                timer_deadline = None;
                signal(&self.to_guest_timer);
            }
        }
        panic!("no line containing '{until}' within {limit:?}; got {lines:#?}");
    }
}

#[test]
fn guest1_runs_its_workload_to_the_end() {
    let mut p = start("pattern=fragmented,mib=4,live_mib=1,hold_ms=50");
    let lines = p.run_until("phase=done", Duration::from_secs(30));
    let phases: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("GUEST1|INFO: phase="))
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(
        phases,
        [
            "start",
            "live_touched",
            "touched",
            "held",
            "freed_half",
            "held",
            "freed",
            "held",
            "verified",
            "done"
        ],
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains("|ERROR")), "{lines:#?}");
    assert!(
        lines[0].contains("pattern=fragmented,mib=4") && lines[0].contains("ram_mib=16"),
        "{}",
        lines[0]
    );
    // Only the live set (1 MiB) is still allocated, and it holds the pattern.
    assert_eq!(p.used.iter().filter(|u| **u).count(), 256);
    let first = p.heads.iter().position(Option::is_some).unwrap();
    // SAFETY: page `first` of our RAM mapping.
    let word = unsafe {
        p.ram
            .wrapping_add(first * 4096)
            .cast::<u64>()
            .read_volatile()
    };
    assert_eq!(
        word,
        guest::ram::pattern(RAM_PADDR / 4096 + first as u64, 0)
    );
}

#[test]
fn bad_params_are_reported_at_start() {
    let mut p = start("pattern=bulk,mib=64");
    let lines = p.run_until("phase=failed", Duration::from_secs(10));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("GUEST1|ERROR: bad parameters")
                && l.contains("does not fit the guest's 16 MiB")),
        "{lines:#?}"
    );
    assert_eq!(
        p.used.iter().filter(|u| **u).count(),
        0,
        "nothing allocated"
    );
}
