//! The broker state machine under virtual time: dispatch order, queueing, heartbeats,
//! expiry, re-registration and bad input, with every timing bound checked exactly.

mod sim;

use bytes::Bytes;
use scale0_proto::broker::{Config, DropReason};
use scale0_proto::mdp::{ClientMessage, Message, WorkerCommand};
use scale0_proto::{DecodeError, Frames, Instant, PeerId};
use sim::{BrokerSim as Sim, bytes, peer, svc};

fn config() -> Config {
    Config {
        heartbeat_interval_ms: 1000,
        heartbeat_liveness: 3,
        max_message_bytes: 1024,
        ..Config::default()
    }
}

impl Sim {
    fn new() -> Self {
        Self::with(config())
    }

    fn mmi_service(&mut self, name: &str) -> String {
        self.sent();
        self.request("mmi-client", "mmi.service", name);
        match self.sent().pop() {
            Some((to, Message::Client(m))) => {
                assert_eq!(to, "mmi-client");
                assert_eq!(m.service, svc("mmi.service"));
                String::from_utf8(m.body[0].to_vec()).unwrap()
            }
            other => panic!("no MMI reply: {other:?}"),
        }
    }
}

fn w(to: &str, body: &str) -> (String, String) {
    (to.into(), body.into())
}

#[test]
fn requests_go_to_the_least_recently_used_worker() {
    let mut sim = Sim::new();
    for worker in ["w1", "w2", "w3"] {
        sim.ready(worker, "echo");
    }
    for i in 1..=3 {
        sim.request("c", "echo", &format!("r{i}"));
    }
    assert_eq!(
        sim.dispatched(),
        [w("w1", "r1"), w("w2", "r2"), w("w3", "r3")]
    );
    // w2 finishes first, then w1: w2 has now been idle longest.
    sim.reply("w2", "c", "x");
    sim.reply("w1", "c", "x");
    sim.request("c", "echo", "r4");
    sim.request("c", "echo", "r5");
    assert_eq!(sim.dispatched(), [w("w2", "r4"), w("w1", "r5")]);
}

#[test]
fn requests_wait_for_a_worker_and_replies_echo_the_service() {
    let mut sim = Sim::new();
    sim.request("c1", "echo", "first");
    sim.request("c2", "echo", "second");
    assert!(
        sim.sent().is_empty(),
        "nothing to send before a worker is ready"
    );
    assert_eq!(sim.broker.services()[0].queued, 2);

    sim.ready("w", "echo");
    assert_eq!(sim.dispatched(), [w("w", "first")]);
    sim.reply("w", "c1", "one");
    let sent = sim.sent();
    assert_eq!(
        sent.len(),
        2,
        "reply to c1, then the next request to w: {sent:?}"
    );
    assert_eq!(
        sent[0],
        (
            "c1".into(),
            Message::Client(ClientMessage {
                service: svc("echo"),
                body: vec![bytes("one")]
            })
        )
    );
    assert!(
        matches!(&sent[1], (to, Message::Worker(WorkerCommand::Request { client, .. }))
        if to == "w" && client == &peer("c2"))
    );
}

#[test]
fn the_reply_goes_to_the_client_the_request_came_from() {
    let mut sim = Sim::new();
    sim.ready("w", "echo");
    sim.request("honest", "echo", "x");
    sim.sent();
    // The worker names another client; the broker routes to the one it sent.
    sim.reply("w", "someone-else", "reply");
    let sent = sim.sent();
    assert_eq!(sent[0].0, "honest");
}

#[test]
fn workers_are_heartbeated_every_interval() {
    let mut sim = Sim::new();
    sim.ready("w", "echo");
    sim.sent();
    sim.advance_to(999);
    assert!(sim.sent().is_empty());
    sim.advance_to(1000);
    assert_eq!(
        sim.sent(),
        [("w".into(), Message::Worker(WorkerCommand::Heartbeat))]
    );
    sim.worker("w", WorkerCommand::Heartbeat);
    sim.advance_to(2000);
    assert_eq!(sim.sent().len(), 1);
}

#[test]
fn a_silent_idle_worker_expires_after_exactly_liveness_intervals() {
    let mut sim = Sim::new();
    sim.advance_to(500);
    sim.ready("w", "echo");
    assert_eq!(sim.mmi_service("echo"), "200");
    sim.advance_to(3499);
    assert_eq!(
        sim.broker.worker_count(),
        1,
        "alive until 3 × 1000 ms of silence"
    );
    sim.advance_to(3500);
    assert_eq!(
        sim.broker.worker_count(),
        0,
        "expired at 3 × 1000 ms of silence"
    );
    assert!(
        sim.sent()
            .contains(&("w".into(), Message::Worker(WorkerCommand::Disconnect)))
    );
    assert_eq!(sim.broker.counters().workers_expired, 1);
    assert_eq!(sim.mmi_service("echo"), "404");
}

#[test]
fn any_command_keeps_a_worker_alive() {
    let mut sim = Sim::new();
    sim.ready("w", "echo");
    for t in (900..100_000).step_by(900) {
        sim.advance_to(t);
        if t % 1800 == 0 {
            sim.worker("w", WorkerCommand::Heartbeat);
        } else {
            sim.request("c", "echo", "x");
            sim.reply("w", "c", "y");
        }
    }
    assert_eq!(sim.broker.worker_count(), 1);
    assert_eq!(sim.broker.counters().workers_expired, 0);
}

#[test]
fn the_purge_expires_every_silent_worker_not_only_the_head_of_the_list() {
    let mut sim = Sim::new();
    sim.ready("alive", "echo");
    sim.ready("silent1", "echo");
    sim.ready("silent2", "other");
    sim.ready("silent3", "echo");
    for t in (500..=3000).step_by(500) {
        sim.advance_to(t);
        sim.worker("alive", WorkerCommand::Heartbeat);
    }
    assert_eq!(sim.broker.worker_count(), 1);
    assert_eq!(sim.broker.counters().workers_expired, 3);
    assert_eq!(sim.mmi_service("echo"), "200");
    assert_eq!(sim.mmi_service("other"), "404");
}

#[test]
fn a_busy_worker_is_not_expired_for_silence() {
    let mut sim = Sim::new();
    sim.ready("w", "slow");
    sim.request("c", "slow", "job");
    sim.advance_to(59_000);
    assert_eq!(sim.broker.worker_count(), 1);
    sim.sent();
    sim.reply("w", "c", "done");
    assert_eq!(sim.sent()[0].0, "c");
    // Idle again, it expires like any idle worker, counted from its last word.
    sim.advance_to(61_999);
    assert_eq!(sim.broker.worker_count(), 1);
    sim.advance_to(62_000);
    assert_eq!(sim.broker.worker_count(), 0);
}

#[test]
fn a_worker_reregisters_after_disconnect_from_a_restarted_broker() {
    let mut sim = Sim::new();
    // A fresh broker (as after a restart) hears a heartbeat from a worker it never met.
    sim.worker("w", WorkerCommand::Heartbeat);
    assert_eq!(
        sim.sent(),
        [("w".into(), Message::Worker(WorkerCommand::Disconnect))]
    );
    assert_eq!(sim.broker.worker_count(), 0);
    sim.request("c", "echo", "queued");
    sim.ready("w", "echo");
    assert_eq!(sim.dispatched(), [w("w", "queued")]);
}

#[test]
fn unexpected_worker_commands_get_disconnect() {
    let disconnect = Message::Worker(WorkerCommand::Disconnect);
    // A second READY.
    let mut sim = Sim::new();
    sim.ready("w", "echo");
    sim.ready("w", "echo");
    assert_eq!(sim.sent(), [("w".into(), disconnect.clone())]);
    assert_eq!(sim.broker.worker_count(), 0);
    // READY for the broker's own namespace.
    sim.ready("m", "mmi.service");
    assert_eq!(sim.sent(), [("m".into(), disconnect.clone())]);
    assert_eq!(sim.broker.worker_count(), 0);
    // REPLY with no request held.
    sim.ready("idle", "echo");
    sim.reply("idle", "c", "unasked");
    assert_eq!(sim.sent(), [("idle".into(), disconnect.clone())]);
    assert_eq!(sim.broker.worker_count(), 0);
    // REPLY from a stranger.
    sim.reply("stranger", "c", "x");
    assert_eq!(sim.sent(), [("stranger".into(), disconnect)]);
    assert_eq!(sim.broker.counters().disconnects_sent, 4);
    // DISCONNECT from a stranger is simply ignored.
    sim.worker("stranger", WorkerCommand::Disconnect);
    assert!(sim.sent().is_empty());
}

