//! Validation of a system description (`tools check`).
//!
//! Besides what the Microkit tool itself rejects (unknown names, ids out of
//! range or reused, misaligned sizes, PPC to a lower priority), this checks
//! the project's rules for who may map what:
//!
//! 1. **Shared memory needs a channel.** Two PDs that map the same region must
//!    share a channel: rings hold state, notifications say "look", so a shared
//!    region without a channel between its users is a leak, not a protocol.
//! 2. **A device has one driver.** A region with a fixed `phys_addr` that is
//!    mapped uncached is device memory: at most one PD may map it, and that PD
//!    must have an `<irq>` (only a driver touches a device; sDDF's rule).
//!    Any region with a `phys_addr` mapped by more than one PD is an error too.
//! 3. **A physical address is only told to a PD that has business with the
//!    region:** `<setvar region_paddr>` is allowed in a PD that maps the region
//!    or shares a channel with a PD that maps it (the memserver learns the
//!    guests' RAM addresses this way without mapping their RAM), or shares
//!    a channel with a PD that learns it so (the balloon checks the
//!    memserver's reports against the guests' RAM).
//! 4. Priorities: a PD that is PPC'd must have a strictly higher priority
//!    than its caller (a Microkit error); a PD notified by a higher-priority
//!    peer is fine. Servers below their clients are only a warning.

use crate::model::{MAX_CHANNELS, MAX_IOPORT_ID, MAX_PD_NAME_LEN, Map, PAGE_2M, PAGE_4K, System};
use core::fmt;
use std::collections::{BTreeMap, BTreeSet};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding, with the line it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub line: u32,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(f, "{}: {sev}: {}", self.line, self.message)
    }
}

struct Out(Vec<Diagnostic>);

impl Out {
    fn error(&mut self, line: u32, message: String) {
        self.0.push(Diagnostic {
            severity: Severity::Error,
            line,
            message,
        });
    }
    fn warn(&mut self, line: u32, message: String) {
        self.0.push(Diagnostic {
            severity: Severity::Warning,
            line,
            message,
        });
    }
}

/// Validate `sys`; the result is sorted by line. The system is usable when
/// it holds no [`Severity::Error`].
pub fn check(sys: &System) -> Vec<Diagnostic> {
    let mut out = Out(Vec::new());
    names(sys, &mut out);
    regions(sys, &mut out);
    ids(sys, &mut out);
    maps(sys, &mut out);
    channels(sys, &mut out);
    business(sys, &mut out);
    virtual_machines(sys, &mut out);
    let mut v = out.0;
    v.sort_by_key(|d| (d.line, d.severity));
    v
}

/// Guest-physical windows a VMM emulates by trapping the guest's accesses:
/// a VM `<map>` over one would hide the device from the VMM (the guest
/// would read and write memory instead). The GICv2 distributor of QEMU
/// virt's layout, and the window of the VMM's virtio-mmio devices.
pub const VMM_EMULATED: [(&str, u64, u64); 2] = [
    ("the GICv2 distributor", 0x0800_0000, 0x1_0000),
    ("the VMM's virtio-mmio devices", 0x0a00_0000, 0x4000),
];

/// The virtio-balloon device the VMM emulates for its VM (nested
/// reporting): its virtio-mmio window, inside the VMM's window above, and
/// its interrupt, an SPI (IRQ 32 + this). The VM's device tree says the
/// same (`tools::vm_guest`); the VMM builds with these (`vmm/build.rs`).
pub const VMM_BALLOON_MMIO: u64 = 0x0a00_0000;
/// See [`VMM_BALLOON_MMIO`].
pub const VMM_BALLOON_SPI: u32 = 16;

/// Microkit's child ids (and so vCPU ids) are below 64.
pub const MAX_CHILD_ID: u64 = 63;

/// Boards whose SDK kernel is built with hypervisor support (DESIGN §8):
/// only they can run a `<virtual_machine>`.
pub const HYPERVISOR_BOARDS: [&str; 1] = ["qemu_virt_aarch64"];

/// [`check`], plus what depends on the board: a `<virtual_machine>` needs
/// a board with hypervisor support.
pub fn check_for_board(sys: &System, board: &str) -> Vec<Diagnostic> {
    let mut out = Out(check(sys));
    if !HYPERVISOR_BOARDS.contains(&board) {
        for pd in &sys.pds {
            if let Some(vm) = &pd.virtual_machine {
                out.error(
                    vm.line,
                    format!(
                        "virtual_machine '{}' needs a board with hypervisor support ({}); {board} has none \
                         (on x86_64 Microkit's VMs need VT-x, which QEMU's emulation lacks)",
                        vm.name,
                        HYPERVISOR_BOARDS.join(", ")
                    ),
                );
            }
        }
    }
    let mut v = out.0;
    v.sort_by_key(|d| (d.line, d.severity));
    v
}

