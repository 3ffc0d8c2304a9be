//! The harness every simulation test shares (`mod sim;`): the virtual clock and how a
//! machine's deadlines are fired on it, a seeded random source, the frames peers send a
//! broker, and a broker on a virtual clock with what it sent decoded.

// Each test crate compiles the whole harness and uses a part of it.
#![allow(dead_code)]

use bytes::Bytes;
use scale0_proto::broker::{Broker, Config, Recovery};
use scale0_proto::journal::{MemoryStore, Store};
use scale0_proto::mdp::{self, ClientMessage, Message, NativeCommand, RequestId, WorkerCommand};
use scale0_proto::membership::Membership;
use scale0_proto::pipeline::Map;
use scale0_proto::queue::Queue;
use scale0_proto::{Frames, Instant, PeerId, ServiceName, client, worker};

/// `ms` milliseconds on the virtual clock.
pub(crate) fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

pub(crate) fn bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub(crate) fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub(crate) fn peer(s: &str) -> PeerId {
    PeerId::new(bytes(s)).unwrap()
}

pub(crate) fn svc(s: &str) -> ServiceName {
    ServiceName::new(bytes(s)).unwrap()
}

/// A native request id.
pub(crate) fn id(s: &str) -> RequestId {
    RequestId::new(bytes(s)).unwrap()
}

/// A state machine's deadlines, as the harness fires them.
pub(crate) trait Timers {
    /// The machine's next deadline, if it has one.
    fn next_timeout(&self) -> Option<Instant>;
    fn fire(&mut self, now: Instant);
}

/// Implements [`Timers`] through each machine's own `poll_timeout` / `handle_timeout`.
macro_rules! timers {
    ($(impl[$($g:ident),*] $machine:ty;)*) => {$(
        impl<$($g),*> Timers for $machine {
            fn next_timeout(&self) -> Option<Instant> {
                self.poll_timeout()
            }
            fn fire(&mut self, now: Instant) {
                self.handle_timeout(now);
            }
        }
    )*};
}

timers! {
    impl[] Broker;
    impl[] Queue;
    impl[] Map;
    impl[] Membership;
    impl[] worker::Session;
    impl[] worker::Group;
    impl[T] client::Session<T>;
}

/// Moves `now` to `to`, firing every deadline on the way at its exact instant.
pub(crate) fn advance(m: &mut impl Timers, now: &mut Instant, to: Instant) {
    while let Some(t) = m.next_timeout().filter(|t| *t <= to) {
        *now = (*now).max(t);
        m.fire(*now);
    }
    *now = to;
}

/// For simulations that step the clock a millisecond at a time: fires the machine's
/// deadline if it is due by `now`.
pub(crate) fn fire_due(m: &mut impl Timers, now: Instant) {
    if m.next_timeout().is_some_and(|t| t <= now) {
        m.fire(now);
    }
}

/// xorshift64*: a deterministic source for seeded simulations.
pub(crate) struct Rng(u64);

impl Rng {
    /// Any seed, 0 included, gives a usable (non-zero) state.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform enough in `0..n` (0 for `n == 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A worker session's settings for simulations: heartbeats every 100 ms (liveness 3),
/// reconnects from 10 to 200 ms, MDP/0.1 or MDP/0.2 at random.
pub(crate) fn fast_worker(rng: &mut Rng, service: &str) -> worker::Config {
    let mut config = worker::Config::new(svc(service));
    config.heartbeat_interval_ms = 100;
    config.heartbeat_liveness = 3;
    config.reconnect_initial_ms = 10;
    config.reconnect_max_ms = 200;
    config.version = if rng.chance(50) {
        mdp::Version::V1
    } else {
        mdp::Version::V2
    };
    config
}

/// A native REQUEST asking for ACCEPTED.
pub(crate) fn native_request(
    rid: &str,
    service: &str,
    deadline_ms: Option<u64>,
    body: &str,
) -> Message {
    Message::Native(NativeCommand::Request {
        id: id(rid),
        service: svc(service),
        deadline_ms,
        ack: true,
        body: vec![bytes(body)],
    })
}

pub(crate) fn accepted(rid: &str) -> NativeCommand {
    NativeCommand::Accepted { id: id(rid) }
}

pub(crate) fn fin(rid: &str, body: &str) -> NativeCommand {
    NativeCommand::Final {
        id: id(rid),
        body: vec![bytes(body)],
    }
}

/// The native commands among `sent` that went to `client`.
pub(crate) fn native_to(sent: &[(String, Message)], client: &str) -> Vec<NativeCommand> {
    sent.iter()
        .filter_map(|(to, m)| match m {
            Message::Native(cmd) if to == client => Some(cmd.clone()),
            _ => None,
        })
        .collect()
}

/// A broker on a virtual clock, its peers named by strings, and the in-memory store a
/// durable one journals to.
pub(crate) struct BrokerSim {
    pub(crate) broker: Broker,
    pub(crate) now: Instant,
    pub(crate) store: MemoryStore,
    /// What a restart (`crash`) comes back with.
    pub(crate) config: Config,
    /// Runs of the broker so far: a durable broker's nonce, new on each restart.
    runs: u64,
}

impl BrokerSim {
    /// A broker that keeps everything in memory.
    pub(crate) fn with(config: Config) -> Self {
        Self {
            broker: Broker::new(config.clone(), Instant::ZERO),
            now: Instant::ZERO,
            store: MemoryStore::new(),
            config,
            runs: 1,
        }
    }

