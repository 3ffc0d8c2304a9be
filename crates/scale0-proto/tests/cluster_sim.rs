//! Three cluster nodes running the real raft state machine, on virtual time, over a
//! network that loses, delays and reorders frames and is cut into partitions, with nodes
//! killed (losing what they had not synced) and restarted from their disks. The leader
//! proposes journal ops as a broker would. Invariants, checked throughout:
//! - at most one node serves in any term;
//! - no acknowledged op is lost: a node that starts to serve has every acknowledged put
//!   (unless a delete of it was proposed) and no acknowledged delete;
//! - nodes that have applied the same index hold the same image;
//! - only a serving node's proposals are acknowledged;
//!
//! And, once the network heals and every node is back, one node serves, accepts new ops,
//! and every node converges on the same image.

mod sim;

use bytes::Bytes;
use scale0_proto::Instant;
use scale0_proto::cluster::log::Log;
use scale0_proto::cluster::{Config, Event, Node, Persist};
use scale0_proto::journal::JournalOp;
use sim::{Rng, at};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

const NODES: u64 = 3;

type InFlight = (Instant, u64, u64, u64, Bytes);

struct Sim {
    rng: Rng,
    now: Instant,
    nodes: Vec<Option<Node>>,
    disks: Vec<Log>,
    /// Changes each node handed out, not yet durable, with when they will be.
    syncing: Vec<VecDeque<(Instant, Persist)>>,
    /// Frames in flight: (arrival, sequence, from, to, frame).
    net: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    /// Directed links that drop everything.
    cut: BTreeSet<(u64, u64)>,
    loss_percent: u64,
    /// Whether the serving node is given ops to propose.
    proposing: bool,
    /// Broker mode: events are also kept here for the brokers' drivers.
    forward: bool,
    forwarded: Vec<(usize, Event)>,
    next_key: u64,
    /// Per node: the batches it proposed while serving, with their `upto`.
    proposed: Vec<VecDeque<(u64, Vec<JournalOp>)>>,
    /// Per node: ops proposed in its current serving term.
    taken: Vec<u64>,
    /// Keys some proposal (acknowledged or not) deletes.
    delete_proposed: BTreeSet<u64>,
    /// Acknowledged state: key → whether its put (true) or delete (false) was acknowledged.
    acked: BTreeMap<u64, bool>,
    acked_ops: u64,
    served: BTreeMap<u64, u64>,
    /// Image hash at each applied index, as the first node to reach it had it.
    seen: HashMap<u64, u64>,
    /// The applied index each node was last checked at.
    last_seen: Vec<u64>,
    /// Whether a killed node may come back with its disk lost (joining with a new log).
    disk_loss: bool,
    /// Nodes that came back so.
    replaced: u64,
}

fn config(id: u64, rng: &mut Rng) -> Config {
    let mut c = Config::new(id, (1..=NODES).collect());
    c.tick_ms = 10;
    c.election_jitter = rng.below(10) as usize;
    c.snapshot_every = 25;
    c.max_entries_per_message = 64;
    c
}

