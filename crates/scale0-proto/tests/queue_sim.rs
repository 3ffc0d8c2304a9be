//! The queue device under virtual time: REP servers by count, tagged requests, re-sends
//! after the timeout with the first reply winning, Paranoid Pirate workers (RFC 6).

mod sim;

use bytes::Bytes;
use scale0_proto::Instant;
use scale0_proto::queue::{Config, Dest, Drop, PPP_HEARTBEAT, PPP_READY, Queue, Transmit};
use sim::bytes;

fn config() -> Config {
    Config {
        request_timeout_ms: 1000,
        max_attempts: 3,
        max_queued: 3,
        heartbeat_interval_ms: 100,
        heartbeat_liveness: 3,
        ..Config::default()
    }
}

struct Sim {
    q: Queue,
    now: Instant,
}

impl Sim {
    fn new() -> Self {
        Self {
            q: Queue::new(config(), Instant::ZERO),
            now: Instant::ZERO,
        }
    }

    /// A REQ client's request: routing id, empty delimiter, body.
    fn client(&mut self, id: &str, body: &str) {
        self.q
            .handle_client(self.now, vec![bytes(id), Bytes::new(), bytes(body)]);
    }

    fn sent(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.q.poll_transmit()).collect()
    }

    fn advance_to(&mut self, ms: u64) {
        sim::advance(&mut self.q, &mut self.now, sim::at(ms));
    }
}

/// The body of each request sent to the REP servers, with its tag frame.
fn to_servers(sent: &[Transmit]) -> Vec<(Bytes, String)> {
    sent.iter()
        .filter(|t| t.dest == Dest::Servers)
        .map(|t| {
            assert_eq!(t.frames[1], Bytes::new(), "tag, empty delimiter, body");
            (
                t.frames[0].clone(),
                String::from_utf8_lossy(&t.frames[2]).into_owned(),
            )
        })
        .collect()
}

fn to_clients(sent: &[Transmit]) -> Vec<Vec<Bytes>> {
    sent.iter()
        .filter(|t| t.dest == Dest::Frontend)
        .map(|t| t.frames.clone())
        .collect()
}

#[test]
fn requests_wait_for_servers_and_each_server_gets_one_at_a_time() {
    let mut sim = Sim::new();
    sim.client("c1", "one");
    sim.client("c2", "two");
    sim.client("c3", "three");
    assert!(sim.sent().is_empty(), "no server yet: they wait");
    sim.q.servers_connected(sim.now, 2);
    let out = to_servers(&sim.sent());
    assert_eq!(
        out.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        ["one", "two"]
    );

    sim.q
        .handle_server(sim.now, vec![out[1].0.clone(), Bytes::new(), bytes("TWO")]);
    let sent = sim.sent();
    assert_eq!(
        to_clients(&sent),
        vec![vec![bytes("c2"), Bytes::new(), bytes("TWO")]]
    );
    assert_eq!(
        to_servers(&sent)[0].1,
        "three",
        "a freed server takes the next"
    );
}

#[test]
fn a_lost_request_is_sent_again_after_the_timeout_and_answered_once() {
    let mut sim = Sim::new();
    sim.q.servers_connected(sim.now, 2);
    sim.client("c1", "job");
    let first = to_servers(&sim.sent());
    sim.advance_to(999);
    assert!(sim.sent().is_empty());
    sim.advance_to(1000);
    let again = to_servers(&sim.sent());
    assert_eq!(
        again, first,
        "the same tagged request, sent again exactly at the timeout"
    );
    // The slow first server answers after all, then the second one.
    let tag = first[0].0.clone();
    sim.q
        .handle_server(sim.now, vec![tag.clone(), Bytes::new(), bytes("A")]);
    sim.q
        .handle_server(sim.now, vec![tag, Bytes::new(), bytes("B")]);
    assert_eq!(
        to_clients(&sim.sent()),
        vec![vec![bytes("c1"), Bytes::new(), bytes("A")]]
    );
    assert_eq!(sim.q.counters().dropped(Drop::LateReply), 1);
    assert_eq!(sim.q.counters().resent, 1);
}

