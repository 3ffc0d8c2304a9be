//! A Majordomo worker's side of the conversation (MDP/0.1 or MDP/0.2, as configured) as a
//! sans-IO state machine.
//!
//! It decides when to (re)connect, registers with READY, heartbeats the broker (also
//! while the handler is busy, so a long request is not mistaken for a dead worker),
//! notices a silent broker, and backs off exponentially between reconnects. The driver
//! performs the [`Action`]s in order and runs the handler.
//!
//! A worker of several independent brokers runs a [`Group`]: one [`Session`] per broker,
//! its capacity split between them, all feeding one handler.

use crate::mdp::{Body, DecodeError, Frames, Message, PeerId, ServiceName, Version, WorkerCommand};
use crate::time::Instant;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Worker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The service this worker offers.
    pub service: ServiceName,
    /// How often the worker sends HEARTBEAT, and the unit of the broker's liveness.
    pub heartbeat_interval_ms: u64,
    /// Heartbeat intervals of broker silence after which the worker reconnects.
    pub heartbeat_liveness: u32,
    /// First pause before reconnecting; doubles on each failure up to the maximum.
    pub reconnect_initial_ms: u64,
    /// Longest pause between reconnect attempts.
    pub reconnect_max_ms: u64,
    /// The Majordomo version to speak; MDP/0.2 can send partial replies.
    pub version: Version,
    /// Requests the broker may send before a reply (scale0's READY extension, which
    /// other brokers ignore). They are handled one after another, in the order they
    /// came; above 1 the connection carries batches instead of lone requests.
    pub capacity: u32,
    /// Send the `capacity=N` frame even for 1, where it is otherwise left out (as RFC 7
    /// has no such frame): a cluster node tells scale0's workers, which register with
    /// every node themselves, from plain ones it relays to the leader by it. A [`Group`]
    /// of several brokers sets it.
    pub announce_capacity: bool,
    /// Ask for bundles (READY's `bundle=1`, with a capacity above 1): the broker sends
    /// what it has for this worker at once as one message, and once it has, the worker
    /// sends its replies the same way ([`crate::bundle`]). Brokers that do not know the
    /// frame ignore it (the Guide's, majortomo's) and send no bundles.
    pub bundle: bool,
}

impl Config {
    /// The first pause before reconnecting, unless configured.
    pub const DEFAULT_RECONNECT_INITIAL_MS: u64 = 100;
    /// The longest pause between reconnects, unless configured.
    pub const DEFAULT_RECONNECT_MAX_MS: u64 = 5000;
    /// Requests a worker may hold, unless configured. A scale0 broker sends a worker
    /// more than one only when every worker of its service holds something (least-loaded
    /// dispatch), so a slow request has others queued behind it only under full load.
    /// With bundles a deeper line is also fewer, larger messages: 4 inline echo workers
    /// under 256 requests in flight, each a process, did 83k req/s at 8, 134k at 16 and
    /// 160k to 173k at 32, no more at 64 (BENCHMARKS.md, "Bundles and eventfd").
    pub const DEFAULT_CAPACITY: u32 = 32;

    /// Defaults matching the broker's ([`crate::DEFAULT_HEARTBEAT_INTERVAL_MS`] ×
    /// [`crate::DEFAULT_HEARTBEAT_LIVENESS`]), reconnecting after 100 ms to 5 s.
    pub fn new(service: ServiceName) -> Self {
        Self {
            service,
            heartbeat_interval_ms: crate::DEFAULT_HEARTBEAT_INTERVAL_MS,
            heartbeat_liveness: crate::DEFAULT_HEARTBEAT_LIVENESS,
            reconnect_initial_ms: Self::DEFAULT_RECONNECT_INITIAL_MS,
            reconnect_max_ms: Self::DEFAULT_RECONNECT_MAX_MS,
            version: Version::V2,
            capacity: Self::DEFAULT_CAPACITY,
            announce_capacity: false,
            bundle: false,
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(1))
    }
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Close the current connection, if any.
    Disconnect,
    /// Open a fresh connection to the broker (a new socket, so a new routing id).
    Connect,
    /// Send these frames (as a DEALER: empty delimiter first) on the current connection.
    Send(Frames),
    /// Run the handler on this request, then call [`Session::reply`].
    Deliver {
        /// Address of the requesting client, as the broker gave it.
        client: PeerId,
        /// Request body.
        body: Body,
    },
}

