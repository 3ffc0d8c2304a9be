//! The `scale0` command as a user meets it: request modes, command workers, the demo,
//! and clear errors for bad flags and unreachable endpoints.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `scale0 request` with `input` on its stdin.
fn request_with_stdin(endpoint: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut c = scale0();
    c.args(["request", "--connect", endpoint])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    finish(child, "scale0 request")
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn worker(endpoint: &str, args: &[&str]) -> Proc {
    let mut c = scale0();
    c.args(["worker", "--connect", endpoint]).args(args);
    Proc::spawn("scale0 worker", c)
}

#[test]
fn sha1_worker_answers_a_request_from_the_command_line() {
    let broker = Broker::start(&[]);
    let _w = worker(&broker.endpoint, &["--service", "sha1", "--sha1"]);
    let out = scale0_request(&broker.endpoint, &["--service", "sha1", "abc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "a9993e364706816aba3e25717850c26c9cd0d89d\n");
}

#[test]
fn without_a_body_all_of_stdin_is_one_request() {
    let broker = Broker::start(&[]);
    let _w = worker(&broker.endpoint, &["--service", "echo", "--echo"]);
    let out = request_with_stdin(
        &broker.endpoint,
        &["--service", "echo"],
        b"line one\nline two",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "line one\nline two\n");
}

#[test]
fn lines_mode_sends_one_request_per_line_and_prints_replies_in_order() {
    let broker = Broker::start(&[]);
    let _w = worker(
        &broker.endpoint,
        &[
            "--service",
            "up",
            "--concurrency",
            "3",
            "--",
            "tr",
            "a-z",
            "A-Z",
        ],
    );
    let out = request_with_stdin(
        &broker.endpoint,
        &["--service", "up", "--lines"],
        b"one\ntwo\nthree\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ONE\nTWO\nTHREE\n");
}

/// All 2,000 in flight at once: more than libzmq's default high-water mark (1,000), which
/// the client must not turn into an error.
#[test]
fn count_mode_prints_a_summary() {
    let broker = Broker::start(&[]);
    let _w = worker(
        &broker.endpoint,
        &["--service", "echo", "--echo", "--concurrency", "2"],
    );
    let out = scale0_request(
        &broker.endpoint,
        &[
            "--service",
            "echo",
            "--count",
            "2000",
            "--in-flight",
            "2000",
            "x",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let s = stdout(&out);
    for want in [
        "requests 2000",
        "ok 2000",
        "errors 0",
        "timed out 0",
        "req/s",
        "p50",
        "p99",
    ] {
        assert!(s.contains(want), "{want:?} not in {s:?}");
    }
}

#[test]
fn a_failing_command_becomes_an_error_for_the_client() {
    let broker = Broker::start(&[]);
    let _w = worker(
        &broker.endpoint,
        &[
            "--service",
            "fail",
            "--",
            "sh",
            "-c",
            "echo broken >&2; exit 7",
        ],
    );
    let out = scale0_request(&broker.endpoint, &["--service", "fail", "x"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("broken") && err.contains('7'), "{err}");
    // The worker is still there for the next request.
    let again = scale0_request(&broker.endpoint, &["--service", "fail", "x"]);
    assert!(stderr(&again).contains("broken"));
}

#[test]
fn mmi_service_reports_whether_a_service_has_workers() {
    let broker = Broker::start(&[]);
    assert_eq!(mmi_service(&broker.endpoint, "echo"), "404");
    let _w = worker(&broker.endpoint, &["--service", "echo", "--echo"]);
    eventually("echo registered", || {
        mmi_service(&broker.endpoint, "echo") == "200"
    });
    let out = scale0_request(&broker.endpoint, &["--service", "mmi.nothing", "x"]);
    assert_eq!(stdout(&out), "501\n");
}

#[test]
fn an_unreachable_broker_is_a_clear_error() {
    // Bind then close a port, so nothing listens there.
    let broker = Broker::start(&[]);
    let endpoint = broker.endpoint.clone();
    drop(broker);
    let out = scale0_request(
        &endpoint,
        &[
            "--service",
            "echo",
            "--timeout-ms",
            "200",
            "--retries",
            "1",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no reply from") && err.contains("2 attempt"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_flags_are_refused_with_a_message_and_no_panic() {
    let cases: &[&[&str]] = &[
        &["broker", "--heartbeat-interval-ms", "0"],
        &["broker", "--heartbeat-liveness", "many"],
        &["broker", "--bind", "nonsense://x"],
        &["broker", "--bind", "tcp://127.0.0.1:99999"],
        &["worker", "--service", "x"],
        &["worker", "--service", "x", "--echo", "--sha1"],
        &["worker", "--service", "mmi.x", "--echo"],
        &["worker", "--service", "", "--echo"],
        &[
            "worker",
            "--service",
            "x",
            "--echo",
            "--connect",
            "nonsense",
        ],
        &["request", "--service", "x", "--in-flight", "5", "y"],
        &["request", "--service", "x", "--lines", "--count", "3"],
        &["request", "--service", "", "y"],
        &["demo", "--workers", "0"],
        &["broker", "--repair-log"],
        &["broker", "--segment-bytes", "10"],
        &["broker", "--spin-us", "20000"],
        &["bench", "--broker-spin-us", "-1"],
        &["queue", "--request-timeout-ms", "0"],
        &["queue", "--max-attempts", "0"],
        &["queue", "--frontend", "tcp://127.0.0.1:70000"],
        &["frobnicate"],
    ];
    for args in cases {
        let mut c = scale0();
        c.args(*args);
        let out = run(c);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.trim().is_empty(), "{args:?} failed without a message");
    }
}

#[test]
fn the_demo_balances_tens_of_thousands_of_requests_over_its_workers() {
    let mut c = scale0();
    c.args(["demo", "--requests", "20000", "--workers", "3"]);
    let out = run(c);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let s = stdout(&out);
    assert!(
        s.contains("ok 20000  wrong 0  errors 0  timed out 0"),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("libzmq alone") && l.contains("req/s; scale0 did")),
        "the yardstick line: {s}"
    );
    let per_worker: Vec<u64> = s
        .lines()
        .filter(|l| l.starts_with("worker"))
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(per_worker.len(), 3, "{s}");
    assert_eq!(per_worker.iter().sum::<u64>(), 20000);
    assert!(
        per_worker.iter().all(|&n| n > 2000),
        "unbalanced: {per_worker:?}"
    );
}

#[test]
fn too_few_file_descriptors_is_a_clear_error_not_an_abort() {
    let mut c = Command::new("prlimit");
    c.args(["--nofile=20:20", env!("CARGO_BIN_EXE_scale0"), "forwarder"])
        .args([
            "--frontend",
            "tcp://127.0.0.1:*",
            "--backend",
            "tcp://127.0.0.1:*",
        ]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("RLIMIT_NOFILE") && err.contains("20"), "{err}");
}
