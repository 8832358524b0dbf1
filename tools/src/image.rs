//! `tools image`: build the PD ELFs for a Microkit board and run the SDK's
//! `microkit` tool on the system description (DESIGN §4, §5.1).
//!
//! `system.xml` is written once, for `qemu_virt_aarch64`, in the dialect the
//! `sdf` crate reads. Two rewrites derive what the SDK gets:
//!
//! - [`board_sdf`]: the description for a board. For `x86_64_generic` it
//!   swaps the aarch64 devices for their PC counterparts (DESIGN §4, verified
//!   by booting): the virtio-mmio page becomes the virtio-pci device's BAR4
//!   (modern capabilities, at 0xfe000000 where SeaBIOS puts it) plus the PCI
//!   configuration ports 0xcf8..0xd00 for every PD that maps it; a virtio-mmio
//!   SPI becomes the device's INTx line, IOAPIC pin 11, level, active high;
//!   the generic timer's PPI 30 becomes the HPET (its page at 0xfed00000,
//!   IOAPIC pin 2, edge). Every region whose physical address a PD learns
//!   through `<setvar region_paddr>` gets a fixed `phys_addr` (Microkit
//!   refuses the setvar otherwise on x86_64), naturally aligned from
//!   0x10000000 up. The PD crates build from this file (`SYSTEM_XML`), so
//!   their generated config matches the image.
//! - [`microkit_sdf`]: the board description minus what only our dialect
//!   has (`pp` on `<protection_domain>`, which Microkit 2.3.0 rejects: its
//!   PPC permission lives on the channel end).
//!
//! Both rewrites edit the text in place, so comments and layout survive, as
//! does [`variant`], which makes the test-only descriptions (one PD running
//! another program image, e.g. the hostile guest of issue 8).

use sdf::System;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A Microkit board this project boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    /// `qemu_virt_aarch64`: QEMU `virt`, cortex-a53, 2 GiB.
    QemuVirtAarch64,
    /// `x86_64_generic`: QEMU `pc`, 2 GiB.
    X86_64Generic,
}

impl Board {
    /// Every board.
    pub const ALL: [Board; 2] = [Board::QemuVirtAarch64, Board::X86_64Generic];

    /// The SDK's name of the board.
    pub fn name(self) -> &'static str {
        match self {
            Board::QemuVirtAarch64 => "qemu_virt_aarch64",
            Board::X86_64Generic => "x86_64_generic",
        }
    }

    /// The Rust target of the PDs.
    pub fn target(self) -> &'static str {
        match self {
            Board::QemuVirtAarch64 => "aarch64-unknown-none",
            Board::X86_64Generic => "x86_64-unknown-none",
        }
    }

    /// The board by its SDK name.
    pub fn parse(s: &str) -> Option<Board> {
        Board::ALL.into_iter().find(|b| b.name() == s)
    }
}

impl fmt::Display for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The seL4 kernel configuration of the SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelConfig {
    Debug,
    Release,
}

impl KernelConfig {
    /// The SDK's name.
    pub fn name(self) -> &'static str {
        match self {
            KernelConfig::Debug => "debug",
            KernelConfig::Release => "release",
        }
    }

    /// By the SDK's name.
    pub fn parse(s: &str) -> Option<KernelConfig> {
        [KernelConfig::Debug, KernelConfig::Release]
            .into_iter()
            .find(|c| c.name() == s)
    }
}

impl fmt::Display for KernelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an image could not be made.
#[derive(Debug)]
pub enum ImageError {
    /// `MICROKIT_SDK` is not set.
    NoSdk,
    /// The SDK has no `bin/microkit`, or not this board and config.
    BadSdk(String),
    Io(PathBuf, std::io::Error),
    /// The system description does not parse or cannot be rewritten.
    Sdf(String),
    /// A `program_image` no crate of the workspace builds.
    UnknownImage(String),
    /// cargo failed.
    Cargo(String),
    /// The microkit tool failed (its output).
    Microkit(String),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::NoSdk => write!(
                f,
                "MICROKIT_SDK is not set: set it to the directory of a Microkit 2.3.0 SDK (the one holding bin/microkit and board/)"
            ),
            ImageError::BadSdk(m) => write!(f, "Microkit SDK: {m}"),
            ImageError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            ImageError::Sdf(m) => write!(f, "system description: {m}"),
            ImageError::UnknownImage(i) => write!(
                f,
                "program_image '{i}': no crate of this workspace builds it (known: {})",
                PROGRAMS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
            ),
            ImageError::Cargo(m) => write!(f, "cargo: {m}"),
            ImageError::Microkit(m) => write!(f, "microkit tool failed:\n{m}"),
        }
    }
}

impl std::error::Error for ImageError {}

/// `program_image` file -> (package, binary).
const PROGRAMS: [(&str, &str, &str); 10] = [
    ("memserver.elf", "memserver", "memserver"),
    ("balloon.elf", "balloon", "balloon"),
    ("timer.elf", "timer", "timer"),
    ("console.elf", "console", "console"),
    ("guest.elf", "guest", "guest"),
    ("vmm.elf", "vmm", "vmm"),
    // Test-only (issue 8): the hostile variant's guest1.
    ("hostile.elf", "guest", "hostile"),
    ("ping.elf", "pd", "ping"),
    ("pong.elf", "pd", "pong"),
    ("crasher.elf", "pd", "crasher"),
];

/// The crates that build the PD programs ([`PROGRAMS`]), each once.
pub fn pd_packages() -> Vec<&'static str> {
    let mut packages: Vec<&str> = PROGRAMS.iter().map(|p| p.1).collect();
    packages.sort_unstable();
    packages.dedup();
    packages
}