#[test]
fn a_request_is_dropped_after_its_attempts() {
    let mut sim = Sim::new();
    sim.q.servers_connected(sim.now, 1);
    sim.client("c1", "job");
    sim.advance_to(10_000);
    assert_eq!(to_servers(&sim.sent()).len(), 3);
    assert_eq!(sim.q.counters().dropped(Drop::AttemptsExhausted), 1);
    assert_eq!(sim.q.in_flight() + sim.q.waiting(), 0);
}

#[test]
fn bad_and_excess_client_messages_are_dropped_and_counted() {
    let mut sim = Sim::new();
    sim.q
        .handle_client(sim.now, vec![bytes("c"), bytes("no delimiter")]);
    sim.q
        .handle_client(sim.now, vec![bytes("c"), bytes("envelope"), Bytes::new()]);
    assert_eq!(sim.q.counters().dropped(Drop::Malformed), 2);
    for i in 0..5 {
        sim.client("c", &i.to_string());
    }
    assert_eq!(sim.q.waiting(), 3);
    assert_eq!(sim.q.counters().dropped(Drop::QueueFull), 2);
    sim.q.handle_server(sim.now, vec![bytes("junk")]);
    assert_eq!(sim.q.counters().dropped(Drop::BadReply), 1);
}

#[test]
fn an_envelope_of_several_frames_comes_back_whole() {
    let mut sim = Sim::new();
    sim.q.servers_connected(sim.now, 1);
    // A client behind another ROUTER/DEALER hop: two addresses before the delimiter.
    sim.q.handle_client(
        sim.now,
        vec![
            bytes("c"),
            bytes("hop"),
            Bytes::new(),
            bytes("x"),
            bytes("y"),
        ],
    );
    let sent = sim.sent();
    let req = &sent[0].frames;
    assert_eq!(&req[1..], &[Bytes::new(), bytes("x"), bytes("y")]);
    sim.q.handle_server(
        sim.now,
        vec![req[0].clone(), Bytes::new(), bytes("r1"), bytes("r2")],
    );
    assert_eq!(
        to_clients(&sim.sent()),
        vec![vec![
            bytes("c"),
            bytes("hop"),
            Bytes::new(),
            bytes("r1"),
            bytes("r2")
        ]]
    );
}

fn ppp(sim: &mut Sim, worker: &str, frames: &[Bytes]) {
    let mut f = vec![bytes(worker)];
    f.extend_from_slice(frames);
    sim.q.handle_worker(sim.now, f);
}

#[test]
fn paranoid_pirate_workers_are_served_first_and_heartbeated() {
    let mut sim = Sim::new();
    sim.q.servers_connected(sim.now, 1);
    ppp(&mut sim, "w1", &[Bytes::from_static(PPP_READY)]);
    sim.client("c1", "job");
    let sent = sim.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].dest, Dest::Workers);
    assert_eq!(sent[0].frames[0], bytes("w1"));
    let tag = sent[0].frames[1].clone();
    ppp(&mut sim, "w1", &[tag, Bytes::new(), bytes("done")]);
    assert_eq!(
        to_clients(&sim.sent()),
        vec![vec![bytes("c1"), Bytes::new(), bytes("done")]]
    );

    sim.advance_to(100);
    let beats = sim.sent();
    assert_eq!(beats.len(), 1);
    assert_eq!(
        beats[0].frames,
        vec![bytes("w1"), Bytes::from_static(PPP_HEARTBEAT)]
    );
}

#[test]
fn a_silent_worker_is_lost_after_liveness_and_its_request_goes_elsewhere_at_once() {
    let mut sim = Sim::new();
    ppp(&mut sim, "w1", &[Bytes::from_static(PPP_READY)]);
    sim.client("c1", "job");
    assert_eq!(sim.sent()[0].dest, Dest::Workers);
    sim.q.servers_connected(sim.now, 1);
    // w1 never speaks again: lost at 3 x 100 ms, long before the 1000 ms request timeout.
    sim.advance_to(299);
    assert!(to_servers(&sim.sent()).is_empty());
    sim.advance_to(300);
    assert_eq!(to_servers(&sim.sent()).len(), 1, "re-sent to a REP server");
    assert_eq!(sim.q.workers(), 0);
    assert_eq!(sim.q.counters().workers_lost, 1);
}

