//! `scale0 broker --cluster`: three real broker processes replicating over raft, on
//! loopback (the nodes' own traffic on ipc:// sockets in a temporary directory) or on
//! three hosts made of network namespaces. The leader serves; the others refuse native
//! clients with `not_leader`, relay plain MDP clients and workers to the leader, and with
//! CURVE let in no node without the cluster's key; requests the leader acknowledged survive its kill -9 and are
//! served by the node elected next; under pipelined load through clients and workers of
//! every node, the leader killed or cut off loses nothing and answers nothing twice.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

const SERVICE: &str = "later";

/// A node; `None` once killed.
struct Node {
    broker: Option<Broker>,
}

/// Three nodes, each a `scale0 broker` with its own data directory.
fn cluster(dir: &Path) -> Vec<Node> {
    cluster_with(dir, |_| Vec::new())
}

/// Three nodes, node `id` started with `extra(id)` as well.
fn cluster_with(dir: &Path, extra: impl Fn(u64) -> Vec<String>) -> Vec<Node> {
    (1..=3)
        .map(|id| Node {
            broker: Some(start_node(dir, id, &extra(id))),
        })
        .collect()
}

/// Node `id` of the cluster in `dir` (data in `dir/dataID`), with `extra` flags.
fn start_node(dir: &Path, id: u64, extra: &[String]) -> Broker {
    let mut args = vec![
        "--node-id".to_string(),
        id.to_string(),
        "--data-dir".to_string(),
        dir.join(format!("data{id}")).display().to_string(),
        "--cluster-tick-ms".to_string(),
        "20".to_string(),
    ];
    for n in 1..=3 {
        args.push("--cluster".into());
        args.push(format!("{n}=ipc://{}/node{n}", dir.display()));
    }
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Broker::start(&args)
}

/// A node's `mmi.status` document, if it answers.
fn status(endpoint: &str) -> Option<Value> {
    status_by(scale0(), endpoint)
}

/// Like [`status`], over CURVE with `--curve-server-key SERVER --curve-key ME`.
fn status_curve(endpoint: &str, server: &Path, me: &Path) -> Option<Value> {
    let mut c = scale0();
    c.args([
        "status",
        "--json",
        "--connect",
        endpoint,
        "--timeout-ms",
        "1000",
    ])
    .arg("--curve-server-key")
    .arg(server)
    .arg("--curve-key")
    .arg(me);
    serde_json::from_slice(&run(c).stdout).ok()
}

/// `scale0 status --json` of the node at `endpoint`, run as `cmd` (`scale0`, or it
/// inside a namespace).
fn status_by(mut cmd: Command, endpoint: &str) -> Option<Value> {
    cmd.args([
        "status",
        "--json",
        "--connect",
        endpoint,
        "--timeout-ms",
        "1000",
    ]);
    serde_json::from_slice(&run(cmd).stdout).ok()
}

