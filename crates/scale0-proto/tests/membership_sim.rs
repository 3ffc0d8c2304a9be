//! The membership table under virtual time: joins at any moment, suspect and dead exactly
//! at the configured multiples of a member's own interval, restarts told from conflicts,
//! duplicates from several forwarders, lost heartbeats counted.

mod sim;

use bytes::Bytes;
use scale0_proto::Instant;
use scale0_proto::membership::{Config, Event, Heartbeat, HeartbeatError, Membership, State};
use sim::at;

/// A node of the simulated cluster: one incarnation of a shard.
#[derive(Clone)]
struct Node {
    hb: Heartbeat,
}

impl Node {
    fn new(shard: u32, started_ms: u64) -> Self {
        Self {
            hb: Heartbeat {
                shard,
                started_ms,
                seq: 0,
                interval_ms: 100,
                name: format!("node-{shard}"),
                role: "test".into(),
                address: "tcp://10.0.0.1:1".into(),
            },
        }
    }

    fn beat(&mut self) -> Heartbeat {
        self.hb.seq += 1;
        self.hb.clone()
    }
}

struct Sim {
    table: Membership,
    now: u64,
}

impl Sim {
    fn new() -> Self {
        Self {
            table: Membership::new(Config::default()),
            now: 0,
        }
    }

    /// Runs to `ms`, each live node beating every 100 ms on the way (node i at phase i).
    fn run(&mut self, to: u64, nodes: &mut [&mut Node]) -> Vec<(u64, Event)> {
        let mut out = Vec::new();
        while self.now < to {
            self.now += 1;
            let now = at(self.now);
            for (i, n) in nodes.iter_mut().enumerate() {
                if (self.now + i as u64).is_multiple_of(100) {
                    let hb = n.beat();
                    self.table.handle_heartbeat(now, hb);
                }
            }
            sim::fire_due(&mut self.table, now);
            while let Some(e) = self.table.poll_event() {
                out.push((self.now, e));
            }
        }
        out
    }
}

#[test]
fn heartbeats_round_trip_and_bad_ones_are_refused() {
    let hb = Node::new(7, 1_700_000_000_000).beat();
    assert_eq!(Heartbeat::decode(&hb.encode()), Ok(hb.clone()));
    let mut frames = hb.encode();
    frames[2] = Bytes::from_static(b"-1");
    assert_eq!(Heartbeat::decode(&frames), Err(HeartbeatError::BadNumber));
    let mut frames = hb.encode();
    frames[5] = Bytes::from_static(b"0");
    assert_eq!(Heartbeat::decode(&frames), Err(HeartbeatError::BadNumber));
    // A member that would never be suspected, holding its place in the table for good.
    let mut frames = hb.encode();
    frames[5] = Bytes::from(u64::MAX.to_string());
    assert_eq!(Heartbeat::decode(&frames), Err(HeartbeatError::BadNumber));
    frames[5] = Bytes::from(scale0_proto::membership::MAX_INTERVAL_MS.to_string());
    assert!(
        Heartbeat::decode(&frames).is_ok(),
        "an hour is the longest allowed"
    );
    let mut frames = hb.encode();
    frames[1] = Bytes::from_static(b"9");
    assert_eq!(Heartbeat::decode(&frames), Err(HeartbeatError::Version));
    assert_eq!(
        Heartbeat::decode(&hb.encode()[..8]),
        Err(HeartbeatError::NotHeartbeat)
    );
    let mut frames = hb.encode();
    frames[6] = Bytes::from(vec![0xff, 0xfe]);
    assert_eq!(Heartbeat::decode(&frames), Err(HeartbeatError::BadText));
    let mut t = Membership::new(Config::default());
    t.handle_message(Instant::ZERO, &[Bytes::from_static(b"junk")]);
    assert_eq!(t.ignored, 1);
}

#[test]
fn a_node_started_late_knows_everyone_within_one_interval() {
    let mut sim = Sim::new();
    let mut nodes: Vec<Node> = (0..5).map(|s| Node::new(s, 1000 + u64::from(s))).collect();
    let mut refs: Vec<&mut Node> = nodes.iter_mut().collect();
    let events = sim.run(100, &mut refs);
    let joined: Vec<u32> = events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Joined(hb) => Some(hb.shard),
            _ => None,
        })
        .collect();
    assert_eq!(joined, vec![4, 3, 2, 1, 0]);
    assert!(sim.table.members().all(|m| m.state == State::Alive));
}

