//! The queue device as a sans-IO state machine: unmodified REQ clients on the frontend,
//! unmodified REP servers on one backend, Paranoid Pirate workers (ZeroMQ RFC 6) on another.
//!
//! REP servers never speak first, so the queue cannot tell them apart: requests go to them
//! through a DEALER (libzmq spreads them round robin), each tagged with a frame the REP
//! socket hands back with the reply. The queue keeps at most one request in flight per
//! connected server (the driver reports the count from socket events), and re-sends a
//! request whose reply has not come within `request_timeout_ms`, up to `max_attempts`
//! sends. The first reply for a tag goes to the client; any later one is dropped. Paranoid
//! Pirate workers announce themselves (READY) and heartbeat, so they are served least
//! recently used first, and a request held by one that dies is re-sent at once. When both
//! a worker and a server are free, they take turns.

use crate::departed::Departed;
use crate::mdp::{Body, Frames, PeerId};
use crate::time::Instant;
use crate::timers::Timers;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tracing::{debug, warn};

/// PPP READY (RFC 6).
pub const PPP_READY: &[u8] = b"\x01";
/// PPP HEARTBEAT (RFC 6).
pub const PPP_HEARTBEAT: &[u8] = b"\x02";
/// First byte of the tag frame the queue puts in front of every request it forwards.
const TAG_MARK: u8 = b'Q';
/// Pause before trying the REP servers again after the DEALER could not take a request.
const SERVER_RETRY_MS: u64 = 10;

/// Behaviour settings of the queue; the driver's config adds the endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long a server or worker may take to reply before the request is presumed lost
    /// with it and is sent again (the first reply wins; a late one is dropped). Keep it
    /// below your clients' own timeout so they never notice a server dying, and above
    /// your slowest request, which would otherwise run twice.
    pub request_timeout_ms: u64,
    /// Sends of one request at most; then it is dropped and counted, and the client's own
    /// timeout (Lazy Pirate) takes over.
    pub max_attempts: u32,
    /// Requests waiting for a server; further ones are dropped and counted.
    pub max_queued: usize,
    /// Largest request accepted, summed over its frames.
    pub max_message_bytes: usize,
    /// Heartbeat interval towards Paranoid Pirate workers, and the unit of their liveness.
    pub heartbeat_interval_ms: u64,
    /// Intervals a Paranoid Pirate worker may stay silent before it is presumed dead.
    pub heartbeat_liveness: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            request_timeout_ms: 2000,
            max_attempts: 5,
            max_queued: 100_000,
            max_message_bytes: crate::DEFAULT_MAX_MESSAGE_BYTES,
            heartbeat_interval_ms: 1000,
            heartbeat_liveness: 3,
        }
    }
}

/// Which socket a message goes out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// The clients' ROUTER; the first frame is the client's routing id.
    Frontend,
    /// The REP servers' DEALER; no routing id.
    Servers,
    /// The Paranoid Pirate workers' ROUTER; the first frame is the worker's routing id.
    Workers,
}

/// One message for the driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The socket.
    pub dest: Dest,
    /// The whole multipart message.
    pub frames: Frames,
}

impl Transmit {
    /// The peer a ROUTER sends it to (its first frame), for reporting it unroutable.
    pub fn peer(&self) -> Option<PeerId> {
        crate::mdp::routing_id(&self.frames)
    }

    /// The tag of a request to a server, for reporting that no server took it.
    pub fn tag(&self) -> Option<u64> {
        self.frames.first().and_then(|f| parse_tag(f))
    }
}

/// Why the queue dropped something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Drop {
    /// A client message with no empty delimiter or no body.
    Malformed,
    /// A request over `max_message_bytes`.
    TooLarge,
    /// A request arriving with `max_queued` already waiting.
    QueueFull,
    /// A request sent `max_attempts` times without a reply.
    AttemptsExhausted,
    /// A reply for a request already answered (a slow server's, after a re-send).
    LateReply,
    /// A backend message that is not a tagged reply or a PPP command.
    BadReply,
    /// A request whose client disconnected before it was answered: not sent (again).
    Abandoned,
}

