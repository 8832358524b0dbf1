//! The system description: the subset of the Microkit 2.3 SDF this project uses,
//! parsed with line numbers so that every later diagnostic can point at the XML.

use core::fmt;

/// Microkit's limit: channel (and IRQ) ids are 0..=61 (`MICROKIT_MAX_CHANNELS` 62
/// in libmicrokit's `microkit.h`).
pub const MAX_CHANNELS: u64 = 62;
/// I/O port ids go up to `MICROKIT_MAX_IOPORT_ID` (= 62) in libmicrokit.
pub const MAX_IOPORT_ID: u64 = 62;
/// `microkit_name` is 64 bytes including its NUL terminator.
pub const MAX_PD_NAME_LEN: usize = 63;
/// Microkit's default PD stack size.
pub const DEFAULT_STACK_SIZE: u64 = 0x2000;
/// Microkit's default PD priority.
pub const DEFAULT_PRIORITY: u8 = 0;
/// The small page; also the default `page_size` of a memory region.
pub const PAGE_4K: u64 = 0x1000;
/// The large page (aarch64 and x86_64 both have 2 MiB pages).
pub const PAGE_2M: u64 = 0x20_0000;

/// A parse error: the XML is malformed or an element does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line in the XML, 0 when unknown.
    pub line: u32,
    /// What is wrong, without the line.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// The whole `<system>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct System {
    pub memory_regions: Vec<MemoryRegion>,
    pub pds: Vec<ProtectionDomain>,
    pub channels: Vec<Channel>,
}

/// `<memory_region name size page_size? phys_addr?/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRegion {
    pub name: String,
    pub size: u64,
    /// Explicit `page_size`, or [`PAGE_4K`].
    pub page_size: u64,
    pub phys_addr: Option<u64>,
    pub line: u32,
}

/// Mapping permissions, a subset of `rwx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

impl Perms {
    /// Parse Microkit's `perms` string: letters from `rwx`, each at most once.
    pub fn parse(s: &str) -> Option<Perms> {
        let mut p = Perms::default();
        for c in s.chars() {
            let slot = match c {
                'r' => &mut p.read,
                'w' => &mut p.write,
                'x' => &mut p.execute,
                _ => return None,
            };
            if *slot {
                return None;
            }
            *slot = true;
        }
        Some(p)
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, c) in [(self.read, 'r'), (self.write, 'w'), (self.execute, 'x')] {
            if on {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// `<map mr vaddr perms? cached? setvar_vaddr? setvar_size?/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    pub mr: String,
    pub vaddr: u64,
    pub perms: Perms,
    pub cached: bool,
    pub setvar_vaddr: Option<String>,
    pub setvar_size: Option<String>,
    pub line: u32,
}

/// How an interrupt reaches the PD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrqKind {
    /// ARM/RISC-V: `irq="N" trigger="level|edge"`.
    Number { irq: u64, edge: bool },
    /// x86 IOAPIC: `ioapic pin vector trigger? polarity?`.
    IoApic {
        ioapic: u64,
        pin: u64,
        vector: u64,
        edge: bool,
        high: bool,
    },
    /// x86 MSI: `pcidev="bus:dev.fn" handle vector`.
    Msi {
        pcidev: String,
        handle: u64,
        vector: u64,
    },
}

/// `<irq ... id/>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Irq {
    pub id: u64,
    pub kind: IrqKind,
    pub line: u32,
}

/// `<ioport id addr size/>` (x86_64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoPort {
    pub id: u64,
    pub addr: u64,
    pub size: u64,
    pub line: u32,
}

/// `<setvar symbol region_paddr/>`: the tool writes the region's physical
/// address into an 8-byte symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetVar {
    pub symbol: String,
    pub region_paddr: String,
    pub line: u32,
}

/// `<protection_domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectionDomain {
    pub name: String,
    pub priority: u8,
    pub pp: bool,
    pub passive: bool,
    pub stack_size: u64,
    pub budget: Option<u64>,
    pub period: Option<u64>,
    pub program_image: Option<String>,
    pub maps: Vec<Map>,
    pub irqs: Vec<Irq>,
    pub ioports: Vec<IoPort>,
    pub setvars: Vec<SetVar>,
    /// The VM this PD runs as its VMM, if any.
    pub virtual_machine: Option<VirtualMachine>,
    pub line: u32,
}