/// Running totals of a worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests handed to the handler.
    pub requests: u64,
    /// Replies sent to the broker.
    pub replies: u64,
    /// Replies thrown away because the connection they belonged to was gone.
    pub replies_lost: u64,
    /// Connections opened, the first one included.
    pub connects: u64,
    /// Requests beyond the capacity given in READY, ignored: a broker's mistake.
    pub over_capacity: u64,
    /// Requests that arrived after [`Session::stop_taking`], not started: the broker sends
    /// them elsewhere when this worker says DISCONNECT.
    pub declined: u64,
}

#[derive(Debug)]
enum State {
    Disconnected {
        reconnect_at: Instant,
    },
    Connected {
        broker_expiry: Instant,
        next_heartbeat: Instant,
    },
}

/// A worker session.
#[derive(Debug)]
pub struct Session {
    config: Config,
    state: State,
    actions: VecDeque<Action>,
    /// The requests handed to the handler and not answered, in order (the handler takes
    /// them one after another): the address to echo, and whether the request still
    /// belongs to the current connection.
    busy: VecDeque<(PeerId, bool)>,
    backoff: Duration,
    counters: Counters,
    /// Stopping: requests still arriving (a worker with credit gets more while it
    /// finishes) are not started.
    stopping: bool,
    /// When a draining worker stops waiting for the requests in hand.
    drain_until: Option<Instant>,
    /// The broker of the current connection has sent a bundle: it reads them too.
    broker_bundles: bool,
    /// The current connection's READY asked for bundles.
    offered_bundles: bool,
    /// Something came on the current connection.
    heard: bool,
    /// The next READY leaves out `bundle=1`: the last one that had it was answered by
    /// DISCONNECT first of all, as a scale0 broker older than bundles answers it.
    skip_bundle_offer: bool,
}

/// How a drain ended (see [`Session::begin_drain`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every request in hand was answered.
    Answered,
    /// The grace period ran out with this many requests in hand; the broker sends them
    /// elsewhere once the worker says DISCONNECT.
    GraceOver {
        /// Requests still in hand.
        unanswered: usize,
    },
}

impl Session {
    /// A session that connects at the first [`Session::handle_timeout`].
    pub fn new(config: Config, now: Instant) -> Self {
        let backoff = Duration::from_millis(config.reconnect_initial_ms);
        Self {
            config,
            state: State::Disconnected { reconnect_at: now },
            actions: VecDeque::new(),
            busy: VecDeque::new(),
            backoff,
            counters: Counters::default(),
            stopping: false,
            drain_until: None,
            broker_bundles: false,
            offered_bundles: false,
            heard: false,
            skip_bundle_offer: false,
        }
    }

    /// Requests this broker may hand the worker before it replies.
    pub fn capacity(&self) -> u32 {
        self.config.capacity
    }

    /// Totals so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// True while the handler runs a request (or has some waiting).
    pub fn is_busy(&self) -> bool {
        !self.busy.is_empty()
    }

