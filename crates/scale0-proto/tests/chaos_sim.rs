//! Deterministic chaos: the real broker, worker and native client state machines (the
//! client's retries are the library's), on a simulated network with latency and loss, through worker deaths, slow and
//! non-heartbeating workers, lost replies and broker restarts, over many seeds.
//!
//! Invariants: every request a client sent ends at that client with a FINAL or an
//! ERROR, every answer to one request id is the same answer, a FINAL carries the reply to
//! that very request, a client's retry never causes a second execution (only a worker's
//! death, a lost reply or a broker restart may), and no worker is ever handed a second
//! request while it works on one. Some clients and workers ask for bundles, so the same
//! invariants hold with many messages carried as one. `SCALE0_SIM_SEEDS=N` runs more
//! seeds.

mod sim;

use scale0_proto::broker::{self, Broker};
use scale0_proto::bundle;
use scale0_proto::client::{self, Event, Outcome};
use scale0_proto::mdp::{self, Message, NativeCommand, RequestId, WorkerCommand};
use scale0_proto::worker::{Action, Session};
use scale0_proto::{Frames, PeerId, testkit};
use sim::{Rng, at, bytes, peer, svc};
use std::collections::{HashMap, VecDeque};

struct SimWorker {
    session: Session,
    name: String,
    generation: u32,
    alive: bool,
    /// The tokens handed to it, in order, and when the first one's work is done. A
    /// worker with credit may hold several; it works on one at a time.
    working: VecDeque<String>,
    head_done: u64,
    /// Requests it may hold at once (its READY says so when above 1).
    capacity: u32,
    /// Behaves like a reference single-threaded worker: no heartbeats while busy.
    silent_when_busy: bool,
    work_ms: u64,
    /// The tokens it replied to lately, with when: such a reply may still be on the wire
    /// when it dies.
    recent_replies: Vec<(String, u64)>,
}

impl SimWorker {
    /// What may run again if this worker vanishes now: what it holds, and the replies
    /// that may not have arrived yet.
    fn at_risk(&self) -> Vec<String> {
        self.working
            .iter()
            .cloned()
            .chain(self.recent_replies.iter().map(|(t, _)| t.clone()))
            .collect()
    }
}

impl SimWorker {
    fn id(&self) -> PeerId {
        peer(&format!("{}.{}", self.name, self.generation))
    }
}

/// One request as the network saw it.
struct Pending {
    token: String,
    /// Sends of its id on the wire, retries included.
    sends: u32,
    /// Every FINAL and ERROR that reached the client for it, duplicates included.
    answers: Vec<NativeCommand>,
}

struct SimClient {
    id: PeerId,
    session: client::Session<String>,
    /// Requests not made yet: when, and the token that is its body.
    to_send: VecDeque<(u64, String)>,
    requests: HashMap<RequestId, Pending>,
    /// How the session said each request ended, by token.
    ended: HashMap<String, Outcome>,
}

impl SimClient {
    fn pending(&self) -> impl Iterator<Item = &Pending> {
        self.requests
            .values()
            .filter(|p| !self.ended.contains_key(&p.token))
    }
}

enum To {
    Broker(PeerId),
    Peer(PeerId),
}

struct World {
    rng: Rng,
    now: u64,
    broker: Broker,
    broker_config: broker::Config,
    workers: Vec<SimWorker>,
    clients: Vec<SimClient>,
    net: Vec<(u64, To, Frames)>,
    loss_percent: u64,
    executions: HashMap<String, u32>,
    /// The most requests any worker held at once, to know credit was exercised.
    most_held: usize,
    /// Executions a request may legitimately have beyond its first.
    reruns_allowed: HashMap<String, u32>,
    chaos_until: u64,
    /// Bundles that crossed the network to the broker and from it, to know they were
    /// exercised both ways.
    bundles: [u64; 2],
}

/// The messages `frames` carries: itself, or those of a bundle.
fn messages(frames: &Frames) -> Vec<Frames> {
    if bundle::is_bundle(frames) {
        bundle::decode(frames).expect("a peer sent a bundle that does not decode")
    } else {
        vec![frames.clone()]
    }
}

/// Whether a native message is about a question a session asked of the broker (its
/// `mmi.bundle`), not a request of its user.
fn is_question(id: &RequestId) -> bool {
    id.as_bytes().first() == Some(&b'b')
}