/// A client with five requests for `SERVICE`, which no worker serves yet: the broker
/// accepts and stores them, and the client waits for their answers.
fn waiting_client(endpoint: &str) -> Proc {
    let mut c = scale0();
    c.args(["request", "--connect", endpoint, "--service", SERVICE])
        .args([
            "--count",
            "5",
            "--in-flight",
            "5",
            "--timeout-ms",
            "120000",
            "x",
        ]);
    Proc::spawn("waiting client", c)
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
    // Their answers are kept in the replicated journal for retries, on every node.
    let journal = |n: &Node| {
        status(&n.broker.as_ref().unwrap().endpoint).and_then(|s| s["cluster"]["journal"].as_u64())
    };
    eventually("every node keeps the 300 answers", || {
        nodes.iter().all(|n| journal(n) == Some(300))
    });

    // Requests for a service with no worker yet: accepted, so replicated to every node.
    let waiting = waiting_client(&endpoint(&nodes, leader));
    eventually("every node holds the five requests", || {
        nodes.iter().all(|n| journal(n) == Some(305))
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
    // Their answers take their places in the replicated journal on both live nodes,
    // kept for the client's retries (a retry after another failover is answered from
    // there, not run again).
    eventually(
        "the journal holds the five answers on both live nodes",
        || {
            nodes.iter().filter(|n| n.broker.is_some()).all(|n| {
                status(&n.broker.as_ref().unwrap().endpoint)
                    .is_some_and(|s| s["cluster"]["journal"] == 305 && s["outstanding"] == 0)
            })
        },
    );
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
    let (mut client, lines) = pipelined_request(scale0(), &all, N, 32, 40);
    lines.wait_for(" r", N / 5);
    nodes[leader].broker.as_mut().unwrap().proc.kill9();
    nodes[leader].broker = None;
    finished_once(&mut client, &lines, N);
    assert_ne!(serving(&nodes), leader, "another node leads");
}

/// `scale0 status --json` of the node at `endpoint`, asked from namespace `ns`.
fn status_in(ns: &str, endpoint: &str) -> Option<Value> {
    status_by(Net::scale0_in(ns), endpoint)
}

#[test]
fn the_leader_cut_off_under_load_is_replaced_and_rejoins_with_nothing_lost() {
    const N: usize = 4000;
    let Some(net) = Net::star(3) else { return };
    let dir = tempfile::tempdir().unwrap();
    let middle = net.names[0].clone();
    let host = |k: usize| format!("10.{}.0.1", 77 + k);
    let clients: Vec<String> = (0..3).map(|k| format!("tcp://{}:5551", host(k))).collect();
    let peers: Vec<String> = (0..3)
        .map(|k| format!("{}=tcp://{}:5601", k + 1, host(k)))
        .collect();
    let _nodes: Vec<Proc> = (0..3)
        .map(|k| {
            let mut c = Net::scale0_in(&net.names[k + 1]);
            c.args([
                "broker",
                "--bind",
                &clients[k],
                "--node-id",
                &(k + 1).to_string(),
            ])
            .args([
                "--data-dir",
                dir.path().join(format!("d{k}")).to_str().unwrap(),
            ])
            .args(["--cluster-tick-ms", "20"])
            .stdout(Stdio::null());
            for p in &peers {
                c.args(["--cluster", p]);
            }
            Proc::spawn("cluster node", c)
        })
        .collect();
    let mut leader = None;
    eventually("a node serves", || {
        leader = (0..3).find(|&k| {
            status_in(&middle, &clients[k]).is_some_and(|s| s["cluster"]["serving"] == true)
        });
        leader.is_some()
    });
    let leader = leader.unwrap();
    let _workers: Vec<Proc> = (0..2)
        .map(|_| {
            let mut c = Net::scale0_in(&middle);
            c.args(["worker", "--service", "echo", "--echo", "--capacity", "3"])
                .args(["--connect", &clients.join(",")])
                .args(["--heartbeat-interval-ms", "200"])
                .stdout(Stdio::null());
            Proc::spawn("worker", c)
        })
        .collect();
    let all: Vec<&str> = clients.iter().map(String::as_str).collect();
    let (mut client, lines) = pipelined_request(Net::scale0_in(&middle), &all, N, 32, 60);
    lines.wait_for(" r", N / 5);
    // Cut the leader's only link: the two others elect a leader and go on.
    let link = net.names[leader + 1].clone();
    let dev = format!("s0a{leader}x{}", std::process::id() % 100_000);
    Net::ip(&["-n", &link, "link", "set", &dev, "down"]);
    let at_cut = lines.count(" r");
    lines.wait_for(" r", at_cut + N / 5);
    // Heal it: the old leader comes back as a follower of the new term.
    Net::ip(&["-n", &link, "link", "set", &dev, "up"]);
    let _ = Command::new("ip")
        .args([
            "-n",
            &link,
            "route",
            "add",
            "default",
            "via",
            &format!("10.{}.0.2", 77 + leader),
        ])
        .output();
    finished_once(&mut client, &lines, N);
    eventually("the old leader rejoined as a follower", || {
        status_in(&middle, &clients[leader])
            .is_some_and(|s| s["cluster"]["role"] == "follower" && s["cluster"]["serving"] == false)
    });
}

#[test]
fn a_bad_cluster_configuration_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d").display().to_string();
    for (args, why) in [
        (
            vec![
                "--node-id",
                "1",
                "--cluster",
                "1=ipc:///tmp/a",
                "--cluster",
                "2=ipc:///tmp/b",
            ],
            "odd number of nodes",
        ),
        (
            vec![
                "--node-id",
                "4",
                "--cluster",
                "1=ipc:///tmp/a",
                "--cluster",
                "2=ipc:///tmp/b",
                "--cluster",
                "3=ipc:///tmp/c",
            ],
            "not among the cluster's nodes",
        ),
        (
            vec!["--node-id", "1", "--cluster", "x=ipc:///tmp/a"],
            "bad node id",
        ),
        (vec!["--cluster", "1=ipc:///tmp/a"], "--node-id"),
    ] {
        let mut c = scale0();
        c.args(["broker", "--bind", "tcp://127.0.0.1:*", "--data-dir", &data])
            .args(&args);
        let out = run(c);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn with_curve_the_nodes_let_in_only_a_node_that_holds_the_cluster_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let allow = keys.join("allow");
    std::fs::create_dir_all(&allow).unwrap();
    for (name, sub) in [("cluster", &keys), ("impostor", &keys), ("alice", &allow)] {
        let mut c = scale0();
        c.args(["keygen", name, "--dir"]).arg(sub);
        assert!(run(c).status.success(), "keygen {name}");
    }
    // Nodes 1 and 2 hold the cluster's key pair; node 3 another one.
    let nodes = cluster_with(dir.path(), |id| {
        let pair = if id == 3 { "impostor" } else { "cluster" };
        vec![
            "--curve-secret".into(),
            keys.join(format!("{pair}.key_secret"))
                .display()
                .to_string(),
            "--curve-allow".into(),
            allow.display().to_string(),
        ]
    });
    let endpoint = |i: usize| nodes[i].broker.as_ref().unwrap().endpoint.clone();
    let alice = allow.join("alice.key_secret");
    let of = |i: usize| {
        let pair = if i == 2 { "impostor" } else { "cluster" };
        status_curve(&endpoint(i), &keys.join(format!("{pair}.key")), &alice)
    };
    // Two of three are a majority: 1 and 2 elect a leader among themselves.
    let mut leader = None;
    eventually("node 1 or 2 serves", || {
        leader = (0..2).find(|i| of(*i).is_some_and(|s| s["cluster"]["serving"] == true));
        leader.is_some()
    });
    let leader = leader.unwrap();
    let curve = |pair: &str| {
        vec![
            "--curve-server-key".to_string(),
            keys.join(format!("{pair}.key")).display().to_string(),
            "--curve-key".to_string(),
            alice.display().to_string(),
        ]
    };
    let client_curve = curve("cluster");
    let args: Vec<&str> = client_curve.iter().map(String::as_str).collect();
    let _w = echo_worker(&endpoint(leader), "echo", &args);
    let mut request = args.clone();
    request.extend(["--service", "echo", "--count", "50", "x"]);
    eventually("the leader serves over CURVE", || {
        scale0_request(&endpoint(leader), &request).status.success()
    });
    // The impostor reached neither: it never hears of a leader, and the others never
    // count it (the leader reports its lag as everything it has).
    let s = of(2).expect("the impostor answers its own clients");
    assert_eq!(s["cluster"]["leader"], Value::Null, "{s}");
    assert_eq!(s["cluster"]["commit"], 1, "{s}");
    let l = of(leader).unwrap();
    let lag = l["cluster"]["lag"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == 3)
        .cloned()
        .unwrap();
    assert!(lag["entries"].as_u64().unwrap() > 0, "{l}");
    assert!(l["cluster"]["commit"].as_u64().unwrap() > 1, "{l}");
}

/// A majortomo program from tests/peers; fails (never skips) when majortomo is missing.
fn majortomo(script: &str) -> Command {
    python_with("majortomo");
    peer(script)
}

#[test]
fn plain_mdp_clients_and_workers_of_followers_are_relayed_to_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path());
    let leader = serving(&nodes);
    let ep = |nodes: &[Node], i: usize| nodes[i].broker.as_ref().unwrap().endpoint.clone();
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);

    // Plain workers that know nothing of clusters, each on one follower: an RFC 7
    // worker of ours, and majortomo's MDP/0.2 worker streaming partials.
    let _w1 = py_worker(&ep(&nodes, f1), "echo", "w1", 300);
    let mut mt = majortomo("majortomo_worker.py");
    mt.args([
        "--endpoint",
        &ep(&nodes, f2),
        "--service",
        "stream",
        "--partials",
        "2",
        "--lifetime-s",
        "60",
    ]);
    let (_w2, out) = spawn_lines("majortomo worker", mt);
    out.wait_for("ready", 1);
    // They register with the leader, through their followers, not with the followers.
    eventually("the leader has both workers", || {
        mmi_service(&ep(&nodes, leader), "echo") == "200"
            && mmi_service(&ep(&nodes, leader), "stream") == "200"
    });
    assert_eq!(mmi_service(&ep(&nodes, f1), "echo"), "404");

    // Plain clients on either follower are served by them: MDP/0.1 from a REQ, MDP/0.2
    // from a DEALER with requests in flight, majortomo's client with partials.
    let r = py_client(&[
        "--endpoint",
        &ep(&nodes, f2),
        "--service",
        "echo",
        "--count",
        "20",
    ]);
    assert!(r.ok, "{:?} {}", r.json, r.stderr);
    assert_eq!(r.json["tally"]["hello|w1"], 20, "{:?}", r.json);
    let r = py_client(&[
        "--endpoint",
        &ep(&nodes, f1),
        "--service",
        "echo",
        "--version",
        "2",
        "--socket",
        "dealer",
        "--count",
        "200",
        "--in-flight",
        "16",
    ]);
    assert!(r.ok, "{:?} {}", r.json, r.stderr);
    assert_eq!(r.replies(), 200, "{:?}", r.json);
    let out = run({
        let mut c = majortomo("majortomo_client.py");
        c.args(["--endpoint", &ep(&nodes, f1), "--service", "stream"])
            .args(["--count", "3", "--partials"]);
        c
    });
    assert!(out.status.success(), "{}", tail(&out.stderr));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let partials = lines.iter().filter(|l| l["partial"] == true).count();
    assert_eq!(partials, 6, "two partials for each of three: {lines:?}");
    // The leader served them all, as peers of its own.
    let s = status(&ep(&nodes, leader)).unwrap();
    assert!(s["totals"]["replies"].as_u64().unwrap() >= 223, "{s}");

    // kill -9 the leader: the RFC 7 worker registers again with whichever node leads
    // next (through its follower, or with it if that node leads), and a plain client
    // with Lazy Pirate retries on a surviving node is served again.
    nodes[leader].broker.as_mut().unwrap().proc.kill9();
    nodes[leader].broker = None;
    let next = serving(&nodes);
    let other = if next == f1 { f2 } else { f1 };
    eventually("the new leader has the RFC 7 worker", || {
        mmi_service(&ep(&nodes, next), "echo") == "200"
    });
    for at in [other, next] {
        let r = py_client(&[
            "--endpoint",
            &ep(&nodes, at),
            "--service",
            "echo",
            "--count",
            "10",
            "--timeout-ms",
            "1500",
            "--retries",
            "5",
        ]);
        assert!(r.ok, "through node {at}: {:?} {}", r.json, r.stderr);
        assert_eq!(r.json["tally"]["hello|w1"], 10, "{:?}", r.json);
    }
}

