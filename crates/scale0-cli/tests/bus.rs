//! The heartbeat bus with real processes: `scale0 forwarder` and `scale0 node`s started at
//! different times converge on one table; a node killed with SIGKILL is suspect, then dead,
//! everywhere; a restarted node is a restart; a restarted forwarder: the tables recover.

mod common;

use common::*;
use std::collections::BTreeSet;

struct Bus {
    proc: Proc,
    publish: String,
    subscribe: String,
}

fn forwarder_on(front: &str, back: &str) -> Bus {
    let mut cmd = scale0();
    cmd.args(["forwarder", "--frontend", front, "--backend", back]);
    let (proc, lines) = spawn_lines("forwarder", cmd);
    let eps = lines.listening(2);
    Bus {
        proc,
        publish: eps[0].clone(),
        subscribe: eps[1].clone(),
    }
}

/// A node with JSON output on every forwarder of `buses`, beating every 50 ms (suspect
/// after 3 intervals, dead after 6), with `extra` flags.
fn node_on(buses: &[&Bus], shard: u32, extra: &[&str]) -> (Proc, Lines) {
    let mut cmd = scale0();
    cmd.args(["node", "--shard", &shard.to_string(), "--json"]);
    for bus in buses {
        cmd.args(["--publish", &bus.publish, "--subscribe", &bus.subscribe]);
    }
    cmd.args([
        "--interval-ms",
        "50",
        "--suspect-after",
        "3",
        "--dead-after",
        "6",
    ])
    .args(extra);
    spawn_lines(&format!("node {shard}"), cmd)
}

fn node(bus: &Bus, shard: u32) -> (Proc, Lines) {
    node_on(&[bus], shard, &[])
}