    /// True while the session has a registered connection.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// The next thing for the driver to do. Sends that follow one another go as one
    /// bundle when the broker reads them.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front()?;
        let Action::Send(first) = action else {
            return Some(action);
        };
        if !self.broker_bundles {
            return Some(Action::Send(first));
        }
        let actions = &mut self.actions;
        let (frames, _) = crate::bundle::gather(first, |p| {
            if !matches!(actions.front(), Some(Action::Send(next)) if p.accepts(next)) {
                return None;
            }
            match actions.pop_front() {
                Some(Action::Send(next)) => Some(next),
                _ => None,
            }
        });
        Some(Action::Send(frames))
    }

    /// When [`Session::handle_timeout`] must next be called; `None` while waiting only
    /// for the handler.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Connected {
                broker_expiry,
                next_heartbeat,
            } => Some(
                self.drain_until
                    .map_or(broker_expiry, |d| d.min(broker_expiry))
                    .min(next_heartbeat),
            ),
            // A request from the old connection is still running: reconnecting now would
            // register a worker that cannot take work, so wait for the handler.
            State::Disconnected { .. } if self.is_busy() => None,
            State::Disconnected { reconnect_at } => Some(reconnect_at),
        }
    }

    /// Time has reached [`Session::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Disconnected { reconnect_at } => {
                if reconnect_at <= now && !self.is_busy() {
                    self.connect(now);
                }
            }
            State::Connected {
                broker_expiry,
                next_heartbeat,
            } => {
                if broker_expiry <= now {
                    warn!(
                        service = %self.config.service,
                        "broker silent for {} heartbeats, reconnecting",
                        self.config.heartbeat_liveness
                    );
                    self.lose_connection(now);
                    return;
                }
                if next_heartbeat <= now {
                    self.send(WorkerCommand::Heartbeat);
                    self.state = State::Connected {
                        broker_expiry,
                        next_heartbeat: now + self.config.interval(),
                    };
                }
            }
        }
    }

    /// A message arrived on the current connection: one command, or a bundle of them.
    pub fn handle_message(&mut self, now: Instant, frames: Frames) -> Result<(), DecodeError> {
        if !matches!(self.state, State::Connected { .. }) {
            return Ok(());
        }
        // A broker that sends bundles reads them.
        self.broker_bundles |= crate::bundle::is_bundle(&frames);
        crate::bundle::each(frames, |m| self.handle_command(now, m))
    }

    fn handle_command(&mut self, now: Instant, frames: Frames) -> Result<(), DecodeError> {
        let State::Connected { next_heartbeat, .. } = self.state else {
            return Ok(());
        };
        let first = !self.heard;
        self.heard = true;
        let ((Message::Worker(cmd), Version::V1)
        | (Message::Worker2(cmd), Version::V2)
        | (Message::Worker2Delimited(cmd), Version::V2Delimited)) =
            (Message::decode(frames)?, self.config.version)
        else {
            return Err(DecodeError::UnknownHeader);
        };
        // Anything from the broker proves it alive and resets the backoff.
        self.state = State::Connected {
            broker_expiry: now + self.config.interval() * self.config.heartbeat_liveness.max(1),
            next_heartbeat,
        };
        self.backoff = Duration::from_millis(self.config.reconnect_initial_ms);
        match cmd {
            WorkerCommand::Request { .. } if self.stopping => {
                debug!("stopping: a request arrived and is left to the broker to send elsewhere");
                self.counters.declined += 1;
            }
            WorkerCommand::Request { client, body } => {
                let current = self.busy.iter().filter(|(_, current)| *current).count();
                if current >= self.config.capacity.max(1) as usize {
                    // A broker sends no more than the capacity; more is its mistake,
                    // and answering it would break the rule.
                    warn!("broker sent a request beyond this worker's capacity; ignoring it");
                    self.counters.over_capacity += 1;
                    return Ok(());
                }
                self.counters.requests += 1;
                self.busy.push_back((client.clone(), true));
                self.actions.push_back(Action::Deliver { client, body });
            }
            WorkerCommand::Heartbeat => {}
            WorkerCommand::Disconnect => {
                info!(service = %self.config.service, "broker said DISCONNECT, re-registering");
                // A broker that took the READY heartbeats before anything else; one that
                // dropped it (an older scale0 broker refuses the bundle frame) only says
                // DISCONNECT, to the first heartbeat. Register once without the frame.
                if first && self.offered_bundles {
                    info!(service = %self.config.service, "registering without asking for bundles this time");
                    self.skip_bundle_offer = true;
                }
                self.actions.push_back(Action::Disconnect);
                self.mark_abandoned();
                self.state = State::Disconnected {
                    reconnect_at: now + Duration::from_millis(self.config.reconnect_initial_ms),
                };
            }
            WorkerCommand::Ready { .. }
            | WorkerCommand::Reply { .. }
            | WorkerCommand::Partial { .. } => {
                return Err(DecodeError::UnknownCommand);
            }
        }
        Ok(())
    }

    /// The handler finished the oldest request it was given with `body`.
    pub fn reply(&mut self, now: Instant, body: Body) {
        let Some((client, current)) = self.busy.pop_front() else {
            return;
        };
        if current && self.is_connected() {
            self.counters.replies += 1;
            self.send(WorkerCommand::Reply { client, body });
        } else {
            debug!("reply for a connection that is gone, dropping it");
            self.counters.replies_lost += 1;
            // The reconnect was waiting for the handler.
            self.handle_timeout(now);
        }
    }

    /// The handler reports progress on the current request: a PARTIAL reply. Returns
    /// false when it cannot go out (MDP/0.1, or the connection it belongs to is gone).
    pub fn partial(&mut self, body: Body) -> bool {
        match self.busy.front() {
            Some((client, true)) if self.is_connected() && self.config.version.has_partials() => {
                let client = client.clone();
                self.send(WorkerCommand::Partial { client, body });
                true
            }
            _ => false,
        }
    }

    /// Starts a clean stop: the requests in hand are finished, later ones are not started
    /// (once idle, [`Session::shutdown`] says DISCONNECT and the broker sends them
    /// elsewhere).
    pub fn stop_taking(&mut self) {
        self.stopping = true;
    }

    /// Stops taking requests and gives those in hand until `now + grace` to be answered;
    /// [`Session::drained`] says when to say goodbye.
    pub fn begin_drain(&mut self, now: Instant, grace: Duration) {
        self.stopping = true;
        self.drain_until.get_or_insert(now + grace);
    }

    /// Whether [`Session::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.drain_until.is_some()
    }

    /// Whether a drain is over at `now`; `None` while requests in hand still have time.
    pub fn drained(&self, now: Instant) -> Option<Drained> {
        let until = self.drain_until?;
        if !self.is_busy() {
            Some(Drained::Answered)
        } else if now >= until {
            Some(Drained::GraceOver {
                unanswered: self.busy.len(),
            })
        } else {
            None
        }
    }

    /// Says goodbye to the broker, for a clean shutdown.
    pub fn shutdown(&mut self) {
        if self.is_connected() {
            self.send(WorkerCommand::Disconnect);
        }
    }

    fn connect(&mut self, now: Instant) {
        self.counters.connects += 1;
        self.actions.push_back(Action::Connect);
        self.state = State::Connected {
            broker_expiry: now + self.config.interval() * self.config.heartbeat_liveness.max(1),
            next_heartbeat: now + self.config.interval(),
        };
        let capacity = self
            .config
            .capacity
            .clamp(1, crate::mdp::MAX_WORKER_CAPACITY);
        // A new connection may reach another broker: it shows again what it reads.
        self.broker_bundles = false;
        self.heard = false;
        self.offered_bundles = self.config.bundle && capacity > 1 && !self.skip_bundle_offer;
        self.skip_bundle_offer = false;
        self.send(WorkerCommand::Ready {
            service: self.config.service.clone(),
            capacity,
            bundle: self.offered_bundles,
        });
        if capacity == 1
            && self.config.announce_capacity
            && let Some(Action::Send(frames)) = self.actions.back_mut()
        {
            frames.push(Bytes::from_static(b"capacity=1"));
        }
    }

    fn lose_connection(&mut self, now: Instant) {
        self.actions.push_back(Action::Disconnect);
        self.mark_abandoned();
        self.state = State::Disconnected {
            reconnect_at: now + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(Duration::from_millis(self.config.reconnect_max_ms));
    }

    fn mark_abandoned(&mut self) {
        for (_, current) in &mut self.busy {
            *current = false;
        }
    }

    fn send(&mut self, cmd: WorkerCommand) {
        let m = match self.config.version {
            Version::V1 => Message::Worker(cmd),
            Version::V2 => Message::Worker2(cmd),
            Version::V2Delimited => Message::Worker2Delimited(cmd),
        };
        self.actions.push_back(Action::Send(m.encode()));
    }
}

