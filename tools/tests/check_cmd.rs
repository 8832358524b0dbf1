//! `tools check` prints `path:line: severity: message` and fails on errors.

use std::process::Command;

#[test]
fn check_reports_errors_with_the_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("system.xml");
    std::fs::write(
        &f,
        r#"<system>
<protection_domain name="a" priority="1"><program_image path="a.elf"/></protection_domain>
<protection_domain name="b" priority="2"><program_image path="b.elf"/></protection_domain>
<channel><end pd="a" id="3"/><end pd="b" id="0"/></channel>
<channel><end pd="a" id="3"/><end pd="b" id="1"/></channel>
</system>
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tools"))
        .arg("check")
        .arg(&f)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        err.trim(),
        format!(
            "{}:5: error: channel end pd=\"a\" (to 'b') id 3 already used by channel end pd=\"a\" (to 'b') (line 4)",
            f.display()
        )
    );
}

#[test]
fn check_accepts_the_test_systems() {
    for xml in ["system.xml", "crash.xml"] {
        let path = format!(
            "{}/../pd/examples/pingpong/{xml}",
            env!("CARGO_MANIFEST_DIR")
        );
        let out = Command::new(env!("CARGO_BIN_EXE_tools"))
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains(": ok (2 PDs, 2 memory regions, 1 channels, 0 warnings)")
        );
    }
}
