//! `scale0 queue` with unmodified REQ clients and REP servers in Python and Perl (the
//! programs in examples/), and Paranoid Pirate workers: servers killed while holding a
//! request, all servers gone and back, more servers sharing the load, the queue restarted.

mod common;

use common::*;
use sha1::{Digest, Sha1};
use std::path::Path;
use std::process::Command;

fn example(lang: &str, script: &str) -> Command {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(lang)
        .join(script);
    let mut cmd = match lang {
        "python" => python(),
        _ => {
            let ok = Command::new("perl")
                .args(["-MZMQ::FFI", "-e", "1"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "Perl's ZMQ::FFI is missing: scripts/test.sh installs Debian's libzmq-ffi-perl"
            );
            Command::new("perl")
        }
    };
    cmd.arg(path);
    cmd
}

struct QueueProc {
    proc: Proc,
    frontend: String,
    backend: String,
    workers: String,
}

fn start_queue(frontend: &str, backend: &str, workers: &str, extra: &[&str]) -> QueueProc {
    let mut cmd = scale0();
    cmd.args([
        "queue",
        "--frontend",
        frontend,
        "--backend",
        backend,
        "--workers",
        workers,
    ])
    .args(extra);
    let (proc, lines) = spawn_lines("scale0 queue", cmd);
    let eps = lines.listening(3);
    QueueProc {
        proc,
        frontend: eps[0].clone(),
        backend: eps[1].clone(),
        workers: eps[2].clone(),
    }
}

fn queue(extra: &[&str]) -> QueueProc {
    let any = "tcp://127.0.0.1:*";
    start_queue(any, any, any, extra)
}

fn server(lang: &str, backend: &str, extra: &[&str]) -> (Proc, Lines) {
    let script = if lang == "python" {
        "sha1_server.py"
    } else {
        "sha1_server.pl"
    };
    let mut cmd = example(lang, script);
    cmd.args(["--connect", backend]).args(extra);
    let (proc, lines) = spawn_lines(&format!("{lang} server"), cmd);
    lines.wait_for("ready", 1);
    (proc, lines)
}

fn client(lang: &str, frontend: &str, count: u32, extra: &[&str]) -> (Proc, Lines) {
    let script = if lang == "python" {
        "date_client.py"
    } else {
        "date_client.pl"
    };
    let mut cmd = example(lang, script);
    cmd.args(["--connect", frontend, "--count", &count.to_string()])
        .args(["--interval-ms", "20"])
        .args(extra);
    spawn_lines(&format!("{lang} client"), cmd)
}

fn sha1_hex(text: &str) -> String {
    Sha1::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks every "sent X got Y" line: Y is the SHA-1 of X. Returns how many there were.
fn check_replies(lines: &Lines) -> usize {
    let mut n = 0;
    for line in lines.get() {
        let Some((_, rest)) = line.split_once(" sent ") else {
            continue;
        };
        let (sent, got) = rest.rsplit_once(" got ").expect("sent ... got ...");
        assert_eq!(got, sha1_hex(sent), "{line}");
        n += 1;
    }
    n
}

fn finished(proc: Proc, lines: &Lines, expected: usize) {
    let out = proc.output();
    assert!(
        out.status.success(),
        "{} failed: {}",
        lines.get().join("\n"),
        tail(&out.stderr)
    );
    assert_eq!(check_replies(lines), expected, "{:?}", lines.get());
}

#[test]
fn python_and_perl_clients_and_servers_work_through_the_queue() {
    let q = queue(&[]);
    let (_py, py_served) = server("python", &q.backend, &[]);
    let (_pl, pl_served) = server("perl", &q.backend, &[]);
    let (c1, l1) = client("python", &q.frontend, 6, &[]);
    let (c2, l2) = client("perl", &q.frontend, 6, &[]);
    finished(c1, &l1, 6);
    finished(c2, &l2, 6);
    assert!(
        l1.get()[0].starts_with("python "),
        "replies printed with the pid"
    );
    assert!(l2.get()[0].starts_with("perl "));
    assert_eq!(py_served.count("served") + pl_served.count("served"), 12);
    assert!(py_served.count("served") >= 1 && pl_served.count("served") >= 1);
}

#[test]
fn the_examples_also_talk_to_each_other_directly() {
    for (server_lang, client_lang) in [("python", "perl"), ("perl", "python")] {
        let script = if server_lang == "python" {
            "sha1_server.py"
        } else {
            "sha1_server.pl"
        };
        let mut cmd = example(server_lang, script);
        cmd.args(["--bind", "tcp://127.0.0.1:*"]);
        let (_server, lines) = spawn_lines("server", cmd);
        lines.wait_for("ready", 1);
        let endpoint = lines.get()[0].rsplit(' ').next().unwrap().to_string();
        let (c, l) = client(client_lang, &endpoint, 3, &[]);
        finished(c, &l, 3);
    }
}

#[test]
fn a_server_killed_while_holding_a_request_goes_unnoticed() {
    let q = queue(&["--request-timeout-ms", "500"]);
    let (mut doomed, doomed_lines) = server("python", &q.backend, &["--delay-ms", "60000"]);
    let (c, lines) = client("perl", &q.frontend, 3, &["--timeout-ms", "10000"]);
    doomed_lines.wait_for("received", 1);
    let (_good, good_lines) = server("perl", &q.backend, &[]);
    doomed.kill9();
    finished(c, &lines, 3);
    assert_eq!(
        good_lines.count("served"),
        3,
        "the survivor served all three"
    );
    let out = c_stderr_free(&lines);
    assert!(out, "the client never had to retry");
}

/// The client printed nothing but replies (its retries go to stderr, which `finished`
/// would show on failure; a retry is visible as a missing line here).
fn c_stderr_free(lines: &Lines) -> bool {
    lines.get().iter().all(|l| l.contains(" sent "))
}

#[test]
fn a_slow_servers_late_reply_is_dropped_not_delivered_twice() {
    let q = queue(&["--request-timeout-ms", "300"]);
    let (_slow, slow_lines) = server("python", &q.backend, &["--delay-ms", "1500"]);
    let (c, lines) = client("python", &q.frontend, 4, &["--timeout-ms", "10000"]);
    slow_lines.wait_for("received", 1);
    let (_fast, _) = server("python", &q.backend, &[]);
    // Every reply matches its own request: the slow server's late answer to the first
    // request never reaches the client as the answer to a later one.
    finished(c, &lines, 4);
    slow_lines.wait_for("served", 1);
}

#[test]
fn with_every_server_gone_clients_pause_and_resume_when_one_starts() {
    let q = queue(&[]);
    let (mut first, first_lines) = server("python", &q.backend, &[]);
    let (c, lines) = client("python", &q.frontend, 8, &["--timeout-ms", "30000"]);
    lines.wait_for(" got ", 2);
    first.kill9();
    let before = first_lines.count("served");
    assert!(before < 8, "killed mid-run");
    let (_second, second_lines) = server("perl", &q.backend, &[]);
    finished(c, &lines, 8);
    assert!(second_lines.count("served") >= 8 - before);
}

#[test]
fn servers_started_later_share_the_load() {
    let q = queue(&[]);
    let servers: Vec<_> = ["python", "perl", "python"]
        .iter()
        .map(|lang| server(lang, &q.backend, &[]))
        .collect();
    let (c1, l1) = client("python", &q.frontend, 20, &["--interval-ms", "0"]);
    let (c2, l2) = client("perl", &q.frontend, 20, &["--interval-ms", "0"]);
    finished(c1, &l1, 20);
    finished(c2, &l2, 20);
    for (_, lines) in &servers {
        assert!(
            lines.count("served") >= 5,
            "round robin: {:?}",
            lines.get().len()
        );
    }
}

#[test]
fn lazy_pirate_clients_carry_on_through_a_queue_restart() {
    let mut q = queue(&[]);
    let (front, back, work) = (q.frontend.clone(), q.backend.clone(), q.workers.clone());
    let (_server, _) = server("python", &back, &[]);
    let (c, lines) = client("python", &front, 10, &["--timeout-ms", "500"]);
    lines.wait_for(" got ", 3);
    q.proc.kill9();
    q = start_queue(&front, &back, &work, &[]);
    finished(c, &lines, 10);
    drop(q);
}

#[test]
fn paranoid_pirate_workers_share_requests_and_their_death_is_noticed_at_once() {
    let q = queue(&[
        "--heartbeat-interval-ms",
        "100",
        "--request-timeout-ms",
        "20000",
    ]);
    let mut cmd = peer("ppp_worker.py");
    cmd.args(["--endpoint", &q.workers, "--delay-ms", "60000"]);
    let (mut ppp, ppp_lines) = spawn_lines("ppp worker", cmd);
    ppp_lines.wait_for("ready", 1);
    // The idle Paranoid Pirate worker takes the first request (it is preferred).
    let (c, lines) = client("python", &q.frontend, 2, &["--timeout-ms", "15000"]);
    ppp_lines.wait_for("received", 1);
    let (_rep, rep_lines) = server("perl", &q.backend, &[]);
    ppp.kill9();
    // Re-sent within a few heartbeats, not after the 20 s request timeout (the client
    // would have given up at 15 s).
    finished(c, &lines, 2);
    assert_eq!(rep_lines.count("served"), 2);

    // A healthy PPP worker and a REP server both take requests from busy clients.
    let mut cmd = peer("ppp_worker.py");
    cmd.args(["--endpoint", &q.workers]);
    let (_ppp2, ppp2_lines) = spawn_lines("ppp worker 2", cmd);
    ppp2_lines.wait_for("ready", 1);
    let clients: Vec<_> = (0..3)
        .map(|_| client("python", &q.frontend, 10, &["--interval-ms", "0"]))
        .collect();
    for (c, l) in clients {
        finished(c, &l, 10);
    }
    assert!(ppp2_lines.count("served") >= 1, "the PPP worker served");
    assert!(rep_lines.count("served") >= 3, "so did the REP server");
}
