//! `tools bench` end to end, its reclaim part in quick mode (the criterion
//! parts are parsed by unit tests in `tools::bench`; running them here would
//! take minutes and measure a busy machine). Asserts what it wrote, not how
//! fast anything was.

use std::path::{Path, PathBuf};
use std::process::Command;
use tools::demo;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn bench_quick_reclaim_writes_tables_data_and_a_plot() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // The PDs in a target dir of their own (the outer build's is locked),
    // the one the other host-platform tests build into.
    let target = tmp.join("pds");
    demo::build_pds(&workspace(), &target, "dev").expect("build the PDs");
    let out = tmp.join("bench-out");
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(["bench", "--quick", "--only", "reclaim", "--out"])
        .arg(&out)
        .arg("--pd-dir")
        .arg(target.join("debug"))
        .output()
        .expect("run tools bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    // Progress went to stderr, one line per run.
    assert_eq!(stderr.matches("bench: reclaim ").count(), 4, "{stderr}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let points = json["reclaim"]["points"].as_array().unwrap();
    let configs: Vec<(u64, u64)> = points
        .iter()
        .map(|p| {
            (
                p["capacity"].as_u64().unwrap(),
                p["in_flight"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(configs, [(8, 1), (8, 4), (32, 1), (32, 4)]);
    for p in points {
        let runs = p["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{p}");
        let r = &runs[0];
        assert!(r["fraction"].as_f64().unwrap() >= 0.9, "{p}");
        assert!(r["p90_s"].as_f64().unwrap() > 0.0, "{p}");
        // 2 guests x 32 MiB.
        assert_eq!(r["freed_bytes"].as_u64(), Some(64 << 20), "{p}");
    }
    assert!(json["alloc"].is_null() && json["errors"].as_array().unwrap().is_empty());

    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("| order=9,delay_ms=300,capacity=32,in_flight=4 | 1 |"),
        "{md}"
    );
    assert!(stdout.contains(md.trim_end()), "the tables are printed too");
    let svg = std::fs::read_to_string(out.join("bench.svg")).unwrap();
    roxmltree::Document::parse(&svg).expect("the plot is well-formed SVG");
    for label in [
        "first free to 90 % back",
        "cap 8 x 1 in flight",
        "cap 32 x 4 in flight",
    ] {
        assert!(svg.contains(label), "{label} missing from the plot");
    }
}

/// `tools bench --only PART FLAG VALUES`, which must be refused by the
/// command line (exit 2) naming `nonsense`, before anything runs; its
/// standard error.
fn refused_before_running(part: &str, flag: &str, values: &str) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(["bench", "--only", part, flag, values])
        .output()
        .expect("run tools bench");
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'nonsense'"), "{stderr}");
    assert!(!stderr.contains("bench: "), "nothing ran: {stderr}");
    stderr
}

/// A QEMU scenario the bench does not know is refused before anything is
/// built or booted, with the ones it knows.
#[test]
fn bench_refuses_an_unknown_qemu_scenario() {
    let stderr = refused_before_running("qemu", "--qemu-scenarios", "churn,nonsense");
    assert!(
        stderr.contains("latency") && stderr.contains("churn"),
        "{stderr}"
    );
}

/// So is a policy scenario it does not know, before the PDs are built.
#[test]
fn bench_refuses_an_unknown_policy_scenario() {
    let stderr = refused_before_running("policy", "--policy-scenarios", "trace,nonsense");
    assert!(stderr.contains("cpp-trace"), "{stderr}");
}
