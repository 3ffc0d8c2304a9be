//! Scale-out with independent brokers, deterministic: two real broker state machines,
//! workers registered with both (`worker::Group`), native clients spreading their requests
//! over both (`client::Session::with_brokers`), on a simulated network with latency; one
//! broker is killed mid-run, and in half the seeds comes back empty later.
//!
//! Invariants: every request ends exactly once at its client, with the reply to that very
//! request; no worker ever holds more than its capacity over both brokers together; a
//! request sent only ever to one broker runs exactly once (a second execution needs a
//! move, or the killed broker coming back empty); and a request the killed broker held
//! moves off it within three attempt timeouts of the kill.
//! `SCALE0_SIM_SEEDS=N` runs more seeds, `SCALE0_SIM_SEED=S` one.

mod sim;

use scale0_proto::broker::{self, Broker};
use scale0_proto::client::{self, Event, Outcome};
use scale0_proto::mdp::{self, Message, NativeCommand, RequestId};
use scale0_proto::worker::{Action, Group};
use scale0_proto::{Frames, PeerId, Transmit};
use sim::{Rng, at, bytes, peer, svc};
use std::collections::{BTreeSet, HashMap, VecDeque};

const SERVICE: &str = "svc";
const BROKERS: usize = 2;

struct SimWorker {
    group: Group,
    name: String,
    /// Connections opened to each broker: part of the routing id there.
    generation: [u32; BROKERS],
    /// Tokens handed to the handler, in order; the head is done at `head_done`.
    working: VecDeque<String>,
    head_done: u64,
    capacity: u32,
    work_ms: u64,
}

impl SimWorker {
    fn id(&self, broker: usize) -> PeerId {
        peer(&format!(
            "{}.b{broker}.{}",
            self.name, self.generation[broker]
        ))
    }
}

/// One request as the simulation saw it.
struct Pending {
    token: String,
    /// The brokers its id was sent to, retries and moves included.
    brokers: BTreeSet<usize>,
    /// The broker its latest send went to, and when it first went there.
    holder: Option<(usize, u64)>,
}

/// A request's stay on the broker that is killed: from its first send there to its
/// move elsewhere or its end.
struct Stay {
    token: String,
    from: u64,
    to: u64,
}

struct SimClient {
    id: PeerId,
    session: client::Session<String>,
    to_send: VecDeque<(u64, String)>,
    requests: HashMap<RequestId, Pending>,
    /// How the session said each request ended, by token; a second end fails the run.
    ended: HashMap<String, Outcome>,
    stays: Vec<Stay>,
}

enum To {
    /// To broker `.0`, from the peer `.1`.
    Broker(usize, PeerId),
    /// From broker `.0` to the peer `.1`.
    Peer(usize, PeerId),
}

struct World {
    rng: Rng,
    now: u64,
    brokers: [Option<Broker>; BROKERS],
    broker_config: broker::Config,
    workers: Vec<SimWorker>,
    clients: Vec<SimClient>,
    net: Vec<(u64, To, Frames)>,
    executions: HashMap<String, u32>,
    most_held: usize,
    victim: usize,
    kill_at: u64,
    restart_at: Option<u64>,
    client_timeout_ms: u64,
}

