//! Plain Majordomo peers of a node that does not lead, relayed to the node that does.
//!
//! A plain MDP client knows one endpoint and nothing of clusters: told `not_leader` it
//! could only fail. A plain MDP worker connected to a follower would wait there unused. So
//! a follower passes their messages, unchanged, over the cluster link to the leader, and
//! the leader's answers back; the leader's broker sees each relayed peer as a peer of its
//! own, under an id that names the node it came through ([`relayed_id`]), and serves it
//! as it serves any other. Which peers are relayed:
//!
//! - plain MDP client requests (MDP/0.1 and 0.2), `mmi.*` excepted (a node answers those
//!   itself, about itself);
//! - plain MDP workers: a READY without scale0's `capacity=N` frame, and everything that
//!   worker sends after it. scale0's own workers (which send the frame, always when they
//!   serve a cluster) register with every node themselves and are not relayed;
//! - native clients are not: `not_leader` moves them to another of their brokers.
//!
//! While no leader is known (an election), relayed messages wait, up to a bound, and go
//! to the leader once there is one; those that wait too long are handed to the node's
//! own broker, which refuses them as it refuses anything while it stands by. When the
//! leader changes, a relayed worker's next message reaches a broker that does not know
//! it, which tells it to DISCONNECT (RFC 7), and it registers again through the relay.
//!
//! Frames on the cluster link (each after the sending node's routing id):
//! `[TO_LEADER, peer id, User-Id or empty, the peer's frames...]` and
//! `[TO_PEER, peer id, frames for it...]`.

use crate::mdp::{self, ClientKind, Frames, Message, WorkerCommand};
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// First frame of a relayed peer's message on its way to the leader.
pub const TO_LEADER: &[u8] = b"S0RQ";
/// First frame of a leader's message on its way back to a relayed peer.
pub const TO_PEER: &[u8] = b"S0RA";
/// How relayed ids start on the leader: then the node's id (8 bytes, big-endian) and
/// the peer's own routing id.
const PREFIX: &[u8] = b"s0r";
const PREFIX_LEN: usize = PREFIX.len() + 8;

/// The relay's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Messages kept while no leader is known, at most; past it they go to the local
    /// broker (which refuses requests with `not_leader`).
    pub max_held: usize,
    /// Bytes of those messages, at most.
    pub max_held_bytes: usize,
    /// How long a message waits for a leader.
    pub hold_ms: u64,
    /// Relayed workers remembered at most; a READY past it is handled locally.
    pub max_workers: usize,
    /// A relayed worker silent this long is forgotten (its broker has long dropped it).
    pub forget_ms: u64,
}

impl Config {
    /// Defaults for a cluster whose election timeout is `election_ms` and whose workers
    /// heartbeat every `heartbeat_ms`, `liveness` times before they are presumed dead.
    pub fn new(election_ms: u64, heartbeat_ms: u64, liveness: u32) -> Self {
        Self {
            max_held: 10_000,
            max_held_bytes: 64 << 20,
            // Two election timeouts: an election usually ends within one.
            hold_ms: election_ms.saturating_mul(2),
            max_workers: 100_000,
            forget_ms: heartbeat_ms.saturating_mul(u64::from(liveness).max(1) * 2),
        }
    }
}

/// Counts of what the relay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages passed to the leader.
    pub to_leader: u64,
    /// Messages passed back to relayed peers.
    pub to_peers: u64,
    /// Messages that waited for a leader and were handed to the local broker instead.
    pub expired: u64,
    /// Messages handed to the local broker because the wait was full.
    pub overflow: u64,
}

struct Held {
    until: Instant,
    frames: Frames,
    user: Option<String>,
}

