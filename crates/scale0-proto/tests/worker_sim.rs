//! The worker session under virtual time, alone and wired to a real broker state
//! machine through an in-memory network.

mod sim;

use bytes::Bytes;
use scale0_proto::PeerId;
use scale0_proto::broker::{self, Broker};
use scale0_proto::mdp::{self, ClientMessage, Message, Version, WorkerCommand};
use scale0_proto::worker::{Action, Config, Session};
use sim::{Timers, at, peer, svc};

fn config() -> Config {
    Config {
        service: svc("echo"),
        heartbeat_interval_ms: 1000,
        heartbeat_liveness: 3,
        reconnect_initial_ms: 100,
        reconnect_max_ms: 800,
        version: Version::V1,
        capacity: 1,
        announce_capacity: false,
        bundle: false,
    }
}

fn actions(s: &mut Session) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn send(cmd: WorkerCommand) -> Action {
    Action::Send(Message::Worker(cmd).encode())
}

fn ready() -> Action {
    send(WorkerCommand::Ready {
        service: svc("echo"),
        capacity: 1,
        bundle: false,
    })
}

fn from_broker(cmd: WorkerCommand) -> Vec<Bytes> {
    Message::Worker(cmd).encode()
}

fn request(client: &str) -> Vec<Bytes> {
    from_broker(WorkerCommand::Request {
        client: peer(client),
        body: vec![Bytes::from_static(b"job")],
    })
}

#[test]
fn connects_registers_and_heartbeats_also_while_busy() {
    let mut s = Session::new(config(), at(0));
    s.handle_timeout(at(0));
    assert_eq!(actions(&mut s), [Action::Connect, ready()]);
    s.handle_message(at(500), request("c")).unwrap();
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::Deliver { .. }]
    ));
    assert!(s.is_busy());
    // The handler runs for a long time; heartbeats keep going out on schedule.
    for t in [1000, 2000] {
        assert_eq!(s.poll_timeout(), Some(at(t)));
        s.handle_timeout(at(t));
        assert_eq!(actions(&mut s), [send(WorkerCommand::Heartbeat)]);
        s.handle_message(at(t), from_broker(WorkerCommand::Heartbeat))
            .unwrap();
    }
    s.reply(at(2500), vec![Bytes::from_static(b"done")]);
    assert!(matches!(
        actions(&mut s).as_slice(),
        [Action::Send(f)] if Message::decode(f.clone()).is_ok_and(|m| matches!(m, Message::Worker(WorkerCommand::Reply { .. })))
    ));
    assert_eq!(s.counters().replies, 1);
}

#[test]
fn a_silent_broker_means_reconnect_with_growing_backoff() {
    let mut s = Session::new(config(), at(0));
    s.handle_timeout(at(0));
    actions(&mut s);
    let mut pauses = Vec::new();
    for _ in 0..5 {
        // Run until the session gives up on the broker (3 × 1000 ms of silence).
        let gave_up = loop {
            let t = s.poll_timeout().unwrap().as_millis();
            s.handle_timeout(at(t));
            if actions(&mut s).contains(&Action::Disconnect) {
                break t;
            }
        };
        let reconnect = s.poll_timeout().unwrap().as_millis();
        s.handle_timeout(at(reconnect));
        assert_eq!(actions(&mut s), [Action::Connect, ready()]);
        pauses.push(reconnect - gave_up);
    }
    assert_eq!(pauses, [100, 200, 400, 800, 800]);
    assert_eq!(s.counters().connects, 6);
}

#[test]
fn disconnect_from_the_broker_means_register_again() {
    let mut s = Session::new(config(), at(0));
    s.handle_timeout(at(0));
    actions(&mut s);
    s.handle_message(at(10), from_broker(WorkerCommand::Disconnect))
        .unwrap();
    assert_eq!(actions(&mut s), [Action::Disconnect]);
    assert_eq!(s.poll_timeout(), Some(at(110)));
    s.handle_timeout(at(110));
    assert_eq!(actions(&mut s), [Action::Connect, ready()]);
}

#[test]
fn a_reply_for_a_lost_connection_is_dropped_and_then_the_worker_reregisters() {
    let mut s = Session::new(config(), at(0));
    s.handle_timeout(at(0));
    s.handle_message(at(0), request("c")).unwrap();
    actions(&mut s);
    s.handle_message(at(10), from_broker(WorkerCommand::Disconnect))
        .unwrap();
    assert_eq!(actions(&mut s), [Action::Disconnect]);
    // While the old request runs, registering would offer a worker that cannot work.
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(at(5000));
    assert!(actions(&mut s).is_empty());
    s.reply(at(6000), vec![]);
    assert_eq!(actions(&mut s), [Action::Connect, ready()]);
    assert_eq!(s.counters().replies_lost, 1);
}