#[test]
fn a_request_held_by_a_departing_worker_goes_to_another() {
    let mut sim = Sim::new();
    sim.ready("w1", "echo");
    sim.ready("w2", "echo");
    sim.request("c", "echo", "a");
    sim.request("c", "echo", "b");
    assert_eq!(sim.dispatched(), [w("w1", "a"), w("w2", "b")]);
    // w1 says goodbye while holding "a"; w2 then takes it after finishing "b".
    sim.worker("w1", WorkerCommand::Disconnect);
    assert!(sim.dispatched().is_empty());
    sim.reply("w2", "c", "B");
    assert_eq!(sim.dispatched(), [w("w2", "a")]);
    assert_eq!(sim.broker.counters().requeued, 1);
}

#[test]
fn an_unreachable_worker_is_removed_and_its_request_redispatched() {
    let mut sim = Sim::new();
    sim.ready("dead", "echo");
    sim.ready("live", "echo");
    sim.request("c", "echo", "job");
    assert_eq!(sim.dispatched(), [w("dead", "job")]);
    // The driver's send of that REQUEST failed with EHOSTUNREACH.
    sim.broker.handle_unroutable(sim.now, &peer("dead"));
    assert_eq!(sim.dispatched(), [w("live", "job")]);
    assert_eq!(sim.broker.worker_count(), 1);
    // A reply to a vanished client is counted and forgotten.
    sim.broker.handle_unroutable(sim.now, &peer("gone-client"));
    assert_eq!(sim.broker.counters().dropped(DropReason::Unroutable), 1);
}

#[test]
fn mmi_answers_200_404_and_501() {
    let mut sim = Sim::new();
    sim.ready("w", "echo");
    assert_eq!(sim.mmi_service("echo"), "200");
    assert_eq!(sim.mmi_service("nope"), "404");
    // A service with queued requests but no worker is not available.
    sim.request("c", "queued-only", "x");
    assert_eq!(sim.mmi_service("queued-only"), "404");
    sim.sent();
    let m = Message::Client(ClientMessage {
        service: svc("mmi.unknown"),
        body: vec![bytes("x")],
    });
    sim.send("c", m);
    let sent = sim.sent();
    assert_eq!(
        sent,
        [(
            "c".into(),
            Message::Client(ClientMessage {
                service: svc("mmi.unknown"),
                body: vec![bytes("501")]
            })
        )]
    );
    assert_eq!(sim.broker.counters().mmi_requests, 4);
}

#[test]
fn malformed_input_is_dropped_counted_and_harmless() {
    let mut sim = Sim::new();
    sim.ready("w", "echo");
    sim.sent();
    let bad: Vec<(Frames, DropReason)> = vec![
        (
            vec![bytes("x")],
            DropReason::Malformed(DecodeError::UnknownHeader),
        ),
        (
            vec![bytes("MDPC01"), bytes("echo")],
            DropReason::Malformed(DecodeError::NoDelimiter),
        ),
        (
            vec![bytes(""), bytes("MDPX01")],
            DropReason::Malformed(DecodeError::UnknownHeader),
        ),
        (
            vec![bytes(""), bytes("MDPC01")],
            DropReason::Malformed(DecodeError::MissingFrame),
        ),
        (
            vec![bytes(""), bytes("MDPC01"), bytes("")],
            DropReason::Malformed(DecodeError::BadServiceName),
        ),
        (
            vec![bytes(""), bytes("MDPW01"), bytes("\x09")],
            DropReason::Malformed(DecodeError::UnknownCommand),
        ),
        (
            vec![bytes(""), bytes("MDPW01"), bytes("\x04"), bytes("extra")],
            DropReason::Malformed(DecodeError::ExtraFrames),
        ),
        (
            vec![
                bytes(""),
                bytes("MDPW01"),
                bytes("\x02"),
                bytes("c"),
                bytes(""),
                bytes("x"),
            ],
            DropReason::WrongDirection,
        ),
        (
            vec![
                bytes(""),
                bytes("MDPC01"),
                bytes("echo"),
                Bytes::from(vec![0u8; 2000]),
            ],
            DropReason::TooLarge,
        ),
    ];
    for (frames, reason) in &bad {
        let before = sim.broker.counters().dropped(*reason);
        sim.raw("w", frames.clone());
        assert_eq!(
            sim.broker.counters().dropped(*reason),
            before + 1,
            "{reason:?}"
        );
    }
    sim.broker.handle_message(sim.now, vec![]);
    assert_eq!(
        sim.broker
            .counters()
            .dropped(DropReason::Malformed(DecodeError::BadRoutingId)),
        1
    );
    assert!(sim.sent().is_empty(), "bad input gets no answer");
    // The worker is still registered and everyone else is still served.
    sim.request("c", "echo", "fine");
    assert_eq!(sim.dispatched(), [w("w", "fine")]);
    assert_eq!(sim.broker.counters().dropped_total(), bad.len() as u64 + 1);
}

#[test]
fn unused_services_are_forgotten() {
    let mut sim = Sim::new();
    sim.ready("w", "a");
    sim.request("c", "a", "x");
    sim.reply("w", "c", "y");
    sim.worker("w", WorkerCommand::Disconnect);
    assert!(sim.broker.services().is_empty());
}

#[test]
fn a_worker_heartbeating_on_time_never_expires_over_a_long_run() {
    let mut sim = Sim::with(Config {
        heartbeat_interval_ms: 2500,
        heartbeat_liveness: 3,
        max_message_bytes: 1024,
        ..Config::default()
    });
    sim.ready("w", "echo");
    let mut t = 0;
    while t < 3_600_000 {
        t += 2500;
        sim.advance_to(t);
        sim.worker("w", WorkerCommand::Heartbeat);
    }
    assert_eq!(sim.broker.worker_count(), 1);
    let heartbeats = sim
        .sent()
        .iter()
        .filter(|(_, m)| *m == Message::Worker(WorkerCommand::Heartbeat))
        .count();
    assert_eq!(heartbeats, 3_600_000 / 2500);
}

// ---- Redelivery, deadlines and bounds ----

#[test]
fn a_busy_worker_that_cannot_heartbeat_is_bounded_by_the_request_deadline() {
    let mut sim = Sim::with(Config {
        request_timeout_ms: 20_000,
        ..config()
    });
    sim.ready("reference", "svc");
    sim.request("c", "svc", "job");
    assert_eq!(sim.dispatched(), [w("reference", "job")]);
    sim.ready("spare", "svc");
    // Silent while busy for far longer than liveness: not dead, only working.
    sim.advance_with(19_999, &["spare"]);
    assert_eq!(sim.broker.worker_count(), 2);
    assert!(sim.dispatched().is_empty());
    // At the deadline it is told to DISCONNECT and the request goes to the spare.
    sim.advance_to(20_000);
    let sent = sim.sent();
    assert!(sent.contains(&(
        "reference".into(),
        Message::Worker(WorkerCommand::Disconnect)
    )));
    assert!(sent.iter().any(
        |(to, m)| to == "spare" && matches!(m, Message::Worker(WorkerCommand::Request { .. }))
    ));
    assert_eq!(sim.broker.counters().request_timeouts, 1);
}

#[test]
fn a_service_can_have_its_own_request_deadline() {
    let mut overrides = std::collections::BTreeMap::new();
    overrides.insert(svc("slow"), 100_000);
    let mut sim = Sim::with(Config {
        request_timeout_ms: 5_000,
        service_request_timeout_ms: overrides,
        ..config()
    });
    sim.ready("s", "slow");
    sim.ready("f", "fast");
    sim.request("c", "slow", "x");
    sim.request("c", "fast", "y");
    sim.advance_to(5_000);
    assert_eq!(
        sim.broker.worker_count(),
        1,
        "the fast service's worker overran"
    );
    sim.advance_to(99_999);
    assert_eq!(sim.broker.worker_count(), 1);
    sim.advance_to(100_000);
    assert_eq!(sim.broker.worker_count(), 0);
}

#[test]
fn a_busy_worker_that_heartbeats_is_expired_when_it_falls_silent() {
    let mut sim = Sim::with(config());
    sim.ready("ours", "svc");
    sim.request("c", "svc", "job");
    sim.sent();
    sim.advance_to(500);
    sim.worker("ours", WorkerCommand::Heartbeat);
    sim.advance_to(1_000);
    sim.worker("ours", WorkerCommand::Heartbeat); // two: it heartbeats while busy
    sim.ready("spare", "svc");
    // It dies at 1000: silence for liveness × interval means death even though busy.
    sim.advance_with(3_999, &["spare"]);
    assert_eq!(sim.broker.worker_count(), 2);
    sim.advance_to(4_000);
    assert_eq!(sim.dispatched(), [w("spare", "job")]);
    assert_eq!(sim.broker.counters().workers_expired, 1);
}

