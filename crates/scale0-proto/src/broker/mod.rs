//! The Majordomo broker as a sans-IO state machine: MDP/0.1 (RFC 7) and MDP/0.2 (RFC 18)
//! clients and workers, MMI (RFC 8), and the scale0 native client protocol, all on one
//! ROUTER socket.
//!
//! The driver feeds every message received on the ROUTER to [`Broker::handle_message`],
//! calls [`Broker::handle_timeout`] when [`Broker::poll_timeout`] has passed, reports
//! sends that libzmq could not route with [`Broker::handle_unroutable`], and sends what
//! [`Broker::poll_transmit`] hands out. Nothing here blocks or reads a clock.

mod clients;
mod counters;
mod durable;
mod events;
mod mmi;
mod timers;
mod titanic;
mod workers;

pub use counters::{Counters, DropReason, FailReason, LATENCY_BOUNDS_MS};
pub use durable::Recovery;
pub use events::{EVENT_TOPIC_PREFIX, Event, EventError, Gone};
pub use workers::ServiceStatus;

use durable::Journal;
use timers::Timer;
use workers::{Service, Worker};

use crate::bundle;
use crate::dedupe::Dedupe;
use crate::departed::Departed;
use crate::mdp::{
    self, Body, ClientKind, ClientMessage, DecodeError, Frames, Message, NativeCommand, PeerId,
    RequestId, ServiceName, Status, Version, WorkerCommand,
};
use crate::time::Instant;
use crate::timers::Timers;
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;
use tracing::{info, warn};

/// Behaviour settings of the broker; the driver's config adds the endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How often the broker sends HEARTBEAT to each worker, and the unit of liveness.
    pub heartbeat_interval_ms: u64,
    /// How many heartbeat intervals a worker may stay silent before it is expired.
    pub heartbeat_liveness: u32,
    /// Largest message accepted, summed over all its frames. Larger native requests get
    /// `too_large`; other larger messages are dropped.
    pub max_message_bytes: usize,
    /// Times a request may be handed to a worker. When the worker holding it on the last
    /// attempt dies or overruns its deadline, the request fails.
    pub max_attempts: u32,
    /// Longest a worker may hold one request before it is presumed stuck: it is told to
    /// DISCONNECT and the request goes to another worker. Bounds busy workers that cannot
    /// heartbeat while they work, independently of liveness.
    pub request_timeout_ms: u64,
    /// Per-service overrides of `request_timeout_ms`.
    pub service_request_timeout_ms: BTreeMap<ServiceName, u64>,
    /// Requests that may wait in one service's queue; further ones are refused.
    pub max_queue_depth: usize,
    /// Longest a request waits while its service has no worker at all; then it fails
    /// (RFC 7: requests for absent services SHOULD expire).
    pub unknown_service_wait_ms: u64,
    /// Services tracked at once; a request or READY for one more is refused.
    pub max_services: usize,
    /// How long the answer of a native request is kept for retries of the same id.
    pub dedupe_window_ms: u64,
    /// Answers kept for retries at most; the oldest go first.
    pub max_dedupe_entries: usize,
    /// Bytes of answers kept for retries at most; the oldest go first.
    pub max_dedupe_bytes: usize,
    /// Titanic requests (RFC 9) stored at once, pending or answered and not yet closed;
    /// `titanic.request` answers `500` beyond it. Used only by a durable broker.
    pub max_titanic_requests: usize,
    /// Keep [`Event`]s for [`Broker::poll_event`] (the driver publishes them). Off, none
    /// are kept; on, at most `MAX_EVENTS` wait, the oldest dropped first.
    pub events: bool,
    /// Services each authenticated key may use, as a client or as a worker, by the user
    /// id the driver passes with a message (the key's name or Z85 text under CURVE).
    /// A key with no entry, and a message with no user id, may use every service;
    /// `mmi.*` is open to all.
    pub access: BTreeMap<String, BTreeSet<ServiceName>>,
    /// Peers remembered as reading bundles (a client that sent one, a worker whose READY
    /// says `bundle=1`) at most; past it, new ones are sent messages one by one. A peer
    /// is forgotten when its connection ends.
    pub max_bundle_peers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: crate::DEFAULT_HEARTBEAT_INTERVAL_MS,
            heartbeat_liveness: crate::DEFAULT_HEARTBEAT_LIVENESS,
            max_message_bytes: crate::DEFAULT_MAX_MESSAGE_BYTES,
            max_attempts: 3,
            request_timeout_ms: 60_000,
            service_request_timeout_ms: BTreeMap::new(),
            max_queue_depth: 100_000,
            unknown_service_wait_ms: 30_000,
            max_services: 10_000,
            dedupe_window_ms: 60_000,
            max_dedupe_entries: 100_000,
            max_dedupe_bytes: 64 * 1024 * 1024,
            max_titanic_requests: 100_000,
            events: false,
            access: BTreeMap::new(),
            max_bundle_peers: 100_000,
        }
    }
}

