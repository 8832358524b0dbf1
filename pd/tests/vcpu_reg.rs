//! `pd::vm::vcpu_reg` against the SDK's `seL4_VCPUReg` enum, for both
//! configs of qemu_virt_aarch64, when `MICROKIT_SDK` names an SDK (CI sets
//! it; without one there is nothing to compare with, and the test says so).

use std::path::Path;

/// The enum's members in order, numbered as C numbers them (a member with
/// `= other` takes that member's value).
fn vcpu_regs(header: &str) -> Vec<(String, u64)> {
    let start = header
        .find("seL4_VCPUReg_SCTLR")
        .expect("seL4_VCPUReg enum");
    let body = &header[start
        ..header[start..]
            .find('}')
            .map(|e| start + e)
            .expect("enum end")];
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut next = 0u64;
    for line in body.lines() {
        let line = line.split("//").next().unwrap_or("").trim();
        let line = line.split("/*").next().unwrap_or("").trim();
        let Some(item) = line.strip_suffix(',') else {
            continue;
        };
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => {
                let v = v.trim();
                let v = v
                    .parse::<u64>()
                    .ok()
                    .or_else(|| out.iter().find(|(n, _)| n == v).map(|(_, x)| *x));
                (n.trim(), v.expect("a value the enum defines"))
            }
            None => (item, next),
        };
        out.push((name.to_string(), value));
        next = value + 1;
    }
    out
}

#[test]
fn vcpu_register_numbers_match_the_sdk() {
    let Some(sdk) = std::env::var_os("MICROKIT_SDK").filter(|s| !s.is_empty()) else {
        eprintln!("MICROKIT_SDK is not set: nothing to compare pd::vm::vcpu_reg with");
        return;
    };
    for config in ["debug", "release"] {
        let path = Path::new(&sdk)
            .join("board/qemu_virt_aarch64")
            .join(config)
            .join("include/sel4/sel4_arch/constants.h");
        let header =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let regs = vcpu_regs(&header);
        for (name, ours) in pd::vm::vcpu_reg::ALL {
            let full = format!("seL4_VCPUReg_{name}");
            let theirs = regs
                .iter()
                .find(|(n, _)| *n == full)
                .unwrap_or_else(|| panic!("{}: no {full}", path.display()))
                .1;
            assert_eq!(ours, theirs, "{full} in {}", path.display());
        }
    }
}
