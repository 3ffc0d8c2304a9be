//! A broker that is one node of a replicated cluster: the socket loop around a core
//! broker and a core cluster node ([`scale0_proto::cluster::Node`]). It moves frames
//! between the ROUTER, the other nodes and the raft log on disk; what to do with them is
//! the core's. The leader's broker is a durable broker whose store is the raft log: its
//! journal ops are proposed, and what depends on them leaves once a majority has them.
//! The other nodes keep standby brokers: workers register with them (so a new leader has
//! its workers), client requests are refused with `not_leader`.

use crate::broker::Broker;
use crate::clock::Clock;
use crate::error::{Result, ZmqContext};
use crate::metrics::render as render_metrics;
use crate::security::{Allowlist, CurveClient, CurveServer};
use crate::shutdown::Shutdown;
use crate::sockets;
use crate::syncer::{Sink, Syncer};
use bytes::Bytes;
use scale0_proto::Instant;
use scale0_proto::broker::{self as core, Counters};
use scale0_proto::cluster::log::{Change, Log};
use scale0_proto::cluster::relay::{self, Relay};
use scale0_proto::cluster::{self, Event, Node, codec};
use scale0_store::{LogStore, Store};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// Records written to the raft log file between two rewrites of it: past this many, the
/// file is replaced by one record of the log as it stands (after a compaction), so it
/// stays within a few snapshots' size.
const REWRITE_AFTER: u64 = 4096;

/// Messages queued for another node on a relay link, at most: past it relayed messages
/// are dropped (plain peers send again), and raft's own links are never affected.
const RELAY_HWM: i32 = 1000;

/// How often the node's place in the cluster is told to the broker (for `mmi.status`)
/// and the HTTP snapshot rendered.
const STATUS_EVERY: Duration = Duration::from_millis(100);

/// How a broker takes part in a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's id (1 to 2^63), unique and never reused.
    pub id: u64,
    /// Every node, this one included: its id and the endpoint its cluster socket binds
    /// (this node) or is reached at (the others), e.g. `tcp://10.0.0.2:5600`.
    pub nodes: Vec<(u64, String)>,
    /// The raft tick, in milliseconds.
    pub tick_ms: u64,
    /// Ticks without word from a leader before a node stands for election; the election
    /// timeout is this times the tick, plus up to as much again at random per node.
    pub election_ticks: usize,
    /// This node replaces one whose disk was lost: see `scale0_proto::cluster::Config::join`.
    pub join: bool,
}

impl ClusterConfig {
    /// Defaults for node `id` of `nodes`.
    pub fn new(id: u64, nodes: Vec<(u64, String)>) -> Self {
        Self {
            id,
            nodes,
            tick_ms: cluster::Config::DEFAULT_TICK_MS,
            election_ticks: cluster::Config::DEFAULT_ELECTION_TICKS,
            join: false,
        }
    }

    /// The routing id this node's frames carry to the others.
    /// The routing id this node's frames carry to the others: on its raft link, or on
    /// its relay link.
    fn routing_id(id: u64, relay: bool) -> Vec<u8> {
        let kind = if relay { "relay" } else { "node" };
        format!("scale0-{kind}-{id}").into_bytes()
    }

    /// The node a routing id names, and whether it is its relay link.
    fn link_of(routing_id: &[u8]) -> Option<(u64, bool)> {
        let text = std::str::from_utf8(routing_id).ok()?;
        let (rest, relay) = match text.strip_prefix("scale0-node-") {
            Some(rest) => (rest, false),
            None => (text.strip_prefix("scale0-relay-")?, true),
        };
        Some((rest.parse().ok()?, relay))
    }

