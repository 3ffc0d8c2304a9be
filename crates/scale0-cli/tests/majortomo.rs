//! MDP/0.2 as it is spoken in the wild: workers and clients of majortomo 0.2.0 (PyPI), a
//! library nobody here wrote, through the real broker. majortomo frames MDP/0.2 with an
//! empty frame first and numbers client commands with the worker table (docs/protocol.md,
//! "Two framings of MDP/0.2"); the broker answers every peer in the framing it used.

mod common;

use common::*;
use serde_json::Value;
use std::process::Stdio;

/// A majortomo program from tests/peers; fails (never skips) when majortomo is missing.
fn majortomo(script: &str) -> std::process::Command {
    python_with("majortomo");
    peer(script)
}

/// A majortomo worker for `service`, up once it printed "ready".
fn mt_worker(endpoint: &str, service: &str, extra: &[&str]) -> (Proc, Lines) {
    let mut c = majortomo("majortomo_worker.py");
    c.args([
        "--endpoint",
        endpoint,
        "--service",
        service,
        "--lifetime-s",
        "60",
    ])
    .args(extra);
    let (p, out) = spawn_lines("majortomo worker", c);
    out.wait_for("ready", 1);
    (p, out)
}

/// Runs a majortomo client to the end; returns its JSON lines (the summary last).
fn mt_client(endpoint: &str, args: &[&str]) -> (bool, Vec<Value>) {
    let out = run({
        let mut c = majortomo("majortomo_client.py");
        c.args(["--endpoint", endpoint]).args(args);
        c
    });
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.success(), lines)
}

fn bodies(lines: &[Value], partial: bool) -> Vec<Vec<String>> {
    lines
        .iter()
        .filter(|l| l["partial"] == partial)
        .map(|l| {
            l["body"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| f.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .collect()
}

#[test]
fn majortomo_workers_stream_partials_to_majortomo_and_rfc18_clients() {
    let broker = Broker::start(&[]);
    let (_w, _) = mt_worker(&broker.endpoint, "echo", &["--partials", "2"]);
    let (ok, lines) = mt_client(
        &broker.endpoint,
        &["--service", "echo", "--count", "3", "--partials"],
    );
    assert!(ok, "{lines:?}");
    assert_eq!(
        bodies(&lines, true).len(),
        6,
        "two partials for each of three"
    );
    assert_eq!(
        bodies(&lines, false),
        [vec!["r0".to_string()], vec!["r1".into()], vec!["r2".into()]]
    );
    // An RFC 18 client of the same worker gets RFC 18's PARTIAL and FINAL.
    let r = py_client(&[
        "--endpoint",
        &broker.endpoint,
        "--service",
        "echo",
        "--version",
        "2",
        "--socket",
        "dealer",
        "--count",
        "4",
    ]);
    assert!(r.ok, "{:?} {}", r.json, r.stderr);
    assert_eq!(r.replies(), 4, "{:?}", r.json);
}

#[test]
fn a_majortomo_worker_killed_holding_a_request_loses_it_to_another() {
    let broker = Broker::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("held");
    let (mut holder, _) = mt_worker(
        &broker.endpoint,
        "echo",
        &["--hold-file", held.to_str().unwrap()],
    );
    // The client never retries: whatever reaches it is the broker's doing.
    let mut c = majortomo("majortomo_client.py");
    c.args([
        "--endpoint",
        &broker.endpoint,
        "--service",
        "echo",
        "--count",
        "3",
    ])
    .args(["--timeout-ms", "20000"])
    .stdout(Stdio::piped());
    let client = Proc::spawn("majortomo client", c);
    eventually("the first worker holds a request", || held.exists());
    holder.kill9();
    let (_w2, served) = mt_worker(&broker.endpoint, "echo", &[]);
    let out = client.output();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"replies\": 3"), "{text}");
    assert_eq!(
        served.count("served r"),
        3,
        "the held one again, then the rest"
    );
}

#[test]
fn a_majortomo_client_is_served_by_scale0_worker_and_asks_mmi() {
    let broker = Broker::start(&[]);
    let _w = echo_worker(&broker.endpoint, "echo", &[]);
    eventually("the worker registered", || {
        mmi_service(&broker.endpoint, "echo") == "200"
    });
    let (ok, lines) = mt_client(&broker.endpoint, &["--service", "echo", "--count", "5"]);
    assert!(ok, "{lines:?}");
    assert_eq!(bodies(&lines, false).len(), 5);
    let mmi = run({
        let mut c = majortomo("majortomo_client.py");
        c.args(["--endpoint", &broker.endpoint, "--mmi", "echo"]);
        c
    });
    assert!(mmi.status.success(), "{}", tail(&mmi.stderr));
    assert_eq!(String::from_utf8_lossy(&mmi.stdout).trim(), "200");
    let mmi = run({
        let mut c = majortomo("majortomo_client.py");
        c.args(["--endpoint", &broker.endpoint, "--mmi", "nobody"]);
        c
    });
    assert_eq!(String::from_utf8_lossy(&mmi.stdout).trim(), "404");
}

#[test]
fn scale0_workers_on_their_defaults_serve_through_majortomo_s_own_broker() {
    // Our workers' READY carries a credit frame by default (capacity 32); a Majordomo
    // broker that does not know it must still register them and hand them requests one
    // at a time.
    let (_broker, out) = spawn_lines("majortomo broker", majortomo("majortomo_broker.py"));
    let endpoint = out.listening(1).remove(0);
    // majortomo frames MDP/0.2 with an empty first frame.
    let _w1 = echo_worker(&endpoint, "echo", &["--mdp", "0.2-delimited"]);
    let _w2 = echo_worker(&endpoint, "echo", &["--mdp", "0.2-delimited"]);
    let (ok, lines) = mt_client(&endpoint, &["--service", "echo", "--count", "20"]);
    assert!(ok, "{lines:?}");
    let expected: Vec<Vec<String>> = (0..20).map(|i| vec![format!("r{i}")]).collect();
    assert_eq!(bodies(&lines, false), expected);
}
