//! The durable broker under virtual time with an in-memory store that can "crash": nothing
//! leaves before the journal is committed, accepted requests survive restarts, stored
//! replies never reach a stranger, and Titanic (RFC 9) keeps replies until closed.

mod sim;

use bytes::Bytes;
use scale0_proto::Instant;
use scale0_proto::broker::{Broker, Config, DropReason};
use scale0_proto::mdp::{self, ClientMessage, Message, WorkerCommand};
use sim::{BrokerSim as Sim, accepted, bytes, fin, native_to, peer, svc, text};

impl Sim {
    fn new() -> Self {
        Self::durable(Config {
            heartbeat_interval_ms: 1000,
            unknown_service_wait_ms: 5000,
            ..Config::default()
        })
    }

    /// The bodies of the REQUESTs sent to `worker`, after a commit.
    fn dispatched_to(&mut self, worker: &str) -> Vec<String> {
        self.sync();
        self.dispatched()
            .into_iter()
            .filter_map(|(to, body)| (to == worker).then_some(body))
            .collect()
    }

    /// Asks a Titanic service and returns its reply frames, after a commit.
    fn titanic(&mut self, service: &str, body: &[&str]) -> Vec<String> {
        self.sync();
        self.sent();
        self.mdp("\x01tsp-client", service, body);
        self.sync();
        let replies: Vec<_> = self
            .sent()
            .into_iter()
            .filter_map(|(to, m)| match m {
                Message::Client(ClientMessage { service: s, body })
                    if to == "\x01tsp-client" && s == svc(service) =>
                {
                    Some(body.iter().map(text).collect::<Vec<_>>())
                }
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 1, "one reply to {service}");
        replies.into_iter().next().unwrap()
    }
}

#[test]
fn nothing_leaves_before_the_journal_is_committed() {
    let mut sim = Sim::new();
    sim.ready("w1", "echo");
    sim.native("\x01c", "1", "echo", "hello");
    assert!(
        sim.sent().is_empty(),
        "ACCEPTED and REQUEST wait for the disk"
    );
    assert_eq!(sim.store.len(), 0);
    sim.sync();
    assert_eq!(sim.store.len(), 1, "the request is stored");
    let sent = sim.sent();
    assert_eq!(native_to(&sent, "\x01c"), vec![accepted("1")]);
    assert!(
        sent.iter().any(
            |(to, m)| to == "w1" && matches!(m, Message::Worker(WorkerCommand::Request { .. }))
        )
    );

    sim.reply("w1", "\x01c", "HELLO");
    assert!(
        sim.sent().is_empty(),
        "the FINAL waits for its answer to replace the request on disk"
    );
    sim.sync();
    assert_eq!(native_to(&sim.sent(), "\x01c"), vec![fin("1", "HELLO")]);
    assert_eq!(sim.store.len(), 1, "the request's place holds its answer");
}

#[test]
fn many_requests_share_one_commit() {
    let mut sim = Sim::new();
    for i in 0..100 {
        sim.native("\x01c", &i.to_string(), "echo", "x");
    }
    let before = sim.store.commits;
    sim.sync();
    assert_eq!(sim.store.commits, before + 1);
    assert_eq!(sim.store.len(), 100);
    assert_eq!(native_to(&sim.sent(), "\x01c").len(), 100);
}

#[test]
fn a_request_lost_before_its_commit_was_never_acknowledged() {
    let mut sim = Sim::new();
    sim.native("\x01c", "1", "echo", "x");
    assert!(sim.sent().is_empty());
    let recovery = sim.crash();
    assert_eq!(recovery.requests, 0);
    assert!(sim.sent().is_empty());
}

#[test]
fn an_accepted_request_survives_a_crash_and_its_retry_attaches_to_it() {
    let mut sim = Sim::new();
    sim.native("\x01c", "1", "echo", "hello");
    sim.sync();
    assert_eq!(native_to(&sim.sent(), "\x01c"), vec![accepted("1")]);

    let recovery = sim.crash();
    assert_eq!(recovery.requests, 1);
    assert!(recovery.unreadable.is_empty());
    // The client reconnects with its own routing id and retries with the same id.
    sim.native("\x01c", "1", "echo", "hello");
    sim.sync();
    assert_eq!(native_to(&sim.sent(), "\x01c"), vec![accepted("1")]);
    assert_eq!(sim.broker.counters().duplicates, 1);

    sim.ready("w1", "echo");
    assert_eq!(
        sim.dispatched_to("w1"),
        vec!["hello"],
        "run once, not twice"
    );
    sim.reply("w1", "\x01c", "HELLO");
    sim.sync();
    assert_eq!(native_to(&sim.sent(), "\x01c"), vec![fin("1", "HELLO")]);
    // Its answer is kept in the journal for retries until the dedupe window forgets it.
    assert_eq!(sim.store.len(), 1);
}

#[test]
fn an_answer_survives_a_crash_and_a_retry_gets_it_without_running_it_again() {
    let mut sim = Sim::new();
    sim.ready("w1", "echo");
    sim.native("\x01c", "1", "echo", "hello");
    assert_eq!(sim.dispatched_to("w1"), vec!["hello"]);
    sim.reply("w1", "\x01c", "HELLO");
    sim.sync();
    assert_eq!(native_to(&sim.sent(), "\x01c"), vec![fin("1", "HELLO")]);

    // The answer was lost on its way; the broker dies; the client retries.
    let recovery = sim.crash();
    assert_eq!((recovery.requests, recovery.native_answers), (0, 1));
    sim.ready("w1", "echo");
    sim.native("\x01c", "1", "echo", "hello");
    sim.sync();
    assert_eq!(native_to(&sim.sent(), "\x01c"), vec![fin("1", "HELLO")]);
    assert!(
        sim.dispatched_to("w1").is_empty(),
        "answered, not run again"
    );

    // Once the window passes, the answer leaves the journal too.
    let window = Config::default().dedupe_window_ms;
    sim.advance_to(window + 10_000);
    sim.sync();
    assert!(sim.store.is_empty(), "{} entries left", sim.store.len());
}

#[test]
fn a_request_held_by_a_worker_at_the_crash_is_dispatched_again() {
    let mut sim = Sim::new();
    sim.ready("w1", "echo");
    sim.mdp("\x01c", "echo", &["a"]);
    sim.mdp("\x01c", "echo", &["b"]);
    assert_eq!(sim.dispatched_to("w1"), vec!["a"]);
    sim.crash();
    // The worker re-registers after the restart (it is told DISCONNECT on its next
    // heartbeat) and gets both, in acceptance order.
    sim.ready("w1", "echo");
    assert_eq!(sim.dispatched_to("w1"), vec!["a"]);
    sim.reply("w1", "\x01c", "A");
    assert_eq!(sim.dispatched_to("w1"), vec!["b"]);
    sim.reply("w1", "\x01c", "B");
    sim.sync();
    assert!(sim.store.is_empty());
    assert_eq!(sim.broker.counters().recovered, 2);
}

#[test]
fn a_recovered_reply_goes_only_to_a_client_that_chose_its_routing_id() {
    let mut sim = Sim::new();
    sim.mdp("\x00\x6b\x7b\x45\x67", "echo", &["auto"]);
    sim.mdp("\x01mine", "echo", &["fixed"]);
    sim.sync();
    sim.crash();
    sim.ready("w1", "echo");
    assert_eq!(sim.dispatched_to("w1"), vec!["auto"], "work still runs");
    sim.reply("w1", "\x00\x6b\x7b\x45\x67", "AUTO");
    assert_eq!(sim.dispatched_to("w1"), vec!["fixed"]);
    sim.reply("w1", "\x01mine", "FIXED");
    sim.sync();
    let sent = sim.sent();
    let to_clients: Vec<_> = sent
        .iter()
        .filter(|(_, m)| matches!(m, Message::Client(_)))
        .map(|(to, _)| to.as_str())
        .collect();
    assert_eq!(to_clients, vec!["\x01mine"]);
    assert_eq!(sim.broker.counters().dropped(DropReason::StaleClient), 1);
    assert!(sim.store.is_empty());
}

#[test]
fn before_a_restart_auto_generated_ids_are_answered_as_usual() {
    let mut sim = Sim::new();
    sim.ready("w1", "echo");
    sim.mdp("\x00\x6b\x7b\x45\x67", "echo", &["auto"]);
    assert_eq!(sim.dispatched_to("w1"), vec!["auto"]);
    sim.reply("w1", "\x00\x6b\x7b\x45\x67", "AUTO");
    sim.sync();
    assert_eq!(sim.sent().len(), 1);
}

#[test]
fn titanic_keeps_requests_and_replies_across_restarts_until_closed() {
    let mut sim = Sim::new();
    let reply = sim.titanic("titanic.request", &["echo", "hello", "world"]);
    assert_eq!(reply[0], "200");
    let uuid = reply[1].clone();
    assert_eq!(uuid.len(), 32);
    assert!(uuid.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(sim.titanic("titanic.reply", &[&uuid]), vec!["300"]);

    sim.crash();
    assert_eq!(sim.titanic("titanic.reply", &[&uuid]), vec!["300"]);
    sim.ready("w1", "echo");
    assert_eq!(sim.dispatched_to("w1"), vec!["hello"]);
    sim.reply("w1", "\x01tsp-client", "HELLO");
    sim.sync();
    assert!(sim.sent().is_empty(), "a Titanic reply is stored, not sent");
    assert_eq!(sim.titanic("titanic.reply", &[&uuid]), vec!["200", "HELLO"]);

    sim.crash();
    assert_eq!(
        sim.titanic("titanic.reply", &[&uuid.to_ascii_uppercase()]),
        vec!["200", "HELLO"],
        "kept across a restart, and UUIDs are case-blind"
    );
    assert_eq!(sim.titanic("titanic.close", &[&uuid]), vec!["200"]);
    assert_eq!(sim.titanic("titanic.reply", &[&uuid]), vec!["400"]);
    assert_eq!(
        sim.titanic("titanic.close", &[&uuid]),
        vec!["200"],
        "idempotent"
    );
    assert!(sim.store.is_empty());
}

#[test]
fn titanic_requests_wait_for_a_worker_however_long() {
    let mut sim = Sim::new();
    let uuid = sim.titanic("titanic.request", &["later", "job"])[1].clone();
    sim.mdp("\x01plain", "later", &["plain"]);
    sim.advance_to(60_000);
    assert_eq!(sim.titanic("titanic.reply", &[&uuid]), vec!["300"]);
    sim.ready("w1", "later");
    assert_eq!(
        sim.dispatched_to("w1"),
        vec!["job"],
        "the plain request expired for want of a worker, the Titanic one waited"
    );
}

#[test]
fn titanic_refusals_use_rfc9_status_codes() {
    let mut sim = Sim::new();
    assert!(sim.titanic("titanic.request", &[])[0].starts_with("500"));
    assert!(sim.titanic("titanic.request", &["mmi.service", "x"])[0].starts_with("500"));
    assert!(sim.titanic("titanic.request", &["titanic.reply", "x"])[0].starts_with("500"));
    assert_eq!(
        sim.titanic("titanic.reply", &["00000000000000000000000000000000"]),
        vec!["400"]
    );
    assert_eq!(sim.titanic("titanic.reply", &[]), vec!["400"]);
    assert_eq!(sim.titanic("titanic.close", &["nope"]), vec!["200"]);

    let mut small = Sim::new();
    small.config.max_titanic_requests = 1;
    small.crash();
    assert_eq!(small.titanic("titanic.request", &["echo", "1"])[0], "200");
    assert!(small.titanic("titanic.request", &["echo", "2"])[0].starts_with("500"));
}

#[test]
fn a_closed_pending_titanic_request_is_not_run() {
    let mut sim = Sim::new();
    let uuid = sim.titanic("titanic.request", &["echo", "x"])[1].clone();
    assert_eq!(sim.titanic("titanic.close", &[&uuid]), vec!["200"]);
    sim.ready("w1", "echo");
    assert!(sim.dispatched_to("w1").is_empty());
    assert!(sim.store.is_empty());
}

#[test]
fn mmi_knows_the_titanic_services_only_when_durable() {
    let mut sim = Sim::new();
    assert_eq!(
        sim.titanic("mmi.service", &["titanic.request"]),
        vec!["200"]
    );

    let mut plain = Broker::new(Config::default(), Instant::ZERO);
    let m = Message::Client(ClientMessage {
        service: svc("titanic.request"),
        body: vec![bytes("echo"), bytes("x")],
    });
    plain.handle_message(Instant::ZERO, m.encode_to(&peer("\x01c")));
    assert_eq!(
        plain.services()[0].name,
        svc("titanic.request"),
        "an ordinary service"
    );
    assert!(!plain.is_durable());
    assert!(plain.poll_journal().is_none());
}

#[test]
fn mdp2_titanic_clients_get_final_replies() {
    let mut sim = Sim::new();
    sim.sync();
    let m = Message::Client2(
        mdp::ClientKind::Request,
        ClientMessage {
            service: svc("titanic.request"),
            body: vec![bytes("echo"), bytes("x")],
        },
    );
    sim.send("\x01v2", m);
    sim.sync();
    let sent = sim.sent();
    assert!(matches!(
        &sent[..],
        [(_, Message::Client2(mdp::ClientKind::Final, ClientMessage { body, .. }))] if body[0] == "200"
    ));
}

#[test]
fn a_departed_clients_request_leaves_the_journal_and_is_not_run_after_a_restart() {
    let mut sim = Sim::new();
    // A Lazy Pirate client (an id libzmq made up) asks, then closes its socket.
    let client = "\0\0\0\0\u{9}";
    sim.mdp(client, "echo", &["stale"]);
    sim.sync();
    assert!(!sim.store.is_empty());
    sim.broker
        .handle_message(sim.now, vec![bytes(client), Bytes::new()]);
    sim.ready("w", "echo");
    assert_eq!(sim.dispatched_to("w"), Vec::<String>::new());
    assert_eq!(sim.broker.counters().abandoned, 1);
    sim.sync();
    assert!(sim.store.is_empty(), "its journal entry is gone");
    let recovery = sim.crash();
    assert_eq!(recovery.requests, 0, "nothing to run again");
}