/// A node's relay: the follower side decides and forwards; [`unwrap`], [`wrap`] and
/// [`back`] translate frames on the leader's side and on the way back.
pub struct Relay {
    config: Config,
    /// The node to relay to: the leader, when it is another node.
    leader: Option<u64>,
    /// Plain workers relayed, by routing id, with when they were last heard.
    workers: HashMap<Bytes, Instant>,
    held: VecDeque<Held>,
    held_bytes: usize,
    out: VecDeque<(u64, Frames)>,
    local: VecDeque<(Frames, Option<String>)>,
    counters: Counters,
    relaying: bool,
    /// When silent workers are next forgotten.
    next_sweep: Option<Instant>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("leader", &self.leader)
            .field("relaying", &self.relaying)
            .field("workers", &self.workers.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

/// What a relayed peer's message is to the relay.
enum Kind {
    /// The node's own broker handles it.
    Local,
    /// Relay it.
    Relay,
    /// A plain worker's READY: relay it and remember the worker.
    Register,
    /// A relayed worker leaves: relay it and forget the worker.
    Leave,
}

impl Relay {
    /// A relay that relays nothing until [`Relay::set_leader`] says this node stands by.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            leader: None,
            workers: HashMap::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            out: VecDeque::new(),
            local: VecDeque::new(),
            counters: Counters::default(),
            relaying: false,
            next_sweep: None,
        }
    }

    /// Where the node stands: `serving` if it serves (it relays nothing then), else the
    /// leader it knows of, if any.
    pub fn set_leader(&mut self, serving: bool, leader: Option<u64>) {
        if serving {
            self.relaying = false;
            self.leader = None;
            // Its own broker serves now: what waited is for it, and the workers
            // relayed elsewhere register with it when told to DISCONNECT.
            self.workers.clear();
            self.held_bytes = 0;
            for h in self.held.drain(..) {
                self.local.push_back((h.frames, h.user));
            }
            return;
        }
        self.relaying = true;
        self.leader = leader;
        if let Some(node) = leader {
            self.held_bytes = 0;
            for h in self.held.drain(..) {
                self.counters.to_leader += 1;
                self.out
                    .push_back((node, envelope(&h.frames, h.user.as_deref())));
            }
        }
    }

    /// A message from a peer of this node (its routing id first): `Some` when the node's
    /// own broker is to handle it, `None` when the relay took it.
    pub fn from_peer(
        &mut self,
        now: Instant,
        frames: Frames,
        user: Option<&str>,
    ) -> Option<Frames> {
        if !self.relaying {
            return Some(frames);
        }
        let Some((id, rest)) = frames.split_first() else {
            return Some(frames);
        };
        let kind = self.classify(id, rest);
        match kind {
            Kind::Local => return Some(frames),
            Kind::Register => {
                if self.workers.len() >= self.config.max_workers && !self.workers.contains_key(id) {
                    return Some(frames);
                }
                self.workers.insert(id.clone(), now);
                if self.next_sweep.is_none() {
                    self.next_sweep = Some(now + Duration::from_millis(self.config.forget_ms));
                }
            }
            Kind::Relay => {
                if let Some(heard) = self.workers.get_mut(id) {
                    *heard = now;
                }
            }
            Kind::Leave => {
                self.workers.remove(id);
            }
        }
        match self.leader {
            Some(node) => {
                self.counters.to_leader += 1;
                self.out.push_back((node, envelope(&frames, user)));
            }
            None => {
                let size: usize = frames.iter().map(Bytes::len).sum();
                if self.held.len() >= self.config.max_held
                    || self.held_bytes + size > self.config.max_held_bytes
                {
                    self.counters.overflow += 1;
                    return Some(frames);
                }
                self.held_bytes += size;
                self.held.push_back(Held {
                    until: now + Duration::from_millis(self.config.hold_ms),
                    frames,
                    user: user.map(str::to_string),
                });
            }
        }
        None
    }

    fn classify(&self, id: &Bytes, rest: &[Bytes]) -> Kind {
        let known = self.workers.contains_key(id);
        if mdp::is_disconnect_notice(rest) {
            return if known { Kind::Leave } else { Kind::Local };
        }
        match Message::decode(rest.to_vec()) {
            Ok(
                Message::Client(m)
                | Message::Client2(ClientKind::Request, m)
                | Message::Client2Delimited(ClientKind::Request, m),
            ) if !m.service.is_mmi() => Kind::Relay,
            Ok(
                Message::Worker(WorkerCommand::Ready { .. })
                | Message::Worker2(WorkerCommand::Ready { .. })
                | Message::Worker2Delimited(WorkerCommand::Ready { .. }),
            ) => {
                if announces_capacity(rest) {
                    Kind::Local
                } else {
                    Kind::Register
                }
            }
            Ok(
                Message::Worker(WorkerCommand::Disconnect)
                | Message::Worker2(WorkerCommand::Disconnect)
                | Message::Worker2Delimited(WorkerCommand::Disconnect),
            ) if known => Kind::Leave,
            Ok(Message::Worker(_) | Message::Worker2(_) | Message::Worker2Delimited(_))
                if known =>
            {
                Kind::Relay
            }
            _ => Kind::Local,
        }
    }