impl Config {
    fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(1))
    }

    fn worker_expiry(&self) -> Duration {
        self.heartbeat_interval() * self.heartbeat_liveness.max(1)
    }

    fn request_timeout(&self, service: &ServiceName) -> Duration {
        let ms = self
            .service_request_timeout_ms
            .get(service)
            .copied()
            .unwrap_or(self.request_timeout_ms);
        Duration::from_millis(ms.max(1))
    }

    fn unknown_service_wait(&self) -> Duration {
        Duration::from_millis(self.unknown_service_wait_ms)
    }

    fn dedupe_window(&self) -> Duration {
        Duration::from_millis(self.dedupe_window_ms)
    }
}

/// A message for the broker's ROUTER, routing id first.
pub use crate::Transmit;

/// A place in the broker's send queue: one message, or a bundle for one peer.
#[derive(Debug)]
enum Slot {
    One(Transmit),
    Bundle(bundle::Packer),
}

/// Who asked, and in which protocol the answer must go back.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origin {
    Mdp(Version),
    Native {
        id: RequestId,
        generation: u64,
    },
    /// Asked through `titanic.request`; the reply is stored, not sent.
    Titanic {
        uuid: Bytes,
    },
}

/// A client request waiting for, or held by, a worker.
#[derive(Clone, Debug)]
struct Request {
    client: PeerId,
    origin: Origin,
    body: Body,
    /// When it joined its queue (again, after a redelivery).
    enqueued_at: Instant,
    /// When the broker accepted it, for the latency histogram.
    accepted_at: Instant,
    /// Times it has been handed to a worker.
    attempts: u32,
    /// Its key in the durable journal, when the broker keeps one.
    journal: Option<u64>,
    /// Read back from the durable store at start-up: its client may be a stranger now.
    recovered: bool,
    /// Its place in its service's queue (see [`Waiting`]); set when it is queued.
    order: i64,
}

impl Request {
    fn new(client: PeerId, origin: Origin, body: Body, now: Instant) -> Self {
        Self {
            client,
            origin,
            body,
            enqueued_at: now,
            accepted_at: now,
            attempts: 0,
            journal: None,
            recovered: false,
            order: 0,
        }
    }

    /// Titanic requests wait for a worker however long it takes: that is their point.
    fn waits_forever(&self) -> bool {
        matches!(self.origin, Origin::Titanic { .. })
    }
}

/// How a drain ([`Broker::begin_drain`]) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every request it waited for was answered.
    Answered,
    /// The grace period ran out first: this many requests were unanswered, and were
    /// abandoned.
    GraceOver {
        /// Requests abandoned (see [`Broker::unanswered`]).
        unanswered: usize,
    },
}

/// Whether the broker is stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drain {
    Serving,
    Draining,
    GraceOver { unanswered: usize },
}

/// How a request ends.
#[derive(Debug)]
enum Outcome {
    Reply(Body),
    Fail(FailReason),
}

