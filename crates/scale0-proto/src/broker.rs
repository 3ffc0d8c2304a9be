//! The Majordomo broker (RFC 7 with MMI, RFC 8) as a sans-IO state machine.
//!
//! The driver feeds every message received on the ROUTER to [`Broker::handle_message`],
//! calls [`Broker::handle_timeout`] when [`Broker::poll_timeout`] has passed, reports
//! sends that libzmq could not route with [`Broker::handle_unroutable`], and sends what
//! [`Broker::poll_transmit`] hands out. Nothing here blocks or reads a clock.

use crate::mdp::{
    self, Body, ClientMessage, DecodeError, Frames, Message, PeerId, ServiceName, WorkerCommand,
};
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;
use tracing::{debug, info, warn};

/// Behaviour settings of the broker; the driver's config adds the endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How often the broker sends HEARTBEAT to each worker, and the unit of liveness.
    pub heartbeat_interval_ms: u64,
    /// How many heartbeat intervals an idle worker may stay silent before it is expired.
    pub heartbeat_liveness: u32,
    /// Largest message accepted, summed over all its frames; larger ones are dropped.
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 2500,
            heartbeat_liveness: 3,
            max_message_bytes: 16 * 1024 * 1024,
            max_attempts: 3,
            request_timeout_ms: 60_000,
            service_request_timeout_ms: BTreeMap::new(),
            max_queue_depth: 100_000,
            unknown_service_wait_ms: 30_000,
            max_services: 10_000,
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
}

/// Why an accepted or offered request ended without a reply from a worker.
///
/// Plain MDP/0.1 cannot carry an error to the client, so for such clients a failure is a
/// log line and a counter; the client's own timeout tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailReason {
    /// The service's queue held `max_queue_depth` requests already.
    QueueFull,
    /// The service had no worker for `unknown_service_wait_ms`.
    NoWorker,
    /// The broker already tracks `max_services` services.
    TooManyServices,
    /// Every one of `max_attempts` workers died or overran the deadline holding it.
    AttemptsExhausted,
}

impl FailReason {
    /// Every reason, in the order counters are reported.
    pub const ALL: [FailReason; 4] = [
        Self::QueueFull,
        Self::NoWorker,
        Self::TooManyServices,
        Self::AttemptsExhausted,
    ];

    /// A stable snake_case label, for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::NoWorker => "no_worker",
            Self::TooManyServices => "too_many_services",
            Self::AttemptsExhausted => "attempts_exhausted",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::QueueFull => 0,
            Self::NoWorker => 1,
            Self::TooManyServices => 2,
            Self::AttemptsExhausted => 3,
        }
    }
}

/// Why the broker dropped a message without acting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Larger than [`Config::max_message_bytes`].
    TooLarge,
    /// Not valid MDP/0.1; see the [`DecodeError`].
    Malformed(DecodeError),
    /// A broker-to-worker command (REQUEST) sent to the broker.
    WrongDirection,
    /// A message for a peer that is gone (a reply whose client disconnected).
    Unroutable,
}

impl DropReason {
    /// Every reason, in the order counters are reported.
    pub const ALL: [DropReason; 11] = [
        Self::TooLarge,
        Self::Malformed(DecodeError::BadRoutingId),
        Self::Malformed(DecodeError::NoDelimiter),
        Self::Malformed(DecodeError::UnknownHeader),
        Self::Malformed(DecodeError::MissingFrame),
        Self::Malformed(DecodeError::ExtraFrames),
        Self::Malformed(DecodeError::UnknownCommand),
        Self::Malformed(DecodeError::BadServiceName),
        Self::Malformed(DecodeError::BadAddress),
        Self::WrongDirection,
        Self::Unroutable,
    ];

    /// A stable snake_case label, for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::Malformed(DecodeError::BadRoutingId) => "bad_routing_id",
            Self::Malformed(DecodeError::NoDelimiter) => "no_delimiter",
            Self::Malformed(DecodeError::UnknownHeader) => "unknown_header",
            Self::Malformed(DecodeError::MissingFrame) => "missing_frame",
            Self::Malformed(DecodeError::ExtraFrames) => "extra_frames",
            Self::Malformed(DecodeError::UnknownCommand) => "unknown_command",
            Self::Malformed(DecodeError::BadServiceName) => "bad_service_name",
            Self::Malformed(DecodeError::BadAddress) => "bad_address",
            Self::WrongDirection => "wrong_direction",
            Self::Unroutable => "unroutable",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::TooLarge => 0,
            Self::Malformed(DecodeError::BadRoutingId) => 1,
            Self::Malformed(DecodeError::NoDelimiter) => 2,
            Self::Malformed(DecodeError::UnknownHeader) => 3,
            Self::Malformed(DecodeError::MissingFrame) => 4,
            Self::Malformed(DecodeError::ExtraFrames) => 5,
            Self::Malformed(DecodeError::UnknownCommand) => 6,
            Self::Malformed(DecodeError::BadServiceName) => 7,
            Self::Malformed(DecodeError::BadAddress) => 8,
            Self::WrongDirection => 9,
            Self::Unroutable => 10,
        }
    }
}