/// `<virtual_machine name priority? budget? period?>` inside the PD that is
/// its VMM (Microkit 2.3.0): its vCPUs and what is mapped at which
/// guest-physical address. The Microkit tool creates the VM's VSpace and
/// gives the VMM each vCPU's TCB and VCPU capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualMachine {
    pub name: String,
    pub priority: u8,
    pub budget: Option<u64>,
    pub period: Option<u64>,
    pub vcpus: Vec<Vcpu>,
    /// `vaddr` is guest-physical here.
    pub maps: Vec<Map>,
    pub line: u32,
}

/// A VM's RAM, as [`System::vm_ram`] finds it.
#[derive(Debug, Clone, Copy)]
pub struct VmRam<'a> {
    pub vm: &'a VirtualMachine,
    /// The VM's map of the region: `vaddr` is the guest-physical base.
    pub map: &'a Map,
    pub region: &'a MemoryRegion,
}

/// `<vcpu id/>`: ids share the namespace of child-PD ids of the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vcpu {
    pub id: u64,
    pub line: u32,
}

/// One `<end pd id pp? notify?/>` of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub pd: String,
    pub id: u64,
    /// This end may make protected procedure calls to the other end.
    pub pp: bool,
    /// This end may notify the other end (Microkit default: true).
    pub notify: bool,
    pub line: u32,
}

/// `<channel>` with exactly two ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub ends: [End; 2],
    pub line: u32,
}

impl System {
    /// Parse an SDF document.
    pub fn parse(xml: &str) -> Result<System, ParseError> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| ParseError {
            line: e.pos().row,
            message: format!("XML error: {e}"),
        })?;
        let root = doc.root_element();
        let p = Parser { doc: &doc };
        if root.tag_name().name() != "system" {
            return Err(p.err(
                root,
                format!(
                    "root element is <{}>, expected <system>",
                    root.tag_name().name()
                ),
            ));
        }
        p.attrs(root, &[])?;
        let mut sys = System::default();
        for node in root.children().filter(|n| n.is_element()) {
            match node.tag_name().name() {
                "memory_region" => sys.memory_regions.push(p.memory_region(node)?),
                "protection_domain" => sys.pds.push(p.pd(node)?),
                "channel" => sys.channels.push(p.channel(node)?),
                other => {
                    return Err(p.err(node, format!("unsupported element <{other}> in <system>")));
                }
            }
        }
        Ok(sys)
    }

    /// The PD called `name`.
    pub fn pd(&self, name: &str) -> Option<&ProtectionDomain> {
        self.pds.iter().find(|pd| pd.name == name)
    }

    /// The memory region called `name`.
    pub fn region(&self, name: &str) -> Option<&MemoryRegion> {
        self.memory_regions.iter().find(|mr| mr.name == name)
    }

    /// The RAM of the VM `vmm` runs: the region the VMM maps with
    /// `setvar_vaddr="guest_ram"` (to load the guest), where the VM maps it
    /// (its guest-physical base), and the VM. One rule for the VMM's build
    /// and for tools, which make the VM's device tree.
    pub fn vm_ram<'a>(&'a self, vmm: &'a ProtectionDomain) -> Result<VmRam<'a>, String> {
        let vm = vmm
            .virtual_machine
            .as_ref()
            .ok_or_else(|| format!("PD '{}' has no <virtual_machine>", vmm.name))?;
        let mr = &vmm
            .maps
            .iter()
            .find(|m| m.setvar_vaddr.as_deref() == Some("guest_ram"))
            .ok_or_else(|| format!("PD '{}' has no <map setvar_vaddr=\"guest_ram\">", vmm.name))?
            .mr;
        let map = vm
            .maps
            .iter()
            .find(|m| &m.mr == mr)
            .ok_or_else(|| format!("VM '{}' does not map '{mr}'", vm.name))?;
        let region = self
            .region(mr)
            .ok_or_else(|| format!("no memory_region '{mr}'"))?;
        Ok(VmRam { vm, map, region })
    }

    /// The memserver's control port: the rings `control_req` and
    /// `control_resp` mapped by the memserver, and who says "look": one
    /// `<irq>` of the memserver (the host platform, whose launcher plays
    /// the console), or a channel to the PD `console` (the console PD on
    /// seL4 and the bare platform, which owns the UART). `None` when the
    /// memserver has none of these, an error for anything in between or
    /// no memserver. One rule for the memserver's build (`cfg(has_control)`)
    /// and for tools.
    pub fn control_port(&self) -> Result<Option<ControlPort<'_>>, String> {
        let me = self
            .pd("memserver")
            .ok_or_else(|| String::from("no PD 'memserver'"))?;
        let maps = |mr: &str| me.maps.iter().any(|m| m.mr == mr);
        let console = self
            .ends_of("memserver")
            .find(|(_, other)| other.pd == "console")
            .map(|(mine, _)| mine);
        match (
            maps("control_req"),
            maps("control_resp"),
            me.irqs.as_slice(),
            console,
        ) {
            (false, false, [], None) => Ok(None),
            (true, true, [irq], None) => Ok(Some(ControlPort::Irq(irq))),
            (true, true, [], Some(end)) => Ok(Some(ControlPort::Console(end))),
            _ => Err(String::from(
                "the memserver's control port needs both maps control_req and control_resp and either one <irq> or a channel to PD 'console'",
            )),
        }
    }

    /// Every channel end that belongs to `pd`, with the other end.
    pub fn ends_of<'s>(&'s self, pd: &'s str) -> impl Iterator<Item = (&'s End, &'s End)> + 's {
        self.channels.iter().filter_map(move |c| {
            if c.ends[0].pd == pd {
                Some((&c.ends[0], &c.ends[1]))
            } else if c.ends[1].pd == pd {
                Some((&c.ends[1], &c.ends[0]))
            } else {
                None
            }
        })
    }
}

