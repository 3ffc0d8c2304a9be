//! The real `scale0` binary against pyzmq peers written from RFC 7 and RFC 18, each its own
//! process.

mod common;

use common::*;
use std::process::Stdio;

#[test]
fn a_req_client_is_served_by_a_python_worker_and_the_reply_echoes_the_service() {
    let broker = Broker::start(&[]);
    let _w = py_worker(&broker.endpoint, "echo", "pyw", 2500);
    let r = py_client(&[
        "--endpoint",
        &broker.endpoint,
        "--service",
        "echo",
        "--socket",
        "req",
        "--count",
        "25",
        "--body",
        "msg-{i}",
    ]);
    assert!(r.ok, "{:?} {}", r.json, r.stderr);
    assert_eq!(r.replies(), 25);
    // The client checks header and echoed service name of every reply; each body came
    // back once, tagged by the worker.
    let tally = r.tally();
    assert_eq!(tally.len(), 25);
    assert!(
        tally
            .iter()
            .all(|(body, n)| *n == 1 && body.starts_with("msg-") && body.ends_with("|pyw"))
    );
}

#[test]
fn a_dealer_client_with_many_in_flight_is_served_by_scale0_workers() {
    let broker = Broker::start(&[]);
    let mut cmd = scale0();
    cmd.args([
        "worker",
        "--connect",
        &broker.endpoint,
        "--service",
        "echo",
        "--echo",
        "--concurrency",
        "2",
    ]);
    let _w = Proc::spawn("scale0 worker", cmd);
    let r = py_dealer(&broker.endpoint, "echo", 3000, 200, &[]);
    assert!(r.ok, "{:?} {}", r.json["bad"], r.stderr);
    assert_eq!(r.replies(), 3000);
    let tally = r.tally();
    assert_eq!(
        tally.len(),
        3000,
        "every distinct request answered exactly once"
    );
}

#[test]
fn several_workers_share_the_load() {
    let broker = Broker::start(&[]);
    let _workers: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| py_worker(&broker.endpoint, "share", n, 2500))
        .collect();
    // Let all three register before the burst, so the test is about dispatch.
    eventually("three workers registered", || {
        mmi_service(&broker.endpoint, "share") == "200"
    });
    let r = py_client(&[
        "--endpoint",
        &broker.endpoint,
        "--service",
        "share",
        "--socket",
        "dealer",
        "--count",
        "900",
        "--in-flight",
        "30",
        "--body",
        "x",
    ]);
    assert!(r.ok, "{:?}", r.json);
    let tally = r.tally();
    assert_eq!(tally.iter().map(|(_, n)| n).sum::<u64>(), 900);
    assert_eq!(tally.len(), 3, "all three workers served: {tally:?}");
    for (who, n) in &tally {
        assert!(*n >= 90, "worker {who} got only {n} of 900: {tally:?}");
    }
}

#[test]
fn a_worker_killed_while_idle_is_expired_and_the_others_carry_on() {
    let broker = Broker::start(&[
        "--heartbeat-interval-ms",
        "200",
        "--heartbeat-liveness",
        "3",
    ]);
    let mut solo = py_worker(&broker.endpoint, "solo", "solo", 200);
    let mut doomed = py_worker(&broker.endpoint, "pair", "doomed", 200);
    let _survivor = py_worker(&broker.endpoint, "pair", "survivor", 200);
    eventually("solo registered", || {
        mmi_service(&broker.endpoint, "solo") == "200"
    });

    solo.kill9();
    doomed.kill9();
    // The only worker of `solo` was killed: the broker expires it and MMI says so.
    eventually("the killed worker is expired", || {
        mmi_service(&broker.endpoint, "solo") == "404"
    });
    // The other service keeps working on its survivor, losing nothing.
    let r = py_dealer(&broker.endpoint, "pair", 200, 10, &[]);
    assert!(r.ok, "{:?}", r.json);
    assert_eq!(r.replies(), 200);
    assert!(
        r.tally()
            .iter()
            .all(|(body, _)| body.ends_with("|survivor"))
    );
    assert_eq!(mmi_service(&broker.endpoint, "pair"), "200");
}

#[test]
fn a_restarted_broker_is_rejoined_by_its_workers_and_serves_again() {
    let broker = Broker::start(&["--heartbeat-interval-ms", "200"]);
    let endpoint = broker.endpoint.clone();
    let _py = py_worker(&endpoint, "py", "py", 200);
    let mut cmd = scale0();
    cmd.args([
        "worker",
        "--connect",
        &endpoint,
        "--service",
        "rs",
        "--echo",
        "--heartbeat-interval-ms",
        "200",
    ]);
    let _rs = Proc::spawn("scale0 worker", cmd);
    for service in ["py", "rs"] {
        let r = py_client(&[
            "--endpoint",
            &endpoint,
            "--service",
            service,
            "--count",
            "3",
        ]);
        assert!(r.ok, "before restart, {service}: {:?}", r.json);
    }

    let bind = format!("tcp://127.0.0.1:{}", broker.port());
    drop(broker); // SIGKILL
    let _broker = Broker::start_on(&bind, &["--heartbeat-interval-ms", "200"]);
    // Both workers notice (DISCONNECT for their heartbeat, or silence) and register again;
    // a Lazy Pirate REQ client retries until they have.
    for service in ["py", "rs"] {
        eventually(&format!("{service} registered with the new broker"), || {
            mmi_service(&endpoint, service) == "200"
        });
        let r = py_client(&[
            "--endpoint",
            &endpoint,
            "--service",
            service,
            "--count",
            "20",
            "--timeout-ms",
            "2000",
            "--retries",
            "5",
        ]);
        assert!(r.ok, "after restart, {service}: {:?} {}", r.json, r.stderr);
        assert_eq!(r.replies(), 20);
    }
}