/// Running totals of what the broker did; exposed by status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client requests accepted for a worker service.
    pub requests: u64,
    /// Requests sent to a worker (a re-send after a failed send counts again).
    pub dispatched: u64,
    /// Replies routed back to clients.
    pub replies: u64,
    /// Requests answered by the broker itself (`mmi.*`).
    pub mmi_requests: u64,
    /// Workers that sent READY and were registered.
    pub workers_registered: u64,
    /// Idle workers removed after heartbeat silence.
    pub workers_expired: u64,
    /// Workers removed because they said DISCONNECT or could not be reached.
    pub workers_disconnected: u64,
    /// DISCONNECTs sent to workers for unexpected commands.
    pub disconnects_sent: u64,
    /// Requests put back on their queue because the worker holding them went away.
    pub requeued: u64,
    /// Workers removed because they held a request past its deadline.
    pub request_timeouts: u64,
    dropped: [u64; 11],
    failed: [u64; 4],
}

impl Counters {
    /// How many messages were dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.index()).copied().unwrap_or(0)
    }

    /// All messages dropped, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// How many requests failed for `reason`.
    pub fn failed(&self, reason: FailReason) -> u64 {
        self.failed.get(reason.index()).copied().unwrap_or(0)
    }

    /// All requests that failed, whatever the reason.
    pub fn failed_total(&self) -> u64 {
        self.failed.iter().sum()
    }

    fn count_drop(&mut self, reason: DropReason) -> u64 {
        match self.dropped.get_mut(reason.index()) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => 0,
        }
    }
}

/// One message for the driver to send on the ROUTER: `frames[0]` is the routing id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The complete multipart message, routing id first.
    pub frames: Frames,
}

/// A client request waiting for, or held by, a worker.
#[derive(Clone, Debug)]
struct Request {
    client: PeerId,
    body: Body,
    /// When it joined its queue (again, after a redelivery).
    enqueued_at: Instant,
    /// Times it has been handed to a worker.
    attempts: u32,
}

/// A registered worker.
#[derive(Debug)]
struct Worker {
    service: ServiceName,
    /// When an idle worker that stays silent is expired.
    expiry: Instant,
    /// The request it is working on; a worker holds at most one.
    held: Option<Request>,
    /// When the held request's deadline passes.
    deadline: Instant,
    /// Whether it has heartbeated while holding a request. Such a worker (ours do) is
    /// expired for silence even when busy; one that does not (the reference
    /// single-threaded workers) is bounded by the request deadline alone.
    heartbeats_while_busy: bool,
}

/// A named service: its waiting requests and its idle workers, least recently used first.
#[derive(Debug)]
struct Service {
    requests: VecDeque<Request>,
    idle: VecDeque<PeerId>,
    workers: usize,
    /// Since when the service has had no worker; `None` while it has some.
    workerless_since: Option<Instant>,
}

impl Service {
    fn new(now: Instant) -> Self {
        Self {
            requests: VecDeque::new(),
            idle: VecDeque::new(),
            workers: 0,
            workerless_since: Some(now),
        }
    }

    /// When the oldest waiting request fails for want of a worker, if the service has none.
    fn no_worker_deadline(&self, wait: Duration) -> Option<Instant> {
        let since = self.workerless_since?;
        let oldest = self.requests.iter().map(|r| r.enqueued_at).min()?;
        Some(oldest.max(since) + wait)
    }
}

/// A snapshot of one service, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: ServiceName,
    /// Requests waiting for a worker.
    pub queued: usize,
    /// Registered workers.
    pub workers: usize,
    /// Workers waiting for a request.
    pub idle: usize,
}

/// The broker state machine.
#[derive(Debug)]
pub struct Broker {
    config: Config,
    services: HashMap<ServiceName, Service>,
    workers: HashMap<PeerId, Worker>,
    transmits: VecDeque<Transmit>,
    next_heartbeat: Instant,
    /// A lower bound on the earliest idle-worker expiry; refreshing a worker only moves
    /// its expiry later, so this stays valid until the purge recomputes it.
    next_purge: Option<Instant>,
    counters: Counters,
}

