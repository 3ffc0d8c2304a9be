//! A Majordomo worker's side of the conversation (MDP/0.1 or MDP/0.2, as configured) as a
//! sans-IO state machine.
//!
//! It decides when to (re)connect, registers with READY, heartbeats the broker (also
//! while the handler is busy, so a long request is not mistaken for a dead worker),
//! notices a silent broker, and backs off exponentially between reconnects. The driver
//! performs the [`Action`]s in order and runs the handler.

use crate::mdp::{Body, DecodeError, Frames, Message, PeerId, ServiceName, Version, WorkerCommand};
use crate::time::Instant;
use std::collections::VecDeque;
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
}

impl Config {
    /// The first pause before reconnecting, unless configured.
    pub const DEFAULT_RECONNECT_INITIAL_MS: u64 = 100;
    /// The longest pause between reconnects, unless configured.
    pub const DEFAULT_RECONNECT_MAX_MS: u64 = 5000;
    /// Requests a worker may hold, unless configured. A scale0 broker sends a worker
    /// more than one only when every worker of its service holds something (least-loaded
    /// dispatch), so a slow request has others queued behind it only under full load;
    /// eight keep a fast handler from ever waiting on the broker (4 workers: 7.6k req/s
    /// at 1, 25k to 33k at 8, `scale0 demo --capacity N`, BENCHMARKS.md).
    pub const DEFAULT_CAPACITY: u32 = 8;

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
        }
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

    /// The next thing for the driver to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
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

    /// A message arrived on the current connection.
    pub fn handle_message(&mut self, now: Instant, frames: Frames) -> Result<(), DecodeError> {
        let State::Connected { next_heartbeat, .. } = self.state else {
            return Ok(());
        };
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
        self.send(WorkerCommand::Ready {
            service: self.config.service.clone(),
            capacity: self
                .config
                .capacity
                .clamp(1, crate::mdp::MAX_WORKER_CAPACITY),
        });
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
}
