//! A server with a VMM, its rings and a balloon played by the test.

use memserver::Tunables;
use memserver::nested::PageRange;
use memserver::server::{BalloonPort, NESTED_BATCH, Server, VmmPort};
use memserver::vm_balloon::bitmap_words;
use memserver_api::{
    self as api, Block, FromBalloon, FromVmm, SLOT_SIZE, ToBalloon, ToVmm, VmRange,
};
use pd_ring::{Consumer, Producer, RingMemory, ring_words};

pub const CAP: usize = 16;
const W: usize = ring_words(CAP, SLOT_SIZE);
type Ring = RingMemory<W>;

fn ring() -> &'static Ring {
    Box::leak(Box::new(Ring::new()))
}

/// The VM's RAM: 64 MiB at frame 0x80000, outside the native zone.
pub const VM: PageRange = PageRange {
    pfn: 0x8_0000,
    pages: 0x4000,
};

pub struct Sys {
    pub server: Server<'static, 'static>,
    pub to_balloon: Consumer<'static>,
    pub from_balloon: Producer<'static>,
    pub to_server: Producer<'static>,
    pub from_server: Consumer<'static>,
}

pub fn sys(reporting: bool) -> Sys {
    let tun = Tunables {
        low_watermark_pages: 0,
        capacity: 4,
        ..Tunables::default()
    };
    let (core, boot) = super::core(&[super::zone(0x40000, 4096)], reporting.then_some(tun));
    let (to, from) = (ring(), ring());
    let port = BalloonPort {
        to: to.producer(SLOT_SIZE).unwrap(),
        from: from.consumer(SLOT_SIZE).unwrap(),
    };
    let mut server = Server::new(core, [], port, boot).unwrap();
    let (req, resp) = (ring(), ring());
    server.attach_vmm(VmmPort {
        req: req.consumer(SLOT_SIZE).unwrap(),
        resp: resp.producer(SLOT_SIZE).unwrap(),
        zone: VM,
        held_map: Box::leak(vec![0; bitmap_words(VM.pages)].into_boxed_slice()),
        passed_map: Box::leak(vec![0; bitmap_words(VM.pages)].into_boxed_slice()),
    });
    let mut s = Sys {
        server,
        to_balloon: to.consumer(SLOT_SIZE).unwrap(),
        from_balloon: from.producer(SLOT_SIZE).unwrap(),
        to_server: req.producer(SLOT_SIZE).unwrap(),
        from_server: resp.consumer(SLOT_SIZE).unwrap(),
    };
    s.balloon(FromBalloon::DeviceLimits { report_capacity: 8 });
    s
}

impl Sys {
    pub fn balloon(&mut self, m: FromBalloon) {
        let mut buf = [0u8; SLOT_SIZE];
        self.from_balloon
            .push(api::encode(&m, &mut buf).unwrap())
            .unwrap();
        self.server.balloon_notified();
    }

    pub fn report(&mut self, id: u32, ranges: &[(u64, u64)]) {
        let msg = FromVmm::Report {
            id,
            ranges: ranges
                .iter()
                .map(|&(page, pages)| VmRange { page, pages })
                .collect(),
        };
        let mut buf = [0u8; SLOT_SIZE];
        self.to_server
            .push(api::encode(&msg, &mut buf).unwrap())
            .unwrap();
        self.server.vmm_notified();
    }

    /// The nested report batches the balloon got (other messages skipped).
    pub fn batches(&mut self) -> Vec<(u32, Vec<Block>)> {
        drain(&mut self.to_balloon, |m| match api::decode(m).unwrap() {
            ToBalloon::Report { batch, blocks } if batch & NESTED_BATCH != 0 => {
                Some((batch, blocks.to_vec()))
            }
            _ => None,
        })
    }

    pub fn answers(&mut self) -> Vec<ToVmm> {
        drain(&mut self.from_server, |m| {
            Some(api::decode_to_vmm(m).unwrap())
        })
    }

    /// Complete every nested batch the balloon holds, until none is left.
    pub fn complete_all(&mut self, ok: bool) -> Vec<Block> {
        let mut all = Vec::new();
        loop {
            let b = self.batches();
            if b.is_empty() {
                return all;
            }
            for (batch, blocks) in b {
                all.extend(blocks);
                self.balloon(FromBalloon::ReportDone { batch, ok });
            }
        }
    }
}

impl Sys {
    /// The VMM sends `msg`.
    pub fn vmm(&mut self, msg: &FromVmm) {
        let mut buf = [0u8; SLOT_SIZE];
        self.to_server
            .push(api::encode(msg, &mut buf).unwrap())
            .unwrap();
        self.server.vmm_notified();
    }

    /// Every message the balloon got, in order.
    pub fn balloon_got(&mut self) -> Vec<ToBalloon> {
        drain(&mut self.to_balloon, |m| Some(api::decode(m).unwrap()))
    }
}

/// Pop every message of `ring`, keeping what `keep` makes of each.
fn drain<T>(ring: &mut Consumer<'_>, mut keep: impl FnMut(&[u8]) -> Option<T>) -> Vec<T> {
    let mut out = Vec::new();
    let mut buf = [0u8; SLOT_SIZE];
    while let Some(n) = ring.pop(&mut buf).unwrap() {
        out.extend(keep(&buf[..n]));
    }
    out
}