impl World {
    /// One broker is killed: `calm` keeps both alive, and makes some workers slower than a
    /// client's attempt timeout.
    fn new(seed: u64, calm: bool) -> Self {
        let mut rng = Rng::new(seed);
        let broker_config = broker::Config {
            heartbeat_interval_ms: 100,
            heartbeat_liveness: 3,
            // Above the longest a request can wait at a worker: behind every other request
            // it holds, from either broker (capacity 6 × work 1 s). A broker times a held
            // request from the last answer of the worker to it, and cannot see the other
            // broker's requests ahead of it in the worker's line.
            request_timeout_ms: 10_000,
            max_attempts: 10,
            unknown_service_wait_ms: 600_000,
            ..broker::Config::default()
        };
        let client_timeout_ms = 200 + rng.below(300);
        let victim = usize::try_from(rng.below(BROKERS as u64)).unwrap();
        let kill_at = if calm {
            u64::MAX
        } else {
            200 + rng.below(1_300)
        };
        let restart_at = (!calm && rng.chance(50)).then(|| kill_at + 500 + rng.below(2_500));
        let mut w = Self {
            brokers: std::array::from_fn(|_| Some(Broker::new(broker_config.clone(), at(0)))),
            broker_config,
            rng,
            now: 0,
            workers: Vec::new(),
            clients: Vec::new(),
            net: Vec::new(),
            executions: HashMap::new(),
            most_held: 0,
            victim,
            kill_at,
            restart_at,
            client_timeout_ms,
        };
        for n in 0..(1 + w.rng.below(4)) {
            let mut config = sim::fast_worker(&mut w.rng, SERVICE);
            config.capacity = 2 + u32::try_from(w.rng.below(5)).unwrap();
            let slow = calm && w.rng.chance(30);
            let work_ms = 1 + w.rng.below(if slow { 1_000 } else { 30 });
            w.workers.push(SimWorker {
                group: Group::new(&config, BROKERS, at(0)).unwrap(),
                name: format!("w{n}"),
                generation: [0; BROKERS],
                working: VecDeque::new(),
                head_done: 0,
                capacity: config.capacity,
                work_ms,
            });
        }
        for c in 0..(1 + w.rng.below(3)) {
            let n = 10 + w.rng.below(60);
            let mut to_send: Vec<_> = (0..n)
                .map(|r| (w.rng.below(2_000), format!("c{c}-r{r}")))
                .collect();
            to_send.sort();
            let config = client::Config {
                timeout_ms: client_timeout_ms,
                retries: 1_000,
                acknowledged: w.rng.chance(50),
                ..client::Config::default()
            };
            w.clients.push(SimClient {
                id: peer(&format!("\x01client{c}")),
                session: client::Session::with_brokers(config, BROKERS),
                to_send: to_send.into(),
                requests: HashMap::new(),
                ended: HashMap::new(),
                stays: Vec::new(),
            });
        }
        w
    }

    fn send(&mut self, to: To, frames: Frames) {
        let latency = self.rng.below(5);
        self.net.push((self.now + latency, to, frames));
    }