const SERVICE: &str = "svc";

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let broker_config = broker::Config {
            heartbeat_interval_ms: 100,
            heartbeat_liveness: 3,
            request_timeout_ms: 1_000 + rng.below(2_000),
            // A worker slower than the request deadline makes every attempt overrun; the
            // bound turns that into an explicit error instead of a livelock.
            max_attempts: 3 + u32::try_from(rng.below(4)).unwrap(),
            unknown_service_wait_ms: 600_000,
            ..broker::Config::default()
        };
        let loss_percent = rng.below(4);
        let mut w = Self {
            broker: Broker::new(broker_config.clone(), at(0)),
            broker_config,
            rng,
            now: 0,
            workers: Vec::new(),
            clients: Vec::new(),
            net: Vec::new(),
            loss_percent,
            executions: HashMap::new(),
            most_held: 0,
            reruns_allowed: HashMap::new(),
            chaos_until: 5_000,
            bundles: [0; 2],
        };
        for _ in 0..(1 + w.rng.below(4)) {
            w.spawn_worker();
        }
        for c in 0..(1 + w.rng.below(3)) {
            let n = 1 + w.rng.below(30);
            let mut to_send: Vec<_> = (0..n)
                .map(|r| (w.rng.below(2_000), format!("c{c}-r{r}")))
                .collect();
            to_send.sort();
            // Retries without end, so every request ends with the broker's answer.
            let config = client::Config {
                timeout_ms: 300,
                retries: 100_000,
                acknowledged: true,
                bundle: w.rng.chance(50),
                ..client::Config::default()
            };
            w.clients.push(SimClient {
                id: peer(&format!("\x01client{c}")),
                session: client::Session::new(config),
                to_send: to_send.into(),
                requests: HashMap::new(),
                ended: HashMap::new(),
            });
        }
        w
    }

    fn spawn_worker(&mut self) {
        let n = self.workers.len();
        let mut config = sim::fast_worker(&mut self.rng, SERVICE);
        let silent_when_busy = self.rng.chance(30);
        let capacity = if self.rng.chance(40) {
            2 + u32::try_from(self.rng.below(3)).unwrap()
        } else {
            1
        };
        config.capacity = capacity;
        config.bundle = self.rng.chance(60);
        let slow = self.rng.chance(20);
        let work_ms = 1 + self.rng.below(if slow { 1_500 } else { 50 });
        self.workers.push(SimWorker {
            session: Session::new(config, at(self.now)),
            name: format!("w{n}"),
            generation: 0,
            alive: true,
            working: VecDeque::new(),
            head_done: 0,
            capacity,
            silent_when_busy,
            work_ms,
            recent_replies: Vec::new(),
        });
    }

    fn send(&mut self, to: To, frames: Frames) {
        if self.rng.chance(self.loss_percent) && self.now < self.chaos_until {
            if std::env::var("SCALE0_SIM_TRACE").is_ok() {
                let kind = Message::decode(frames.clone())
                    .map(|m| format!("{m:?}").chars().take(90).collect::<String>());
                eprintln!("{}: lost {kind:?}", self.now);
            }
            // A lost worker reply means the broker will, in time, run the request again.
            if let To::Broker(_) = &to {
                for m in messages(&frames) {
                    if let Ok(
                        Message::Worker(WorkerCommand::Reply { body, .. })
                        | Message::Worker2(WorkerCommand::Reply { body, .. }),
                    ) = Message::decode(m)
                    {
                        let token = String::from_utf8_lossy(&body[0]).into_owned();
                        *self.reruns_allowed.entry(token).or_default() += 1;
                    }
                }
            }
            return;
        }
        if bundle::is_bundle(&frames) {
            self.bundles[usize::from(matches!(to, To::Peer(_)))] += 1;
        }
        let latency = self.rng.below(5);
        self.net.push((self.now + latency, to, frames));
    }

    fn step_workers(&mut self) {
        for i in 0..self.workers.len() {
            if !self.workers[i].alive {
                continue;
            }
            let now = self.now;
            // Replies take under 5 ms to arrive.
            self.workers[i]
                .recent_replies
                .retain(|(_, sent)| sent + 5 > now);
            while self.workers[i].head_done <= now
                && let Some(token) = self.workers[i].working.pop_front()
            {
                self.workers[i].session.reply(at(now), vec![bytes(&token)]);
                self.workers[i].recent_replies.push((token, now));
                self.workers[i].head_done = now + self.workers[i].work_ms;
            }
            sim::fire_due(&mut self.workers[i].session, at(now));
            while let Some(a) = self.workers[i].session.poll_action() {
                match a {
                    Action::Connect => self.workers[i].generation += 1,
                    Action::Disconnect => {}
                    Action::Send(frames) => {
                        let w = &self.workers[i];
                        let heartbeat = |m: &Frames| {
                            matches!(
                                Message::decode(m.clone()),
                                Ok(Message::Worker(WorkerCommand::Heartbeat)
                                    | Message::Worker2(WorkerCommand::Heartbeat))
                            )
                        };
                        let mut out = messages(&frames);
                        if w.silent_when_busy && !w.working.is_empty() {
                            out.retain(|m| !heartbeat(m));
                        }
                        let mut packer = bundle::Packer::new(0);
                        for m in out {
                            packer.push(m);
                        }
                        if packer.is_empty() {
                            continue;
                        }
                        let id = w.id();
                        self.send(To::Broker(id), packer.finish());
                    }
                    Action::Deliver { body, .. } => {
                        let token = String::from_utf8_lossy(&body[0]).into_owned();
                        let w = &self.workers[i];
                        assert!(
                            w.working.len() < w.capacity as usize
                                && w.session.counters().over_capacity == 0,
                            "a worker was handed more requests than its capacity"
                        );
                        *self.executions.entry(token.clone()).or_default() += 1;
                        if std::env::var("SCALE0_SIM_TRACE").is_ok_and(|t| t == token) {
                            let w = &self.workers[i];
                            eprintln!(
                                "{now}: {token} runs on {}.{} (work {} ms, silent {})",
                                w.name, w.generation, w.work_ms, w.silent_when_busy
                            );
                        }
                        let w = &mut self.workers[i];
                        if w.working.is_empty() {
                            w.head_done = now + w.work_ms;
                        }
                        w.working.push_back(token);
                        let held = w.working.len();
                        self.most_held = self.most_held.max(held);
                    }
                }
            }
        }
    }

    fn step_clients(&mut self) {
        let now = self.now;
        for c in 0..self.clients.len() {
            let client = &mut self.clients[c];
            while client.to_send.front().is_some_and(|(t, _)| *t <= now) {
                let (_, token) = client.to_send.pop_front().unwrap();
                let service = svc(SERVICE);
                let id =
                    client
                        .session
                        .request(at(now), service, vec![bytes(&token)], token.clone());
                let pending = Pending {
                    token,
                    sends: 0,
                    answers: Vec::new(),
                };
                assert!(
                    client.requests.insert(id, pending).is_none(),
                    "a request id was used twice"
                );
            }
            sim::fire_due(&mut client.session, at(now));
            Self::client_events(client);
            let mut out = Vec::new();
            while let Some(scale0_proto::Transmit { frames, .. }) = client.session.poll_transmit() {
                for m in messages(&frames) {
                    let Ok(Message::Native(NativeCommand::Request { id, .. })) = Message::decode(m)
                    else {
                        panic!("a client sent something other than a native REQUEST");
                    };
                    if !is_question(&id) {
                        client.requests.get_mut(&id).expect("a known id").sends += 1;
                    }
                }
                out.push(frames);
            }
            let from = client.id.clone();
            for frames in out {
                self.send(To::Broker(from.clone()), frames);
            }
        }
    }

    /// Takes what the client's session says of its requests.
    fn client_events(client: &mut SimClient) {
        while let Some(event) = client.session.poll_event() {
            if let Event::Done { tag, outcome, .. } = event {
                assert!(
                    client.ended.insert(tag.clone(), outcome).is_none(),
                    "{tag} ended twice"
                );
            }
        }
    }

    fn step_broker(&mut self) {
        sim::fire_due(&mut self.broker, at(self.now));
        self.flush_broker();
    }

    fn flush_broker(&mut self) {
        while let Some(t) = self.broker.poll_transmit() {
            let Ok((to, rest)) = mdp::split_routing_id(t.frames) else {
                panic!("the broker sent a message without a routing id");
            };
            // ROUTER_MANDATORY: a send to a worker whose process died fails at once.
            let dead = self.workers.iter().any(|w| !w.alive && w.id() == to);
            if dead {
                self.broker.handle_unroutable(at(self.now), &to);
                continue;
            }
            // The broker gave up on a worker (silent, or past the request deadline): what
            // it holds runs again elsewhere, even if the worker, never hearing of it,
            // finishes too.
            let disconnect = messages(&rest).into_iter().any(|m| {
                matches!(
                    Message::decode(m),
                    Ok(Message::Worker(WorkerCommand::Disconnect)
                        | Message::Worker2(WorkerCommand::Disconnect))
                )
            });
            if disconnect && std::env::var("SCALE0_SIM_TRACE").is_ok() {
                eprintln!("{}: broker sends DISCONNECT to {to:?}", self.now);
            }
            if disconnect {
                // Its current request, or the one whose reply is still on the wire.
                if let Some(w) = self.workers.iter().find(|w| w.id() == to) {
                    let tokens = w.at_risk();
                    let generation = format!("{}.{}", w.name, w.generation);
                    for token in tokens {
                        let key = format!("{token}@{generation}");
                        if self.reruns_allowed.insert(key, 0).is_none() {
                            *self.reruns_allowed.entry(token).or_default() += 1;
                        }
                    }
                }
            }
            if let Ok(trace) = std::env::var("SCALE0_SIM_TRACE") {
                let text = format!("{:?}", Message::decode(rest.clone()));
                if text.contains(&format!("b\"{trace}\"")) {
                    eprintln!(
                        "{}: broker to {to:?}: {}",
                        self.now,
                        text.chars().take(160).collect::<String>()
                    );
                }
            }
            self.send(To::Peer(to), rest);
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|(t, ..)| *t <= now);
        self.net = later;
        for (_, to, frames) in due {
            match to {
                To::Broker(from) => {
                    let mut f = vec![from.as_bytes().clone()];
                    f.extend(frames);
                    self.broker.handle_message(at(now), f);
                    testkit::check_invariants(&self.broker);
                    self.flush_broker();
                }
                To::Peer(id) => {
                    if let Some(w) = self.workers.iter_mut().find(|w| w.alive && w.id() == id) {
                        let _ = w.session.handle_message(at(now), frames);
                    } else if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
                        let inner = messages(&frames);
                        c.session.handle_message(at(now), 0, frames).unwrap();
                        Self::client_events(c);
                        for m in inner {
                            Self::record_answer(c, m);
                        }
                    }
                }
            }
        }
    }

    /// An answer that reached a client, for the invariants.
    fn record_answer(c: &mut SimClient, frames: Frames) {
        let Ok(Message::Native(cmd)) = Message::decode(frames) else {
            panic!("a client got a message that is not native");
        };
        if is_question(cmd.id()) {
            return;
        }
        let p = c
            .requests
            .get_mut(cmd.id())
            .expect("an answer for a request the client sent");
        match &cmd {
            NativeCommand::Final { body, .. } => {
                assert_eq!(
                    body,
                    &vec![bytes(&p.token)],
                    "a FINAL carries the reply to its own request"
                );
                p.answers.push(cmd);
            }
            NativeCommand::Error { .. } => p.answers.push(cmd),
            NativeCommand::Accepted { .. } | NativeCommand::Partial { .. } => {}
            NativeCommand::Request { .. } => panic!("a client got a REQUEST"),
        }
    }

    fn chaos(&mut self) {
        if self.now >= self.chaos_until {
            return;
        }
        let roll = self.rng.below(1_000);
        if roll < 6 && std::env::var("SCALE0_SIM_TRACE").is_ok() {
            eprintln!(
                "{}: chaos {}",
                self.now,
                ["kill", "kill", "kill", "spawn", "spawn", "restart"][roll as usize]
            );
        }
        if roll < 3 {
            // SIGKILL a worker: whatever it held may run again elsewhere.
            let alive: Vec<usize> = (0..self.workers.len())
                .filter(|&i| self.workers[i].alive)
                .collect();
            if alive.len() > 1 {
                let i = alive[self.rng.below(alive.len() as u64) as usize];
                self.workers[i].alive = false;
                // What it was working on runs again; so may what it just answered, if the
                // broker learns of the death before the reply reaches it.
                for token in self.workers[i].at_risk() {
                    *self.reruns_allowed.entry(token).or_default() += 1;
                }
            }
        } else if roll < 5 {
            self.spawn_worker();
        } else if roll < 6 {
            // Broker restart: all its state is gone; pending requests may run again.
            self.broker = Broker::new(self.broker_config.clone(), at(self.now));
            self.net.retain(|(_, to, _)| matches!(to, To::Peer(_)));
            for w in &self.workers {
                for token in &w.working {
                    *self.reruns_allowed.entry(token.clone()).or_default() += 1;
                }
            }
            for c in &self.clients {
                for p in c.pending() {
                    *self.reruns_allowed.entry(p.token.clone()).or_default() += 1;
                }
            }
        }
    }

    /// A worker told to DISCONNECT while working, or overrunning its deadline, abandons
    /// its request; the broker runs it again elsewhere.
    fn note_abandoned(&mut self) {
        for w in &self.workers {
            if !w.alive || w.session.is_connected() {
                continue;
            }
            for token in &w.working {
                let key = format!("{token}@{}.{}", w.name, w.generation);
                if self.reruns_allowed.insert(key, 0).is_none() {
                    *self.reruns_allowed.entry(token.clone()).or_default() += 1;
                }
            }
        }
    }

    /// What was left, for a failure message.
    fn report(&self, seed: u64) {
        eprintln!(
            "seed {seed}: broker services {:?}, workers {} (busy {}), native {:?}",
            self.broker.services(),
            self.broker.worker_count(),
            self.broker.busy_workers(),
            self.broker.native_requests()
        );
        for w in &self.workers {
            eprintln!(
                "  worker {}.{} alive {} connected {} working {:?} silent_when_busy {}",
                w.name,
                w.generation,
                w.alive,
                w.session.is_connected(),
                w.working,
                w.silent_when_busy
            );
        }
        for c in &self.clients {
            for p in c.pending() {
                eprintln!("  unanswered {} sends {}", p.token, p.sends);
            }
        }
        eprintln!("  counters {:?}", self.broker.counters());
    }

    fn done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.to_send.is_empty() && c.session.outstanding() == 0)
    }

    fn run(&mut self, seed: u64) {
        // Generous: one slow worker can take every attempt of every request in turn.
        let end = 600_000;
        while !self.done() {
            if self.now >= end {
                self.report(seed);
                panic!("seed {seed}: requests still unanswered after {end} ms");
            }
            self.deliver();
            self.step_clients();
            self.step_workers();
            self.note_abandoned();
            self.step_broker();
            self.chaos();
            self.now += 1;
        }
    }

    fn check(&self, seed: u64) {
        for w in &self.workers {
            assert_eq!(
                w.session.counters().over_capacity,
                0,
                "seed {seed}: {} was sent more than its capacity {}",
                w.name,
                w.capacity
            );
        }
        for c in &self.clients {
            assert_eq!(
                c.ended.len(),
                c.requests.len(),
                "seed {seed}: requests lost"
            );
            for p in c.requests.values() {
                let first = &p.answers[0];
                let expected = match first {
                    NativeCommand::Final { body, .. } => Outcome::Reply(body.clone()),
                    NativeCommand::Error {
                        status, message, ..
                    } => Outcome::Rejected {
                        status: *status,
                        message: message.clone(),
                    },
                    other => panic!("seed {seed}: {other:?} recorded as an answer"),
                };
                assert_eq!(
                    c.ended[&p.token], expected,
                    "seed {seed}: the session's outcome for {} is not the broker's first answer",
                    p.token
                );
                assert!(
                    p.answers.iter().all(|a| a == first),
                    "seed {seed}: different answers to {}",
                    p.token
                );
                assert!(
                    p.answers.len() as u32 <= p.sends,
                    "seed {seed}: more answers than sends for {}",
                    p.token
                );
                let runs = self.executions.get(&p.token).copied().unwrap_or(0);
                let allowed = 1 + self.reruns_allowed.get(&p.token).copied().unwrap_or(0);
                assert!(
                    runs <= allowed,
                    "seed {seed}: {} ran {runs} times, {allowed} allowed",
                    p.token
                );
                if matches!(first, NativeCommand::Final { .. }) {
                    assert!(runs >= 1, "seed {seed}: a FINAL without an execution");
                }
            }
        }
    }
}

#[test]
fn every_request_ends_once_through_chaos_over_many_seeds() {
    if let Some(seed) = std::env::var("SCALE0_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        let mut world = World::new(seed);
        world.run(seed);
        world.check(seed);
        return;
    }
    let seeds: u64 = std::env::var("SCALE0_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let mut finals = 0;
    let mut most_held = 0;
    let mut bundles = [0; 2];
    for seed in 0..seeds {
        let mut world = World::new(seed);
        world.run(seed);
        world.check(seed);
        finals += world
            .clients
            .iter()
            .flat_map(|c| c.ended.values())
            .filter(|o| matches!(o, Outcome::Reply(_)))
            .count();
        most_held = most_held.max(world.most_held);
        bundles[0] += world.bundles[0];
        bundles[1] += world.bundles[1];
    }
    assert!(
        bundles[0] > 0 && bundles[1] > 0,
        "no bundle crossed the network: bundles went untested"
    );
    assert!(finals > 0);
    assert!(
        most_held > 1,
        "no worker ever held two requests: credit went untested"
    );
}
