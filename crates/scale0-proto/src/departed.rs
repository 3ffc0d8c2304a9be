//! Peers whose connection has ended, as libzmq reports with ZMQ_ROUTER_NOTIFY.
//!
//! Only ids libzmq made up are kept: it never gives one out twice in a process, so a peer
//! with such an id is gone for good (a Lazy Pirate client that timed out closes its socket
//! and asks again on a new one, with a new id). A peer with an id of its own may come back
//! with it, as a native client retrying does, and is not remembered.

use crate::mdp::PeerId;
use std::collections::{HashSet, VecDeque};

/// Departed peers remembered at most: the oldest are forgotten first. What matters is
/// their requests still queued, and those are dropped when their turn comes.
pub(crate) const MAX_DEPARTED: usize = 100_000;

/// The set of departed peers with libzmq-generated ids, bounded.
#[derive(Debug, Default)]
pub(crate) struct Departed {
    set: HashSet<PeerId>,
    order: VecDeque<PeerId>,
}

impl Departed {
    /// Records that `peer`'s connection ended; ids of the peer's own are ignored.
    pub(crate) fn note(&mut self, peer: &PeerId) {
        if !peer.is_generated() || !self.set.insert(peer.clone()) {
            return;
        }
        self.order.push_back(peer.clone());
        while self.order.len() > MAX_DEPARTED
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
    }

    /// Whether `peer` is known to be gone for good.
    pub(crate) fn contains(&self, peer: &PeerId) -> bool {
        // Asked for every MDP request dispatched: no hashing for ids of a peer's own, nor
        // while nobody has departed.
        peer.is_generated() && !self.set.is_empty() && self.set.contains(peer)
    }

    /// `peer` sent something: it had not departed after all. (The notice is one empty
    /// frame, which a peer can also send itself; this undoes that.)
    pub(crate) fn heard_from(&mut self, peer: &PeerId) {
        if self.contains(peer) {
            self.set.remove(peer);
            // Its place in `order` goes when it comes round; `note` skips ids not in `set`.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn generated(n: u32) -> PeerId {
        let mut id = vec![0];
        id.extend_from_slice(&n.to_be_bytes());
        PeerId::new(Bytes::from(id)).unwrap()
    }

    #[test]
    fn only_generated_ids_are_kept_and_the_oldest_go_first() {
        let mut d = Departed::default();
        let own = PeerId::new(Bytes::from_static(b"client-7")).unwrap();
        d.note(&own);
        assert!(!d.contains(&own), "an id of its own may come back");
        for n in 0..=u32::try_from(MAX_DEPARTED).unwrap() {
            d.note(&generated(n));
        }
        assert!(!d.contains(&generated(0)), "forgotten, the bound kept");
        assert!(d.contains(&generated(1)));
        assert_eq!(d.set.len(), MAX_DEPARTED);
    }
}