fn image_hash(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.image().hash(&mut h);
    h.finish()
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let nodes = (1..=NODES)
            .map(|id| Some(Node::new(config(id, &mut rng), Log::default(), at(0)).unwrap()))
            .collect();
        let mut sim = Self {
            rng,
            now: at(0),
            nodes,
            disks: vec![Log::default(); NODES as usize],
            syncing: vec![VecDeque::new(); NODES as usize],
            net: BinaryHeap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            loss_percent: 5,
            proposing: true,
            forward: false,
            forwarded: Vec::new(),
            next_key: 1,
            proposed: vec![VecDeque::new(); NODES as usize],
            taken: vec![0; NODES as usize],
            delete_proposed: BTreeSet::new(),
            acked: BTreeMap::new(),
            acked_ops: 0,
            served: BTreeMap::new(),
            seen: HashMap::new(),
            last_seen: vec![0; NODES as usize],
            disk_loss: false,
            replaced: 0,
        };
        sim.drain();
        sim
    }

    fn node(&mut self, id: u64) -> Option<&mut Node> {
        self.nodes[(id - 1) as usize].as_mut()
    }

    /// Takes every node's output: frames onto the network, changes to its disk queue,
    /// events into the checks.
    fn drain(&mut self) {
        for i in 0..NODES as usize {
            while let Some(node) = self.nodes[i].as_mut() {
                let mut progressed = false;
                while let Some((to, frame)) = node.poll_transmit() {
                    progressed = true;
                    let from = (i + 1) as u64;
                    if self.rng.chance(self.loss_percent) {
                        continue;
                    }
                    let delay = 1 + self.rng.below(15);
                    self.seq += 1;
                    self.net.push(Reverse((
                        self.now + std::time::Duration::from_millis(delay),
                        self.seq,
                        from,
                        to,
                        frame,
                    )));
                }
                while let Some(p) = node.poll_persist() {
                    progressed = true;
                    let last = self.syncing[i].back().map_or(self.now, |(t, _)| *t);
                    let done =
                        last.max(self.now + std::time::Duration::from_millis(self.rng.below(4)));
                    self.syncing[i].push_back((done, p));
                }
                let mut events = Vec::new();
                while let Some(e) = node.poll_event() {
                    progressed = true;
                    events.push(e);
                }
                let applied = node.applied();
                if self.last_seen[i] != applied {
                    self.last_seen[i] = applied;
                    let hash = image_hash(node);
                    let seen = *self.seen.entry(applied).or_insert(hash);
                    assert_eq!(
                        seen,
                        hash,
                        "two nodes differ at applied index {applied} (node {}: {:?}, {} entries; replaced {}, at {:?})",
                        i + 1,
                        node.status(),
                        node.image().len(),
                        self.replaced,
                        self.now
                    );
                }
                for e in events {
                    self.event(i, e);
                }
                if !progressed {
                    break;
                }
            }
        }
    }

    fn event(&mut self, i: usize, e: Event) {
        let id = (i + 1) as u64;
        if self.forward {
            self.forwarded.push((i, e.clone()));
        }
        match e {
            Event::Serve { term } => {
                if let Some(other) = self.served.insert(term, id) {
                    panic!("nodes {other} and {id} both served term {term}");
                }
                self.taken[i] = 0;
                self.proposed[i].clear();
                let image: BTreeMap<u64, Bytes> = self.nodes[i]
                    .as_ref()
                    .unwrap()
                    .image()
                    .into_iter()
                    .collect();
                self.check_has_acked(&image, id);
            }
            Event::Stop { .. } => {
                self.proposed[i].clear();
            }
            Event::Committed { upto } => {
                assert!(
                    self.nodes[i].as_ref().unwrap().serving().is_some(),
                    "only a serving node acknowledges"
                );
                while self.proposed[i].front().is_some_and(|(u, _)| *u <= upto) {
                    let (_, ops) = self.proposed[i].pop_front().unwrap();
                    for op in ops {
                        self.acked_ops += 1;
                        match op {
                            JournalOp::Put { key, .. } => self.acked.insert(key, true),
                            JournalOp::Delete { key } => self.acked.insert(key, false),
                        };
                    }
                }
            }
        }
    }

    fn check_has_acked(&self, image: &BTreeMap<u64, Bytes>, id: u64) {
        for (key, put) in &self.acked {
            if *put && !self.delete_proposed.contains(key) {
                assert!(
                    image.contains_key(key),
                    "node {id} lost acknowledged put {key}"
                );
            }
            if !*put {
                assert!(!image.contains_key(key), "node {id} revived deleted {key}");
            }
        }
    }

    /// The serving node proposes a few ops, as a broker would.
    fn workload(&mut self) {
        for i in 0..NODES as usize {
            let Some(node) = self.nodes[i].as_ref() else {
                continue;
            };
            if node.serving().is_none() {
                continue;
            }
            let image = node.image();
            let mut ops = Vec::new();
            for _ in 0..1 + self.rng.below(4) {
                if image.len() > 8 && self.rng.chance(60) {
                    let (key, _) = &image[self.rng.below(image.len() as u64) as usize];
                    if self.delete_proposed.insert(*key) {
                        ops.push(JournalOp::Delete { key: *key });
                    }
                } else {
                    let key = self.next_key;
                    self.next_key += 1;
                    ops.push(JournalOp::Put {
                        key,
                        value: Bytes::from(format!("v{key}")),
                    });
                }
            }
            self.taken[i] += ops.len() as u64;
            let upto = self.taken[i];
            let node = self.nodes[i].as_mut().unwrap();
            if node.propose(ops.clone(), upto).is_ok() {
                self.proposed[i].push_back((upto, ops));
            }
        }
        self.drain();
    }

    fn next_due(&self) -> Instant {
        let mut next = self.now + std::time::Duration::from_millis(5);
        if let Some(Reverse((t, ..))) = self.net.peek() {
            next = next.min(*t);
        }
        for (i, q) in self.syncing.iter().enumerate() {
            if self.nodes[i].is_some()
                && let Some((t, _)) = q.front()
            {
                next = next.min(*t);
            }
        }
        for n in self.nodes.iter().flatten() {
            if let Some(t) = n.poll_timeout() {
                next = next.min(t);
            }
        }
        next.max(self.now)
    }

    /// Runs until `until`, proposing every 5 ms.
    fn run(&mut self, until: Instant) {
        let mut next_work = self.now;
        while self.now < until {
            self.now = self.next_due().min(until);
            self.step();
            if self.proposing && self.now >= next_work {
                self.workload();
                next_work = self.now + std::time::Duration::from_millis(5);
            }
        }
    }

    /// Everything due at `self.now`: frames that arrive, syncs that finish, ticks.
    fn step(&mut self) {
        {
            while let Some(Reverse((t, ..))) = self.net.peek() {
                if *t > self.now {
                    break;
                }
                let Reverse((_, _, from, to, frame)) = self.net.pop().unwrap();
                if self.cut.contains(&(from, to)) {
                    continue;
                }
                if let Some(node) = self.node(to) {
                    node.handle_frame(from, frame);
                }
                self.drain();
            }
            for i in 0..NODES as usize {
                while self.nodes[i].is_some()
                    && self.syncing[i].front().is_some_and(|(t, _)| *t <= self.now)
                {
                    let (_, p) = self.syncing[i].pop_front().unwrap();
                    for c in &p.changes {
                        self.disks[i].apply(c);
                    }
                    if let Some(n) = p.number {
                        self.nodes[i].as_mut().unwrap().persisted(n);
                    }
                    self.drain();
                }
            }
            let now = self.now;
            for n in self.nodes.iter_mut().flatten() {
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                }
            }
            self.drain();
        }
    }

    fn kill(&mut self, i: usize) {
        // What was not synced is lost, as with kill -9 or a power cut.
        self.nodes[i] = None;
        self.syncing[i].clear();
        self.proposed[i].clear();
    }

    fn restart(&mut self, i: usize) {
        // One disk lost at a time: a second loss before the first replacement has
        // caught up is two failures of three, which no replication survives.
        let joining = self.disks.iter().any(Log::joining)
            || self.nodes.iter().flatten().any(|n| n.status().joining);
        if self.disk_loss && !joining && self.rng.chance(40) {
            return self.replace(i);
        }
        let c = config((i + 1) as u64, &mut self.rng);
        self.nodes[i] = Some(Node::new(c, self.disks[i].clone(), self.now).unwrap());
        self.drain();
    }

    /// Node `i` comes back with a new, empty disk, as a replacement started with
    /// `--join`.
    fn replace(&mut self, i: usize) {
        self.disks[i] = Log::default();
        self.last_seen[i] = 0;
        let mut c = config((i + 1) as u64, &mut self.rng);
        c.join = true;
        self.nodes[i] = Some(Node::new(c, Log::default(), self.now).unwrap());
        self.replaced += 1;
        self.drain();
    }

    fn chaos(&mut self) {
        let i = self.rng.below(NODES) as usize;
        match self.rng.below(6) {
            0 if self.nodes[i].is_some() => self.kill(i),
            0 | 1 if self.nodes[i].is_none() => self.restart(i),
            2 => {
                // Cut one node off from the others, both ways.
                let id = (i + 1) as u64;
                for other in 1..=NODES {
                    if other != id {
                        self.cut.insert((id, other));
                        self.cut.insert((other, id));
                    }
                }
            }
            3 => {
                // One direction of one link.
                let a = self.rng.below(NODES) + 1;
                let b = self.rng.below(NODES) + 1;
                if a != b {
                    self.cut.insert((a, b));
                }
            }
            _ => self.cut.clear(),
        }
    }

    fn serving(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .flatten()
            .filter(|n| n.serving().is_some())
            .map(|n| n.id())
            .collect()
    }
}

