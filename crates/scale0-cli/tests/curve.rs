//! CURVE: `scale0 keygen` keys, a broker that lets in only listed keys and restricts
//! services per key, refusals logged, and pyzmq peers reading the same key files; the
//! queue device, the heartbeat bus and the pipelines over CURVE too.

mod common;

use common::{Broker, Lines, Proc, peer, py_client, run, scale0, scale0_request, spawn_lines};
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

    /// `--curve-secret broker.key_secret --curve-allow allow/`: alice and wrk.
    fn server(&self) -> Vec<String> {
        vec![
            "--curve-secret".to_string(),
            self.s("broker.key_secret"),
            "--curve-allow".to_string(),
            self.dir.path().join("allow").display().to_string(),
        ]
    }

    fn broker(&self, extra: &[&str]) -> (Broker, Lines) {
        let mut args = self.server();
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
    let curve: Vec<&str> = curve.iter().map(String::as_str).collect();
    common::echo_worker(endpoint, service, &curve)
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
    // The client is told it was refused, not only that nothing answered.
    for (curve, logged, told) in [
        (
            keys.client("broker", "bob"),
            "key not in the allowlist",
            "key is not allowed there",
        ),
        (Vec::new(), "plaintext peer", "refused the CURVE handshake"),
        (
            keys.client("bob", "alice"),
            "wrong server key",
            "refused the CURVE handshake",
        ),
    ] {
        let out = request(e, "echo", &curve);
        assert!(
            !out.status.success(),
            "{logged}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(told), "{logged}: {stderr}");
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

const ANY: &str = "tcp://127.0.0.1:*";

/// A CURVE server command with stdout and stderr collected: (process, stdout, log).
fn server(name: &str, mut cmd: std::process::Command) -> (Proc, Lines, Lines) {
    cmd.stderr(Stdio::piped());
    let (mut proc, out) = spawn_lines(name, cmd);
    let log = Lines::collect(proc.child.stderr.take().unwrap());
    (proc, out, log)
}

fn example(script: &str) -> std::process::Command {
    common::python_script("examples/python", script)
}

#[test]
fn the_queue_device_serves_listed_req_clients_and_rep_servers_only() {
    let keys = Keys::new();
    let mut q = scale0();
    q.args([
        "queue",
        "--frontend",
        ANY,
        "--backend",
        ANY,
        "--workers",
        ANY,
    ])
    .args(keys.server());
    let (_q, out, log) = server("queue", q);
    let eps = out.listening(3);
    let (frontend, backend) = (&eps[0], &eps[1]);

    // A REP server without CURVE is refused, and so never gets a request.
    let mut plain = example("sha1_server.py");
    plain.args(["--connect", backend]);
    let (_plain, plain_out) = spawn_lines("plaintext server", plain);
    log.wait_for("plaintext peer", 1);

    let mut srv = example("sha1_server.py");
    srv.args(["--connect", backend])
        .args(keys.client("broker", "wrk"));
    let (_srv, srv_out) = spawn_lines("CURVE server", srv);
    srv_out.wait_for("ready", 1);

    let mut c = example("date_client.py");
    c.args(["--connect", frontend, "--count", "5", "--interval-ms", "10"])
        .args(keys.client("broker", "alice"));
    let done = run(c);
    assert!(done.status.success(), "{}", common::tail(&done.stderr));
    let replies = String::from_utf8_lossy(&done.stdout);
    assert_eq!(replies.lines().filter(|l| l.contains(" got ")).count(), 5);
    assert_eq!(srv_out.count("served"), 5, "{replies}");
    assert_eq!(plain_out.count("received"), 0);

    // A client whose key is not listed gets no answer, and the queue says why.
    let mut c = example("date_client.py");
    c.args(["--connect", frontend, "--count", "1", "--retries", "0"])
        .args(["--timeout-ms", "1000"])
        .args(keys.client("broker", "bob"));
    let refused = run(c);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("giving up"));
    log.wait_for("key not in the allowlist", 1);
    assert_eq!(srv_out.count("served"), 5);
}

#[test]
fn the_heartbeat_bus_lets_listed_nodes_see_each_other_and_no_one_else() {
    let keys = Keys::new();
    let mut f = scale0();
    f.args(["forwarder", "--frontend", ANY, "--backend", ANY])
        .args(keys.server());
    let (_f, out, log) = server("forwarder", f);
    let eps = out.listening(2);
    let node = |shard: &str, me: &str| {
        let mut c = scale0();
        c.args(["node", "--shard", shard, "--json", "--interval-ms", "50"])
            .args(["--table-ms", "50"])
            .args(["--publish", &eps[0], "--subscribe", &eps[1]])
            .args(keys.client("broker", me));
        spawn_lines(&format!("node {shard}"), c)
    };
    // The stranger beats first: were it let in, the others would hear it.
    let (_n3, n3) = node("3", "bob");
    log.wait_for("key not in the allowlist", 1);
    let (_n1, n1) = node("1", "alice");
    let (_n2, n2) = node("2", "wrk");
    let joined = |lines: &Lines, shard: u32| {
        lines
            .get()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|e| {
                (e["event"] == "joined" && e["member"]["shard"] == shard)
                    || e["members"]
                        .as_array()
                        .is_some_and(|m| m.iter().any(|m| m["shard"] == shard))
            })
    };
    common::eventually("nodes 1 and 2 hear each other", || {
        joined(&n1, 2) && joined(&n2, 1)
    });
    // Several beats of node 3 go by.
    let tables = n1.count("\"event\":\"table\"");
    n1.wait_for("\"event\":\"table\"", tables + 5);
    assert!(!joined(&n1, 3) && !joined(&n2, 3));
    assert!(!joined(&n3, 1) && !joined(&n3, 2), "{:?}", n3.get());
}

#[test]
fn pipelines_over_curve_run_every_job_on_listed_workers() {
    let keys = Keys::new();
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    let text: String = (0..40).map(|i| format!("job-{i}\n")).collect();
    std::fs::write(&jobs, text).unwrap();
    let worker = |vent: &str, sink: &str, name: &str, curve: &[String]| {
        let mut c = scale0();
        c.args(["work", "--vent", vent, "--sink", sink, "--name", name])
            .args(["--capacity", "1", "--sleep-ms", "50"])
            .args(curve)
            .stdout(Stdio::null());
        Proc::spawn(name, c)
    };

    // The map: one worker in its own process (a listed key), one local (the map gives
    // it a key of its own). Alone, the local one would take 4 s.
    let mut m = scale0();
    m.args([
        "map", "--vent", ANY, "--sink", ANY, "--json", "--local", "1",
    ])
    .args(["--sleep-ms", "100", "--input"])
    .arg(&jobs)
    .args(keys.server());
    let (map, out, log) = server("map", m);
    let eps = log.listening(2);
    let _remote = worker(&eps[0], &eps[1], "remote", &keys.client("broker", "wrk"));
    assert!(map.output().status.success(), "{:?}", log.get());
    common::eventually("every result is read", || {
        out.count("\"status\":\"ok\"") == 40
    });
    assert!(out.count("\"worker\":\"remote\"") > 0, "{:?}", out.get());
    assert!(out.count("\"worker\":\"local.") > 0, "{:?}", out.get());

    // A ventilator and a sink: a plaintext worker is refused by both, a listed one gets
    // the jobs.
    let mut s = scale0();
    s.args(["sink", "--bind", ANY, "--expect", "40"])
        .args(keys.server());
    let (sink, sink_out, sink_log) = server("sink", s);
    let sink_ep = sink_out.listening(1).remove(0);
    let mut v = scale0();
    v.args(["vent", "--bind", ANY, "--input"])
        .arg(&jobs)
        .args(keys.server());
    let (_vent, vent_out, vent_log) = server("vent", v);
    let vent_ep = vent_out.listening(1).remove(0);
    let _plain = worker(&vent_ep, &sink_ep, "plain", &[]);
    vent_log.wait_for("plaintext peer", 1);
    sink_log.wait_for("plaintext peer", 1);
    let _listed = worker(
        &vent_ep,
        &sink_ep,
        "listed",
        &keys.client("broker", "alice"),
    );
    assert!(sink.output().status.success(), "{:?}", sink_log.get());
    let results: Vec<String> = sink_out
        .get()
        .into_iter()
        .filter(|l| l.starts_with("job-"))
        .collect();
    assert_eq!(results.len(), 40, "{results:?}");
}