impl Broker {
    /// A broker with no workers, whose first heartbeat is one interval after `now`.
    pub fn new(config: Config, now: Instant) -> Self {
        let next_heartbeat = now + config.heartbeat_interval();
        Self {
            config,
            services: HashMap::new(),
            workers: HashMap::new(),
            transmits: VecDeque::new(),
            next_heartbeat,
            next_purge: None,
            counters: Counters::default(),
        }
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

    /// Every known service, sorted by name.
    pub fn services(&self) -> Vec<ServiceStatus> {
        let mut out: Vec<_> = self
            .services
            .iter()
            .map(|(name, s)| ServiceStatus {
                name: name.clone(),
                queued: s.requests.len(),
                workers: s.workers,
                idle: s.idle.len(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Broker::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        match self.next_purge {
            Some(p) if p < self.next_heartbeat => p,
            _ => self.next_heartbeat,
        }
    }

    /// One multipart message received on the ROUTER, routing id first.
    pub fn handle_message(&mut self, now: Instant, frames: Frames) {
        let size: usize = frames.iter().map(Bytes::len).sum();
        if size > self.config.max_message_bytes {
            self.drop_message(DropReason::TooLarge, size);
            return;
        }
        let decoded = mdp::split_routing_id(frames)
            .and_then(|(peer, rest)| Message::decode(rest).map(|m| (peer, m)));
        match decoded {
            Ok((peer, Message::Client(m))) => self.on_client(now, peer, m),
            Ok((peer, Message::Worker(cmd))) => self.on_worker(now, &peer, cmd),
            Err(e) => self.drop_message(DropReason::Malformed(e), size),
        }
    }

    /// Time has reached [`Broker::poll_timeout`]: heartbeat workers, expire silent ones.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_purge.is_some_and(|p| p <= now) {
            self.purge(now);
        }
        if self.next_heartbeat <= now {
            for peer in self.workers.keys() {
                self.transmits
                    .push_back(encode_worker(peer, WorkerCommand::Heartbeat));
            }
            self.next_heartbeat = now + self.config.heartbeat_interval();
        }
    }

    /// libzmq could not route a message to `peer` (it is disconnected).
    ///
    /// A worker that cannot be reached is gone: its request, if it held one, goes back
    /// to the head of its queue. A client that cannot be reached loses its reply.
    pub fn handle_unroutable(&mut self, now: Instant, peer: &PeerId) {
        if self.workers.contains_key(peer) {
            info!(worker = %peer, "worker unreachable, removing it");
            self.counters.workers_disconnected += 1;
            self.delete_worker(now, peer, false);
        } else {
            self.drop_message(DropReason::Unroutable, 0);
        }
    }

    fn on_client(&mut self, now: Instant, client: PeerId, m: ClientMessage) {
        if m.service.is_mmi() {
            self.on_mmi(&client, m);
            return;
        }
        let service = m.service;
        let request = Request {
            client,
            body: m.body,
            enqueued_at: now,
            attempts: 0,
        };
        if !self.ensure_service(now, &service) {
            Self::fail(
                &mut self.counters,
                &service,
                &request.client,
                FailReason::TooManyServices,
            );
            return;
        }
        let wait = self.config.unknown_service_wait();
        let Some(s) = self.services.get_mut(&service) else {
            return;
        };
        if s.requests.len() >= self.config.max_queue_depth {
            Self::fail(
                &mut self.counters,
                &service,
                &request.client,
                FailReason::QueueFull,
            );
            return;
        }
        self.counters.requests += 1;
        s.requests.push_back(request);
        let deadline = s.no_worker_deadline(wait);
        self.arm(deadline);
        self.dispatch(now, &service);
    }

    /// Makes sure `service` exists; false when that would pass `max_services`.
    fn ensure_service(&mut self, now: Instant, service: &ServiceName) -> bool {
        if self.services.contains_key(service) {
            return true;
        }
        if self.services.len() >= self.config.max_services {
            return false;
        }
        self.services.insert(service.clone(), Service::new(now));
        true
    }

    /// Ends a request without a reply from a worker.
    fn fail(counters: &mut Counters, service: &ServiceName, client: &PeerId, reason: FailReason) {
        let n = match counters.failed.get_mut(reason.index()) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => 0,
        };
        if n.is_power_of_two() {
            warn!(
                %service,
                client = %client,
                reason = reason.label(),
                total = n,
                "request failed"
            );
        }
    }

    /// Makes sure the timer fires no later than `at`.
    fn arm(&mut self, at: Option<Instant>) {
        if let Some(at) = at {
            self.next_purge = Some(self.next_purge.map_or(at, |p| p.min(at)));
        }
    }

    fn on_mmi(&mut self, client: &PeerId, m: ClientMessage) {
        self.counters.mmi_requests += 1;
        let code: &'static [u8] = if m.service.as_bytes().as_ref() == b"mmi.service" {
            let known = m
                .body
                .first()
                .and_then(|name| ServiceName::new(name.clone()).ok())
                .and_then(|name| self.services.get(&name))
                .is_some_and(|s| s.workers > 0);
            if known { b"200" } else { b"404" }
        } else {
            b"501"
        };
        let reply = Message::Client(ClientMessage {
            service: m.service,
            body: vec![Bytes::from_static(code)],
        });
        self.transmits.push_back(Transmit {
            frames: reply.encode_to(client),
        });
    }