#[test]
fn malformed_broker_messages_are_rejected_without_effect() {
    let mut s = Session::new(config(), at(0));
    s.handle_timeout(at(0));
    actions(&mut s);
    assert!(
        s.handle_message(at(1), vec![Bytes::from_static(b"junk")])
            .is_err()
    );
    let client_msg = Message::Client(ClientMessage {
        service: svc("x"),
        body: vec![],
    });
    assert!(s.handle_message(at(1), client_msg.encode()).is_err());
    assert!(actions(&mut s).is_empty());
}

/// Broker and workers wired together; messages are delivered instantly, time is virtual.
struct Net {
    now: u64,
    broker: Broker,
    workers: Vec<(Session, String)>,
    /// Per worker, the number of its current connection (a new socket, a new routing id).
    generation: Vec<u32>,
}

impl Net {
    fn new(n: usize) -> Self {
        let cfg = broker::Config {
            heartbeat_interval_ms: 1000,
            heartbeat_liveness: 3,
            max_message_bytes: 1 << 20,
            ..broker::Config::default()
        };
        Self {
            now: 0,
            broker: Broker::new(cfg, at(0)),
            workers: (0..n)
                .map(|i| (Session::new(config(), at(0)), format!("w{i}")))
                .collect(),
            generation: vec![0; n],
        }
    }

    fn id(&self, i: usize) -> PeerId {
        peer(&format!("{}.{}", self.workers[i].1, self.generation[i]))
    }

    /// Runs until `until`, stepping to each next timeout and moving every message.
    fn run(&mut self, until: u64) {
        loop {
            self.shuffle();
            let next = self
                .workers
                .iter()
                .filter_map(|(s, _)| s.next_timeout())
                .chain(self.broker.next_timeout())
                .min()
                .unwrap();
            if next.as_millis() > until {
                break;
            }
            self.now = self.now.max(next.as_millis());
            self.broker.handle_timeout(at(self.now));
            for (s, _) in &mut self.workers {
                sim::fire_due(s, at(self.now));
            }
        }
        self.now = until;
    }

    /// Delivers everything in flight until the network is quiet; handlers answer at once.
    fn shuffle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.workers.len() {
                while let Some(a) = self.workers[i].0.poll_action() {
                    moved = true;
                    match a {
                        Action::Connect => self.generation[i] += 1,
                        Action::Disconnect => {}
                        Action::Send(frames) => {
                            let mut f = vec![self.id(i).as_bytes().clone()];
                            f.extend(frames);
                            self.broker.handle_message(at(self.now), f);
                        }
                        Action::Deliver { body, .. } => self.workers[i].0.reply(at(self.now), body),
                    }
                }
            }
            while let Some(t) = self.broker.poll_transmit() {
                moved = true;
                let (to, rest) = mdp::split_routing_id(t.frames).unwrap();
                if let Some(i) = (0..self.workers.len()).find(|&i| self.id(i) == to) {
                    let _ = self.workers[i].0.handle_message(at(self.now), rest);
                }
            }
            if !moved {
                return;
            }
        }
    }
}

#[test]
fn workers_rejoin_a_restarted_broker_within_one_heartbeat_interval() {
    let mut net = Net::new(3);
    net.run(100);
    assert_eq!(net.broker.worker_count(), 3);
    // The broker process dies and a new one starts at t = 10 s with empty state.
    net.run(10_000);
    net.broker = Broker::new(net.broker.config().clone(), at(10_000));
    // Each worker's next heartbeat meets a stranger, is told DISCONNECT, and
    // re-registers after the initial backoff: within one interval plus that backoff.
    net.run(10_000 + 1000 + 100);
    assert_eq!(net.broker.worker_count(), 3);
    for (s, _) in &net.workers {
        assert_eq!(s.counters().connects, 2);
    }
}

#[test]
fn a_cluster_left_alone_stays_registered_for_an_hour() {
    let mut net = Net::new(5);
    net.run(3_600_000);
    assert_eq!(net.broker.worker_count(), 5);
    assert_eq!(net.broker.counters().workers_expired, 0);
    for (s, _) in &net.workers {
        assert_eq!(s.counters().connects, 1);
    }
}

