//! The timer PD binary on the host platform, with this test as its launcher
//! and its client: the PPC protocol over the real socket, the clock thread
//! raising the real IRQ eventfd, the notification arriving on the client's
//! eventfd, and the IRQ acknowledged.

use pd::host::{CONFIG_ENV, HostChannel, HostConfig, HostIrq};
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
use std::process::{Child, Command, Stdio};
use timer::clock::host::monotonic_ns;
use timer::protocol::{CANCEL, GET_TIME, SET_TIMEOUT};

/// The client's channel id at the timer (guest0's in system.xml).
const CLIENT: u64 = 2;

struct Pd {
    child: Child,
    ppc: OwnedFd,
    notified: OwnedFd,
    irq_ack: OwnedFd,
    // Kept open for the child's lifetime.
    _keep: Vec<OwnedFd>,
}

impl Drop for Pd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn inheritable_eventfd() -> OwnedFd {
    // No CLOEXEC: the child inherits it, as the launcher arranges.
    eventfd(0, EventfdFlags::NONBLOCK).unwrap()
}

fn start() -> Pd {
    let (ppc, ppc_timer) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::empty(),
        None,
    )
    .unwrap();
    let (timer_in, notified) = (inheritable_eventfd(), inheritable_eventfd());
    let (irq_raise, irq_ack) = (inheritable_eventfd(), inheritable_eventfd());
    let cfg = HostConfig {
        name: "timer".into(),
        channels: vec![HostChannel {
            id: CLIENT,
            input: timer_in.as_raw_fd(),
            output: Some(notified.as_raw_fd()),
        }],
        ppc_in: vec![(CLIENT, ppc_timer.as_raw_fd())],
        irqs: vec![HostIrq {
            id: 0,
            raise: irq_raise.as_raw_fd(),
            ack: irq_ack.as_raw_fd(),
        }],
        ..HostConfig::default()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_timer"))
        .env(CONFIG_ENV, cfg.encode())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Pd {
        child,
        ppc,
        notified,
        irq_ack,
        _keep: vec![ppc_timer, timer_in, irq_raise],
    }
}

impl Pd {
    /// One PPC: `[info, mrs..]` out, the reply back (bounded wait).
    fn call(&self, label: u64, mrs: &[u64]) -> (u64, Vec<u64>) {
        let mut pkt = ((label << 12) | mrs.len() as u64).to_le_bytes().to_vec();
        for m in mrs {
            pkt.extend_from_slice(&m.to_le_bytes());
        }
        rustix::io::write(&self.ppc, &pkt).unwrap();
        assert!(wait_readable(&self.ppc, 5_000), "no reply within 5 s");
        let mut buf = [0u8; 8 * 121];
        let n = rustix::io::read(&self.ppc, &mut buf).unwrap();
        let words: Vec<u64> = buf[..n]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let info = words[0];
        assert_eq!(
            (info & 0x7f) as usize,
            words.len() - 1,
            "reply length matches its count"
        );
        (info >> 12, words[1..].to_vec())
    }

    fn get_time(&self) -> u64 {
        let (label, mrs) = self.call(GET_TIME, &[]);
        assert_eq!((label, mrs.len()), (0, 1));
        mrs[0]
    }

    /// Whether the timer notified us within `ms` (and consume it).
    fn notified_within(&self, ms: i32) -> bool {
        if !wait_readable(&self.notified, ms) {
            return false;
        }
        let mut b = [0u8; 8];
        rustix::io::read(&self.notified, &mut b).unwrap();
        true
    }
}

fn wait_readable(fd: &OwnedFd, ms: i32) -> bool {
    let mut p = [PollFd::new(fd, PollFlags::IN)];
    let ts = rustix::time::Timespec {
        tv_sec: i64::from(ms / 1000),
        tv_nsec: i64::from(ms % 1000) * 1_000_000,
    };
    matches!(poll(&mut p, Some(&ts)), Ok(n) if n > 0)
}

#[test]
fn timer_pd_serves_calls_and_fires() {
    let pd = start();
    let before = monotonic_ns();
    let t0 = pd.get_time();
    assert!(
        t0 >= before && t0 <= monotonic_ns(),
        "GET_TIME is CLOCK_MONOTONIC"
    );

    let (label, mrs) = pd.call(SET_TIMEOUT, &[50_000_000]);
    assert_eq!((label, mrs.len()), (0, 0));
    assert!(pd.notified_within(5_000), "no notification within 5 s");
    let t1 = pd.get_time();
    assert!(
        t1 >= t0 + 50_000_000,
        "notified early: {} ns after",
        t1 - t0
    );
    // The clock thread raised the IRQ; the PD acknowledged it.
    let mut b = [0u8; 8];
    rustix::io::read(pd.irq_ack.as_fd(), &mut b).unwrap();
    assert!(u64::from_ne_bytes(b) >= 1);

    // Bad calls get an error label and change nothing.
    assert_ne!(pd.call(SET_TIMEOUT, &[]).0, 0);
    assert_ne!(pd.call(9, &[1, 2]).0, 0);
    assert_ne!(pd.call(GET_TIME, &[7]).0, 0);

    // A long timeout, cancelled: it was pending, and nothing fires.
    assert_eq!(pd.call(SET_TIMEOUT, &[10_000_000_000]), (0, vec![]));
    assert_eq!(pd.call(CANCEL, &[]), (0, vec![1]));
    assert_eq!(pd.call(CANCEL, &[]), (0, vec![0]));
    assert!(!pd.notified_within(100));

    // Replacing: a 10 s timeout replaced by 20 ms fires at 20 ms.
    pd.call(SET_TIMEOUT, &[10_000_000_000]);
    let t2 = pd.get_time();
    pd.call(SET_TIMEOUT, &[20_000_000]);
    assert!(pd.notified_within(5_000));
    let t3 = pd.get_time();
    assert!(t3 >= t2 + 20_000_000 && t3 < t2 + 5_000_000_000);
}

/// Never early, and how late: prints the lateness of 1 ms timeouts on this
/// machine (clock thread wake-up + eventfd + poll + notify + our poll).
#[test]
fn short_timeouts_are_never_early() {
    let pd = start();
    let mut late = Vec::new();
    for _ in 0..20 {
        let t0 = pd.get_time();
        pd.call(SET_TIMEOUT, &[1_000_000]);
        assert!(pd.notified_within(5_000));
        let t1 = pd.get_time();
        assert!(t1 >= t0 + 1_000_000, "early by {} ns", t0 + 1_000_000 - t1);
        late.push(t1 - t0 - 1_000_000);
    }
    late.sort_unstable();
    eprintln!(
        "1 ms timeouts on the host platform: late by median {} us, max {} us",
        late[10] / 1000,
        late[19] / 1000
    );
}