    fn step_workers(&mut self) {
        let now = self.now;
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            while w.head_done <= now
                && let Some(token) = w.working.pop_front()
            {
                w.group.reply(at(now), vec![bytes(&token)]);
                w.head_done = now + w.work_ms;
            }
            sim::fire_due(&mut w.group, at(now));
            while let Some((b, action)) = self.workers[i].group.poll_action() {
                match action {
                    Action::Connect => self.workers[i].generation[b] += 1,
                    Action::Disconnect => {}
                    Action::Send(frames) => {
                        let id = self.workers[i].id(b);
                        self.send(To::Broker(b, id), frames);
                    }
                    Action::Deliver { body, .. } => {
                        let token = String::from_utf8_lossy(&body[0]).into_owned();
                        let w = &mut self.workers[i];
                        assert!(
                            w.working.len() < w.capacity as usize,
                            "{} was handed more than its capacity {} over both brokers",
                            w.name,
                            w.capacity
                        );
                        *self.executions.entry(token.clone()).or_default() += 1;
                        if w.working.is_empty() {
                            w.head_done = now + w.work_ms;
                        }
                        w.working.push_back(token);
                        self.most_held = self.most_held.max(w.working.len());
                    }
                }
            }
        }
    }

    fn step_clients(&mut self) {
        let now = self.now;
        let victim = self.victim;
        for c in 0..self.clients.len() {
            let client = &mut self.clients[c];
            while client.to_send.front().is_some_and(|(t, _)| *t <= now) {
                let (_, token) = client.to_send.pop_front().unwrap();
                let id = client.session.request(
                    at(now),
                    svc(SERVICE),
                    vec![bytes(&token)],
                    token.clone(),
                );
                let pending = Pending {
                    token,
                    brokers: BTreeSet::new(),
                    holder: None,
                };
                assert!(
                    client.requests.insert(id, pending).is_none(),
                    "an id reused"
                );
            }
            sim::fire_due(&mut client.session, at(now));
            Self::client_events(client, now, victim);
            let mut out = Vec::new();
            while let Some(Transmit { dest, frames }) = client.session.poll_transmit() {
                let Ok(Message::Native(NativeCommand::Request { id, .. })) =
                    Message::decode(frames.clone())
                else {
                    panic!("a client sent something other than a native REQUEST");
                };
                if let Some(p) = client.requests.get_mut(&id) {
                    p.brokers.insert(dest);
                    match p.holder {
                        Some((b, _)) if b == dest => {}
                        Some((b, from)) => {
                            if b == victim {
                                client.stays.push(Stay {
                                    token: p.token.clone(),
                                    from,
                                    to: now,
                                });
                            }
                            p.holder = Some((dest, now));
                        }
                        None => p.holder = Some((dest, now)),
                    }
                } else {
                    assert!(
                        id.as_bytes().starts_with(b"p"),
                        "{id:?} is neither request nor probe"
                    );
                }
                out.push((dest, frames));
            }
            let from = client.id.clone();
            for (b, frames) in out {
                self.send(To::Broker(b, from.clone()), frames);
            }
        }
    }

    fn client_events(client: &mut SimClient, now: u64, victim: usize) {
        while let Some(event) = client.session.poll_event() {
            if let Event::Done { id, tag, outcome } = event {
                assert!(
                    client.ended.insert(tag.clone(), outcome).is_none(),
                    "{tag} ended twice at its client"
                );
                if let Some(Pending {
                    holder: Some((b, from)),
                    ..
                }) = client.requests.get(&id)
                    && *b == victim
                {
                    client.stays.push(Stay {
                        token: tag,
                        from: *from,
                        to: now,
                    });
                }
            }
        }
    }

    fn flush_broker(&mut self, b: usize) {
        let mut out = Vec::new();
        if let Some(broker) = self.brokers[b].as_mut() {
            while let Some(t) = broker.poll_transmit() {
                let (to, rest) = mdp::split_routing_id(t.frames).expect("a routing id");
                out.push((to, rest));
            }
        }
        for (to, rest) in out {
            self.send(To::Peer(b, to), rest);
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
                To::Broker(b, from) => {
                    // A dead broker's host refuses the connection: the message is gone.
                    let Some(broker) = self.brokers[b].as_mut() else {
                        continue;
                    };
                    let mut f = vec![from.as_bytes().clone()];
                    f.extend(frames);
                    broker.handle_message(at(now), f);
                    self.flush_broker(b);
                }
                To::Peer(b, id) => {
                    if let Some(w) = self.workers.iter_mut().find(|w| w.id(b) == id) {
                        let _ = w.group.handle_message(at(now), b, frames);
                    } else if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
                        if let Ok(Message::Native(NativeCommand::Final { id, body })) =
                            Message::decode(frames.clone())
                            && let Some(p) = c.requests.get(&id)
                        {
                            assert_eq!(
                                body,
                                vec![bytes(&p.token)],
                                "a FINAL carries the reply to its own request"
                            );
                        }
                        c.session.handle_message(at(now), b, frames).unwrap();
                        Self::client_events(c, now, self.victim);
                    }
                }
            }
        }
    }

    fn step_brokers(&mut self) {
        if self.now == self.kill_at {
            // kill -9: its state is gone, and nothing more reaches it or leaves it.
            self.brokers[self.victim] = None;
            let victim = self.victim;
            self.net
                .retain(|(_, to, _)| !matches!(to, To::Broker(b, _) if *b == victim));
        }
        if Some(self.now) == self.restart_at {
            self.brokers[self.victim] = Some(Broker::new(self.broker_config.clone(), at(self.now)));
        }
        for b in 0..BROKERS {
            if let Some(broker) = self.brokers[b].as_mut() {
                sim::fire_due(broker, at(self.now));
            }
            self.flush_broker(b);
        }
    }

    fn done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.to_send.is_empty() && c.session.outstanding() == 0)
    }

    fn run(&mut self, seed: u64) {
        let end = 600_000;
        while !self.done() {
            assert!(
                self.now < end,
                "seed {seed}: requests unanswered after {end} ms"
            );
            self.deliver();
            self.step_clients();
            self.step_workers();
            self.step_brokers();
            self.now += 1;
        }
    }

    /// The checks; returns (requests moved, executions beyond the first).
    fn check(&self, seed: u64) -> (u64, u64) {
        let mut moved = 0;
        let mut reruns = 0;
        // After the kill, a request's attempt on the dead broker times out at most one
        // timeout after the broker's last message; then the broker is judged dead after
        // `dead_after_silent_attempts` (2) silent attempts, and the request moves.
        let bound = 3 * self.client_timeout_ms + 10;
        for c in &self.clients {
            assert_eq!(
                c.ended.len(),
                c.requests.len(),
                "seed {seed}: requests lost"
            );
            moved += c.session.counters().moved;
            for p in c.requests.values() {
                assert_eq!(
                    c.ended[&p.token],
                    Outcome::Reply(vec![bytes(&p.token)]),
                    "seed {seed}: {} did not end with its reply",
                    p.token
                );
                let runs = self.executions.get(&p.token).copied().unwrap_or(0);
                assert!(runs >= 1, "seed {seed}: a reply without an execution");
                reruns += u64::from(runs - 1);
                if runs > 1 && std::env::var("SCALE0_SIM_TRACE").is_ok() {
                    eprintln!(
                        "seed {seed}: {} ran {runs} times, sent to {:?}",
                        p.token, p.brokers
                    );
                }
                // A broker that comes back empty runs what it held again when retried.
                let restarted = self.restart_at.is_some() && p.brokers.contains(&self.victim);
                if p.brokers.len() == 1 && !restarted {
                    assert_eq!(
                        runs, 1,
                        "seed {seed}: {} ran {runs} times on one broker",
                        p.token
                    );
                }
            }
            for stay in &c.stays {
                // A broker that is back answers again, and its requests stay on it.
                if self.restart_at.is_some_and(|r| r <= stay.to) || stay.to < self.kill_at {
                    continue;
                }
                let on_dead = stay.to - stay.from.max(self.kill_at);
                assert!(
                    on_dead <= bound,
                    "seed {seed}: {} stayed {on_dead} ms on the dead broker (bound {bound})",
                    stay.token
                );
            }
        }
        for w in &self.workers {
            assert_eq!(w.group.counters().over_capacity, 0, "seed {seed}");
        }
        (moved, reruns)
    }
}

