//! A faulty host on the host platform (issue 8): while both guests churn,
//! the device model fails reports in every way it knows (bad used ids and
//! lengths, duplicate completions, a jumping used index, resets), holds them
//! (late, and never until a reset), and the host sets absurd balloon targets.
//! Nothing may be lost, leaked in isolation, or reported while allocated
//! (the guests verify their data: a discarded page they own reads as zeros),
//! and the memserver must retry: later reports succeed.
//!
//! Every wait is bounded and on a condition (console lines, device
//! counters), never a sleep.

mod faults;

use balloon::QueueKind;
use balloon::model::Fault;
use faults::{Run, assert_guest_clean, conservation, field, last_conservation};
use std::time::Duration;

const LIVE_MIB: u64 = 8;
const WAIT: Duration = Duration::from_secs(30);

/// `batches_ok` of the memserver's last `reported:` line.
fn batches_ok(run: &Run) -> u64 {
    run.lines()
        .iter()
        .rev()
        .find(|l| l.starts_with("MEMSERVER|INFO: reported:"))
        .and_then(|l| field(l, "batches_ok"))
        .unwrap_or(0)
}

fn restarts(run: &Run) -> usize {
    run.lines()
        .iter()
        .filter(|l| l.contains("BALLOON|INFO: device failed; restarted the driver"))
        .count()
}

/// One row of the report: what was done, and what the system did.
struct Row {
    fault: String,
    restarts: usize,
    /// Reports the device processed after the fault, until the check.
    later: u64,
}

/// Make reportable memory now, whatever the guests are doing (they may have
/// finished already on a fast or a loaded machine): balloon 64 MiB and give
/// it back. The deflated blocks return to the free lists unreported and the
/// memserver reports them.
fn make_reportable(run: &mut Run) {
    let pages = 64 * faults::PAGES_PER_MIB as u32;
    run.device.set_target(pages);
    run.wait("the balloon to take 64 MiB", WAIT, |r| {
        r.device.actual() >= pages
    });
    run.device.set_target(0);
    run.wait("the balloon to give it back", WAIT, |r| {
        r.device.actual() == 0
    });
}

/// Inject `fault` on the next report completion, wait until a report hit
/// it, then until the device processed a later report (the memserver
/// retried: the failed blocks went back unreported and were reported again).
fn fail_one_report(run: &mut Run, fault: Fault, rows: &mut Vec<Row>) {
    let (faults0, restarts0) = (run.device.counters().faults, restarts(run));
    run.device.device().inject(QueueKind::Reporting, fault);
    run.device.kick();
    make_reportable(run);
    run.wait(&format!("a report to meet {fault:?}"), WAIT, |r| {
        r.device.counters().faults > faults0
    });
    let reports0 = run.device.counters().reports;
    run.wait(&format!("a report after {fault:?}"), WAIT, |r| {
        r.device.counters().reports > reports0
    });
    rows.push(Row {
        fault: format!("{fault:?}"),
        restarts: restarts(run) - restarts0,
        later: run.device.counters().reports - reports0,
    });
}