    /// The next message for another node: its id and the frames (the envelope).
    pub fn poll_forward(&mut self) -> Option<(u64, Frames)> {
        self.out.pop_front()
    }

    /// The next message the node's own broker is to handle after all, with its User-Id.
    pub fn poll_local(&mut self) -> Option<(Frames, Option<String>)> {
        self.local.pop_front()
    }

    /// When [`Relay::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let held = self.held.front().map(|h| h.until);
        [held, self.next_sweep].into_iter().flatten().min()
    }

    /// Time has passed: messages that waited too long go to the local broker; workers
    /// silent too long are forgotten.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.held.front().is_some_and(|h| h.until <= now) {
            if let Some(h) = self.held.pop_front() {
                self.held_bytes -= h.frames.iter().map(Bytes::len).sum::<usize>();
                self.counters.expired += 1;
                self.local.push_back((h.frames, h.user));
            }
        }
        if self.next_sweep.is_some_and(|t| t <= now) {
            let forget = Duration::from_millis(self.config.forget_ms);
            self.workers.retain(|_, heard| *heard + forget > now);
            self.next_sweep = (!self.workers.is_empty()).then(|| now + forget / 2);
        }
    }

    /// A message a leader sent back for one of this node's relayed peers was passed on.
    pub fn count_to_peer(&mut self) {
        self.counters.to_peers += 1;
    }

    /// Relayed workers remembered.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// What it did.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// Whether a READY carries scale0's `capacity=N` frame (the frame after the service).
fn announces_capacity(rest: &[Bytes]) -> bool {
    let header = rest
        .iter()
        .position(|f| f.as_ref() == mdp::WORKER_HEADER || f.as_ref() == mdp::WORKER_HEADER_V2);
    header
        .and_then(|h| rest.get(h + 3))
        .is_some_and(|f| f.starts_with(b"capacity="))
}

fn envelope(frames: &[Bytes], user: Option<&str>) -> Frames {
    let mut out = Vec::with_capacity(frames.len() + 2);
    out.push(Bytes::from_static(TO_LEADER));
    let (id, rest) = frames
        .split_first()
        .map_or((Bytes::new(), &[][..]), |(i, r)| (i.clone(), r));
    out.push(id);
    out.push(user.map_or_else(Bytes::new, |u| Bytes::copy_from_slice(u.as_bytes())));
    out.extend(rest.iter().cloned());
    out
}

/// Whether a peer's routing id is one the leader gives relayed peers: a peer of the
/// node's own that sets such an id is refused by the driver, or it could pass itself off
/// as a peer of another node.
pub fn is_relayed(id: &[u8]) -> bool {
    id.len() > PREFIX_LEN && id.starts_with(PREFIX)
}

/// The id a relayed peer has on the leader: it names the node it came through.
pub fn relayed_id(node: u64, peer: &[u8]) -> Bytes {
    let mut id = Vec::with_capacity(PREFIX_LEN + peer.len());
    id.extend_from_slice(PREFIX);
    id.extend_from_slice(&node.to_be_bytes());
    id.extend_from_slice(peer);
    Bytes::from(id)
}

/// On the leader: a relayed message from node `from` (its frames after the routing
/// id) as the broker is to see it, its peer's relayed id first, with the User-Id it
/// came with. `None` for anything else, or a peer id too long to relay.
pub fn unwrap(from: u64, frames: &[Bytes]) -> Option<(Frames, Option<String>)> {
    let [tag, peer, user, rest @ ..] = frames else {
        return None;
    };
    if tag.as_ref() != TO_LEADER || peer.is_empty() || PREFIX_LEN + peer.len() > 255 {
        return None;
    }
    let user = if user.is_empty() {
        None
    } else {
        Some(std::str::from_utf8(user).ok()?.to_string())
    };
    let mut out = Vec::with_capacity(rest.len() + 1);
    out.push(relayed_id(from, peer));
    out.extend(rest.iter().cloned());
    Some((out, user))
}