/// The SDK named by `MICROKIT_SDK`.
pub fn sdk_from_env() -> Result<PathBuf, ImageError> {
    match std::env::var_os("MICROKIT_SDK") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(ImageError::NoSdk),
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub board: Board,
    pub config: KernelConfig,
    /// The system description (our dialect, written for qemu_virt_aarch64).
    pub system: PathBuf,
    /// The Microkit SDK.
    pub sdk: PathBuf,
    /// The cargo workspace holding the PD crates.
    pub workspace: PathBuf,
    /// cargo's target dir for the PD builds.
    pub target_dir: PathBuf,
    /// The memserver's reporting tunables and the guests' workload, built
    /// in (checked by [`build`]).
    pub built_in: crate::pd_build::BuiltIn,
    /// Where the ELFs, the descriptions and the image go.
    pub out_dir: PathBuf,
    /// The Linux guest the VMM embeds (`tools::vm_guest::prepare`); `None`:
    /// a description with a VM gets the VMM's smoke guest.
    pub vm_guest: Option<PathBuf>,
}

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    pub board: Board,
    pub config: KernelConfig,
    /// `loader.img`: QEMU's `-device loader` (aarch64) or `-initrd` (x86_64).
    pub loader: PathBuf,
    /// x86_64: the 32-bit seL4 kernel QEMU's `-kernel` boots (multiboot).
    pub kernel: Option<PathBuf>,
    /// The microkit tool's report.
    pub report: PathBuf,
    /// The board's description (our dialect) the PDs were built from.
    pub board_sdf: PathBuf,
    /// Each PD's log page, in the description's order.
    pub log_pages: Vec<LogPage>,
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::Io(p.to_path_buf(), e)
}

/// The Microkit version this project is written against (DESIGN §4).
pub const SDK_VERSION: &str = "2.3.0";

/// Check that `sdk` is a Microkit [`SDK_VERSION`] SDK with `board` and
/// `config`, before anything is built: one line naming what is missing.
pub fn check_sdk(sdk: &Path, board: Board, config: KernelConfig) -> Result<(), ImageError> {
    let tool = sdk.join("bin/microkit");
    if !tool.is_file() {
        return Err(ImageError::BadSdk(format!(
            "{} has no bin/microkit: not a Microkit SDK",
            sdk.display()
        )));
    }
    let version_file = sdk.join("VERSION");
    let version = std::fs::read_to_string(&version_file).unwrap_or_default();
    if version.trim() != SDK_VERSION {
        return Err(ImageError::BadSdk(format!(
            "{} is version '{}', this project needs {SDK_VERSION} ({})",
            sdk.display(),
            version.trim(),
            version_file.display()
        )));
    }
    let board_dir = sdk.join("board").join(board.name()).join(config.name());
    if !board_dir.is_dir() {
        return Err(ImageError::BadSdk(format!(
            "{} lacks board {board} in config {config} (no {})",
            sdk.display(),
            board_dir.display()
        )));
    }
    Ok(())
}

