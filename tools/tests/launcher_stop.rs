//! The launcher's supervision with stand-in PD binaries (shell scripts): a PD
//! that ignores SIGTERM is killed after the grace period, and a PD's exit
//! status is reported by name.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use tools::host::{Event, Launcher};

/// A scratch dir (removed when the returned `TempDir` is dropped) with
/// `ping` and `pong` scripts running `ping` and `pong`.
fn bin_dir(ping: &str, pong: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [("ping", ping), ("pong", pong)] {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn system() -> sdf::System {
    sdf::System::parse(&std::fs::read_to_string(common::pingpong("system.xml")).unwrap()).unwrap()
}

#[test]
fn a_pd_ignoring_sigterm_is_killed_after_the_grace_period() {
    // An ignored signal stays ignored across exec, so `tail` ignores SIGTERM.
    let dir = bin_dir(
        "echo ready; exec tail -f /dev/null",
        "trap '' TERM; echo ready; exec tail -f /dev/null",
    );
    let mut l = Launcher::new(system(), dir.path(), false).unwrap();
    let console = l.console();
    l.start().unwrap();
    let both_ready = |lines: &[String]| lines.iter().filter(|l| *l == "ready").count() == 2;
    assert!(
        console.wait_until(Duration::from_secs(10), both_ready),
        "{:?}",
        console.lines()
    );
    let grace = Duration::from_millis(300);
    let t = Instant::now();
    let mut exits = l.stop(grace);
    let took = t.elapsed();
    exits.sort_by(|a, b| a.pd.cmp(&b.pd));
    let sigs: Vec<(String, Option<i32>)> = exits
        .iter()
        .map(|e| (e.pd.clone(), e.status.signal()))
        .collect();
    assert_eq!(
        sigs,
        [
            ("ping".to_string(), Some(15)),
            ("pong".to_string(), Some(9))
        ]
    );
    assert!(took >= grace && took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn an_exiting_pd_is_reported_with_its_status() {
    let dir = bin_dir("exec tail -f /dev/null", "exit 3");
    let mut l = Launcher::new(system(), dir.path(), false).unwrap();
    l.start().unwrap();
    match l.wait(Some(Duration::from_secs(10))).unwrap() {
        Event::Exited(e) => {
            assert_eq!((e.pd.as_str(), e.status.code()), ("pong", Some(3)));
            assert!(
                e.to_string().starts_with("PD 'pong' (pid ")
                    && e.to_string().ends_with("exited with status 3"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    let exits = l.stop(Duration::from_secs(2));
    assert_eq!(exits.len(), 1, "only ping was still running: {exits:?}");
}
