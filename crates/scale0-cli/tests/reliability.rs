//! Nothing lost: real processes killed with SIGKILL under pipelined load, MDP/0.2 peers
//! with partial replies, and a flood against a service with no workers.

mod common;

use common::*;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

fn sleepy_worker(endpoint: &str, service: &str, extra: &[&str]) -> Proc {
    let mut cmd = scale0();
    cmd.args([
        "worker",
        "--connect",
        endpoint,
        "--service",
        service,
        "--sleep-ms",
        "1",
        "--concurrency",
        "2",
        "--heartbeat-interval-ms",
        "200",
    ])
    .args(extra);
    Proc::spawn("scale0 worker", cmd)
}

/// Three worker processes for `service`; every 300 ms one of them is killed with SIGKILL
/// and replaced, until the value is dropped (also when a test fails: no process leaks).
struct Chaos {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u32>>,
}

impl Chaos {
    /// `extra`: more flags for every worker.
    fn start(endpoint: &str, service: &'static str, extra: &'static [&'static str]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let endpoint = endpoint.to_string();
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut workers: Vec<Proc> = (0..3)
                .map(|_| sleepy_worker(&endpoint, service, extra))
                .collect();
            let mut kills = 0;
            while !flag.load(Ordering::SeqCst) {
                // Not a synchronisation: the pace of the chaos.
                thread::sleep(Duration::from_millis(300));
                let victim = kills as usize % workers.len();
                workers[victim].kill9();
                kills += 1;
                workers[victim] = sleepy_worker(&endpoint, service, extra);
            }
            kills
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the chaos; returns how many workers were killed.
    fn stop(mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_plain_mdp_client_loses_nothing_while_workers_are_killed() {
    let broker = Broker::start(&["--heartbeat-interval-ms", "200", "--max-attempts", "100"]);
    let chaos = Chaos::start(&broker.endpoint, "chaos", &[]);
    let r = py_dealer(
        &broker.endpoint,
        "chaos",
        20000,
        100,
        &["--timeout-ms", "20000"],
    );
    let kills = chaos.stop();
    assert!(r.ok, "{:?} {}", r.json["bad"], r.stderr);
    assert_eq!(r.replies(), 20000, "sent {}", r.json["sent"]);
    let tally = r.tally();
    assert_eq!(tally.len(), 20000, "every request answered");
    assert!(tally.iter().all(|(_, n)| *n == 1), "none answered twice");
    assert!(kills >= 2, "the chaos killed only {kills} workers");
}

#[test]
fn the_native_client_loses_nothing_while_workers_are_killed() {
    native_client_through_chaos(&[]);
}

#[test]
fn workers_killed_holding_several_requests_each_lose_none_of_them() {
    // Each victim holds up to 2 × 8 requests, all sent on to the others.
    native_client_through_chaos(&["--capacity", "8"]);
}

fn native_client_through_chaos(worker_flags: &'static [&'static str]) {
    let broker = Broker::start(&["--heartbeat-interval-ms", "200", "--max-attempts", "100"]);
    let chaos = Chaos::start(&broker.endpoint, "chaos", worker_flags);
    let out = scale0_request(
        &broker.endpoint,
        &[
            "--service",
            "chaos",
            "--count",
            "20000",
            "--in-flight",
            "100",
            "--timeout-ms",
            "5000",
            "--retries",
            "5",
            "x",
        ],
    );
    let kills = chaos.stop();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{s}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        s.contains("ok 20000  errors 0  rejected 0  timed out 0"),
        "{s}"
    );
    assert!(kills >= 2, "the chaos killed only {kills} workers");
}

#[test]
fn mdp2_clients_get_partials_and_mix_with_mdp1_peers() {
    let broker = Broker::start(&[]);
    let _w2 = py_worker_with(
        &broker.endpoint,
        "stream",
        "v2",
        2500,
        &["--version", "2", "--partials", "3"],
    );
    let r = py_dealer(&broker.endpoint, "stream", 10, 1, &["--version", "2"]);
    assert!(r.ok, "{:?}", r.json);
    assert_eq!(r.replies(), 10);
    assert_eq!(r.json["partials"], 30, "three partials before each final");
    // An MDP/0.1 client of the same MDP/0.2 worker gets the finals only.
    let r1 = py_dealer(&broker.endpoint, "stream", 10, 5, &[]);
    assert!(r1.ok, "{:?}", r1.json);
    assert_eq!(r1.replies(), 10);
    // And an MDP/0.2 client is served by an MDP/0.1 worker.
    let _w1 = py_worker(&broker.endpoint, "old", "v1", 2500);
    let r2 = py_dealer(&broker.endpoint, "old", 5, 5, &["--version", "2"]);
    assert!(r2.ok, "{:?}", r2.json);
    assert_eq!(r2.replies(), 5);
}

#[test]
fn a_flood_to_a_service_without_workers_is_bounded_and_refused_clearly() {
    let total: u64 = 1_000_000;
    let broker = Broker::start(&[
        "--max-queue-depth",
        "10000",
        "--unknown-service-wait-ms",
        "600000",
    ]);
    let flood = |n: u64| {
        let mut c = python();
        c.args(["-c", FLOOD, &broker.endpoint, &n.to_string()]);
        let out = run(c);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    flood(total / 4);
    // The broker handles what it received before it is measured.
    eventually("the broker answers MMI after the first wave", || {
        mmi_service(&broker.endpoint, "void") == "404"
    });
    let after_first = rss_kib(broker.proc.pid());
    flood(total - total / 4);
    eventually("the broker answers MMI after the flood", || {
        mmi_service(&broker.endpoint, "void") == "404"
    });
    let after_all = rss_kib(broker.proc.pid());
    // The queue was full after the first wave; three times as many requests later, memory
    // has not grown with them (generous slack for allocator noise).
    assert!(after_first > 0 && after_all > 0);
    assert!(
        after_all < after_first + 20 * 1024,
        "broker memory grew from {after_first} KiB to {after_all} KiB"
    );
    // A native client is told why.
    let out = scale0_request(
        &broker.endpoint,
        &["--service", "void", "--timeout-ms", "5000", "x"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("queue_full"), "{err}");
    // Everyone else is still served.
    let _w = py_worker(&broker.endpoint, "other", "w", 2500);
    let r = py_client(&[
        "--endpoint",
        &broker.endpoint,
        "--service",
        "other",
        "--count",
        "3",
    ]);
    assert!(r.ok);
    let _ = Stdio::null();
}

/// Sends N MDP/0.1 requests to `void` as fast as it can, reading nothing back.
const FLOOD: &str = r#"
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.SNDHWM, 100000)
s.connect(sys.argv[1])
for i in range(int(sys.argv[2])):
    s.send_multipart([b"", b"MDPC01", b"void", b"%d" % i])
s.setsockopt(zmq.LINGER, 60000)
s.close()
ctx.term()
"#;
