//! A hostile guest on the host platform (issue 8): guest1 runs `hostile.elf`
//! (guest/src/bin/hostile.rs) while guest0 runs its workload. Every hostile
//! request must get an error answer, the memserver must keep serving both,
//! guest0 must finish with no failure and its data intact, no page may be
//! lost, and guest0's freed memory must still go back to the host.

mod faults;

use faults::{Run, assert_guest_clean, conservation, field, last_conservation, variant};
use std::time::Duration;

const ROUNDS: u64 = 6;
const FLOOD: u64 = 256;
const LIVE_MIB: u64 = 8;

#[test]
fn hostile_variant_differs_from_system_xml_only_in_guest1_image() {
    let base = std::fs::read_to_string(faults::workspace().join("system.xml")).unwrap();
    let v = variant("guest1", "hostile.elf");
    let diff: Vec<(&str, &str)> = base
        .lines()
        .zip(v.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(base.lines().count(), v.lines().count());
    assert_eq!(
        diff,
        [(
            "        <program_image path=\"guest.elf\" />",
            "        <program_image path=\"hostile.elf\" />"
        )]
    );
    let sys = sdf::System::parse(&v).unwrap();
    assert!(!sdf::check::has_errors(&sdf::check(&sys)));
    let g1 = sys.pds.iter().find(|p| p.name == "guest1").unwrap();
    assert_eq!(g1.program_image.as_deref(), Some("hostile.elf"));
}

#[test]
fn a_hostile_guest_gets_errors_and_the_good_guest_is_served() {
    let hostile = format!("rounds={ROUNDS},pause_ms=150,flood={FLOOD},scribble_ms=20");
    let guest = format!("pattern=churn,mib=32,rounds=6,hold_ms=150,live_mib={LIVE_MIB}");
    let mut run = Run::start(
        &variant("guest1", "hostile.elf"),
        &[
            ("GUEST_PARAMS", &guest),
            ("HOSTILE_PARAMS", &hostile),
            ("MEMSERVER_TUNABLES", "order=9,delay_ms=300"),
        ],
    );
    run.wait(
        "guest0 and the hostile PD to finish",
        Duration::from_secs(120),
        |r| r.line("GUEST0|INFO: phase=done").is_some() && r.line("HOSTILE|INFO: done").is_some(),
    );
    let done_at = run.lines().len();
    // The last frees are reported after the delay: a conservation line
    // with only guest0's live set allocated and nothing held by the host.
    let live_pages = LIVE_MIB * faults::PAGES_PER_MIB;
    run.wait(
        "a settled conservation line with only the live set allocated",
        Duration::from_secs(30),
        |r| {
            last_conservation(&r.lines(), 0)
                .is_some_and(|[_, _, alloc, iso, _]| alloc == live_pages && iso == 0)
        },
    );
    // And the host got guest0's freed memory back: what the RAM memfds
    // hold falls to about the live set (the hostile PD touches no RAM).
    run.wait(
        "the host memory to fall to the live set",
        Duration::from_secs(30),
        |r| r.device.held_bytes().unwrap() <= (LIVE_MIB + 4) * faults::MIB,
    );

    let lines = run.lines();
    for l in lines.iter().filter(|l| l.starts_with("HOSTILE|")) {
        println!("{l}");
    }
    // The good guest: no failure, data verified.
    assert_guest_clean(&run, "GUEST0");
    // Every hostile request was answered, with an error of the expected
    // kind; the good requests it made (allocations, frees, the Stats after
    // each scribble) were served.
    let attack = |name: &str| {
        let l = run
            .line(&format!("HOSTILE|INFO: attack={name} "))
            .unwrap_or_else(|| panic!("no line for {name}"));
        let f = |k| field(&l, k).unwrap();
        (
            l.clone(),
            f("sent"),
            f("answered"),
            f("errors"),
            f("expected"),
        )
    };
    for name in tools::bare::ATTACKS {
        let (l, sent, answered, errors, expected) = attack(name);
        assert!(sent >= ROUNDS, "{l}");
        assert_eq!(answered, sent, "{l}");
        assert_eq!(errors, sent, "{l}");
        assert_eq!(expected, sent, "{l}");
    }
    assert_eq!(attack("flood").1, ROUNDS * FLOOD);
    let (l, sent, answered, errors, expected) = attack("legit");
    assert!(
        sent > 0 && answered == sent && errors == 0 && expected == sent,
        "{l}"
    );
    let done = run.line("HOSTILE|INFO: done").unwrap();
    assert_eq!(field(&done, "rounds"), Some(ROUNDS), "{done}");
    assert_eq!(field(&done, "bad_answers"), Some(0), "{done}");
    assert_eq!(field(&done, "ring_errors"), Some(0), "{done}");
    assert_eq!(field(&done, "timer_errors"), Some(0), "{done}");
    // Four illegal index moves a round, each followed by a served request.
    assert_eq!(field(&done, "scribbles"), Some(4 * ROUNDS), "{done}");
    assert_eq!(field(&done, "recovered"), Some(3 * ROUNDS), "{done}");

    // The memserver's own count: every request the hostile PD made
    // unreadable (garbage, future versions, out-of-range values) was seen
    // as malformed, guest0 sent none, and the illegal index moves were
    // seen (at least one: each lasts 20 ms, the server looks when notified).
    // The server counted at least as many error answers as the hostile PD
    // got (guest0's NoMemory answers, if any, add to them).
    let hostile_errors = field(&done, "hostile_errors").unwrap();
    let undecodable: u64 = ["garbage", "future_version", "out_of_range"]
        .iter()
        .map(|n| attack(n).1)
        .sum();
    run.wait(
        "the memserver's peers line after the hostile PD's last request",
        Duration::from_secs(30),
        |r| {
            r.lines()
                .iter()
                .rev()
                .find(|l| l.starts_with("MEMSERVER|INFO: peers:"))
                .is_some_and(|l| {
                    field(l, "malformed") == Some(undecodable)
                        && field(l, "errors").unwrap() >= hostile_errors
                })
        },
    );
    let lines = run.lines();
    let peers = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("MEMSERVER|INFO: peers:"))
        .unwrap();
    println!("{peers}");
    assert!(field(peers, "client_misbehaviour").unwrap() >= 1, "{peers}");
    assert_eq!(field(peers, "balloon_misbehaviour"), Some(0), "{peers}");

    // No page lost: every conservation line adds up.
    let mut seen = 0;
    for l in &lines {
        if let Some([total, free, alloc, iso, ball]) = conservation(l) {
            assert_eq!(total, free + alloc + iso + ball, "{l}");
            seen += 1;
        }
    }
    assert!(seen > 0);
    let [total, ..] = last_conservation(&lines, done_at.min(lines.len()))
        .or_else(|| last_conservation(&lines, 0))
        .unwrap();
    assert_eq!(total, 2 * 512 * faults::PAGES_PER_MIB);
    // Nothing went wrong outside the hostile PD.
    assert_eq!(run.problems(&[]), Vec::<String>::new());
}
