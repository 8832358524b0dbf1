//! `tools demo`'s command line (issue 16): values out of range are refused
//! before anything starts, with the range or the limit in the message. No
//! PD is built or launched: `--no-build`, and a failure that got as far as
//! launching would print the `demo: 2 guests` line and take seconds.

mod common;

use common::demo_no_build as demo;

/// Refused with exit status 2, before the launch line, with `needle` in
/// the message.
fn refused(args: &[&str], needle: &str) {
    let out = demo(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}\n{stdout}\n{stderr}");
    assert!(
        !stdout.contains("demo: 2 guests"),
        "{args:?} started the demo\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{args:?}: no '{needle}' in\n{stderr}"
    );
}

#[test]
fn tunables_out_of_range_are_refused_with_the_range() {
    let cap = format!("1..={}", memserver::MAX_CAPACITY);
    refused(&["--capacity", "129"], &cap);
    refused(&["--capacity", "64"], &cap);
    refused(&["--capacity", "0"], &cap);
    refused(&["--order", "11"], &format!("0..={}", memserver::MAX_ORDER));
    refused(&["--delay-ms", "0"], "1..=3600000");
    refused(
        &["--in-flight", "9"],
        &format!("1..={}", memserver::MAX_IN_FLIGHT),
    );
}

#[test]
fn guest_memory_that_does_not_fit_is_refused_naming_the_limit() {
    refused(&["--guest-mib", "0"], "1..=");
    // system.xml gives each guest 512 MiB; 8 MiB stay live by default.
    refused(&["--guest-mib", "600"], "512 MiB");
    refused(&["--guest-mib", "505"], "512 MiB");
    refused(&["--guest-mib", "500", "--live-mib", "20"], "512 MiB");
}
