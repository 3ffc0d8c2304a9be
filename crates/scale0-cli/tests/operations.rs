//! Running a broker in production: SIGTERM lets accepted requests finish within the grace
//! period while new ones are refused with `shutting_down`, and the broker exits 0 (past
//! the grace period the requests left get that error instead of silence); JSON logs;
//! Prometheus metrics scraped over HTTP; `scale0 status` over MMI.

mod common;

use common::{Broker, HANG, Proc, eventually, http_addr, http_get, scale0, scale0_request, tail};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// A worker whose command marks `mark` when a request reaches it, then sleeps `secs`
/// and echoes.
fn marking_worker(endpoint: &str, mark: &std::path::Path, secs: &str) -> Proc {
    let script = format!("touch '{}'; sleep {secs}; cat", mark.display());
    let mut cmd = scale0();
    cmd.args(["worker", "--connect", endpoint, "--service", "slow"])
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null());
    Proc::spawn("worker", cmd)
}

fn request(endpoint: &str, body: &str) -> Child {
    scale0()
        .args(["request", "--connect", endpoint, "--service", "slow", body])
        .args(["--timeout-ms", "30000", "--retries", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting scale0 request")
}

fn sigterm(p: &Proc) {
    let status = Command::new("kill")
        .args(["-TERM", &p.pid().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
}

/// Waits for the broker to exit on its own and returns whether it exited 0.
fn exit_status(broker: &mut Broker) -> bool {
    let started = Instant::now();
    loop {
        if let Some(status) = broker.proc.child.try_wait().unwrap() {
            return status.success();
        }
        assert!(started.elapsed() < HANG, "the broker did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn sigterm_answers_accepted_requests_refuses_new_ones_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("started");
    let mut broker = Broker::start(&["--grace-ms", "20000"]);
    let _worker = marking_worker(&broker.endpoint, &mark, "1");
    let held = request(&broker.endpoint, "held");
    eventually("the request reached the worker", || mark.exists());

    sigterm(&broker.proc);
    let late = scale0_request(
        &broker.endpoint,
        &["--service", "slow", "--retries", "0", "late"],
    );
    assert!(!late.status.success(), "a request after SIGTERM is refused");
    assert!(
        tail(&late.stderr).contains("shutting_down"),
        "refused as shutting_down: {}",
        tail(&late.stderr)
    );

    let out = held.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", tail(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "held");
    assert!(exit_status(&mut broker), "the broker exits 0");
}

#[test]
fn past_the_grace_period_a_held_request_gets_shutting_down() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("started");
    let mut broker = Broker::start(&["--grace-ms", "200"]);
    let _worker = marking_worker(&broker.endpoint, &mark, "30");
    let held = request(&broker.endpoint, "held");
    eventually("the request reached the worker", || mark.exists());

    sigterm(&broker.proc);
    let out = held.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        tail(&out.stderr).contains("shutting_down"),
        "{}",
        tail(&out.stderr)
    );
    assert!(exit_status(&mut broker), "the broker exits 0");
}

#[test]
fn with_log_json_every_log_line_is_a_json_object() {
    let mut broker = Broker::start_with("tcp://127.0.0.1:*", &["--log-json"], |c| {
        c.env("RUST_LOG", "info").stderr(Stdio::piped());
    });
    sigterm(&broker.proc);
    assert!(exit_status(&mut broker), "the broker exits 0");
    let mut err = String::new();
    std::io::Read::read_to_string(broker.proc.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let lines: Vec<&str> = err.lines().collect();
    assert!(lines.len() >= 2, "at least the start and stop lines: {err}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
}

fn sample(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{body}"))
}

#[test]
fn metrics_are_scraped_over_http_in_prometheus_text() {
    let mut cmd = scale0();
    cmd.args([
        "broker",
        "--bind",
        "tcp://127.0.0.1:*",
        "--metrics",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::piped());
    let (proc, out) = common::spawn_lines("broker", cmd);
    let ends = out.listening(2);
    let endpoint = ends[0].clone();
    let addr = http_addr(&ends[1]);
    let mut w = scale0();
    w.args([
        "worker",
        "--connect",
        &endpoint,
        "--service",
        "echo",
        "--echo",
    ])
    .stdout(Stdio::null());
    let _worker = Proc::spawn("worker", w);
    for i in 0..5 {
        let out = scale0_request(&endpoint, &["--service", "echo", &format!("r{i}")]);
        assert!(out.status.success(), "{}", tail(&out.stderr));
    }
    // Requests to a service nobody serves wait in its queue.
    let waiting: Vec<Child> = (0..2).map(|_| request(&endpoint, "x")).collect();
    let mut last = String::new();
    eventually("the scrape shows the traffic", || {
        let (status, body) = http_get(&addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        last = body;
        sample(&last, "scale0_replies_total") >= 5.0
            && sample(&last, "scale0_request_duration_seconds_count") >= 5.0
            && sample(&last, "scale0_queue_depth{service=\"slow\"}") == 2.0
    });
    assert_eq!(
        sample(&last, "scale0_workers{service=\"echo\",state=\"idle\"}"),
        1.0
    );
    assert_eq!(
        sample(&last, "scale0_request_duration_seconds_bucket{le=\"+Inf\"}"),
        sample(&last, "scale0_request_duration_seconds_count")
    );
    // OpenMetrics text: a counter family is named without `_total`, its samples with.
    assert!(last.contains("# TYPE scale0_request_failures counter"));
    assert!(last.ends_with("# EOF\n"));
    assert_eq!(http_get(&addr, "/other").0, "HTTP/1.1 404 Not Found");
    for mut c in waiting {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(proc);
}

#[test]
fn status_shows_services_queues_and_workers() {
    let broker = Broker::start(&[]);
    let mut workers = Vec::new();
    for capacity in ["1", "4"] {
        let mut w = scale0();
        w.args([
            "worker",
            "--connect",
            &broker.endpoint,
            "--service",
            "echo",
            "--echo",
            "--capacity",
            capacity,
        ])
        .stdout(Stdio::null());
        workers.push(Proc::spawn("worker", w));
    }
    let out = scale0_request(&broker.endpoint, &["--service", "echo", "hello"]);
    assert!(out.status.success(), "{}", tail(&out.stderr));
    // A request for a service nobody serves waits in its queue.
    let mut waiting = request(&broker.endpoint, "x");

    let status = |json: bool| {
        let mut c = scale0();
        c.args(["status", "--connect", &broker.endpoint]);
        if json {
            c.arg("--json");
        }
        let out = common::run(c);
        assert!(out.status.success(), "{}", tail(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut doc = serde_json::Value::Null;
    eventually("both workers registered and the request queued", || {
        doc = serde_json::from_str(&status(true)).unwrap();
        let services = doc["services"].as_array().unwrap();
        let echo = services.iter().find(|s| s["name"] == "echo");
        let slow = services.iter().find(|s| s["name"] == "slow");
        echo.is_some_and(|s| s["workers"].as_array().unwrap().len() == 2)
            && slow.is_some_and(|s| s["queued"] == 1)
    });
    assert_eq!(doc["version"], 1);
    assert!(doc["totals"]["replies"].as_u64().unwrap() >= 1);
    assert_eq!(doc["outstanding"], 1);
    let echo = doc["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "echo")
        .unwrap();
    for w in echo["workers"].as_array().unwrap() {
        assert_eq!(w["state"], "idle");
        assert_eq!(w["held"], 0);
        assert!(w["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    let mut capacities: Vec<u64> = echo["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["capacity"].as_u64().unwrap())
        .collect();
    capacities.sort_unstable();
    assert_eq!(capacities, [1, 4]);
    let table = status(false);
    assert!(
        table.lines().any(|l| l.starts_with("echo")
            && l.split_whitespace().collect::<Vec<_>>() == ["echo", "0", "2", "2", "0"]),
        "{table}"
    );
    assert_eq!(table.matches("holding 0 of 4").count(), 1, "{table}");
    let _ = waiting.kill();
    let _ = waiting.wait();
}

#[test]
fn a_worker_stopped_mid_request_answers_it_then_says_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("started");
    let broker = Broker::start(&[]);
    let mut worker = marking_worker(&broker.endpoint, &mark, "1");
    let held = request(&broker.endpoint, "held");
    eventually("the request reached the worker", || mark.exists());

    sigterm(&worker);
    let out = held.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", tail(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "held");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = worker.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < HANG, "the worker did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "the worker exits 0: {status}");
    // It said DISCONNECT: the broker no longer counts it.
    eventually("the broker forgot the worker", || {
        common::mmi_service(&broker.endpoint, "slow") == "404"
    });
}

#[test]
fn a_worker_with_credit_stopped_under_load_finishes_what_it_holds_and_loses_nothing() {
    let broker = Broker::start(&[]);
    let worker = |name: &str| {
        let mut cmd = scale0();
        cmd.args(["worker", "--connect", &broker.endpoint, "--service", "busy"])
            .args(["--sleep-ms", "20", "--capacity", "4", "--grace-ms", "3000"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        Proc::spawn(name, cmd)
    };
    let mut stopped = worker("stopped worker");
    let _other = worker("other worker");
    // About four seconds of work for the two; the stopped one would be fed for as long.
    let load = scale0()
        .args([
            "request",
            "--connect",
            &broker.endpoint,
            "--service",
            "busy",
        ])
        .args([
            "--count",
            "400",
            "--in-flight",
            "16",
            "--timeout-ms",
            "20000",
            "x",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("both workers are registered", || {
        common::mmi_service(&broker.endpoint, "busy") == "200"
    });
    sigterm(&stopped);
    let stderr = stopped.child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::BufReader::new(stderr), &mut text).ok();
        text
    });
    let out = common::finish(load, "scale0 request");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("ok 400  errors 0  rejected 0  timed out 0"),
        "{summary}"
    );
    let status = stopped.child.wait().unwrap();
    assert!(status.success(), "the stopped worker exits 0: {status}");
    let log = log.join().unwrap();
    // New requests kept coming (it had room) but were left to the other worker; it did
    // not hold on until the grace period ran out.
    assert!(!log.contains("grace period over"), "{log}");
}

/// How a test knows a process is up before it signals it.
enum Up {
    /// The broker lists the service (a worker has registered).
    Registered(&'static str),
    /// A line with this text on stdout or stderr.
    Prints(&'static str),
}

/// Every server and every worker mode stops on SIGTERM and exits 0, within its grace
/// period when idle. (Regression: `worker --inline` sent DISCONNECT and then hung.)
#[test]
fn every_server_and_worker_mode_exits_zero_on_sigterm() {
    const ANY: &str = "tcp://127.0.0.1:*";
    let broker = Broker::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    std::fs::write(&jobs, "a\nb\n").unwrap();
    let jobs = jobs.to_str().unwrap();
    let ep = broker.endpoint.as_str();
    let worker = |service: &'static str, mode: &[&str]| {
        let mut args = vec!["worker", "--connect", ep, "--service", service];
        args.extend_from_slice(mode);
        (strings(&args), Up::Registered(service))
    };
    let server = |args: &[&str], line: &'static str| (strings(args), Up::Prints(line));
    let dead_end = "tcp://127.0.0.1:1";
    let cases = [
        ("worker", worker("w-thread", &["--echo"])),
        (
            "worker --inline",
            worker("w-inline", &["--echo", "--inline"]),
        ),
        (
            "worker --inline --capacity 4",
            worker("w-credit", &["--echo", "--inline", "--capacity", "4"]),
        ),
        ("worker -- cat", worker("w-cmd", &["--", "cat"])),
        (
            "queue",
            server(&["queue", "--frontend", ANY, "--workers", ANY], "listening"),
        ),
        (
            "forwarder",
            server(
                &["forwarder", "--frontend", ANY, "--backend", ANY],
                "listening",
            ),
        ),
        ("sink", server(&["sink", "--bind", ANY], "listening")),
        (
            "vent",
            server(&["vent", "--bind", ANY, "--input", jobs], "listening"),
        ),
        (
            "map",
            server(
                &["map", "--vent", ANY, "--sink", ANY, "--input", jobs],
                "listening",
            ),
        ),
        ("node", server(&["node", "--shard", "1"], "node running")),
        (
            "work",
            (
                strings(&["work", "--vent", dead_end, "--sink", dead_end, "--echo"]),
                Up::Prints("task worker running"),
            ),
        ),
    ];
    for (name, (args, up)) in cases {
        let mut cmd = scale0();
        cmd.env("RUST_LOG", "info")
            .args(&args)
            .stderr(Stdio::piped());
        let (mut proc, out) = common::spawn_lines(name, cmd);
        let err = common::Lines::collect(proc.child.stderr.take().expect("piped stderr"));
        match up {
            Up::Registered(s) => eventually(&format!("{name} registered"), || {
                common::mmi_service(ep, s) == "200"
            }),
            Up::Prints(line) => eventually(&format!("{name} printed {line:?}"), || {
                out.count(line) + err.count(line) > 0
            }),
        }
        sigterm(&proc);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = proc.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < HANG,
                "{name} did not exit on SIGTERM: {:?}",
                err.get()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "{name} exited with {status}: {:?}",
            err.get()
        );
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(ToString::to_string).collect()
}