#[test]
fn heartbeats_keep_a_worker_and_an_unroutable_one_is_dropped() {
    let mut sim = Sim::new();
    ppp(&mut sim, "w1", &[Bytes::from_static(PPP_READY)]);
    for t in (50..1000).step_by(50) {
        sim.advance_to(t);
        ppp(&mut sim, "w1", &[Bytes::from_static(PPP_HEARTBEAT)]);
    }
    assert_eq!(sim.q.workers(), 1);
    sim.client("c1", "job");
    sim.sent();
    sim.q.handle_unroutable_worker(sim.now, &sim::peer("w1"));
    assert_eq!(sim.q.workers(), 0);
    assert_eq!(sim.q.waiting(), 1, "its request waits for the next server");
}

#[test]
fn req_socket_workers_get_a_delimiter_and_no_heartbeats() {
    let mut sim = Sim::new();
    ppp(
        &mut sim,
        "w1",
        &[Bytes::new(), Bytes::from_static(PPP_READY)],
    );
    sim.client("c1", "job");
    let sent = sim.sent();
    assert_eq!(sent[0].frames[1], Bytes::new(), "REQ needs its delimiter");
    let tag = sent[0].frames[2].clone();
    sim.advance_to(500);
    assert!(
        sim.sent().is_empty(),
        "no heartbeat would fit REQ's lockstep"
    );
    assert_eq!(sim.q.workers(), 1, "and no expiry for silence");
    ppp(
        &mut sim,
        "w1",
        &[Bytes::new(), tag, Bytes::new(), bytes("ok")],
    );
    assert_eq!(
        to_clients(&sim.sent()),
        vec![vec![bytes("c1"), Bytes::new(), bytes("ok")]]
    );
}

#[test]
fn a_worker_that_overruns_the_timeout_is_dropped_and_the_request_resent() {
    let mut sim = Sim::new();
    ppp(
        &mut sim,
        "w1",
        &[Bytes::new(), Bytes::from_static(PPP_READY)],
    );
    sim.client("c1", "job");
    sim.sent();
    sim.q.servers_connected(sim.now, 1);
    sim.advance_to(1000);
    assert_eq!(to_servers(&sim.sent()).len(), 1);
    assert_eq!(sim.q.workers(), 0);
}

#[test]
fn an_idle_worker_and_a_free_server_take_turns() {
    let mut sim = Sim::new();
    sim.q.servers_connected(sim.now, 1);
    ppp(&mut sim, "w1", &[Bytes::from_static(PPP_READY)]);
    let mut dests = Vec::new();
    for i in 0..6 {
        sim.client("c", &i.to_string());
        let sent = sim.sent();
        let t = &sent[0];
        dests.push(t.dest);
        // Answer at once, so both are free again for the next request.
        match t.dest {
            Dest::Servers => {
                sim.q
                    .handle_server(sim.now, vec![t.frames[0].clone(), Bytes::new(), bytes("r")]);
            }
            _ => ppp(
                &mut sim,
                "w1",
                &[t.frames[1].clone(), Bytes::new(), bytes("r")],
            ),
        }
        sim.sent();
    }
    let servers = dests.iter().filter(|d| **d == Dest::Servers).count();
    assert_eq!(servers, 3, "{dests:?}");
}

