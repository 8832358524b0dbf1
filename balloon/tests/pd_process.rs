//! The balloon PD binary as a Linux process, started the way `tools run`
//! starts it (pd's host backend: `PD_HOST_CONFIG` and inherited fds), with
//! the device on a `HostDevice` thread in this process and the test playing
//! the memserver on the rings. The whole host-platform path: futex doorbell
//! from the PD process to the device thread, IRQ eventfd back, channel
//! eventfds both ways.

use balloon::model::host::{HostDevice, Memfd};
use balloon::model::{DeviceConfig, EventFd, SharedRegion};
use memserver_api::{self as api, Block, FromBalloon, SLOT_SIZE, ToBalloon};
use pd::host::{CONFIG_ENV, HostChannel, HostConfig, HostIrq, HostRegion};
use pd_ring::{Consumer, Producer};
use rustix::fd::{AsRawFd, OwnedFd};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const DMA_PADDR: u64 = 0x2000_0000;
const RAM_BASE: u64 = 0x4000_0000;
const RING: usize = 0x10000;

/// An inheritable copy of `fd` (no CLOEXEC) for the child.
fn inheritable(fd: &OwnedFd) -> OwnedFd {
    rustix::io::dup(fd).expect("dup")
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_pd_process_reports_and_inflates_through_the_host_device() {
    let regs = SharedRegion::create("virtio_mmio", 4096).unwrap();
    let dma = SharedRegion::create("balloon_dma", 2 * MIB as usize).unwrap();
    let to = SharedRegion::create("to_balloon", RING).unwrap();
    let from = SharedRegion::create("from_balloon", RING).unwrap();
    let ram = SharedRegion::create("guest0_ram", 16 * MIB as usize).unwrap();
    let irq_raise = EventFd::new().unwrap();
    let irq_ack = EventFd::new().unwrap();
    let to_pd = EventFd::new().unwrap();
    let to_memserver = EventFd::new().unwrap();

    let raise = irq_raise.clone();
    let dev = HostDevice::start(
        regs.fd().unwrap(),
        Memfd {
            fd: dma.fd().unwrap(),
            paddr: DMA_PADDR,
            len: dma.len(),
        },
        &[Memfd {
            fd: ram.fd().unwrap(),
            paddr: RAM_BASE,
            len: ram.len(),
        }],
        Box::new(move || raise.signal()),
        DeviceConfig::default(),
    )
    .unwrap();

    // What the launcher would pass.
    let fd = |r: &SharedRegion| inheritable(&r.fd().unwrap().try_clone_to_owned().unwrap());
    let kept: Vec<OwnedFd> = vec![
        fd(&regs),
        fd(&dma),
        fd(&to),
        fd(&from),
        inheritable(to_pd.fd()),
        inheritable(to_memserver.fd()),
        inheritable(irq_raise.fd()),
        inheritable(irq_ack.fd()),
    ];
    let raw = |i: usize| kept[i].as_raw_fd();
    let region = |name: &str, i: usize, size: usize, paddr: u64| HostRegion {
        name: name.into(),
        fd: raw(i),
        size: size as u64,
        writable: true,
        paddr,
    };
    let config = HostConfig {
        name: "balloon".into(),
        regions: vec![
            region("virtio_mmio", 0, 4096, 0x0a00_3000),
            region("balloon_dma", 1, dma.len(), DMA_PADDR),
            region("to_balloon", 2, RING, 0x3000_0000),
            region("from_balloon", 3, RING, 0x3001_0000),
        ],
        channels: vec![HostChannel {
            id: 1,
            input: raw(4),
            output: Some(raw(5)),
        }],
        irqs: vec![HostIrq {
            id: 0,
            raise: raw(6),
            ack: raw(7),
        }],
        // The guests' RAM (the balloon's zones, system.xml's setvars).
        paddrs: vec![
            ("guest0_ram".into(), RAM_BASE),
            ("guest1_ram".into(), RAM_BASE + (1 << 30)),
        ],
        ..HostConfig::default()
    };
    // A report the memserver pushed before the PD started, without a
    // notification (the PD had not asked for one yet): the PD must serve it
    // on its own when it starts.
    {
        // SAFETY: the region stays mapped until the end of the test; pd-ring
        // only uses atomics on it.
        let mut early = unsafe { Producer::from_raw(to.as_ptr(), RING, SLOT_SIZE) }.unwrap();
        let mut buf = [0u8; SLOT_SIZE];
        let m = ToBalloon::Report {
            batch: 41,
            blocks: [Block {
                pfn: (RAM_BASE >> 12) + 3072,
                order: 9,
            }]
            .into_iter()
            .collect(),
        };
        early.push(api::encode(&m, &mut buf).unwrap()).unwrap();
    }
    let child = Command::new(env!("CARGO_BIN_EXE_balloon"))
        .env(CONFIG_ENV, config.encode())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the balloon PD");
    drop(kept);
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = line_tx.send(l);
        }
    });

    // The memserver's ends of the rings.
    // SAFETY: both regions stay mapped until the end of the test; pd-ring
    // only uses atomics on them.
    let mut tx = unsafe { Producer::from_raw(to.as_ptr(), RING, SLOT_SIZE) }.unwrap();
    // SAFETY: as above.
    let mut rx = unsafe { Consumer::from_raw(from.as_ptr(), RING, SLOT_SIZE) }.unwrap();
    let mut send = |m: &ToBalloon| {
        let mut buf = [0u8; SLOT_SIZE];
        tx.push(api::encode(m, &mut buf).unwrap()).unwrap();
        to_pd.signal();
    };
    let mut receive = || -> FromBalloon {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; SLOT_SIZE];
        loop {
            if let Some(n) = rx.pop(&mut buf).unwrap() {
                return api::decode_from_balloon(&buf[..n]).unwrap();
            }
            assert!(Instant::now() < deadline, "nothing from the balloon PD");
            rx.request_signal();
            if rx.is_empty().unwrap() {
                to_memserver.wait(Some(Duration::from_millis(200)));
            }
        }
    };

    assert_eq!(
        receive(),
        FromBalloon::DeviceLimits {
            report_capacity: 32
        },
        "the device's limits, first"
    );
    assert_eq!(
        receive(),
        FromBalloon::ReportDone {
            batch: 41,
            ok: true
        },
        "the report pushed before the PD started"
    );
    let early = dev.counters().bytes_discarded;
    assert_eq!(early, 2 * MIB);

    // Guest RAM in use, then reported free: the PD posts it, the device
    // thread punches it out of the memfd.
    for o in (0..8 * MIB).step_by(4096) {
        // Inside the mapping: `o < 16 MiB`.
        let p = ram.as_ptr().wrapping_add(o as usize);
        // SAFETY: inside the mapping; nothing else writes it now.
        unsafe { p.write_volatile(7) };
    }
    assert_eq!(dev.held_bytes().unwrap(), 8 * MIB);
    let blocks = (0..4)
        .map(|i| Block {
            pfn: (RAM_BASE >> 12) + 512 * i,
            order: 9,
        })
        .collect();
    send(&ToBalloon::Report { batch: 42, blocks });
    assert_eq!(
        receive(),
        FromBalloon::ReportDone {
            batch: 42,
            ok: true
        }
    );
    assert_eq!(dev.counters().bytes_discarded, early + 8 * MIB);
    assert_eq!(dev.held_bytes().unwrap(), 0);

    // The host wants 512 pages: config IRQ -> Inflate -> PFNs on the device.
    dev.set_target(512);
    let FromBalloon::Inflate { req, pages } = receive() else {
        panic!("expected an Inflate request");
    };
    assert_eq!(pages, 512);
    send(&ToBalloon::Inflated {
        req,
        blocks: [Block {
            pfn: (RAM_BASE >> 12) + 2048,
            order: 9,
        }]
        .into_iter()
        .collect(),
        last: true,
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while dev.actual() != 512 {
        assert!(
            Instant::now() < deadline,
            "the balloon never reached 512 pages"
        );
        // Bounded wait on the PD's IRQ acks: each one is progress.
        irq_ack.wait(Some(Duration::from_millis(100)));
    }
    assert_eq!(dev.counters().pages_inflated, 512);
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the PD is still running"
    );

    // Its log lines carry the PD prefix.
    wait_line(&lines, "BALLOON|INFO: virtio-balloon up");
    wait_line(&lines, "BALLOON|INFO: balloon at 512 pages");
}

/// Waits (bounded) for a line of the PD's output.
fn wait_line(lines: &mpsc::Receiver<String>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with(want) => return,
            Ok(_) => {}
            Err(e) => panic!("no line {want:?}: {e}"),
        }
    }
}
