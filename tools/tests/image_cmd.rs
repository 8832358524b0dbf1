//! `tools image` without an SDK: a one-line error naming MICROKIT_SDK, and
//! `--sdf-only` still derives the board descriptions; bad `--tunables` and
//! `--guest-params` are refused before anything is built.

use std::path::Path;
use std::process::Command;

fn tools() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tools"));
    c.env_remove("MICROKIT_SDK");
    c
}

#[test]
fn without_an_sdk_it_says_what_to_set() {
    let out = tools()
        .args(["image", "--board", "qemu_virt_aarch64"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().filter(|l| l.contains("MICROKIT_SDK")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("MICROKIT_SDK is not set"), "{err}");
}

#[test]
fn sdf_only_writes_both_descriptions_without_an_sdk() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdf-only");
    let _ = std::fs::remove_dir_all(&dir);
    let out = tools()
        .args(["image", "--board", "x86_64_generic", "--sdf-only", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let board = std::fs::read_to_string(dir.join("x86_64_generic.xml")).unwrap();
    let sys = sdf::System::parse(&board).unwrap();
    assert!(!sdf::check::has_errors(&sdf::check::check(&sys)));
    assert!(board.contains("phys_addr=\"0xfed00000\""));
    let mk = std::fs::read_to_string(dir.join("microkit.xml")).unwrap();
    // Microkit 2.3.0 rejects pp on protection_domain.
    assert!(
        !mk.lines()
            .any(|l| l.contains("<protection_domain") && l.contains(" pp=")),
        "{mk}"
    );
}

/// The memserver's parser judges `--tunables`, and the guests' parser
/// `--guest-params`, before anything is built (clap's usage error, exit
/// status 2), for `tools image` and `tools qemu` on either platform.
#[test]
fn bad_built_in_texts_are_refused_before_anything_is_built() {
    let cases = [
        ("--tunables", "policy=fast", "bad value 'fast' for 'policy'"),
        ("--tunables", "order=11", "tunable out of range: order"),
        ("--tunables", "delay_ms", "'delay_ms' is not key=value"),
        ("--guest-params", "pattern=spiral", "spiral"),
        ("--guest-params", "mib=0", "mib"),
    ];
    for args in [
        &["image", "--board", "qemu_virt_aarch64"][..],
        &["qemu", "--platform", "bare", "--arch", "aarch64"][..],
    ] {
        for (flag, bad, says) in cases {
            let out = tools().args(args).args([flag, bad]).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?} {flag} {bad}: {err}");
            assert!(err.contains(flag) && err.contains(says), "{bad}: {err}");
            assert!(!err.contains("building"), "{bad}: {err}");
        }
    }
}