    fn on_worker(&mut self, now: Instant, peer: &PeerId, cmd: WorkerCommand) {
        let known = self.workers.contains_key(peer);
        if let Some(w) = self.workers.get_mut(peer) {
            // Any command is a sign of life.
            w.expiry = now + self.config.worker_expiry();
        }
        match cmd {
            WorkerCommand::Ready { service }
                if !known && !service.is_mmi() && self.ensure_service(now, &service) =>
            {
                debug!(worker = %peer, %service, "worker ready");
                self.counters.workers_registered += 1;
                self.workers.insert(
                    peer.clone(),
                    Worker {
                        service: service.clone(),
                        expiry: now,
                        held: None,
                        deadline: now,
                        heartbeats_while_busy: false,
                    },
                );
                if let Some(s) = self.services.get_mut(&service) {
                    s.workers += 1;
                    s.workerless_since = None;
                }
                self.make_idle(now, peer);
                self.dispatch(now, &service);
            }
            WorkerCommand::Reply { body, .. } if self.holds_request(peer) => {
                let Some(w) = self.workers.get_mut(peer) else {
                    return;
                };
                let service = w.service.clone();
                if let Some(req) = w.held.take() {
                    self.counters.replies += 1;
                    // Route to the client the request came from, whatever address the
                    // worker echoed: a worker cannot reach clients it was not sent.
                    let reply = Message::Client(ClientMessage {
                        service: service.clone(),
                        body,
                    });
                    self.transmits.push_back(Transmit {
                        frames: reply.encode_to(&req.client),
                    });
                }
                self.make_idle(now, peer);
                self.dispatch(now, &service);
            }
            WorkerCommand::Heartbeat if known => {
                if let Some(w) = self.workers.get_mut(peer) {
                    if w.held.is_some() {
                        w.heartbeats_while_busy = true;
                        let expiry = w.expiry;
                        self.arm(Some(expiry));
                    }
                }
            }
            WorkerCommand::Disconnect => {
                if known {
                    debug!(worker = %peer, "worker disconnected");
                    self.counters.workers_disconnected += 1;
                    self.delete_worker(now, peer, false);
                }
            }
            WorkerCommand::Request { .. } => {
                self.drop_message(DropReason::WrongDirection, 0);
            }
            unexpected => {
                // RFC 7: a worker that says something out of turn is told to DISCONNECT;
                // a worker that lost its broker re-registers this way.
                debug!(worker = %peer, command = unexpected.name(), known, "unexpected worker command");
                self.counters.disconnects_sent += 1;
                if known {
                    self.counters.workers_disconnected += 1;
                }
                self.delete_worker(now, peer, true);
            }
        }
    }

    fn holds_request(&self, peer: &PeerId) -> bool {
        self.workers.get(peer).is_some_and(|w| w.held.is_some())
    }

    /// Puts a worker at the back of its service's idle list (most recently used).
    fn make_idle(&mut self, now: Instant, peer: &PeerId) {
        let Some(w) = self.workers.get_mut(peer) else {
            return;
        };
        w.expiry = now + self.config.worker_expiry();
        let expiry = w.expiry;
        if let Some(s) = self.services.get_mut(&w.service) {
            s.idle.push_back(peer.clone());
        }
        self.arm(Some(expiry));
    }

    /// Sends waiting requests of `service` to its idle workers, least recently used first.
    fn dispatch(&mut self, now: Instant, service: &ServiceName) {
        let deadline = now + self.config.request_timeout(service);
        let mut armed = None;
        let Some(s) = self.services.get_mut(service) else {
            return;
        };
        while !s.requests.is_empty() {
            let Some(peer) = s.idle.pop_front() else {
                break;
            };
            let Some(w) = self.workers.get_mut(&peer) else {
                continue;
            };
            let Some(mut req) = s.requests.pop_front() else {
                break;
            };
            self.counters.dispatched += 1;
            req.attempts += 1;
            let cmd = WorkerCommand::Request {
                client: req.client.clone(),
                body: req.body.clone(),
            };
            w.held = Some(req);
            w.deadline = deadline;
            armed = Some(deadline);
            self.transmits.push_back(encode_worker(&peer, cmd));
        }
        self.arm(armed);
        self.forget_if_unused(service);
    }

