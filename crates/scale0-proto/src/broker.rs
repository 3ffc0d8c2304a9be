//! The Majordomo broker as a sans-IO state machine: MDP/0.1 (RFC 7) and MDP/0.2 (RFC 18)
//! clients and workers, MMI (RFC 8), and the scale0 native client protocol, all on one
//! ROUTER socket.
//!
//! The driver feeds every message received on the ROUTER to [`Broker::handle_message`],
//! calls [`Broker::handle_timeout`] when [`Broker::poll_timeout`] has passed, reports
//! sends that libzmq could not route with [`Broker::handle_unroutable`], and sends what
//! [`Broker::poll_transmit`] hands out. Nothing here blocks or reads a clock.

use crate::dedupe::{Dedupe, Key, Seen};
use crate::departed::Departed;
use crate::journal::{Entry, EntryError, JournalOp, StoredOrigin, TitanicOutcome};
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
use tracing::{debug, info, warn};

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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 2500,
            heartbeat_liveness: 3,
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

/// Why a request ended without a reply from a worker.
///
/// Native clients get an ERROR with the matching [`Status`]; MDP clients cannot be told,
/// so for them a failure is a log line and a counter, and their own timeout tells them.
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
    /// The native request's own deadline passed.
    DeadlineExceeded,
    /// The broker was stopping: it refused the request, or its grace period ran out
    /// before a worker answered.
    ShuttingDown,
}

impl FailReason {
    /// Every reason, in the order counters are reported.
    pub const ALL: [FailReason; 6] = [
        Self::QueueFull,
        Self::NoWorker,
        Self::TooManyServices,
        Self::AttemptsExhausted,
        Self::DeadlineExceeded,
        Self::ShuttingDown,
    ];

    /// A stable snake_case label, for logs and metrics.
    pub fn label(self) -> &'static str {
        self.status().as_str()
    }

    /// The native status that reports it.
    pub fn status(self) -> Status {
        match self {
            Self::QueueFull => Status::QueueFull,
            Self::NoWorker => Status::NoWorker,
            Self::TooManyServices => Status::TooManyServices,
            Self::AttemptsExhausted => Status::AttemptsExhausted,
            Self::DeadlineExceeded => Status::DeadlineExceeded,
            Self::ShuttingDown => Status::ShuttingDown,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::QueueFull => 0,
            Self::NoWorker => 1,
            Self::TooManyServices => 2,
            Self::AttemptsExhausted => 3,
            Self::DeadlineExceeded => 4,
            Self::ShuttingDown => 5,
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::QueueFull => "the service's queue is full",
            Self::NoWorker => "no worker for this service appeared in time",
            Self::TooManyServices => "the broker tracks as many services as it may",
            Self::AttemptsExhausted => "every worker that took this request died or overran",
            Self::DeadlineExceeded => "the request's deadline passed",
            Self::ShuttingDown => "the broker is shutting down",
        }
    }
}

/// Why the broker dropped a message without acting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Larger than [`Config::max_message_bytes`] (native requests get `too_large` instead).
    TooLarge,
    /// Not a valid message; see the [`DecodeError`].
    Malformed(DecodeError),
    /// A message only the broker sends (REQUEST to a worker, a reply to a client).
    WrongDirection,
    /// A message for a peer that is gone (a reply whose client disconnected).
    Unroutable,
    /// A PARTIAL for an MDP/0.1 client, which has no way to receive one.
    PartialForV1Client,
    /// A worker's reply to a native request already answered (its deadline passed).
    LateReply,
    /// A reply to a request recovered from the durable store whose client's routing id
    /// was generated by libzmq: after a restart such an id may name a stranger.
    StaleClient,
    /// A request or READY for a service the peer's key may not use (see
    /// [`Config::access`]); a native client is answered `forbidden`, a worker told to
    /// DISCONNECT.
    Forbidden,
}

impl DropReason {
    /// Every reason, in the order counters are reported.
    pub const ALL: [DropReason; 19] = [
        Self::TooLarge,
        Self::Malformed(DecodeError::BadRoutingId),
        Self::Malformed(DecodeError::NoDelimiter),
        Self::Malformed(DecodeError::UnknownHeader),
        Self::Malformed(DecodeError::MissingFrame),
        Self::Malformed(DecodeError::ExtraFrames),
        Self::Malformed(DecodeError::UnknownCommand),
        Self::Malformed(DecodeError::BadServiceName),
        Self::Malformed(DecodeError::BadAddress),
        Self::Malformed(DecodeError::BadRequestId),
        Self::Malformed(DecodeError::BadDeadline),
        Self::Malformed(DecodeError::UnknownStatus),
        Self::Malformed(DecodeError::BadCapacity),
        Self::WrongDirection,
        Self::Unroutable,
        Self::PartialForV1Client,
        Self::LateReply,
        Self::StaleClient,
        Self::Forbidden,
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
            Self::Malformed(DecodeError::BadRequestId) => "bad_request_id",
            Self::Malformed(DecodeError::BadDeadline) => "bad_deadline",
            Self::Malformed(DecodeError::UnknownStatus) => "unknown_status",
            Self::Malformed(DecodeError::BadCapacity) => "bad_capacity",
            Self::WrongDirection => "wrong_direction",
            Self::Unroutable => "unroutable",
            Self::PartialForV1Client => "partial_for_v1_client",
            Self::LateReply => "late_reply",
            Self::StaleClient => "stale_client",
            Self::Forbidden => "forbidden",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Running totals of what the broker did; exposed by status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client requests accepted for a worker service.
    pub requests: u64,
    /// Requests sent to a worker (a redelivery counts again).
    pub dispatched: u64,
    /// Final replies routed back to clients.
    pub replies: u64,
    /// Partial replies routed back to clients.
    pub partials: u64,
    /// Requests answered by the broker itself (`mmi.*`).
    pub mmi_requests: u64,
    /// Requests to the Titanic services of a durable broker (`titanic.*`).
    pub titanic_requests: u64,
    /// Requests read back from the durable store at start-up.
    pub recovered: u64,
    /// Native retries answered from memory instead of executing again.
    pub duplicates: u64,
    /// Workers that sent READY and were registered.
    pub workers_registered: u64,
    /// Workers removed after heartbeat silence.
    pub workers_expired: u64,
    /// Workers removed because they said DISCONNECT or could not be reached.
    pub workers_disconnected: u64,
    /// DISCONNECTs sent to workers for unexpected commands.
    pub disconnects_sent: u64,
    /// Requests put back on their queue because the worker holding them went away.
    pub requeued: u64,
    /// Workers removed because they held a request past its deadline.
    pub request_timeouts: u64,
    /// MDP requests never sent to a worker because their client had disconnected (a
    /// Lazy Pirate client that timed out and retried on a new socket).
    pub abandoned: u64,
    dropped: [u64; DropReason::ALL.len()],
    failed: [u64; FailReason::ALL.len()],
    /// Replies by time from acceptance, in [`LATENCY_BOUNDS_MS`] buckets (the last for
    /// anything slower than the largest bound).
    latency_buckets: [u64; LATENCY_BOUNDS_MS.len() + 1],
    latency_sum_ms: u64,
}

/// Upper bounds of the reply-latency histogram, in milliseconds.
pub const LATENCY_BOUNDS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 60_000,
];