/// Why a [`Group`] cannot be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// A worker needs a broker to serve.
    #[error("a worker needs at least one broker endpoint")]
    NoBrokers,
    /// Each broker needs at least one request of the capacity, since MDP's credit is
    /// per connection.
    #[error(
        "a capacity of {capacity} cannot be split over {brokers} brokers: each needs at least 1 (raise the capacity to {brokers} or more)"
    )]
    CapacityBelowBrokers {
        /// The worker's capacity.
        capacity: u32,
        /// How many brokers it serves.
        brokers: usize,
    },
}

/// A worker's sessions with several independent brokers, one per broker, sharing one
/// handler that takes their requests one after another in the order they came.
///
/// MDP's credit is a fixed number a broker learns from READY, so the worker's capacity is
/// split between the brokers ([`Group::shares`]): together they never hand it more than
/// its capacity. A broker that is gone leaves its share unused until the worker is
/// registered with it again (each session reconnects on its own).
pub struct Group {
    sessions: Vec<Session>,
    /// For each request handed to the handler and not answered, in order: the index of
    /// the session (the broker) it came from, where its reply goes.
    handler: VecDeque<usize>,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("brokers", &self.sessions.len())
            .field("in_hand", &self.handler.len())
            .finish_non_exhaustive()
    }
}