#[test]
fn one_heartbeat_crossing_a_request_does_not_make_a_busy_worker_expire_for_silence() {
    // majortomo's worker heartbeats only while it waits; one sent just as the REQUEST
    // arrives reaches the broker while the worker holds it, and then it is silent.
    let mut sim = Sim::with(config());
    sim.ready("mt", "svc");
    sim.request("c", "svc", "long job");
    assert_eq!(sim.dispatched(), [w("mt", "long job")]);
    sim.worker("mt", WorkerCommand::Heartbeat);
    sim.advance_to(20_000);
    assert_eq!(sim.broker.worker_count(), 1, "not expired: it is working");
    sim.reply("mt", "c", "done");
    assert_eq!(sim.broker.counters().replies, 1);
    assert_eq!(sim.broker.counters().requeued, 0);
}

#[test]
fn a_killed_busy_worker_delays_its_request_by_at_most_one_heartbeat_interval() {
    // SIGKILL closes the TCP connection; with ROUTER_MANDATORY the broker's next send to
    // the worker (at the latest, the next heartbeat) fails as unroutable.
    for died_at in [0u64, 1, 250, 999, 1000, 1001, 1999, 4321] {
        let mut sim = Sim::with(config());
        sim.ready("victim", "svc");
        sim.ready("spare", "svc");
        sim.request("c", "svc", "job");
        assert_eq!(sim.dispatched(), [w("victim", "job")]);
        let mut redelivered_at = None;
        let mut t = 0;
        while redelivered_at.is_none() {
            t += 1;
            sim.advance_to(t);
            if t % 500 == 0 {
                sim.worker("spare", WorkerCommand::Heartbeat);
            }
            // What the driver sees when it sends: sends to the dead victim fail, and
            // the broker's answer to that failure is sent in the same wake.
            let mut out = sim.sent();
            while let Some((to, m)) = out.pop() {
                if to == "victim" && t >= died_at {
                    sim.broker.handle_unroutable(sim.now, &peer("victim"));
                    out.extend(sim.sent());
                } else if to == "spare"
                    && matches!(m, Message::Worker(WorkerCommand::Request { .. }))
                {
                    redelivered_at = Some(t);
                }
            }
        }
        let delay = redelivered_at.unwrap() - died_at;
        assert!(
            delay <= 1000,
            "died at {died_at}, redelivered {delay} ms later"
        );
    }
}

#[test]
fn a_request_fails_after_max_attempts_worker_deaths() {
    let mut sim = Sim::with(Config {
        max_attempts: 3,
        ..config()
    });
    sim.request("c", "svc", "poison");
    for i in 0..3 {
        let name = format!("w{i}");
        sim.ready(&name, "svc");
        assert_eq!(sim.dispatched(), [w(&name, "poison")], "attempt {}", i + 1);
        sim.worker(&name, WorkerCommand::Disconnect);
    }
    use scale0_proto::broker::FailReason;
    assert_eq!(
        sim.broker.counters().failed(FailReason::AttemptsExhausted),
        1
    );
    sim.ready("w9", "svc");
    assert!(sim.dispatched().is_empty(), "the failed request is gone");
    assert_eq!(sim.broker.counters().requeued, 2);
}

#[test]
fn queues_are_bounded_and_overflow_is_counted() {
    use scale0_proto::broker::FailReason;
    let mut sim = Sim::with(Config {
        max_queue_depth: 100,
        unknown_service_wait_ms: u64::MAX / 4,
        ..config()
    });
    for i in 0..1_000 {
        sim.request("c", "flood", &i.to_string());
    }
    assert_eq!(sim.broker.services()[0].queued, 100);
    assert_eq!(sim.broker.counters().requests, 100);
    assert_eq!(sim.broker.counters().failed(FailReason::QueueFull), 900);
    sim.ready("w", "flood");
    assert_eq!(
        sim.dispatched(),
        [w("w", "0")],
        "the oldest accepted request goes first"
    );
}

#[test]
fn requests_for_a_service_without_workers_expire() {
    use scale0_proto::broker::FailReason;
    let mut sim = Sim::with(Config {
        unknown_service_wait_ms: 10_000,
        ..config()
    });
    sim.request("c", "nobody", "a");
    sim.advance_to(4_000);
    sim.request("c", "nobody", "b");
    sim.advance_to(9_999);
    assert_eq!(sim.broker.services()[0].queued, 2);
    sim.advance_to(10_000);
    assert_eq!(
        sim.broker.services()[0].queued,
        1,
        "a expired, b has waited 6 s"
    );
    sim.advance_to(14_000);
    assert!(
        sim.broker.services().is_empty(),
        "both expired and the service is forgotten"
    );
    assert_eq!(sim.broker.counters().failed(FailReason::NoWorker), 2);
}

#[test]
fn the_wait_counts_only_while_the_service_has_no_worker() {
    let mut sim = Sim::with(Config {
        unknown_service_wait_ms: 10_000,
        ..config()
    });
    sim.ready("w", "svc");
    sim.request("c", "svc", "first");
    sim.request("c", "svc", "second"); // waits behind a busy worker: no expiry
    sim.advance_to(30_000);
    sim.worker("w", WorkerCommand::Heartbeat);
    assert_eq!(sim.broker.services()[0].queued, 1);
    // The worker leaves; from now on the second request waits for a worker that may never come.
    sim.worker("w", WorkerCommand::Disconnect);
    sim.advance_to(39_999);
    assert_eq!(
        sim.broker.services()[0].queued,
        2,
        "first requeued, both waiting"
    );
    sim.advance_to(40_000);
    assert!(sim.broker.services().is_empty());
}

/// The broker's work (requests and timers it examined) for `n` requests at a service with
/// no worker, sent over half a second and all failing `no_worker` a second after each.
fn flood_work(n: u64) -> u64 {
    use scale0_proto::broker::FailReason;
    let mut sim = Sim::with(Config {
        unknown_service_wait_ms: 1_000,
        max_queue_depth: 1_000_000,
        ..config()
    });
    for i in 0..n {
        sim.advance_to(i * 500 / n);
        sim.request("c", "nobody", "x");
    }
    sim.advance_to(2_000);
    assert_eq!(sim.broker.counters().failed(FailReason::NoWorker), n);
    assert!(sim.broker.services().is_empty());
    sim.broker.work()
}

#[test]
fn a_flood_at_a_service_with_no_worker_costs_work_in_proportion_to_its_size() {
    let small = flood_work(2_000);
    let large = flood_work(20_000);
    // Each request is queued once and expired once; a scan of the queue per request
    // (as there once was) would make ten times the requests a hundred times the work.
    assert!(large <= 3 * 20_000, "{large} steps for 20,000 requests");
    assert!(
        large <= 11 * small,
        "{small} steps for 2,000, {large} for 20,000"
    );
}

/// Work to serve 100 requests to `echo` (with a heartbeat interval between each ten)
/// while `flood` requests wait at a service with no worker.
fn echo_work_beside(flood: usize) -> u64 {
    let mut sim = Sim::with(Config {
        max_queue_depth: 1_000_000,
        ..config()
    });
    for i in 0..flood {
        sim.request(&format!("f{}", i % 7), "nobody", "x");
    }
    sim.ready("w", "echo");
    let before = sim.broker.work();
    for i in 0..100u64 {
        sim.request("c", "echo", "hi");
        sim.reply("w", "c", "hi");
        if i % 10 == 9 {
            let next = sim.now.as_millis() + 1_000;
            sim.advance_to(next);
            sim.worker("w", WorkerCommand::Heartbeat);
        }
    }
    assert_eq!(sim.broker.counters().replies, 100);
    sim.broker.work() - before
}

#[test]
fn a_flood_at_one_service_adds_no_work_to_requests_for_another() {
    assert_eq!(echo_work_beside(0), echo_work_beside(50_000));
}

#[test]
fn a_departed_mdp_clients_queued_request_is_not_dispatched() {
    // Ids as libzmq makes them up for peers that set none: a zero byte first.
    let (old, new) = ("\0\0\0\0\u{1}", "\0\0\0\0\u{2}");
    let mut sim = Sim::new();
    sim.request(old, "svc", "stale");
    // The Lazy Pirate client times out, closes its socket (libzmq's notice: its id and an
    // empty frame) and asks again on a new one.
    sim.raw(old, vec![Bytes::new()]);
    sim.request(new, "svc", "retry");
    sim.ready("w", "svc");
    assert_eq!(
        sim.dispatched(),
        [w("w", "retry")],
        "no worker time on the stale copy"
    );
    assert_eq!(sim.broker.counters().abandoned, 1);
    // A client with an id of its own may come back with it: its requests stay.
    sim.request("own", "svc", "kept");
    sim.raw("own", vec![Bytes::new()]);
    sim.reply("w", new, "done");
    assert_eq!(sim.dispatched(), [w("w", "kept")]);
}