impl Drop {
    /// Every reason, in the order counters are reported.
    pub const ALL: [Drop; 7] = [
        Drop::Malformed,
        Drop::TooLarge,
        Drop::QueueFull,
        Drop::AttemptsExhausted,
        Drop::LateReply,
        Drop::BadReply,
        Drop::Abandoned,
    ];

    /// A stable snake_case label.
    pub fn label(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::TooLarge => "too_large",
            Drop::QueueFull => "queue_full",
            Drop::AttemptsExhausted => "attempts_exhausted",
            Drop::LateReply => "late_reply",
            Drop::BadReply => "bad_reply",
            Drop::Abandoned => "abandoned",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }
}

/// Running totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests accepted from clients.
    pub requests: u64,
    /// Replies delivered to clients.
    pub replies: u64,
    /// Requests sent to a server or worker (a re-send counts again).
    pub sent: u64,
    /// Re-sends after a timeout or a worker's death.
    pub resent: u64,
    /// Paranoid Pirate workers that sent READY.
    pub workers_ready: u64,
    /// Paranoid Pirate workers presumed dead (silent, unreachable, or too slow).
    pub workers_lost: u64,
    dropped: [u64; Drop::ALL.len()],
}

impl Counters {
    /// Messages dropped for `reason`.
    pub fn dropped(&self, reason: Drop) -> u64 {
        self.dropped.get(reason.index()).copied().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
struct Request {
    /// The client's routing id and envelope, through the empty delimiter.
    envelope: Frames,
    body: Body,
    tag: u64,
    attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Holder {
    Servers,
    Worker(PeerId),
}

#[derive(Debug)]
struct Outstanding {
    request: Request,
    holder: Holder,
    deadline: Instant,
}

#[derive(Debug)]
struct Worker {
    /// A REQ worker: messages to it need an empty delimiter, and it cannot heartbeat.
    req_socket: bool,
    expiry: Instant,
    busy: Option<u64>,
}

/// The queue state machine.
#[derive(Debug)]
pub struct Queue {
    config: Config,
    waiting: VecDeque<Request>,
    outstanding: HashMap<u64, Outstanding>,
    /// REP servers connected to the DEALER, and requests in flight among them.
    servers: usize,
    servers_busy: usize,
    /// After a failed send to the servers, when to try them again.
    servers_retry_at: Option<Instant>,
    /// Whether the servers have the next request when a worker is idle too.
    servers_turn: bool,
    workers: HashMap<PeerId, Worker>,
    idle: VecDeque<PeerId>,
    next_tag: u64,
    next_heartbeat: Instant,
    transmits: VecDeque<Transmit>,
    counters: Counters,
    /// Clients whose connection ended for good: their requests are not sent (again).
    departed: Departed,
    /// When to look at each request in flight (its timeout) and each Paranoid Pirate
    /// worker (its expiry, which moves on with every message: looked at when it comes).
    timers: Timers<Timer>,
}

/// What a timer of the queue is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Timer {
    /// A request in flight, by tag: its reply is due.
    Request(u64),
    /// A Paranoid Pirate worker that heartbeats: silence past its liveness loses it.
    Worker(PeerId),
}

fn tag_frame(tag: u64) -> Bytes {
    let mut f = Vec::with_capacity(9);
    f.push(TAG_MARK);
    f.extend_from_slice(&tag.to_be_bytes());
    Bytes::from(f)
}

/// The request tag in a frame the queue put in front of a request, if it is one.
pub fn parse_tag(frame: &[u8]) -> Option<u64> {
    let (&mark, rest) = frame.split_first()?;
    let bytes: [u8; 8] = rest.try_into().ok()?;
    (mark == TAG_MARK).then(|| u64::from_be_bytes(bytes))
}

/// `[tag, "", reply...]` -> (tag, reply).
fn split_reply(frames: &[Bytes]) -> Option<(u64, Body)> {
    let (tag, rest) = frames.split_first()?;
    let (empty, reply) = rest.split_first()?;
    if !empty.is_empty() || reply.is_empty() {
        return None;
    }
    Some((parse_tag(tag)?, reply.to_vec()))
}

impl Queue {
    /// A queue with no servers and no workers.
    pub fn new(config: Config, now: Instant) -> Self {
        let next_heartbeat = now + Duration::from_millis(config.heartbeat_interval_ms.max(1));
        Self {
            config,
            waiting: VecDeque::new(),
            outstanding: HashMap::new(),
            servers: 0,
            servers_busy: 0,
            servers_retry_at: None,
            servers_turn: false,
            workers: HashMap::new(),
            idle: VecDeque::new(),
            next_tag: 1,
            next_heartbeat,
            transmits: VecDeque::new(),
            counters: Counters::default(),
            departed: Departed::default(),
            timers: Timers::default(),
        }
    }

    /// Totals so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Requests waiting for a server or worker.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// Registered Paranoid Pirate workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// When [`Queue::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        [self.timers.next(), self.servers_retry_at]
            .into_iter()
            .flatten()
            .fold(self.next_heartbeat, Instant::min)
    }

    /// A message from a client on the frontend ROUTER, routing id first.
    pub fn handle_client(&mut self, now: Instant, frames: Frames) {
        if let [client, rest @ ..] = frames.as_slice()
            && crate::mdp::is_disconnect_notice(rest)
        {
            // libzmq's notice that a client's connection ended (ROUTER_NOTIFY).
            if let Ok(peer) = PeerId::new(client.clone()) {
                self.departed.note(&peer);
            }
            return;
        }
        if let Some(peer) = frames.first().and_then(|id| PeerId::new(id.clone()).ok()) {
            // A client that speaks again is still there (it sent an empty frame itself).
            self.departed.heard_from(&peer);
        }
        let size: usize = frames.iter().map(Bytes::len).sum();
        let Some(delim) = frames
            .iter()
            .skip(1)
            .position(Bytes::is_empty)
            .map(|i| i + 1)
        else {
            return self.drop(Drop::Malformed);
        };
        if delim + 1 >= frames.len() {
            return self.drop(Drop::Malformed);
        }
        if size > self.config.max_message_bytes {
            return self.drop(Drop::TooLarge);
        }
        if self.waiting.len() >= self.config.max_queued {
            return self.drop(Drop::QueueFull);
        }
        let mut envelope = frames;
        let body = envelope.split_off(delim + 1);
        let tag = self.next_tag;
        self.next_tag += 1;
        self.counters.requests += 1;
        self.waiting.push_back(Request {
            envelope,
            body,
            tag,
            attempts: 0,
        });
        self.dispatch(now);
    }

    /// REP servers connected to the backend DEALER now (from socket events).
    pub fn servers_connected(&mut self, now: Instant, count: usize) {
        if count != self.servers {
            debug!(servers = count, "REP servers connected");
        }
        self.servers = count;
        self.dispatch(now);
    }

    /// A message from a REP server on the backend DEALER: `[tag, "", reply...]`.
    pub fn handle_server(&mut self, now: Instant, frames: Frames) {
        let Some((tag, reply)) = split_reply(&frames) else {
            return self.drop(Drop::BadReply);
        };
        // A tag answered already (this is a slow server's reply after a re-send): the
        // client has its one reply.
        if !self.answer(tag, reply) {
            self.drop(Drop::LateReply);
        }
        self.dispatch(now);
    }

    /// The DEALER had no server to take a request after all: a server that just left,
    /// or one whose connection is accepted but not yet through its handshake. The request
    /// waits again, first in line, and the servers are tried again shortly.
    pub fn server_send_failed(&mut self, now: Instant, tag: u64) {
        debug!(tag, "no REP server could take a request yet");
        self.servers_retry_at = Some(now + Duration::from_millis(SERVER_RETRY_MS));
        if let Some(o) = self.outstanding.remove(&tag) {
            self.servers_busy = self.servers_busy.saturating_sub(1);
            let mut request = o.request;
            request.attempts = request.attempts.saturating_sub(1);
            self.waiting.push_front(request);
        }
    }

    /// A message from a Paranoid Pirate worker on its ROUTER, routing id first.
    pub fn handle_worker(&mut self, now: Instant, mut frames: Frames) {
        if frames.is_empty() {
            return self.drop(Drop::BadReply);
        }
        let Ok(peer) = PeerId::new(frames.remove(0)) else {
            return self.drop(Drop::BadReply);
        };
        if crate::mdp::is_disconnect_notice(&frames) {
            // Its connection ended: what it held goes to another at once.
            self.lose_worker(&peer, true);
            return self.dispatch(now);
        }
        // A REQ socket puts an empty delimiter first.
        let req_socket = frames.first().is_some_and(Bytes::is_empty) && frames.len() > 1;
        if req_socket {
            frames.remove(0);
        }
        let expiry = now + self.liveness();
        if let Some(w) = self.workers.get_mut(&peer) {
            w.expiry = expiry;
        }
        match frames.as_slice() {
            [cmd] if cmd.as_ref() == PPP_READY => {
                // A READY from a known worker means it restarted its conversation: what it
                // held is lost.
                self.lose_worker(&peer, false);
                self.counters.workers_ready += 1;
                self.workers.insert(
                    peer.clone(),
                    Worker {
                        req_socket,
                        expiry,
                        busy: None,
                    },
                );
                // A REQ worker cannot heartbeat: only its requests' timeouts bound it.
                if !req_socket {
                    self.timers.set(Timer::Worker(peer.clone()), expiry);
                }
                self.idle.push_back(peer);
            }
            [cmd] if cmd.as_ref() == PPP_HEARTBEAT => {}
            _ => {
                let Some((tag, reply)) = split_reply(&frames) else {
                    return self.drop(Drop::BadReply);
                };
                let holds = self.workers.get(&peer).is_some_and(|w| w.busy == Some(tag));
                if holds {
                    if let Some(w) = self.workers.get_mut(&peer) {
                        w.busy = None;
                    }
                    self.idle.push_back(peer);
                }
                if !self.answer(tag, reply) {
                    self.drop(Drop::LateReply);
                }
            }
        }
        self.dispatch(now);
    }

    /// libzmq could not route a message to a worker: it is gone.
    pub fn handle_unroutable_worker(&mut self, now: Instant, peer: &PeerId) {
        self.lose_worker(peer, true);
        self.dispatch(now);
    }

    /// Time has reached [`Queue::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.servers_retry_at.is_some_and(|t| t <= now) {
            self.servers_retry_at = None;
        }
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Worker(peer) => match self.workers.get(&peer) {
                    Some(w) if w.expiry <= now => self.lose_worker(&peer, true),
                    Some(w) => {
                        let expiry = w.expiry;
                        self.timers.set(Timer::Worker(peer), expiry);
                    }
                    None => {}
                },
                Timer::Request(tag) => self.overdue(now, tag),
            }
        }
        if self.next_heartbeat <= now {
            let beats: Vec<Transmit> = self
                .workers
                .iter()
                .filter(|(_, w)| !w.req_socket)
                .map(|(peer, _)| Transmit {
                    dest: Dest::Workers,
                    frames: vec![peer.as_bytes().clone(), Bytes::from_static(PPP_HEARTBEAT)],
                })
                .collect();
            self.transmits.extend(beats);
            self.next_heartbeat =
                now + Duration::from_millis(self.config.heartbeat_interval_ms.max(1));
        }
        self.dispatch(now);
    }

    /// A request's reply did not come in time: its holder's slot is given up and the
    /// request goes back in line (or is dropped after its attempts).
    fn overdue(&mut self, now: Instant, tag: u64) {
        // A stale timer: answered, or sent again with a later deadline.
        if self.outstanding.get(&tag).is_none_or(|o| o.deadline > now) {
            return;
        }
        let Some(o) = self.outstanding.remove(&tag) else {
            return;
        };
        match o.holder {
            // The server may be dead or only slow; either way its slot is given up
            // (a dead one leaves the server count soon).
            Holder::Servers => self.servers_busy = self.servers_busy.saturating_sub(1),
            Holder::Worker(peer) => {
                // A worker that overran is presumed stuck; it may READY again.
                if let Some(w) = self.workers.get_mut(&peer) {
                    w.busy = None;
                }
                self.lose_worker(&peer, true);
            }
        }
        self.retry(o.request);
    }

    fn liveness(&self) -> Duration {
        Duration::from_millis(self.config.heartbeat_interval_ms.max(1))
            * self.config.heartbeat_liveness.max(1)
    }

    /// Forgets a worker; the request it held goes back to the head of the line.
    fn lose_worker(&mut self, peer: &PeerId, lost: bool) {
        let Some(w) = self.workers.remove(peer) else {
            return;
        };
        self.timers.cancel(&Timer::Worker(peer.clone()));
        self.idle.retain(|p| p != peer);
        if lost {
            warn!(worker = %peer, "Paranoid Pirate worker lost");
            self.counters.workers_lost += 1;
        }
        if let Some(tag) = w.busy
            && let Some(o) = self.outstanding.remove(&tag)
        {
            self.retry(o.request);
        }
    }

    /// Puts a request that got no reply back in line, or drops it after its attempts or
    /// when its client has gone.
    fn retry(&mut self, request: Request) {
        if self.abandoned(&request) {
            self.drop(Drop::Abandoned);
            return;
        }
        if request.attempts >= self.config.max_attempts {
            self.drop(Drop::AttemptsExhausted);
            return;
        }
        debug!(
            tag = request.tag,
            attempts = request.attempts,
            "request goes back in line"
        );
        self.counters.resent += 1;
        self.waiting.push_front(request);
    }

    /// Sends the first reply for `tag` to its client; false if the tag is not outstanding.
    fn answer(&mut self, tag: u64, reply: Body) -> bool {
        let Some(o) = self.outstanding.remove(&tag) else {
            return false;
        };
        self.timers.cancel(&Timer::Request(tag));
        if o.holder == Holder::Servers {
            self.servers_busy = self.servers_busy.saturating_sub(1);
        }
        let mut frames = o.request.envelope;
        frames.extend(reply);
        self.counters.replies += 1;
        self.transmits.push_back(Transmit {
            dest: Dest::Frontend,
            frames,
        });
        true
    }

    /// Sends waiting requests: idle Paranoid Pirate workers first (least recently used),
    /// then REP servers up to one request in flight each.
    fn dispatch(&mut self, now: Instant) {
        let deadline = now + Duration::from_millis(self.config.request_timeout_ms.max(1));
        while let Some(next) = self.waiting.front() {
            if self.abandoned(next) {
                self.waiting.pop_front();
                self.drop(Drop::Abandoned);
                continue;
            }
            let server_free = self.servers_busy < self.servers && self.servers_retry_at.is_none();
            // With both kinds free, take turns, so both share the load.
            let both = server_free && !self.idle.is_empty();
            let use_server = server_free && (self.idle.is_empty() || self.servers_turn);
            if both {
                self.servers_turn = !use_server;
            }
            let holder = if use_server {
                Holder::Servers
            } else if let Some(peer) = self.idle.pop_front() {
                Holder::Worker(peer)
            } else {
                break;
            };
            let Some(mut request) = self.waiting.pop_front() else {
                break;
            };
            request.attempts += 1;
            self.counters.sent += 1;
            debug!(tag = request.tag, to = ?holder, busy = self.servers_busy, servers = self.servers, "sending a request");
            let payload = [tag_frame(request.tag), Bytes::new()]
                .into_iter()
                .chain(request.body.iter().cloned());
            let transmit = match &holder {
                Holder::Servers => {
                    self.servers_busy += 1;
                    Transmit {
                        dest: Dest::Servers,
                        frames: payload.collect(),
                    }
                }
                Holder::Worker(peer) => {
                    let Some(w) = self.workers.get_mut(peer) else {
                        self.waiting.push_front(request);
                        continue;
                    };
                    w.busy = Some(request.tag);
                    let mut frames = vec![peer.as_bytes().clone()];
                    if w.req_socket {
                        frames.push(Bytes::new());
                    }
                    frames.extend(payload);
                    Transmit {
                        dest: Dest::Workers,
                        frames,
                    }
                }
            };
            self.transmits.push_back(transmit);
            self.timers.set(Timer::Request(request.tag), deadline);
            self.outstanding.insert(
                request.tag,
                Outstanding {
                    request,
                    holder,
                    deadline,
                },
            );
        }
    }

    /// Whether the client of `request` is gone for good.
    fn abandoned(&self, request: &Request) -> bool {
        request
            .envelope
            .first()
            .and_then(|id| PeerId::new(id.clone()).ok())
            .is_some_and(|peer| self.departed.contains(&peer))
    }

    fn drop(&mut self, reason: Drop) {
        let n = match self.counters.dropped.get_mut(reason.index()) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => 0,
        };
        if n.is_power_of_two() {
            warn!(
                reason = reason.label(),
                total = n,
                "queue dropped a message"
            );
        }
    }
}