/// Hold the reporting queue until `n` reports wait on the device (the
/// memserver keeps up to `in_flight` out), then release it: late, or (with
/// a fault) never completed until the device resets, or out of order.
///
/// A pass that was running when the hold began may have had one batch left
/// to send: it then waits for that batch alone (a pass ends only when all
/// its batches are back, as Linux's), and no second report comes. Then the
/// held report is let through and the next pass, which finds the memory
/// made reportable here, sends a full set (a pass sends up to `in_flight`
/// batches in one go). At most 5 attempts; each wait is bounded.
fn hold_reports(run: &mut Run, n: u16, then: Then, rows: &mut Vec<Row>) {
    let restarts0 = restarts(run);
    run.device.device().set_hold_reports(true);
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= 5, "{n} reports never piled up in 5 passes");
        // Make reportable memory now, whatever the guests are doing (they
        // may have finished on a fast or a loaded machine): balloon 64 MiB
        // and give it back; the deflated blocks come back to the free
        // lists unreported and the memserver reports them, into the held
        // queue.
        make_reportable(run);
        run.wait("a report held by the host", WAIT, |r| {
            r.device.device().reports_waiting() >= 1
        });
        if run.device.device().reports_waiting() >= n {
            break;
        }
        // Only the end of a pass: let it through (and whatever else
        // arrives meanwhile), then hold again for the next pass.
        let reports0 = run.device.counters().reports;
        run.device.device().set_hold_reports(false);
        run.device.kick();
        run.wait("the held report to go through", WAIT, |r| {
            r.device.counters().reports > reports0
        });
        run.device.device().set_hold_reports(true);
    }
    let faults0 = run.device.counters().faults;
    let reports0 = run.device.counters().reports;
    {
        let mut d = run.device.device();
        match then {
            Then::Late => {}
            Then::Fault(f) => d.inject(QueueKind::Reporting, f),
            Then::Reversed => d.set_reverse_reports(),
        }
        d.set_hold_reports(false);
    }
    run.device.kick();
    if !matches!(then, Then::Late) {
        run.wait("the held reports to meet their fault", WAIT, |r| {
            r.device.counters().faults > faults0
        });
    }
    let reports1 = run.device.counters().reports;
    run.wait("a report after the hold", WAIT, |r| {
        r.device.counters().reports > reports1
    });
    rows.push(Row {
        fault: match then {
            Then::Late => format!("{n} reports held, then completed (late)"),
            Then::Fault(f) => format!("{n} reports held, then {f:?} (never completed)"),
            Then::Reversed => format!("{n} reports held, then completed in reverse order"),
        },
        restarts: restarts(run) - restarts0,
        later: run.device.counters().reports - reports0,
    });
}

#[derive(Debug, Clone, Copy)]
enum Then {
    Late,
    Fault(Fault),
    Reversed,
}