/// The broker state machine.
#[derive(Debug)]
pub struct Broker {
    config: Config,
    services: HashMap<ServiceName, Service>,
    workers: HashMap<PeerId, Worker>,
    dedupe: Dedupe,
    /// Native requests' own deadlines, earliest first; stale entries are skipped.
    client_deadlines: BinaryHeap<Reverse<(Instant, u64, PeerId, RequestId)>>,
    /// Messages to send, each with the number of journal ops that must be durable first.
    transmits: VecDeque<(u64, Slot)>,
    /// Slots taken off `transmits` so far: slot `n` is at index `n - popped`.
    popped: u64,
    /// Peers that read bundles, each with the slot of its bundle still being filled.
    bundled: HashMap<Bytes, Option<u64>>,
    /// Present when the broker is durable.
    journal: Option<Journal>,
    /// Events for an observer, when [`Config::events`] is on.
    events: VecDeque<Event>,
    next_heartbeat: Instant,
    /// When to look at each worker (its expiry or its requests' deadline) and at each
    /// service with no worker (its oldest request's wait): no later than it is due.
    timers: Timers<Timer>,
    /// Requests and timers the broker has examined: a measure of its work.
    work: u64,
    /// Clients whose connection ended for good: their queued requests are not sent.
    departed: Departed,
    /// When this broker started, for its uptime.
    started: Instant,
    /// Serving, stopping (new requests refused, accepted ones still served), or stopped.
    drain: Drain,
    /// The last tag given to a request sent to a worker of capacity above 1.
    last_tag: u64,
    /// A request is queued for a worker that holds nothing: it waits on it, so the
    /// driver should send now rather than at the end of its burst.
    urgent: bool,
    /// A cluster node that does not serve: workers register and are heartbeated (so a
    /// new leader has them), client requests are refused with `not_leader`.
    standby: bool,
    /// The cluster node this broker is part of, as its driver last said.
    cluster: Option<crate::cluster::Status>,
    counters: Counters,
    /// Replies and failures per service, for the dashboard.
    service_totals: HashMap<ServiceName, counters::ServiceTotals>,
}

