//! Helpers for a PD crate's `build.rs`: generate its configuration module and
//! give its Microkit binaries the link setup.
//!
//! In the `build.rs` of a PD crate with one binary, the PD "memserver":
//!
//! ```no_run
//! sdf::build::pd("../system.xml", "memserver").unwrap_or_else(|e| panic!("{e}"));
//! ```
//!
//! and in its `src/main.rs`:
//! `mod config { include!(concat!(env!("OUT_DIR"), "/pd_memserver.rs")); }`.
//!
//! Cargo does not pass a dependency's `rustc-link-arg` on to the binaries of
//! the crate that uses it, so the PD crate's own build script must emit the
//! link arguments; [`link_microkit`] does it, only when building for
//! `target_os = "none"`.

use crate::{check, codegen, model::System};
use core::fmt;
use std::path::{Path, PathBuf};

/// Where PD images are linked: the address Microkit's own examples use.
pub const LINK_ADDRESS: u64 = 0x20_0000;

/// A build-script failure.
#[derive(Debug)]
pub enum BuildError {
    Io(PathBuf, std::io::Error),
    Parse(PathBuf, crate::ParseError),
    Invalid(PathBuf, Vec<check::Diagnostic>),
    Codegen(PathBuf, codegen::CodegenError),
    Guests(PathBuf, crate::guests::GuestError),
    /// [`generate_for`]: the PD's configuration differs in this description.
    Differs(PathBuf, String),
    NoOutDir,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            BuildError::Parse(p, e) => write!(f, "{}:{e}", p.display()),
            BuildError::Invalid(p, d) => {
                for d in d {
                    writeln!(f, "{}:{d}", p.display())?;
                }
                Ok(())
            }
            BuildError::Codegen(p, e) => write!(f, "{}: {e}", p.display()),
            BuildError::Guests(p, e) => write!(f, "{}: {e}", p.display()),
            BuildError::Differs(p, pd) => write!(
                f,
                "{}: PD '{pd}' has other maps, IRQs, setvars or channel ids here: one binary cannot serve both descriptions",
                p.display()
            ),
            BuildError::NoOutDir => write!(f, "OUT_DIR is not set: call this from a build script"),
        }
    }
}

impl std::error::Error for BuildError {}

/// Parse and validate `system_xml`, then write `$OUT_DIR/pd_<pd_name>.rs`
/// and return its path. Errors (not warnings) of [`check::check`] fail the build.
pub fn generate(system_xml: impl AsRef<Path>, pd_name: &str) -> Result<PathBuf, BuildError> {
    let path = system_xml.as_ref();
    println!("cargo:rerun-if-changed={}", path.display());
    let xml = std::fs::read_to_string(path).map_err(|e| BuildError::Io(path.into(), e))?;
    let sys = System::parse(&xml).map_err(|e| BuildError::Parse(path.into(), e))?;
    let diags = check::check(&sys);
    if check::has_errors(&diags) {
        return Err(BuildError::Invalid(path.into(), diags));
    }
    let mut code =
        codegen::generate(&sys, pd_name).map_err(|e| BuildError::Codegen(path.into(), e))?;
    code += &stamp_of(path, &xml).code();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or(BuildError::NoOutDir)?);
    let out = out_dir.join(format!("pd_{pd_name}.rs"));
    std::fs::write(&out, code).map_err(|e| BuildError::Io(out.clone(), e))?;
    Ok(out)
}

/// [`generate`] for PD `pd_name` of `system_xml`, for a binary that also
/// serves as `pd_name` in each of `also` (e.g. a test PD shared by two test
/// systems): its generated configuration must be the same in all of them,
/// and the binary then carries each one's stamp ([`crate::stamp`]).
pub fn generate_for(
    system_xml: impl AsRef<Path>,
    also: &[&Path],
    pd_name: &str,
) -> Result<PathBuf, BuildError> {
    let out = generate(&system_xml, pd_name)?;
    // What the binary depends on: its maps (address, size, rights, setvars),
    // IRQs, setvars and channel ids; not names, not line numbers.
    let config = |path: &Path| -> Result<(String, String), BuildError> {
        println!("cargo:rerun-if-changed={}", path.display());
        let xml = std::fs::read_to_string(path).map_err(|e| BuildError::Io(path.into(), e))?;
        let sys = System::parse(&xml).map_err(|e| BuildError::Parse(path.into(), e))?;
        let pd = sys.pd(pd_name).ok_or_else(|| {
            BuildError::Codegen(
                path.into(),
                codegen::CodegenError::UnknownPd(pd_name.into()),
            )
        })?;
        let size = |mr: &str| sys.region(mr).map(|r| r.size);
        let maps: Vec<_> = pd
            .maps
            .iter()
            .map(|m| {
                (
                    m.vaddr,
                    size(&m.mr),
                    m.perms.to_string(),
                    &m.setvar_vaddr,
                    &m.setvar_size,
                )
            })
            .collect();
        let irqs: Vec<_> = pd.irqs.iter().map(|i| (i.id, &i.kind)).collect();
        let setvars: Vec<_> = pd
            .setvars
            .iter()
            .map(|v| (&v.symbol, size(&v.region_paddr)))
            .collect();
        let mut ends: Vec<_> = sys
            .ends_of(pd_name)
            .map(|(e, _)| (e.id, e.pp, e.notify))
            .collect();
        ends.sort();
        Ok((
            format!("{maps:?} {irqs:?} {setvars:?} {ends:?} {:?}", pd.ioports),
            xml,
        ))
    };
    let (first, _) = config(system_xml.as_ref())?;
    let mut code = std::fs::read_to_string(&out).map_err(|e| BuildError::Io(out.clone(), e))?;
    for (i, other) in also.iter().enumerate() {
        let (cfg, xml) = config(other)?;
        if cfg != first {
            return Err(BuildError::Differs(other.to_path_buf(), pd_name.into()));
        }
        // A second static of the same name would clash: number it.
        code += &stamp_of(other, &xml).code().replace(
            "__SDF_SYSTEM_STAMP",
            &format!("__SDF_SYSTEM_STAMP_{}", i + 1),
        );
    }
    std::fs::write(&out, code).map_err(|e| BuildError::Io(out.clone(), e))?;
    Ok(out)
}