    /// A durable broker on an empty store.
    pub(crate) fn durable(config: Config) -> Self {
        let mut store = MemoryStore::new();
        let stored = store.load().unwrap();
        let (broker, _) = Broker::durable(config.clone(), Instant::ZERO, stored, 1);
        Self {
            broker,
            now: Instant::ZERO,
            store,
            config,
            runs: 1,
        }
    }

    /// The driver's group commit: every op so far, one commit.
    pub(crate) fn sync(&mut self) {
        let mut ops = 0;
        while let Some(op) = self.broker.poll_journal() {
            self.store.apply(&op).unwrap();
            ops += 1;
        }
        if ops > 0 {
            self.store.commit().unwrap();
        }
        self.broker.journal_synced();
    }

    /// `kill -9` and a restart on the same store.
    pub(crate) fn crash(&mut self) -> Recovery {
        self.store.crash();
        self.runs += 1;
        let stored = self.store.load().unwrap();
        let (broker, recovery) = Broker::durable(self.config.clone(), self.now, stored, self.runs);
        self.broker = broker;
        recovery
    }

    /// Frames as they come off the ROUTER: `from`'s routing id first.
    pub(crate) fn raw(&mut self, from: &str, mut frames: Frames) {
        frames.insert(0, bytes(from));
        self.broker.handle_message(self.now, frames);
    }

    pub(crate) fn send(&mut self, from: &str, m: Message) {
        self.broker
            .handle_message(self.now, m.encode_to(&peer(from)));
    }

    /// `send` from a peer that authenticated as `user` (a CURVE key's name).
    pub(crate) fn send_from(&mut self, user: Option<&str>, from: &str, m: Message) {
        self.broker
            .handle_message_from(self.now, m.encode_to(&peer(from)), user);
    }

    /// An MDP client's request with one body frame.
    pub(crate) fn request(&mut self, client: &str, service: &str, body: &str) {
        self.mdp(client, service, &[body]);
    }

    pub(crate) fn mdp(&mut self, client: &str, service: &str, body: &[&str]) {
        let m = Message::Client(ClientMessage {
            service: svc(service),
            body: body.iter().map(|s| bytes(s)).collect(),
        });
        self.send(client, m);
    }

    /// A native client's request asking for ACCEPTED, with no deadline.
    pub(crate) fn native(&mut self, client: &str, rid: &str, service: &str, body: &str) {
        self.send(client, native_request(rid, service, None, body));
    }

    pub(crate) fn worker(&mut self, worker: &str, cmd: WorkerCommand) {
        self.send(worker, Message::Worker(cmd));
    }

    pub(crate) fn ready(&mut self, worker: &str, service: &str) {
        self.ready_with(worker, service, 1);
    }

    pub(crate) fn ready_with(&mut self, worker: &str, service: &str, capacity: u32) {
        self.worker(
            worker,
            WorkerCommand::Ready {
                service: svc(service),
                capacity,
                bundle: false,
            },
        );
    }

    pub(crate) fn reply(&mut self, worker: &str, client: &str, body: &str) {
        self.worker(
            worker,
            WorkerCommand::Reply {
                client: peer(client),
                body: vec![bytes(body)],
            },
        );
    }

    /// Moves the clock to `ms`, firing every timeout on the way at its exact time.
    pub(crate) fn advance_to(&mut self, ms: u64) {
        advance(&mut self.broker, &mut self.now, at(ms));
    }

    /// Like `advance_to`, while the `alive` workers heartbeat every 500 ms.
    pub(crate) fn advance_with(&mut self, ms: u64, alive: &[&str]) {
        while self.now.as_millis() + 500 < ms {
            let next = self.now.as_millis() + 500;
            self.advance_to(next);
            for worker in alive {
                self.worker(worker, WorkerCommand::Heartbeat);
            }
        }
        self.advance_to(ms);
    }

    /// Every message sent since the last call, as raw frames.
    pub(crate) fn raw_sent(&mut self) -> Vec<Frames> {
        std::iter::from_fn(|| self.broker.poll_transmit())
            .map(|t| t.frames)
            .collect()
    }

    /// Everything sent since the last call, as (destination, message).
    pub(crate) fn sent(&mut self) -> Vec<(String, Message)> {
        self.raw_sent()
            .into_iter()
            .map(|frames| {
                let (to, rest) = mdp::split_routing_id(frames).unwrap();
                (text(to.as_bytes()), Message::decode(rest).unwrap())
            })
            .collect()
    }

    /// The (worker, first body frame) of each REQUEST sent since the last call; other
    /// messages are ignored.
    pub(crate) fn dispatched(&mut self) -> Vec<(String, String)> {
        self.sent()
            .into_iter()
            .filter_map(|(to, m)| match m {
                Message::Worker(WorkerCommand::Request { body, .. }) => Some((to, text(&body[0]))),
                _ => None,
            })
            .collect()
    }
}
