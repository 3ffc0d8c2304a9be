//! `scale0 bench` at a small size: every scenario runs, counts every message, and reports
//! in JSON; the broker scenario also with a process per part.

mod common;

use common::scale0;
use serde_json::Value;

fn bench(args: &[&str]) -> Vec<Value> {
    let out = scale0()
        .args(["bench", "--json", "--size", "16", "--repeat", "1"])
        .args([
            "--messages",
            "3000",
            "--requests",
            "2000",
            "--sync-requests",
            "200",
        ])
        .args(args)
        .output()
        .expect("running scale0 bench");
    assert!(
        out.status.success(),
        "scale0 bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn check(rows: &[Value], scenarios: &[(&str, &str)]) {
    for (scenario, mode) in scenarios {
        let row = rows
            .iter()
            .find(|r| r["scenario"] == *scenario && r["mode"] == *mode)
            .unwrap_or_else(|| panic!("no {scenario} {mode} in {rows:?}"));
        assert!(row["rate_median"].as_f64().unwrap() > 0.0, "{row}");
        if *scenario != "pub-sub" {
            assert_eq!(row["lost"], 0, "{row}");
        }
        if mode != &"throughput" {
            let p50 = row["p50_us"].as_f64().unwrap();
            let p99 = row["p99_us"].as_f64().unwrap();
            assert!(p50 > 0.0 && p50 <= p99, "{row}");
        }
    }
}

#[test]
fn every_scenario_runs_and_counts_every_message() {
    let rows = bench(&["--workers", "2"]);
    check(
        &rows,
        &[
            ("push-pull", "throughput"),
            ("pub-sub", "throughput"),
            ("direct", "sync"),
            ("direct", "pipelined"),
            ("broker", "sync"),
            ("broker", "pipelined"),
            ("pipeline", "throughput"),
            ("map", "throughput"),
        ],
    );
}

#[test]
fn the_broker_scenario_runs_with_a_process_per_part() {
    let rows = bench(&[
        "broker",
        "--processes",
        "--workers",
        "2",
        "--handler-thread",
        // The broker's other way to wait: straight to sleep, no spinning.
        "--broker-spin-us",
        "0",
    ]);
    check(&rows, &[("broker", "sync"), ("broker", "pipelined")]);
}

#[test]
fn the_broker_scenario_runs_over_curve_with_workers_holding_several_requests() {
    let rows = bench(&[
        "broker",
        "--workers",
        "2",
        "--worker-capacity",
        "8",
        "--curve",
    ]);
    check(&rows, &[("broker", "sync"), ("broker", "pipelined")]);
}