impl Counters {
    /// How many messages were dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.index()).copied().unwrap_or(0)
    }

    /// Replies per latency bucket, cumulative as Prometheus wants them: entry `i` counts
    /// replies within `LATENCY_BOUNDS_MS[i]`, the last entry all replies.
    pub fn latency_cumulative(&self) -> Vec<u64> {
        self.latency_buckets
            .iter()
            .scan(0u64, |sum, n| {
                *sum += n;
                Some(*sum)
            })
            .collect()
    }

    /// Sum of the latencies of all replies, in milliseconds.
    pub fn latency_sum_ms(&self) -> u64 {
        self.latency_sum_ms
    }

    fn record_latency(&mut self, ms: u64) {
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        if let Some(n) = self.latency_buckets.get_mut(bucket) {
            *n += 1;
        }
        self.latency_sum_ms = self.latency_sum_ms.saturating_add(ms);
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
}

/// One message for the driver to send on the ROUTER: `frames[0]` is the routing id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The complete multipart message, routing id first.
    pub frames: Frames,
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

/// A request a worker holds.
#[derive(Debug)]
struct Held {
    /// The address the worker was given to echo: the client's own for a worker of
    /// capacity 1, else a tag of the broker's making.
    tag: PeerId,
    request: Request,
    /// When the worker must have answered it.
    deadline: Instant,
}

/// A registered worker.
#[derive(Debug)]
struct Worker {
    service: ServiceName,
    version: Version,
    /// When a silent worker is expired.
    expiry: Instant,
    /// Requests it may hold at once (1 unless its READY said more).
    capacity: usize,
    /// The requests it is working on, oldest first; at most `capacity`.
    held: Vec<Held>,
    /// Whether it has heartbeated while holding a request. Such a worker (ours do) is
    /// expired for silence even when busy; one that does not (the reference
    /// single-threaded workers, majortomo's) is bounded by the request deadline alone.
    heartbeats_while_busy: bool,
    /// Heartbeats since it last became busy. It takes two to show a worker heartbeats
    /// while busy: a single-threaded worker may send one that crosses the REQUEST on the
    /// wire, and then falls silent until it has answered.
    busy_heartbeats: u32,
    /// The time its timer is set for in the broker's table (no later than [`Worker::due`]),
    /// kept here so that the common case, a deadline moving later, costs no table lookup.
    timer_at: Option<Instant>,
    /// When it last became idle or busy (for `mmi.status`).
    since: Instant,
}

impl Worker {
    fn is_busy(&self) -> bool {
        !self.held.is_empty()
    }

    fn has_credit(&self) -> bool {
        self.held.len() < self.capacity
    }

    /// When the earliest of its requests is due: the oldest's, since every request of a
    /// service gets the same timeout and `held` is oldest first.
    fn deadline(&self) -> Option<Instant> {
        self.held.first().map(|h| h.deadline)
    }

    /// When the broker must look at it again: its expiry, or the deadline of a request
    /// it holds, whichever comes first (for a worker that does not heartbeat while busy,
    /// only the deadline counts).
    fn due(&self) -> Instant {
        match (self.deadline(), self.heartbeats_while_busy) {
            (None, _) => self.expiry,
            (Some(d), true) => self.expiry.min(d),
            (Some(d), false) => d,
        }
    }

    /// Where the request a reply or partial echoing `address` is for sits in `held`.
    /// A worker of capacity 1 answers the request it holds, whatever it echoes: it can
    /// only ever reach the client it was sent.
    fn find(&self, address: &PeerId) -> Option<usize> {
        if self.capacity == 1 {
            return (!self.held.is_empty()).then_some(0);
        }
        self.held.iter().position(|h| h.tag == *address)
    }
}

/// A service's waiting requests in the order they are to be served, kept as two queues:
/// those that fail when no worker comes in time, and those that wait however long it takes
/// (Titanic). Each request carries its place (`Request::order`: decreasing at the head,
/// increasing at the tail), and the older head of the two is served first, so together
/// they are one queue; apart, the requests that can time out are in the order they do.
#[derive(Debug, Default)]
struct Waiting {
    expiring: VecDeque<Request>,
    forever: VecDeque<Request>,
    /// The order the next request put at the head gets (then one less).
    head: i64,
    /// The order the next request put at the tail gets (then one more).
    tail: i64,
}

impl Waiting {
    fn len(&self) -> usize {
        self.expiring.len() + self.forever.len()
    }

    fn is_empty(&self) -> bool {
        self.expiring.is_empty() && self.forever.is_empty()
    }

    fn half(&mut self, request: &Request) -> &mut VecDeque<Request> {
        if request.waits_forever() {
            &mut self.forever
        } else {
            &mut self.expiring
        }
    }

    fn push_back(&mut self, mut request: Request) {
        request.order = self.tail;
        self.tail += 1;
        self.half(&request).push_back(request);
    }

    fn push_front(&mut self, mut request: Request) {
        self.head -= 1;
        request.order = self.head;
        self.half(&request).push_front(request);
    }

    /// Puts back a request just taken with [`Waiting::pop_front`], in its old place.
    fn unpop(&mut self, request: Request) {
        self.half(&request).push_front(request);
    }

    fn pop_front(&mut self) -> Option<Request> {
        let take_forever = match (self.expiring.front(), self.forever.front()) {
            (Some(e), Some(f)) => f.order < e.order,
            (None, Some(_)) => true,
            _ => false,
        };
        if take_forever {
            self.forever.pop_front()
        } else {
            self.expiring.pop_front()
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = Request> + '_ {
        self.expiring.drain(..).chain(self.forever.drain(..))
    }
}

/// A named service: its waiting requests and its idle workers, least recently used first.
#[derive(Debug)]
struct Service {
    requests: Waiting,
    idle: VecDeque<PeerId>,
    workers: usize,
    /// Since when the service has had no worker; `None` while it has some.
    workerless_since: Option<Instant>,
}

impl Service {
    fn new(now: Instant) -> Self {
        Self {
            requests: Waiting::default(),
            idle: VecDeque::new(),
            workers: 0,
            workerless_since: Some(now),
        }
    }

