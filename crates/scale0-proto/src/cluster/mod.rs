//! A node of a replicated broker cluster, sans-IO: tikv's `raft` (itself a state machine
//! with ticks, steps and a Ready loop) replicating the broker's journal.
//!
//! The replicated log is the durable broker's journal: the leader's broker emits its
//! [`JournalOp`]s, the node proposes them in batches, and once a batch is committed by a
//! majority — every replica having synced it before acknowledging — the node reports
//! [`Event::Committed`] and the driver tells the broker its journal is durable up to
//! there, which releases the acknowledgements, dispatches and answers that depended on
//! it. Every node applies committed batches to its image of the journal (the live
//! entries by key), so a node that becomes leader builds its broker from that image, as a
//! durable broker restarts from its store, and serves at once.
//!
//! A node serves only while it leads the current term and has applied an entry of that
//! term (everything committed before is then applied too); it stops the moment it does
//! not ([`Event::Stop`]), and what its broker still held back never leaves: nothing is
//! acknowledged, dispatched or answered that a majority has not stored in that term.

pub mod codec;
pub mod log;
pub mod relay;

use crate::journal::JournalOp;
use crate::time::Instant;
use bytes::Bytes;
use codec::Limits;
use log::{Change, Log};
use raft::eraftpb::{Entry, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// How a node takes part in its cluster.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (not 0), unique in the cluster and never reused.
    pub id: u64,
    /// Every voting node's id, this one's included (static membership).
    pub voters: Vec<u64>,
    /// The length of one raft tick.
    pub tick_ms: u64,
    /// Ticks without a leader's word before a follower stands for election.
    pub election_ticks: usize,
    /// This node's own extra election ticks, so nodes do not stand at the same moment
    /// (the driver draws it at random; simulations from their seed). raft draws it from
    /// an unseeded generator otherwise, which would make runs unrepeatable.
    pub election_jitter: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Entries in one append message.
    pub max_entries_per_message: usize,
    /// Bytes of entries in one append message.
    pub max_bytes_per_message: u64,
    /// Journal ops in one replicated entry.
    pub max_ops_per_entry: usize,
    /// Proposals of this leader's not yet committed, at most (each one entry, or a few
    /// when it exceeds `max_ops_per_entry`): ops proposed while this many are in flight
    /// wait and leave together as one proposal when one commits
    /// (group commit: under load each round of appends and syncs carries more, and an
    /// idle cluster still commits a lone request at once).
    pub max_uncommitted_entries: usize,
    /// Applied entries between snapshots of the image (which bound the log).
    pub snapshot_every: u64,
    /// This node replaces one whose disk was lost: it starts from an empty log in a
    /// cluster that has run, and cannot know whom its lost self voted for, nor what it
    /// had stored. So it neither votes nor stands for election until it has heard from
    /// every other node (after two election timeouts, so nothing sent to its lost self
    /// is still on the way) and holds everything up to the commit index a leader's
    /// append carried after that; from then on it votes only in terms above every term
    /// those nodes were in, which bounds every term its lost self could have voted in.
    /// Ignored when the log is not empty.
    pub join: bool,
}

impl Config {
    /// The tick, unless configured.
    pub const DEFAULT_TICK_MS: u64 = 100;
    /// Election ticks, unless configured: a leader is missed after a second.
    pub const DEFAULT_ELECTION_TICKS: usize = 10;

    /// Defaults for node `id` of a cluster of `voters`.
    pub fn new(id: u64, voters: Vec<u64>) -> Self {
        Self {
            id,
            voters,
            tick_ms: Self::DEFAULT_TICK_MS,
            election_ticks: Self::DEFAULT_ELECTION_TICKS,
            election_jitter: 0,
            heartbeat_ticks: 2,
            max_entries_per_message: 256,
            max_bytes_per_message: 1 << 20,
            max_ops_per_entry: 65_536,
            max_uncommitted_entries: 4,
            snapshot_every: 10_000,
            join: false,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_entries: self.max_entries_per_message,
            max_ops: self.max_ops_per_entry,
        }
    }
}

/// Why a node could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// raft refused the configuration.
    #[error("cluster configuration: {0}")]
    Raft(String),
    /// The node is not among the voters, or an id is 0 or repeated.
    #[error("cluster configuration: {0}")]
    Membership(&'static str),
    /// The durable log's snapshot does not decode: the node must not guess its state.
    #[error("the raft log's snapshot is damaged")]
    Damaged,
}