fn events(lines: &Lines) -> Vec<serde_json::Value> {
    lines
        .get()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn shard_of(e: &serde_json::Value) -> u64 {
    e["shard"]
        .as_u64()
        .or_else(|| e["member"]["shard"].as_u64())
        .unwrap_or(u64::MAX) // a table line
}

/// Shards this node has heard join.
fn joined(lines: &Lines) -> BTreeSet<u64> {
    events(lines)
        .iter()
        .filter(|e| e["event"] == "joined")
        .map(shard_of)
        .collect()
}

/// The events this node saw about `shard`, in order.
fn about(lines: &Lines, shard: u64) -> Vec<String> {
    events(lines)
        .iter()
        .filter(|e| shard_of(e) == shard)
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn nodes_started_at_any_time_converge_and_a_killed_node_is_suspect_then_dead_everywhere() {
    let bus = forwarder_on("tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
    let (_n1, l1) = node(&bus, 1);
    l1.wait_for("joined", 1);
    let (_n2, l2) = node(&bus, 2);
    l2.wait_for("joined", 2);
    let (mut n3, l3) = node(&bus, 3);
    let all: BTreeSet<u64> = [1, 2, 3].into();
    for l in [&l1, &l2, &l3] {
        eventually("every node knows all three", || joined(l) == all);
    }

    n3.kill9();
    for l in [&l1, &l2] {
        eventually("shard 3 is dead", || about(l, 3).contains(&"dead".into()));
        assert_eq!(about(l, 3), ["joined", "suspect", "dead"]);
        let dead = events(l)
            .into_iter()
            .find(|e| e["event"] == "dead")
            .unwrap();
        assert!(dead["missed"].as_u64().unwrap() >= 6, "{dead}");
    }

    // The same shard started again: a restart, not a new member and not a conflict.
    let (_n3b, l3b) = node(&bus, 3);
    for l in [&l1, &l2] {
        eventually("shard 3 restarted", || {
            about(l, 3).contains(&"restarted".into())
        });
        assert!(!about(l, 3).contains(&"conflict".into()));
    }
    eventually("the new node knows all three", || joined(&l3b) == all);
}

#[test]
fn two_nodes_claiming_one_shard_are_reported_as_a_conflict() {
    let bus = forwarder_on("tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
    let (_a, la) = node(&bus, 7);
    la.wait_for("joined", 1);
    let (_b, _lb) = node(&bus, 7);
    eventually("the first claimant sees the conflict", || {
        about(&la, 7).contains(&"conflict".into())
    });
}

#[test]
fn the_tables_recover_when_the_forwarder_restarts() {
    let mut bus = forwarder_on("tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
    let (front, back) = (bus.publish.clone(), bus.subscribe.clone());
    let (_n1, l1) = node(&bus, 1);
    let (_n2, l2) = node(&bus, 2);
    let both: BTreeSet<u64> = [1, 2].into();
    for l in [&l1, &l2] {
        eventually("both known", || joined(l) == both);
    }
    bus.proc.kill9();
    for l in [&l1, &l2] {
        eventually("the other falls silent", || {
            events(l).iter().any(|e| e["event"] == "suspect")
        });
    }
    bus = forwarder_on(&front, &back);
    for l in [&l1, &l2] {
        eventually("everyone is back", || {
            let ev = events(l);
            let last = ev.last().unwrap();
            ev.iter().any(|e| e["event"] == "recovered") && last["alive"] == 2
        });
    }
    drop(bus);
}

#[test]
fn scale0_watch_prints_the_brokers_events() {
    let mut cmd = scale0();
    cmd.args([
        "broker",
        "--bind",
        "tcp://127.0.0.1:*",
        "--events",
        "tcp://127.0.0.1:*",
    ])
    .args(["--heartbeat-interval-ms", "100"]);
    let (_broker, lines) = spawn_lines("broker", cmd);
    let eps = lines.listening(2);
    let mut watch = scale0();
    watch.args(["watch", "--connect", &eps[1], "--json"]);
    let (_watch, seen) = spawn_lines("watch", watch);
    let kinds = || -> Vec<String> {
        seen.get()
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["service"], "echo");
                v["event"].as_str().unwrap().to_string()
            })
            .collect()
    };
    // A SUB joins a moment after it connects: start and kill workers until the watcher
    // has seen a whole life.
    let mut tries = 0;
    eventually("the watcher saw a worker come and go", || {
        let k = kinds();
        if ["worker.ready", "service.up", "worker.gone", "service.down"]
            .iter()
            .all(|e| k.iter().any(|x| x == e))
        {
            return true;
        }
        tries += 1;
        if tries % 10 == 1 {
            let mut w = scale0();
            w.args([
                "worker",
                "--connect",
                &eps[0],
                "--service",
                "echo",
                "--echo",
            ])
            .args(["--heartbeat-interval-ms", "100"]);
            let mut w = Proc::spawn("worker", w);
            // Not a synchronisation: how long this worker lives.
            std::thread::sleep(std::time::Duration::from_millis(200));
            w.kill9();
        }
        false
    });
}

#[test]
fn the_table_shows_state_last_seen_and_missed_intervals() {
    let bus = forwarder_on("tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
    let (_n1, l1) = node_on(&[&bus], 1, &["--table-ms", "100"]);
    let (mut n2, _) = node(&bus, 2);
    let table_says = |shard: u64, state: &str| {
        events(&l1)
            .iter()
            .rev()
            .find(|e| e["event"] == "table")
            .is_some_and(|t| {
                t["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["shard"] == shard && m["state"] == state)
            })
    };
    eventually("both alive in the table", || {
        table_says(1, "alive") && table_says(2, "alive")
    });
    n2.kill9();
    eventually("shard 2 dead in the table", || table_says(2, "dead"));
    let last = events(&l1)
        .into_iter()
        .rev()
        .find(|e| e["event"] == "table")
        .unwrap();
    let two = last["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["shard"] == 2)
        .unwrap()
        .clone();
    assert!(two["missed"].as_u64().unwrap() >= 6, "{two}");
    assert!(two["last_seen_ms_ago"].as_u64().unwrap() >= 300, "{two}");
}

#[test]
fn with_two_forwarders_losing_one_goes_unnoticed() {
    let a = forwarder_on("tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
    let mut b = forwarder_on("tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
    let (_n1, l1) = node_on(&[&a, &b], 1, &[]);
    let (_n2, l2) = node_on(&[&a, &b], 2, &[]);
    let all: BTreeSet<u64> = [1, 2].into();
    for l in [&l1, &l2] {
        eventually("both known", || joined(l) == all);
    }
    b.proc.kill9();
    // A third node, joining through the survivor, prints its table every 50 ms: ten
    // tables take well past the dead threshold (6 x 50 ms) while every beat arrives
    // through `a`.
    let (_probe, probe) = node_on(&[&a], 3, &["--table-ms", "50"]);
    eventually("the third node joins and runs a while", || {
        joined(&probe).len() == 3 && probe.count("\"table\"") >= 10
    });
    for l in [&l1, &l2] {
        eventually("the newcomer is seen", || joined(l).contains(&3));
        assert!(
            !events(l).iter().any(|e| e["event"] == "suspect"),
            "{:?}",
            l.get()
        );
    }
}