    /// When the request at the head of the expiring queue fails for want of a worker, if
    /// the service has none. The queue is in the order its requests fail: requests join
    /// the tail as time goes on, and the head only while the service has workers (a
    /// departing worker's requests), so once it has none every request queued before
    /// counts its wait from the same instant, `workerless_since`.
    fn no_worker_deadline(&self, wait: Duration) -> Option<Instant> {
        let since = self.workerless_since?;
        let head = self.requests.expiring.front()?;
        Some(head.enqueued_at.max(since) + wait)
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

/// A Titanic request (RFC 9) the broker keeps until its client closes it.
#[derive(Debug)]
enum Titanic {
    Pending { key: u64 },
    Done { key: u64, outcome: TitanicOutcome },
}

impl Titanic {
    fn key(&self) -> u64 {
        match self {
            Titanic::Pending { key } | Titanic::Done { key, .. } => *key,
        }
    }
}

/// The durable side of a broker: journal ops the driver has not taken yet, how many of
/// the ops are durable, and the Titanic table.
#[derive(Debug, Default)]
struct Journal {
    ops: VecDeque<JournalOp>,
    /// Ops emitted since start-up.
    emitted: u64,
    /// Of those, how many the driver has committed.
    durable: u64,
    next_key: u64,
    /// Makes Titanic UUIDs of this run differ from those of earlier runs.
    nonce: u64,
    titanic: HashMap<Bytes, Titanic>,
}

/// What a durable broker found in its store at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Requests put back in their queues.
    pub requests: usize,
    /// Finished Titanic requests whose replies wait for `titanic.reply`.
    pub titanic_answers: usize,
    /// Entries that could not be decoded; they are left in the store untouched.
    pub unreadable: Vec<(u64, EntryError)>,
}

/// The services a durable broker answers itself (RFC 9).
const TITANIC_SERVICES: [&[u8]; 3] = [b"titanic.request", b"titanic.reply", b"titanic.close"];

fn is_titanic(service: &ServiceName) -> bool {
    TITANIC_SERVICES.contains(&service.as_bytes().as_ref())
}

fn status_frame(text: &str) -> Body {
    vec![Bytes::from(text.to_string())]
}

/// Why a worker left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// Silent for liveness x interval.
    Expired,
    /// Held a request past its deadline.
    Overran,
    /// Said DISCONNECT.
    Disconnected,
    /// libzmq could not reach it.
    Unreachable,
    /// Said something out of turn and was told to DISCONNECT.
    Protocol,
}

impl Gone {
    /// A lowercase word.
    pub fn label(self) -> &'static str {
        match self {
            Gone::Expired => "expired",
            Gone::Overran => "overran",
            Gone::Disconnected => "disconnected",
            Gone::Unreachable => "unreachable",
            Gone::Protocol => "protocol",
        }
    }
}

/// Something an operator may want to watch (`scale0 watch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A worker registered.
    WorkerReady {
        /// Its service.
        service: ServiceName,
        /// Its routing id.
        worker: PeerId,
    },
    /// A worker was removed.
    WorkerGone {
        /// Its service.
        service: ServiceName,
        /// Its routing id.
        worker: PeerId,
        /// Why.
        why: Gone,
    },
    /// A service got its first worker.
    ServiceUp {
        /// The service.
        service: ServiceName,
    },
    /// A service lost its last worker.
    ServiceDown {
        /// The service.
        service: ServiceName,
    },
    /// A request whose worker went away went back to its queue.
    Redelivered {
        /// Its service.
        service: ServiceName,
        /// Dispatches so far.
        attempts: u32,
    },
}

/// Events kept for the driver at most; a driver that keeps up never gets near it.
const MAX_EVENTS: usize = 10_000;

/// How a request ends.
#[derive(Debug)]
enum Outcome {
    Reply(Body),
    Fail(FailReason),
}