fn virtual_machines(sys: &System, out: &mut Out) {
    for pd in &sys.pds {
        let Some(vm) = &pd.virtual_machine else {
            continue;
        };
        if let Some(other) = sys.pds.iter().find(|p| p.name == vm.name) {
            out.error(
                vm.line,
                format!(
                    "virtual_machine name '{}' is taken by a protection_domain (line {})",
                    vm.name, other.line
                ),
            );
        }
        if vm.vcpus.is_empty() {
            out.error(
                vm.line,
                format!("virtual_machine '{}' has no <vcpu>", vm.name),
            );
        }
        let mut ids: BTreeMap<u64, u32> = BTreeMap::new();
        for v in &vm.vcpus {
            if v.id > MAX_CHILD_ID {
                out.error(v.line, format!("vcpu id {} is above {MAX_CHILD_ID}", v.id));
            }
            if let Some(first) = ids.insert(v.id, v.line) {
                out.error(
                    v.line,
                    format!(
                        "vcpu id {} is already used at line {first} (vCPU ids share the VMM's child-id space)",
                        v.id
                    ),
                );
            }
        }
        let owner = format!("virtual_machine '{}'", vm.name);
        let spans = address_space(sys, &owner, "VM map", "guest-physical", &vm.maps, out);
        for &(start, end, mr, line) in &spans {
            for (what, base, size) in VMM_EMULATED {
                if start < base + size && base < end {
                    out.error(
                        line,
                        format!(
                            "VM map of '{mr}' at {start:#x}..{end:#x} overlaps {what} at {base:#x}..{:#x}, which the VMM emulates",
                            base + size
                        ),
                    );
                }
            }
        }
    }
}

/// True when `diags` holds an error.
pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(|d| d.severity == Severity::Error)
}

fn names(sys: &System, out: &mut Out) {
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for mr in &sys.memory_regions {
        if let Some(first) = seen.insert(&mr.name, mr.line) {
            out.error(
                mr.line,
                format!(
                    "memory_region name '{}' already defined at line {first}",
                    mr.name
                ),
            );
        }
    }
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for pd in &sys.pds {
        if let Some(first) = seen.insert(&pd.name, pd.line) {
            out.error(
                pd.line,
                format!(
                    "protection_domain name '{}' already defined at line {first}",
                    pd.name
                ),
            );
        }
        if pd.name.is_empty() || pd.name.len() > MAX_PD_NAME_LEN {
            out.error(
                pd.line,
                format!("PD name '{}' must be 1..={MAX_PD_NAME_LEN} bytes", pd.name),
            );
        }
        if pd.stack_size == 0 || pd.stack_size % PAGE_4K != 0 {
            out.error(
                pd.line,
                format!(
                    "PD '{}' stack_size {:#x} is not a multiple of 0x1000",
                    pd.name, pd.stack_size
                ),
            );
        }
        if let (Some(b), Some(p)) = (pd.budget, pd.period)
            && b > p
        {
            out.error(
                pd.line,
                format!("PD '{}' budget {b} exceeds its period {p}", pd.name),
            );
        }
        let mut syms: BTreeMap<&str, u32> = BTreeMap::new();
        let all_syms = pd
            .setvars
            .iter()
            .map(|s| (s.symbol.as_str(), s.line))
            .chain(pd.maps.iter().flat_map(|m| {
                m.setvar_vaddr
                    .iter()
                    .chain(m.setvar_size.iter())
                    .map(move |s| (s.as_str(), m.line))
            }));
        for (sym, line) in all_syms {
            if let Some(first) = syms.insert(sym, line) {
                out.error(
                    line,
                    format!(
                        "PD '{}' setvar symbol '{sym}' already set at line {first}",
                        pd.name
                    ),
                );
            }
        }
        for sv in &pd.setvars {
            if sys.region(&sv.region_paddr).is_none() {
                out.error(
                    sv.line,
                    format!(
                        "setvar '{}' names unknown memory_region '{}'",
                        sv.symbol, sv.region_paddr
                    ),
                );
            }
        }
    }
    for c in &sys.channels {
        for end in &c.ends {
            if sys.pd(&end.pd).is_none() {
                out.error(
                    end.line,
                    format!("channel end names unknown protection_domain '{}'", end.pd),
                );
            }
        }
    }
}

