//! `scale0 broker --cluster`: three real broker processes replicating over raft on
//! loopback (the nodes' own traffic on ipc:// sockets in a temporary directory). The
//! leader serves and the others refuse clients with `not_leader`; requests the leader
//! acknowledged survive its kill -9 and are served by the node elected next.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

const SERVICE: &str = "later";

/// A node; `None` once killed.
struct Node {
    broker: Option<Broker>,
}

/// Three nodes, each a `scale0 broker` with its own data directory.
fn cluster(dir: &Path) -> Vec<Node> {
    let nodes: Vec<String> = (1..=3)
        .map(|id| format!("{id}=ipc://{}/node{id}", dir.display()))
        .collect();
    (1..=3)
        .map(|id| {
            let data = dir.join(format!("data{id}"));
            let mut args = vec![
                "--node-id".to_string(),
                id.to_string(),
                "--data-dir".to_string(),
                data.display().to_string(),
                "--cluster-tick-ms".to_string(),
                "20".to_string(),
            ];
            for n in &nodes {
                args.push("--cluster".into());
                args.push(n.clone());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Node {
                broker: Some(Broker::start(&args)),
            }
        })
        .collect()
}

/// A node's `mmi.status` document, if it answers.
fn status(endpoint: &str) -> Option<Value> {
    let mut c = scale0();
    c.args([
        "status",
        "--json",
        "--connect",
        endpoint,
        "--timeout-ms",
        "1000",
    ]);
    let out = run(c);
    serde_json::from_slice(&out.stdout).ok()
}

/// The node that serves, once exactly one live node says it does.
fn serving(nodes: &[Node]) -> usize {
    let mut found = None;
    eventually("one node serves", || {
        let up: Vec<usize> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.broker.as_ref().is_some_and(|b| {
                    status(&b.endpoint).is_some_and(|s| s["cluster"]["serving"] == true)
                })
            })
            .map(|(i, _)| i)
            .collect();
        found = up.first().copied();
        up.len() == 1
    });
    found.unwrap()
}

#[test]
fn the_leader_serves_followers_refuse_and_acknowledged_requests_survive_its_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path());
    let leader = serving(&nodes);
    let endpoint = |nodes: &[Node], i: usize| nodes[i].broker.as_ref().unwrap().endpoint.clone();

    // A follower refuses a client: it is not the leader.
    let follower = (leader + 1) % 3;
    let out = scale0_request(&endpoint(&nodes, follower), &["--service", "echo", "x"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not_leader"),
        "{}",
        tail(&out.stderr)
    );

    // The leader serves, through the replicated journal.
    let _w = echo_worker(&endpoint(&nodes, leader), "echo", &[]);
    eventually("the worker registered", || {
        mmi_service(&endpoint(&nodes, leader), "echo") == "200"
    });
    let out = scale0_request(
        &endpoint(&nodes, leader),
        &[
            "--service",
            "echo",
            "--count",
            "300",
            "--in-flight",
            "16",
            "x",
        ],
    );
    assert!(out.status.success(), "{}", tail(&out.stderr));

    // Requests for a service with no worker yet: accepted, so replicated to every node.
    let waiting = {
        let mut c = scale0();
        c.args([
            "request",
            "--connect",
            &endpoint(&nodes, leader),
            "--service",
            SERVICE,
            "--count",
            "5",
            "--in-flight",
            "5",
            "--timeout-ms",
            "120000",
            "x",
        ]);
        Proc::spawn("waiting client", c)
    };
    eventually("every node holds the five requests", || {
        nodes.iter().all(|n| {
            let b = n.broker.as_ref().unwrap();
            status(&b.endpoint).is_some_and(|s| s["cluster"]["journal"] == 5)
        })
    });
    drop(waiting);

    // kill -9 the leader: another node is elected and serves the five at once.
    nodes[leader].broker.as_mut().unwrap().proc.kill9();
    nodes[leader].broker = None;
    let next = serving(&nodes);
    assert_ne!(next, leader);
    let s = status(&endpoint(&nodes, next)).unwrap();
    assert_eq!(s["outstanding"], 5, "{s}");
    let _w2 = echo_worker(&endpoint(&nodes, next), SERVICE, &[]);
    eventually("the new leader served the five", || {
        status(&endpoint(&nodes, next)).is_some_and(|s| s["totals"]["replies"] == 5)
    });
    eventually("and the journal is empty on both live nodes", || {
        nodes.iter().filter(|n| n.broker.is_some()).all(|n| {
            status(&n.broker.as_ref().unwrap().endpoint)
                .is_some_and(|s| s["cluster"]["journal"] == 0)
        })
    });
}

#[test]
fn the_leader_killed_under_pipelined_load_loses_no_request_and_answers_none_twice() {
    const N: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path());
    let leader = serving(&nodes);
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|n| n.broker.as_ref().unwrap().endpoint.clone())
        .collect();
    let all: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    // Workers register with every node: whichever leads next has them.
    let _workers: Vec<Proc> = (0..2)
        .map(|_| worker_of_all(&all, "echo", &["--capacity", "3"]))
        .collect();
    eventually("the workers registered with every node", || {
        all.iter().all(|e| mmi_service(e, "echo") == "200")
    });
    let mut cmd = scale0();
    cmd.args(["request", "--connect", &all.join(",")]).args([
        "--service",
        "echo",
        "--count",
        &N.to_string(),
        "--in-flight",
        "32",
        "--timeout-ms",
        "500",
        "--retries",
        "40",
        "--print-replies",
        "r{i}",
    ]);
    let (mut client, lines) = spawn_lines("scale0 request", cmd);
    lines.wait_for(" r", N / 5);
    nodes[leader].broker.as_mut().unwrap().proc.kill9();
    nodes[leader].broker = None;
    eventually("the client finished", || {
        client.child.try_wait().ok().flatten().is_some()
    });
    lines.wait_for("requests ", 1);
    let status = client.child.wait().expect("status");
    let summary = each_answered_once(&lines.get(), N);
    assert!(status.success(), "{summary}");
    assert_eq!(field(&summary, "ok"), N as u64, "{summary}");
    assert_ne!(serving(&nodes), leader, "another node leads");
}