/// Who tells the memserver to look at its control port
/// ([`System::control_port`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlPort<'a> {
    /// The memserver's `<irq>` (the host platform's launcher raises it).
    Irq(&'a Irq),
    /// The memserver's end of its channel to the PD `console`.
    Console(&'a End),
}

struct Parser<'a, 'i> {
    doc: &'a roxmltree::Document<'i>,
}

impl<'i> Parser<'_, 'i> {
    fn line(&self, node: roxmltree::Node<'_, 'i>) -> u32 {
        self.doc.text_pos_at(node.range().start).row
    }

    fn err(&self, node: roxmltree::Node<'_, 'i>, message: String) -> ParseError {
        ParseError {
            line: self.line(node),
            message,
        }
    }

    /// Microkit rejects attributes it does not know; so do we, so that a
    /// typo (`perm="r"`) is not silently a read-write mapping.
    fn attrs(&self, node: roxmltree::Node<'_, 'i>, allowed: &[&str]) -> Result<(), ParseError> {
        for a in node.attributes() {
            if !allowed.contains(&a.name()) {
                return Err(self.err(
                    node,
                    format!(
                        "unknown attribute '{}' on <{}>",
                        a.name(),
                        node.tag_name().name()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn req<'n>(&self, node: roxmltree::Node<'n, 'i>, name: &str) -> Result<&'n str, ParseError> {
        node.attribute(name).ok_or_else(|| {
            self.err(
                node,
                format!("<{}> is missing attribute '{name}'", node.tag_name().name()),
            )
        })
    }

    fn num(&self, node: roxmltree::Node<'_, 'i>, name: &str, s: &str) -> Result<u64, ParseError> {
        parse_u64(s).ok_or_else(|| {
            self.err(
                node,
                format!("attribute '{name}' = \"{s}\" is not a number"),
            )
        })
    }

    fn req_num(&self, node: roxmltree::Node<'_, 'i>, name: &str) -> Result<u64, ParseError> {
        let s = self.req(node, name)?;
        self.num(node, name, s)
    }

    fn opt_num(
        &self,
        node: roxmltree::Node<'_, 'i>,
        name: &str,
    ) -> Result<Option<u64>, ParseError> {
        node.attribute(name)
            .map(|s| self.num(node, name, s))
            .transpose()
    }

    fn opt_bool(
        &self,
        node: roxmltree::Node<'_, 'i>,
        name: &str,
        default: bool,
    ) -> Result<bool, ParseError> {
        match node.attribute(name) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(s) => Err(self.err(
                node,
                format!("attribute '{name}' = \"{s}\" is not true/false"),
            )),
        }
    }

    fn memory_region(&self, node: roxmltree::Node<'_, 'i>) -> Result<MemoryRegion, ParseError> {
        self.attrs(node, &["name", "size", "page_size", "phys_addr"])?;
        Ok(MemoryRegion {
            name: self.req(node, "name")?.to_string(),
            size: self.req_num(node, "size")?,
            page_size: self.opt_num(node, "page_size")?.unwrap_or(PAGE_4K),
            phys_addr: self.opt_num(node, "phys_addr")?,
            line: self.line(node),
        })
    }

    fn pd(&self, node: roxmltree::Node<'_, 'i>) -> Result<ProtectionDomain, ParseError> {
        self.attrs(
            node,
            &[
                "name",
                "priority",
                "pp",
                "passive",
                "stack_size",
                "budget",
                "period",
                "cpu",
            ],
        )?;
        let priority = match self.opt_num(node, "priority")? {
            None => DEFAULT_PRIORITY,
            Some(p) => u8::try_from(p)
                .ok()
                .filter(|p| *p <= 254)
                .ok_or_else(|| self.err(node, format!("priority {p} is out of range 0..=254")))?,
        };
        let mut pd = ProtectionDomain {
            name: self.req(node, "name")?.to_string(),
            priority,
            pp: self.opt_bool(node, "pp", false)?,
            passive: self.opt_bool(node, "passive", false)?,
            stack_size: self
                .opt_num(node, "stack_size")?
                .unwrap_or(DEFAULT_STACK_SIZE),
            budget: self.opt_num(node, "budget")?,
            period: self.opt_num(node, "period")?,
            program_image: None,
            maps: Vec::new(),
            irqs: Vec::new(),
            ioports: Vec::new(),
            setvars: Vec::new(),
            virtual_machine: None,
            line: self.line(node),
        };
        for child in node.children().filter(|n| n.is_element()) {
            match child.tag_name().name() {
                "virtual_machine" => {
                    if pd.virtual_machine.is_some() {
                        return Err(self.err(
                            child,
                            format!("PD '{}' has a second <virtual_machine>", pd.name),
                        ));
                    }
                    pd.virtual_machine = Some(self.virtual_machine(child)?);
                }
                "program_image" => {
                    self.attrs(child, &["path"])?;
                    if pd.program_image.is_some() {
                        return Err(self.err(
                            child,
                            format!("PD '{}' has a second <program_image>", pd.name),
                        ));
                    }
                    pd.program_image = Some(self.req(child, "path")?.to_string());
                }
                "map" => pd.maps.push(self.map(child)?),
                "irq" => pd.irqs.push(self.irq(child)?),
                "ioport" => {
                    self.attrs(child, &["id", "addr", "size"])?;
                    pd.ioports.push(IoPort {
                        id: self.req_num(child, "id")?,
                        addr: self.req_num(child, "addr")?,
                        size: self.req_num(child, "size")?,
                        line: self.line(child),
                    });
                }
                "setvar" => {
                    self.attrs(child, &["symbol", "region_paddr"])?;
                    pd.setvars.push(SetVar {
                        symbol: self.req(child, "symbol")?.to_string(),
                        region_paddr: self.req(child, "region_paddr")?.to_string(),
                        line: self.line(child),
                    });
                }
                other => {
                    return Err(self.err(
                        child,
                        format!("unsupported element <{other}> in <protection_domain>"),
                    ));
                }
            }
        }
        if pd.program_image.is_none() {
            return Err(self.err(node, format!("PD '{}' has no <program_image>", pd.name)));
        }
        Ok(pd)
    }

    fn virtual_machine(&self, node: roxmltree::Node<'_, 'i>) -> Result<VirtualMachine, ParseError> {
        self.attrs(node, &["name", "priority", "budget", "period"])?;
        let mut vm = VirtualMachine {
            name: self.req(node, "name")?.to_string(),
            priority: self
                .opt_num(node, "priority")?
                .map(|p| {
                    u8::try_from(p)
                        .map_err(|_| self.err(node, format!("priority {p} is above 254")))
                })
                .transpose()?
                .unwrap_or(DEFAULT_PRIORITY),
            budget: self.opt_num(node, "budget")?,
            period: self.opt_num(node, "period")?,
            vcpus: Vec::new(),
            maps: Vec::new(),
            line: self.line(node),
        };
        for child in node.children().filter(|n| n.is_element()) {
            match child.tag_name().name() {
                "vcpu" => {
                    // Microkit 2.3.0 ignores setvar_id without a word: say
                    // so here instead.
                    if child.attribute("setvar_id").is_some() {
                        return Err(self.err(
                            child,
                            "setvar_id on <vcpu> is ignored by Microkit 2.3.0: the VMM takes vCPU ids from the description".to_string(),
                        ));
                    }
                    self.attrs(child, &["id"])?;
                    vm.vcpus.push(Vcpu {
                        id: self.req_num(child, "id")?,
                        line: self.line(child),
                    });
                }
                "map" => {
                    let m = self.map(child)?;
                    if m.setvar_vaddr.is_some() || m.setvar_size.is_some() {
                        return Err(self.err(
                            child,
                            "a VM's <map> takes no setvar_vaddr/setvar_size (nothing in the VM reads them)".to_string(),
                        ));
                    }
                    vm.maps.push(m);
                }
                other => {
                    return Err(self.err(
                        child,
                        format!("unsupported element <{other}> in <virtual_machine>"),
                    ));
                }
            }
        }
        Ok(vm)
    }

    fn map(&self, node: roxmltree::Node<'_, 'i>) -> Result<Map, ParseError> {
        self.attrs(
            node,
            &[
                "mr",
                "vaddr",
                "perms",
                "cached",
                "setvar_vaddr",
                "setvar_size",
            ],
        )?;
        let perms_s = node.attribute("perms").unwrap_or("rw");
        let perms = Perms::parse(perms_s)
            .filter(|p| p.read || p.execute)
            .ok_or_else(|| {
                self.err(
                    node,
                    format!("perms=\"{perms_s}\" is not a valid combination of r, w, x"),
                )
            })?;
        Ok(Map {
            mr: self.req(node, "mr")?.to_string(),
            vaddr: self.req_num(node, "vaddr")?,
            perms,
            cached: self.opt_bool(node, "cached", true)?,
            setvar_vaddr: node.attribute("setvar_vaddr").map(str::to_string),
            setvar_size: node.attribute("setvar_size").map(str::to_string),
            line: self.line(node),
        })
    }

    fn irq(&self, node: roxmltree::Node<'_, 'i>) -> Result<Irq, ParseError> {
        let id = self.req_num(node, "id")?;
        let edge = |p: &Self| -> Result<bool, ParseError> {
            match node.attribute("trigger") {
                None | Some("level") => Ok(false),
                Some("edge") => Ok(true),
                Some(s) => Err(p.err(node, format!("trigger=\"{s}\" is neither level nor edge"))),
            }
        };
        let kind = if node.attribute("irq").is_some() {
            self.attrs(node, &["irq", "id", "trigger"])?;
            IrqKind::Number {
                irq: self.req_num(node, "irq")?,
                edge: edge(self)?,
            }
        } else if node.attribute("pin").is_some() || node.attribute("ioapic").is_some() {
            self.attrs(
                node,
                &["ioapic", "pin", "vector", "id", "trigger", "polarity"],
            )?;
            let high = match node.attribute("polarity") {
                None | Some("high") => true,
                Some("low") => false,
                Some(s) => {
                    return Err(self.err(node, format!("polarity=\"{s}\" is neither high nor low")));
                }
            };
            IrqKind::IoApic {
                ioapic: self.opt_num(node, "ioapic")?.unwrap_or(0),
                pin: self.req_num(node, "pin")?,
                vector: self.req_num(node, "vector")?,
                edge: edge(self)?,
                high,
            }
        } else if node.attribute("pcidev").is_some() {
            self.attrs(node, &["pcidev", "handle", "vector", "id"])?;
            IrqKind::Msi {
                pcidev: self.req(node, "pcidev")?.to_string(),
                handle: self.req_num(node, "handle")?,
                vector: self.req_num(node, "vector")?,
            }
        } else {
            return Err(self.err(
                node,
                "<irq> needs one of 'irq', 'pin' (IOAPIC) or 'pcidev' (MSI)".into(),
            ));
        };
        Ok(Irq {
            id,
            kind,
            line: self.line(node),
        })
    }

    fn channel(&self, node: roxmltree::Node<'_, 'i>) -> Result<Channel, ParseError> {
        self.attrs(node, &[])?;
        let mut ends = Vec::new();
        for child in node.children().filter(|n| n.is_element()) {
            if child.tag_name().name() != "end" {
                return Err(self.err(
                    child,
                    format!(
                        "unsupported element <{}> in <channel>",
                        child.tag_name().name()
                    ),
                ));
            }
            self.attrs(child, &["pd", "id", "pp", "notify"])?;
            ends.push(End {
                pd: self.req(child, "pd")?.to_string(),
                id: self.req_num(child, "id")?,
                pp: self.opt_bool(child, "pp", false)?,
                notify: self.opt_bool(child, "notify", true)?,
                line: self.line(child),
            });
        }
        let ends: [End; 2] = ends.try_into().map_err(|v: Vec<End>| {
            self.err(
                node,
                format!("<channel> has {} <end>s, expected 2", v.len()),
            )
        })?;
        Ok(Channel {
            ends,
            line: self.line(node),
        })
    }
}

/// Parse a decimal or `0x` hexadecimal number, with optional `_` separators,
/// as Microkit does.
pub fn parse_u64(s: &str) -> Option<u64> {
    let s: String = s.trim().chars().filter(|c| *c != '_').collect();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}
