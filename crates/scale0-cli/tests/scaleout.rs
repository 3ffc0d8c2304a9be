//! Scale-out with independent brokers, with real processes: workers registered with two
//! brokers at once, clients spreading requests over both, and one broker killed with
//! SIGKILL under pipelined load.

mod common;

use common::*;

#[test]
fn a_broker_killed_under_pipelined_load_loses_no_request_and_answers_none_twice() {
    const N: usize = 20_000;
    let flags = ["--heartbeat-interval-ms", "200"];
    let mut a = Broker::start(&flags);
    let b = Broker::start(&flags);
    let endpoints = [a.endpoint.as_str(), b.endpoint.as_str()];
    let worker_flags = ["--capacity", "4", "--heartbeat-interval-ms", "200"];
    let _workers: Vec<Proc> = (0..2)
        .map(|_| worker_of_all(&endpoints, "echo", &worker_flags))
        .collect();
    for e in endpoints {
        eventually(&format!("the workers registered with {e}"), || {
            mmi_service(e, "echo") == "200"
        });
    }
    let (mut client, lines) = pipelined_request(scale0(), &endpoints, N, 100, 20);
    // Mid-run: both brokers have been answering for a while.
    lines.wait_for(" r", N / 10);
    a.proc.kill9();
    let summary = finished_once(&mut client, &lines, N);
    eprintln!("{summary}");
    assert_eq!(field(&summary, "timed out"), 0, "{summary}");
    // The requests the dead broker held went to the live one under the same ids.
    assert!(field(&summary, "moved") > 0, "{summary}");
}

#[test]
fn a_request_whose_first_broker_is_down_is_answered_by_the_other() {
    let mut gone = Broker::start(&[]);
    let dead = gone.endpoint.clone();
    gone.proc.kill9();
    let live = Broker::start(&[]);
    let _worker = worker_of_all(&[&live.endpoint], "echo", &[]);
    eventually("the worker registered", || {
        mmi_service(&live.endpoint, "echo") == "200"
    });
    // The first request of a client goes to its first broker: the dead one.
    let out = scale0_request(
        &dead,
        &[
            "--connect",
            &live.endpoint,
            "--service",
            "echo",
            "--timeout-ms",
            "300",
            "hello",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

#[test]
fn a_worker_refuses_a_capacity_it_cannot_split_over_its_brokers() {
    let out = run({
        let mut c = scale0();
        c.args([
            "worker",
            "--connect",
            "tcp://127.0.0.1:1,tcp://127.0.0.1:2,tcp://127.0.0.1:3",
            "--service",
            "echo",
            "--echo",
            "--capacity",
            "2",
        ]);
        c
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a capacity of 2 cannot be split over 3 brokers"),
        "{err}"
    );
}

#[test]
fn a_worker_of_two_brokers_serves_both_with_its_capacity_split() {
    let a = Broker::start(&[]);
    let b = Broker::start(&[]);
    let _worker = worker_of_all(&[&a.endpoint, &b.endpoint], "echo", &["--capacity", "5"]);
    for e in [&a.endpoint, &b.endpoint] {
        eventually(&format!("the worker registered with {e}"), || {
            mmi_service(e, "echo") == "200"
        });
    }
    let capacities: Vec<u64> = [&a.endpoint, &b.endpoint]
        .iter()
        .map(|e| {
            let out = scale0_request(e, &["--service", "mmi.status", ""]);
            let status: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("mmi.status is JSON");
            status["services"][0]["workers"][0]["capacity"]
                .as_u64()
                .unwrap_or_else(|| panic!("no worker capacity in {status}"))
        })
        .collect();
    assert_eq!(capacities, vec![3, 2], "5 split over two brokers");
    for e in [&a.endpoint, &b.endpoint] {
        let out = scale0_request(e, &["--service", "echo", "ping"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "ping\n",
            "served by {e}"
        );
    }
}