#[test]
fn a_node_whose_disk_is_lost_is_replaced_with_join_and_the_cluster_survives_another_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path());
    let leader = serving(&nodes);
    let ep = |nodes: &[Node], i: usize| nodes[i].broker.as_ref().unwrap().endpoint.clone();
    // Five requests for a service with no worker: accepted, so on every node's disk.
    let waiting = waiting_client(&ep(&nodes, leader));
    eventually("every node holds the five requests", || {
        nodes.iter().all(|n| {
            status(&n.broker.as_ref().unwrap().endpoint)
                .is_some_and(|s| s["cluster"]["journal"] == 5)
        })
    });
    drop(waiting);

    // A follower's machine dies with its disk: a new one takes its id, empty, --join.
    let lost = (leader + 1) % 3;
    nodes[lost].broker.as_mut().unwrap().proc.kill9();
    nodes[lost].broker = None;
    std::fs::remove_dir_all(dir.path().join(format!("data{}", lost + 1))).unwrap();
    nodes[lost].broker = Some(start_node(dir.path(), lost as u64 + 1, &["--join".into()]));
    eventually("the replacement caught up and joined", || {
        status(&ep(&nodes, lost))
            .is_some_and(|s| s["cluster"]["joining"] == false && s["cluster"]["journal"] == 5)
    });
    let s = run({
        let mut c = scale0();
        c.args(["status", "--connect", &ep(&nodes, lost)]);
        c
    });
    assert!(
        String::from_utf8_lossy(&s.stdout).contains("cluster node"),
        "{}",
        tail(&s.stdout)
    );

    // Now the leader dies: the replacement and the third node are a majority, elect one
    // of themselves and serve the five.
    nodes[leader].broker.as_mut().unwrap().proc.kill9();
    nodes[leader].broker = None;
    let next = serving(&nodes);
    assert_ne!(next, leader);
    let _w = echo_worker(&ep(&nodes, next), SERVICE, &[]);
    eventually("the five were served", || {
        status(&ep(&nodes, next)).is_some_and(|s| s["totals"]["replies"] == 5)
    });
}