#[test]
fn a_worker_with_capacity_takes_that_many_and_answers_each_with_its_own_address() {
    let mut s = Session::new(
        Config {
            capacity: 2,
            ..config()
        },
        at(0),
    );
    s.handle_timeout(at(0));
    assert_eq!(
        actions(&mut s),
        [
            Action::Connect,
            send(WorkerCommand::Ready {
                service: svc("echo"),
                capacity: 2,
                bundle: false,
            })
        ]
    );
    for tag in ["t1", "t2", "t3"] {
        s.handle_message(at(10), request(tag)).unwrap();
    }
    // Two are delivered; a third is beyond what the READY offered.
    let delivered = actions(&mut s);
    assert_eq!(delivered.len(), 2);
    assert_eq!(s.counters().requests, 2);
    // The handler answers in the order it was given them.
    for tag in ["t1", "t2"] {
        s.reply(at(20), vec![Bytes::from_static(b"done")]);
        let sent = actions(&mut s);
        let [Action::Send(frames)] = sent.as_slice() else {
            panic!("{sent:?}");
        };
        let Ok(Message::Worker(WorkerCommand::Reply { client, .. })) =
            Message::decode(frames.clone())
        else {
            panic!("{frames:?}");
        };
        assert_eq!(client.as_bytes().as_ref(), tag.as_bytes());
    }
    assert!(!s.is_busy());
}

#[test]
fn a_stopping_worker_finishes_what_it_holds_and_starts_nothing_new() {
    let mut s = Session::new(
        Config {
            capacity: 3,
            ..config()
        },
        at(0),
    );
    s.handle_timeout(at(0));
    actions(&mut s);
    s.handle_message(at(10), request("t1")).unwrap();
    s.handle_message(at(10), request("t2")).unwrap();
    assert_eq!(actions(&mut s).len(), 2);
    s.stop_taking();
    // The broker still has room to fill: that request is not started.
    s.handle_message(at(20), request("t3")).unwrap();
    assert!(actions(&mut s).is_empty());
    assert_eq!(s.counters().declined, 1);
    for _ in 0..2 {
        assert!(s.is_busy());
        s.reply(at(30), vec![Bytes::from_static(b"done")]);
        assert_eq!(actions(&mut s).len(), 1, "each held request is answered");
    }
    assert!(!s.is_busy());
    s.shutdown();
    assert_eq!(actions(&mut s), [send(WorkerCommand::Disconnect)]);
}

/// The READY the session sends, and whether it asks for bundles.
fn ready_asks_bundles(actions: &[Action]) -> Option<bool> {
    actions.iter().find_map(|a| match a {
        Action::Send(f) => match Message::decode(f.clone()) {
            Ok(Message::Worker(WorkerCommand::Ready { bundle, .. })) => Some(bundle),
            _ => None,
        },
        _ => None,
    })
}

#[test]
fn a_ready_answered_only_by_disconnect_is_sent_once_without_asking_for_bundles() {
    let mut s = Session::new(
        Config {
            capacity: 4,
            bundle: true,
            ..config()
        },
        at(0),
    );
    s.handle_timeout(at(0));
    assert_eq!(ready_asks_bundles(&actions(&mut s)), Some(true));
    // A broker that dropped the READY (an older scale0 broker refuses its bundle frame)
    // answers the first heartbeat with DISCONNECT, nothing before it.
    s.handle_timeout(at(1000));
    let _ = actions(&mut s);
    s.handle_message(at(1001), from_broker(WorkerCommand::Disconnect))
        .unwrap();
    let _ = actions(&mut s);
    s.handle_timeout(at(1101));
    assert_eq!(
        ready_asks_bundles(&actions(&mut s)),
        Some(false),
        "registers without the frame"
    );
    // That broker took it: a heartbeat came first. A later DISCONNECT (say, a restart)
    // does not stop the next READY from asking again, nor the one after.
    for t in [1200, 1500] {
        assert_eq!(
            heartbeat_then_disconnect_then_ready(&mut s, t),
            Some(true),
            "at {t}"
        );
    }
}

/// A HEARTBEAT from the broker at `t`, a DISCONNECT after it, and whether the READY of
/// the next connection asks for bundles.
fn heartbeat_then_disconnect_then_ready(s: &mut Session, t: u64) -> Option<bool> {
    s.handle_message(at(t), from_broker(WorkerCommand::Heartbeat))
        .unwrap();
    s.handle_message(at(t + 100), from_broker(WorkerCommand::Disconnect))
        .unwrap();
    let _ = actions(s);
    s.handle_timeout(at(t + 200));
    ready_asks_bundles(&actions(s))
}