#[test]
fn a_worker_whose_connection_ends_is_removed_and_its_request_goes_to_another_at_once() {
    let mut sim = Sim::new();
    sim.ready("w1", "svc");
    sim.request("c", "svc", "x");
    assert_eq!(sim.dispatched(), [w("w1", "x")]);
    sim.ready("w2", "svc");
    sim.raw("w1", vec![Bytes::new()]);
    assert_eq!(
        sim.dispatched(),
        [w("w2", "x")],
        "without waiting for its silence"
    );
    assert_eq!(sim.broker.worker_count(), 1);
}

fn frames(parts: &[&[u8]]) -> Vec<Bytes> {
    parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
}

#[test]
fn both_framings_of_mdp2_are_served_each_peer_in_its_own() {
    let mut sim = Sim::new();
    // A majortomo worker and client: an empty frame first, one command table for both.
    sim.raw("mw", frames(&[b"", b"MDPW02", &[1], b"svc"]));
    sim.raw("mc", frames(&[b"", b"MDPC02", &[2], b"svc", b"hello"]));
    assert_eq!(
        sim.raw_sent(),
        [frames(&[b"mw", b"", b"MDPW02", &[2], b"mc", b"", b"hello"])],
        "the REQUEST in the worker's framing"
    );
    sim.raw("mw", frames(&[b"", b"MDPW02", &[3], b"mc", b"", b"half"]));
    sim.raw("mw", frames(&[b"", b"MDPW02", &[4], b"mc", b"", b"done"]));
    assert_eq!(
        sim.raw_sent(),
        [
            frames(&[b"mc", b"", b"MDPC02", &[3], b"half"]),
            frames(&[b"mc", b"", b"MDPC02", &[4], b"done"]),
        ],
        "PARTIAL 0x03 and FINAL 0x04, no service frame"
    );
    // An RFC 18 client of the same worker is answered as RFC 18 says.
    sim.raw("rc", frames(&[b"MDPC02", &[1], b"svc", b"x"]));
    assert_eq!(sim.raw_sent().len(), 1);
    sim.raw("mw", frames(&[b"", b"MDPW02", &[3], b"rc", b"", b"h"]));
    sim.raw("mw", frames(&[b"", b"MDPW02", &[4], b"rc", b"", b"y"]));
    assert_eq!(
        sim.raw_sent(),
        [
            frames(&[b"rc", b"MDPC02", &[2], b"svc", b"h"]),
            frames(&[b"rc", b"MDPC02", &[3], b"svc", b"y"]),
        ]
    );
    // And an RFC 18 worker serves a majortomo client in the client's framing.
    sim.raw("rw", frames(&[b"MDPW02", &[1], b"other"]));
    sim.raw("mc", frames(&[b"", b"MDPC02", &[2], b"other", b"q"]));
    assert_eq!(
        sim.raw_sent(),
        [frames(&[b"rw", b"MDPW02", &[2], b"mc", b"", b"q"])]
    );
    sim.raw("rw", frames(&[b"MDPW02", &[4], b"mc", b"", b"a"]));
    assert_eq!(
        sim.raw_sent(),
        [frames(&[b"mc", b"", b"MDPC02", &[4], b"a"])]
    );
    // MMI, heartbeats and DISCONNECT in the delimited framing too.
    sim.raw(
        "mc",
        frames(&[b"", b"MDPC02", &[2], b"mmi.service", b"svc"]),
    );
    assert_eq!(
        sim.raw_sent(),
        [frames(&[b"mc", b"", b"MDPC02", &[4], b"200"])]
    );
    sim.advance_to(1_000);
    let beats = sim.raw_sent();
    assert!(
        beats.contains(&frames(&[b"mw", b"", b"MDPW02", &[5]])),
        "{beats:?}"
    );
    sim.raw("mw", frames(&[b"", b"MDPW02", &[1], b"svc"]));
    assert_eq!(
        sim.raw_sent(),
        [frames(&[b"mw", b"", b"MDPW02", &[6]])],
        "a second READY is out of turn"
    );
}

#[test]
fn the_number_of_services_is_bounded() {
    use scale0_proto::broker::FailReason;
    let mut sim = Sim::with(Config {
        max_services: 3,
        ..config()
    });
    for i in 0..10 {
        sim.request("c", &format!("svc{i}"), "x");
    }
    assert_eq!(sim.broker.services().len(), 3);
    assert_eq!(sim.broker.counters().failed(FailReason::TooManyServices), 7);
    // A worker for a fourth service is told to go away, not registered.
    sim.ready("w", "svc9");
    assert_eq!(
        sim.sent(),
        [("w".into(), Message::Worker(WorkerCommand::Disconnect))]
    );
    sim.ready("w2", "svc0");
    assert_eq!(sim.dispatched(), [w("w2", "x")]);
}

// ---- The native protocol and MDP/0.2 ----

mod native {
    use super::*;
    use scale0_proto::broker::{Drained, FailReason};
    use scale0_proto::mdp::{ClientKind, NativeCommand, Status};
    use sim::{accepted, fin, id, native_request, native_to};
    use std::time::Duration;

    /// A native request from `client` whose body is its id.
    fn send(sim: &mut Sim, client: &str, rid: &str, service: &str, deadline_ms: Option<u64>) {
        sim.send(client, native_request(rid, service, deadline_ms, rid));
    }

    /// Native messages sent to `client` since the last call.
    fn to(sim: &mut Sim, client: &str) -> Vec<NativeCommand> {
        native_to(&sim.sent(), client)
    }

    fn status_of(cmd: &NativeCommand) -> Option<Status> {
        match cmd {
            NativeCommand::Error { status, .. } => Some(*status),
            _ => None,
        }
    }

    #[test]
    fn a_standby_refuses_with_not_leader_and_once_serving_takes_the_same_id() {
        // A cluster node that does not lead refuses; a retry of the same id after it
        // starts to serve is run, not answered with the refusal kept for retries.
        let mut sim = Sim::new();
        sim.broker = scale0_proto::broker::Broker::standby(config(), sim.now);
        sim.ready("w", "svc");
        send(&mut sim, "c", "r1", "svc", None);
        let out = to(&mut sim, "c");
        assert_eq!(status_of(&out[0]), Some(Status::NotLeader), "{out:?}");
        assert_eq!(sim.dispatched(), [], "nothing is queued");
        let recovery = sim.broker.resume(sim.now, Vec::new(), 7);
        assert_eq!(recovery.requests, 0);
        assert!(!sim.broker.is_standby());
        send(&mut sim, "c", "r1", "svc", None);
        sim.sync();
        let out = sim.sent();
        assert!(
            native_to(&out, "c").contains(&accepted("r1")),
            "accepted once serving: {out:?}"
        );
        assert!(
            out.iter()
                .any(|(to, m)| to == "w"
                    && matches!(m, Message::Worker(WorkerCommand::Request { .. }))),
            "the standby's worker is sent it: {out:?}"
        );
    }

    #[test]
    fn a_request_whose_deadline_is_zero_is_answered_deadline_exceeded_and_never_dispatched() {
        let mut sim = Sim::new();
        sim.ready("w", "svc");
        send(&mut sim, "c", "now", "svc", Some(0));
        let out = to(&mut sim, "c");
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(status_of(&out[0]), Some(Status::DeadlineExceeded));
        assert_eq!(sim.dispatched(), [], "the idle worker got nothing");
        // Its retry gets the same answer.
        send(&mut sim, "c", "now", "svc", Some(0));
        assert_eq!(
            status_of(&to(&mut sim, "c")[0]),
            Some(Status::DeadlineExceeded)
        );
    }

    #[test]
    fn a_service_name_that_is_not_text_is_refused_not_queued() {
        let mut sim = Sim::new();
        let bad = Bytes::from_static(b"\xff\xfe");
        sim.raw(
            "c",
            vec![
                bytes("S0C1"),
                Bytes::from_static(&[1]),
                bytes("r"),
                bad.clone(),
                bytes(""),
                bytes("x"),
            ],
        );
        let out = to(&mut sim, "c");
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(status_of(&out[0]), Some(Status::BadRequest));
        sim.raw("m", vec![bytes(""), bytes("MDPC01"), bad, bytes("x")]);
        assert!(sim.broker.services().is_empty(), "nothing was queued");
        assert_eq!(
            sim.broker
                .counters()
                .dropped(DropReason::Malformed(DecodeError::BadServiceName)),
            2
        );
    }