/// `tests/peers/titanic_client.py` (RFC 9 over plain MDP/0.1) at `endpoint`: its lines,
/// or `None` if it failed (no answer in time).
fn titanic(endpoint: &str, verb: &str, args: &[&str]) -> Option<Vec<String>> {
    let mut cmd = peer("titanic_client.py");
    cmd.args(["--endpoint", endpoint, "--timeout-ms", "1500", verb])
        .args(args);
    let out = run(cmd);
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
}

#[test]
fn titanic_requests_survive_the_leaders_kill_through_a_follower() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path());
    let leader = serving(&nodes);
    let ep = |nodes: &[Node], i: usize| nodes[i].broker.as_ref().unwrap().endpoint.clone();
    // An RFC 9 client that knows one follower: relayed to the leader, which stores the
    // request in the replicated journal.
    let follower = (leader + 1) % 3;
    let reply = titanic(&ep(&nodes, follower), "request", &["echo", "hello titanic"]).unwrap();
    assert_eq!(reply[0], "200", "{reply:?}");
    let uuid = reply[1].clone();
    assert_eq!(
        titanic(&ep(&nodes, follower), "reply", &[&uuid]).unwrap(),
        vec!["300"]
    );

    nodes[leader].broker.as_mut().unwrap().proc.kill9();
    nodes[leader].broker = None;
    let next = serving(&nodes);
    let other = (0..3).find(|i| *i != next && *i != leader).unwrap();
    // Still pending on the new leader, asked through the other survivor.
    eventually("the new leader knows the request", || {
        titanic(&ep(&nodes, other), "reply", &[&uuid]).is_some_and(|r| r == ["300"])
    });
    let _w = echo_worker(&ep(&nodes, next), "echo", &[]);
    eventually("the stored request is served", || {
        titanic(&ep(&nodes, other), "reply", &[&uuid]).is_some_and(|r| r[0] == "200")
    });
    assert_eq!(
        titanic(&ep(&nodes, other), "reply", &[&uuid]).unwrap(),
        vec!["200", "hello titanic"]
    );
    assert_eq!(
        titanic(&ep(&nodes, next), "close", &[&uuid]).unwrap(),
        vec!["200"]
    );
}

#[test]
fn a_peer_of_the_leader_cannot_pass_itself_off_as_a_relayed_one() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path());
    let leader = serving(&nodes);
    let ep = nodes[leader].broker.as_ref().unwrap().endpoint.clone();
    // A worker whose routing id is the one the leader gives node 2's relayed peer "w":
    // refused, so it registers nothing (and could take no other node's peer's replies).
    let spoof = r#"
import sys, time, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.IDENTITY, b"s0r" + (2).to_bytes(8, "big") + b"w")
s.connect(sys.argv[1])
s.send_multipart([b"", b"MDPW01", b"\x01", b"spoofed"])
print("ready", flush=True)
time.sleep(60)
"#;
    let mut c = python();
    c.args(["-c", spoof, &ep]);
    let (_spoofer, out) = spawn_lines("spoofing worker", c);
    out.wait_for("ready", 1);
    // A real worker registered after it: by then the spoofed READY was handled.
    let _w = echo_worker(&ep, "real", &[]);
    eventually("a real worker registers", || {
        mmi_service(&ep, "real") == "200"
    });
    assert_eq!(mmi_service(&ep, "spoofed"), "404");
}