impl Broker {
    /// A broker with no workers, whose first heartbeat is one interval after `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        let next_heartbeat = now + config.heartbeat_interval();
        let dedupe = Dedupe::new(config.max_dedupe_entries, config.max_dedupe_bytes);
        Self {
            config,
            services: HashMap::new(),
            workers: HashMap::new(),
            dedupe,
            client_deadlines: BinaryHeap::new(),
            transmits: VecDeque::new(),
            popped: 0,
            bundled: HashMap::new(),
            journal: None,
            events: VecDeque::new(),
            next_heartbeat,
            timers: Timers::default(),
            work: 0,
            departed: Departed::default(),
            started: now,
            drain: Drain::Serving,
            last_tag: 0,
            urgent: false,
            standby: false,
            cluster: None,
            counters: Counters::default(),
            service_totals: HashMap::new(),
        }
    }

    /// A broker for a cluster node that does not serve (see [`Broker::resume`]).
    pub fn standby(config: Config, now: Instant) -> Self {
        Self {
            standby: true,
            ..Self::new(config, now)
        }
    }

    /// A cluster node that served and no longer does: a standby broker in its place.
    /// Nothing this broker still held back leaves (it was not committed); its workers are
    /// told to DISCONNECT, so they register again with the standby and are there for
    /// whichever node leads next. Their requests are in the replicated journal.
    pub fn into_standby(self, now: Instant) -> Self {
        let mut standby = Self::standby(self.config, now);
        standby.cluster = self.cluster;
        for (peer, w) in self.workers {
            standby.push(to_worker(&peer, w.version, WorkerCommand::Disconnect));
        }
        standby
    }

    /// Where the cluster node this broker belongs to stands, for `mmi.status` (the
    /// driver says, as it changes).
    pub fn set_cluster_status(&mut self, status: crate::cluster::Status) {
        self.cluster = Some(status);
    }

    /// Where the cluster node this broker belongs to stands, as last set.
    pub fn cluster_status(&self) -> Option<&crate::cluster::Status> {
        self.cluster.as_ref()
    }

    /// Whether this broker refuses client requests as a cluster node that does not serve.
    pub fn is_standby(&self) -> bool {
        self.standby
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Totals so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Number of registered workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Workers holding a request.
    pub fn busy_workers(&self) -> usize {
        self.workers.values().filter(|w| w.is_busy()).count()
    }

    /// Requests held by workers.
    pub fn held_requests(&self) -> usize {
        self.workers.values().map(|w| w.held.len()).sum()
    }

    /// Native requests in progress, and native answers kept for retries.
    pub fn native_requests(&self) -> (usize, usize) {
        (self.dedupe.pending(), self.dedupe.answered())
    }

    /// Starts stopping: from now on new requests are refused with
    /// [`FailReason::ShuttingDown`], while those already accepted are still dispatched and
    /// answered for up to `grace`; then the rest are abandoned ([`Broker::abandon`]).
    /// [`Broker::drained`] says when it is over.
    pub fn begin_drain(&mut self, now: Instant, grace: Duration) {
        if self.drain == Drain::Serving {
            self.drain = Drain::Draining;
            self.timers.set(Timer::Drain, now + grace);
        }
    }

    /// True after [`Broker::begin_drain`].
    pub fn is_draining(&self) -> bool {
        self.drain != Drain::Serving
    }

    /// How the drain ended, once it has: `None` while serving or still draining.
    pub fn drained(&self) -> Option<Drained> {
        match self.drain {
            Drain::Serving => None,
            Drain::Draining if self.unanswered() == 0 => Some(Drained::Answered),
            Drain::Draining => None,
            Drain::GraceOver { unanswered } => Some(Drained::GraceOver { unanswered }),
        }
    }

    /// The requests a drain waits for: those accepted and not answered yet, and of a
    /// durable broker only those held by workers (queued ones stay in its journal for the
    /// next start).
    pub fn unanswered(&self) -> usize {
        if self.journal.is_some() {
            self.held_requests()
        } else {
            self.outstanding()
        }
    }

    /// The grace period of the drain is over: what is still unanswered is abandoned.
    fn end_grace(&mut self, now: Instant) {
        let unanswered = self.unanswered();
        if self.drain == Drain::Draining && unanswered > 0 {
            self.abandon(now);
            self.drain = Drain::GraceOver { unanswered };
        }
    }

    /// Requests and timers examined so far. It grows with what the broker does, never with
    /// how long its queues are, which the simulation checks (it counts work, not time).
    pub fn work(&self) -> u64 {
        self.work
    }

    /// Accepted requests not answered yet: queued, or held by a worker.
    pub fn outstanding(&self) -> usize {
        let queued: usize = self.services.values().map(|s| s.requests.len()).sum();
        queued + self.held_requests()
    }

    /// Ends every outstanding request with [`FailReason::ShuttingDown`] (native clients
    /// get an ERROR), for a broker whose grace period ran out: the last thing a broker
    /// does (its workers are left holding nothing, and are not made idle again). A durable broker keeps its
    /// requests instead: they are in the log for the next start.
    pub fn abandon(&mut self, now: Instant) {
        if self.journal.is_some() {
            return;
        }
        let mut ended = Vec::new();
        for (name, s) in &mut self.services {
            ended.extend(s.requests.drain().map(|r| (name.clone(), r)));
        }
        for w in self.workers.values_mut() {
            ended.extend(w.held.drain(..).map(|h| (w.service.clone(), h.request)));
        }
        let mut emptied = BTreeSet::new();
        for (service, request) in ended {
            self.finish(
                now,
                &service,
                &request,
                Outcome::Fail(FailReason::ShuttingDown),
            );
            emptied.insert(service);
        }
        // Their queues are empty now: no wait to time, and a service without workers is
        // forgotten, as always.
        for service in &emptied {
            self.arm_waiting(service);
            self.forget_if_unused(service);
        }
    }

    /// Every known service, sorted by name.
    pub fn services(&self) -> Vec<ServiceStatus> {
        // One pass over the workers: metrics call this twice a second.
        let mut idle: HashMap<&ServiceName, usize> = HashMap::new();
        for w in self.workers.values().filter(|w| !w.is_busy()) {
            *idle.entry(&w.service).or_default() += 1;
        }
        let mut out: Vec<_> = self
            .services
            .iter()
            .map(|(name, s)| ServiceStatus {
                name: name.clone(),
                queued: s.requests.len(),
                workers: s.workers,
                idle: idle.get(name).copied().unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The next message to send, if any (and if what it depends on is durable).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let durable = self.journal.as_ref().map_or(u64::MAX, |j| j.durable);
        match self.transmits.front() {
            Some((needs, _)) if *needs <= durable => {
                let (_, slot) = self.transmits.pop_front()?;
                self.popped += 1;
                Some(match slot {
                    Slot::One(t) => t,
                    Slot::Bundle(p) => {
                        if p.len() > 1 {
                            self.counters.bundles_sent += 1;
                        }
                        Transmit {
                            dest: (),
                            frames: p.finish(),
                        }
                    }
                })
            }
            _ => {
                self.urgent = false;
                None
            }
        }
    }

    /// Whether a worker with nothing in hand waits on a queued request: a driver that
    /// sends in bursts should send now. A plain worker (one request at a time) is idle
    /// from its reply to its next request, so holding that request back for a burst
    /// costs it the burst's time on every cycle.
    pub fn wants_flush(&self) -> bool {
        self.urgent
    }

    /// Queues a message; in a durable broker it leaves only once every journal op
    /// emitted so far is durable, so no acknowledgement or reply runs ahead of the disk.
    ///
    /// A message for a peer that reads bundles joins that peer's bundle still in the
    /// queue, if there is one with room: the peer's messages keep their order, and only
    /// other peers' messages are overtaken.
    fn push(&mut self, t: Transmit) {
        let needs = self.journal.as_ref().map_or(0, |j| j.emitted);
        if !self.bundled.is_empty()
            && let Some(open) = t.frames.first().and_then(|id| self.bundled.get_mut(id))
        {
            let mut packer = bundle::Packer::new(1);
            if packer.fits(&t.frames) {
                if let Some(slot) = open.and_then(|n| n.checked_sub(self.popped))
                    && let Some((n, Slot::Bundle(p))) = usize::try_from(slot)
                        .ok()
                        .and_then(|i| self.transmits.get_mut(i))
                    && p.has_room(&t.frames)
                {
                    p.push(t.frames);
                    *n = needs;
                    return;
                }
                *open = Some(self.popped + self.transmits.len() as u64);
                packer.push(t.frames);
                self.transmits.push_back((needs, Slot::Bundle(packer)));
                return;
            }
            // Later messages must not overtake this one.
            *open = None;
        }
        self.transmits.push_back((needs, Slot::One(t)));
    }

    /// `peer` reads bundles from now on (within [`Config::max_bundle_peers`]).
    fn reads_bundles(&mut self, peer: &PeerId) {
        if self.bundled.len() < self.config.max_bundle_peers {
            self.bundled.entry(peer.as_bytes().clone()).or_insert(None);
        }
    }

    /// When [`Broker::handle_timeout`] must next be called: always some time, since the
    /// broker heartbeats its workers.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let client = self.client_deadlines.peek().map(|Reverse((t, ..))| *t);
        [self.timers.next(), client]
            .into_iter()
            .flatten()
            .fold(self.next_heartbeat, Instant::min)
            .into()
    }

    /// One multipart message received on the ROUTER, routing id first.
    pub fn handle_message(&mut self, now: Instant, frames: Frames) {
        self.handle_message_from(now, frames, None);
    }

    /// One multipart message from a peer that authenticated as `user` (the User-Id its
    /// connection's ZAP handshake gave), which [`Config::access`] restricts.
    pub fn handle_message_from(&mut self, now: Instant, frames: Frames, user: Option<&str>) {
        let size: usize = frames.iter().map(Bytes::len).sum();
        let (peer, rest) = match mdp::split_routing_id(frames) {
            Ok(split) => split,
            Err(e) => return self.drop_message(DropReason::Malformed(e), size),
        };
        if mdp::is_disconnect_notice(&rest) {
            return self.on_disconnected(now, &peer);
        }
        // A peer that speaks again is still there (it sent an empty frame itself).
        self.departed.heard_from(&peer);
        if bundle::is_bundle(&rest) {
            match bundle::decode(&rest) {
                Ok(messages) => {
                    self.counters.bundles_received += 1;
                    // It has shown it speaks bundles: its answers may come in them too.
                    self.reads_bundles(&peer);
                    for m in messages {
                        let size = m.iter().map(Bytes::len).sum();
                        self.handle_one(now, peer.clone(), m, size, user);
                    }
                }
                Err(_) => self.drop_message(DropReason::Malformed(DecodeError::BadBundle), size),
            }
            return;
        }
        self.handle_one(now, peer, rest, size, user);
    }

    /// One message of `peer` (alone, or out of a bundle), after its routing id.
    fn handle_one(
        &mut self,
        now: Instant,
        peer: PeerId,
        rest: Frames,
        size: usize,
        user: Option<&str>,
    ) {
        if size > self.config.max_message_bytes {
            // A native client can be told; anyone else's message is just dropped.
            if let Some(id) = mdp::native_request_id(&rest) {
                self.refuse_native(now, &peer, id, Status::TooLarge, "the request is too large");
            }
            return self.drop_message(DropReason::TooLarge, size);
        }
        let bad_request_id = mdp::native_request_id(&rest);
        let message = Message::decode(rest);
        if let (Some(user), Ok(m)) = (user, &message)
            && let Some(service) = m.service()
            && !self.allowed(user, service)
        {
            return self.forbid(now, &peer, user, m);
        }
        match message {
            Ok(Message::Client(m)) => self.on_client_request(now, peer, Version::V1, m),
            Ok(Message::Client2(ClientKind::Request, m)) => {
                self.on_client_request(now, peer, Version::V2, m);
            }
            Ok(Message::Worker(cmd)) => self.on_worker(now, &peer, Version::V1, cmd),
            Ok(Message::Worker2(cmd)) => self.on_worker(now, &peer, Version::V2, cmd),
            Ok(Message::Client2Delimited(ClientKind::Request, m)) => {
                self.on_client_request(now, peer, Version::V2Delimited, m);
            }
            Ok(Message::Worker2Delimited(cmd)) => {
                self.on_worker(now, &peer, Version::V2Delimited, cmd);
            }
            Ok(Message::Native(NativeCommand::Request {
                id,
                service,
                deadline_ms,
                ack,
                body,
            })) => self.on_native_request(now, peer, id, service, (deadline_ms, ack), body),
            Ok(Message::Client2(..) | Message::Client2Delimited(..) | Message::Native(_)) => {
                self.drop_message(DropReason::WrongDirection, size);
            }
            Err(e) => {
                if let Some(id) = bad_request_id {
                    self.refuse_native(now, &peer, id, Status::BadRequest, &e.to_string());
                }
                self.drop_message(DropReason::Malformed(e), size);
            }
        }
    }

    /// Time has reached [`Broker::poll_timeout`]: heartbeat workers, act on deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            self.work += 1;
            match timer {
                Timer::Worker(peer) => self.check_worker(now, &peer),
                Timer::Waiting(service) => self.expire_waiting(now, &service),
                Timer::Drain => self.end_grace(now),
            }
        }
        self.expire_client_deadlines(now);
        self.dedupe.evict(now);
        self.forget_answers();
        if self.next_heartbeat <= now {
            let beats: Vec<_> = self
                .workers
                .iter()
                .map(|(peer, w)| to_worker(peer, w.version, WorkerCommand::Heartbeat))
                .collect();
            for beat in beats {
                self.push(beat);
            }
            self.next_heartbeat = now + self.config.heartbeat_interval();
        }
    }

    /// libzmq could not route a message to `peer` (it is disconnected).
    ///
    /// A worker that cannot be reached is gone: its request, if it held one, goes back
    /// to the head of its queue. A client that cannot be reached loses that message (a
    /// native client's retry is answered from memory).
    pub fn handle_unroutable(&mut self, now: Instant, peer: &PeerId) {
        if self.workers.contains_key(peer) {
            info!(worker = %peer, "worker unreachable, removing it");
            self.counters.workers_disconnected += 1;
            self.delete_worker(now, peer, false, Gone::Unreachable);
        } else {
            self.drop_message(DropReason::Unroutable, 0);
        }
    }

    /// libzmq says `peer`'s connection ended (ROUTER_NOTIFY). A worker is gone at once:
    /// what it held goes to others without waiting for its silence. A client with an id
    /// libzmq made up will never be heard from again (the id is not reused), so its
    /// queued MDP requests are not worth a worker's time. A client with an id of its own
    /// may come back with it (a native client retrying), so it keeps its requests.
    fn on_disconnected(&mut self, now: Instant, peer: &PeerId) {
        // Whoever connects next under this id says again what it reads.
        self.bundled.remove(peer.as_bytes());
        if self.workers.contains_key(peer) {
            info!(worker = %peer, "worker's connection ended, removing it");
            self.counters.workers_disconnected += 1;
            self.delete_worker(now, peer, false, Gone::Unreachable);
        } else {
            self.departed.note(peer);
        }
    }

    /// Whether `user` may use `service`.
    fn allowed(&self, user: &str, service: &ServiceName) -> bool {
        service.is_mmi()
            || self
                .config
                .access
                .get(user)
                .is_none_or(|services| services.contains(service))
    }

    /// Refuses a request or READY for a service `user` may not use.
    fn forbid(&mut self, now: Instant, peer: &PeerId, user: &str, message: &Message) {
        let service = message
            .service()
            .map(ToString::to_string)
            .unwrap_or_default();
        let n = &mut self.counters.dropped[DropReason::Forbidden.index()];
        *n += 1;
        // Rate-limited like every drop: the 1st, 2nd, 4th... refusal is logged.
        if n.is_power_of_two() {
            warn!(%peer, user, service, total = *n, "refused: this key may not use the service");
        }
        match message {
            Message::Native(NativeCommand::Request { id, .. }) => {
                let why = format!("this key may not use service {service}");
                self.refuse_native(now, peer, id.clone(), Status::Forbidden, &why);
            }
            Message::Worker(_) => {
                self.push(to_worker(peer, Version::V1, WorkerCommand::Disconnect));
            }
            Message::Worker2(_) => {
                self.push(to_worker(peer, Version::V2, WorkerCommand::Disconnect));
            }
            Message::Worker2Delimited(_) => {
                let disconnect = WorkerCommand::Disconnect;
                self.push(to_worker(peer, Version::V2Delimited, disconnect));
            }
            // MDP has no way to tell a client no.
            _ => {}
        }
    }
}

/// A reply to an MDP client in its version (MDP/0.1 has only one reply shape).
fn mdp_reply(version: Version, kind: ClientKind, m: ClientMessage) -> Message {
    match version {
        Version::V1 => Message::Client(m),
        Version::V2 => Message::Client2(kind, m),
        Version::V2Delimited => Message::Client2Delimited(kind, m),
    }
}

fn to_worker(peer: &PeerId, version: Version, cmd: WorkerCommand) -> Transmit {
    let m = match version {
        Version::V1 => Message::Worker(cmd),
        Version::V2 => Message::Worker2(cmd),
        Version::V2Delimited => Message::Worker2Delimited(cmd),
    };
    Transmit {
        dest: (),
        frames: m.encode_to(peer),
    }
}