    /// Checks what can be checked before anything binds.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(crate::Error::InvalidConfig(why));
        if self.nodes.len() < 3 || self.nodes.len().is_multiple_of(2) {
            return bad(format!(
                "a cluster has an odd number of nodes, 3 or more, not {}",
                self.nodes.len()
            ));
        }
        if !self.nodes.iter().any(|(id, _)| *id == self.id) {
            return bad(format!("node {} is not among the cluster's nodes", self.id));
        }
        if self.tick_ms == 0 || self.election_ticks < 3 {
            return bad(
                "the cluster tick must be above 0 ms and the election at least 3 ticks".into(),
            );
        }
        let core = self.core(0);
        Node::new(core, Log::default(), Instant::ZERO)
            .map(|_| ())
            .map_err(|e| crate::Error::InvalidConfig(e.to_string()))
    }

    fn core(&self, jitter: usize) -> cluster::Config {
        let mut c = cluster::Config::new(self.id, self.nodes.iter().map(|(id, _)| *id).collect());
        c.tick_ms = self.tick_ms;
        c.election_ticks = self.election_ticks;
        c.election_jitter = jitter;
        c.join = self.join;
        c
    }
}

/// The raft log file: records of changes (`codec::encode_changes`) under increasing keys.
/// It lives on the sync thread; the loop keeps the log itself in memory ([`Node::log`]).
struct RaftFile {
    store: LogStore,
    next_key: u64,
}

/// What the loop hands the raft log file.
enum RaftWrite {
    /// One more record.
    Append(Vec<Change>),
    /// One record of the whole log as it stands, replacing every record before it.
    Rewrite(Vec<Change>),
}

impl RaftFile {
    /// The log the file holds, the file ready to be appended to, and its record count.
    fn open(store: LogStore, stored: Vec<(u64, Bytes)>, dir: &str) -> Result<(Self, Log, u64)> {
        let mut log = Log::default();
        let mut next_key = 1;
        for (key, record) in &stored {
            next_key = key + 1;
            match codec::decode_changes(record.clone()) {
                Ok(changes) => {
                    for c in &changes {
                        log.apply(c);
                    }
                }
                Err(e) => {
                    // A record cut short by a crash is the last one and was never
                    // acknowledged; anything else is damage we must not build on.
                    error!(key, error = %e, "a raft log record does not decode");
                    return Err(crate::Error::InvalidConfig(format!(
                        "the raft log in {dir} is damaged at record {key}: {e}"
                    )));
                }
            }
        }
        let records = stored.len() as u64;
        Ok((Self { store, next_key }, log, records))
    }

    fn append(&mut self, changes: &[Change]) -> std::io::Result<()> {
        let record = codec::encode_changes(changes);
        self.store.put(self.next_key, &record)?;
        self.next_key += 1;
        Ok(())
    }
}

impl Sink for RaftFile {
    type Batch = RaftWrite;

