//! The native client's session (`docs/protocol.md`, "The scale0 native client protocol"):
//! request ids, many requests in flight, retries with the same id, ACCEPTED, partial
//! replies and duplicate answers, over one broker or several independent ones.
//!
//! The driver calls [`Session::request`], sends each [`Transmit`] that
//! [`Session::poll_transmit`] gives on the DEALER of the broker it names, feeds every
//! message it reads to [`Session::handle_message`] with the broker it came from, sleeps
//! until [`Session::poll_timeout`] and reads how each request ended from
//! [`Session::poll_event`]. Each request carries a tag of the driver's own (an index, a
//! send time), handed back when the request ends, so the driver keeps no table of its own.
//!
//! With several brokers (`docs/protocol.md`, "Several brokers"): a new request goes to the
//! live broker holding the fewest of this session's requests; its retries go to the broker
//! that holds it; a broker is judged dead after [`Config::dead_after_silent_attempts`]
//! attempts of one of its requests in a row during which it sent nothing at all, and then
//! every request it held moves to a live broker with the same id (so a request may run on
//! both: execution is at least once). A dead broker is asked every
//! [`Config::probe_interval_ms`] whether it is back; anything it sends makes it live again.

use crate::mdp::{Body, DecodeError, Frames, Message, NativeCommand, RequestId, Status};
use crate::time::Instant;
use crate::timers::Timers;
use crate::{ServiceName, Transmit};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// First frame of an error reply from a scale0 worker whose handler failed; the second
/// frame is a human-readable message (`docs/protocol.md`, worker rules).
pub const ERROR_REPLY_MARKER: &[u8] = b"scale0.error";

/// The MMI service a dead broker is probed with: any answer shows it is back.
const PROBE_SERVICE: &[u8] = b"mmi.service";
/// First byte of a probe's request id; the ids of requests are decimal digits.
const PROBE_ID_PREFIX: u8 = b'p';
/// First byte of the id of the question whether a broker reads bundles.
const BUNDLE_PROBE_PREFIX: u8 = b'b';

/// How patient a client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long one attempt waits for its answer, in milliseconds, counted from the send
    /// or from the latest ACCEPTED or partial reply.
    pub timeout_ms: u64,
    /// How many times a request is re-sent (same id) after a timeout, or moved to another
    /// broker: a request has `retries + 1` attempts in all, on whichever brokers.
    pub retries: u32,
    /// Ask the broker to confirm each request once it holds it (ACCEPTED; a durable
    /// broker, once it is on disk). Off, the broker sends only the answer. With several
    /// brokers, retries ask for ACCEPTED whatever this says, so that a live broker
    /// answers every retry at once.
    pub acknowledged: bool,
    /// With several brokers: attempts of one request in a row, each timed out with nothing
    /// at all from its broker since it was sent, after which that broker is judged dead
    /// (at least 1). Two, because with `acknowledged` off a first attempt is silent while
    /// a slow worker runs it, whereas a live broker answers a retry with ACCEPTED.
    pub dead_after_silent_attempts: u32,
    /// With several brokers: how often a broker judged dead is asked (an `mmi.service`
    /// request) whether it is back, in milliseconds.
    pub probe_interval_ms: u64,
    /// Send requests that are ready together as one bundle ([`crate::bundle`]) to a
    /// broker that reads them: the session asks each broker (`mmi.bundle`) with its first
    /// request, and sends requests one by one until the answer says yes.
    pub bundle: bool,
}

impl Config {
    /// The default wait for one attempt.
    pub const DEFAULT_TIMEOUT_MS: u64 = 2500;
    /// The default number of re-sends.
    pub const DEFAULT_RETRIES: u32 = 2;
    /// The default number of silent attempts that make a broker dead.
    pub const DEFAULT_DEAD_AFTER_SILENT_ATTEMPTS: u32 = 2;
    /// The default pause between probes of a dead broker.
    pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 2500;

    /// Attempts in all: the first send and every retry.
    pub fn attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// The deadline sent with each request: when the client will have given up, so the
    /// broker stops trying then too.
    pub fn deadline_ms(&self) -> u64 {
        self.timeout_ms.saturating_mul(u64::from(self.attempts()))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            retries: Self::DEFAULT_RETRIES,
            acknowledged: false,
            dead_after_silent_attempts: Self::DEFAULT_DEAD_AFTER_SILENT_ATTEMPTS,
            probe_interval_ms: Self::DEFAULT_PROBE_INTERVAL_MS,
            bundle: false,
        }
    }
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The worker's reply.
    Reply(Body),
    /// The worker's handler failed; its message (UTF-8 by convention).
    Failed(Bytes),
    /// The broker ended the request without a reply.
    Rejected {
        /// Why, for programs.
        status: Status,
        /// Why, for people.
        message: Bytes,
    },
    /// No answer after every attempt.
    Unanswered {
        /// Sends made, the first and every retry.
        attempts: u32,
    },
}

impl Outcome {
    fn of_final(body: Body) -> Self {
        match body.as_slice() {
            [marker, message] if marker.as_ref() == ERROR_REPLY_MARKER => {
                Self::Failed(message.clone())
            }
            _ => Self::Reply(body),
        }
    }
}