impl Group {
    /// How `capacity` is split over `brokers`: as evenly as it goes, the first brokers
    /// taking one more when it does not divide.
    pub fn shares(capacity: u32, brokers: usize) -> Result<Vec<u32>, GroupError> {
        let n = u32::try_from(brokers).unwrap_or(u32::MAX);
        if n == 0 {
            return Err(GroupError::NoBrokers);
        }
        if capacity < n {
            return Err(GroupError::CapacityBelowBrokers { capacity, brokers });
        }
        Ok((0..n)
            .map(|i| capacity / n + u32::from(i < capacity % n))
            .collect())
    }

    /// Sessions with `brokers` brokers (index 0 to `brokers - 1`, as the driver numbers
    /// its endpoints), each with its share of `config.capacity`; they connect at the first
    /// [`Group::handle_timeout`].
    pub fn new(config: &Config, brokers: usize, now: Instant) -> Result<Self, GroupError> {
        let shares = Self::shares(config.capacity, brokers)?;
        // Several brokers may be one cluster's nodes, which must not take this worker
        // for a plain one to relay (a share of 1 would otherwise leave the frame out).
        let config = Config {
            announce_capacity: config.announce_capacity || brokers > 1,
            ..config.clone()
        };
        Ok(Self::with_shares(&config, shares, now))
    }

    /// Sessions with the `nodes` nodes of one replicated cluster, each given the whole
    /// capacity: only the node that leads hands out requests (the others refuse them
    /// while they stand by), so splitting it would leave the leader a fraction. Across a
    /// failover the worker can hold what the deposed leader sent it beside what the new
    /// one sends, up to twice its capacity, for as long as those requests take.
    pub fn cluster(config: &Config, nodes: usize, now: Instant) -> Result<Self, GroupError> {
        if nodes == 0 {
            return Err(GroupError::NoBrokers);
        }
        let config = Config {
            announce_capacity: true,
            ..config.clone()
        };
        Ok(Self::with_shares(
            &config,
            vec![config.capacity; nodes],
            now,
        ))
    }

    fn with_shares(config: &Config, shares: Vec<u32>, now: Instant) -> Self {
        let sessions = shares
            .into_iter()
            .map(|capacity| {
                Session::new(
                    Config {
                        capacity,
                        ..config.clone()
                    },
                    now,
                )
            })
            .collect();
        Self {
            sessions,
            handler: VecDeque::new(),
        }
    }

    /// The session with broker `i`.
    pub fn session(&self, i: usize) -> Option<&Session> {
        self.sessions.get(i)
    }

    /// How many brokers.
    pub fn brokers(&self) -> usize {
        self.sessions.len()
    }

    /// Totals over every broker.
    pub fn counters(&self) -> Counters {
        self.sessions
            .iter()
            .map(Session::counters)
            .fold(Counters::default(), |mut t, c| {
                t.requests += c.requests;
                t.replies += c.replies;
                t.replies_lost += c.replies_lost;
                t.connects += c.connects;
                t.over_capacity += c.over_capacity;
                t.declined += c.declined;
                t
            })
    }

    /// True while the handler has requests in hand.
    pub fn is_busy(&self) -> bool {
        !self.handler.is_empty()
    }

    /// The next thing for the driver to do, with the index of the broker it concerns.
    /// [`Action::Deliver`]s come out in the order the handler must take them.
    pub fn poll_action(&mut self) -> Option<(usize, Action)> {
        self.sessions.iter_mut().enumerate().find_map(|(i, s)| {
            let action = s.poll_action()?;
            if matches!(action, Action::Deliver { .. }) {
                self.handler.push_back(i);
            }
            Some((i, action))
        })
    }