fn run_seed(seed: u64) -> (u64, usize) {
    run_seed_with(seed, false).0
}

fn run_seed_with(seed: u64, disk_loss: bool) -> ((u64, usize), u64) {
    let mut sim = Sim::new(seed);
    sim.disk_loss = disk_loss;
    // A calm start, then chaos every 200 ms for 20 s.
    sim.run(at(1000));
    for step in 0..100 {
        sim.chaos();
        sim.run(at(1000 + 200 * (step + 1)));
    }
    // Heal everything; one node must serve and all must converge.
    sim.cut.clear();
    sim.loss_percent = 0;
    for i in 0..NODES as usize {
        if sim.nodes[i].is_none() {
            sim.restart(i);
        }
    }
    let healed = sim.now;
    sim.run(healed + std::time::Duration::from_millis(3000));
    let serving = sim.serving();
    assert_eq!(
        serving.len(),
        1,
        "seed {seed}: one node serves once healed: {serving:?} {:?}",
        sim.nodes
            .iter()
            .flatten()
            .map(|n| n.status())
            .collect::<Vec<_>>()
    );
    let leader = serving[0];
    let before = sim.acked_ops;
    let end = sim.now + std::time::Duration::from_millis(2000);
    sim.run(end);
    assert!(
        sim.acked_ops > before,
        "seed {seed}: the healed cluster takes new ops"
    );
    // Stop proposing and let every node catch up.
    sim.proposing = false;
    let quiet_until = sim.now + std::time::Duration::from_millis(2000);
    sim.run(quiet_until);
    let images: Vec<Vec<(u64, Bytes)>> = sim.nodes.iter().flatten().map(|n| n.image()).collect();
    assert!(
        images.windows(2).all(|w| w[0] == w[1]),
        "seed {seed}: every node converges on one image: {:?}",
        sim.nodes
            .iter()
            .flatten()
            .map(|n| (
                n.id(),
                n.role(),
                n.term(),
                n.commit_index(),
                n.applied(),
                n.image().len()
            ))
            .collect::<Vec<_>>()
    );
    let image: BTreeMap<u64, Bytes> = images[0].iter().cloned().collect();
    sim.check_has_acked(&image, leader);
    assert!(
        sim.nodes.iter().flatten().all(|n| !n.status().joining),
        "seed {seed}: every replaced node has joined"
    );
    ((sim.acked_ops, sim.served.len()), sim.replaced)
}