fn regions(sys: &System, out: &mut Out) {
    for mr in &sys.memory_regions {
        if mr.page_size != PAGE_4K && mr.page_size != PAGE_2M {
            out.error(
                mr.line,
                format!(
                    "memory_region '{}' page_size {:#x} is neither 0x1000 nor 0x200000",
                    mr.name, mr.page_size
                ),
            );
            continue;
        }
        if mr.size == 0 || mr.size % mr.page_size != 0 {
            out.error(
                mr.line,
                format!(
                    "memory_region '{}' size {:#x} is not a multiple of its page size {:#x}",
                    mr.name, mr.size, mr.page_size
                ),
            );
        }
        if let Some(pa) = mr.phys_addr
            && pa % mr.page_size != 0
        {
            out.error(
                mr.line,
                format!(
                    "memory_region '{}' phys_addr {pa:#x} is not aligned to its page size {:#x}",
                    mr.name, mr.page_size
                ),
            );
        }
        let mapped = sys.pds.iter().any(|pd| {
            pd.maps
                .iter()
                .chain(pd.virtual_machine.iter().flat_map(|vm| &vm.maps))
                .any(|m| m.mr == mr.name)
        });
        let told = sys
            .pds
            .iter()
            .any(|pd| pd.setvars.iter().any(|s| s.region_paddr == mr.name));
        if !mapped && !told {
            out.warn(
                mr.line,
                format!("memory_region '{}' is not used by any PD or VM", mr.name),
            );
        }
    }
}

fn ids(sys: &System, out: &mut Out) {
    for pd in &sys.pds {
        // Channel ends and IRQs share one id space: both are a bit of the
        // notification badge (DESIGN §4). I/O port ids are their own cap range
        // but we keep them apart too, so generated names are unambiguous.
        let mut used: BTreeMap<u64, String> = BTreeMap::new();
        let mut claim = |id: u64, line: u32, what: String, out: &mut Out| {
            if let Some(prev) = used.get(&id) {
                out.error(line, format!("{what} id {id} already used by {prev}"));
            } else {
                used.insert(id, format!("{what} (line {line})"));
            }
        };
        for irq in &pd.irqs {
            if irq.id >= MAX_CHANNELS {
                out.error(
                    irq.line,
                    format!(
                        "irq id {} of PD '{}' is out of range 0..={}",
                        irq.id,
                        pd.name,
                        MAX_CHANNELS - 1
                    ),
                );
            }
            claim(irq.id, irq.line, format!("irq of PD '{}'", pd.name), out);
        }
        for (end, other) in sys.ends_of(&pd.name) {
            if end.id >= MAX_CHANNELS {
                out.error(
                    end.line,
                    format!(
                        "channel end pd=\"{}\" id {} is out of range 0..={}",
                        pd.name,
                        end.id,
                        MAX_CHANNELS - 1
                    ),
                );
            }
            claim(
                end.id,
                end.line,
                format!("channel end pd=\"{}\" (to '{}')", pd.name, other.pd),
                out,
            );
        }
        for io in &pd.ioports {
            if io.id > MAX_IOPORT_ID {
                out.error(
                    io.line,
                    format!(
                        "ioport id {} of PD '{}' is out of range 0..={MAX_IOPORT_ID}",
                        io.id, pd.name
                    ),
                );
            }
            if io.size == 0
                || io
                    .addr
                    .checked_add(io.size)
                    .is_none_or(|end| end > 0x1_0000)
            {
                out.error(
                    io.line,
                    format!(
                        "ioport {:#x}+{:#x} is outside the 64 KiB port space",
                        io.addr, io.size
                    ),
                );
            }
            claim(io.id, io.line, format!("ioport of PD '{}'", pd.name), out);
        }
    }
}

fn maps(sys: &System, out: &mut Out) {
    for pd in &sys.pds {
        let owner = format!("PD '{}'", pd.name);
        address_space(sys, &owner, "map", "vaddr", &pd.maps, out);
    }
}

/// The maps of one address space (a PD's virtual addresses, or a VM's
/// guest-physical ones; `owner` and `what` name them in the messages):
/// every region exists, every map is aligned to its region's page size,
/// none wraps and none overlaps another. Returns the maps' spans
/// (start, end, region, line), sorted.
fn address_space<'a>(
    sys: &System,
    owner: &str,
    what: &str,
    space: &str,
    maps: &'a [Map],
    out: &mut Out,
) -> Vec<(u64, u64, &'a str, u32)> {
    let mut spans: Vec<(u64, u64, &str, u32)> = Vec::new();
    for m in maps {
        let Some(mr) = sys.region(&m.mr) else {
            out.error(
                m.line,
                format!("{owner} maps unknown memory_region '{}'", m.mr),
            );
            continue;
        };
        if m.vaddr % mr.page_size != 0 {
            out.error(
                m.line,
                format!(
                    "{what} of '{}' at {space} {:#x} is not aligned to the region's page size {:#x}",
                    m.mr, m.vaddr, mr.page_size
                ),
            );
        }
        match m.vaddr.checked_add(mr.size) {
            Some(end) => spans.push((m.vaddr, end, &m.mr, m.line)),
            None => out.error(
                m.line,
                format!(
                    "{what} of '{}' at {:#x} wraps the address space",
                    m.mr, m.vaddr
                ),
            ),
        }
    }
    spans.sort();
    for w in spans.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.0 < a.1 {
            out.error(
                b.3,
                format!(
                    "{owner} map of '{}' at {:#x}..{:#x} overlaps map of '{}' at {:#x}..{:#x} (line {})",
                    b.2, b.0, b.1, a.2, a.0, a.1, a.3
                ),
            );
        }
    }
    spans
}

