//! The Microkit ELF contract (DESIGN §4): every symbol the microkit tool
//! patches exists in `.symtab`, has its size, and lies in the file bytes of a
//! LOAD segment; the entry point is `_start` at the link address.

mod common;

use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol};

const RUNTIME_SYMBOLS: [(&str, u64); 6] = [
    ("microkit_name", 64),
    ("microkit_passive", 1),
    ("microkit_irqs", 8),
    ("microkit_notifications", 8),
    ("microkit_pps", 8),
    ("microkit_ioports", 8),
];

fn check(target: &str, bin: &str, setvars: &[&str], machine: object::Architecture) {
    let path = common::microkit_elf(target, bin);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let elf = ElfFile64::<Endianness>::parse(&*data).unwrap();
    let e = elf.endian();
    assert_eq!(elf.architecture(), machine, "{bin} for {target}");
    assert!(
        elf.section_by_name(".symtab").is_some(),
        "{bin} for {target}: no .symtab"
    );
    let loads: Vec<(u64, u64)> = elf
        .elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(e) == PT_LOAD)
        .map(|ph| (ph.p_vaddr(e), ph.p_filesz(e)))
        .collect();
    let wanted = RUNTIME_SYMBOLS
        .iter()
        .copied()
        .chain(setvars.iter().map(|s| (*s, 8)));
    for (name, size) in wanted {
        let sym = elf
            .symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("{bin} for {target}: no symbol {name} in .symtab"));
        assert_eq!(sym.size(), size, "{bin} for {target}: size of {name}");
        let (a, end) = (sym.address(), sym.address() + size);
        assert!(
            loads.iter().any(|(v, filesz)| *v <= a && end <= v + filesz),
            "{bin} for {target}: {name} at {a:#x}..{end:#x} is not in the file bytes of a LOAD segment {loads:x?}"
        );
    }
    let start = elf
        .symbols()
        .find(|s| s.name() == Ok("_start"))
        .expect("_start");
    assert_eq!(
        elf.entry(),
        start.address(),
        "{bin} for {target}: entry is not _start"
    );
    assert_eq!(
        elf.entry(),
        sdf::build::LINK_ADDRESS,
        "{bin} for {target}: not linked at the link address"
    );
}

#[test]
fn aarch64_images_carry_every_patched_symbol() {
    check(
        "aarch64-unknown-none",
        "ping",
        &["pong_to_ping_paddr"],
        object::Architecture::Aarch64,
    );
    check(
        "aarch64-unknown-none",
        "pong",
        &["ping_to_pong_vaddr"],
        object::Architecture::Aarch64,
    );
}

#[test]
fn x86_64_images_carry_every_patched_symbol() {
    check(
        "x86_64-unknown-none",
        "ping",
        &["pong_to_ping_paddr"],
        object::Architecture::X86_64,
    );
    check(
        "x86_64-unknown-none",
        "pong",
        &["ping_to_pong_vaddr"],
        object::Architecture::X86_64,
    );
}