    #[test]
    fn accepted_then_final_with_replies_in_any_order() {
        let mut sim = Sim::new();
        sim.ready("w1", "svc");
        sim.ready("w2", "svc");
        send(&mut sim, "c", "a", "svc", None);
        send(&mut sim, "c", "b", "svc", None);
        assert_eq!(to(&mut sim, "c"), [accepted("a"), accepted("b")]);
        // w2 (holding b) finishes first: b's FINAL comes first, matched by id.
        sim.reply("w2", "c", "B");
        sim.reply("w1", "c", "A");
        assert_eq!(to(&mut sim, "c"), [fin("b", "B"), fin("a", "A")]);
    }

    #[test]
    fn a_request_without_ack_gets_only_its_answer_even_when_retried() {
        let mut sim = Sim::new();
        let quiet = |sim: &mut Sim, rid: &str| {
            let m = Message::Native(NativeCommand::Request {
                id: id(rid),
                service: svc("svc"),
                deadline_ms: None,
                ack: false,
                body: vec![bytes(rid)],
            });
            sim.send("c", m);
        };
        quiet(&mut sim, "a");
        quiet(&mut sim, "a");
        assert_eq!(to(&mut sim, "c"), []);
        sim.ready("w", "svc");
        assert_eq!(sim.dispatched(), [w("w", "a")], "run once");
        sim.reply("w", "c", "A");
        assert_eq!(to(&mut sim, "c"), [fin("a", "A")]);
        // A retry after the answer gets the same answer.
        quiet(&mut sim, "a");
        assert_eq!(to(&mut sim, "c"), [fin("a", "A")]);
        // Refusals still come as errors.
        quiet(&mut sim, "b");
        let m = Message::Native(NativeCommand::Request {
            id: id("big"),
            service: svc("svc"),
            deadline_ms: None,
            ack: false,
            body: vec![Bytes::from(vec![0u8; 1500])],
        });
        sim.send("c", m);
        let out = to(&mut sim, "c");
        assert!(
            out.iter().any(|c| status_of(c) == Some(Status::TooLarge)),
            "{out:?}"
        );
        assert!(
            !out.iter()
                .any(|c| matches!(c, NativeCommand::Accepted { .. }))
        );
    }

    #[test]
    fn a_retry_of_a_pending_request_is_acknowledged_not_run_again() {
        let mut sim = Sim::new();
        sim.ready("w", "svc");
        send(&mut sim, "c", "x", "svc", None);
        assert_eq!(sim.dispatched().len(), 1);
        send(&mut sim, "c", "x", "svc", None);
        send(&mut sim, "c", "x", "svc", None);
        assert_eq!(to(&mut sim, "c"), [accepted("x"), accepted("x")]);
        sim.ready("w2", "svc");
        assert!(sim.dispatched().is_empty(), "no second execution");
        sim.reply("w", "c", "done");
        assert_eq!(to(&mut sim, "c"), [fin("x", "done")]);
        assert_eq!(sim.broker.counters().duplicates, 2);
    }

    #[test]
    fn a_retry_after_the_answer_gets_the_same_answer_within_the_window() {
        let mut sim = Sim::with(Config {
            dedupe_window_ms: 10_000,
            ..config()
        });
        sim.ready("w", "svc");
        send(&mut sim, "c", "x", "svc", None);
        sim.reply("w", "c", "done");
        sim.sent();
        sim.advance_with(9_999, &["w"]);
        sim.sent();
        send(&mut sim, "c", "x", "svc", None);
        assert_eq!(to(&mut sim, "c"), [fin("x", "done")]);
        assert!(sim.dispatched().is_empty());
        // After the window, the same id is a new request.
        sim.advance_with(10_001, &["w"]);
        send(&mut sim, "c", "x", "svc", None);
        assert_eq!(sim.dispatched(), [w("w", "x")]);
    }

    #[test]
    fn ids_are_per_client() {
        let mut sim = Sim::new();
        sim.ready("w1", "svc");
        sim.ready("w2", "svc");
        send(&mut sim, "c1", "same", "svc", None);
        send(&mut sim, "c2", "same", "svc", None);
        assert_eq!(sim.dispatched().len(), 2);
    }