fn channels(sys: &System, out: &mut Out) {
    for c in &sys.channels {
        let [a, b] = &c.ends;
        if a.pd == b.pd {
            out.error(c.line, format!("channel connects PD '{}' to itself", a.pd));
            continue;
        }
        if a.pp && b.pp {
            out.error(c.line, "channel has pp=\"true\" on both ends".to_string());
        }
        for (caller, callee) in [(a, b), (b, a)] {
            let (Some(cp), Some(ep)) = (sys.pd(&caller.pd), sys.pd(&callee.pd)) else {
                continue;
            };
            if caller.pp && cp.priority >= ep.priority {
                out.error(caller.line, format!(
                    "PD '{}' (priority {}) makes PPCs to '{}' (priority {}): the callee's priority must be strictly higher",
                    cp.name, cp.priority, ep.name, ep.priority
                ));
            }
            if caller.pp && !ep.pp {
                out.warn(
                    caller.line,
                    format!(
                        "PD '{}' is PPC'd by '{}' but does not say pp=\"true\"",
                        ep.name, cp.name
                    ),
                );
            }
        }
    }
}

fn linked(sys: &System, a: &str, b: &str) -> bool {
    sys.ends_of(a).any(|(_, other)| other.pd == b)
}

fn business(sys: &System, out: &mut Out) {
    for mr in &sys.memory_regions {
        let users: Vec<(&str, u32, bool)> = sys
            .pds
            .iter()
            .flat_map(|pd| {
                pd.maps
                    .iter()
                    .filter(|m| m.mr == mr.name)
                    .map(move |m| (pd.name.as_str(), m.line, m.cached))
            })
            .collect();
        let distinct: BTreeSet<&str> = users.iter().map(|u| u.0).collect();
        // Rule 1: shared memory needs a channel between every pair of users.
        for (i, a) in distinct.iter().enumerate() {
            for b in distinct.iter().skip(i + 1) {
                if !linked(sys, a, b) {
                    let line = users.iter().find(|u| u.0 == *b).map_or(mr.line, |u| u.1);
                    out.error(line, format!(
                        "PD '{b}' maps memory_region '{}' that '{a}' also maps, but they share no channel",
                        mr.name
                    ));
                }
            }
        }
        // Rule 2: device memory has one driver, and that driver has an IRQ.
        if mr.phys_addr.is_some() {
            if distinct.len() > 1 {
                let line = users.get(1).map_or(mr.line, |u| u.1);
                out.error(line, format!(
                    "memory_region '{}' has a fixed phys_addr and is mapped by {} PDs ({}): only one PD may own it",
                    mr.name,
                    distinct.len(),
                    distinct.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
            for (pd, line, cached) in &users {
                let has_irq = sys.pd(pd).is_some_and(|p| !p.irqs.is_empty());
                if !cached && !has_irq {
                    out.error(*line, format!(
                        "PD '{pd}' maps device memory '{}' (phys_addr, uncached) but has no <irq>: only a driver maps a device",
                        mr.name
                    ));
                }
            }
        }
    }
    // Rule 3: only tell a physical address to a PD that has business with it.
    for pd in &sys.pds {
        for sv in &pd.setvars {
            if sys.region(&sv.region_paddr).is_none() {
                continue;
            }
            let maps_it = pd.maps.iter().any(|m| m.mr == sv.region_paddr);
            let peer_maps = sys.pds.iter().any(|other| {
                other.name != pd.name
                    && other.maps.iter().any(|m| m.mr == sv.region_paddr)
                    && linked(sys, &pd.name, &other.name)
            });
            // One hop further: a peer told the address for its mapping
            // peer (the balloon, linked to the memserver).
            let peer_learns = sys.pds.iter().any(|other| {
                other.name != pd.name
                    && linked(sys, &pd.name, &other.name)
                    && other.setvars.iter().any(|o| {
                        o.region_paddr == sv.region_paddr
                            && sys.pds.iter().any(|third| {
                                third.name != other.name
                                    && third.maps.iter().any(|m| m.mr == sv.region_paddr)
                                    && linked(sys, &other.name, &third.name)
                            })
                    })
            });
            if !maps_it && !peer_maps && !peer_learns {
                out.error(sv.line, format!(
                    "PD '{}' learns the physical address of '{}' but neither maps it nor shares a channel with a PD that does",
                    pd.name, sv.region_paddr
                ));
            }
        }
    }
}