    /// Removes a worker; its held request goes back to the head of the queue.
    fn delete_worker(&mut self, now: Instant, peer: &PeerId, send_disconnect: bool) {
        if send_disconnect {
            self.transmits
                .push_back(encode_worker(peer, WorkerCommand::Disconnect));
        }
        let Some(w) = self.workers.remove(peer) else {
            return;
        };
        let wait = self.config.unknown_service_wait();
        let Some(s) = self.services.get_mut(&w.service) else {
            return;
        };
        s.workers = s.workers.saturating_sub(1);
        if s.workers == 0 {
            s.workerless_since = Some(now);
        }
        s.idle.retain(|p| p != peer);
        if let Some(mut req) = w.held {
            if req.attempts >= self.config.max_attempts {
                Self::fail(
                    &mut self.counters,
                    &w.service,
                    &req.client,
                    FailReason::AttemptsExhausted,
                );
            } else {
                // Back to the head of the line: it has waited longest.
                self.counters.requeued += 1;
                req.enqueued_at = now;
                s.requests.push_front(req);
            }
        }
        let deadline = s.no_worker_deadline(wait);
        self.arm(deadline);
        self.dispatch(now, &w.service);
    }

    /// A service with no workers and no requests is forgotten, so services stay bounded
    /// by what is in use.
    fn forget_if_unused(&mut self, service: &ServiceName) {
        if self
            .services
            .get(service)
            .is_some_and(|s| s.workers == 0 && s.requests.is_empty())
        {
            self.services.remove(service);
        }
    }

    /// Acts on every deadline that has passed, wherever it is: silent workers, requests
    /// held too long, requests waiting too long for a service with no worker. Then
    /// recomputes the earliest deadline still ahead.
    fn purge(&mut self, now: Instant) {
        let mut expired = Vec::new();
        let mut overdue = Vec::new();
        for (peer, w) in &self.workers {
            let silent = w.expiry <= now && (w.held.is_none() || w.heartbeats_while_busy);
            if silent {
                expired.push(peer.clone());
            } else if w.held.is_some() && w.deadline <= now {
                overdue.push(peer.clone());
            }
        }
        for peer in &expired {
            info!(worker = %peer, "worker expired after heartbeat silence");
            self.counters.workers_expired += 1;
            // Tell it, in case it is alive but slow: it will re-register.
            self.delete_worker(now, peer, true);
        }
        for peer in &overdue {
            warn!(worker = %peer, "worker held a request past its deadline, disconnecting it");
            self.counters.request_timeouts += 1;
            self.delete_worker(now, peer, true);
        }
        self.expire_waiting(now);
        let wait = self.config.unknown_service_wait();
        let workers = self
            .workers
            .values()
            .map(|w| match (&w.held, w.heartbeats_while_busy) {
                (None, _) => w.expiry,
                (Some(_), true) => w.expiry.min(w.deadline),
                (Some(_), false) => w.deadline,
            });
        let waiting = self
            .services
            .values()
            .filter_map(|s| s.no_worker_deadline(wait));
        self.next_purge = workers.chain(waiting).min();
    }

    /// Fails the requests that waited `unknown_service_wait_ms` for a service with no worker.
    fn expire_waiting(&mut self, now: Instant) {
        let wait = self.config.unknown_service_wait();
        let counters = &mut self.counters;
        for (name, s) in &mut self.services {
            let Some(since) = s.workerless_since else {
                continue;
            };
            s.requests.retain(|r| {
                let keep = r.enqueued_at.max(since) + wait > now;
                if !keep {
                    Self::fail(counters, name, &r.client, FailReason::NoWorker);
                }
                keep
            });
        }
        self.services
            .retain(|_, s| s.workers > 0 || !s.requests.is_empty());
    }

    fn drop_message(&mut self, reason: DropReason, size: usize) {
        let n = self.counters.count_drop(reason);
        // Log the 1st, 2nd, 4th, 8th… drop of each kind: visible, but a flood cannot
        // turn into a flood of log lines.
        if n.is_power_of_two() {
            warn!(reason = reason.label(), size, total = n, "dropped message");
        }
    }
}

fn encode_worker(peer: &PeerId, cmd: WorkerCommand) -> Transmit {
    Transmit {
        frames: Message::Worker(cmd).encode_to(peer),
    }
}