#[test]
fn a_faulty_host_loses_nothing_and_reporting_goes_on() {
    // Long enough that the guests still run through every fault: a device
    // that resets on its own is only noticed by the driver at its next
    // event, and an idle system has none (no watchdog yet);
    // a churning guest takes back what it freed at once, so the reporting
    // delay is short enough for the worker to see the frees in between.
    let guest = format!("pattern=churn,mib=64,rounds=150,hold_ms=20,live_mib={LIVE_MIB}");
    let xml = std::fs::read_to_string(faults::workspace().join("system.xml")).unwrap();
    let mut run = Run::start(
        &xml,
        &[
            ("GUEST_PARAMS", &guest),
            // Linux's policy: it reports between a churning guest's frees
            // and allocations, which the faults need; the adaptive policy
            // holds reports back while a zone churns (by design).
            (
                "MEMSERVER_TUNABLES",
                "policy=linux,order=9,delay_ms=1,capacity=2,in_flight=4",
            ),
            // The test ends each fault itself; the watchdog (which would
            // end the holds after its period) has its own test below.
            ("BALLOON_WATCHDOG_MS", "60000"),
        ],
    );
    run.wait("the boot-time report", WAIT, |r| batches_ok(r) >= 1);

    let mut rows = Vec::new();
    for fault in [
        Fault::BadUsedId,
        Fault::BadUsedLength,
        Fault::DuplicateCompletion,
        Fault::UsedIndexJump,
        Fault::Reset,
        Fault::NeedsReset,
    ] {
        fail_one_report(&mut run, fault, &mut rows);
    }
    hold_reports(&mut run, 2, Then::Late, &mut rows);
    hold_reports(&mut run, 2, Then::Reversed, &mut rows);
    hold_reports(&mut run, 2, Then::Fault(Fault::Reset), &mut rows);

    let ok_after_faults = batches_ok(&run);
    println!("faults done after {:?}", run.start.elapsed());

    // Absurd targets: nothing, more than all guest RAM, the most a u32
    // says, and flapping between the two. The balloon takes what the
    // memserver can spare above its watermark and gives it all back.
    let total_pages = 2 * 512 * faults::PAGES_PER_MIB as u32;
    for (i, target) in [
        0,
        4 * total_pages,
        0,
        u32::MAX,
        total_pages / 2,
        0,
        total_pages,
        0,
        total_pages,
        0,
    ]
    .into_iter()
    .enumerate()
    {
        let inflates0 = run.device.counters().inflates;
        run.device.set_target(target);
        // Let every other change take effect (some inflation seen) before
        // the next; the rest flap faster than the driver can follow.
        if target > 0 && i % 2 == 1 {
            run.wait("the balloon to inflate", WAIT, |r| {
                r.device.counters().inflates > inflates0
            });
        }
    }
    run.wait("the balloon to be empty again", WAIT, |r| {
        r.device.actual() == 0
    });
    let c = run.device.counters();
    rows.push(Row {
        fault: format!(
            "targets 0, 4x RAM, 0, u32::MAX, RAM/2, then flapping 0/RAM: {} inflates ({} pages), {} deflates ({} pages)",
            c.inflates, c.pages_inflated, c.deflates, c.pages_deflated
        ),
        restarts: 0,
        later: 0,
    });
    // The guests' frees are still reported after all that.
    let reports0 = run.device.counters().reports;
    run.wait("a report after the balloon games", WAIT, |r| {
        r.device.counters().reports > reports0
    });

    // Let the guests finish (they stop after their rounds; shorten the
    // wait by not asking for all 60: both must be done within the time).
    run.wait("both guests to finish", Duration::from_secs(300), |r| {
        r.line("GUEST0|INFO: phase=done").is_some() && r.line("GUEST1|INFO: phase=done").is_some()
    });
    // At the end: nothing isolated, nothing ballooned, only the live sets
    // allocated, and every frame accounted for once.
    let live = 2 * LIVE_MIB * faults::PAGES_PER_MIB;
    run.wait("the final conservation line", WAIT, |r| {
        last_conservation(&r.lines(), 0)
            .is_some_and(|[_, _, a, iso, ball]| a == live && iso == 0 && ball == 0)
    });

    println!("| fault | driver restarts | reports processed after |");
    for r in &rows {
        println!("| {} | {} | {} |", r.fault, r.restarts, r.later);
    }
    let c = run.device.counters();
    println!("device: {c:?}");
    for l in run.lines().iter().filter(|l| {
        l.starts_with("MEMSERVER|INFO: peers")
            || l.starts_with("MEMSERVER|INFO: reported")
            || l.starts_with("GUEST") && (l.contains("phase=done") || l.contains("phase=verified"))
    }) {
        println!("{l}");
    }
    let last_reported = run
        .lines()
        .into_iter()
        .rev()
        .find(|l| l.starts_with("MEMSERVER|INFO: reported:"))
        .unwrap();
    println!("{last_reported}");

    // Nothing reported while allocated: both guests verified every page
    // they owned (churn verifies each round and the live set at the end).
    assert_guest_clean(&run, "GUEST0");
    assert_guest_clean(&run, "GUEST1");
    for l in run.lines() {
        if let Some([total, free, alloc, iso, ball]) = conservation(&l) {
            assert_eq!(total, free + alloc + iso + ball, "{l}");
        }
    }
    // Each fault that wedges the device made the driver restart it.
    for r in &rows[..6] {
        if r.fault != "BadUsedLength" {
            assert!(r.restarts >= 1, "{}: no restart", r.fault);
        }
    }
    assert!(rows[8].restarts >= 1, "{}: no restart", rows[8].fault);
    // The memserver saw the failures and its later reports succeeded.
    assert!(field(&last_reported, "batches_failed").unwrap() >= 6);
    assert!(field(&last_reported, "batches_ok").unwrap() > ok_after_faults);
    assert_eq!(c.ranges_skipped, 0);
    // The only complaints are the device's failures, reported as such.
    let problems: Vec<_> = run
        .problems(&[])
        .into_iter()
        .filter(|l| !l.starts_with("BALLOON|"))
        .collect();
    assert_eq!(problems, Vec::<String>::new());
}