/// What the driver must make durable before telling the node ([`Node::persisted`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Persist {
    /// The number to report back once durable; `None` for changes nothing waits on (the
    /// node's own compaction), which may be written lazily.
    pub number: Option<u64>,
    /// The changes, in order.
    pub changes: Vec<Change>,
}

/// What the driver learns from the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// This node leads `term` and has applied everything committed before it: build a
    /// broker from [`Node::image`] and serve.
    Serve {
        /// The term it leads.
        term: u64,
    },
    /// This node no longer serves: drop its broker; what it held back must never leave.
    Stop {
        /// The term it served.
        term: u64,
    },
    /// The ops taken from the broker up to `upto` (the count passed to
    /// [`Node::propose`]) are committed.
    Committed {
        /// The count of ops now durable.
        upto: u64,
    },
}

/// Counts of what the node refused or could not do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames from peers that did not decode.
    pub bad_frames: u64,
    /// Messages naming another sender or recipient than the connection they came on.
    pub misaddressed: u64,
    /// Messages raft refused.
    pub refused: u64,
    /// Committed entries whose ops did not decode (skipped alike on every node).
    pub bad_entries: u64,
    /// Vote requests left unanswered while joining.
    pub votes_withheld: u64,
    /// Followers found to have lost their log (a replaced node), sent it again.
    pub logs_lost: u64,
}

/// A node joining with a new log: when it may vote.
#[derive(Clone, Debug)]
struct Joining {
    not_before: Instant,
    /// The highest term heard from each other node since `not_before`.
    heard: BTreeMap<u64, u64>,
    /// The commit index of the first leader's append since `not_before`.
    target: Option<u64>,
    /// Ticks until it next asks the others (see `probe_terms`).
    probe_in: usize,
}

/// A proposal of this node's, waiting to be committed.
#[derive(Debug)]
struct Proposal {
    term: u64,
    index: u64,
    upto: u64,
}

/// One node of a cluster.
pub struct Node {
    raw: RawNode<Log>,
    config: Config,
    limits: Limits,
    next_tick: Instant,
    /// The journal's live entries, as of `applied`.
    image: BTreeMap<u64, Bytes>,
    applied: u64,
    /// Index of the last snapshot taken of the image.
    snapshot_index: u64,
    outbox: VecDeque<(u64, Bytes)>,
    persist: VecDeque<Persist>,
    /// Messages that may leave only once Ready `number` is durable.
    held: VecDeque<(u64, Vec<Message>)>,
    events: VecDeque<Event>,
    proposals: VecDeque<Proposal>,
    /// Ops given to [`Node::propose`] while `max_uncommitted_entries` were in flight,
    /// and the count they bring the broker's taken ops to.
    unproposed: Vec<JournalOp>,
    unproposed_upto: u64,
    serving: Option<u64>,
    counters: Counters,
    /// A snapshot from the leader handed out in Ready `number` and not yet durable, with
    /// its index. Until it is, raft must not tick: an election would read entries below
    /// the snapshot that are gone (raft panics), so ticks wait in `missed_ticks`.
    restoring: Option<(u64, u64)>,
    missed_ticks: u32,
    /// On the leader: ticks each follower has waited on a snapshot sent to it. raft waits
    /// for word of how the send went; frames can be lost, so after an election timeout
    /// without progress it is told the send failed, and sends again.
    snapshot_wait: BTreeMap<u64, usize>,
    /// The last Ready handed out to be made durable and not yet reported so.
    awaiting: Option<u64>,
    /// While joining ([`Config::join`]).
    joining: Option<Joining>,
    /// Once joined, the highest term it may not vote in.
    vote_floor: u64,
    /// The latest time the node was told (frames carry none).
    now_hint: Instant,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.config.id)
            .field("role", &self.role())
            .field("term", &self.term())
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

/// A node's place in its cluster, for status pages and `mmi.status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node's id.
    pub node: u64,
    /// Its role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Whether it serves clients (it leads and has applied its term's first entry).
    pub serving: bool,
    /// Whether it is joining with a new log ([`Config::join`]): not voting yet.
    pub joining: bool,
    /// The highest index known committed.
    pub commit: u64,
    /// The highest index applied.
    pub applied: u64,
    /// Live entries of the replicated journal (requests not finished, Titanic answers
    /// kept), as applied here.
    pub journal: usize,
    /// On the leader, each other node's lag in entries.
    pub lag: Vec<(u64, u64)>,
}