    fn write(&mut self, batch: RaftWrite) -> std::io::Result<()> {
        match batch {
            RaftWrite::Append(changes) => self.append(&changes),
            RaftWrite::Rewrite(changes) => {
                let first_kept = self.next_key;
                self.append(&changes)?;
                for key in 1..first_kept {
                    self.store.delete(key)?;
                }
                self.store.commit()
            }
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.store.commit()
    }
}

/// The loop's side of the raft log file: the sync thread, and how many records the file
/// holds (to know when to rewrite it).
struct RaftLog {
    syncer: Syncer<RaftFile>,
    records: u64,
    dir: String,
}

impl RaftLog {
    fn failed(&self, error: std::io::Error) -> crate::Error {
        error!(dir = %self.dir, %error, "the raft log failed; stopping so that nothing is acknowledged that is not on disk");
        crate::Error::Store {
            dir: self.dir.clone(),
            error,
        }
    }
}

impl Broker {
    /// [`Broker::run`] for a node of a cluster.
    pub(crate) fn run_cluster(mut self, shutdown: &Shutdown) -> Result<Counters> {
        let clock = Clock::new();
        let Some(cc) = self.config.cluster.clone() else {
            return Err(crate::Error::InvalidConfig("not a cluster node".into()));
        };
        let Some((store, stored)) = self.store.take() else {
            return Err(crate::Error::InvalidConfig(
                "a cluster node needs a data directory for its raft log".into(),
            ));
        };
        let dir = self.data_dir_name();
        let (file, log, records) = RaftFile::open(store, stored, &dir)?;
        let mut file = RaftLog {
            syncer: Syncer::start(&self.ctx, "scale0-raft-log", file)?,
            records,
            dir,
        };
        let jitter =
            usize::try_from(crate::ids::random_u64() % cc.election_ticks as u64).unwrap_or(0);
        let mut node = Node::new(cc.core(jitter), log, clock.now())
            .map_err(|e| crate::Error::InvalidConfig(e.to_string()))?;
        self.config.core.events = self.events.is_some() || self.http.is_some();
        let mut core = core::Broker::standby(self.config.core.clone(), clock.now());

        // One ROUTER for what other nodes send here; a DEALER to each of them. With
        // CURVE the nodes speak it among themselves too, in a context of their own
        // whose ZAP handler lets in only the cluster's own key: every node holds the
        // broker's key pair (clients trust one key whichever node they reach), so a
        // peer that holds it is a node, and nothing else gets a frame to raft.
        let own = cc
            .nodes
            .iter()
            .find(|(id, _)| *id == cc.id)
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
        let node_curve = self.config.curve.as_ref().map(|c| {
            let mut allow = Allowlist::default();
            allow.add(c.pair.public, "scale0-node");
            CurveServer {
                pair: c.pair.clone(),
                allow: Arc::new(allow),
            }
        });
        let cctx = match &node_curve {
            Some(_) => zmq::Context::new(),
            None => self.ctx.clone(),
        };
        let inbound = cctx
            .socket(zmq::ROUTER)
            .context(|| "creating the cluster ROUTER".into())?;
        inbound.set_linger(0).context(|| "setting LINGER".into())?;
        let zap = crate::security::secure(node_curve.as_ref(), &cctx, &[&inbound], &[&inbound])?;
        let bound = sockets::bind(&inbound, &own)?;
        let mut peers: BTreeMap<u64, zmq::Socket> = BTreeMap::new();
        // Relayed peers' messages travel on links of their own (`scale0-relay-ID`), so
        // that however much plain clients send, raft's frames never wait behind them.
        let mut relay_links: BTreeMap<u64, zmq::Socket> = BTreeMap::new();
        for (id, endpoint) in cc.nodes.iter().filter(|(id, _)| *id != cc.id) {
            for relay in [false, true] {
                let s = cctx
                    .socket(zmq::DEALER)
                    .context(|| "creating a cluster DEALER".into())?;
                if let Some(c) = &node_curve {
                    CurveClient {
                        server: c.pair.public,
                        pair: c.pair.clone(),
                    }
                    .apply(&s)?;
                }
                s.set_identity(&ClusterConfig::routing_id(cc.id, relay))
                    .context(|| "setting the routing id".into())?;
                s.set_linger(0).context(|| "setting LINGER".into())?;
                // raft sends again what is lost, and plain peers do: nothing queues for
                // a node that is down.
                s.set_immediate(true)
                    .context(|| "setting IMMEDIATE".into())?;
                s.set_sndhwm(if relay { RELAY_HWM } else { 10_000 })
                    .context(|| "setting SNDHWM".into())?;
                sockets::connect(&s, endpoint)?;
                if relay {
                    relay_links.insert(*id, s);
                } else {
                    peers.insert(*id, s);
                }
            }
        }
        info!(
            node = cc.id,
            cluster = %bound,
            endpoints = %self.endpoints.join(" "),
            "cluster node running"
        );
        let started = std::time::Instant::now();
        let mut next_status = started;
        if let Some(h) = &mut self.http {
            h.start()?;
        }
        let mut receiver = sockets::Receiver::new(0, self.zap.is_some());
        // Plain MDP peers of this node while it does not serve go to the leader.
        let mut relay = Relay::new(relay::Config::new(
            cc.tick_ms.saturating_mul(cc.election_ticks as u64),
            self.config.core.heartbeat_interval_ms,
            self.config.core.heartbeat_liveness,
        ));
        let mut placed = None;
        // Ops taken from the broker while it serves: the count `Committed` reports.
        let mut taken = 0u64;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            if std::time::Instant::now() >= next_status {
                core.set_cluster_status(node.status());
                if let Some(h) = &self.http {
                    h.publish_metrics(render_metrics(&core, started.elapsed()));
                    h.publish_status(core.status_document(clock.now()));
                }
                next_status = std::time::Instant::now() + STATUS_EVERY;
            }
            let deadline = [
                core.poll_timeout(),
                node.poll_timeout(),
                relay.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait = clock.wait_ms(deadline);
            let (client_ready, raft_ready) = {
                let mut items = [
                    self.socket.as_poll_item(zmq::POLLIN),
                    inbound.as_poll_item(zmq::POLLIN),
                    file.syncer.poll_item(),
                ];
                sockets::poll(&mut items, wait).context(|| "polling".into())?;
                (items[0].is_readable(), items[1].is_readable())
            };
            // What the sync thread has made durable: raft may count it stored.
            if let Some(number) = file.syncer.completed().map_err(|e| file.failed(e))? {
                node.persisted(number);
            }
            if raft_ready {
                while let Some(frames) = sockets::try_recv(&inbound)? {
                    let Some((from, relayed)) =
                        frames.first().and_then(|r| ClusterConfig::link_of(r))
                    else {
                        warn!("a frame on the cluster socket from no known node");
                        continue;
                    };
                    let rest = &frames[1..];
                    if !relayed {
                        match rest {
                            [frame] => node.handle_frame(from, frame.clone()),
                            _ => warn!(node = from, "a raft message of more than one frame"),
                        }
                    } else if let Some(back) = relay::back(rest) {
                        // A leader's answer to a peer this node relays.
                        relay.count_to_peer();
                        let _ = sockets::send(&self.socket, &back);
                    } else if let Some((frames, user)) = relay::unwrap(from, rest) {
                        // Relayed to a node that does not serve (the leader changed on
                        // the way): dropped, as a lost message; plain peers send again.
                        if node.serving().is_some() {
                            core.handle_message_from(clock.now(), frames, user.as_deref());
                        }
                    } else {
                        warn!(
                            node = from,
                            "a message on the cluster socket that is neither raft nor relay"
                        );
                    }
                }
            }
            let now = clock.now();
            if node.poll_timeout().is_some_and(|t| t <= now) {
                node.handle_timeout(now);
            }
            if client_ready {
                for _ in 0..256 {
                    let Some((frames, user)) = receiver.recv(&self.socket, 0)? else {
                        break;
                    };
                    if frames.first().is_some_and(|id| relay::is_relayed(id)) {
                        // Such ids are the leader's for peers relayed by other nodes: one
                        // chosen here would pass itself off as another node's peer.
                        warn!("refused a peer whose routing id is that of a relayed peer");
                        continue;
                    }
                    if let Some(frames) = relay.from_peer(clock.now(), frames, user.as_deref()) {
                        core.handle_message_from(clock.now(), frames, user.as_deref());
                    }
                }
            }
            let now = clock.now();
            if relay.poll_timeout().is_some_and(|t| t <= now) {
                relay.handle_timeout(now);
            }
            let now = clock.now();
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            // The serving broker's journal goes to raft as one batch per round.
            let mut ops = Vec::new();
            while let Some(op) = core.poll_journal() {
                ops.push(op);
            }
            if !ops.is_empty() {
                taken += ops.len() as u64;
                if node.propose(ops, taken).is_err() {
                    // Not serving any more: the Stop event below replaces the broker.
                    warn!("journal ops proposed by a node that no longer serves");
                }
            }
            self.pump(&mut node, &mut file, &peers)?;
            while let Some(event) = node.poll_event() {
                match event {
                    Event::Serve { term } => {
                        let recovery = core.resume(clock.now(), node.image(), (term << 16) ^ cc.id);
                        taken = 0;
                        info!(
                            node = cc.id,
                            term,
                            requests = recovery.requests,
                            titanic_answers = recovery.titanic_answers,
                            "leading: serving from the replicated journal"
                        );
                    }
                    Event::Stop { term } => {
                        warn!(node = cc.id, term, "no longer the leader: standing by");
                        core = core.into_standby(clock.now());
                        taken = 0;
                    }
                    Event::Committed { upto } => core.journal_committed(upto),
                }
            }
            let place = (
                node.serving().is_some(),
                node.leader().filter(|l| *l != cc.id),
            );
            if placed != Some(place) {
                relay.set_leader(place.0, place.1);
                placed = Some(place);
            }
            while let Some((frames, user)) = relay.poll_local() {
                core.handle_message_from(clock.now(), frames, user.as_deref());
            }
            while let Some((to, frames)) = relay.poll_forward() {
                if let Some(s) = relay_links.get(&to) {
                    // Lost if the leader is unreachable: plain peers send again.
                    let _ = sockets::send(s, &frames);
                }
            }
            while let Some(e) = core.poll_event() {
                if let Some(p) = &self.events {
                    let _ = sockets::send(p, &e.encode());
                }
                if let Some(h) = &self.http {
                    h.publish_event(crate::broker::event_json(&e));
                }
            }
            self.flush_relayed(&mut core, clock, &relay_links);
        }
        self.flush_relayed(&mut core, clock, &relay_links);
        let counters = core.counters().clone();
        let RaftLog { syncer, dir, .. } = file;
        if let Err(error) = syncer.finish() {
            error!(%dir, %error, "the raft log failed while stopping");
        }
        drop(peers);
        drop(relay_links);
        if let Some(zap) = zap {
            zap.stop(&[&inbound]);
        }
        drop(inbound);
        self.close();
        info!(node = cc.id, "cluster node stopped");
        Ok(counters)
    }