    #[test]
    fn refusals_are_explicit_errors() {
        let mut sim = Sim::with(Config {
            max_queue_depth: 1,
            max_services: 1,
            max_message_bytes: 200,
            ..config()
        });
        send(&mut sim, "c", "1", "svc", None);
        assert_eq!(to(&mut sim, "c"), [accepted("1")]);
        send(&mut sim, "c", "2", "svc", None);
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::QueueFull)]
        );
        send(&mut sim, "c", "3", "other", None);
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::TooManyServices)]
        );
        let big = Message::Native(NativeCommand::Request {
            id: id("4"),
            service: svc("svc"),
            deadline_ms: None,
            ack: true,
            body: vec![Bytes::from(vec![0u8; 300])],
        });
        sim.send("c", big);
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::TooLarge)]
        );
        // A malformed request whose id is readable is answered, not left hanging.
        sim.raw(
            "c",
            vec![
                bytes("S0C1"),
                bytes("\x01"),
                bytes("5"),
                bytes("svc"),
                bytes("soon"),
            ],
        );
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::BadRequest)]
        );
        // And a retry of a refused request gets the same refusal.
        send(&mut sim, "c", "2", "svc", None);
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::QueueFull)]
        );
    }

    #[test]
    fn a_draining_broker_refuses_new_requests_and_still_answers_accepted_ones() {
        let mut sim = Sim::new();
        sim.ready("w", "svc");
        send(&mut sim, "c", "held", "svc", None);
        send(&mut sim, "c", "queued", "svc", None);
        assert_eq!(to(&mut sim, "c"), [accepted("held"), accepted("queued")]);
        assert_eq!(sim.broker.outstanding(), 2);

        sim.broker.begin_drain(sim.now, Duration::from_secs(60));
        send(&mut sim, "c", "late", "svc", None);
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::ShuttingDown)]
        );
        // MDP clients cannot be told; their request is not taken either.
        sim.request("m", "svc", "late too");
        assert!(sim.dispatched().is_empty());
        assert_eq!(sim.broker.outstanding(), 2);

        // What was accepted is served to the end: the held one, then the queued one.
        sim.reply("w", "c", "held done");
        let got = to(&mut sim, "c");
        assert_eq!(got.first(), Some(&fin("held", "held done")));
        sim.reply("w", "c", "queued done");
        assert_eq!(to(&mut sim, "c"), [fin("queued", "queued done")]);
        assert_eq!(sim.broker.outstanding(), 0);
        assert_eq!(sim.broker.counters().failed(FailReason::ShuttingDown), 2);
    }

    #[test]
    fn grace_over_every_outstanding_native_request_gets_an_error() {
        let mut sim = Sim::new();
        sim.ready("w", "svc");
        send(&mut sim, "c", "held", "svc", None);
        send(&mut sim, "c", "queued", "svc", None);
        sim.sent();
        sim.broker.begin_drain(sim.now, Duration::from_secs(60));
        sim.broker.abandon(sim.now);
        let mut statuses: Vec<_> = to(&mut sim, "c")
            .iter()
            .map(|cmd| match cmd {
                NativeCommand::Error { id, status, .. } => (id.clone(), *status),
                other => panic!("expected errors only, got {other:?}"),
            })
            .collect();
        statuses.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        assert_eq!(
            statuses,
            [
                (id("held"), Status::ShuttingDown),
                (id("queued"), Status::ShuttingDown)
            ]
        );
        assert_eq!(sim.broker.outstanding(), 0);
        // A retry of either gets the same answer, not a second run.
        send(&mut sim, "c", "held", "svc", None);
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::ShuttingDown)]
        );
    }

    #[test]
    fn a_drain_ends_exactly_at_its_grace_deadline_with_the_count_left_unanswered() {
        let mut sim = Sim::new();
        sim.ready("w", "svc");
        send(&mut sim, "c", "held", "svc", None);
        send(&mut sim, "c", "queued", "svc", None);
        sim.advance_to(300);
        sim.sent();
        sim.broker.begin_drain(sim.now, Duration::from_millis(2500));
        assert_eq!(sim.broker.drained(), None);
        assert_eq!(sim.broker.unanswered(), 2);
        sim.advance_to(2799);
        assert_eq!(sim.broker.drained(), None);
        assert!(to(&mut sim, "c").is_empty());
        assert_eq!(sim.broker.poll_timeout(), Some(Instant::from_millis(2800)));
        sim.advance_to(2800);
        assert_eq!(
            sim.broker.drained(),
            Some(Drained::GraceOver { unanswered: 2 })
        );
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::ShuttingDown), Some(Status::ShuttingDown)]
        );
        assert_eq!(sim.broker.outstanding(), 0);
    }

    #[test]
    fn a_service_left_without_workers_or_requests_by_the_grace_s_end_is_forgotten() {
        let mut sim = Sim::new();
        send(&mut sim, "c", "nobody serves it", "absent", None);
        sim.sent();
        sim.broker.begin_drain(sim.now, Duration::from_millis(100));
        sim.advance_to(100);
        assert_eq!(
            sim.broker.drained(),
            Some(Drained::GraceOver { unanswered: 1 })
        );
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::ShuttingDown)]
        );
        assert!(sim.broker.services().is_empty());
    }

    #[test]
    fn a_drain_ends_at_once_when_the_last_request_is_answered() {
        let mut sim = Sim::new();
        sim.ready("w", "svc");
        send(&mut sim, "c", "held", "svc", None);
        sim.sent();
        sim.broker.begin_drain(sim.now, Duration::from_secs(60));
        assert_eq!(sim.broker.drained(), None);
        sim.advance_to(100);
        sim.reply("w", "c", "done");
        assert_eq!(sim.broker.drained(), Some(Drained::Answered));
        assert_eq!(to(&mut sim, "c"), [fin("held", "done")]);
        // The grace deadline passing later changes nothing.
        sim.advance_to(61_000);
        assert_eq!(sim.broker.drained(), Some(Drained::Answered));
    }

    #[test]
    fn a_durable_broker_s_drain_does_not_wait_for_queued_requests() {
        let mut sim = Sim::durable(config());
        send(&mut sim, "c", "queued", "svc", None);
        assert_eq!(sim.broker.outstanding(), 1);
        assert_eq!(sim.broker.unanswered(), 0);
        sim.broker.begin_drain(sim.now, Duration::from_secs(60));
        assert_eq!(sim.broker.drained(), Some(Drained::Answered));
        assert_eq!(sim.broker.outstanding(), 1, "it stays in the journal");
    }

    #[test]
    fn no_worker_and_exhausted_attempts_are_explicit_errors() {
        let mut sim = Sim::with(Config {
            unknown_service_wait_ms: 1_000,
            max_attempts: 1,
            ..config()
        });
        send(&mut sim, "c", "lonely", "nobody", None);
        sim.advance_to(1_000);
        let got = to(&mut sim, "c");
        assert_eq!(
            got.iter().map(status_of).collect::<Vec<_>>(),
            [None, Some(Status::NoWorker)]
        );
        sim.ready("w", "svc");
        send(&mut sim, "c", "doomed", "svc", None);
        sim.worker("w", WorkerCommand::Disconnect);
        let got = to(&mut sim, "c");
        assert_eq!(
            got.iter().map(status_of).collect::<Vec<_>>(),
            [None, Some(Status::AttemptsExhausted)]
        );
    }

    #[test]
    fn a_client_deadline_ends_the_request_and_a_late_reply_is_dropped() {
        let mut sim = Sim::new();
        sim.ready("w", "svc");
        send(&mut sim, "c", "slow", "svc", Some(500));
        send(&mut sim, "c", "queued", "svc", Some(700));
        to(&mut sim, "c");
        sim.advance_with(499, &["w"]);
        assert!(to(&mut sim, "c").is_empty());
        sim.advance_to(500);
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::DeadlineExceeded)]
        );
        sim.advance_to(700);
        assert_eq!(
            to(&mut sim, "c").iter().map(status_of).collect::<Vec<_>>(),
            [Some(Status::DeadlineExceeded)]
        );
        // The worker finishes after all: nothing more reaches the client, and the expired
        // queued request is never dispatched.
        sim.reply("w", "c", "too late");
        assert!(to(&mut sim, "c").is_empty());
        assert!(sim.dispatched().is_empty());
        assert_eq!(sim.broker.counters().dropped(DropReason::LateReply), 1);
        assert_eq!(
            sim.broker.counters().failed(FailReason::DeadlineExceeded),
            2
        );
    }

    #[test]
    fn partials_reach_native_and_mdp2_clients_but_not_mdp1_clients() {
        let mut sim = Sim::new();
        let v2_ready = Message::Worker2(WorkerCommand::Ready {
            service: svc("svc"),
            capacity: 1,
            bundle: false,
        });
        sim.send("w", v2_ready);
        let partial = |sim: &mut Sim| {
            let m = Message::Worker2(WorkerCommand::Partial {
                client: peer("ignored"),
                body: vec![bytes("50%")],
            });
            sim.send("w", m);
        };
        let fin2 = |sim: &mut Sim| {
            let m = Message::Worker2(WorkerCommand::Reply {
                client: peer("ignored"),
                body: vec![bytes("done")],
            });
            sim.send("w", m);
        };
        // Native client.
        send(&mut sim, "n", "1", "svc", None);
        // The worker speaks MDP/0.2, so its REQUEST is MDP/0.2 too.
        assert!(
            sim.sent()
                .iter()
                .any(|(t, m)| t == "w"
                    && matches!(m, Message::Worker2(WorkerCommand::Request { .. })))
        );
        partial(&mut sim);
        fin2(&mut sim);
        assert_eq!(
            to(&mut sim, "n"),
            [
                NativeCommand::Partial {
                    id: id("1"),
                    body: vec![bytes("50%")]
                },
                fin("1", "done")
            ]
        );
        // MDP/0.2 client.
        let req2 = Message::Client2(
            ClientKind::Request,
            ClientMessage {
                service: svc("svc"),
                body: vec![bytes("x")],
            },
        );
        sim.send("v2", req2);
        sim.sent();
        partial(&mut sim);
        fin2(&mut sim);
        let kinds: Vec<ClientKind> = sim
            .sent()
            .into_iter()
            .filter_map(|(_, m)| match m {
                Message::Client2(k, _) => Some(k),
                _ => None,
            })
            .collect();
        assert_eq!(kinds, [ClientKind::Partial, ClientKind::Final]);
        // MDP/0.1 client: only the final reply.
        sim.request("v1", "svc", "y");
        sim.sent();
        partial(&mut sim);
        fin2(&mut sim);
        let sent = sim.sent();
        assert_eq!(sent.len(), 1);
        assert!(matches!(&sent[0], (t, Message::Client(_)) if t == "v1"));
        assert_eq!(
            sim.broker
                .counters()
                .dropped(DropReason::PartialForV1Client),
            1
        );
    }

    #[test]
    fn mdp1_and_mdp2_clients_and_workers_mix() {
        let mut sim = Sim::new();
        sim.ready("old", "svc");
        let v2_ready = Message::Worker2(WorkerCommand::Ready {
            service: svc("svc"),
            capacity: 1,
            bundle: false,
        });
        sim.send("new", v2_ready);
        let req2 = Message::Client2(
            ClientKind::Request,
            ClientMessage {
                service: svc("svc"),
                body: vec![bytes("from-v2")],
            },
        );
        sim.send("v2", req2);
        sim.request("v1", "svc", "from-v1");
        let sent = sim.sent();
        assert!(
            matches!(&sent[0], (t, Message::Worker(WorkerCommand::Request { .. })) if t == "old")
        );
        assert!(
            matches!(&sent[1], (t, Message::Worker2(WorkerCommand::Request { .. })) if t == "new")
        );
        sim.reply("old", "v2", "r1");
        let fin_v2 = Message::Worker2(WorkerCommand::Reply {
            client: peer("v1"),
            body: vec![bytes("r2")],
        });
        sim.send("new", fin_v2);
        let sent = sim.sent();
        assert!(matches!(&sent[0], (t, Message::Client2(ClientKind::Final, _)) if t == "v2"));
        assert!(matches!(&sent[1], (t, Message::Client(_)) if t == "v1"));
        // An MDP/0.2 worker's unexpected command gets an MDP/0.2 DISCONNECT.
        let hb = Message::Worker2(WorkerCommand::Heartbeat);
        sim.send("stranger", hb);
        assert_eq!(
            sim.sent(),
            [(
                "stranger".into(),
                Message::Worker2(WorkerCommand::Disconnect)
            )]
        );
    }

    #[test]
    fn mmi_answers_native_clients() {
        let mut sim = Sim::new();
        sim.ready("w", "echo");
        let m = Message::Native(NativeCommand::Request {
            id: id("q"),
            service: svc("mmi.service"),
            deadline_ms: None,
            ack: true,
            body: vec![bytes("echo")],
        });
        sim.send("c", m);
        assert_eq!(to(&mut sim, "c"), [fin("q", "200")]);
    }

    #[test]
    fn stored_answers_are_bounded() {
        let mut sim = Sim::with(Config {
            max_dedupe_entries: 10,
            ..config()
        });
        sim.ready("w", "svc");
        for i in 0..100 {
            send(&mut sim, "c", &i.to_string(), "svc", None);
            sim.reply("w", "c", "r");
        }
        sim.advance_to(1);
        assert_eq!(sim.broker.native_requests(), (0, 10));
    }
}