/// Build the PDs, the board's descriptions and the image.
pub fn build(spec: &ImageSpec) -> Result<Image, ImageError> {
    check_sdk(&spec.sdk, spec.board, spec.config)?;
    let tool = spec.sdk.join("bin/microkit");
    let (board_path, mk_path, log_pages) = write_sdfs(&spec.system, spec.board, &spec.out_dir)?;
    let out_dir = spec.out_dir.canonicalize().map_err(io(&spec.out_dir))?;
    let board_text = std::fs::read_to_string(&board_path).map_err(io(&board_path))?;

    let sys = System::parse(&board_text).map_err(|e| ImageError::Sdf(format!("line {e}")))?;
    let mut images: Vec<&str> = sys
        .pds
        .iter()
        .filter_map(|p| p.program_image.as_deref())
        .collect();
    images.sort_unstable();
    images.dedup();
    let programs = images
        .iter()
        .map(|i| {
            PROGRAMS
                .iter()
                .find(|p| p.0 == *i)
                .ok_or_else(|| ImageError::UnknownImage(i.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Until the ELFs are copied out: the next build rewrites them.
    let lock = crate::pd_build::lock(&spec.target_dir).map_err(ImageError::Cargo)?;
    cargo_build(spec, &board_path, &programs)?;
    let bin_dir = spec.target_dir.join(spec.board.target()).join("release");
    // Every ELF must be built for the description the image is packed from
    // (the Microkit tool would pack any ELF whose symbols it finds): each
    // carries the hash of the one its build script read (`sdf::stamp`).
    let want = sdf::stamp::Stamp::of_file(&board_path).map_err(ImageError::Sdf)?;
    for (image, _, bin) in &programs {
        sdf::stamp::check(&bin_dir.join(bin), image, &want).map_err(ImageError::Sdf)?;
    }
    for (image, _, bin) in &programs {
        let from = bin_dir.join(bin);
        let to = out_dir.join(image);
        std::fs::copy(&from, &to).map_err(io(&from))?;
    }
    drop(lock);

    let loader = out_dir.join("loader.img");
    let report = out_dir.join("report.txt");
    let out = Command::new(&tool)
        .arg(&mk_path)
        .arg("--search-path")
        .arg(&out_dir)
        .args(["--board", spec.board.name(), "--config", spec.config.name()])
        .arg("-o")
        .arg(&loader)
        .arg("-r")
        .arg(&report)
        .output()
        .map_err(io(&tool))?;
    if !out.status.success() {
        return Err(ImageError::Microkit(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    // On x86_64 the tool copies the kernel next to the image; QEMU's
    // multiboot loader needs the 32-bit one.
    let kernel = match spec.board {
        Board::QemuVirtAarch64 => None,
        Board::X86_64Generic => {
            let k = out_dir.join("sel4_32.elf");
            if !k.is_file() {
                return Err(ImageError::Microkit(format!(
                    "no {} after a successful run",
                    k.display()
                )));
            }
            Some(k)
        }
    };
    Ok(Image {
        log_pages,
        board: spec.board,
        config: spec.config,
        loader,
        kernel,
        report,
        board_sdf: board_path,
    })
}

/// Write the board's description (`<out_dir>/<board>.xml`, our dialect)
/// and its Microkit-dialect copy (`<out_dir>/microkit.xml`) derived from
/// `system` with a log page for every PD; their paths and the pages.
/// Needs no SDK.
pub fn write_sdfs(
    system: &Path,
    board: Board,
    out_dir: &Path,
) -> Result<(PathBuf, PathBuf, Vec<LogPage>), ImageError> {
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let out_dir = out_dir.canonicalize().map_err(io(out_dir))?;
    let text = std::fs::read_to_string(system).map_err(io(system))?;
    let board_text = board_sdf(&text, board)?;
    let board_path = out_dir.join(format!("{board}.xml"));
    std::fs::write(&board_path, &board_text).map_err(io(&board_path))?;
    let mk_path = out_dir.join("microkit.xml");
    let (with_logs, pages) = with_log_pages(&board_text, board)?;
    std::fs::write(&mk_path, microkit_sdf(&with_logs)?).map_err(io(&mk_path))?;
    Ok((board_path, mk_path, pages))
}

fn cargo_build(
    spec: &ImageSpec,
    board_sdf: &Path,
    programs: &[&(&str, &str, &str)],
) -> Result<(), ImageError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&spec.workspace)
        .args(["build", "--release", "--target", spec.board.target()])
        .arg("--target-dir")
        .arg(&spec.target_dir)
        // The PD crates' build scripts generate their config from this.
        .env("SYSTEM_XML", board_sdf)
        // pd/build.rs takes the kernel's invocation labels from the SDK.
        .env(
            "PD_SEL4_INVOCATIONS",
            spec.sdk
                .join("board")
                .join(spec.board.name())
                .join(spec.config.name())
                .join("invocations_all.json"),
        );
    let mut packages: Vec<&str> = programs.iter().map(|p| p.1).collect();
    packages.sort_unstable();
    packages.dedup();
    for p in packages {
        cmd.args(["-p", p]);
    }
    for p in programs {
        cmd.args(["--bin", p.2]);
    }
    if spec.config == KernelConfig::Release {
        // A release kernel acks IRQs with another label and has no
        // DebugPutChar (pd/Cargo.toml).
        cmd.args(["--features", "pd/release-kernel"]);
    }
    match &spec.vm_guest {
        Some(dir) => cmd.env("VMM_GUEST_DIR", dir),
        None => cmd.env_remove("VMM_GUEST_DIR"),
    };
    spec.built_in.apply(&mut cmd).map_err(ImageError::Cargo)?;
    let out = cmd
        .output()
        .map_err(|e| ImageError::Cargo(format!("running cargo: {e}")))?;
    if !out.status.success() {
        return Err(ImageError::Cargo(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// Text edits on the original document: (byte range, replacement).
struct Edits(Vec<(std::ops::Range<usize>, String)>);

impl Edits {
    fn apply(self, text: &str) -> String {
        // Last position first, so earlier ranges stay valid; of several
        // insertions at one point the last goes in first, so they end up in
        // the order they were made.
        let mut edits: Vec<_> = self.0.into_iter().enumerate().collect();
        edits.sort_by(|(i, a), (j, b)| (b.0.start, j).cmp(&(a.0.start, i)));
        let mut out = text.to_string();
        for (_, (r, s)) in edits {
            out.replace_range(r, &s);
        }
        out
    }
}

fn num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(&h.replace('_', ""), 16).ok(),
        None => s.replace('_', "").parse().ok(),
    }
}

fn parse(text: &str) -> Result<roxmltree::Document<'_>, ImageError> {
    roxmltree::Document::parse(text).map_err(|e| ImageError::Sdf(format!("XML: {e}")))
}

fn elements<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    tag: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    doc.descendants()
        .filter(move |n| n.is_element() && n.tag_name().name() == tag)
}

/// Where QEMU virt's virtio-mmio transports live (32 slots of 0x200).
const VIRTIO_MMIO: std::ops::Range<u64> = 0x0a00_0000..0x0a00_4000;
/// Their SPIs, as SDF irq numbers (32 + 16 + slot).
const VIRTIO_MMIO_IRQS: std::ops::RangeInclusive<u64> = 48..=79;
/// The EL1 physical generic timer's PPI.
const GENERIC_TIMER_IRQ: u64 = 30;
/// BAR4 of QEMU's virtio-pci devices: the modern capabilities (common 0x0,
/// ISR 0x1000, device 0x2000, notify 0x3000), where SeaBIOS puts it for the
/// first such device with `-m 2G` (DESIGN §4; the driver checks the BAR).
pub const VIRTIO_PCI_BAR4: u64 = 0xfe00_0000;
const VIRTIO_PCI_BAR4_SIZE: u64 = 0x4000;
/// PCI configuration mechanism #1: address 0xcf8, data 0xcfc.
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
/// INTx of the balloon at 00:04.0 on `pc` (PCI link routed by SeaBIOS).
const VIRTIO_PCI_PIN: u64 = 11;
pub const HPET_PADDR: u64 = 0xfed0_0000;
const HPET_PIN: u64 = 2;
/// QEMU virt's PL011 and its SPI (GIC 33): the console's UART on aarch64.
pub const PL011_PADDR: u64 = 0x0900_0000;
const PL011_IRQ: u64 = 33;
/// COM1, the PC's counterpart: ports 0x3f8..0x400, ISA IRQ 4 (IOAPIC pin
/// 4, edge).
pub const COM1_PORT: u64 = 0x3f8;
const COM1_PIN: u64 = 4;
/// Where fixed physical addresses start on x86_64: above the kernel and
/// boot modules, in the RAM of a 2 GiB PC.
const X86_PHYS_BASE: u64 = 0x1000_0000;
/// Where the log pages start ([`log_page_base`]).
const X86_PHYS_END: u64 = log_page_base(Board::X86_64Generic);
/// The most a region is aligned to: the largest buddy block (order
/// `MAX_ORDER`, 4 MiB), so that every block of a guest's RAM is aligned in
/// physical memory too, which also covers the 2 MiB pages a region may be
/// mapped with.
const X86_ALIGN_MAX: u64 = 0x1000 << memserver::MAX_ORDER;

/// Physical addresses in `X86_PHYS_BASE..X86_PHYS_END` for regions of
/// these sizes: each naturally aligned up to [`X86_ALIGN_MAX`], the
/// largest alignment first, each at the lowest address that overlaps none
/// placed before.
fn x86_placement<'a>(sizes: &[(&'a str, u64)]) -> Result<Vec<(&'a str, u64)>, ImageError> {
    let align = |size: u64| size.next_power_of_two().clamp(0x1000, X86_ALIGN_MAX);
    let mut order: Vec<&(&str, u64)> = sizes.iter().collect();
    // Stable: equal alignments keep the description's order.
    order.sort_by_key(|(_, size)| core::cmp::Reverse(align(*size)));
    let mut placed: Vec<(&'a str, u64, u64)> = Vec::new();
    for &&(name, size) in &order {
        let mut at = X86_PHYS_BASE.next_multiple_of(align(size));
        // Past every placed region it would overlap; each step moves up.
        while let Some(&(_, _, end)) = placed
            .iter()
            .find(|&&(_, start, end)| at < end && start < at + size)
        {
            at = end.next_multiple_of(align(size));
        }
        if at + size > X86_PHYS_END {
            return Err(ImageError::Sdf(format!(
                "region '{name}' ({size:#x} bytes) does not fit below {X86_PHYS_END:#x}"
            )));
        }
        placed.push((name, at, at + size));
    }
    Ok(placed.into_iter().map(|(n, at, _)| (n, at)).collect())
}

/// The system description for `board`, derived from `text` (written for
/// qemu_virt_aarch64): see the module docs.
pub fn board_sdf(text: &str, board: Board) -> Result<String, ImageError> {
    match board {
        Board::QemuVirtAarch64 => Ok(text.to_string()),
        Board::X86_64Generic => x86_sdf(text),
    }
}

fn x86_sdf(text: &str) -> Result<String, ImageError> {
    let doc = parse(text)?;
    let sys = System::parse(text).map_err(|e| ImageError::Sdf(format!("line {e}")))?;
    // A VM needs hypervisor support, which the x86_64 board lacks here.
    let diags = sdf::check::check_for_board(&sys, Board::X86_64Generic.name());
    if let Some(d) = diags
        .iter()
        .find(|d| d.severity == sdf::Severity::Error && d.message.contains("virtual_machine"))
    {
        return Err(ImageError::Sdf(d.to_string()));
    }
    let mut edits = Edits(Vec::new());
    let regions: Vec<_> = elements(&doc, "memory_region").collect();
    let first_pd = elements(&doc, "protection_domain")
        .next()
        .ok_or_else(|| ImageError::Sdf("no protection_domain".into()))?;

    // Fixed physical addresses for regions told through region_paddr.
    let mut told: Vec<&str> = sys
        .pds
        .iter()
        .flat_map(|p| p.setvars.iter().map(|s| s.region_paddr.as_str()))
        .collect();
    told.sort_unstable();
    told.dedup();
    let sizes: Vec<(&str, u64)> = regions
        .iter()
        .filter(|r| {
            let name = r.attribute("name").unwrap_or_default();
            r.attribute("phys_addr").is_none() && told.contains(&name)
        })
        .map(|r| {
            let name = r.attribute("name").unwrap_or_default();
            let size = r.attribute("size").and_then(num);
            size.map(|s| (name, s))
                .ok_or_else(|| ImageError::Sdf(format!("region '{name}' has no size")))
        })
        .collect::<Result<_, _>>()?;
    let placed = x86_placement(&sizes)?;
    let mut virtio = Vec::new();
    let mut uarts = Vec::new();
    for r in &regions {
        let name = r.attribute("name").unwrap_or_default();
        let phys = r.attribute("phys_addr").and_then(num);
        if phys == Some(PL011_PADDR) {
            // The PC has no PL011: its maps become COM1's ports (below).
            uarts.push(name);
            edits.0.push((
                r.range(),
                format!("<!-- x86_64: COM1's ports replace the PL011 '{name}'. -->"),
            ));
            continue;
        }
        if phys.is_some_and(|p| VIRTIO_MMIO.contains(&p)) {
            virtio.push(name);
            // Same name (maps and setvar_vaddr stay), the BAR's size.
            let size = r
                .attributes()
                .find(|a| a.name() == "size")
                .ok_or_else(|| ImageError::Sdf(format!("region '{name}' has no size")))?;
            let pa = r
                .attributes()
                .find(|a| a.name() == "phys_addr")
                .ok_or_else(|| ImageError::Sdf(format!("region '{name}' has no phys_addr")))?;
            edits
                .0
                .push((size.range(), format!("size=\"{VIRTIO_PCI_BAR4_SIZE:#x}\"")));
            edits
                .0
                .push((pa.range(), format!("phys_addr=\"{VIRTIO_PCI_BAR4:#x}\"")));
            continue;
        }
        if phys.is_some() || !told.contains(&name) {
            continue;
        }
        let Some(&(_, at)) = placed.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let last = r
            .attributes()
            .next_back()
            .ok_or_else(|| ImageError::Sdf(format!("region '{name}' has no attributes")))?;
        edits.0.push((
            last.range().end..last.range().end,
            format!(" phys_addr=\"{at:#x}\""),
        ));
    }

    let indent = "\n    ";
    let mut hpet_added = false;
    for pd in elements(&doc, "protection_domain") {
        let pd_name = pd.attribute("name").unwrap_or_default();
        let maps_virtio = pd.children().any(|c| {
            c.is_element()
                && c.tag_name().name() == "map"
                && c.attribute("mr").is_some_and(|m| virtio.contains(&m))
        });
        let mut add = String::new();
        // Ioport ids share the id space of channels and irqs.
        let mut used: Vec<u64> = sys
            .ends_of(pd_name)
            .map(|(end, _)| end.id)
            .chain(sys.pd(pd_name).into_iter().flat_map(|p| {
                p.irqs
                    .iter()
                    .map(|i| i.id)
                    .chain(p.ioports.iter().map(|i| i.id))
            }))
            .collect();
        let mut next_id = || {
            let id = (0..).find(|i| !used.contains(i)).unwrap_or(0);
            used.push(id);
            id
        };
        if maps_virtio {
            let id = next_id();
            add += &format!(
                "{indent}    <!-- x86_64: PCI configuration space (mechanism #1). -->{indent}    <ioport id=\"{id}\" addr=\"{PCI_CONFIG_PORT:#x}\" size=\"8\" />"
            );
        }
        for map in pd.children().filter(|c| {
            c.is_element()
                && c.tag_name().name() == "map"
                && c.attribute("mr").is_some_and(|m| uarts.contains(&m))
        }) {
            let id = next_id();
            edits.0.push((
                map.range(),
                format!(
                    "<!-- x86_64: COM1 instead of the PL011. --><ioport id=\"{id}\" addr=\"{COM1_PORT:#x}\" size=\"8\" />"
                ),
            ));
        }
        for irq in pd
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "irq")
        {
            let Some(n) = irq.attribute("irq").and_then(num) else {
                continue;
            };
            let id = irq.attribute("id").unwrap_or("0");
            let new = if VIRTIO_MMIO_IRQS.contains(&n) {
                format!(
                    "<irq id=\"{id}\" ioapic=\"0\" pin=\"{VIRTIO_PCI_PIN}\" trigger=\"level\" polarity=\"high\" vector=\"{VIRTIO_PCI_PIN}\" />"
                )
            } else if n == PL011_IRQ {
                format!(
                    "<irq id=\"{id}\" ioapic=\"0\" pin=\"{COM1_PIN}\" trigger=\"edge\" polarity=\"high\" vector=\"{COM1_PIN}\" />"
                )
            } else if n == GENERIC_TIMER_IRQ {
                if hpet_added {
                    return Err(ImageError::Sdf(format!(
                        "PD '{pd_name}': a second generic timer irq; the HPET serves one PD"
                    )));
                }
                hpet_added = true;
                let vaddr = free_vaddr(&sys, pd_name);
                add += &format!(
                    "{indent}    <map mr=\"hpet\" vaddr=\"{vaddr:#x}\" perms=\"rw\" cached=\"false\" />"
                );
                format!(
                    "<irq id=\"{id}\" ioapic=\"0\" pin=\"{HPET_PIN}\" trigger=\"edge\" polarity=\"high\" vector=\"{HPET_PIN}\" />"
                )
            } else {
                return Err(ImageError::Sdf(format!(
                    "PD '{pd_name}': irq {n} has no x86_64 counterpart (known: virtio-mmio 48..=79, generic timer 30, PL011 33)"
                )));
            };
            edits.0.push((irq.range(), new));
        }
        if !add.is_empty() {
            let end = pd.range().end;
            let close = text[..end]
                .rfind("</protection_domain>")
                .ok_or_else(|| ImageError::Sdf(format!("PD '{pd_name}' has no closing tag")))?;
            // Before the closing tag's own line indentation.
            let at = text[..close].trim_end_matches([' ', '\t']).len();
            let at = text[..at].strip_suffix('\n').map_or(at, str::len);
            edits.0.push((at..at, add));
        }
    }
    if hpet_added {
        let at = first_pd.range().start;
        edits.0.push((
            at..at,
            format!(
                "<!-- x86_64: the HPET replaces the generic timer (DESIGN §4). -->\n    <memory_region name=\"hpet\" size=\"0x1000\" phys_addr=\"{HPET_PADDR:#x}\" />\n\n    "
            ),
        ));
    }
    let out = edits.apply(text);
    let header = "<!-- x86_64_generic variant, generated from the qemu_virt_aarch64 description by tools image (board x86_64_generic): do not edit. -->\n";
    let out = match out.find("?>") {
        Some(i) if out.starts_with("<?xml") => {
            format!("{}\n{header}{}", &out[..i + 2], out[i + 2..].trim_start())
        }
        _ => format!("{header}{out}"),
    };
    // The result must still be a valid description.
    let parsed =
        System::parse(&out).map_err(|e| ImageError::Sdf(format!("rewritten, line {e}")))?;
    let diags = sdf::check::check(&parsed);
    if sdf::check::has_errors(&diags) {
        let msgs: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        return Err(ImageError::Sdf(format!(
            "the x86_64 rewrite is invalid:\n{}",
            msgs.join("\n")
        )));
    }
    Ok(out)
}

/// A 2 MiB-aligned virtual address above every map of `pd`.
fn free_vaddr(sys: &System, pd: &str) -> u64 {
    let end = sys
        .pd(pd)
        .map(|p| {
            p.maps
                .iter()
                .map(|m| m.vaddr + sys.region(&m.mr).map_or(0, |r| r.size))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    end.max(0x100_0000).next_multiple_of(0x20_0000)
}

/// `text` with PD `pd` running `image` instead of its program_image: the
/// test-only variants (`variant(xml, "guest1", "hostile.elf")`, issue 8)
/// stay in sync with the one topology by construction. Only the `path`
/// attribute changes, in place.
pub fn variant(text: &str, pd: &str, image: &str) -> Result<String, ImageError> {
    let doc = parse(text)?;
    let node = elements(&doc, "protection_domain")
        .find(|n| n.attribute("name") == Some(pd))
        .ok_or_else(|| ImageError::Sdf(format!("no protection_domain '{pd}'")))?;
    let mut images = node
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "program_image");
    let (Some(pi), None) = (images.next(), images.next()) else {
        return Err(ImageError::Sdf(format!(
            "protection_domain '{pd}' needs exactly one program_image"
        )));
    };
    let path = pi
        .attributes()
        .find(|a| a.name() == "path")
        .ok_or_else(|| ImageError::Sdf(format!("'{pd}': program_image without a path")))?;
    let edits = Edits(vec![(path.range(), format!("path=\"{image}\""))]);
    Ok(edits.apply(text))
}

/// One PD's log page (`pd::log_page`): where the host reads its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// The PD's name in the description.
    pub pd: String,
    pub paddr: u64,
    pub size: u64,
}

/// Bytes of each PD's log page: the host reads every page each sample
/// (250 ms), and no PD logs this much in that time.
pub const LOG_PAGE_SIZE: u64 = 0x1_0000;

/// Where the log pages start: fixed physical addresses in RAM that nothing
/// else of the image uses (aarch64 virt: RAM is 0x4000_0000..0xc000_0000,
/// the kernel and loader sit at 0x6000_0000 and 0x7000_0000; x86_64 pc:
/// below the BIOS's tables at the top of a 2 GiB PC's RAM).
const fn log_page_base(board: Board) -> u64 {
    match board {
        Board::QemuVirtAarch64 => 0xbf00_0000,
        Board::X86_64Generic => 0x7f00_0000,
    }
}

/// `text` with a log page for every PD: a region at a fixed physical
/// address, mapped read-write into that PD alone, its address and size in
/// the runtime's `pd_log_vaddr` / `pd_log_size`. The host reads the pages
/// through QMP, so a release kernel (no console) is judged as a debug one.
pub fn with_log_pages(text: &str, board: Board) -> Result<(String, Vec<LogPage>), ImageError> {
    let doc = parse(text)?;
    let sys = System::parse(text).map_err(|e| ImageError::Sdf(format!("line {e}")))?;
    let mut edits = Edits(Vec::new());
    let mut pages = Vec::new();
    let mut regions = String::new();
    let first_pd = elements(&doc, "protection_domain")
        .next()
        .ok_or_else(|| ImageError::Sdf("no protection_domain".into()))?
        .range()
        .start;
    for (i, node) in elements(&doc, "protection_domain").enumerate() {
        let name = node.attribute("name").unwrap_or_default().to_string();
        let mr = format!("log_{name}");
        if sys.region(&mr).is_some() {
            return Err(ImageError::Sdf(format!(
                "region '{mr}' is taken: the log pages need that name"
            )));
        }
        let paddr = log_page_base(board) + i as u64 * LOG_PAGE_SIZE;
        let _ = writeln!(
            regions,
            "<memory_region name=\"{mr}\" size=\"{LOG_PAGE_SIZE:#x}\" phys_addr=\"{paddr:#x}\" />\n    "
        );
        // After the start tag: `>` ends it (no attribute value holds one).
        let start = node.range().start;
        let Some(gt) = text[start..].find('>') else {
            return Err(ImageError::Sdf(format!("'{name}': unterminated tag")));
        };
        let at = start + gt + 1;
        let vaddr = free_vaddr(&sys, &name);
        edits.0.push((
            at..at,
            format!(
                "\n        <map mr=\"{mr}\" vaddr=\"{vaddr:#x}\" perms=\"rw\" setvar_vaddr=\"pd_log_vaddr\" setvar_size=\"pd_log_size\" />"
            ),
        ));
        pages.push(LogPage {
            pd: name,
            paddr,
            size: LOG_PAGE_SIZE,
        });
    }
    edits.0.push((first_pd..first_pd, regions));
    Ok((edits.apply(text), pages))
}

/// `text` in the dialect of the Microkit 2.3.0 tool: without `pp` on
/// `<protection_domain>`.
pub fn microkit_sdf(text: &str) -> Result<String, ImageError> {
    let doc = parse(text)?;
    let mut edits = Edits(Vec::new());
    for pd in elements(&doc, "protection_domain") {
        if let Some(a) = pd.attributes().find(|a| a.name() == "pp") {
            let r = a.range();
            // With the space before it.
            let start = text[..r.start].trim_end().len();
            edits.0.push((start..r.end, String::new()));
        }
    }
    Ok(edits.apply(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace_xml() -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../system.xml");
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn microkit_dialect_drops_pp_on_pds_only() {
        let x = "<system>\n<protection_domain name=\"a\" priority=\"2\" pp=\"true\" stack_size=\"0x1000\">\n</protection_domain>\n<channel><end pd=\"a\" id=\"0\" pp=\"true\"/><end pd=\"b\" id=\"0\"/></channel></system>";
        let out = microkit_sdf(x).unwrap();
        assert!(
            out.contains("<protection_domain name=\"a\" priority=\"2\" stack_size=\"0x1000\">")
        );
        assert!(out.contains("<end pd=\"a\" id=\"0\" pp=\"true\"/>"));
    }

    #[test]
    fn aarch64_description_is_the_source() {
        let x = workspace_xml();
        assert_eq!(board_sdf(&x, Board::QemuVirtAarch64).unwrap(), x);
    }

    /// A 1 GiB guest (tools/systems/qemu-1g.xml) fits with the rest below
    /// the log pages: regions are aligned to 4 MiB at most (a 1 GiB
    /// alignment left it only 0x4000_0000, over the log pages), the largest
    /// first; what does not fit is refused by name.
    #[test]
    fn x86_placement_aligns_to_the_largest_block_and_stays_below_the_log_pages() {
        let placed = x86_placement(&[
            ("rings", 0x1_0000),
            ("guest0_ram", 1 << 30),
            ("balloon_dma", 0x20_0000),
        ])
        .unwrap();
        assert_eq!(
            placed,
            [
                ("guest0_ram", 0x1000_0000),
                ("balloon_dma", 0x5000_0000),
                ("rings", 0x5020_0000)
            ]
        );
        let e = x86_placement(&[("a", 1 << 30), ("b", 1 << 30)]).unwrap_err();
        assert!(e.to_string().contains("'b'"), "{e}");
        let desc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("systems/qemu-1g.xml"),
        )
        .unwrap();
        let (out, pages) = with_log_pages(
            &board_sdf(&desc, Board::X86_64Generic).unwrap(),
            Board::X86_64Generic,
        )
        .unwrap();
        let sys = System::parse(&out).unwrap();
        let ram = sys.region("guest0_ram").unwrap();
        let end = ram.phys_addr.unwrap() + ram.size;
        assert!(pages.iter().all(|p| p.paddr >= end), "{pages:x?}");
    }

    #[test]
    fn x86_variant_swaps_devices_and_fixes_physical_addresses() {
        let x = workspace_xml();
        let out = board_sdf(&x, Board::X86_64Generic).unwrap();
        let sys = System::parse(&out).unwrap();
        // Every region told through region_paddr has a phys_addr, naturally
        // aligned, none overlapping.
        let mut fixed = Vec::new();
        for pd in &sys.pds {
            for s in &pd.setvars {
                let r = sys.region(&s.region_paddr).unwrap();
                let p = r
                    .phys_addr
                    .unwrap_or_else(|| panic!("{} has no phys_addr", r.name));
                assert_eq!(
                    p % r.size.next_power_of_two().min(X86_ALIGN_MAX),
                    0,
                    "{}",
                    r.name
                );
                assert!((X86_PHYS_BASE..X86_PHYS_END).contains(&p));
                fixed.push((p, p + r.size));
            }
        }
        fixed.sort_unstable();
        fixed.dedup();
        assert!(fixed.windows(2).all(|w| w[0].1 <= w[1].0), "{fixed:x?}");
        // The balloon: BAR4, the config ports, INTx on pin 11.
        let balloon = sys.pd("balloon").unwrap();
        let mmio = sys.region("virtio_mmio").unwrap();
        assert_eq!(mmio.phys_addr, Some(VIRTIO_PCI_BAR4));
        assert_eq!(mmio.size, 0x4000);
        assert_eq!(balloon.ioports.len(), 1);
        assert_eq!(
            (balloon.ioports[0].addr, balloon.ioports[0].size),
            (0xcf8, 8)
        );
        assert!(matches!(
            balloon.irqs[0].kind,
            sdf::model::IrqKind::IoApic {
                pin: 11,
                edge: false,
                high: true,
                ..
            }
        ));
        // The console: COM1's ports instead of the PL011's page (which is
        // gone), ISA IRQ 4 (IOAPIC pin 4, edge).
        let console = sys.pd("console").unwrap();
        assert!(sys.region("uart").is_none());
        assert!(console.maps.iter().all(|m| m.mr != "uart"));
        assert_eq!(
            console
                .ioports
                .iter()
                .map(|i| (i.addr, i.size))
                .collect::<Vec<_>>(),
            [(COM1_PORT, 8)]
        );
        assert!(matches!(
            console.irqs[0].kind,
            sdf::model::IrqKind::IoApic {
                pin: 4,
                edge: true,
                high: true,
                ..
            }
        ));
        // The timer: the HPET page and IOAPIC pin 2, edge.
        let timer = sys.pd("timer").unwrap();
        assert!(matches!(
            timer.irqs[0].kind,
            sdf::model::IrqKind::IoApic {
                pin: 2,
                edge: true,
                ..
            }
        ));
        assert!(timer.maps.iter().any(|m| {
            sys.region(&m.mr)
                .is_some_and(|r| r.phys_addr == Some(HPET_PADDR))
        }));
        // Nothing else changed: same PDs, channels and ids.
        let orig = System::parse(&x).unwrap();
        assert_eq!(orig.channels.len(), sys.channels.len());
        for (a, b) in orig.pds.iter().zip(&sys.pds) {
            assert_eq!(
                (&a.name, a.priority, a.irqs.len()),
                (&b.name, b.priority, b.irqs.len())
            );
            assert_eq!(
                a.irqs.iter().map(|i| i.id).collect::<Vec<_>>(),
                b.irqs.iter().map(|i| i.id).collect::<Vec<_>>()
            );
        }
        // And it is in the Microkit dialect once pp is dropped.
        assert!(!microkit_sdf(&out).unwrap().contains("priority=\"254\" pp="));
    }

    #[test]
    fn a_variant_changes_one_program_image_in_place() {
        let x = workspace_xml();
        let v = variant(&x, "guest1", "hostile.elf").unwrap();
        let diff: Vec<(&str, &str)> = x.lines().zip(v.lines()).filter(|(a, b)| a != b).collect();
        assert_eq!(x.lines().count(), v.lines().count());
        assert_eq!(
            diff,
            [(
                "        <program_image path=\"guest.elf\" />",
                "        <program_image path=\"hostile.elf\" />"
            )]
        );
        let sys = System::parse(&v).unwrap();
        assert!(!sdf::check::has_errors(&sdf::check(&sys)));
        let image = |name: &str| sys.pd(name).unwrap().program_image.clone();
        assert_eq!(image("guest1").as_deref(), Some("hostile.elf"));
        assert_eq!(image("guest0").as_deref(), Some("guest.elf"));
        assert!(variant(&x, "guest9", "hostile.elf").is_err());
        let two = "<system><protection_domain name=\"a\"><program_image path=\"a.elf\"/><program_image path=\"b.elf\"/></protection_domain></system>";
        assert!(variant(two, "a", "c.elf").is_err());
    }

    #[test]
    fn an_irq_without_a_pc_counterpart_is_an_error() {
        let x = "<system><protection_domain name=\"a\" priority=\"1\"><program_image path=\"a.elf\"/><irq irq=\"34\" id=\"0\"/></protection_domain></system>";
        let e = board_sdf(x, Board::X86_64Generic).unwrap_err();
        assert!(e.to_string().contains("irq 34"), "{e}");
    }

    #[test]
    fn every_pd_gets_its_own_log_page_above_its_maps() {
        for board in Board::ALL {
            let text = board_sdf(&workspace_xml(), board).unwrap();
            let (out, pages) = with_log_pages(&text, board).unwrap();
            let before = System::parse(&text).unwrap();
            let after = System::parse(&out).unwrap();
            assert_eq!(pages.len(), before.pds.len());
            for (i, (page, pd)) in pages.iter().zip(&before.pds).enumerate() {
                assert_eq!(page.pd, pd.name);
                assert_eq!(page.paddr, log_page_base(board) + i as u64 * LOG_PAGE_SIZE);
                let region = after.region(&format!("log_{}", pd.name)).unwrap();
                assert_eq!(
                    (region.size, region.phys_addr),
                    (LOG_PAGE_SIZE, Some(page.paddr))
                );
                // Mapped into that PD alone, above everything it had.
                let holders: Vec<&str> = after
                    .pds
                    .iter()
                    .filter(|p| p.maps.iter().any(|m| m.mr == region.name))
                    .map(|p| p.name.as_str())
                    .collect();
                assert_eq!(holders, [pd.name.as_str()]);
                let map = after
                    .pd(&pd.name)
                    .unwrap()
                    .maps
                    .iter()
                    .find(|m| m.mr == region.name)
                    .unwrap();
                assert_eq!(map.vaddr, free_vaddr(&before, &pd.name));
            }
            assert!(out.contains("setvar_vaddr=\"pd_log_vaddr\" setvar_size=\"pd_log_size\""));
            assert!(!sdf::check::has_errors(&sdf::check::check(&after)), "{out}");
            // A description that already uses the name is refused.
            let taken = text.replacen(
                "<protection_domain",
                "<memory_region name=\"log_memserver\" size=\"0x1000\" />\n<protection_domain",
                1,
            );
            assert!(
                with_log_pages(&taken, board)
                    .unwrap_err()
                    .to_string()
                    .contains("log_memserver")
            );
        }
    }

    #[test]
    fn a_wrong_sdk_is_named_in_one_line() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let one_line = |e: ImageError| {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
            s
        };
        let check = || check_sdk(dir, Board::X86_64Generic, KernelConfig::Release);
        assert!(one_line(check().unwrap_err()).contains("not a Microkit SDK"));
        std::fs::write(dir.join("bin/microkit"), "").unwrap();
        std::fs::write(dir.join("VERSION"), "2.2.0\n").unwrap();
        assert!(one_line(check().unwrap_err()).contains("version '2.2.0'"));
        std::fs::write(dir.join("VERSION"), "2.3.0\n").unwrap();
        std::fs::create_dir_all(dir.join("board/x86_64_generic/debug")).unwrap();
        let e = one_line(check().unwrap_err());
        assert!(e.contains("x86_64_generic") && e.contains("release"), "{e}");
        std::fs::create_dir_all(dir.join("board/x86_64_generic/release")).unwrap();
        check().unwrap();
    }

    #[test]
    fn names_parse_both_ways() {
        for b in Board::ALL {
            assert_eq!(Board::parse(b.name()), Some(b));
        }
        assert_eq!(Board::parse("rpi4"), None);
        assert_eq!(KernelConfig::parse("release"), Some(KernelConfig::Release));
        assert!(ImageError::NoSdk.to_string().contains("MICROKIT_SDK"));
    }
}
