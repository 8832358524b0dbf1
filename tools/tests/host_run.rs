//! The host platform end to end: ping/pong through the launcher, a crashing
//! PD, a killed launcher, and the launcher's device-side API.

mod common;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, pidfd_open};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tools::host::{Event, Launcher};

const DONE: &str = "PING|INFO: done 100 rounds, ppc answer 42";

fn tools_run(xml: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tools"))
        .arg("run")
        .arg(common::pingpong(xml))
        .arg("--bin-dir")
        .arg(common::host_bins())
        .args(extra)
        .output()
        .expect("run tools");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A pid from a `launcher: started PD 'x' (pid N)` line.
fn started(line: &str) -> Option<(String, i32)> {
    let rest = line.strip_prefix("launcher: started PD '")?;
    let (name, rest) = rest.split_once("' (pid ")?;
    Some((name.to_string(), rest.strip_suffix(')')?.parse().ok()?))
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie (reparented, not yet reaped) has ended.
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')),
    }
}

#[test]
fn ping_pong_runs_to_completion() {
    let (code, out) = tools_run("system.xml", &["--until", DONE, "--timeout", "60"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PONG|INFO: ppc after 100 rounds"), "{out}");
    assert!(
        out.contains(&format!("launcher: matched \"{DONE}\"")),
        "{out}"
    );
    // Both were running at the end and were stopped by the launcher.
    assert_eq!(
        out.matches("was killed by signal 15 (SIGTERM)").count(),
        2,
        "{out}"
    );
}

#[test]
fn a_panicking_pd_is_reported_by_name_and_the_others_stopped() {
    let (code, out) = tools_run("crash.xml", &["--timeout", "60"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("deliberate panic in crasher"), "{out}");
    let report = out
        .lines()
        .find(|l| l.contains("; stopping the others"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        report.starts_with("launcher: PD 'crasher' (pid "),
        "{report}"
    );
    // The dev profile aborts on panic; a release build exits with 101.
    assert!(
        report.contains("signal 6 (SIGABRT)") || report.contains("status 101"),
        "{report}"
    );
    assert!(out.contains("launcher: stopped: PD 'pong'"), "{out}");
    for (_, pid) in out.lines().filter_map(started) {
        assert!(gone(pid), "pid {pid} outlived the launcher\n{out}");
    }
}

#[test]
fn pds_die_with_a_killed_launcher() {
    let mut launcher = Command::new(env!("CARGO_BIN_EXE_tools"))
        .arg("run")
        .arg(common::pingpong("system.xml"))
        .arg("--bin-dir")
        .arg(common::host_bins())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(launcher.stdout.take().unwrap()).lines();
    let mut pids = BTreeMap::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((pd, pid)) = started(&line) {
            pids.insert(pd, pid);
        }
        if line == DONE {
            break;
        }
    }
    assert_eq!(pids.len(), 2, "{pids:?}");
    // pidfds before the kill: they say exactly when each PD ends.
    let pidfds: Vec<_> = pids
        .values()
        .map(|p| pidfd_open(Pid::from_raw(*p).unwrap(), PidfdFlags::empty()).unwrap())
        .collect();
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    for (fd, (pd, pid)) in pidfds.iter().zip(&pids) {
        let mut p = [PollFd::new(fd, PollFlags::IN)];
        let ts = rustix::time::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        assert_eq!(
            poll(&mut p, Some(&ts)).unwrap(),
            1,
            "PD '{pd}' (pid {pid}) survived its launcher"
        );
    }
}

/// `name -> perms` of the memfd mappings of `pid`.
fn memfd_maps(pid: u32) -> BTreeMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = f.get(5)?.strip_prefix("/memfd:")?;
            Some((name.to_string(), f[1].to_string()))
        })
        .collect()
}

#[test]
fn launcher_api_regions_irqs_and_isolation() {
    let xml = std::fs::read_to_string(common::pingpong("system.xml")).unwrap();
    let sys = sdf::System::parse(&xml).unwrap();
    let mut l = Launcher::new(sys, common::host_bins(), false).unwrap();
    let console = l.console();
    l.start().unwrap();
    assert!(
        console
            .wait_for(Duration::from_secs(60), |s| s == DONE)
            .is_some(),
        "{:?}",
        console.lines()
    );

    // The regions hold what the protocol left there.
    let to_pong = l.map_region("ping_to_pong").unwrap();
    let to_ping = l.map_region("pong_to_ping").unwrap();
    let read = |m: &tools::host::SharedMapping| {
        // SAFETY: the mapping is 4 KiB, page-aligned and lives until the end
        // of the test; the PDs are idle now.
        unsafe { m.as_ptr().cast::<u64>().read_volatile() }
    };
    let (a, b) = (read(&to_pong), read(&to_ping));
    assert_eq!((a, b), (100, 200));
    // ping learned pong_to_ping's address through its setvar.
    let paddr = l.region_paddr("pong_to_ping").unwrap();
    assert!(
        console
            .lines()
            .iter()
            .any(|s| s.ends_with(&format!("pong_to_ping paddr {paddr:#x}"))),
        "{paddr:#x}"
    );

    // Each PD maps exactly its regions, with exactly its perms.
    let pids: BTreeMap<String, u32> = l.pids().into_iter().collect();
    let want = |a: &str, b: &str| {
        BTreeMap::from([
            ("ping_to_pong".to_string(), a.to_string()),
            ("pong_to_ping".to_string(), b.to_string()),
        ])
    };
    assert_eq!(memfd_maps(pids["ping"]), want("rw-s", "r--s"));
    assert_eq!(memfd_maps(pids["pong"]), want("r--s", "rw-s"));
    // And holds only its own descriptors: stdio + channel in/out (+ PPC).
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    assert_eq!(
        fds(pids["ping"]),
        3 + 2 + 1,
        "ping: stdio, channel in/out, PPC caller end"
    );
    assert_eq!(
        fds(pids["pong"]),
        3 + 2 + 1 + 2,
        "pong: stdio, channel in/out, PPC callee end, IRQ raise/ack"
    );

    // The device side raises pong's IRQ and sees each acknowledgement.
    let irq = l.irq_line("pong", 5).unwrap();
    for n in 1..=3 {
        irq.raise().unwrap();
        assert!(irq.wait_ack(Duration::from_secs(10)).unwrap(), "no ack {n}");
        let want = format!("PONG|INFO: irq {n}");
        assert!(
            console
                .wait_for(Duration::from_secs(10), |s| s == want)
                .is_some(),
            "{want}"
        );
    }
    assert!(l.irq_line("ping", 5).is_err());
    assert!(l.map_region("nope").is_err());

    // Nothing has ended on its own; stopping ends both, by SIGTERM.
    assert!(matches!(
        l.wait(Some(Duration::ZERO)).unwrap(),
        Event::Timeout
    ));
    let exits = l.stop(Duration::from_secs(5));
    assert_eq!(exits.len(), 2);
    for e in &exits {
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&e.status),
            Some(15),
            "{e}"
        );
    }
}

#[test]
fn run_refuses_an_invalid_system_and_a_missing_binary() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path();
    let bad = dir.join("bad.xml");
    std::fs::write(
        &bad,
        "<system>\n<memory_region name=\"a\" size=\"0x1800\"/>\n</system>\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tools"))
        .arg("run")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("line 2: error: memory_region 'a' size 0x1800")
    );

    let out = Command::new(env!("CARGO_BIN_EXE_tools"))
        .arg("run")
        .arg(common::pingpong("system.xml"))
        .arg("--bin-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PD 'pong': no host binary at"),
        "{out:?}"
    );
}