#[test]
fn events_tell_an_observer_about_workers_services_and_redeliveries() {
    use scale0_proto::broker::{Event, Gone};
    let mut sim = Sim::with(Config {
        heartbeat_interval_ms: 1000,
        request_timeout_ms: 5000,
        events: true,
        ..Config::default()
    });
    sim.ready("w1", "echo");
    sim.ready("w2", "echo");
    sim.request("c", "echo", "job");
    sim.worker("w1", WorkerCommand::Disconnect);
    sim.advance_with(10_000, &[]);
    let events: Vec<Event> = std::iter::from_fn(|| sim.broker.poll_event()).collect();
    let echo = svc("echo");
    assert_eq!(
        events,
        vec![
            Event::WorkerReady {
                service: echo.clone(),
                worker: peer("w1")
            },
            Event::ServiceUp {
                service: echo.clone()
            },
            Event::WorkerReady {
                service: echo.clone(),
                worker: peer("w2")
            },
            Event::WorkerGone {
                service: echo.clone(),
                worker: peer("w1"),
                why: Gone::Disconnected
            },
            Event::Redelivered {
                service: echo.clone(),
                attempts: 1
            },
            Event::WorkerGone {
                service: echo.clone(),
                worker: peer("w2"),
                why: Gone::Overran
            },
            Event::Redelivered {
                service: echo.clone(),
                attempts: 2
            },
            Event::ServiceDown { service: echo },
        ]
    );
    let mut quiet = Sim::new();
    quiet.ready("w1", "echo");
    assert!(quiet.broker.poll_event().is_none(), "off by default");
}

/// `Config::access`: what an authenticated key may use, as a client and as a worker.
mod access {
    use super::*;
    use scale0_proto::broker::DropReason;
    use scale0_proto::mdp::{NativeCommand, Status};
    use sim::native_request;
    use std::collections::{BTreeMap, BTreeSet};

    fn sim() -> Sim {
        let mut access = BTreeMap::new();
        access.insert("alice".to_string(), BTreeSet::from([svc("echo")]));
        access.insert("echo-worker".to_string(), BTreeSet::from([svc("echo")]));
        Sim::with(Config {
            access,
            ..Config::default()
        })
    }

    fn native(sim: &mut Sim, user: Option<&str>, client: &str, rid: &str, service: &str) {
        sim.send_from(user, client, native_request(rid, service, None, "x"));
    }

    fn ready(service: &str) -> Message {
        Message::Worker(WorkerCommand::Ready {
            service: svc(service),
            capacity: 1,
            bundle: false,
        })
    }

    #[test]
    fn a_key_allowed_one_service_is_refused_another() {
        let mut sim = sim();
        sim.send_from(Some("echo-worker"), "w", ready("echo"));
        native(&mut sim, Some("alice"), "c", "1", "echo");
        native(&mut sim, Some("alice"), "c", "2", "billing");
        let sent = sim.sent();
        // The allowed request reached the worker; the other was answered `forbidden` and
        // never queued.
        assert!(sent.iter().any(
            |(to, m)| to == "w" && matches!(m, Message::Worker(WorkerCommand::Request { .. }))
        ));
        let refused: Vec<_> = sent
            .iter()
            .filter_map(|(to, m)| match m {
                Message::Native(NativeCommand::Error { id, status, .. }) if to == "c" => {
                    Some((id.as_bytes().to_vec(), *status))
                }
                _ => None,
            })
            .collect();
        assert_eq!(refused, [(b"2".to_vec(), Status::Forbidden)]);
        assert_eq!(sim.broker.counters().dropped(DropReason::Forbidden), 1);
        assert!(
            sim.broker
                .services()
                .iter()
                .all(|s| s.name != svc("billing"))
        );
    }

    #[test]
    fn mdp_clients_are_dropped_and_workers_told_to_disconnect() {
        let mut sim = sim();
        sim.send_from(Some("echo-worker"), "w", ready("billing"));
        let m = Message::Client(ClientMessage {
            service: svc("billing"),
            body: vec![bytes("x")],
        });
        sim.send_from(Some("alice"), "c", m);
        let sent = sim.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert!(matches!(
            &sent[0],
            (to, Message::Worker(WorkerCommand::Disconnect)) if to == "w"
        ));
        assert_eq!(sim.broker.counters().dropped(DropReason::Forbidden), 2);
        assert_eq!(sim.broker.outstanding(), 0);
    }

    #[test]
    fn unlisted_keys_anonymous_peers_and_mmi_are_open() {
        let mut sim = sim();
        sim.send_from(Some("bob"), "w", ready("billing"));
        sim.send_from(None, "w2", ready("billing"));
        native(&mut sim, Some("bob"), "c", "1", "billing");
        let mmi = Message::Client(ClientMessage {
            service: svc("mmi.service"),
            body: vec![bytes("billing")],
        });
        sim.send_from(Some("alice"), "m", mmi);
        let sent = sim.sent();
        assert!(sent.iter().any(
            |(to, m)| to == "w" && matches!(m, Message::Worker(WorkerCommand::Request { .. }))
        ));
        assert!(sent.iter().any(
            |(to, m)| to == "m" && matches!(m, Message::Client(c) if c.body == [bytes("200")])
        ));
        assert_eq!(sim.broker.counters().dropped(DropReason::Forbidden), 0);
    }
}

/// Workers that take several requests at once (READY with `capacity=N`).
mod credit {
    use super::*;

    /// (worker, address to echo, body) of each REQUEST sent since the last call.
    fn handed(sim: &mut Sim) -> Vec<(String, PeerId, String)> {
        sim.sent()
            .into_iter()
            .filter_map(|(to, m)| match m {
                Message::Worker(WorkerCommand::Request { client, body }) => {
                    Some((to, client, String::from_utf8(body[0].to_vec()).unwrap()))
                }
                _ => None,
            })
            .collect()
    }