/// What the driver learns about its requests and brokers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<T> {
    /// The broker holds the request.
    Accepted {
        /// Which request.
        id: RequestId,
    },
    /// A partial reply streamed before the final one.
    Partial {
        /// Which request.
        id: RequestId,
        /// The partial reply.
        body: Body,
    },
    /// A request timed out and is re-sent now, with the same id: to the broker that holds
    /// it, or to another when that one was judged dead.
    Retrying {
        /// Which request.
        id: RequestId,
        /// The attempt about to be made, 2 for the first retry.
        attempt: u32,
        /// The broker it goes to.
        broker: usize,
    },
    /// A broker was judged dead; its requests moved to live brokers. Whatever is still
    /// queued for it on its connection is stale: a driver may drop that connection and
    /// open a fresh one (same routing id).
    BrokerDead {
        /// Which broker.
        broker: usize,
    },
    /// A broker judged dead sent something again and takes new requests.
    BrokerBack {
        /// Which broker.
        broker: usize,
    },
    /// A request ended; the session forgets it.
    Done {
        /// Which request.
        id: RequestId,
        /// The driver's tag given to [`Session::request`].
        tag: T,
        /// How it ended.
        outcome: Outcome,
    },
}

/// What a session has seen, for summaries and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests sent (not counting retries).
    pub sent: u64,
    /// Re-sends after a timeout, moves included.
    pub retries: u64,
    /// Re-sends that went to another broker than the one that held the request.
    pub moved: u64,
    /// Times a broker was judged dead.
    pub brokers_dead: u64,
    /// Probes sent to brokers judged dead.
    pub probes: u64,
    /// Final answers for requests no longer outstanding (a retry crossing an answer, or
    /// both brokers answering a moved request).
    pub duplicates: u64,
    /// Messages from the broker that are not valid native answers; dropped.
    pub malformed: u64,
    /// Bundles sent: requests that were ready together, as one message.
    pub bundles_sent: u64,
}

struct Outstanding<T> {
    service: ServiceName,
    body: Body,
    tag: T,
    /// Sends so far, on every broker.
    sends: u32,
    /// The broker that holds it: every send after the first went there too, unless it
    /// moved.
    broker: usize,
    /// When its current attempt was sent.
    sent_at: Instant,
    /// Attempts in a row on `broker` that timed out with nothing from that broker.
    silent: u32,
}

/// What the session knows of one broker.
#[derive(Debug, Default)]
struct Link {
    /// Judged dead: no new requests; probed at `next_probe`.
    dead: bool,
    next_probe: Option<Instant>,
    /// When anything last came from it.
    heard: Option<Instant>,
    /// This session's requests it holds.
    holds: usize,
    /// It said `not_leader` (a cluster node that does not serve): no new requests until
    /// it accepts one again or every broker has said so (the cluster is electing).
    not_leader: bool,
    bundles: Bundles,
    /// When it was last asked whether it reads bundles.
    asked_at: Option<Instant>,
}

/// Whether a broker reads bundles, as far as the session knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Bundles {
    /// Not asked yet (or asked of a broker since judged dead).
    #[default]
    Unknown,
    /// Asked (`mmi.bundle`), no answer yet.
    Asked,
    Yes,
    No,
}

/// One client's requests, from first send to their end.
pub struct Session<T> {
    config: Config,
    next_id: u64,
    outstanding: HashMap<RequestId, Outstanding<T>>,
    /// Each outstanding request's current attempt deadline.
    timers: Timers<RequestId>,
    links: Vec<Link>,
    /// Where the search for the least loaded broker starts, so ties take turns.
    rotor: usize,
    probes_sent: u64,
    transmits: VecDeque<Transmit<usize>>,
    events: VecDeque<Event<T>>,
    counters: Counters,
}

