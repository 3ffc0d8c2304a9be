//! Workers and services: registration, dispatch, departure.

use super::counters::{DropReason, FailReason};
use super::events::{Event, Gone};
use super::timers::{Timer, arm_worker};
use super::{Broker, Origin, Outcome, Request, Transmit, mdp_reply, to_worker};
use crate::journal::JournalOp;
use crate::mdp::{
    Body, ClientKind, ClientMessage, Message, NativeCommand, PeerId, ServiceName, Version,
    WorkerCommand,
};
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tracing::debug;

/// A request a worker holds.
#[derive(Debug)]
pub(super) struct Held {
    /// The address the worker was given to echo: the client's own for a worker of
    /// capacity 1, else a tag of the broker's making.
    tag: PeerId,
    pub(super) request: Request,
    /// When the worker must have answered it: its timeout from when it was sent, or from
    /// when the worker answered the oldest request it held before it, if later.
    deadline: Instant,
}

/// A registered worker.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) service: ServiceName,
    pub(super) version: Version,
    /// When a silent worker is expired.
    pub(super) expiry: Instant,
    /// Requests it may hold at once (1 unless its READY said more).
    pub(super) capacity: usize,
    /// The requests it is working on, oldest first; at most `capacity`.
    pub(super) held: Vec<Held>,
    /// Whether it has heartbeated while holding a request. Such a worker (ours do) is
    /// expired for silence even when busy; one that does not (the reference
    /// single-threaded workers, majortomo's) is bounded by the request deadline alone.
    pub(super) heartbeats_while_busy: bool,
    /// Heartbeats since it last became busy. It takes two to show a worker heartbeats
    /// while busy: a single-threaded worker may send one that crosses the REQUEST on the
    /// wire, and then falls silent until it has answered.
    busy_heartbeats: u32,
    /// The time its timer is set for in the broker's table (no later than [`Worker::due`]),
    /// kept here so that the common case, a deadline moving later, costs no table lookup.
    pub(super) timer_at: Option<Instant>,
    /// When it last became idle or busy (for `mmi.status`).
    pub(super) since: Instant,
    /// Which of its service's lists of workers to send to it is in.
    lane: Lane,
}

/// Where a worker waits to be sent a request: least-loaded dispatch sends to a worker
/// holding nothing first, and to one that holds some but has room only when every worker
/// holds something, so a slow request does not get others queued behind it while a
/// worker stands idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Holding nothing: in `Service::free`.
    Free,
    /// Holding some, with room for more: in `Service::room` under this stamp.
    Room(u64),
    /// Full, or left out (a broker that abandoned its requests): in neither.
    Out,
}

impl Worker {
    pub(super) fn is_busy(&self) -> bool {
        !self.held.is_empty()
    }

    fn has_credit(&self) -> bool {
        self.held.len() < self.capacity
    }

    /// When the earliest of its requests is due: the oldest's, since every request of a
    /// service gets the same timeout and `held` is oldest first.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.held.first().map(|h| h.deadline)
    }

    /// When the broker must look at it again: its expiry, or the deadline of a request
    /// it holds, whichever comes first (for a worker that does not heartbeat while busy,
    /// only the deadline counts).
    pub(super) fn due(&self) -> Instant {
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
pub(super) struct Waiting {
    pub(super) expiring: VecDeque<Request>,
    forever: VecDeque<Request>,
    /// The order the next request put at the head gets (then one less).
    head: i64,
    /// The order the next request put at the tail gets (then one more).
    tail: i64,
}

impl Waiting {
    pub(super) fn len(&self) -> usize {
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

    pub(super) fn push_back(&mut self, mut request: Request) {
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

    pub(super) fn drain(&mut self) -> impl Iterator<Item = Request> + '_ {
        self.expiring.drain(..).chain(self.forever.drain(..))
    }
}

/// A named service: its waiting requests and the workers that can take one.
#[derive(Debug)]
pub(super) struct Service {
    pub(super) requests: Waiting,
    /// Workers holding nothing, least recently used first: served first.
    free: VecDeque<PeerId>,
    /// Workers holding some requests with room for more, in the order they got room
    /// (round robin among them). A worker that leaves this list (it became free or
    /// full, or left) leaves a stale entry behind, told by its stamp: removing it would
    /// cost a scan per reply. Stale entries are skipped at the head and swept when they
    /// outnumber the workers.
    room: VecDeque<(PeerId, u64)>,
    /// The stamp the next entry of `room` gets: stamps never repeat within a service, so
    /// a worker that re-registers under the same address cannot revive an old entry.
    next_stamp: u64,
    pub(super) workers: usize,
    /// Since when the service has had no worker; `None` while it has some.
    workerless_since: Option<Instant>,
}

impl Service {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            requests: Waiting::default(),
            free: VecDeque::new(),
            room: VecDeque::new(),
            next_stamp: 0,
            workers: 0,
            workerless_since: Some(now),
        }
    }

    /// When the request at the head of the expiring queue fails for want of a worker, if
    /// the service has none. The queue is in the order its requests fail: requests join
    /// the tail as time goes on, and the head only while the service has workers (a
    /// departing worker's requests), so once it has none every request queued before
    /// counts its wait from the same instant, `workerless_since`.
    pub(super) fn no_worker_deadline(&self, wait: Duration) -> Option<Instant> {
        let since = self.workerless_since?;
        let head = self.requests.expiring.front()?;
        Some(head.enqueued_at.max(since) + wait)
    }
}