    /// (worker, first body frame) of each REQUEST among messages already taken.
    fn requests_in(out: &[(String, Message)]) -> Vec<(String, Bytes)> {
        out.iter()
            .filter_map(|(to, m)| match m {
                Message::Worker(WorkerCommand::Request { body, .. }) => {
                    Some((to.clone(), body[0].clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn answer(sim: &mut Sim, worker: &str, tag: &PeerId, body: &str) {
        sim.worker(
            worker,
            WorkerCommand::Reply {
                client: tag.clone(),
                body: vec![bytes(body)],
            },
        );
    }

    /// (client, body) of each reply to a client since the last call.
    fn replies(sim: &mut Sim) -> Vec<(String, String)> {
        sim.sent()
            .into_iter()
            .filter_map(|(to, m)| match m {
                Message::Client(c) => Some((to, String::from_utf8(c.body[0].to_vec()).unwrap())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_worker_gets_up_to_its_capacity_and_replies_in_any_order_find_their_clients() {
        let mut sim = Sim::new();
        sim.ready_with("W", "echo", 3);
        for (client, body) in [("A", "a1"), ("A", "a2"), ("B", "b1"), ("C", "c1")] {
            sim.request(client, "echo", body);
        }
        let got = handed(&mut sim);
        let bodies: Vec<&str> = got.iter().map(|(_, _, b)| b.as_str()).collect();
        assert_eq!(bodies, ["a1", "a2", "b1"], "three at once, in order");
        let tags: std::collections::BTreeSet<_> = got.iter().map(|(_, t, _)| t.clone()).collect();
        assert_eq!(tags.len(), 3, "each has its own address");
        assert!(
            got.iter()
                .all(|(_, t, _)| *t != peer("A") && *t != peer("B")),
            "the worker sees tags, not client addresses"
        );
        assert_eq!(sim.broker.services()[0].queued, 1);

        // The second of client A's replies comes first; each goes where its request came
        // from, and the freed slot takes the waiting request at once.
        answer(&mut sim, "W", &got[1].1, "A2");
        let out = sim.sent();
        assert!(out.iter().any(
            |(to, m)| to == "A" && matches!(m, Message::Client(c) if c.body[0] == bytes("A2"))
        ));
        assert_eq!(requests_in(&out), [("W".to_string(), bytes("c1"))]);
        answer(&mut sim, "W", &got[2].1, "B1");
        answer(&mut sim, "W", &got[0].1, "A1");
        assert_eq!(
            replies(&mut sim),
            [("B".into(), "B1".into()), ("A".into(), "A1".into())]
        );
        assert_eq!(sim.broker.held_requests(), 1);
        assert_eq!(sim.broker.outstanding(), 1);
    }

    #[test]
    fn workers_with_room_take_turns() {
        let mut sim = Sim::new();
        sim.ready_with("W1", "echo", 2);
        sim.ready_with("W2", "echo", 2);
        for i in 0..5 {
            sim.request("C", "echo", &format!("r{i}"));
        }
        let to: Vec<String> = handed(&mut sim).into_iter().map(|(w, _, _)| w).collect();
        assert_eq!(
            to,
            ["W1", "W2", "W1", "W2"],
            "round robin up to each one's capacity"
        );
        assert_eq!(sim.broker.services()[0].queued, 1);
        assert_eq!(sim.broker.busy_workers(), 2);
        assert_eq!(sim.broker.services()[0].idle, 0);
    }

    #[test]
    fn a_worker_holding_nothing_is_sent_before_one_with_room() {
        // Least-loaded dispatch: W1 is stuck on a slow request; W2 answers fast. Every
        // later request goes to W2 while it is free, none queues behind the slow one.
        let mut sim = Sim::new();
        sim.ready_with("W1", "echo", 8);
        sim.ready_with("W2", "echo", 8);
        sim.request("C", "echo", "slow");
        assert_eq!(handed(&mut sim)[0].0, "W1");
        for i in 0..20 {
            sim.request("C", "echo", &format!("r{i}"));
            let got = handed(&mut sim);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, "W2", "request {i} goes to the free worker");
            answer(&mut sim, "W2", &got[0].1, "done");
        }
        assert_eq!(sim.broker.services()[0].idle, 1, "W2 holds nothing now");

        // Once every worker holds something, one with room is sent more: the credit
        // is used, not wasted.
        sim.request("C", "echo", "x");
        sim.request("C", "echo", "y");
        sim.request("C", "echo", "z");
        let to: Vec<String> = handed(&mut sim).into_iter().map(|(w, _, _)| w).collect();
        assert_eq!(
            to,
            ["W2", "W1", "W2"],
            "free first, then those with room in turn"
        );
        assert_eq!(sim.broker.services()[0].queued, 0);
    }

    #[test]
    fn a_worker_freed_by_its_replies_goes_back_to_the_free_list_once() {
        // W1 empties itself while it has room: it must be free again (not left among
        // those with room), and sent to exactly once per request afterwards.
        let mut sim = Sim::new();
        sim.ready_with("W1", "echo", 4);
        sim.ready_with("W2", "echo", 4);
        sim.request("C", "echo", "a");
        sim.request("C", "echo", "b");
        sim.request("C", "echo", "c");
        let got = handed(&mut sim);
        let to: Vec<&str> = got.iter().map(|(w, _, _)| w.as_str()).collect();
        assert_eq!(to, ["W1", "W2", "W1"]);
        answer(&mut sim, "W1", &got[0].1, "A");
        answer(&mut sim, "W1", &got[2].1, "C");
        sim.request("C", "echo", "d");
        sim.request("C", "echo", "e");
        let to: Vec<String> = handed(&mut sim).into_iter().map(|(w, _, _)| w).collect();
        assert_eq!(to, ["W1", "W2"], "the free W1 first, then W2 (it has room)");
        assert_eq!(sim.broker.held_requests(), 3, "b, d and e");
    }

    #[test]
    fn a_dead_worker_s_requests_all_go_to_another_oldest_first() {
        let mut sim = Sim::new();
        sim.ready_with("W1", "echo", 3);
        for i in 0..3 {
            sim.request("C", "echo", &format!("r{i}"));
        }
        assert_eq!(handed(&mut sim).len(), 3);
        sim.ready_with("W2", "echo", 1);
        // W1 says goodbye holding three; W2 gets them one at a time, oldest first.
        sim.worker("W1", WorkerCommand::Disconnect);
        let mut order = Vec::new();
        for _ in 0..3 {
            let got = handed(&mut sim);
            assert_eq!(got.len(), 1);
            let (w, tag, body) = &got[0];
            assert_eq!(w, "W2");
            assert_eq!(
                *tag,
                peer("C"),
                "a worker of capacity 1 sees the client address"
            );
            answer(&mut sim, "W2", tag, body);
            order.push(body.clone());
        }
        assert_eq!(order, ["r0", "r1", "r2"]);
        assert_eq!(sim.broker.counters().requeued, 3);
        assert_eq!(sim.broker.outstanding(), 0);
    }

    #[test]
    fn one_overdue_request_disconnects_its_worker_and_the_others_go_elsewhere() {
        let mut sim = Sim::with(Config {
            request_timeout_ms: 5000,
            ..config()
        });
        sim.ready_with("W1", "echo", 2);
        sim.request("C", "echo", "slow");
        sim.advance_with(1000, &["W1"]);
        sim.request("C", "echo", "quick");
        let got = handed(&mut sim);
        assert_eq!(got.len(), 2);
        sim.ready_with("W2", "echo", 2);
        // The first request is due at 5000, the second at 6000.
        sim.advance_with(4999, &["W1", "W2"]);
        assert!(handed(&mut sim).is_empty());
        sim.advance_to(5000);
        let out = sim.sent();
        assert!(
            out.iter().any(
                |(to, m)| to == "W1" && matches!(m, Message::Worker(WorkerCommand::Disconnect))
            )
        );
        assert_eq!(
            requests_in(&out),
            [
                ("W2".to_string(), bytes("slow")),
                ("W2".to_string(), bytes("quick"))
            ]
        );
        assert_eq!(sim.broker.counters().request_timeouts, 1);
    }

    #[test]
    fn a_request_waiting_behind_another_at_its_worker_gets_its_whole_timeout() {
        // A worker takes what it holds one after another: the second request's time runs
        // from the first's answer, so slow handlers with credit are not cut off for the
        // time their requests waited in line.
        let mut sim = Sim::with(Config {
            request_timeout_ms: 5000,
            ..config()
        });
        sim.ready_with("W", "echo", 2);
        sim.request("C", "echo", "first");
        sim.request("C", "echo", "second");
        let got = handed(&mut sim);
        assert_eq!(got.len(), 2);
        sim.advance_with(4000, &["W"]);
        answer(&mut sim, "W", &got[0].1, "one");
        sim.advance_with(8999, &["W"]);
        let out = sim.sent();
        assert!(
            !out.iter()
                .any(|(_, m)| matches!(m, Message::Worker(WorkerCommand::Disconnect))),
            "the second is due at 9000, not 5000"
        );
        assert_eq!(sim.broker.held_requests(), 1);
        sim.advance_to(9000);
        assert!(
            sim.sent()
                .iter()
                .any(|(to, m)| to == "W" && matches!(m, Message::Worker(WorkerCommand::Disconnect))),
            "and it is held to that"
        );
        assert_eq!(sim.broker.counters().request_timeouts, 1);
    }

    #[test]
    fn a_reply_with_an_address_the_worker_was_not_given_disconnects_it() {
        let mut sim = Sim::new();
        sim.ready_with("W", "echo", 2);
        sim.request("C", "echo", "r");
        let got = handed(&mut sim);
        answer(&mut sim, "W", &peer("C"), "forged");
        let out = sim.sent();
        assert!(
            out.iter()
                .all(|(to, m)| to != "C" || !matches!(m, Message::Client(_))),
            "nothing reaches a client"
        );
        assert!(out.iter().any(|(to, m)| to == "W"
            && matches!(m, Message::Worker(WorkerCommand::Disconnect))));
        // The request it held waits for the next worker.
        sim.ready_with("W2", "echo", 1);
        assert_eq!(handed(&mut sim)[0].2, got[0].2);
    }

    #[test]
    fn capacity_shows_in_the_status_document() {
        let mut sim = Sim::new();
        sim.ready_with("W", "echo", 4);
        sim.request("C", "echo", "r");
        handed(&mut sim);
        let m = Message::Client(ClientMessage {
            service: svc("mmi.status"),
            body: vec![],
        });
        sim.send("S", m);
        let doc = replies(&mut sim).pop().unwrap().1;
        assert!(doc.contains("\"held\":1,\"capacity\":4"), "{doc}");
        assert!(doc.contains("\"state\":\"busy\""), "{doc}");
    }
}

#[test]
fn a_request_for_a_worker_holding_nothing_asks_to_be_sent_at_once() {
    let mut sim = Sim::new();
    sim.ready_with("credit", "echo", 4);
    sim.request("c", "echo", "r1");
    assert!(
        sim.broker.wants_flush(),
        "the worker waits on it: no reason to hold it for a burst"
    );
    sim.raw_sent();
    assert!(!sim.broker.wants_flush(), "sent: nothing urgent left");
    // The worker holds r1 now: a second request adds to its queue, which is not urgent.
    sim.request("c", "echo", "r2");
    assert!(!sim.broker.wants_flush());
    assert_eq!(sim.dispatched(), [w("credit", "r2")]);
}
