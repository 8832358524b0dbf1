//! The memserver's control port, driven as an operator would: `tools demo
//! --set-tunable`, and `tools tunable` typed while `tools demo
//! --control-socket` runs, on the host platform
//! (tools/systems/host-2x1g.xml). A change sent while the system runs is
//! answered and takes effect; a refused one changes nothing; a description
//! without the port, and bad text on the command line, are refused before
//! anything starts. Every wait is bounded; nothing sleeps for timing.

mod common;

use common::{demo_no_build, host_pds_built_from, workspace};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tools::demo::{self, DemoConfig, DemoReport, TunableChange};

const MIB: u64 = 1 << 20;

fn change(text: &str) -> TunableChange {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// `tools tunable --socket SOCKET CHANGES`, run to its end.
fn tunable(socket: &Path, changes: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tools"))
        .arg("tunable")
        .arg("--socket")
        .arg(socket)
        .args(changes)
        .output()
        .expect("run tools tunable")
}

/// Two guests free 64 MiB each under PDs built with a delay (60 s)
/// longer than the whole run, and no change asked for.
fn delay_longer_than_the_run() -> DemoConfig {
    let system = workspace().join("tools/systems/host-2x1g.xml");
    DemoConfig {
        bin_dir: host_pds_built_from(&system),
        system,
        guest_params: "pattern=bulk,mib=64,hold_ms=500,live_mib=8".into(),
        tunables: "delay_ms=60000".into(),
        timeout: Duration::from_secs(50),
        period: Duration::from_millis(50),
        settle: Duration::from_secs(20),
        device: Default::default(),
        watch: None,
        set_tunables: Vec::new(),
        control_socket: None,
    }
}

/// The guests ran, and what they freed came back: the 60 s delay would
/// have kept all of it until after the run, had the port not shortened it.
fn came_back_through_the_port(r: &DemoReport) {
    let ctx = || format!("{}\n{}", r.summary(), r.console.join("\n"));
    assert!(r.guests_ok, "{}", ctx());
    assert_eq!(r.freed, 2 * 64 * MIB, "{}", ctx());
    assert!(r.memory_came_back(0.9), "{}", ctx());
    assert!(r.problems.is_empty(), "{}", ctx());
}

/// Built with a delay (60 s) longer than the whole run: what the guests
/// free comes back only because the operator shortens the delay through
/// the control port while the system runs. A refused value is answered
/// with its reason and changes nothing; the policy is switched by name.
#[test]
fn a_tunable_changed_while_running_takes_effect_and_a_bad_one_is_refused() {
    let cfg = DemoConfig {
        set_tunables: vec![
            change("0:delay_ms=250"),
            change("0:order=11"),
            change("0:policy=linux"),
        ],
        ..delay_longer_than_the_run()
    };
    let r = demo::run(&cfg, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    let ctx = || format!("{}\n{}", r.summary(), r.console.join("\n"));
    assert_eq!(
        r.control,
        [
            "delay_ms=250 set",
            "order=11 refused: value out of range",
            "policy=linux set"
        ],
        "{}",
        ctx()
    );
    for line in [
        "MEMSERVER|INFO: control: tunable delay_ms=250 set",
        "MEMSERVER|INFO: control: tunable order=11 refused: value out of range",
        "MEMSERVER|INFO: control: tunable policy=linux set",
    ] {
        assert!(
            r.console.iter().any(|l| l == line),
            "no '{line}'\n{}",
            ctx()
        );
    }
    came_back_through_the_port(&r);
}

/// As above, but typed: `tools tunable` talks to the running demo through
/// its socket and prints the memserver's answers, and its exit status says
/// whether every change was set.
#[test]
fn a_change_typed_while_running_is_answered_to_its_client_and_takes_effect() {
    let socket = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("control-typed.sock");
    let _ = std::fs::remove_file(&socket);
    let cfg = DemoConfig {
        control_socket: Some(socket.clone()),
        ..delay_longer_than_the_run()
    };
    let demo = std::thread::spawn(move || demo::run(&cfg, &mut |_| {}));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(!demo.is_finished(), "the demo ended before it listened");
        assert!(
            Instant::now() < deadline,
            "no socket at {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = tunable(&socket, &["order=11", "delay_ms=250"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout, "order=11 refused: value out of range\ndelay_ms=250 set\n",
        "{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "one change was refused\n{stderr}"
    );
    let r = demo
        .join()
        .expect("demo thread")
        .unwrap_or_else(|e| panic!("{e}"));
    let ctx = || format!("{}\n{}", r.summary(), r.console.join("\n"));
    assert_eq!(
        r.control,
        ["order=11 refused: value out of range", "delay_ms=250 set"],
        "{}",
        ctx()
    );
    came_back_through_the_port(&r);
    assert!(!socket.exists(), "the demo left its socket behind");
}

/// `tools tunable` refuses text the memserver could never take before it
/// connects, and says so when no demo listens: exit status 2.
#[test]
fn tunable_refuses_bad_text_and_says_when_no_demo_listens() {
    let socket = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("control-nobody.sock");
    let _ = std::fs::remove_file(&socket);
    for (args, needle) in [
        (vec!["nope=1"], "unknown tunable 'nope'"),
        (vec!["delay_ms"], "is not key=value"),
        (vec!["delay_ms=250", "policy=fast"], "bad policy 'fast'"),
        (vec![], "KEY=VALUE"),
        (
            vec!["delay_ms=250"],
            "is `tools demo --control-socket` running?",
        ),
    ] {
        let out = tunable(&socket, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: no '{needle}' in\n{stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// Bad text is refused by the command line's parser, and a description
/// without the port before anything is built or started: exit status 2,
/// the reason in one line.
#[test]
fn bad_changes_and_a_description_without_the_port_are_refused_up_front() {
    for (arg, needle) in [
        ("delay_ms=250", "is not SECS:key=value"),
        ("x:delay_ms=250", "is not a time in seconds"),
        ("-1:delay_ms=250", "is not a time in seconds"),
        ("1e9:delay_ms=250", "is not a time in seconds"),
        ("3:delay_ms", "is not key=value"),
        (
            "3:nope=1",
            "unknown tunable 'nope' (known: order, delay_ms,",
        ),
        ("3:policy=fast", "bad policy 'fast' (linux or adaptive)"),
        ("3:delay_ms=soon", "bad value 'soon' for 'delay_ms'"),
    ] {
        let out = demo_no_build(&[&format!("--set-tunable={arg}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{arg}: {stderr}");
        assert!(stderr.contains(needle), "{arg}: no '{needle}' in\n{stderr}");
    }
    // system.xml (QEMU's shape) has no operator console.
    let out = demo_no_build(&["--set-tunable", "1:delay_ms=250"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(!stdout.contains("demo: 2 guests"), "started\n{stdout}");
    assert!(
        stderr.contains("--set-tunable")
            && stderr.contains("system.xml")
            && stderr.contains("no control port"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // Nor a socket for typed changes.
    let out = demo_no_build(&["--control-socket"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--control-socket") && stderr.contains("no control port"),
        "{stderr}"
    );
}