/// On the leader: whether the broker's output `frames` go to a relayed peer, and then
/// to which node, as what.
pub fn wrap(frames: &[Bytes]) -> Option<(u64, Frames)> {
    let (id, rest) = frames.split_first()?;
    let node = id.strip_prefix(PREFIX).filter(|r| r.len() > 8)?;
    let node = u64::from_be_bytes(node.get(..8)?.try_into().ok()?);
    let mut out = Vec::with_capacity(rest.len() + 2);
    out.push(Bytes::from_static(TO_PEER));
    out.push(id.slice(PREFIX_LEN..));
    out.extend(rest.iter().cloned());
    Some((node, out))
}

/// On the follower: a leader's message for a relayed peer (its frames after the
/// routing id) as the node's ROUTER sends it, the peer's routing id first.
pub fn back(frames: &[Bytes]) -> Option<Frames> {
    let [tag, peer, ..] = frames else {
        return None;
    };
    if tag.as_ref() != TO_PEER || peer.is_empty() {
        return None;
    }
    Some(frames[1..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn relay() -> Relay {
        let mut r = Relay::new(Config::new(1000, 2500, 3));
        r.set_leader(false, Some(7));
        r
    }

    fn request_v1(id: &[u8], service: &[u8]) -> Frames {
        vec![b(id), b(b""), b(b"MDPC01"), b(service), b(b"body")]
    }

    #[test]
    fn a_plain_request_goes_to_the_leader_and_its_reply_comes_back() {
        let mut r = relay();
        assert_eq!(
            r.from_peer(at(0), request_v1(b"c1", b"echo"), Some("alice")),
            None
        );
        let (node, env) = r.poll_forward().unwrap();
        assert_eq!(node, 7);
        // The leader's broker sees it from a peer of its own.
        let (frames, user) = unwrap(3, &env).unwrap();
        assert_eq!(user.as_deref(), Some("alice"));
        assert_eq!(frames[0], relayed_id(3, b"c1"));
        assert_eq!(&frames[1..], &request_v1(b"c1", b"echo")[1..]);
        // Its reply goes back through node 3 to c1.
        let reply = vec![frames[0].clone(), b(b""), b(b"MDPC01"), b(b"echo"), b(b"r")];
        let (node, env) = wrap(&reply).unwrap();
        assert_eq!(node, 3);
        assert_eq!(
            back(&env).unwrap(),
            vec![b(b"c1"), b(b""), b(b"MDPC01"), b(b"echo"), b(b"r")]
        );
        // A peer of the leader's own is not relayed.
        assert_eq!(wrap(&[b(b"c1"), b(b"x")]), None);
    }

    #[test]
    fn mmi_native_and_scale0_workers_stay_local() {
        let mut r = relay();
        let mmi = request_v1(b"c1", b"mmi.service");
        assert_eq!(r.from_peer(at(0), mmi.clone(), None), Some(mmi));
        let native = vec![b(b"n1"), b(b"S0C1"), b(&[1]), b(b"id"), b(b"echo"), b(b"x")];
        assert!(r.from_peer(at(0), native, None).is_some());
        let scale0 = vec![
            b(b"w1"),
            b(b"MDPW02"),
            b(&[1]),
            b(b"echo"),
            b(b"capacity=8"),
        ];
        assert!(r.from_peer(at(0), scale0, None).is_some());
        // Its heartbeats stay local too: it was never relayed.
        let hb = vec![b(b"w1"), b(b"MDPW02"), b(&[4])];
        assert!(r.from_peer(at(0), hb, None).is_some());
        assert!(r.poll_forward().is_none());
    }

    #[test]
    fn a_plain_worker_is_relayed_from_ready_to_disconnect() {
        let mut r = relay();
        let ready = vec![b(b"w1"), b(b""), b(b"MDPW01"), b(&[1]), b(b"echo")];
        assert_eq!(r.from_peer(at(0), ready, None), None);
        assert_eq!(r.workers(), 1);
        let hb = vec![b(b"w1"), b(b""), b(b"MDPW01"), b(&[4])];
        assert_eq!(r.from_peer(at(10), hb, None), None);
        let bye = vec![b(b"w1"), b(b""), b(b"MDPW01"), b(&[5])];
        assert_eq!(r.from_peer(at(20), bye, None), None);
        assert_eq!(r.workers(), 0);
        assert_eq!(r.counters().to_leader, 3);
        // Unknown now: its heartbeat is the local broker's (which tells it to leave).
        let hb = vec![b(b"w1"), b(b""), b(b"MDPW01"), b(&[4])];
        assert!(r.from_peer(at(30), hb, None).is_some());
    }

    #[test]
    fn without_a_leader_messages_wait_then_go_to_it_or_to_the_local_broker() {
        let mut r = Relay::new(Config {
            max_held: 2,
            ..Config::new(1000, 2500, 3)
        });
        r.set_leader(false, None);
        assert_eq!(r.from_peer(at(0), request_v1(b"c1", b"echo"), None), None);
        assert_eq!(r.from_peer(at(10), request_v1(b"c2", b"echo"), None), None);
        // Full: the third is the local broker's at once.
        assert!(
            r.from_peer(at(20), request_v1(b"c3", b"echo"), None)
                .is_some()
        );
        assert_eq!(r.poll_timeout(), Some(at(2000)));
        r.set_leader(false, Some(2));
        assert_eq!(r.poll_forward().map(|(n, _)| n), Some(2));
        assert_eq!(r.poll_forward().map(|(n, _)| n), Some(2));
        // Another election: this one waits out the bound and goes local.
        r.set_leader(false, None);
        assert_eq!(r.from_peer(at(100), request_v1(b"c4", b"echo"), None), None);
        r.handle_timeout(at(2099));
        assert!(r.poll_local().is_none());
        r.handle_timeout(at(2100));
        assert_eq!(r.poll_local().unwrap().0[0], b(b"c4"));
        assert_eq!(r.counters().expired, 1);
        assert_eq!(r.counters().overflow, 1);
    }

    #[test]
    fn a_node_that_serves_relays_nothing_and_takes_what_waited() {
        let mut r = Relay::new(Config::new(1000, 2500, 3));
        r.set_leader(false, None);
        assert_eq!(r.from_peer(at(0), request_v1(b"c1", b"echo"), None), None);
        r.set_leader(true, None);
        assert_eq!(r.poll_local().unwrap().0[0], b(b"c1"));
        assert!(
            r.from_peer(at(1), request_v1(b"c2", b"echo"), None)
                .is_some()
        );
    }

    #[test]
    fn only_relayed_ids_look_relayed() {
        assert!(is_relayed(&relayed_id(2, b"c1")));
        assert!(!is_relayed(b"s0r"));
        assert!(!is_relayed(&relayed_id(2, b"")));
        assert!(!is_relayed(b"client-1"));
    }

    #[test]
    fn what_waits_is_bounded_in_bytes_too() {
        let mut r = Relay::new(Config {
            max_held_bytes: 40,
            ..Config::new(1000, 2500, 3)
        });
        r.set_leader(false, None);
        // 2 + 6 + 4 + 4 = 16 bytes each: two fit, the third goes local.
        assert_eq!(r.from_peer(at(0), request_v1(b"c1", b"echo"), None), None);
        assert_eq!(r.from_peer(at(0), request_v1(b"c2", b"echo"), None), None);
        assert!(
            r.from_peer(at(0), request_v1(b"c3", b"echo"), None)
                .is_some()
        );
        r.set_leader(false, Some(2));
        assert_eq!(r.from_peer(at(1), request_v1(b"c4", b"echo"), None), None);
        assert_eq!(std::iter::from_fn(|| r.poll_forward()).count(), 3);
    }

    #[test]
    fn junk_on_the_cluster_link_is_refused() {
        assert_eq!(unwrap(1, &[b(TO_LEADER), b(b"")]), None);
        assert_eq!(unwrap(1, &[b(b"XXXX"), b(b"p"), b(b""), b(b"x")]), None);
        assert_eq!(
            unwrap(1, &[b(TO_LEADER), b(&[7; 250]), b(b""), b(b"x")]),
            None
        );
        assert_eq!(
            unwrap(1, &[b(TO_LEADER), b(b"p"), b(&[0xff]), b(b"x")]),
            None
        );
        assert_eq!(back(&[b(TO_PEER)]), None);
        assert_eq!(back(&[b(TO_LEADER), b(b"p"), b(b"x")]), None);
        assert_eq!(wrap(&[b(b"s0r\0\0\0\0\0\0\0\x01")]), None);
    }
}