#[test]
fn requests_wait_for_a_worker_that_starts_later() {
    let broker = Broker::start(&[]);
    let mut client = peer("mdp_client.py");
    client
        .args([
            "--endpoint",
            &broker.endpoint,
            "--service",
            "late",
            "--socket",
            "dealer",
            "--count",
            "50",
            "--in-flight",
            "50",
            "--timeout-ms",
            "20000",
        ])
        .stdout(Stdio::piped());
    let client = Proc::spawn("client", client);
    // Until a worker arrives the requests wait in the broker; then all are served.
    assert_eq!(mmi_service(&broker.endpoint, "late"), "404");
    let _w = py_worker(&broker.endpoint, "late", "late", 2500);
    let out = client.output();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["replies"], 50, "{report}");
}

#[test]
fn a_request_held_by_a_worker_killed_with_sigkill_is_served_by_another() {
    let broker = Broker::start(&["--heartbeat-interval-ms", "200"]);
    let dir = std::env::temp_dir().join(format!("scale0-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("started");
    // The victim registers first, so it is the least recently used worker and gets the
    // request; its command records its pid and then works "forever".
    let script = format!("echo $$ > {}; exec sleep 600", marker.display());
    let mut cmd = scale0();
    cmd.args([
        "worker",
        "--connect",
        &broker.endpoint,
        "--service",
        "job",
        "--heartbeat-interval-ms",
        "200",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let mut victim = Proc::spawn("victim", cmd);
    eventually("the victim registered", || {
        mmi_service(&broker.endpoint, "job") == "200"
    });
    let _rescuer = py_worker(&broker.endpoint, "job", "rescuer", 200);

    let mut client = peer("mdp_client.py");
    client
        .args([
            "--endpoint",
            &broker.endpoint,
            "--service",
            "job",
            "--body",
            "payload",
            "--timeout-ms",
            "20000",
        ])
        .stdout(Stdio::piped());
    let client = Proc::spawn("client", client);
    eventually("the victim started the request", || {
        marker.exists() && std::fs::read_to_string(&marker).is_ok_and(|s| s.ends_with('\n'))
    });
    let sleeper = std::fs::read_to_string(&marker).unwrap().trim().to_string();
    victim.kill9();
    let _ = std::process::Command::new("kill")
        .args(["-9", &sleeper])
        .status();

    let out = client.output();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["replies"], 1, "{report}");
    assert_eq!(report["tally"]["payload|rescuer"], 1, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_native_client_is_served_by_mdp1_and_mdp2_python_workers_with_partials() {
    let broker = Broker::start(&[]);
    let _v1 = py_worker(&broker.endpoint, "old", "v1", 2500);
    let _v2 = py_worker_with(
        &broker.endpoint,
        "new",
        "v2",
        2500,
        &["--version", "2", "--partials", "2"],
    );
    let ask = |service: &str| scale0_request(&broker.endpoint, &["--service", service, "hello"]);
    let out = ask("old");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nv1\n");
    let out = ask("new");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nv2\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("partial: partial 0") && err.contains("partial: partial 1"),
        "{err}"
    );
}

#[test]
fn a_python_native_client_gets_ids_answers_in_any_order_and_retries_run_once() {
    let broker = Broker::start(&[]);
    let mut workers = Vec::new();
    for name in ["a", "b", "c"] {
        let mut cmd = peer("mdp_worker.py");
        cmd.args([
            "--endpoint",
            &broker.endpoint,
            "--service",
            "once",
            "--name",
            name,
            "--log",
        ])
        .stdout(Stdio::piped());
        workers.push(Proc::spawn(name, cmd));
    }
    let mut client = peer("native_client.py");
    client.args([
        "--endpoint",
        &broker.endpoint,
        "--service",
        "once",
        "--count",
        "500",
        "--in-flight",
        "50",
        "--twice",
    ]);
    let out = run(client);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", tail(&out.stdout)));
    assert!(out.status.success(), "{report}");
    assert_eq!(report["answered"], 500);
    assert_eq!(report["errors"], serde_json::json!({}));
    // Each id got a FINAL for each of its two sends, or a FINAL and an ACCEPTED.
    assert!(
        report["finals_per_id"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n == 1 || n == 2),
        "{report}"
    );
    // And the workers ran every request exactly once, retries notwithstanding.
    let mut served = Vec::new();
    for w in workers {
        let mut w = w;
        w.kill9();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut w.child.stdout.take().unwrap(), &mut text).unwrap();
        served.extend(
            text.lines()
                .filter_map(|l| l.strip_prefix("served "))
                .map(str::to_owned),
        );
    }
    served.sort();
    let total = served.len();
    served.dedup();
    assert_eq!(total, 500, "executions");
    assert_eq!(served.len(), 500, "distinct requests executed");
}