#[test]
fn nodes_whose_disks_are_lost_join_again_and_nothing_acknowledged_is_lost() {
    let seeds: u64 = std::env::var("SCALE0_CLUSTER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut replaced = 0;
    let mut acked = 0;
    for seed in 0..seeds {
        let ((a, _), r) = run_seed_with(1000 + seed, true);
        acked += a;
        replaced += r;
    }
    assert!(replaced > seeds, "disks were lost: {replaced}");
    assert!(acked > seeds * 100, "ops were acknowledged: {acked}");
}

#[test]
fn acknowledged_ops_survive_kills_partitions_and_loss_over_many_seeds() {
    let seeds: u64 = std::env::var("SCALE0_CLUSTER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut acked = 0;
    let mut terms = 0;
    for seed in 0..seeds {
        let (a, t) = run_seed(seed);
        acked += a;
        terms += t;
    }
    // The chaos must not have made the run vacuous.
    assert!(acked > seeds * 100, "ops were acknowledged: {acked}");
    assert!(
        terms as u64 > seeds * 2,
        "leaders changed: {terms} terms served"
    );
}

#[test]
fn a_follower_replaced_with_an_empty_disk_catches_up_and_votes_again() {
    let mut sim = Sim::new(11);
    sim.loss_percent = 0;
    sim.run(at(2000));
    let leader = sim.serving()[0];
    let i = (leader % NODES) as usize; // a follower
    // A quiet moment, so the leader's count of what the follower stored is exact.
    sim.proposing = false;
    sim.run(at(2300));
    sim.kill(i);
    sim.run(at(2500));
    sim.replace(i);
    assert!(sim.nodes[i].as_ref().unwrap().status().joining);
    // The leader counts it as having what its lost self had: it must see the log is
    // gone and send it everything again (raft alone takes the refusals for stale ones
    // while nothing new is proposed).
    sim.run(at(5000));
    let node = sim.nodes[i].as_ref().unwrap();
    let status = node.status();
    assert!(!status.joining, "joined: {status:?}");
    assert_eq!(sim.serving(), vec![leader], "no election was needed");
    let leader_node = sim.nodes[(leader - 1) as usize].as_ref().unwrap();
    assert!(leader_node.counters().logs_lost >= 1);
    assert!(
        node.applied() + 50 >= leader_node.applied(),
        "caught up: {status:?}"
    );
    // And it counts for a majority again: with the third node gone, the two go on.
    let third = (0..NODES as usize).find(|j| *j != i && *j != (leader - 1) as usize);
    sim.kill(third.unwrap());
    sim.proposing = true;
    let before = sim.acked_ops;
    sim.run(at(7000));
    assert!(
        sim.acked_ops > before,
        "the leader and the replaced node commit"
    );
}

#[test]
fn a_leader_cut_off_stops_serving_and_the_majority_elects_another() {
    let mut sim = Sim::new(7);
    sim.loss_percent = 0;
    sim.run(at(1500));
    let first = sim.serving();
    assert_eq!(first.len(), 1);
    let old = first[0];
    for other in 1..=NODES {
        if other != old {
            sim.cut.insert((old, other));
            sim.cut.insert((other, old));
        }
    }
    let acked_before = sim.acked_ops;
    // check_quorum: the isolated leader steps down within two election timeouts; the
    // others elect a leader of a later term (ticks of 10 ms, 10 + jitter each).
    sim.run(at(1500 + 600));
    let now_serving = sim.serving();
    assert_eq!(now_serving.len(), 1, "{now_serving:?}");
    assert_ne!(now_serving[0], old, "the minority does not serve");
    let old_node = sim.nodes[(old - 1) as usize].as_ref().unwrap();
    assert!(old_node.serving().is_none());
    assert!(
        sim.acked_ops > acked_before,
        "the majority goes on acknowledging"
    );
}

/// The cluster with a broker on every node, driven as `scale0 broker --cluster` drives
/// them, a native client that moves to another node on `not_leader` or silence, a plain
/// MDP/0.1 client that knows one node and is relayed to the leader whenever that node
/// does not lead, and a worker registered with every node.
mod with_brokers {
    use super::*;
    use scale0_proto::broker::{Broker, Config as BrokerConfig};
    use scale0_proto::client::ERROR_REPLY_MARKER;
    use scale0_proto::cluster::relay::{self, Relay};
    use scale0_proto::mdp::{ClientMessage, Message, NativeCommand, Status, WorkerCommand};
    use scale0_proto::{Frames, PeerId, testkit};
    use sim::{native_request, peer, svc, text};
    use std::time::Duration;

    const CLIENT: &str = "C";
    /// A request not answered this long after it was last sent goes to the next node.
    const RETRY_MS: u64 = 400;
    /// A plain MDP/0.1 client that knows one node (the second), one request at a time,
    /// sent again when unanswered this long (Lazy Pirate).
    const PLAIN: &str = "P";
    const PLAIN_NODE: usize = 1;
    const PLAIN_RETRY_MS: u64 = 600;
    const PLAIN_REQUESTS: u64 = 60;

    fn broker_config() -> BrokerConfig {
        BrokerConfig {
            heartbeat_interval_ms: 100,
            heartbeat_liveness: 3,
            unknown_service_wait_ms: 60_000,
            max_attempts: 1000,
            request_timeout_ms: 5_000,
            dedupe_window_ms: 60_000,
            ..BrokerConfig::default()
        }
    }

    fn worker_name(i: usize) -> String {
        format!("W{i}")
    }

    /// A message on its way between a node and the client or a worker.
    struct Wire {
        at: Instant,
        seq: u64,
        node: usize,
        to_node: bool,
        frames: Frames,
    }

    struct Pending {
        body: String,
        node: usize,
        sent_at: Instant,
    }

    struct Cluster {
        sim: Sim,
        brokers: Vec<Option<Broker>>,
        taken: Vec<u64>,
        wire: Vec<Wire>,
        seq: u64,
        next_id: u64,
        to_send: u64,
        pending: BTreeMap<u64, Pending>,
        acked: BTreeSet<u64>,
        answers: BTreeMap<u64, u32>,
        /// Per node: the worker's jobs, (due, tag, body).
        jobs: Vec<Vec<(Instant, PeerId, Bytes)>>,
        next_heartbeat: Instant,
        dispatches: u64,
        /// Per node and direction, when the last message on that connection arrives.
        links: Vec<Instant>,
        /// Each node's relay of plain peers, and where it last told it the node stood.
        relays: Vec<Relay>,
        placed: Vec<Option<(bool, Option<u64>)>>,
        /// Relayed messages between nodes: (arrival, seq, from, to, frames), in order per
        /// pair of nodes.
        node_wire: Vec<(Instant, u64, usize, usize, Frames)>,
        node_links: BTreeMap<(usize, usize), Instant>,
        /// The plain client: its current request (number, when last sent) and how many
        /// were answered.
        plain: Option<(u64, Instant)>,
        plain_next: u64,
        plain_answered: u64,
        plain_refused: u64,
        /// Plain messages relayed to a leader.
        relayed: u64,
    }

    fn relay_config() -> relay::Config {
        relay::Config::new(200, 100, 3)
    }

    impl Cluster {
        fn new(seed: u64, requests: u64) -> Self {
            let mut sim = Sim::new(seed);
            sim.proposing = false;
            sim.forward = true;
            let mut c = Self {
                sim,
                brokers: (0..NODES).map(|_| None).collect(),
                taken: vec![0; NODES as usize],
                wire: Vec::new(),
                seq: 0,
                next_id: 0,
                to_send: requests,
                pending: BTreeMap::new(),
                acked: BTreeSet::new(),
                answers: BTreeMap::new(),
                jobs: vec![Vec::new(); NODES as usize],
                next_heartbeat: at(0),
                dispatches: 0,
                links: vec![at(0); 2 * NODES as usize],
                relays: (0..NODES).map(|_| Relay::new(relay_config())).collect(),
                placed: vec![None; NODES as usize],
                node_wire: Vec::new(),
                node_links: BTreeMap::new(),
                plain: None,
                plain_next: 0,
                plain_answered: 0,
                plain_refused: 0,
                relayed: 0,
            };
            c.sync_presence();
            c
        }

        fn post(&mut self, node: usize, to_node: bool, frames: Frames) {
            let delay = 1 + self.sim.rng.below(5);
            self.seq += 1;
            // Connections keep their order (TCP), whatever the delay.
            let link = &mut self.links[node * 2 + usize::from(to_node)];
            *link = (*link).max(self.sim.now + Duration::from_millis(delay));
            let at = *link;
            self.wire.push(Wire {
                at,
                seq: self.seq,
                node,
                to_node,
                frames,
            });
        }

        fn send_to_node(&mut self, node: usize, from: &str, m: &Message) {
            self.post(node, true, m.encode_to(&peer(from)));
        }

        /// Brokers follow their nodes: none while a node is down, a standby one (with the
        /// worker registering) when it comes back.
        fn sync_presence(&mut self) {
            for i in 0..NODES as usize {
                match (self.sim.nodes[i].is_some(), self.brokers[i].is_some()) {
                    (false, true) => {
                        self.brokers[i] = None;
                        self.jobs[i].clear();
                        self.sim.forwarded.retain(|(n, _)| *n != i);
                    }
                    (true, false) => {
                        self.brokers[i] = Some(Broker::standby(broker_config(), self.sim.now));
                        self.relays[i] = Relay::new(relay_config());
                        self.placed[i] = None;
                        self.taken[i] = 0;
                        self.ready(i);
                    }
                    _ => {}
                }
            }
        }

        fn ready(&mut self, i: usize) {
            let m = Message::Worker2(WorkerCommand::Ready {
                service: svc("echo"),
                capacity: 2,
                bundle: false,
            });
            self.send_to_node(i, &worker_name(i), &m);
        }

        /// What `scale0 broker --cluster` does each round, until nothing moves.
        fn drive(&mut self) {
            loop {
                let mut moved = false;
                let now = self.sim.now;
                for (i, e) in std::mem::take(&mut self.sim.forwarded) {
                    moved = true;
                    let (Some(node), Some(broker)) =
                        (self.sim.nodes[i].as_ref(), self.brokers[i].as_mut())
                    else {
                        continue;
                    };
                    match e {
                        Event::Serve { term } => {
                            broker.resume(now, node.image(), (term << 16) ^ (i as u64 + 1));
                            self.taken[i] = 0;
                        }
                        Event::Stop { .. } => {
                            let old = self.brokers[i].take().unwrap();
                            self.brokers[i] = Some(old.into_standby(now));
                            self.taken[i] = 0;
                        }
                        Event::Committed { upto } => broker.journal_committed(upto),
                    }
                }
                for i in 0..NODES as usize {
                    let (Some(node), Some(broker)) =
                        (self.sim.nodes[i].as_mut(), self.brokers[i].as_mut())
                    else {
                        continue;
                    };
                    if broker.poll_timeout().is_some_and(|t| t <= now) {
                        broker.handle_timeout(now);
                    }
                    let mut ops = Vec::new();
                    while let Some(op) = broker.poll_journal() {
                        ops.push(op);
                    }
                    if !ops.is_empty() {
                        moved = true;
                        self.taken[i] += ops.len() as u64;
                        // Refused only by a node that stopped serving: its Stop replaces
                        // the broker, and what the ops held back never leaves.
                        let _ = node.propose(ops, self.taken[i]);
                    }
                    let serving = node.serving().is_some();
                    let place = (serving, node.leader().filter(|l| *l != i as u64 + 1));
                    let relay = &mut self.relays[i];
                    if self.placed[i] != Some(place) {
                        relay.set_leader(place.0, place.1);
                        self.placed[i] = Some(place);
                    }
                    if relay.poll_timeout().is_some_and(|t| t <= now) {
                        relay.handle_timeout(now);
                    }
                    while let Some((frames, _)) = relay.poll_local() {
                        moved = true;
                        broker.handle_message(now, frames);
                    }
                    let mut forward = Vec::new();
                    while let Some((to, frames)) = relay.poll_forward() {
                        forward.push(((to - 1) as usize, frames));
                    }
                    let mut out = Vec::new();
                    while let Some(t) = broker.poll_transmit() {
                        out.push(t.frames);
                    }
                    for (to, frames) in forward {
                        moved = true;
                        self.relayed += 1;
                        self.post_node(i, to, frames);
                    }
                    for frames in out {
                        moved = true;
                        self.check_output(i, serving, &frames);
                        match relay::wrap(&frames) {
                            Some((to, env)) => self.post_node(i, (to - 1) as usize, env),
                            None => self.post(i, false, frames),
                        }
                    }
                }
                self.sim.drain();
                moved |= !self.sim.forwarded.is_empty();
                if !moved {
                    break;
                }
            }
        }

        /// Only a serving node acknowledges, dispatches or answers.
        fn check_output(&mut self, i: usize, serving: bool, frames: &Frames) {
            let Ok((_, m)) = scale0_proto::mdp::split_routing_id(frames.clone())
                .map(|(to, rest)| (to, Message::decode(rest)))
            else {
                return;
            };
            let refusal = matches!(&m, Ok(Message::Client(c))
                if c.body.first().is_some_and(|f| f.as_ref() == ERROR_REPLY_MARKER));
            let consequential = matches!(
                m,
                Ok(Message::Native(
                    NativeCommand::Accepted { .. } | NativeCommand::Final { .. }
                )) | Ok(Message::Worker2(WorkerCommand::Request { .. }))
                    | Ok(Message::Client(_))
            ) && !refusal;
            if consequential {
                assert!(
                    serving,
                    "node {} acknowledged, dispatched or answered without serving",
                    i + 1
                );
            }
            if matches!(m, Ok(Message::Worker2(WorkerCommand::Request { .. }))) {
                self.dispatches += 1;
            }
        }

        /// Messages that arrive now, at nodes, the client or the workers.
        fn deliver(&mut self) {
            let now = self.sim.now;
            self.wire.sort_by_key(|w| (w.at, w.seq));
            let due: Vec<Wire> = {
                let n = self.wire.iter().take_while(|w| w.at <= now).count();
                self.wire.drain(..n).collect()
            };
            for w in due {
                if w.to_node {
                    if let Some(b) = self.brokers[w.node].as_mut()
                        && let Some(frames) = self.relays[w.node].from_peer(now, w.frames, None)
                    {
                        b.handle_message(now, frames);
                    }
                    continue;
                }
                let Ok((to, rest)) = scale0_proto::mdp::split_routing_id(w.frames) else {
                    continue;
                };
                let Ok(m) = Message::decode(rest) else {
                    continue;
                };
                if text(to.as_bytes()) == CLIENT {
                    self.client_gets(w.node, m);
                } else if text(to.as_bytes()) == PLAIN {
                    self.plain_gets(m);
                } else if text(to.as_bytes()) == worker_name(w.node) {
                    self.worker_gets(w.node, m);
                }
            }
        }

        fn client_gets(&mut self, node: usize, m: Message) {
            let Message::Native(cmd) = m else {
                return;
            };
            let Ok(id) = text(cmd.id().as_bytes()).parse::<u64>() else {
                return;
            };
            match cmd {
                NativeCommand::Accepted { .. } => {
                    self.acked.insert(id);
                }
                NativeCommand::Final { body, .. } => {
                    if let Some(p) = self.pending.remove(&id) {
                        assert_eq!(text(&body[0]), p.body, "request {id} got another's answer");
                    }
                    *self.answers.entry(id).or_insert(0) += 1;
                }
                NativeCommand::Error {
                    status: Status::NotLeader,
                    ..
                } => {
                    // Refused where it was last sent: on to the next node.
                    if let Some(p) = self.pending.get_mut(&id)
                        && p.node == node
                    {
                        p.node = (node + 1) % NODES as usize;
                        p.sent_at = self.sim.now;
                        let (body, to) = (p.body.clone(), p.node);
                        self.send_request(id, to, &body);
                    }
                }
                NativeCommand::Error { status, .. } => {
                    panic!("request {id} failed: {status}")
                }
                NativeCommand::Partial { .. } | NativeCommand::Request { .. } => {}
            }
        }

        /// A relayed message from node `from` to node `to`, on their link: lost while it
        /// is cut or `to` is down, in order otherwise.
        fn post_node(&mut self, from: usize, to: usize, frames: Frames) {
            let delay = 1 + self.sim.rng.below(5);
            self.seq += 1;
            let link = self.node_links.entry((from, to)).or_insert(at(0));
            *link = (*link).max(self.sim.now + Duration::from_millis(delay));
            self.node_wire.push((*link, self.seq, from, to, frames));
        }

        fn deliver_nodes(&mut self) {
            let now = self.sim.now;
            self.node_wire.sort_by_key(|w| (w.0, w.1));
            let n = self.node_wire.iter().take_while(|w| w.0 <= now).count();
            let due: Vec<_> = self.node_wire.drain(..n).collect();
            for (_, _, from, to, frames) in due {
                let cut = self.sim.cut.contains(&(from as u64 + 1, to as u64 + 1));
                let Some(node) = self.sim.nodes[to].as_ref() else {
                    continue;
                };
                if cut || self.brokers[to].is_none() {
                    continue;
                }
                if let Some(back) = relay::back(&frames) {
                    self.post(to, false, back);
                } else if let Some((frames, _)) = relay::unwrap(from as u64 + 1, &frames)
                    && node.serving().is_some()
                    && let Some(b) = self.brokers[to].as_mut()
                {
                    b.handle_message(now, frames);
                }
            }
        }

        fn plain_body(n: u64) -> String {
            format!("plain {n}")
        }

        fn send_plain(&mut self, n: u64) {
            let m = Message::Client(ClientMessage {
                service: svc("echo"),
                body: vec![Bytes::from(Self::plain_body(n))],
            });
            self.send_to_node(PLAIN_NODE, PLAIN, &m);
            self.plain = Some((n, self.sim.now));
        }

        fn plain_gets(&mut self, m: Message) {
            let Message::Client(reply) = m else {
                return;
            };
            let Some((n, _)) = self.plain else {
                return;
            };
            let body = reply.body.first().cloned().unwrap_or_default();
            if body.as_ref() == ERROR_REPLY_MARKER {
                // Refused (no leader for too long): the client sends it again soon.
                self.plain_refused += 1;
                let soon = self.sim.now.saturating_since(at(0)).as_millis() as u64;
                self.plain = Some((n, at(soon.saturating_sub(PLAIN_RETRY_MS - 50))));
                return;
            }
            let got = text(&body);
            let number: u64 = got
                .strip_prefix("plain ")
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("the plain client got {got:?}"));
            assert!(number <= n, "an answer to a request never sent: {got}");
            if number == n {
                self.plain_answered += 1;
                self.plain = None;
            }
        }

        fn send_request(&mut self, id: u64, node: usize, body: &str) {
            let m = native_request(&id.to_string(), "echo", None, body);
            self.send_to_node(node, CLIENT, &m);
        }

        fn worker_gets(&mut self, node: usize, m: Message) {
            let Message::Worker2(cmd) = m else {
                return;
            };
            match cmd {
                WorkerCommand::Request { client, body } => {
                    let due = self.sim.now + Duration::from_millis(1 + self.sim.rng.below(20));
                    let b = body.first().cloned().unwrap_or_default();
                    self.jobs[node].push((due, client, b));
                }
                WorkerCommand::Disconnect => {
                    self.jobs[node].clear();
                    self.ready(node);
                }
                _ => {}
            }
        }

        /// The client's and workers' own timers: new requests, retries, replies,
        /// heartbeats.
        fn peers(&mut self) {
            let now = self.sim.now;
            if self.to_send > 0 && self.pending.len() < 8 {
                self.to_send -= 1;
                let id = self.next_id;
                self.next_id += 1;
                let body = format!("job {id}");
                let node = self.sim.rng.below(NODES) as usize;
                self.pending.insert(
                    id,
                    Pending {
                        body: body.clone(),
                        node,
                        sent_at: now,
                    },
                );
                self.send_request(id, node, &body);
            }
            let stale: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, p)| now.saturating_since(p.sent_at) >= Duration::from_millis(RETRY_MS))
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                // Judged dead (or cut off): the same id to the next node.
                let p = self.pending.get_mut(&id).unwrap();
                p.node = (p.node + 1) % NODES as usize;
                p.sent_at = now;
                let (body, to) = (p.body.clone(), p.node);
                self.send_request(id, to, &body);
            }
            for i in 0..NODES as usize {
                let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.jobs[i])
                    .into_iter()
                    .partition(|(t, ..)| *t <= now);
                self.jobs[i] = rest;
                for (_, tag, body) in done {
                    let m = Message::Worker2(WorkerCommand::Reply {
                        client: tag,
                        body: vec![body],
                    });
                    self.send_to_node(i, &worker_name(i), &m);
                }
            }
            match self.plain {
                None if self.plain_next < PLAIN_REQUESTS => {
                    let n = self.plain_next;
                    self.plain_next += 1;
                    self.send_plain(n);
                }
                Some((n, sent))
                    if now.saturating_since(sent) >= Duration::from_millis(PLAIN_RETRY_MS) =>
                {
                    self.send_plain(n);
                }
                _ => {}
            }
            if now >= self.next_heartbeat {
                self.next_heartbeat = now + Duration::from_millis(100);
                for i in 0..NODES as usize {
                    self.send_to_node(
                        i,
                        &worker_name(i),
                        &Message::Worker2(WorkerCommand::Heartbeat),
                    );
                }
            }
        }

        fn run(&mut self, until: Instant) {
            while self.sim.now < until {
                let mut next = self.sim.next_due().min(until);
                if let Some(w) = self.wire.iter().map(|w| w.at).min() {
                    next = next.min(w);
                }
                if let Some(w) = self.node_wire.iter().map(|w| w.0).min() {
                    next = next.min(w);
                }
                for (i, r) in self.relays.iter().enumerate() {
                    if self.brokers[i].is_some()
                        && let Some(t) = r.poll_timeout()
                    {
                        next = next.min(t);
                    }
                }
                for b in self.brokers.iter().flatten() {
                    if let Some(t) = b.poll_timeout() {
                        next = next.min(t);
                    }
                }
                self.sim.now = next.max(self.sim.now);
                self.sim.step();
                self.drive();
                self.deliver();
                self.deliver_nodes();
                self.peers();
                self.drive();
            }
        }

        fn chaos(&mut self) {
            self.sim.chaos();
            self.sync_presence();
        }
    }

    /// Requests answered, dispatches, and plain messages relayed.
    fn run_seed(seed: u64) -> (usize, u64, u64) {
        let requests = 300;
        let mut c = Cluster::new(seed, requests);
        c.run(at(1000));
        for step in 0..40 {
            c.chaos();
            c.run(at(1000 + 250 * (step + 1)));
        }
        c.sim.cut.clear();
        c.sim.loss_percent = 0;
        for i in 0..NODES as usize {
            if c.sim.nodes[i].is_none() {
                c.sim.restart(i);
            }
        }
        c.sync_presence();
        let mut until = c.sim.now;
        for _ in 0..600 {
            until = until + Duration::from_millis(100);
            c.run(until);
            if c.to_send == 0 && c.pending.is_empty() && c.plain_answered == PLAIN_REQUESTS {
                break;
            }
        }
        assert_eq!(
            c.plain_answered, PLAIN_REQUESTS,
            "seed {seed}: the plain client of a follower was served through the relay"
        );
        assert!(
            c.to_send == 0 && c.pending.is_empty(),
            "seed {seed}: {} requests unanswered once healed: {:?}",
            c.pending.len(),
            c.pending.keys().take(5).collect::<Vec<_>>()
        );
        for id in &c.acked {
            assert!(
                c.answers.contains_key(id),
                "seed {seed}: acknowledged request {id} lost"
            );
        }
        for b in c.brokers.iter().flatten() {
            testkit::check_invariants(b);
        }
        // Quiet for a while: the healed cluster settles on one serving node.
        let quiet = c.sim.now + Duration::from_millis(2000);
        c.run(quiet);
        let serving = c.sim.serving().len();
        assert_eq!(serving, 1, "seed {seed}: one node serves once healed");
        (c.answers.len(), c.dispatches, c.relayed)
    }

    #[test]
    fn every_request_is_answered_through_kills_partitions_and_loss_over_many_seeds() {
        let seeds: u64 = std::env::var("SCALE0_CLUSTER_SEEDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10);
        let mut relayed = 0;
        for seed in 0..seeds {
            let (answered, dispatches, r) = run_seed(1000 + seed);
            relayed += r;
            assert_eq!(answered, 300);
            assert!(dispatches >= 300, "seed {seed}: {dispatches} dispatches");
        }
        // The plain client's node was a follower long enough to relay through it.
        assert!(relayed > seeds * 10, "relayed {relayed}");
    }
}