    /// The earliest deadline of any session.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions.iter().filter_map(Session::poll_timeout).min()
    }

    /// Time has reached [`Group::poll_timeout`]: every session due acts.
    pub fn handle_timeout(&mut self, now: Instant) {
        for s in &mut self.sessions {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
    }

    /// A message arrived from broker `broker` (one the group does not have is dropped).
    pub fn handle_message(
        &mut self,
        now: Instant,
        broker: usize,
        frames: Frames,
    ) -> Result<(), DecodeError> {
        match self.sessions.get_mut(broker) {
            Some(s) => s.handle_message(now, frames),
            None => {
                debug!(
                    broker,
                    "a message for a broker this worker does not have, dropped"
                );
                Ok(())
            }
        }
    }

    /// The handler finished the oldest request in hand: the reply goes to the broker it
    /// came from.
    pub fn reply(&mut self, now: Instant, body: Body) {
        if let Some(i) = self.handler.pop_front()
            && let Some(s) = self.sessions.get_mut(i)
        {
            s.reply(now, body);
        }
    }

    /// A partial reply to the request the handler is on (see [`Session::partial`]).
    pub fn partial(&mut self, body: Body) -> bool {
        match self.handler.front().and_then(|&i| self.sessions.get_mut(i)) {
            Some(s) => s.partial(body),
            None => false,
        }
    }

    /// Stops taking requests and gives those in hand until `now + grace` (see
    /// [`Session::begin_drain`]).
    pub fn begin_drain(&mut self, now: Instant, grace: Duration) {
        for s in &mut self.sessions {
            s.begin_drain(now, grace);
        }
    }

    /// Whether [`Group::begin_drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.sessions.iter().any(Session::is_draining)
    }

    /// Whether the drain is over at `now` for every broker.
    pub fn drained(&self, now: Instant) -> Option<Drained> {
        let mut unanswered = 0;
        for s in &self.sessions {
            match s.drained(now)? {
                Drained::Answered => {}
                Drained::GraceOver { unanswered: n } => unanswered += n,
            }
        }
        Some(if unanswered == 0 {
            Drained::Answered
        } else {
            Drained::GraceOver { unanswered }
        })
    }

    /// Says goodbye to every broker it is registered with.
    pub fn shutdown(&mut self) {
        for s in &mut self.sessions {
            s.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mdp::WorkerCommand;
    use bytes::Bytes;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn connected() -> Session {
        let service = ServiceName::new(Bytes::from_static(b"echo")).unwrap();
        let mut s = Session::new(Config::new(service), at(0));
        s.handle_timeout(at(0));
        while s.poll_action().is_some() {}
        s
    }

    fn request(s: &mut Session, now: u64) {
        let client = PeerId::new(Bytes::from_static(b"c1")).unwrap();
        let frames = Message::Worker2(WorkerCommand::Request {
            client,
            body: vec![Bytes::from_static(b"job")],
        })
        .encode();
        s.handle_message(at(now), frames).unwrap();
        while s.poll_action().is_some() {}
    }

    #[test]
    fn a_drain_waits_for_the_request_in_hand_until_its_grace_ends() {
        let mut s = connected();
        request(&mut s, 10);
        s.begin_drain(at(100), Duration::from_millis(500));
        assert_eq!(s.drained(at(599)), None);
        assert!(s.poll_timeout().is_some_and(|t| t <= at(600)));
        assert_eq!(
            s.drained(at(600)),
            Some(Drained::GraceOver { unanswered: 1 })
        );
        // A later call does not move the deadline.
        s.begin_drain(at(700), Duration::from_millis(500));
        assert_eq!(
            s.drained(at(700)),
            Some(Drained::GraceOver { unanswered: 1 })
        );
    }

    #[test]
    fn a_drain_ends_with_the_last_answer_and_takes_no_new_request() {
        let mut s = connected();
        request(&mut s, 10);
        s.begin_drain(at(100), Duration::from_millis(500));
        request(&mut s, 150);
        assert_eq!(s.drained(at(200)), None);
        s.reply(at(200), vec![Bytes::from_static(b"done")]);
        assert_eq!(s.drained(at(200)), Some(Drained::Answered));
        assert_eq!(s.counters().over_capacity, 0);
    }

    fn group(capacity: u32, brokers: usize) -> Group {
        let service = ServiceName::new(Bytes::from_static(b"echo")).unwrap();
        let mut config = Config::new(service);
        config.capacity = capacity;
        let mut g = Group::new(&config, brokers, at(0)).unwrap();
        g.handle_timeout(at(0));
        g
    }

    fn to_worker(client: &str, body: &'static [u8]) -> Frames {
        Message::Worker2(WorkerCommand::Request {
            client: PeerId::new(Bytes::copy_from_slice(client.as_bytes())).unwrap(),
            body: vec![Bytes::from_static(body)],
        })
        .encode()
    }

    #[test]
    fn capacity_is_split_over_the_brokers_and_below_their_number_is_refused() {
        assert_eq!(Group::shares(8, 1), Ok(vec![8]));
        assert_eq!(Group::shares(8, 3), Ok(vec![3, 3, 2]));
        assert_eq!(Group::shares(2, 2), Ok(vec![1, 1]));
        assert_eq!(
            Group::shares(2, 3),
            Err(GroupError::CapacityBelowBrokers {
                capacity: 2,
                brokers: 3
            })
        );
        assert_eq!(Group::shares(8, 0), Err(GroupError::NoBrokers));
        let config = Config::new(ServiceName::new(Bytes::from_static(b"echo")).unwrap());
        let g = Group::cluster(
            &Config {
                capacity: 8,
                ..config
            },
            3,
            at(0),
        )
        .unwrap();
        assert!((0..3).all(|i| g.session(i).unwrap().capacity() == 8));
        let mut g = group(5, 2);
        let readies: Vec<(usize, u32)> = std::iter::from_fn(|| g.poll_action())
            .filter_map(|(i, a)| match a {
                Action::Send(f) => match Message::decode(f) {
                    Ok(Message::Worker2(WorkerCommand::Ready { capacity, .. })) => {
                        Some((i, capacity))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(
            readies,
            vec![(0, 3), (1, 2)],
            "each broker is told its share"
        );
    }

    #[test]
    fn two_brokers_together_never_hand_over_more_than_the_capacity() {
        let mut g = group(2, 2);
        while g.poll_action().is_some() {}
        // Each broker sends one more than its share: the extra ones are refused.
        for (broker, client) in [(0, "a1"), (0, "a2"), (1, "b1"), (1, "b2")] {
            g.handle_message(at(1), broker, to_worker(client, b"job"))
                .unwrap();
        }
        let delivered = std::iter::from_fn(|| g.poll_action())
            .filter(|(_, a)| matches!(a, Action::Deliver { .. }))
            .count();
        assert_eq!(delivered, 2);
        assert_eq!(g.counters().over_capacity, 2);
    }

    #[test]
    fn each_reply_goes_back_to_the_broker_its_request_came_from() {
        let mut g = group(4, 2);
        while g.poll_action().is_some() {}
        g.handle_message(at(1), 1, to_worker("b1", b"x")).unwrap();
        g.handle_message(at(1), 0, to_worker("a1", b"y")).unwrap();
        let delivered: Vec<(usize, PeerId, Body)> = std::iter::from_fn(|| g.poll_action())
            .filter_map(|(i, a)| match a {
                Action::Deliver { client, body } => Some((i, client, body)),
                _ => None,
            })
            .collect();
        assert_eq!(delivered.len(), 2);
        // The handler answers in the order it was given them.
        for (_, _, body) in &delivered {
            g.reply(at(2), body.clone());
        }
        let replies: Vec<(usize, PeerId)> = std::iter::from_fn(|| g.poll_action())
            .filter_map(|(i, a)| match a {
                Action::Send(f) => match Message::decode(f) {
                    Ok(Message::Worker2(WorkerCommand::Reply { client, .. })) => Some((i, client)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let expected: Vec<(usize, PeerId)> =
            delivered.into_iter().map(|(i, c, _)| (i, c)).collect();
        assert_eq!(replies, expected);
        let brokers: Vec<usize> = replies.iter().map(|r| r.0).collect();
        assert!(brokers.contains(&0) && brokers.contains(&1));
        assert!(!g.is_busy());
        assert_eq!(g.counters().replies, 2);
    }
}