mod script {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Ev {
        Client(u8),
        Bad(u8),
        Servers(u8),
        /// A REP server answers the n-th request it was sent (wrapping).
        ServerReply(u8),
        WorkerReady(u8, bool),
        WorkerBeat(u8),
        /// A worker answers what it was last sent.
        WorkerReply(u8),
        Unroutable(u8),
        SendFailed(u8),
        Advance(u16),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            4 => any::<u8>().prop_map(Ev::Client),
            1 => any::<u8>().prop_map(Ev::Bad),
            2 => (0u8..4).prop_map(Ev::Servers),
            4 => any::<u8>().prop_map(Ev::ServerReply),
            2 => (0u8..3, any::<bool>()).prop_map(|(w, r)| Ev::WorkerReady(w, r)),
            2 => (0u8..3).prop_map(Ev::WorkerBeat),
            3 => (0u8..3).prop_map(Ev::WorkerReply),
            1 => (0u8..3).prop_map(Ev::Unroutable),
            1 => any::<u8>().prop_map(Ev::SendFailed),
            3 => (0u16..1500).prop_map(Ev::Advance),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every request accepted is, at every moment, exactly one of: waiting, in flight,
        /// answered once, or dropped after its attempts; no client gets two replies to one
        /// request; replies go back with the request's own envelope.
        #[test]
        fn every_request_is_accounted_for(events in prop::collection::vec(ev(), 1..200)) {
            let mut sim = Sim::new();
            let mut to_servers: Vec<Bytes> = Vec::new();
            let mut to_workers: std::collections::HashMap<Bytes, Vec<Bytes>> = Default::default();
            for e in events {
                match e {
                    Ev::Client(n) => sim.client(&format!("c{}", n % 4), &format!("req{n}")),
                    Ev::Bad(n) => sim.q.handle_client(sim.now, vec![bytes("c"), Bytes::from(vec![n])]),
                    Ev::Servers(n) => sim.q.servers_connected(sim.now, usize::from(n)),
                    Ev::ServerReply(n) if !to_servers.is_empty() => {
                        let tag = to_servers[usize::from(n) % to_servers.len()].clone();
                        sim.q.handle_server(sim.now, vec![tag, Bytes::new(), bytes("r")]);
                    }
                    Ev::ServerReply(_) => {}
                    Ev::WorkerReady(w, req) => {
                        let mut f = vec![bytes(&format!("w{w}"))];
                        if req {
                            f.push(Bytes::new());
                        }
                        f.push(Bytes::from_static(PPP_READY));
                        sim.q.handle_worker(sim.now, f);
                    }
                    Ev::WorkerBeat(w) => sim.q.handle_worker(
                        sim.now,
                        vec![bytes(&format!("w{w}")), Bytes::from_static(PPP_HEARTBEAT)],
                    ),
                    Ev::WorkerReply(w) => {
                        let id = bytes(&format!("w{w}"));
                        if let Some(sent) = to_workers.get(&id) {
                            let mut f = sent.clone();
                            let at = f.iter().position(Bytes::is_empty).unwrap();
                            f.truncate(at + 1);
                            f.push(bytes("r"));
                            sim.q.handle_worker(sim.now, f);
                        }
                    }
                    Ev::Unroutable(w) => sim
                        .q
                        .handle_unroutable_worker(sim.now, &sim::peer(&format!("w{w}"))),
                    Ev::SendFailed(n) if !to_servers.is_empty() => {
                        let tag = &to_servers[usize::from(n) % to_servers.len()];
                        let tag = scale0_proto::queue::parse_tag(tag).unwrap();
                        sim.q.server_send_failed(sim.now, tag);
                    }
                    Ev::SendFailed(_) => {}
                    Ev::Advance(ms) => {
                        let to = sim.now.as_millis() + u64::from(ms);
                        sim.advance_to(to);
                    }
                }
                for t in sim.sent() {
                    match t.dest {
                        Dest::Servers => to_servers.push(t.frames[0].clone()),
                        Dest::Workers => {
                            if t.frames.len() > 2 {
                                to_workers.insert(t.frames[0].clone(), t.frames[1..].to_vec());
                            }
                        }
                        Dest::Frontend => {
                            // [client, "", reply]: the client's own envelope.
                            prop_assert_eq!(t.frames.len(), 3);
                            prop_assert!(t.frames[0].starts_with(b"c"));
                            prop_assert!(t.frames[1].is_empty());
                        }
                    }
                }
                let c = sim.q.counters();
                prop_assert_eq!(
                    c.requests,
                    c.replies
                        + c.dropped(Drop::AttemptsExhausted)
                        + sim.q.waiting() as u64
                        + sim.q.in_flight() as u64,
                    "{:?}", c
                );
            }
        }
    }
}