/// The balloon's watchdog (balloon::shell): on an idle system (the guests
/// are done, so no other event comes), the device takes a report batch and
/// never answers. After one period the balloon resets it; the batch comes
/// back unreported, the restarted device reports it, and nothing stays
/// isolated. Without the watchdog those pages would stay isolated, and out
/// of the host's hands, until the next unrelated event.
#[test]
fn a_device_that_stops_answering_is_reset_by_the_watchdog() {
    let guest = format!("pattern=churn,mib=16,rounds=2,hold_ms=10,live_mib={LIVE_MIB}");
    let xml = std::fs::read_to_string(faults::workspace().join("system.xml")).unwrap();
    let mut run = Run::start(
        &xml,
        &[
            ("GUEST_PARAMS", &guest),
            ("MEMSERVER_TUNABLES", "order=9,delay_ms=300"),
            ("BALLOON_WATCHDOG_MS", "1000"),
        ],
    );
    run.wait("both guests to finish", WAIT, |r| {
        r.line("GUEST0|INFO: phase=done").is_some() && r.line("GUEST1|INFO: phase=done").is_some()
    });
    let live = 2 * LIVE_MIB * faults::PAGES_PER_MIB;
    let settled = |r: &mut Run| {
        last_conservation(&r.lines(), 0)
            .is_some_and(|[_, free, a, iso, ball]| a == live && iso == 0 && ball == 0 && free > 0)
            && r.lines()
                .iter()
                .rev()
                .find(|l| l.starts_with("MEMSERVER|INFO: reported:"))
                .is_some_and(|l| field(l, "reported_mib") == field(l, "free_mib"))
    };
    run.wait("everything free to be reported", WAIT, settled);
    let failed0 = run
        .lines()
        .iter()
        .rev()
        .find(|l| l.starts_with("MEMSERVER|INFO: reported:"))
        .and_then(|l| field(l, "batches_failed"))
        .unwrap();

    // The next report is taken and lost; the device answers nothing more.
    run.device
        .device()
        .inject(QueueKind::Reporting, Fault::Lose);
    make_reportable(&mut run);
    run.wait("the device to lose a report", WAIT, |r| {
        r.device.counters().faults == 1
    });
    let reports0 = run.device.counters().reports;
    run.wait("the watchdog to reset the device", WAIT, |r| {
        r.line("BALLOON|WARN: device stalled").is_some()
    });
    run.wait("the restarted device to report", WAIT, |r| {
        r.device.counters().reports > reports0
    });
    // A settled line after the stall (it may already be there).
    run.wait("everything free to be reported again", WAIT, |r| {
        let lines = r.lines();
        let stall = lines
            .iter()
            .position(|l| l.starts_with("BALLOON|WARN: device stalled"))
            .unwrap_or(lines.len());
        settled(r) && last_conservation(&lines, stall).is_some()
    });
    let lines = run.lines();
    let reported = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("MEMSERVER|INFO: reported:"))
        .unwrap();
    println!("{reported}");
    assert!(
        field(reported, "batches_failed").unwrap() > failed0,
        "the lost batch came back failed: {reported}"
    );
    assert_eq!(restarts(&run), 1);
    for l in &lines {
        if let Some([total, free, alloc, iso, ball]) = conservation(l) {
            assert_eq!(total, free + alloc + iso + ball, "{l}");
        }
    }
    assert_guest_clean(&run, "GUEST0");
    assert_guest_clean(&run, "GUEST1");
    // The host holds only the guests' live sets (and a little slack for
    // blocks below the reporting order).
    run.wait("the host to hold only the live sets", WAIT, |r| {
        r.device.held_bytes().unwrap() <= (2 * LIVE_MIB + 8) * faults::MIB
    });
    // The stall is the only complaint.
    assert_eq!(
        run.problems(&[]),
        vec![
            lines
                .iter()
                .find(|l| l.starts_with("BALLOON|WARN: device stalled"))
                .unwrap()
                .clone()
        ]
    );
}