/// What a timer of the broker is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Timer {
    /// A worker's expiry or its requests' deadline.
    Worker(PeerId),
    /// The wait of the oldest request of a service with no worker.
    Waiting(ServiceName),
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
    transmits: VecDeque<(u64, Transmit)>,
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
    /// Stopping: new requests are refused, accepted ones still served.
    draining: bool,
    /// The last tag given to a request sent to a worker of capacity above 1.
    last_tag: u64,
    counters: Counters,
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
            journal: None,
            events: VecDeque::new(),
            next_heartbeat,
            timers: Timers::default(),
            work: 0,
            departed: Departed::default(),
            started: now,
            draining: false,
            last_tag: 0,
            counters: Counters::default(),
        }
    }

    /// A durable broker, resuming from the entries of its store (`Store::load`): every
    /// stored request goes back to its queue, in acceptance order. `nonce` should differ
    /// between runs; it makes Titanic UUIDs unique across restarts.
    pub fn durable(
        config: Config,
        now: Instant,
        stored: Vec<(u64, Bytes)>,
        nonce: u64,
    ) -> (Self, Recovery) {
        let mut broker = Self::new(config, now);
        let mut journal = Journal {
            next_key: 1,
            nonce,
            ..Journal::default()
        };
        let mut recovery = Recovery::default();
        for (key, value) in stored {
            journal.next_key = journal.next_key.max(key.saturating_add(1));
            let (client, origin, service, body) = match Entry::decode(&value) {
                Err(e) => {
                    recovery.unreadable.push((key, e));
                    continue;
                }
                Ok(Entry::TitanicDone { uuid, outcome }) => {
                    journal.titanic.insert(uuid, Titanic::Done { key, outcome });
                    recovery.titanic_answers += 1;
                    continue;
                }
                Ok(Entry::Request {
                    client,
                    origin,
                    service,
                    body,
                }) => (client, origin, service, body),
            };
            let origin = match origin {
                StoredOrigin::Mdp(version) => Origin::Mdp(version),
                StoredOrigin::Native(id) => {
                    // A retry of this id attaches to the stored request instead of
                    // running it again.
                    let generation = broker
                        .dedupe
                        .accept((client.clone(), id.clone()), Some(key));
                    Origin::Native { id, generation }
                }
                StoredOrigin::Titanic(uuid) => {
                    journal
                        .titanic
                        .insert(uuid.clone(), Titanic::Pending { key });
                    Origin::Titanic { uuid }
                }
            };
            let mut request = Request::new(client, origin, body, now);
            request.journal = Some(key);
            request.recovered = true;
            // Accepted once already: recovered requests are not refused for depth or
            // for the number of services.
            broker
                .services
                .entry(service)
                .or_insert_with(|| Service::new(now))
                .requests
                .push_back(request);
            broker.counters.recovered += 1;
            recovery.requests += 1;
        }
        broker.journal = Some(journal);
        let names: Vec<ServiceName> = broker.services.keys().cloned().collect();
        for service in &names {
            broker.arm_waiting(service);
        }
        (broker, recovery)
    }

    /// True when the broker keeps a journal.
    pub fn is_durable(&self) -> bool {
        self.journal.is_some()
    }

    /// The next change for the durable store, if any. Messages that depend on it are held
    /// back until the driver has committed it and called [`Broker::journal_synced`].
    pub fn poll_journal(&mut self) -> Option<JournalOp> {
        self.journal.as_mut()?.ops.pop_front()
    }

    /// The next event, when [`Config::events`] is on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn event(&mut self, make: impl FnOnce() -> Event) {
        if self.config.events {
            if self.events.len() >= MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(make());
        }
    }

    /// Every op taken with [`Broker::poll_journal`] so far is durable now.
    pub fn journal_synced(&mut self) {
        if let Some(j) = &mut self.journal {
            j.durable = j.emitted - j.ops.len() as u64;
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
    /// answered. The driver waits until [`Broker::outstanding`] is zero or its grace
    /// period is over.
    pub fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// True after [`Broker::begin_drain`].
    pub fn is_draining(&self) -> bool {
        self.draining
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
        for (service, request) in ended {
            self.finish(
                now,
                &service,
                &request,
                Outcome::Fail(FailReason::ShuttingDown),
            );
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
            Some((needs, _)) if *needs <= durable => self.transmits.pop_front().map(|(_, t)| t),
            _ => None,
        }
    }

    /// Queues a message; in a durable broker it leaves only once every journal op
    /// emitted so far is durable, so no acknowledgement or reply runs ahead of the disk.
    fn push(&mut self, t: Transmit) {
        let needs = self.journal.as_ref().map_or(0, |j| j.emitted);
        self.transmits.push_back((needs, t));
    }

    fn journal_key(&mut self) -> Option<u64> {
        let j = self.journal.as_mut()?;
        let key = j.next_key;
        j.next_key += 1;
        Some(key)
    }

    fn journal_op(&mut self, op: JournalOp) {
        if let Some(j) = &mut self.journal {
            j.ops.push_back(op);
            j.emitted += 1;
        }
    }

    /// When [`Broker::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        let client = self.client_deadlines.peek().map(|Reverse((t, ..))| *t);
        [self.timers.next(), client]
            .into_iter()
            .flatten()
            .fold(self.next_heartbeat, Instant::min)
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
            }
        }
        self.expire_client_deadlines(now);
        self.dedupe.evict(now);
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

    // ---- clients ----

    fn on_client_request(
        &mut self,
        now: Instant,
        client: PeerId,
        version: Version,
        m: ClientMessage,
    ) {
        if m.service.is_mmi() {
            let code = self.mmi(now, &m);
            let reply = ClientMessage {
                service: m.service,
                body: vec![code],
            };
            self.push(Transmit {
                frames: mdp_reply(version, ClientKind::Final, reply).encode_to(&client),
            });
            return;
        }
        if self.journal.is_some() && is_titanic(&m.service) {
            let body = self.titanic(now, &client, &m);
            let reply = ClientMessage {
                service: m.service,
                body,
            };
            self.push(Transmit {
                frames: mdp_reply(version, ClientKind::Final, reply).encode_to(&client),
            });
            return;
        }
        let mut request = Request::new(client, Origin::Mdp(version), m.body, now);
        let stored = self.journal_key().map(|key| {
            request.journal = Some(key);
            let entry = Entry::Request {
                client: request.client.clone(),
                origin: StoredOrigin::Mdp(version),
                service: m.service.clone(),
                body: request.body.clone(),
            };
            (key, entry)
        });
        match self.enqueue(now, &m.service, request) {
            Ok(()) => {
                if let Some((key, entry)) = stored {
                    self.journal_op(JournalOp::Put {
                        key,
                        value: entry.encode(),
                    });
                }
                self.dispatch(now, &m.service);
            }
            Err(refused) => {
                let (reason, request) = *refused;
                self.finish(now, &m.service, &request, Outcome::Fail(reason));
            }
        }
    }

    fn on_native_request(
        &mut self,
        now: Instant,
        client: PeerId,
        id: RequestId,
        service: ServiceName,
        (deadline_ms, ack): (Option<u64>, bool),
        body: Body,
    ) {
        let key: Key = (client.clone(), id.clone());
        match self.dedupe.seen(&key) {
            Seen::New => {}
            Seen::Pending => {
                self.counters.duplicates += 1;
                if ack {
                    self.send_native(&client, NativeCommand::Accepted { id });
                }
                return;
            }
            Seen::Done(answer) => {
                self.counters.duplicates += 1;
                let answer = answer.clone();
                self.send_native(&client, answer);
                return;
            }
        }
        if deadline_ms == Some(0) {
            // Nothing could be done in time: say so rather than dispatch it to fail.
            return self.refuse_native(
                now,
                &client,
                id,
                Status::DeadlineExceeded,
                "the deadline had passed when the request arrived",
            );
        }
        if service.is_mmi() {
            let code = self.mmi(now, &ClientMessage { service, body });
            self.send_native(
                &client,
                NativeCommand::Final {
                    id,
                    body: vec![code],
                },
            );
            return;
        }
        let generation = self.dedupe.accept(key.clone(), None);
        let origin = Origin::Native {
            id: id.clone(),
            generation,
        };
        let mut request = Request::new(client.clone(), origin, body, now);
        let stored = self.journal_key().map(|journal| {
            request.journal = Some(journal);
            let entry = Entry::Request {
                client: client.clone(),
                origin: StoredOrigin::Native(id.clone()),
                service: service.clone(),
                body: request.body.clone(),
            };
            (journal, entry)
        });
        match self.enqueue(now, &service, request) {
            Ok(()) => {
                if let Some((journal, entry)) = stored {
                    self.dedupe.set_journal(&key, journal);
                    self.journal_op(JournalOp::Put {
                        key: journal,
                        value: entry.encode(),
                    });
                }
                if let Some(ms) = deadline_ms {
                    let at = now + Duration::from_millis(ms);
                    self.client_deadlines.push(Reverse((
                        at,
                        generation,
                        client.clone(),
                        id.clone(),
                    )));
                }
                if !ack {
                    self.dispatch(now, &service);
                    return;
                }
                // Queue the acknowledgement ahead of anything the dispatch produced for
                // this client, so ACCEPTED always precedes FINAL.
                let ack = Transmit {
                    frames: Message::Native(NativeCommand::Accepted { id }).encode_to(&client),
                };
                let first_new = self.transmits.len();
                self.dispatch(now, &service);
                let needs = self.journal.as_ref().map_or(0, |j| j.emitted);
                self.transmits.insert(first_new, (needs, ack));
            }
            Err(refused) => {
                let (reason, request) = *refused;
                self.finish(now, &service, &request, Outcome::Fail(reason));
            }
        }
    }

    /// Answers a native request at once with an error, remembering it for retries.
    fn refuse_native(
        &mut self,
        now: Instant,
        client: &PeerId,
        id: RequestId,
        status: Status,
        why: &str,
    ) {
        let answer = NativeCommand::Error {
            id: id.clone(),
            status,
            message: Bytes::from(why.to_string()),
        };
        self.dedupe.answer(
            (client.clone(), id),
            answer.clone(),
            now + self.config.dedupe_window(),
        );
        self.send_native(client, answer);
    }

    fn send_native(&mut self, client: &PeerId, cmd: NativeCommand) {
        self.push(Transmit {
            frames: Message::Native(cmd).encode_to(client),
        });
    }

    /// The MMI answer for a request to an `mmi.*` service (RFC 8, and `mmi.status`).
    fn mmi(&mut self, now: Instant, m: &ClientMessage) -> Bytes {
        self.counters.mmi_requests += 1;
        if m.service.as_bytes().as_ref() == b"mmi.status" {
            return Bytes::from(self.status_json(now));
        }
        if m.service.as_bytes().as_ref() != b"mmi.service" {
            return Bytes::from_static(b"501");
        }
        let asked = m
            .body
            .first()
            .and_then(|name| ServiceName::new(name.clone()).ok());
        let known = asked.is_some_and(|name| {
            (self.journal.is_some() && is_titanic(&name))
                || self.services.get(&name).is_some_and(|s| s.workers > 0)
        });
        Bytes::from_static(if known { b"200" } else { b"404" })
    }

    /// The `mmi.status` document: services with their queues and workers, totals and
    /// uptime, as JSON (docs/protocol.md).
    fn status_json(&self, now: Instant) -> String {
        use std::fmt::Write as _;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let c = &self.counters;
        let mut out = String::with_capacity(512);
        let _ = write!(
            out,
            "{{\"version\":1,\"uptime_ms\":{},\"draining\":{},\"outstanding\":{},\
             \"totals\":{{\"requests\":{},\"replies\":{},\"partials\":{},\"dispatched\":{},\
             \"redeliveries\":{},\"duplicates\":{},\"failed\":{},\"dropped\":{},\
             \"workers_registered\":{},\"workers_expired\":{}}},\"services\":[",
            ms(now.saturating_since(self.started)),
            self.draining,
            self.outstanding(),
            c.requests,
            c.replies,
            c.partials,
            c.dispatched,
            c.requeued,
            c.duplicates,
            c.failed_total(),
            c.dropped_total(),
            c.workers_registered,
            c.workers_expired,
        );
        let mut names: Vec<&ServiceName> = self.services.keys().collect();
        names.sort();
        for (i, name) in names.into_iter().enumerate() {
            let Some(s) = self.services.get(name) else {
                continue;
            };
            let _ = write!(
                out,
                "{}{{\"name\":{},\"queued\":{},\"workers\":[",
                if i > 0 { "," } else { "" },
                json_string(name.as_bytes()),
                s.requests.len()
            );
            let mut workers: Vec<(&PeerId, &Worker)> = self
                .workers
                .iter()
                .filter(|(_, w)| w.service == *name)
                .collect();
            workers.sort_by_key(|(_, w)| w.since);
            for (j, (peer, w)) in workers.into_iter().enumerate() {
                let _ = write!(
                    out,
                    "{}{{\"id\":\"{peer}\",\"state\":\"{}\",\"since_ms\":{},\"held\":{},\"capacity\":{}}}",
                    if j > 0 { "," } else { "" },
                    if w.is_busy() { "busy" } else { "idle" },
                    ms(now.saturating_since(w.since)),
                    w.held.len(),
                    w.capacity
                );
            }
            out.push_str("]}");
        }
        out.push_str("]}");
        out
    }

    /// Queues a request on its service; the caller dispatches. A refused request comes
    /// back with the reason, for the caller to answer.
    fn enqueue(
        &mut self,
        now: Instant,
        service: &ServiceName,
        request: Request,
    ) -> Result<(), Box<(FailReason, Request)>> {
        if self.draining && !request.recovered {
            return Err(Box::new((FailReason::ShuttingDown, request)));
        }
        if !self.ensure_service(now, service) {
            return Err(Box::new((FailReason::TooManyServices, request)));
        }
        let wait = self.config.unknown_service_wait();
        let Some(s) = self.services.get_mut(service) else {
            return Err(Box::new((FailReason::TooManyServices, request)));
        };
        if s.requests.len() >= self.config.max_queue_depth {
            return Err(Box::new((FailReason::QueueFull, request)));
        }
        self.counters.requests += 1;
        self.work += 1;
        s.requests.push_back(request);
        // Only a new head moves the no-worker deadline; behind it, the timer is set.
        if s.requests.expiring.len() == 1
            && let Some(at) = s.no_worker_deadline(wait)
        {
            self.timers.set_by(Timer::Waiting(service.clone()), at);
        }
        Ok(())
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

    /// True while nobody has answered the request yet.
    fn is_live(&self, request: &Request) -> bool {
        match &request.origin {
            Origin::Mdp(_) => true,
            Origin::Native { id, generation } => self
                .dedupe
                .is_pending(&(request.client.clone(), id.clone()), *generation),
            Origin::Titanic { uuid } => self.journal.as_ref().is_some_and(|j| {
                matches!(j.titanic.get(uuid), Some(Titanic::Pending { key }) if Some(*key) == request.journal)
            }),
        }
    }

    /// Ends a request: the reply or the error goes to the client in its own protocol.
    fn finish(&mut self, now: Instant, service: &ServiceName, request: &Request, outcome: Outcome) {
        if let Outcome::Fail(reason) = outcome {
            let n = match self.counters.failed.get_mut(reason.index()) {
                Some(n) => {
                    *n += 1;
                    *n
                }
                None => 0,
            };
            if n.is_power_of_two() {
                warn!(%service, client = %request.client, reason = reason.label(), total = n, "request failed");
            }
        } else {
            self.counters.replies += 1;
            self.counters.record_latency(
                u64::try_from(now.saturating_since(request.accepted_at).as_millis())
                    .unwrap_or(u64::MAX),
            );
        }
        // A stored reply goes only to a client that chose its own routing id.
        let stale = request.recovered && PeerId::is_generated(&request.client);
        match (&request.origin, outcome) {
            (Origin::Mdp(version), outcome) => {
                if let Some(key) = request.journal {
                    self.journal_op(JournalOp::Delete { key });
                }
                match outcome {
                    Outcome::Reply(_) if stale => self.drop_message(DropReason::StaleClient, 0),
                    Outcome::Reply(body) => {
                        let reply = ClientMessage {
                            service: service.clone(),
                            body,
                        };
                        self.push(Transmit {
                            frames: mdp_reply(*version, ClientKind::Final, reply)
                                .encode_to(&request.client),
                        });
                    }
                    // Plain MDP cannot carry an error: counted and logged above.
                    Outcome::Fail(_) => {}
                }
            }
            (Origin::Titanic { uuid }, outcome) => self.titanic_done(uuid, outcome),
            (Origin::Native { id, .. }, outcome) => {
                let answer = match outcome {
                    Outcome::Reply(body) => NativeCommand::Final {
                        id: id.clone(),
                        body,
                    },
                    Outcome::Fail(reason) => NativeCommand::Error {
                        id: id.clone(),
                        status: reason.status(),
                        message: Bytes::from_static(reason.message().as_bytes()),
                    },
                };
                let stored = self.dedupe.answer(
                    (request.client.clone(), id.clone()),
                    answer.clone(),
                    now + self.config.dedupe_window(),
                );
                if let Some(key) = stored {
                    self.journal_op(JournalOp::Delete { key });
                }
                if stale {
                    self.drop_message(DropReason::StaleClient, 0);
                } else {
                    self.send_native(&request.client, answer);
                }
            }
        }
    }

    // ---- Titanic (RFC 9), served by a durable broker itself ----

    /// Answers a request to one of the three Titanic services; the body is the reply.
    fn titanic(&mut self, now: Instant, client: &PeerId, m: &ClientMessage) -> Body {
        self.counters.titanic_requests += 1;
        let uuid = m.body.first().map(|u| Bytes::from(u.to_ascii_lowercase()));
        match (m.service.as_bytes().as_ref(), uuid) {
            (b"titanic.request", _) => self.titanic_request(now, client, &m.body),
            (b"titanic.reply", Some(uuid)) => {
                match self.journal.as_ref().and_then(|j| j.titanic.get(&uuid)) {
                    None => status_frame("400"),
                    Some(Titanic::Pending { .. }) => status_frame("300"),
                    Some(Titanic::Done {
                        outcome: TitanicOutcome::Reply(body),
                        ..
                    }) => {
                        let mut out = status_frame("200");
                        out.extend(body.iter().cloned());
                        out
                    }
                    Some(Titanic::Done {
                        outcome: TitanicOutcome::Failed(why),
                        ..
                    }) => status_frame(&format!("500 {}", String::from_utf8_lossy(why))),
                }
            }
            (b"titanic.close", Some(uuid)) => {
                let gone = self.journal.as_mut().and_then(|j| j.titanic.remove(&uuid));
                if let Some(entry) = gone {
                    // A pending one is no longer live: skipped in its queue, and a late
                    // reply from its worker is dropped.
                    self.journal_op(JournalOp::Delete { key: entry.key() });
                }
                status_frame("200")
            }
            _ => status_frame("400"),
        }
    }

    fn titanic_request(&mut self, now: Instant, client: &PeerId, body: &Body) -> Body {
        let Some(service) = body.first().and_then(|n| ServiceName::new(n.clone()).ok()) else {
            return status_frame("500 the first frame must name a service");
        };
        if service.is_mmi() || is_titanic(&service) {
            return status_frame("500 that service cannot be asked through Titanic");
        }
        let (stored, nonce) = match &self.journal {
            Some(j) => (j.titanic.len(), j.nonce),
            None => return status_frame("500 the broker is not durable"),
        };
        if stored >= self.config.max_titanic_requests {
            return status_frame("500 too many Titanic requests are stored");
        }
        let Some(key) = self.journal_key() else {
            return status_frame("500 the broker is not durable");
        };
        let uuid = Bytes::from(format!("{nonce:016x}{key:016x}"));
        let request_body: Body = body.iter().skip(1).cloned().collect();
        let origin = Origin::Titanic { uuid: uuid.clone() };
        let mut request = Request::new(client.clone(), origin, request_body.clone(), now);
        request.journal = Some(key);
        if let Err(refused) = self.enqueue(now, &service, request) {
            return status_frame(&format!("500 {}", refused.0.message()));
        }
        let entry = Entry::Request {
            client: client.clone(),
            origin: StoredOrigin::Titanic(uuid.clone()),
            service: service.clone(),
            body: request_body,
        };
        self.journal_op(JournalOp::Put {
            key,
            value: entry.encode(),
        });
        if let Some(j) = &mut self.journal {
            j.titanic.insert(uuid.clone(), Titanic::Pending { key });
        }
        self.dispatch(now, &service);
        vec![Bytes::from_static(b"200"), uuid]
    }

    /// Keeps the ending of a Titanic request for `titanic.reply`, on disk.
    fn titanic_done(&mut self, uuid: &Bytes, outcome: Outcome) {
        let Some(Titanic::Pending { key }) =
            self.journal.as_ref().and_then(|j| j.titanic.get(uuid))
        else {
            return;
        };
        let key = *key;
        let outcome = match outcome {
            Outcome::Reply(body) => TitanicOutcome::Reply(body),
            Outcome::Fail(reason) => {
                TitanicOutcome::Failed(Bytes::from_static(reason.message().as_bytes()))
            }
        };
        let entry = Entry::TitanicDone {
            uuid: uuid.clone(),
            outcome: outcome.clone(),
        };
        self.journal_op(JournalOp::Put {
            key,
            value: entry.encode(),
        });
        if let Some(j) = &mut self.journal {
            j.titanic
                .insert(uuid.clone(), Titanic::Done { key, outcome });
        }
    }

    /// Fails native requests whose own deadline has passed.
    fn expire_client_deadlines(&mut self, now: Instant) {
        while let Some(Reverse((at, ..))) = self.client_deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, generation, client, id))) = self.client_deadlines.pop() else {
                break;
            };
            if !self
                .dedupe
                .is_pending(&(client.clone(), id.clone()), generation)
            {
                continue;
            }
            // The request may still sit in a queue or with a worker; it is dead from now
            // on (not live), so it is skipped there and a late reply is dropped.
            let request = Request::new(client, Origin::Native { id, generation }, Vec::new(), now);
            // The service is not looked up: it only names the request in the log line.
            self.finish(
                now,
                &ServiceName::unnamed(),
                &request,
                Outcome::Fail(FailReason::DeadlineExceeded),
            );
        }
    }

    // ---- workers ----

    fn on_worker(&mut self, now: Instant, peer: &PeerId, version: Version, cmd: WorkerCommand) {
        let known = self.workers.contains_key(peer);
        if let Some(w) = self.workers.get_mut(peer) {
            // Any command is a sign of life.
            w.expiry = now + self.config.worker_expiry();
        }
        match cmd {
            WorkerCommand::Ready { service, capacity }
                if !known && !service.is_mmi() && self.ensure_service(now, &service) =>
            {
                debug!(worker = %peer, %service, ?version, capacity, "worker ready");
                self.counters.workers_registered += 1;
                self.workers.insert(
                    peer.clone(),
                    Worker {
                        service: service.clone(),
                        version,
                        expiry: now,
                        capacity: usize::try_from(capacity.max(1)).unwrap_or(1),
                        held: Vec::new(),
                        heartbeats_while_busy: false,
                        busy_heartbeats: 0,
                        timer_at: None,
                        since: now,
                    },
                );
                let mut first = false;
                if let Some(s) = self.services.get_mut(&service) {
                    s.workers += 1;
                    s.workerless_since = None;
                    first = s.workers == 1;
                }
                self.event(|| Event::WorkerReady {
                    service: service.clone(),
                    worker: peer.clone(),
                });
                if first {
                    self.event(|| Event::ServiceUp {
                        service: service.clone(),
                    });
                }
                self.make_idle(now, peer);
                self.dispatch(now, &service);
            }
            WorkerCommand::Reply { client, body } if self.holds_request(peer, &client) => {
                let Some(w) = self.workers.get_mut(peer) else {
                    return;
                };
                let service = w.service.clone();
                let was_full = !w.has_credit();
                if let Some(i) = w.find(&client) {
                    // Route to the client the request came from: a worker cannot reach
                    // clients it was not sent.
                    let held = w.held.remove(i);
                    if self.is_live(&held.request) {
                        self.finish(now, &service, &held.request, Outcome::Reply(body));
                    } else {
                        self.drop_message(DropReason::LateReply, 0);
                    }
                }
                self.replied(now, peer, was_full);
                self.dispatch(now, &service);
            }
            WorkerCommand::Partial { client, body } if self.holds_request(peer, &client) => {
                self.relay_partial(peer, &client, body);
            }
            WorkerCommand::Heartbeat if known => {
                if let Some(w) = self.workers.get_mut(peer)
                    && w.is_busy()
                {
                    w.busy_heartbeats = w.busy_heartbeats.saturating_add(1);
                    if w.busy_heartbeats >= 2 && !w.heartbeats_while_busy {
                        w.heartbeats_while_busy = true;
                        arm_worker(&mut self.timers, peer, w);
                    }
                }
            }
            WorkerCommand::Disconnect => {
                if known {
                    debug!(worker = %peer, "worker disconnected");
                    self.counters.workers_disconnected += 1;
                    self.delete_worker(now, peer, false, Gone::Disconnected);
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
                let version = self.workers.get(peer).map_or(version, |w| w.version);
                self.push(to_worker(peer, version, WorkerCommand::Disconnect));
                self.delete_worker(now, peer, false, Gone::Protocol);
            }
        }
    }

    fn relay_partial(&mut self, peer: &PeerId, address: &PeerId, body: Body) {
        let Some(w) = self.workers.get(peer) else {
            return;
        };
        let Some(req) = w.find(address).map(|i| &w.held[i].request) else {
            return;
        };
        if !self.is_live(req) {
            return self.drop_message(DropReason::LateReply, 0);
        }
        let frames = match &req.origin {
            Origin::Mdp(Version::V1) => {
                return self.drop_message(DropReason::PartialForV1Client, 0);
            }
            Origin::Mdp(version @ (Version::V2 | Version::V2Delimited)) => mdp_reply(
                *version,
                ClientKind::Partial,
                ClientMessage {
                    service: w.service.clone(),
                    body,
                },
            )
            .encode_to(&req.client),
            Origin::Native { id, .. } => Message::Native(NativeCommand::Partial {
                id: id.clone(),
                body,
            })
            .encode_to(&req.client),
            // Titanic keeps the final reply only.
            Origin::Titanic { .. } => return,
        };
        self.counters.partials += 1;
        self.push(Transmit { frames });
    }

    /// Whether `peer` holds the request that `address` (echoed in a reply) names.
    fn holds_request(&self, peer: &PeerId, address: &PeerId) -> bool {
        self.workers
            .get(peer)
            .is_some_and(|w| w.find(address).is_some())
    }

    /// A worker answered one of its requests: it is a sign of life, and a worker that was
    /// full has credit again, so it goes to the back of the list of workers with credit.
    fn replied(&mut self, now: Instant, peer: &PeerId, was_full: bool) {
        if was_full {
            self.make_idle(now, peer);
        } else {
            self.refresh(now, peer);
        }
    }

    /// Puts a worker at the back of its service's list of workers with credit (most
    /// recently used); workers of capacity 1 in it are idle.
    fn make_idle(&mut self, now: Instant, peer: &PeerId) {
        self.refresh(now, peer);
        if let Some(w) = self.workers.get(peer)
            && let Some(s) = self.services.get_mut(&w.service)
        {
            s.idle.push_back(peer.clone());
        }
    }

    /// A sign of life that may have left the worker idle: its expiry moves on, and its
    /// `since` too if it holds nothing now (one still holding requests stays busy since
    /// it became busy).
    fn refresh(&mut self, now: Instant, peer: &PeerId) {
        let Some(w) = self.workers.get_mut(peer) else {
            return;
        };
        w.expiry = now + self.config.worker_expiry();
        if !w.is_busy() {
            w.since = now;
        }
        arm_worker(&mut self.timers, peer, w);
    }

    /// Sends waiting requests of `service` to its idle workers, least recently used first.
    fn dispatch(&mut self, now: Instant, service: &ServiceName) {
        let deadline = now + self.config.request_timeout(service);
        loop {
            let Some(s) = self.services.get_mut(service) else {
                return;
            };
            if s.idle.is_empty() {
                break;
            }
            let Some(mut req) = s.requests.pop_front() else {
                break;
            };
            self.work += 1;
            if !self.is_live(&req) {
                continue; // answered already (its deadline passed while it waited)
            }
            if matches!(req.origin, Origin::Mdp(_)) && self.departed.contains(&req.client) {
                // Its client left for good: not worth a worker's time. Gone from the
                // journal too, or a restart would run it after all.
                self.counters.abandoned += 1;
                if let Some(key) = req.journal {
                    self.journal_op(JournalOp::Delete { key });
                }
                continue;
            }
            let Some(s) = self.services.get_mut(service) else {
                return;
            };
            let Some(peer) = s.idle.pop_front() else {
                s.requests.unpop(req);
                break;
            };
            let Some(w) = self.workers.get_mut(&peer) else {
                s.requests.unpop(req);
                continue;
            };
            self.counters.dispatched += 1;
            req.attempts += 1;
            let tag = if w.capacity == 1 {
                req.client.clone()
            } else {
                // A number no other request of this broker run has.
                self.last_tag += 1;
                PeerId::tag(self.last_tag)
            };
            // majortomo's worker drops a REQUEST with no body frame unanswered: give it one
            // empty frame, which is the same empty body.
            let body = if req.body.is_empty() && w.version == Version::V2Delimited {
                vec![Bytes::new()]
            } else {
                req.body.clone()
            };
            let cmd = WorkerCommand::Request {
                client: tag.clone(),
                body,
            };
            if !w.is_busy() {
                w.since = now;
                w.busy_heartbeats = 0;
            }
            w.held.push(Held {
                tag,
                request: req,
                deadline,
            });
            if w.has_credit() {
                // Round robin among the workers with room.
                s.idle.push_back(peer.clone());
            }
            arm_worker(&mut self.timers, &peer, w);
            let version = w.version;
            self.push(to_worker(&peer, version, cmd));
        }
        self.forget_if_unused(service);
    }

    /// Removes a worker; its held request goes back to the head of the queue, or fails
    /// when it has had its attempts.
    fn delete_worker(&mut self, now: Instant, peer: &PeerId, send_disconnect: bool, why: Gone) {
        let Some(w) = self.workers.remove(peer) else {
            return;
        };
        self.timers.cancel(&Timer::Worker(peer.clone()));
        self.event(|| Event::WorkerGone {
            service: w.service.clone(),
            worker: peer.clone(),
            why,
        });
        if send_disconnect {
            self.push(to_worker(peer, w.version, WorkerCommand::Disconnect));
        }
        let mut last = false;
        if let Some(s) = self.services.get_mut(&w.service) {
            s.workers = s.workers.saturating_sub(1);
            if s.workers == 0 {
                s.workerless_since = Some(now);
                last = true;
            }
            s.idle.retain(|p| p != peer);
        }
        // Newest first, each to the head of the line: the oldest ends up first.
        for Held {
            request: mut req, ..
        } in w.held.into_iter().rev()
        {
            if !self.is_live(&req) {
                // Already answered; nothing to redeliver.
            } else if req.attempts >= self.config.max_attempts {
                self.finish(
                    now,
                    &w.service,
                    &req,
                    Outcome::Fail(FailReason::AttemptsExhausted),
                );
            } else if let Some(s) = self.services.get_mut(&w.service) {
                // Back to the head of the line: it has waited longest.
                self.counters.requeued += 1;
                req.enqueued_at = now;
                let attempts = req.attempts;
                s.requests.push_front(req);
                self.event(|| Event::Redelivered {
                    service: w.service.clone(),
                    attempts,
                });
            }
        }
        if last {
            self.event(|| Event::ServiceDown {
                service: w.service.clone(),
            });
        }
        self.arm_waiting(&w.service);
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

    // ---- timers ----

    /// Sets the timer of `service` to when its oldest request gives up for want of a
    /// worker, or clears it when that does not apply (it has workers, or nothing waits).
    fn arm_waiting(&mut self, service: &ServiceName) {
        let wait = self.config.unknown_service_wait();
        let key = Timer::Waiting(service.clone());
        match self
            .services
            .get(service)
            .and_then(|s| s.no_worker_deadline(wait))
        {
            Some(at) => self.timers.set(key, at),
            None => self.timers.cancel(&key),
        }
    }

    /// A worker's timer fired: a silent one is expired, one that held a request past its
    /// deadline is disconnected; otherwise its timer is set to when it is next due.
    fn check_worker(&mut self, now: Instant, peer: &PeerId) {
        let Some(w) = self.workers.get_mut(peer) else {
            return;
        };
        // The table no longer holds a time for it.
        w.timer_at = None;
        let silent = w.expiry <= now && (!w.is_busy() || w.heartbeats_while_busy);
        if silent {
            info!(worker = %peer, "worker expired after heartbeat silence");
            self.counters.workers_expired += 1;
            // Tell it, in case it is alive but slow: it will re-register.
            self.delete_worker(now, peer, true, Gone::Expired);
        } else if w.deadline().is_some_and(|d| d <= now) {
            warn!(worker = %peer, "worker held a request past its deadline, disconnecting it");
            self.counters.request_timeouts += 1;
            self.delete_worker(now, peer, true, Gone::Overran);
        } else {
            arm_worker(&mut self.timers, peer, w);
        }
    }

    /// Fails the requests of `service` that waited `unknown_service_wait_ms` with no
    /// worker to take them: the head of its expiring queue, for as long as it is due.
    fn expire_waiting(&mut self, now: Instant, service: &ServiceName) {
        let wait = self.config.unknown_service_wait();
        let mut expired = Vec::new();
        if let Some(s) = self.services.get_mut(service) {
            while s.no_worker_deadline(wait).is_some_and(|at| at <= now) {
                let Some(request) = s.requests.expiring.pop_front() else {
                    break;
                };
                expired.push(request);
            }
        }
        self.work += expired.len() as u64;
        for request in expired {
            if self.is_live(&request) {
                self.finish(now, service, &request, Outcome::Fail(FailReason::NoWorker));
            }
        }
        self.arm_waiting(service);
        self.forget_if_unused(service);
    }

    fn drop_message(&mut self, reason: DropReason, size: usize) {
        let n = match self.counters.dropped.get_mut(reason.index()) {
            Some(n) => {
                *n += 1;
                *n
            }
            None => 0,
        };
        // Log the 1st, 2nd, 4th, 8th… drop of each kind: visible, but a flood cannot
        // turn into a flood of log lines.
        if n.is_power_of_two() {
            warn!(reason = reason.label(), size, total = n, "dropped message");
        }
    }
}

/// Makes sure `w`'s timer fires no later than it is due: a new table entry only when its
/// due time came earlier than the one set (a deadline moving later waits for the timer).
fn arm_worker(timers: &mut Timers<Timer>, peer: &PeerId, w: &mut Worker) {
    let due = w.due();
    if w.timer_at.is_none_or(|at| due < at) {
        timers.set(Timer::Worker(peer.clone()), due);
        w.timer_at = Some(due);
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
        frames: m.encode_to(peer),
    }
}

/// `bytes` as a JSON string (lossy UTF-8, escaped).
fn json_string(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