/// A REQ client's id as libzmq makes them up: a zero byte, then a number.
fn generated(n: u8) -> Bytes {
    Bytes::from(vec![0, 0, 0, 0, n])
}

/// The body of the one request sent to a worker since the last call, if any.
fn sent_body(sim: &mut Sim) -> Option<Bytes> {
    let sent: Vec<Transmit> = sim
        .sent()
        .into_iter()
        .filter(|t| t.dest == Dest::Workers && t.frames.len() > 2)
        .collect();
    assert!(sent.len() <= 1, "{sent:?}");
    sent.first().and_then(|t| t.frames.last().cloned())
}

#[test]
fn a_held_request_whose_client_left_is_not_sent_again() {
    let mut sim = Sim::new();
    ppp(&mut sim, "w1", &[Bytes::from_static(PPP_READY)]);
    sim.q
        .handle_client(sim.now, vec![generated(1), Bytes::new(), bytes("stale")]);
    assert_eq!(
        sent_body(&mut sim),
        Some(bytes("stale")),
        "w1 takes it, and stalls"
    );
    // The Lazy Pirate client times out: it closes its socket (libzmq tells the queue) and
    // asks again on a new one.
    sim.q
        .handle_client(sim.now, vec![generated(1), Bytes::new()]);
    sim.q
        .handle_client(sim.now, vec![generated(2), Bytes::new(), bytes("retry")]);
    // At the request timeout w1 is given up; its request has nobody waiting for it.
    sim.advance_to(1000);
    ppp(&mut sim, "w2", &[Bytes::from_static(PPP_READY)]);
    assert_eq!(
        sent_body(&mut sim),
        Some(bytes("retry")),
        "the retry, not the stale copy"
    );
    assert_eq!(sim.q.counters().dropped(Drop::Abandoned), 1);
    assert_eq!(sim.q.counters().resent, 0);
}

#[test]
fn a_queued_request_whose_client_left_is_skipped() {
    let mut sim = Sim::new();
    sim.q
        .handle_client(sim.now, vec![generated(1), Bytes::new(), bytes("stale")]);
    sim.q
        .handle_client(sim.now, vec![generated(1), Bytes::new()]);
    sim.q
        .handle_client(sim.now, vec![generated(2), Bytes::new(), bytes("retry")]);
    ppp(&mut sim, "w1", &[Bytes::from_static(PPP_READY)]);
    assert_eq!(sent_body(&mut sim), Some(bytes("retry")));
    assert_eq!(sim.q.counters().dropped(Drop::Abandoned), 1);
    // A client with an id of its own may come back with it: its requests stay.
    sim.q
        .handle_client(sim.now, vec![bytes("own"), Bytes::new(), bytes("kept")]);
    sim.q
        .handle_client(sim.now, vec![bytes("own"), Bytes::new()]);
    ppp(&mut sim, "w2", &[Bytes::from_static(PPP_READY)]);
    assert_eq!(sent_body(&mut sim), Some(bytes("kept")));
}

#[test]
fn a_worker_whose_connection_ends_loses_its_request_to_another_at_once() {
    let mut sim = Sim::new();
    ppp(&mut sim, "w1", &[Bytes::from_static(PPP_READY)]);
    sim.client("c1", "job");
    assert_eq!(sim.sent()[0].frames[0], bytes("w1"));
    ppp(&mut sim, "w2", &[Bytes::from_static(PPP_READY)]);
    // libzmq's notice that w1's connection ended (ROUTER_NOTIFY): no waiting for silence.
    ppp(&mut sim, "w1", &[Bytes::new()]);
    let sent = sim.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].frames[0], bytes("w2"));
    assert_eq!(sim.q.workers(), 1);
}