impl Status {
    /// The JSON object `mmi.status` carries as `cluster`.
    pub fn to_json(&self) -> String {
        use std::fmt::Write as _;
        let mut out = format!(
            "{{\"node\":{},\"role\":\"{}\",\"term\":{},\"leader\":{},\"serving\":{},\"joining\":{},\"commit\":{},\"applied\":{},\"journal\":{},\"lag\":[",
            self.node,
            self.role.as_str(),
            self.term,
            self.leader.map_or("null".to_string(), |l| l.to_string()),
            self.serving,
            self.joining,
            self.commit,
            self.applied,
            self.journal,
        );
        for (i, (node, entries)) in self.lag.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            let _ = write!(out, "{comma}{{\"node\":{node},\"entries\":{entries}}}");
        }
        out.push_str("]}");
        out
    }
}

/// A node's role, as status pages show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serving the cluster's clients and workers.
    Leader,
    /// Standing for election.
    Candidate,
    /// Following a leader (or waiting for one).
    Follower,
}

impl Role {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::Follower => "follower",
        }
    }
}

impl Node {
    /// A node resuming from its durable log (`Log::default()` for a first start: the
    /// node then bootstraps the cluster's membership, as every first node must, alike).
    pub fn new(config: Config, mut log: Log, now: Instant) -> Result<Self, ConfigError> {
        let mut ids = config.voters.clone();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != config.voters.len() || ids.contains(&0) {
            return Err(ConfigError::Membership(
                "voter ids must be distinct and not 0",
            ));
        }
        if !ids.contains(&config.id) {
            return Err(ConfigError::Membership("this node is not among the voters"));
        }
        let mut first = Vec::new();
        let fresh = log.is_empty();
        if fresh {
            // Every first node starts from the same snapshot at index 1, so a node that
            // joins later catches up by snapshot and never replays an empty membership.
            let mut snap = Snapshot {
                data: codec::encode_image(&BTreeMap::new()),
                ..Snapshot::default()
            };
            let md = snap.mut_metadata();
            md.index = 1;
            md.term = 1;
            md.mut_conf_state().voters = ids.clone();
            let change = Change::Restore(snap);
            log.apply(&change);
            first.push(change);
        }
        let snapshot = log.snapshot().clone();
        let applied = snapshot.get_metadata().index;
        let image = codec::decode_image(snapshot.data).map_err(|_| ConfigError::Damaged)?;
        let e = config.election_ticks + config.election_jitter;
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            min_election_tick: e,
            max_election_tick: e + 1,
            applied,
            max_size_per_msg: config.max_bytes_per_message,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        raft_config
            .validate()
            .map_err(|e| ConfigError::Raft(e.to_string()))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, log, &logger)
            .map_err(|e| ConfigError::Raft(e.to_string()))?;
        let mut node = Self {
            raw,
            limits: config.limits(),
            next_tick: now + Duration::from_millis(config.tick_ms.max(1)),
            config,
            image,
            applied,
            snapshot_index: applied,
            outbox: VecDeque::new(),
            persist: VecDeque::new(),
            held: VecDeque::new(),
            events: VecDeque::new(),
            proposals: VecDeque::new(),
            unproposed: Vec::new(),
            unproposed_upto: 0,
            serving: None,
            counters: Counters::default(),
            restoring: None,
            missed_ticks: 0,
            snapshot_wait: BTreeMap::new(),
            awaiting: None,
            joining: None,
            vote_floor: 0,
            now_hint: now,
        };
        node.vote_floor = node.raw.store().vote_floor();
        if node.vote_floor > node.raw.raft.term {
            // Its floor was written and its raised term not (a crash between the two
            // writes of one record cannot happen, but a log from before they were one).
            node.raw
                .raft
                .become_follower(node.vote_floor, raft::INVALID_ID);
        }
        if fresh && node.config.join {
            // Durable, so that a restart before it has joined is still joining.
            let change = Change::Joining;
            node.raw.mut_store().apply(&change);
            first.push(change);
        }
        if node.raw.store().joining() {
            let election = node.config.election_ticks + node.config.election_jitter + 1;
            let wait = node.config.tick_ms.max(1) * 2 * election as u64;
            node.joining = Some(Joining {
                not_before: now + Duration::from_millis(wait),
                heard: BTreeMap::new(),
                target: None,
                probe_in: 0,
            });
        }
        if !first.is_empty() {
            node.persist.push_back(Persist {
                number: None,
                changes: first,
            });
        }
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// Its role now.
    pub fn role(&self) -> Role {
        match self.raw.raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        }
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this node knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|id| *id != raft::INVALID_ID)
    }

    /// The highest index known committed.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The highest index applied to the image.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The term this node serves in, if it serves.
    pub fn serving(&self) -> Option<u64> {
        self.serving
    }

    /// On the leader, each other voter's lag: entries it has yet to store.
    pub fn lag(&self) -> Vec<(u64, u64)> {
        if self.raw.raft.state != StateRole::Leader {
            return Vec::new();
        }
        let last = self.raw.raft.raft_log.last_index();
        let mut out: Vec<(u64, u64)> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != self.config.id)
            .map(|(id, pr)| (*id, last.saturating_sub(pr.matched)))
            .collect();
        out.sort_unstable();
        out
    }

    /// The replicated journal's live entries, as of [`Node::applied`]: what a broker
    /// starting to serve resumes from (`Broker::durable`).
    pub fn image(&self) -> Vec<(u64, Bytes)> {
        self.image.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Where this node stands, for status pages.
    pub fn status(&self) -> Status {
        Status {
            node: self.config.id,
            role: self.role(),
            term: self.term(),
            leader: self.leader(),
            serving: self.serving.is_some(),
            joining: self.joining.is_some(),
            commit: self.commit_index(),
            applied: self.applied,
            journal: self.image.len(),
            lag: self.lag(),
        }
    }

    /// The raft log as it stands (for a driver compacting its file:
    /// [`Log::as_changes`]).
    pub fn log(&self) -> &Log {
        self.raw.store()
    }

    /// What was refused.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A frame from node `from` (the driver knows who is on each connection).
    pub fn handle_frame(&mut self, from: u64, frame: Bytes) {
        let Ok(m) = codec::decode_message(frame, &self.limits) else {
            self.counters.bad_frames += 1;
            return;
        };
        if m.from != from || m.to != self.config.id || !self.config.voters.contains(&from) {
            self.counters.misaddressed += 1;
            return;
        }
        let mut m = m;
        let kind = m.get_msg_type();
        if let Some(j) = &mut self.joining {
            if self.now_hint >= j.not_before && kind != MessageType::MsgRequestPreVote {
                // A pre-vote names a term nobody is in yet; everything else, the
                // sender's own.
                let t = j.heard.entry(from).or_insert(0);
                *t = (*t).max(m.term);
                // Only an append carries the leader's commit index as it is (a heartbeat
                // carries at most what the leader counts this node as holding).
                if j.target.is_none() && kind == MessageType::MsgAppend {
                    j.target = Some(m.commit);
                }
            }
            match kind {
                // Votes wait. Leadership handed over would make it stand for election.
                MessageType::MsgRequestVote | MessageType::MsgTimeoutNow => {
                    self.counters.votes_withheld += 1;
                    return;
                }
                MessageType::MsgRequestPreVote => {
                    // Refused, with its term: granting would let a candidate that
                    // cannot win depose the others' terms over and over (its vote is
                    // withheld), and answering lets another joining node hear its term.
                    self.counters.votes_withheld += 1;
                    let mut r = self.message(MessageType::MsgRequestPreVoteResponse, from);
                    r.reject = true;
                    self.outbox.push_back((from, codec::encode_message(&r)));
                    return;
                }
                MessageType::MsgRequestPreVoteResponse => {
                    // The answer to its own probe (see `probe_terms`), not raft's.
                    self.check_joined();
                    return;
                }
                _ => {}
            }
        } else if kind == MessageType::MsgRequestVote && m.term <= self.vote_floor {
            // Pre-votes are still answered: they grant nothing, and a joining node's
            // probe for terms is one.
            self.counters.votes_withheld += 1;
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        let beyond = kind == MessageType::MsgHeartbeat && m.commit > last;
        if beyond {
            // A leader that still counts what this node's lost self had stored sends a
            // commit index beyond its log, which raft takes for a broken invariant and
            // panics on. Nothing of it can be trusted (what this log holds need not be
            // the leader's): the heartbeat commits nothing.
            m.commit = self.raw.raft.raft_log.committed;
        }
        let refused = kind == MessageType::MsgAppendResponse
            && m.reject
            && m.term == self.raw.raft.term
            && self.raw.raft.state == StateRole::Leader;
        if refused {
            self.forget_lost_log(from, m.reject_hint.min(m.commit));
        }
        if self.raw.step(m).is_err() {
            self.counters.refused += 1;
        }
        if refused {
            // Also the answer to a joining node that asks for the commit index (see
            // `probe_terms`): an append carries it. raft sends nothing while the
            // follower's progress is paused.
            self.raw.raft.send_append(from);
        }
        if beyond && self.raw.raft.state == StateRole::Follower {
            // And it sends nothing to make up for it while nothing new is proposed: tell
            // it where this log ends (see `forget_lost_log`).
            self.send_log_end(from);
        }
        self.check_joined();
        self.process();
    }

    /// On the leader: a follower that rejects an append with a log shorter than what it
    /// had stored lost its disk (a node replaced with a fresh one). raft takes such a
    /// rejection for a stale one and would never send it what it lacks: it is probed
    /// again from `last`, the lower of where its log ends and its commit index (what
    /// it holds up to there is the leader's: committed entries are alike everywhere).
    /// Lowering what it matched only makes the leader count it for less.
    fn forget_lost_log(&mut self, from: u64, last: u64) -> bool {
        let Some(pr) = self.raw.raft.mut_prs().get_mut(from) else {
            return false;
        };
        // A snapshot on its way is what it lacks already.
        if last >= pr.matched || pr.state == raft::ProgressState::Snapshot {
            return false;
        }
        pr.matched = last;
        pr.become_probe();
        self.counters.logs_lost += 1;
        true
    }

    /// A joining node asks each node it has not heard from for its term: a pre-vote
    /// request for term 1, below every term past the first, which raft answers with a
    /// refusal carrying its term and changes nothing by (followers do not speak to one
    /// another, so it would not hear from them otherwise).
    fn probe_terms(&mut self, now: Instant) {
        let every = self.config.heartbeat_ticks.max(1);
        let leader = self.leader();
        let Some(j) = &mut self.joining else {
            return;
        };
        if now < j.not_before {
            return;
        }
        // Once a heartbeat interval: answers come within a round trip.
        if j.probe_in > 0 {
            j.probe_in -= 1;
            return;
        }
        j.probe_in = every;
        let j = &*j;
        let last = self.raw.raft.raft_log.last_index();
        let last_term = self.raw.raft.raft_log.last_term();
        let silent: Vec<u64> = self
            .config
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.config.id && !j.heard.contains_key(v))
            .collect();
        let leader = leader.filter(|_| j.target.is_none());
        if let Some(to) = leader {
            // What the leader has committed: saying where this log ends makes it send
            // an append, which carries it.
            self.send_log_end(to);
        }
        for to in silent {
            let mut m = self.message(MessageType::MsgRequestPreVote, to);
            m.term = 1;
            m.index = last;
            m.log_term = last_term;
            self.outbox.push_back((to, codec::encode_message(&m)));
        }
    }

    /// A message of this node's own making to `to`, in its current term.
    fn message(&self, kind: MessageType, to: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = self.config.id;
        m.to = to;
        m.term = self.raw.raft.term;
        m
    }

    /// Tells `to` where this log ends, as a refused append does.
    fn send_log_end(&mut self, to: u64) {
        let last = self.raw.raft.raft_log.last_index();
        let mut m = self.message(MessageType::MsgAppendResponse, to);
        m.reject = true;
        m.index = last;
        m.reject_hint = last;
        m.commit = self.raw.raft.raft_log.committed;
        self.outbox.push_back((to, codec::encode_message(&m)));
    }

    /// A joining node may vote once it has heard from every other node and has what
    /// a leader it heard had committed; then only in terms above all those it heard.
    fn check_joined(&mut self) {
        let Some(j) = &self.joining else {
            return;
        };
        let have = self.applied.min(self.raw.raft.raft_log.persisted);
        let everyone = self
            .config
            .voters
            .iter()
            .all(|v| *v == self.config.id || j.heard.contains_key(v));
        if !everyone || j.target.is_none_or(|t| have < t) {
            return;
        }
        let floor = j.heard.values().copied().max().unwrap_or(0);
        self.joining = None;
        self.vote_floor = floor;
        if floor > self.raw.raft.term {
            // Its own candidacies must come after the floor too.
            self.raw.raft.become_follower(floor, raft::INVALID_ID);
        }
        // The floor and the term raised to it, in one record, written before any vote
        // it casts (which a later Ready carries).
        let changes = vec![
            Change::Joined { vote_floor: floor },
            Change::HardState(self.raw.raft.hard_state()),
        ];
        for c in &changes {
            self.raw.mut_store().apply(c);
        }
        self.persist.push_back(Persist {
            number: None,
            changes,
        });
    }

    /// Proposes the ops the broker emitted, `upto` being the count of ops taken from it
    /// so far; [`Event::Committed`] reports when they are durable. Refused (the ops are
    /// given back) unless this node serves. They go into the log at once, or with the
    /// next entry when `max_uncommitted_entries` are already in flight.
    pub fn propose(&mut self, ops: Vec<JournalOp>, upto: u64) -> Result<(), Vec<JournalOp>> {
        if self.serving.is_none() {
            return Err(ops);
        }
        self.unproposed.extend(ops);
        self.unproposed_upto = upto;
        self.process();
        Ok(())
    }

    /// Ops proposed and not yet in the log (waiting for an entry in flight to commit).
    pub fn unproposed(&self) -> usize {
        self.unproposed.len()
    }

    /// Puts what waits into the log as one entry (more if a decoder would refuse it),
    /// if fewer than `max_uncommitted_entries` are in flight; whether it did.
    fn propose_waiting(&mut self) -> bool {
        let Some(term) = self.serving else {
            return false;
        };
        if self.unproposed.is_empty()
            || self.proposals.len() >= self.config.max_uncommitted_entries.max(1)
        {
            return false;
        }
        let ops = std::mem::take(&mut self.unproposed);
        for chunk in ops.chunks(self.config.max_ops_per_entry.max(1)) {
            let data = codec::encode_ops(chunk);
            if self.raw.propose(Vec::new(), data.to_vec()).is_err() {
                // raft drops proposals only when this node no longer leads.
                self.stop();
                return false;
            }
        }
        self.proposals.push_back(Proposal {
            term,
            index: self.raw.raft.raft_log.last_index(),
            upto: self.unproposed_upto,
        });
        true
    }

    /// The next frame to send, and to which node.
    pub fn poll_transmit(&mut self) -> Option<(u64, Bytes)> {
        self.outbox.pop_front()
    }

    /// The next changes to make durable.
    pub fn poll_persist(&mut self) -> Option<Persist> {
        self.persist.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Everything of [`Persist`] `number` (and before) is durable now.
    pub fn persisted(&mut self, number: u64) {
        if self.awaiting.is_some_and(|n| n <= number) {
            self.awaiting = None;
        }
        self.raw.on_persist_ready(number);
        if let Some((n, index)) = self.restoring
            && n <= number
        {
            self.restoring = None;
            self.raw.advance_apply_to(index);
            for _ in 0..std::mem::take(&mut self.missed_ticks) {
                self.raw.tick();
            }
        }
        while self.held.front().is_some_and(|(n, _)| *n <= number) {
            if let Some((_, msgs)) = self.held.pop_front() {
                self.send(msgs);
            }
        }
        self.process();
    }

    /// When [`Node::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_tick)
    }

    /// Time has passed: raft ticks.
    pub fn handle_timeout(&mut self, now: Instant) {
        let tick = Duration::from_millis(self.config.tick_ms.max(1));
        self.now_hint = now;
        self.check_joined();
        while self.next_tick <= now {
            if self.joining.is_some() {
                // No election of its own while it may not vote.
                self.probe_terms(now);
            } else if self.restoring.is_some() {
                self.missed_ticks = self.missed_ticks.saturating_add(1);
            } else {
                self.raw.tick();
                self.retry_snapshots();
            }
            self.next_tick = self.next_tick + tick;
        }
        self.process();
    }

    fn retry_snapshots(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            self.snapshot_wait.clear();
            return;
        }
        let waiting: Vec<u64> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
            .map(|(id, _)| *id)
            .collect();
        self.snapshot_wait.retain(|id, _| waiting.contains(id));
        for id in waiting {
            let ticks = self.snapshot_wait.entry(id).or_insert(0);
            *ticks += 1;
            if *ticks > self.config.election_ticks {
                self.snapshot_wait.remove(&id);
                self.raw.report_snapshot(id, raft::SnapshotStatus::Failure);
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            self.outbox.push_back((m.to, codec::encode_message(&m)));
        }
    }

    fn stop(&mut self) {
        if let Some(term) = self.serving.take() {
            self.events.push_back(Event::Stop { term });
        }
        self.proposals.clear();
        self.unproposed.clear();
    }

    /// Runs raft's Ready loop until it has nothing more to hand out.
    fn process(&mut self) {
        loop {
            self.process_readies();
            if !self.propose_waiting() {
                break;
            }
        }
    }

    fn process_readies(&mut self) {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            let msgs = rd.take_messages();
            self.send(msgs);
            let mut changes = Vec::new();
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                match codec::decode_image(snap.data.clone()) {
                    Ok(image) => {
                        self.image = image;
                        self.applied = snap.get_metadata().index;
                        self.snapshot_index = self.applied;
                    }
                    Err(_) => self.counters.bad_entries += 1,
                }
                self.restoring = Some((rd.number(), snap.get_metadata().index));
                let change = Change::Restore(snap);
                self.raw.mut_store().apply(&change);
                changes.push(change);
            }
            let committed = rd.take_committed_entries();
            // raft counts a snapshot applied once it is persisted; entries, once we say.
            let applied_entries = committed.last().map(|e| e.index);
            self.apply_committed(committed);
            if !rd.entries().is_empty() {
                let change = Change::Append(rd.entries().clone());
                self.raw.mut_store().apply(&change);
                changes.push(change);
            }
            if let Some(hs) = rd.hs() {
                let change = Change::HardState(hs.clone());
                self.raw.mut_store().apply(&change);
                changes.push(change);
            }
            let number = rd.number();
            let later = rd.take_persisted_messages();
            // Readies are durable in order: one with nothing to write is done at once
            // only if none before it is still being written.
            if changes.is_empty() && self.awaiting.is_none() {
                self.send(later);
                self.raw.advance_append_async(rd);
                self.raw.on_persist_ready(number);
            } else {
                if !later.is_empty() {
                    self.held.push_back((number, later));
                }
                self.persist.push_back(Persist {
                    number: Some(number),
                    changes,
                });
                self.awaiting = Some(number);
                self.raw.advance_append_async(rd);
            }
            if let Some(index) = applied_entries {
                self.raw.advance_apply_to(index);
            }
            self.check_role();
            self.maybe_compact();
        }
        self.check_role();
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) {
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            self.applied = e.index;
            if e.data.is_empty() {
                // The entry a new leader appends: once applied, everything committed
                // before it is applied too, and the leader may serve.
                if self.raw.raft.state == StateRole::Leader
                    && e.term == self.raw.raft.term
                    && self.serving.is_none()
                {
                    self.serving = Some(e.term);
                    self.events.push_back(Event::Serve { term: e.term });
                }
                continue;
            }
            match codec::decode_ops(e.data.clone(), &self.limits) {
                Ok(ops) => {
                    for op in ops {
                        match op {
                            JournalOp::Put { key, value } => {
                                self.image.insert(key, value);
                            }
                            JournalOp::Delete { key } => {
                                self.image.remove(&key);
                            }
                        }
                    }
                }
                Err(_) => self.counters.bad_entries += 1,
            }
            while self.proposals.front().is_some_and(|p| p.index <= e.index) {
                let Some(p) = self.proposals.pop_front() else {
                    break;
                };
                if p.index == e.index && p.term == e.term && self.serving == Some(p.term) {
                    self.events.push_back(Event::Committed { upto: p.upto });
                }
            }
        }
    }

    /// Stops serving the moment this node is not the leader of the term it served.
    fn check_role(&mut self) {
        if let Some(term) = self.serving
            && (self.raw.raft.state != StateRole::Leader || self.raw.raft.term != term)
        {
            self.stop();
        }
    }

    /// Snapshots the image every `snapshot_every` applied entries, bounding the log.
    fn maybe_compact(&mut self) {
        if self.applied < self.snapshot_index + self.config.snapshot_every.max(1) {
            return;
        }
        let Ok(term) = raft::Storage::term(self.raw.store(), self.applied) else {
            return;
        };
        let mut snap = Snapshot {
            data: codec::encode_image(&self.image),
            ..Snapshot::default()
        };
        let md = snap.mut_metadata();
        md.index = self.applied;
        md.term = term;
        *md.mut_conf_state() = self.raw.raft.prs().conf().to_conf_state();
        let change = Change::Compact(snap);
        self.raw.mut_store().apply(&change);
        self.snapshot_index = self.applied;
        self.persist.push_back(Persist {
            number: None,
            changes: vec![change],
        });
    }
}