impl<T> std::fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.config)
            .field("outstanding", &self.outstanding.len())
            .field("links", &self.links)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<T> Session<T> {
    /// A session with one broker (index 0) and no requests yet.
    pub fn new(config: Config) -> Self {
        Self::with_brokers(config, 1)
    }

    /// A session with `brokers` independent brokers (at least one), numbered 0 up as the
    /// driver numbers its connections.
    pub fn with_brokers(config: Config, brokers: usize) -> Self {
        Self {
            config,
            next_id: 0,
            outstanding: HashMap::new(),
            timers: Timers::default(),
            links: (0..brokers.max(1)).map(|_| Link::default()).collect(),
            rotor: 0,
            probes_sent: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What it has seen so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Requests sent and not yet ended.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// How many brokers it spreads requests over.
    pub fn brokers(&self) -> usize {
        self.links.len()
    }

    /// Whether broker `broker` takes new requests (not judged dead).
    pub fn is_live(&self, broker: usize) -> bool {
        self.links.get(broker).is_some_and(|l| !l.dead)
    }

    /// Sends a request to `service`; `tag` comes back with its end. Ids are never reused
    /// within a session, since the broker answers a known id from its memory.
    pub fn request(&mut self, now: Instant, service: ServiceName, body: Body, tag: T) -> RequestId {
        self.next_id += 1;
        let id = RequestId::from(self.next_id);
        let broker = self.choose();
        self.links[broker].holds += 1;
        self.outstanding.insert(
            id.clone(),
            Outstanding {
                service,
                body,
                tag,
                sends: 0,
                broker,
                sent_at: now,
                silent: 0,
            },
        );
        self.send(now, &id);
        self.counters.sent += 1;
        id
    }

    /// Forgets a request without an event; a late answer to it counts as a duplicate.
    pub fn cancel(&mut self, id: &RequestId) -> Option<T> {
        self.timers.cancel(id);
        let o = self.outstanding.remove(id)?;
        self.release(o.broker);
        Some(o.tag)
    }

    /// Forgets every outstanding request (a driver giving up on a run).
    pub fn cancel_all(&mut self) {
        for id in self.outstanding.keys() {
            self.timers.cancel(id);
        }
        self.outstanding.clear();
        for l in &mut self.links {
            l.holds = 0;
            // The question went with the queue: ask again.
            if l.bundles == Bundles::Asked {
                l.bundles = Bundles::Unknown;
            }
        }
        self.transmits.clear();
    }

    /// A message the driver read from broker `broker`. Anything but a native answer is
    /// dropped and counted; so is a message from a broker the session does not have.
    pub fn handle_message(
        &mut self,
        now: Instant,
        broker: usize,
        frames: Frames,
    ) -> Result<(), DecodeError> {
        if broker >= self.links.len() {
            self.counters.malformed += 1;
            return Ok(());
        }
        self.heard(now, broker);
        let result = crate::bundle::each(frames, |m| self.handle_answer(now, broker, m));
        if result == Err(DecodeError::BadBundle) {
            self.counters.malformed += 1;
        }
        result
    }

    fn handle_answer(
        &mut self,
        now: Instant,
        broker: usize,
        frames: Frames,
    ) -> Result<(), DecodeError> {
        let cmd = match Message::decode(frames) {
            Ok(Message::Native(cmd)) => cmd,
            Ok(_) => {
                self.counters.malformed += 1;
                return Ok(());
            }
            Err(e) => {
                self.counters.malformed += 1;
                return Err(e);
            }
        };
        if cmd.id().as_bytes().first() == Some(&PROBE_ID_PREFIX) {
            // A probe's answer: it has done its work by arriving.
            return Ok(());
        }
        if cmd.id().as_bytes().first() == Some(&BUNDLE_PROBE_PREFIX) {
            let yes = matches!(&cmd, NativeCommand::Final { body, .. }
                if matches!(&body[..], [code] if code.as_ref() == b"200"));
            // An ACCEPTED is no answer yet.
            if yes || !matches!(cmd, NativeCommand::Accepted { .. }) {
                self.links[broker].bundles = if yes { Bundles::Yes } else { Bundles::No };
            }
            return Ok(());
        }
        match cmd {
            NativeCommand::Error {
                id,
                status: Status::NotLeader,
                ..
            } if self.links.len() > 1 => self.not_leader(now, broker, &id),
            NativeCommand::Accepted { id } => {
                self.links[broker].not_leader = false;
                if self.extend(now, broker, &id) {
                    self.events.push_back(Event::Accepted { id });
                }
            }
            NativeCommand::Partial { id, body } => {
                if self.extend(now, broker, &id) {
                    self.events.push_back(Event::Partial { id, body });
                }
            }
            // An answer counts from whichever broker: a moved request may be answered by
            // the broker it left, which was slow rather than dead.
            NativeCommand::Final { id, body } => {
                self.links[broker].not_leader = false;
                self.finish(id, Outcome::of_final(body));
            }
            NativeCommand::Error {
                id,
                status,
                message,
            } => self.finish(id, Outcome::Rejected { status, message }),
            NativeCommand::Request { .. } => self.counters.malformed += 1,
        }
        Ok(())
    }

    /// Re-sends every request whose attempt ran out (moving it off a broker judged dead),
    /// or ends it when it had every attempt; probes the dead brokers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for broker in 0..self.links.len() {
            if self.links[broker].next_probe.is_some_and(|t| t <= now) {
                self.probe(now, broker);
            }
        }
        while let Some(id) = self.timers.pop_due(now) {
            let Some(o) = self.outstanding.get_mut(&id) else {
                continue;
            };
            let broker = o.broker;
            let heard_since = self.links[broker].heard.is_some_and(|h| h > o.sent_at);
            o.silent = if heard_since { 0 } else { o.silent + 1 };
            if o.silent >= self.config.dead_after_silent_attempts.max(1)
                && self.links.len() > 1
                && !self.links[broker].dead
                // Moves this request along with every other the broker held.
                && self.judge_dead(now, broker)
            {
                continue;
            }
            self.retry(now, &id);
        }
    }

    /// When [`Session::handle_timeout`] is next due; `None` with nothing outstanding and
    /// no dead broker to probe.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probes = self.links.iter().filter_map(|l| l.next_probe).min();
        match (self.timers.next(), probes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next message to send, and the broker (its index) to send it to. Messages for
    /// one broker that follow one another go as one bundle when that broker reads them.
    pub fn poll_transmit(&mut self) -> Option<Transmit<usize>> {
        let first = self.transmits.pop_front()?;
        let dest = first.dest;
        if self.links.get(dest).map(|l| l.bundles) != Some(Bundles::Yes) {
            return Some(first);
        }
        let transmits = &mut self.transmits;
        let (frames, n) = crate::bundle::gather(first.frames, |p| {
            transmits
                .front()
                .filter(|t| t.dest == dest && p.accepts(&t.frames))?;
            transmits.pop_front().map(|t| t.frames)
        });
        if n > 1 {
            self.counters.bundles_sent += 1;
        }
        Some(Transmit { dest, frames })
    }

    /// The next thing that happened to a request or a broker.
    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    fn attempt_deadline(&self, now: Instant) -> Instant {
        now + Duration::from_millis(self.config.timeout_ms)
    }

    /// The broker for a new request: the live one holding fewest of this session's
    /// requests, ties taking turns; when every broker is judged dead, the least loaded of
    /// all (its retries move as soon as one is back).
    fn choose(&mut self) -> usize {
        let b = self
            .least_loaded(true)
            .or_else(|| self.least_loaded(false))
            .unwrap_or(0);
        self.rotor = (b + 1) % self.links.len();
        b
    }

    fn least_loaded(&self, live_only: bool) -> Option<usize> {
        let n = self.links.len();
        (0..n)
            .map(|k| (self.rotor + k) % n)
            .filter(|&b| !live_only || !(self.links[b].dead || self.links[b].not_leader))
            .min_by_key(|&b| self.links[b].holds)
    }

    /// Broker `broker`, a cluster node that does not lead, refused `id`: it moves at once
    /// to another broker, same id (a refusal ran nothing). When every broker has refused,
    /// the cluster is electing: it waits for its attempt's timeout where it is.
    fn not_leader(&mut self, now: Instant, broker: usize, id: &RequestId) {
        self.links[broker].not_leader = true;
        if self.outstanding.get(id).is_none_or(|o| o.broker != broker) {
            return;
        }
        let Some(to) = self.least_loaded(true) else {
            for l in &mut self.links {
                l.not_leader = false;
            }
            return;
        };
        self.rotor = (to + 1) % self.links.len();
        self.release(broker);
        self.links[to].holds += 1;
        self.counters.moved += 1;
        if let Some(o) = self.outstanding.get_mut(id) {
            o.broker = to;
            o.silent = 0;
            // Not an attempt: the refused one never reached a worker.
            o.sends = o.sends.saturating_sub(1);
        }
        self.send(now, id);
    }

    /// Sends the next attempt of `id` to the broker that holds it.
    fn send(&mut self, now: Instant, id: &RequestId) {
        let several = self.links.len() > 1;
        let Some(o) = self.outstanding.get_mut(id) else {
            return;
        };
        o.sends += 1;
        o.sent_at = now;
        // The attempts left, this one included: what a broker that first sees the request
        // now (a moved one) may spend on it.
        let left = self.config.attempts().saturating_sub(o.sends - 1).max(1);
        let broker = o.broker;
        self.ask_bundles(now, broker);
        let Some(o) = self.outstanding.get(id) else {
            return;
        };
        let frames = Message::Native(NativeCommand::Request {
            id: id.clone(),
            service: o.service.clone(),
            deadline_ms: Some(self.config.timeout_ms.saturating_mul(u64::from(left))),
            // A retry asks for ACCEPTED when there is another broker to move to: a live
            // broker answers it at once, so its silence means the broker, not a slow worker.
            ack: self.config.acknowledged || (several && o.sends > 1),
            body: o.body.clone(),
        })
        .encode();
        self.transmits.push_back(Transmit {
            dest: o.broker,
            frames,
        });
        let due = self.attempt_deadline(now);
        self.timers.set(id.clone(), due);
    }

    /// Asks `broker` whether it reads bundles, ahead of the first request it is sent.
    fn ask_bundles(&mut self, now: Instant, broker: usize) {
        if !self.config.bundle {
            return;
        }
        let Some(link) = self.links.get_mut(broker) else {
            return;
        };
        if link.bundles != Bundles::Unknown {
            return;
        }
        link.bundles = Bundles::Asked;
        link.asked_at = Some(now);
        let timeout = self.config.timeout_ms;
        self.ask(
            broker,
            BUNDLE_PROBE_PREFIX,
            crate::bundle::SERVICE,
            timeout,
            Vec::new(),
        );
    }

    /// Sends `broker` a question of the session's own (not a user's request): an MMI
    /// request whose id starts with `prefix`, answered without ACCEPTED.
    fn ask(&mut self, broker: usize, prefix: u8, service: &'static [u8], wait_ms: u64, body: Body) {
        self.probes_sent += 1;
        let id = format!("{}{}", prefix as char, self.probes_sent);
        let (Ok(id), Ok(service)) = (
            RequestId::new(Bytes::from(id)),
            ServiceName::new(Bytes::from_static(service)),
        ) else {
            return;
        };
        let frames = Message::Native(NativeCommand::Request {
            id,
            service,
            deadline_ms: Some(wait_ms),
            ack: false,
            body,
        })
        .encode();
        self.transmits.push_back(Transmit {
            dest: broker,
            frames,
        });
    }

    /// The next attempt of `id` after a timeout: on its broker, or on a live one when its
    /// broker is judged dead; or its end when it had every attempt.
    fn retry(&mut self, now: Instant, id: &RequestId) {
        let attempts = self.config.attempts();
        let Some(o) = self.outstanding.get(id) else {
            return;
        };
        if o.sends >= attempts {
            if let Some(o) = self.outstanding.remove(id) {
                self.timers.cancel(id);
                self.release(o.broker);
                self.events.push_back(Event::Done {
                    id: id.clone(),
                    tag: o.tag,
                    outcome: Outcome::Unanswered { attempts: o.sends },
                });
            }
            return;
        }
        let from = o.broker;
        let to = if self.links[from].dead {
            match self.least_loaded(true) {
                Some(to) => {
                    self.rotor = (to + 1) % self.links.len();
                    to
                }
                None => from,
            }
        } else {
            from
        };
        if to != from {
            self.release(from);
            self.links[to].holds += 1;
            self.counters.moved += 1;
            if let Some(o) = self.outstanding.get_mut(id) {
                o.broker = to;
                o.silent = 0;
            }
        }
        self.counters.retries += 1;
        // A timeout may mean the broker no longer reads bundles (an older one took its
        // place): ask again, and send one by one until it says. A question unanswered for
        // a timeout was lost: ask again. Once per timeout, however many requests retry.
        let timeout = Duration::from_millis(self.config.timeout_ms);
        if let Some(l) = self.links.get_mut(to)
            && (l.bundles == Bundles::Yes
                || (l.bundles == Bundles::Asked && l.asked_at.is_none_or(|t| t + timeout <= now)))
        {
            l.bundles = Bundles::Unknown;
        }
        self.send(now, id);
        let attempt = self.outstanding.get(id).map_or(0, |o| o.sends);
        self.events.push_back(Event::Retrying {
            id: id.clone(),
            attempt,
            broker: to,
        });
    }

    /// `broker` is judged dead: no new requests, a probe every interval, and every request
    /// it held moves to a live broker now. With none live they stay, to retry where they
    /// are at their own timeouts (or move then, if one is back); false then.
    fn judge_dead(&mut self, now: Instant, broker: usize) -> bool {
        let link = &mut self.links[broker];
        link.dead = true;
        // What comes back may be another broker.
        link.bundles = Bundles::Unknown;
        link.next_probe = Some(now + Duration::from_millis(self.config.probe_interval_ms));
        self.counters.brokers_dead += 1;
        self.events.push_back(Event::BrokerDead { broker });
        if self.least_loaded(true).is_none() {
            return false;
        }
        let mut held: Vec<RequestId> = self
            .outstanding
            .iter()
            .filter(|(_, o)| o.broker == broker)
            .map(|(id, _)| id.clone())
            .collect();
        // Oldest first, so they keep their order on the broker they move to.
        held.sort_by_key(|id| self.outstanding.get(id).map(|o| o.sent_at));
        for id in held {
            self.retry(now, &id);
        }
        true
    }

    /// Asks a dead broker whether it is back.
    fn probe(&mut self, now: Instant, broker: usize) {
        self.counters.probes += 1;
        let wait = self.config.probe_interval_ms;
        let body = vec![Bytes::from_static(PROBE_SERVICE)];
        self.ask(broker, PROBE_ID_PREFIX, PROBE_SERVICE, wait, body);
        self.links[broker].next_probe =
            Some(now + Duration::from_millis(self.config.probe_interval_ms));
    }

    /// Something came from `broker`: it is alive.
    fn heard(&mut self, now: Instant, broker: usize) {
        let link = &mut self.links[broker];
        link.heard = Some(now);
        if link.dead {
            link.dead = false;
            link.next_probe = None;
            self.events.push_back(Event::BrokerBack { broker });
        }
    }

    fn release(&mut self, broker: usize) {
        if let Some(l) = self.links.get_mut(broker) {
            l.holds = l.holds.saturating_sub(1);
        }
    }

    /// The broker holds or works on `id`: its attempt waits a full timeout from now. Only
    /// the broker that holds it counts: one it left may still stream partials of its own
    /// execution.
    fn extend(&mut self, now: Instant, broker: usize, id: &RequestId) -> bool {
        if self.outstanding.get(id).is_none_or(|o| o.broker != broker) {
            return false;
        }
        self.timers.set(id.clone(), self.attempt_deadline(now));
        true
    }

    fn finish(&mut self, id: RequestId, outcome: Outcome) {
        self.timers.cancel(&id);
        match self.outstanding.remove(&id) {
            Some(o) => {
                self.release(o.broker);
                self.events.push_back(Event::Done {
                    id,
                    tag: o.tag,
                    outcome,
                });
            }
            None => self.counters.duplicates += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn svc() -> ServiceName {
        ServiceName::new(Bytes::from_static(b"echo")).unwrap()
    }

    fn answer(cmd: NativeCommand) -> Frames {
        Message::Native(cmd).encode()
    }

    fn sent(s: &mut Session<u32>) -> Vec<(RequestId, bool, Option<u64>)> {
        std::iter::from_fn(|| s.poll_transmit())
            .map(|t| match Message::decode(t.frames).unwrap() {
                Message::Native(NativeCommand::Request {
                    id,
                    ack,
                    deadline_ms,
                    ..
                }) => (id, ack, deadline_ms),
                other => panic!("sent {other:?}"),
            })
            .collect()
    }

    fn events(s: &mut Session<u32>) -> Vec<Event<u32>> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// What was sent, each message with the ids of the requests in it (a bundle: several).
    fn sent_messages(s: &mut Session<u32>) -> Vec<Vec<RequestId>> {
        std::iter::from_fn(|| s.poll_transmit())
            .map(|t| {
                let messages = if crate::bundle::is_bundle(&t.frames) {
                    crate::bundle::decode(&t.frames).unwrap()
                } else {
                    vec![t.frames]
                };
                messages
                    .into_iter()
                    .map(|m| match Message::decode(m).unwrap() {
                        Message::Native(cmd) => cmd.id().clone(),
                        other => panic!("sent {other:?}"),
                    })
                    .collect()
            })
            .collect()
    }

    fn is_question(id: &RequestId) -> bool {
        id.as_bytes().first() == Some(&BUNDLE_PROBE_PREFIX)
    }

    #[test]
    fn requests_are_bundled_once_the_broker_says_it_reads_bundles_and_a_timeout_asks_again() {
        let mut s = Session::new(Config {
            bundle: true,
            ..Config::default()
        });
        let first = s.request(at(0), svc(), vec![], 0);
        let out = sent_messages(&mut s);
        // The question goes first, alone, and the request alone after it.
        assert_eq!(out.len(), 2);
        assert!(is_question(&out[0][0]));
        assert_eq!(out[1], vec![first]);
        let question = out[0][0].clone();
        let yes = answer(NativeCommand::Final {
            id: question,
            body: vec![Bytes::from_static(b"200")],
        });
        s.handle_message(at(1), 0, yes).unwrap();
        assert!(
            events(&mut s).is_empty(),
            "the answer is no event of the user's"
        );
        let ids: Vec<_> = (1..=3)
            .map(|t| s.request(at(2), svc(), vec![], t))
            .collect();
        assert_eq!(sent_messages(&mut s), vec![ids.clone()], "one bundle");
        // Every request times out at once: one question, and the retries one by one
        // until the broker answers it again.
        s.handle_timeout(at(2502));
        let out = sent_messages(&mut s);
        assert_eq!(out.iter().flatten().filter(|id| is_question(id)).count(), 1);
        assert!(out.iter().all(|m| m.len() == 1), "{out:?}");
        assert_eq!(out.len(), 1 + 1 + ids.len());
    }

    #[test]
    fn a_broker_that_does_not_know_bundles_is_sent_requests_one_by_one() {
        let mut s = Session::new(Config {
            bundle: true,
            ..Config::default()
        });
        s.request(at(0), svc(), vec![], 0);
        let question = sent_messages(&mut s)[0][0].clone();
        let no = answer(NativeCommand::Final {
            id: question,
            body: vec![Bytes::from_static(b"501")],
        });
        s.handle_message(at(1), 0, no).unwrap();
        for t in 1..=3 {
            s.request(at(2), svc(), vec![], t);
        }
        let out = sent_messages(&mut s);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|m| m.len() == 1 && !is_question(&m[0])));
    }

    #[test]
    fn ids_are_fresh_and_the_deadline_covers_every_attempt() {
        let mut s = Session::new(Config {
            acknowledged: true,
            ..Config::default()
        });
        let a = s.request(at(0), svc(), vec![], 1);
        let b = s.request(at(0), svc(), vec![], 2);
        assert_ne!(a, b);
        assert_eq!(
            sent(&mut s),
            vec![(a, true, Some(7500)), (b, true, Some(7500))]
        );
    }

    #[test]
    fn a_request_is_resent_with_its_id_then_ends_unanswered() {
        let mut s = Session::new(Config::default());
        let id = s.request(at(0), svc(), vec![Bytes::from_static(b"x")], 7);
        sent(&mut s);
        s.handle_timeout(at(2499));
        assert!(sent(&mut s).is_empty(), "not before its timeout");
        assert_eq!(s.poll_timeout(), Some(at(2500)));
        s.handle_timeout(at(2500));
        assert_eq!(sent(&mut s)[0].0, id);
        s.handle_timeout(at(5000));
        s.handle_timeout(at(7500));
        assert_eq!(
            events(&mut s),
            vec![
                Event::Retrying {
                    id: id.clone(),
                    attempt: 2,
                    broker: 0
                },
                Event::Retrying {
                    id: id.clone(),
                    attempt: 3,
                    broker: 0
                },
                Event::Done {
                    id,
                    tag: 7,
                    outcome: Outcome::Unanswered { attempts: 3 }
                }
            ]
        );
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.counters().retries, 2);
    }

    #[test]
    fn accepted_and_partials_restart_the_attempts_clock() {
        let mut s = Session::new(Config::default());
        let id = s.request(at(0), svc(), vec![], 0);
        s.handle_message(
            at(2000),
            0,
            answer(NativeCommand::Accepted { id: id.clone() }),
        )
        .unwrap();
        assert_eq!(s.poll_timeout(), Some(at(4500)));
        let body = vec![Bytes::from_static(b"half")];
        s.handle_message(
            at(4000),
            0,
            answer(NativeCommand::Partial {
                id: id.clone(),
                body: body.clone(),
            }),
        )
        .unwrap();
        assert_eq!(s.poll_timeout(), Some(at(6500)));
        assert_eq!(
            events(&mut s),
            vec![
                Event::Accepted { id: id.clone() },
                Event::Partial { id, body }
            ]
        );
    }

    #[test]
    fn the_first_answer_ends_a_request_and_later_ones_are_duplicates() {
        let mut s = Session::new(Config::default());
        let id = s.request(at(0), svc(), vec![], 3);
        s.handle_timeout(at(2500));
        let body = vec![Bytes::from_static(b"ok")];
        for _ in 0..2 {
            s.handle_message(
                at(2600),
                0,
                answer(NativeCommand::Final {
                    id: id.clone(),
                    body: body.clone(),
                }),
            )
            .unwrap();
        }
        let done: Vec<_> = events(&mut s)
            .into_iter()
            .filter(|e| matches!(e, Event::Done { .. }))
            .collect();
        assert_eq!(
            done,
            vec![Event::Done {
                id,
                tag: 3,
                outcome: Outcome::Reply(body)
            }]
        );
        assert_eq!(s.counters().duplicates, 1);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn errors_and_handler_failures_are_told_apart_from_replies() {
        let mut s = Session::new(Config::default());
        let a = s.request(at(0), svc(), vec![], 1);
        let b = s.request(at(0), svc(), vec![], 2);
        s.handle_message(
            at(1),
            0,
            answer(NativeCommand::Error {
                id: a.clone(),
                status: Status::QueueFull,
                message: Bytes::from_static(b"full"),
            }),
        )
        .unwrap();
        s.handle_message(
            at(1),
            0,
            answer(NativeCommand::Final {
                id: b.clone(),
                body: vec![
                    Bytes::from_static(ERROR_REPLY_MARKER),
                    Bytes::from_static(b"boom"),
                ],
            }),
        )
        .unwrap();
        assert_eq!(
            events(&mut s),
            vec![
                Event::Done {
                    id: a,
                    tag: 1,
                    outcome: Outcome::Rejected {
                        status: Status::QueueFull,
                        message: Bytes::from_static(b"full")
                    }
                },
                Event::Done {
                    id: b,
                    tag: 2,
                    outcome: Outcome::Failed(Bytes::from_static(b"boom"))
                }
            ]
        );
    }

    #[test]
    fn garbage_from_the_broker_is_counted_not_fatal() {
        let mut s = Session::<u32>::new(Config::default());
        assert!(
            s.handle_message(at(0), 0, vec![Bytes::from_static(b"junk")])
                .is_err()
        );
        s.handle_message(
            at(0),
            0,
            Message::Native(NativeCommand::Request {
                id: RequestId::from(1),
                service: svc(),
                deadline_ms: None,
                ack: false,
                body: vec![],
            })
            .encode(),
        )
        .unwrap();
        assert_eq!(s.counters().malformed, 2);
        assert!(s.poll_event().is_none());
    }

    #[test]
    fn a_cancelled_request_leaves_no_timer_and_its_answer_is_a_duplicate() {
        let mut s = Session::new(Config::default());
        let id = s.request(at(0), svc(), vec![], 9);
        assert_eq!(s.cancel(&id), Some(9));
        assert_eq!(s.poll_timeout(), None);
        s.handle_message(at(1), 0, answer(NativeCommand::Final { id, body: vec![] }))
            .unwrap();
        assert_eq!(s.counters().duplicates, 1);
    }

    fn two() -> Session<u32> {
        Session::with_brokers(
            Config {
                timeout_ms: 100,
                retries: 5,
                ..Config::default()
            },
            2,
        )
    }

    /// (broker, id, asks for ACCEPTED, service) of everything sent since the last call.
    fn routed(s: &mut Session<u32>) -> Vec<(usize, RequestId, bool, String)> {
        std::iter::from_fn(|| s.poll_transmit())
            .map(|t| match Message::decode(t.frames).unwrap() {
                Message::Native(NativeCommand::Request {
                    id, ack, service, ..
                }) => (
                    t.dest,
                    id,
                    ack,
                    String::from_utf8_lossy(service.as_bytes()).into_owned(),
                ),
                other => panic!("sent {other:?}"),
            })
            .collect()
    }

    fn fire(s: &mut Session<u32>, ms: u64) {
        while let Some(t) = s.poll_timeout().filter(|t| *t <= at(ms)) {
            s.handle_timeout(t);
        }
    }

    fn not_leader(id: &RequestId) -> Frames {
        answer(NativeCommand::Error {
            id: id.clone(),
            status: Status::NotLeader,
            message: Bytes::new(),
        })
    }

    #[test]
    fn a_request_refused_as_not_leader_moves_at_once_and_new_ones_avoid_that_broker() {
        let mut s = two();
        let a = s.request(at(0), svc(), vec![], 1);
        assert_eq!(routed(&mut s)[0].0, 0);
        s.handle_message(at(1), 0, not_leader(&a)).unwrap();
        assert_eq!(
            routed(&mut s),
            vec![(1, a.clone(), false, "echo".into())],
            "the same id, at once, on the other broker"
        );
        assert!(
            events(&mut s).is_empty(),
            "a refusal does not end the request"
        );
        assert_eq!(s.counters().moved, 1);
        // Broker 0 holds nothing now but said it does not lead: new requests go to 1.
        s.request(at(2), svc(), vec![], 2);
        assert_eq!(routed(&mut s)[0].0, 1);
        s.handle_message(
            at(3),
            1,
            answer(NativeCommand::Final {
                id: a,
                body: vec![],
            }),
        )
        .unwrap();
        assert!(matches!(events(&mut s)[..], [Event::Done { tag: 1, .. }]));
    }

    #[test]
    fn when_every_broker_refuses_as_not_leader_the_request_waits_for_its_timeout() {
        let mut s = two();
        let a = s.request(at(0), svc(), vec![], 1);
        routed(&mut s);
        s.handle_message(at(1), 0, not_leader(&a)).unwrap();
        assert_eq!(routed(&mut s)[0].0, 1);
        s.handle_message(at(2), 1, not_leader(&a)).unwrap();
        assert!(
            routed(&mut s).is_empty(),
            "an election: no bouncing between refusals"
        );
        fire(&mut s, 102);
        assert_eq!(routed(&mut s)[0].1, a, "retried at its timeout");
        assert!(
            events(&mut s)
                .iter()
                .all(|e| !matches!(e, Event::Done { .. }))
        );
    }

    #[test]
    fn new_requests_go_to_the_broker_holding_fewest_and_ties_take_turns() {
        let mut s = two();
        let ids: Vec<RequestId> = (0..4).map(|i| s.request(at(0), svc(), vec![], i)).collect();
        let to: Vec<usize> = routed(&mut s).into_iter().map(|r| r.0).collect();
        assert_eq!(to, vec![0, 1, 0, 1]);
        // Broker 1 answers both of its own: the next two go there.
        for id in [&ids[1], &ids[3]] {
            s.handle_message(
                at(1),
                1,
                answer(NativeCommand::Final {
                    id: id.clone(),
                    body: vec![],
                }),
            )
            .unwrap();
        }
        s.request(at(2), svc(), vec![], 4);
        s.request(at(2), svc(), vec![], 5);
        let to: Vec<usize> = routed(&mut s).into_iter().map(|r| r.0).collect();
        assert_eq!(to, vec![1, 1]);
    }

    #[test]
    fn a_broker_silent_for_two_attempts_is_judged_dead_and_its_requests_move_with_their_ids() {
        let mut s = two();
        let a = s.request(at(0), svc(), vec![], 1);
        let b = s.request(at(0), svc(), vec![], 2);
        routed(&mut s);
        // Broker 1 answers; broker 0 says nothing at all.
        s.handle_message(
            at(5),
            1,
            answer(NativeCommand::Final {
                id: b,
                body: vec![],
            }),
        )
        .unwrap();
        fire(&mut s, 100);
        assert_eq!(
            routed(&mut s),
            vec![(0, a.clone(), true, "echo".into())],
            "first a retry on the broker that holds it, asking for ACCEPTED"
        );
        assert!(s.is_live(0));
        fire(&mut s, 200);
        assert_eq!(
            routed(&mut s),
            vec![(1, a.clone(), true, "echo".into())],
            "then the same id on the live broker"
        );
        assert!(!s.is_live(0));
        assert_eq!(s.counters().brokers_dead, 1);
        assert_eq!(s.counters().moved, 1);
        let seen = events(&mut s);
        assert!(seen.contains(&Event::BrokerDead { broker: 0 }));
        assert!(seen.contains(&Event::Retrying {
            id: a.clone(),
            attempt: 3,
            broker: 1
        }));
        // New requests avoid the dead broker, which is probed every interval.
        let c = s.request(at(201), svc(), vec![], 3);
        assert_eq!(routed(&mut s)[0].0, 1);
        s.handle_message(
            at(202),
            1,
            answer(NativeCommand::Final {
                id: c,
                body: vec![],
            }),
        )
        .unwrap();
        s.handle_message(
            at(250),
            1,
            answer(NativeCommand::Final {
                id: a.clone(),
                body: vec![],
            }),
        )
        .unwrap();
        fire(&mut s, 2700);
        let probes = routed(&mut s);
        assert!(
            probes
                .iter()
                .any(|(to, _, _, service)| *to == 0 && service == "mmi.service"),
            "{probes:?}"
        );
        // The old broker's late answer to the moved request is a duplicate, not an end.
        s.handle_message(
            at(2701),
            0,
            answer(NativeCommand::Final {
                id: a,
                body: vec![],
            }),
        )
        .unwrap();
        assert!(
            s.is_live(0),
            "anything from a dead broker makes it live again"
        );
        assert_eq!(s.counters().duplicates, 1);
        let done = events(&mut s)
            .into_iter()
            .filter(|e| matches!(e, Event::Done { tag: 1, .. }))
            .count();
        assert_eq!(done, 1, "one end for the moved request");
    }

    #[test]
    fn a_live_broker_with_a_slow_worker_is_never_judged_dead() {
        let mut s = two();
        let a = s.request(at(0), svc(), vec![], 1);
        routed(&mut s);
        for round in 1..=5 {
            fire(&mut s, round * 100);
            for (to, id, ack, _) in routed(&mut s) {
                assert_eq!((to, ack), (0, true));
                // A live broker answers a retry at once: the original is in progress.
                s.handle_message(
                    at(round * 100 + 1),
                    0,
                    answer(NativeCommand::Accepted { id }),
                )
                .unwrap();
            }
        }
        assert!(s.is_live(0));
        assert_eq!(s.counters().moved, 0);
        s.handle_message(
            at(550),
            0,
            answer(NativeCommand::Final {
                id: a,
                body: vec![],
            }),
        )
        .unwrap();
        assert_eq!(s.outstanding(), 0);
    }

    #[test]
    fn with_every_broker_dead_requests_stay_put_and_move_once_one_is_back() {
        let mut s = two();
        let a = s.request(at(0), svc(), vec![], 1);
        let b = s.request(at(0), svc(), vec![], 2);
        routed(&mut s);
        fire(&mut s, 200);
        assert!(!s.is_live(0) && !s.is_live(1));
        assert_eq!(s.outstanding(), 2, "nothing ends for want of a live broker");
        routed(&mut s);
        // Broker 1 comes back (a probe's answer): every request goes there at its next
        // timeout, whichever broker held it.
        s.handle_message(
            at(250),
            1,
            answer(NativeCommand::Final {
                id: RequestId::new(Bytes::from_static(b"p1")).unwrap(),
                body: vec![],
            }),
        )
        .unwrap();
        assert!(s.is_live(1) && !s.is_live(0));
        assert_eq!(
            s.counters().duplicates,
            0,
            "a probe's answer is no duplicate"
        );
        fire(&mut s, 300);
        let mut sent: Vec<(usize, RequestId)> =
            routed(&mut s).into_iter().map(|r| (r.0, r.1)).collect();
        sent.sort();
        assert_eq!(sent, vec![(1, a), (1, b)]);
    }

    #[test]
    fn one_broker_is_never_judged_dead_and_its_retries_are_as_configured() {
        let mut s = Session::new(Config {
            timeout_ms: 100,
            retries: 4,
            ..Config::default()
        });
        s.request(at(0), svc(), vec![], 1);
        fire(&mut s, 450);
        let sent = routed(&mut s);
        assert_eq!(sent.len(), 5);
        assert!(sent.iter().all(|(to, _, ack, _)| *to == 0 && !ack));
        assert_eq!(s.counters().brokers_dead, 0);
        assert_eq!(s.counters().probes, 0);
    }

    #[test]
    fn a_message_naming_a_broker_the_session_does_not_have_is_dropped() {
        let mut s = two();
        let id = s.request(at(0), svc(), vec![], 1);
        s.handle_message(at(1), 7, answer(NativeCommand::Final { id, body: vec![] }))
            .unwrap();
        assert_eq!(s.outstanding(), 1);
        assert_eq!(s.counters().malformed, 1);
    }
}