#[test]
fn every_request_ends_once_at_its_client_when_one_of_two_brokers_is_killed() {
    if let Some(seed) = std::env::var("SCALE0_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        for calm in [false, true] {
            let mut world = World::new(seed, calm);
            world.run(seed);
            world.check(seed);
        }
        return;
    }
    let seeds: u64 = std::env::var("SCALE0_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let (mut moved, mut reruns, mut most_held) = (0, 0, 0);
    for seed in 0..seeds {
        let mut world = World::new(seed, false);
        world.run(seed);
        let (m, r) = world.check(seed);
        moved += m;
        reruns += r;
        most_held = most_held.max(world.most_held);
    }
    assert!(
        moved > 0,
        "no request ever moved: the failover went untested"
    );
    assert!(most_held > 1, "no worker ever held two requests");
    eprintln!("{seeds} seeds: {moved} requests moved, {reruns} second executions");
}

#[test]
fn with_both_brokers_alive_no_request_moves_even_behind_slow_workers() {
    let seeds: u64 = std::env::var("SCALE0_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        let mut world = World::new(seed, true);
        world.run(seed);
        let (moved, reruns) = world.check(seed);
        assert_eq!(
            (moved, reruns),
            (0, 0),
            "seed {seed}: a live broker was judged dead"
        );
    }
}