    /// [`Broker::flush`], with what goes to peers relayed through another node sent to
    /// that node.
    fn flush_relayed(
        &self,
        core: &mut core::Broker,
        clock: Clock,
        peers: &BTreeMap<u64, zmq::Socket>,
    ) {
        Self::flush_via(core, clock, |frames| match relay::wrap(frames) {
            Some((to, frames)) => match peers.get(&to) {
                Some(s) => sockets::send(s, &frames),
                None => Err(zmq::Error::EHOSTUNREACH),
            },
            None => sockets::send(&self.socket, frames),
        });
    }

    /// Moves what the node produced: frames to the other nodes, changes to the sync
    /// thread (raft hears they are durable once it reports them synced).
    fn pump(
        &self,
        node: &mut Node,
        file: &mut RaftLog,
        peers: &BTreeMap<u64, zmq::Socket>,
    ) -> Result<()> {
        while let Some((to, frame)) = node.poll_transmit() {
            if let Some(s) = peers.get(&to) {
                // A full or absent peer loses the frame; raft sends it again.
                let _ = s.send(&frame[..], zmq::DONTWAIT);
            }
        }
        let mut compacted = false;
        while let Some(p) = node.poll_persist() {
            compacted |= p.changes.iter().any(|c| matches!(c, Change::Compact(_)));
            file.syncer
                .submit(RaftWrite::Append(p.changes), p.number)
                .map_err(|e| file.failed(e))?;
            file.records += 1;
        }
        if compacted && file.records > REWRITE_AFTER {
            file.syncer
                .submit(RaftWrite::Rewrite(node.log().as_changes()), None)
                .map_err(|e| file.failed(e))?;
            file.records = 1;
        }
        Ok(())
    }
}
