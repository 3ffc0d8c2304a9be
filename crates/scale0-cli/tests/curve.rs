//! CURVE: `scale0 keygen` keys, a broker that lets in only listed keys and restricts
//! services per key, refusals logged, and pyzmq peers reading the same key files.

mod common;

use common::{Broker, Lines, Proc, peer, py_client, run, scale0, scale0_request};
use std::path::PathBuf;
use std::process::Stdio;

/// Key pairs made by `scale0 keygen`: the broker's, `alice` and `wrk` in the allowlist
/// directory, `bob` outside it.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("allow")).unwrap();
        for (name, sub) in [
            ("broker", ""),
            ("bob", ""),
            ("alice", "allow"),
            ("wrk", "allow"),
        ] {
            let mut c = scale0();
            c.args(["keygen", name, "--dir"]).arg(dir.path().join(sub));
            let out = run(c);
            assert!(out.status.success(), "keygen {name}");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&format!("{name}.key_secret")), "{text}");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        let direct = self.dir.path().join(name);
        if direct.exists() {
            direct
        } else {
            self.dir.path().join("allow").join(name)
        }
    }

    fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `--curve-server-key broker.key --curve-key NAME.key_secret`.
    fn client(&self, server: &str, me: &str) -> Vec<String> {
        vec![
            "--curve-server-key".into(),
            self.s(&format!("{server}.key")),
            "--curve-key".into(),
            self.s(&format!("{me}.key_secret")),
        ]
    }

    fn broker(&self, extra: &[&str]) -> (Broker, Lines) {
        let mut args = vec![
            "--curve-secret".to_string(),
            self.s("broker.key_secret"),
            "--curve-allow".to_string(),
            self.dir.path().join("allow").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut broker = Broker::start_with("tcp://127.0.0.1:*", &args, |c| {
            c.stderr(Stdio::piped());
        });
        let log = Lines::collect(broker.proc.child.stderr.take().unwrap());
        (broker, log)
    }
}

fn worker(endpoint: &str, service: &str, curve: &[String]) -> Proc {
    let mut c = scale0();
    c.args([
        "worker",
        "--connect",
        endpoint,
        "--service",
        service,
        "--echo",
    ])
    .args(curve)
    .stdout(Stdio::null());
    Proc::spawn("worker", c)
}

/// A request that waits `ms` for its answer (a refused peer never gets one).
fn request_within(
    endpoint: &str,
    service: &str,
    curve: &[String],
    ms: &str,
) -> std::process::Output {
    let mut args = vec!["--service", service, "--timeout-ms", ms, "--retries", "0"];
    args.extend(curve.iter().map(String::as_str));
    args.push("hello");
    scale0_request(endpoint, &args)
}

fn request(endpoint: &str, service: &str, curve: &[String]) -> std::process::Output {
    request_within(endpoint, service, curve, "1500")
}

#[test]
fn listed_keys_get_their_services_and_every_stranger_is_refused_and_logged() {
    let keys = Keys::new();
    let (broker, log) = keys.broker(&[
        "--curve-services",
        "alice=echo",
        "--curve-services",
        "wrk=echo",
    ]);
    let e = &broker.endpoint;
    let _w = worker(e, "echo", &keys.client("broker", "wrk"));

    // An allowed key gets its service...
    // The request waits in the broker until the worker is up.
    let ok = request_within(e, "echo", &keys.client("broker", "alice"), "20000");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "hello");
    // ...and is refused another, with an answer that says so.
    let other = request(e, "billing", &keys.client("broker", "alice"));
    assert!(!other.status.success());
    let why = String::from_utf8_lossy(&other.stderr);
    assert!(why.contains("forbidden"), "{why}");
    log.wait_for("may not use the service", 1);

    // A key not in the list, a plaintext peer, and a peer expecting another server key
    // get nothing, and the broker says why.
    for (curve, logged) in [
        (keys.client("broker", "bob"), "key not in the allowlist"),
        (Vec::new(), "plaintext peer"),
        (keys.client("bob", "alice"), "wrong server key"),
    ] {
        let out = request(e, "echo", &curve);
        assert!(
            !out.status.success(),
            "{logged}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stdout.is_empty());
        log.wait_for(logged, 1);
    }
    let bob = std::fs::read_to_string(keys.path("bob.key")).unwrap();
    let line = bob.lines().find(|l| l.contains("public-key")).unwrap();
    let bob_z85 = line.split('"').nth(1).unwrap().to_string();
    assert!(
        log.count(&bob_z85) >= 1,
        "the refused key is named: {:?}",
        log.get()
    );
}

#[test]
fn a_worker_key_cannot_offer_a_service_it_is_not_given() {
    let keys = Keys::new();
    let (broker, log) = keys.broker(&["--curve-services", "wrk=echo"]);
    let e = &broker.endpoint;
    let _w = worker(e, "billing", &keys.client("broker", "wrk"));
    log.wait_for("may not use the service", 1);
    // mmi.* is open to every allowed key; the service never came up.
    let mut c = scale0();
    c.args([
        "request",
        "--connect",
        e,
        "--service",
        "mmi.service",
        "billing",
    ])
    .args(keys.client("broker", "alice"));
    assert_eq!(String::from_utf8_lossy(&run(c).stdout).trim(), "404");
}

#[test]
fn pyzmq_peers_use_the_same_key_files() {
    let keys = Keys::new();
    let (broker, _log) = keys.broker(&[]);
    let e = &broker.endpoint;
    let mut w = peer("mdp_worker.py");
    w.args([
        "--endpoint",
        e,
        "--service",
        "echo",
        "--name",
        "py",
        "--tag",
    ])
    .args(["--curve-server-cert", &keys.s("broker.key")])
    .args(["--curve-cert", &keys.s("wrk.key_secret")])
    .stdout(Stdio::piped());
    let mut w = Proc::spawn("py worker", w);
    let stdout = w.child.stdout.take().unwrap();
    assert_eq!(
        common::first_line(stdout, common::HANG).as_deref(),
        Some("ready")
    );
    let report = py_client(&[
        "--endpoint",
        e,
        "--service",
        "echo",
        "--socket",
        "dealer",
        "--count",
        "50",
        "--in-flight",
        "10",
        "--body",
        "{i}",
        "--curve-server-cert",
        &keys.s("broker.key"),
        "--curve-cert",
        &keys.s("alice.key_secret"),
    ]);
    assert!(report.ok, "{}", report.stderr);
    assert_eq!(report.replies(), 50);
    // And a scale0 client reaches the Python worker through the same broker.
    let out = request(e, "echo", &keys.client("broker", "alice"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
}