#[test]
fn a_silent_node_is_suspect_then_dead_at_exact_multiples_of_its_interval() {
    let mut sim = Sim::new();
    let mut a = Node::new(1, 1);
    let mut b = Node::new(2, 2);
    sim.run(1000, &mut [&mut a, &mut b]);
    // b (phase 1) last beat at 999; then it is killed.
    let events = sim.run(2000, &mut [&mut a]);
    assert_eq!(
        events,
        vec![
            (
                1199,
                Event::Suspect {
                    shard: 2,
                    missed: 2
                }
            ),
            (
                1499,
                Event::Dead {
                    shard: 2,
                    missed: 5
                }
            ),
        ]
    );
    assert_eq!(sim.table.get(2).unwrap().state, State::Dead);
    assert_eq!(sim.table.get(1).unwrap().state, State::Alive);
}

#[test]
fn a_suspect_node_heard_again_recovers() {
    let mut sim = Sim::new();
    let mut a = Node::new(1, 1);
    sim.run(500, &mut [&mut a]);
    let events = sim.run(750, &mut []);
    assert!(matches!(events[..], [(_, Event::Suspect { shard: 1, .. })]));
    let events = sim.run(800, &mut [&mut a]);
    assert!(matches!(&events[..], [(800, Event::Recovered(hb))] if hb.shard == 1));
}

#[test]
fn a_new_start_time_after_silence_is_a_restart() {
    let mut sim = Sim::new();
    let mut old = Node::new(3, 1000);
    sim.run(500, &mut [&mut old]);
    sim.run(900, &mut []);
    let mut new = Node::new(3, 2000);
    let events = sim.run(1000, &mut [&mut new]);
    assert!(matches!(
        &events[..],
        [(1000, Event::Restarted { heartbeat, previous_started_ms: 1000 })] if heartbeat.started_ms == 2000
    ));
}

#[test]
fn a_quick_restart_is_a_restart_not_a_conflict() {
    let mut sim = Sim::new();
    let mut old = Node::new(3, 1000);
    sim.run(500, &mut [&mut old]);
    // Killed after its beat at 500 and back 30 ms later, while still "alive".
    let mut new = Node::new(3, 1530);
    let events = sim.run(1000, &mut [&mut new]);
    let kinds: Vec<_> = events
        .iter()
        .map(|(t, e)| (*t, std::mem::discriminant(e)))
        .collect();
    assert_eq!(kinds.len(), 1, "{events:?}");
    assert!(matches!(
        &events[0],
        (
            700,
            Event::Restarted {
                previous_started_ms: 1000,
                ..
            }
        )
    ));
    assert_eq!(sim.table.get(3).unwrap().last.started_ms, 1530);
}

#[test]
fn two_nodes_claiming_one_shard_are_a_conflict() {
    let mut sim = Sim::new();
    let mut first = Node::new(5, 1000);
    sim.run(300, &mut [&mut first]);
    let mut second = Node::new(5, 2000);
    let events = sim.run(1000, &mut [&mut first, &mut second]);
    let conflicts: Vec<_> = events
        .iter()
        .filter(|(_, e)| {
            matches!(
                e,
                Event::Conflict {
                    shard: 5,
                    started_ms: [1000, 2000]
                }
            )
        })
        .collect();
    assert_eq!(conflicts.len(), 1, "reported once: {events:?}");
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, Event::Restarted { .. })),
        "{events:?}"
    );
}

#[test]
fn duplicates_from_two_forwarders_count_once_and_gaps_count_as_lost() {
    let mut t = Membership::new(Config::default());
    let mut n = Node::new(1, 1);
    let hb1 = n.beat();
    t.handle_heartbeat(at(0), hb1.clone());
    t.handle_heartbeat(at(1), hb1);
    n.beat();
    n.beat();
    t.handle_heartbeat(at(300), n.beat());
    let m = t.get(1).unwrap();
    assert_eq!(m.last.seq, 4);
    assert_eq!(m.lost, 2);
}

#[test]
fn members_are_bounded() {
    let mut t = Membership::new(Config {
        max_members: 3,
        ..Config::default()
    });
    for s in 0..10 {
        t.handle_heartbeat(Instant::ZERO, Node::new(s, 1).beat());
    }
    assert_eq!(t.members().count(), 3);
    assert_eq!(t.ignored, 7);
}