/// The stamp of a build from `path` (canonical when it can be: the message
/// of a mismatch names it).
fn stamp_of(path: &Path, xml: &str) -> crate::stamp::Stamp {
    let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.into());
    crate::stamp::Stamp::new(&shown, xml.as_bytes())
}

/// Write `$OUT_DIR/guests_<server>.rs`, [`crate::guests::server_module`] of
/// `system_xml` for PD `server`, and return its path. A description the
/// system cannot run (no guest, too many) fails the build.
pub fn guests(system_xml: impl AsRef<Path>, server: &str) -> Result<PathBuf, BuildError> {
    let path = system_xml.as_ref();
    println!("cargo:rerun-if-changed={}", path.display());
    let xml = std::fs::read_to_string(path).map_err(|e| BuildError::Io(path.into(), e))?;
    let sys = System::parse(&xml).map_err(|e| BuildError::Parse(path.into(), e))?;
    let code = crate::guests::server_module(&sys, server)
        .map_err(|e| BuildError::Guests(path.into(), e))?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or(BuildError::NoOutDir)?);
    let out = out_dir.join(format!("guests_{server}.rs"));
    std::fs::write(&out, code).map_err(|e| BuildError::Io(out.clone(), e))?;
    Ok(out)
}

/// The linker script for a Microkit PD image: entry `_start`, linked at
/// [`LINK_ADDRESS`], `.data` kept as file bytes (the tool patches symbols there).
pub fn linker_script() -> String {
    format!(
        "ENTRY(_start)\n\
         SECTIONS\n{{\n  . = {LINK_ADDRESS:#x};\n  .text : {{ *(.text.start) *(.text .text.*) }}\n  \
         . = ALIGN(0x1000);\n  .rodata : {{ *(.rodata .rodata.*) }}\n  \
         . = ALIGN(0x1000);\n  .data : {{ *(.data .data.*) *(.got .got.*) }}\n  \
         .bss : {{ *(.bss .bss.*) *(COMMON) }}\n}}\n"
    )
}

/// When the target is `target_os = "none"`, write the linker script to
/// `$OUT_DIR` and pass it (and a non-PIE, 4 KiB-page link) to every binary of
/// the calling crate. Does nothing for host builds.
pub fn link_microkit() -> Result<(), BuildError> {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return Ok(());
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").ok_or(BuildError::NoOutDir)?);
    let script = out_dir.join("microkit-pd.ld");
    std::fs::write(&script, linker_script()).map_err(|e| BuildError::Io(script.clone(), e))?;
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    // x86_64-unknown-none links static PIE by default; nobody relocates a
    // Microkit image, so link it at its address.
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
    // x86_64-unknown-none code is position independent and keeps a `.got`;
    // RELRO would give it a segment of its own that shares a page with
    // `.rodata` or `.bss`, and the Microkit tool cannot map two segments
    // into one page ("slot already filled"). The linker script puts `.got`
    // in `.data`; without RELRO that is one RW segment.
    println!("cargo:rustc-link-arg-bins=-znorelro");
    Ok(())
}

/// The system description a PD crate builds from: `$SYSTEM_XML` when set
/// (how `tools image` and the bare image pass a board's variant), else
/// `system.xml` at the workspace root, one level above the crate.
pub fn system_xml() -> PathBuf {
    println!("cargo:rerun-if-env-changed=SYSTEM_XML");
    match std::env::var_os("SYSTEM_XML") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default())
            .join("../system.xml"),
    }
}

/// [`generate`] for one PD plus [`link_microkit`]: all a one-PD crate needs.
pub fn pd(system_xml: impl AsRef<Path>, pd_name: &str) -> Result<PathBuf, BuildError> {
    let out = generate(system_xml, pd_name)?;
    link_microkit()?;
    Ok(out)
}

/// The cfgs the memserver's source is built with for its control port
/// ([`System::control_port`]), every one a build script may set: for
/// `cargo::rustc-check-cfg`.
pub const CONTROL_PORT_CFGS: [&str; 3] = ["has_control", "control_irq", "control_console"];

/// The cfgs of [`CONTROL_PORT_CFGS`] that `sys`'s control port sets:
/// none without a port, `has_control` with one, and `control_irq` or
/// `control_console` for who says "look". One rule for the memserver's own
/// build and the bare image, which compiles the memserver's source too.
pub fn control_port_cfgs(sys: &System) -> Result<&'static [&'static str], String> {
    use crate::model::ControlPort;
    Ok(match sys.control_port()? {
        None => &[],
        Some(ControlPort::Irq(_)) => &["has_control", "control_irq"],
        Some(ControlPort::Console(_)) => &["has_control", "control_console"],
    })
}