/// How long a service's room list may grow with stale entries before they are swept:
/// a sweep costs the list's length, paid for by as many pushes, so dispatch stays O(1)
/// amortized.
fn room_bound(workers: usize) -> usize {
    2 * workers + 16
}

/// Drops the entries of a service's room list that no longer stand for a worker in it.
fn sweep_room(s: &mut Service, workers: &HashMap<PeerId, Worker>) {
    s.room
        .retain(|(p, stamp)| workers.get(p).is_some_and(|w| w.lane == Lane::Room(*stamp)));
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

impl Broker {
    /// Queues a request on its service; the caller dispatches. A refused request comes
    /// back with the reason, for the caller to answer.
    pub(super) fn enqueue(
        &mut self,
        now: Instant,
        service: &ServiceName,
        request: Request,
    ) -> Result<(), Box<(FailReason, Request)>> {
        if self.standby && !request.recovered {
            return Err(Box::new((FailReason::NotLeader, request)));
        }
        if self.is_draining() && !request.recovered {
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

    pub(super) fn on_worker(
        &mut self,
        now: Instant,
        peer: &PeerId,
        version: Version,
        cmd: WorkerCommand,
    ) {
        let known = self.workers.contains_key(peer);
        if let Some(w) = self.workers.get_mut(peer) {
            // Any command is a sign of life.
            w.expiry = now + self.config.worker_expiry();
        }
        match cmd {
            WorkerCommand::Ready {
                service,
                capacity,
                bundle,
            } if !known && !service.is_mmi() && self.ensure_service(now, &service) => {
                debug!(worker = %peer, %service, ?version, capacity, bundle, "worker ready");
                if bundle {
                    self.reads_bundles(peer);
                }
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
                        lane: Lane::Out,
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
                self.refresh(now, peer);
                self.place(peer);
                self.dispatch(now, &service);
            }
            WorkerCommand::Reply { client, body } if self.holds_request(peer, &client) => {
                let Some(w) = self.workers.get_mut(peer) else {
                    return;
                };
                let service = w.service.clone();
                if let Some(i) = w.find(&client) {
                    // Route to the client the request came from: a worker cannot reach
                    // clients it was not sent.
                    let held = w.held.remove(i);
                    if i == 0
                        && let Some(next) = w.held.first_mut()
                    {
                        // A worker takes its requests one after another: the next one's
                        // time starts now, not when it was sent to wait in line.
                        next.deadline = now + self.config.request_timeout(&service);
                    }
                    if self.is_live(&held.request) {
                        self.finish(now, &service, &held.request, Outcome::Reply(body));
                    } else {
                        self.drop_message(DropReason::LateReply, 0);
                    }
                }
                self.refresh(now, peer);
                self.place(peer);
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
                // RFC 7 and RFC 18: a worker that says something out of turn is told to
                // DISCONNECT; a worker that lost its broker re-registers this way.
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
        self.push(Transmit { dest: (), frames });
    }

    /// Whether `peer` holds the request that `address` (echoed in a reply) names.
    fn holds_request(&self, peer: &PeerId, address: &PeerId) -> bool {
        self.workers
            .get(peer)
            .is_some_and(|w| w.find(address).is_some())
    }

    /// Puts a worker in the list its load calls for, after it registered or what it
    /// holds changed: at the back (most recently used) of the free list when it holds
    /// nothing, of the room list when it holds some and has room, in neither when full.
    /// A worker already in the right list keeps its place.
    fn place(&mut self, peer: &PeerId) {
        let Some(w) = self.workers.get_mut(peer) else {
            return;
        };
        let Some(s) = self.services.get_mut(&w.service) else {
            return;
        };
        let lane = match (w.is_busy(), w.has_credit(), w.lane) {
            (false, _, Lane::Free) | (true, true, Lane::Room(_)) => return,
            (false, _, _) => {
                s.free.push_back(peer.clone());
                Lane::Free
            }
            (true, true, _) => {
                let stamp = s.next_stamp;
                s.next_stamp += 1;
                s.room.push_back((peer.clone(), stamp));
                Lane::Room(stamp)
            }
            (true, false, _) => Lane::Out,
        };
        w.lane = lane;
        if s.room.len() > room_bound(s.workers) {
            sweep_room(s, &self.workers);
        }
    }

    /// The worker a request of `service` goes to next, taken off its list: the least
    /// recently used of those holding nothing, else the next of those with room.
    fn take_worker(&mut self, service: &ServiceName) -> Option<PeerId> {
        let s = self.services.get_mut(service)?;
        if let Some(peer) = s.free.pop_front() {
            return Some(peer);
        }
        while let Some((peer, stamp)) = s.room.pop_front() {
            if self
                .workers
                .get(&peer)
                .is_some_and(|w| w.lane == Lane::Room(stamp))
            {
                return Some(peer);
            }
        }
        None
    }

    /// Whether `service` has a worker to send a request to (stale entries at the head
    /// of its room list are dropped on the way).
    fn has_taker(&mut self, service: &ServiceName) -> bool {
        let Some(s) = self.services.get_mut(service) else {
            return false;
        };
        while let Some((peer, stamp)) = s.room.front() {
            if self
                .workers
                .get(peer)
                .is_some_and(|w| w.lane == Lane::Room(*stamp))
            {
                break;
            }
            s.room.pop_front();
        }
        !s.free.is_empty() || !s.room.is_empty()
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

    /// Sends waiting requests of `service` to its workers, least loaded first.
    pub(super) fn dispatch(&mut self, now: Instant, service: &ServiceName) {
        let deadline = now + self.config.request_timeout(service);
        loop {
            if !self.has_taker(service) {
                break;
            }
            let Some(s) = self.services.get_mut(service) else {
                return;
            };
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
            let Some(peer) = self.take_worker(service) else {
                if let Some(s) = self.services.get_mut(service) {
                    s.requests.unpop(req);
                }
                break;
            };
            let Some(w) = self.workers.get_mut(&peer) else {
                if let Some(s) = self.services.get_mut(service) {
                    s.requests.unpop(req);
                }
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
                self.urgent = true;
            }
            w.held.push(Held {
                tag,
                request: req,
                deadline,
            });
            // Taken off its list: back in the one its new load calls for.
            w.lane = Lane::Out;
            arm_worker(&mut self.timers, &peer, w);
            let version = w.version;
            self.place(&peer);
            self.push(to_worker(&peer, version, cmd));
        }
        self.forget_if_unused(service);
    }

    /// Removes a worker; its held request goes back to the head of the queue, or fails
    /// when it has had its attempts.
    pub(super) fn delete_worker(
        &mut self,
        now: Instant,
        peer: &PeerId,
        send_disconnect: bool,
        why: Gone,
    ) {
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
        // Its next READY says again whether it reads bundles.
        self.bundled.remove(peer.as_bytes());
        let mut last = false;
        if let Some(s) = self.services.get_mut(&w.service) {
            s.workers = s.workers.saturating_sub(1);
            if s.workers == 0 {
                s.workerless_since = Some(now);
                last = true;
            }
            s.free.retain(|p| p != peer);
            // Rare enough to sweep the room list whole, which keeps it within its bound
            // of the (now fewer) workers.
            sweep_room(s, &self.workers);
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

    /// Whether every service's dispatch lists are within their bounds: each free worker
    /// listed once, and stale entries of the room list swept before they outnumber the
    /// workers (for the simulations' invariants).
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) fn dispatch_lists_bounded(&self) -> bool {
        self.services.values().all(|s| {
            let free: std::collections::HashSet<_> = s.free.iter().collect();
            free.len() == s.free.len()
                && s.free.len() <= s.workers
                && s.room.len() <= room_bound(s.workers)
        })
    }

    /// A service with no workers and no requests is forgotten, so services stay bounded
    /// by what is in use.
    pub(super) fn forget_if_unused(&mut self, service: &ServiceName) {
        if self
            .services
            .get(service)
            .is_some_and(|s| s.workers == 0 && s.requests.is_empty())
        {
            self.services.remove(service);
        }
    }
}
