//! A timer table: deadlines keyed by what they belong to (a worker, a service), earliest
//! first, each operation O(log n).
//!
//! Deadlines that move often (a worker's expiry moves on with every message) are not
//! rescheduled each time: the owner keeps the true deadline and the table a time no later
//! than it. When that time comes, the owner looks at the true deadline and either acts or
//! sets the timer again. So the table holds about one entry per key, however busy the
//! keys are.

use crate::time::Instant;
use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

/// Deadlines by key; at most one is live per key.
#[derive(Debug)]
pub(crate) struct Timers<K> {
    /// Every time set, earliest on top; an entry whose key now has another time (or
    /// none) is stale and dropped when it reaches the top.
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    live: HashMap<K, Instant>,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            live: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> Timers<K> {
    /// Makes `key` fire at `at`, in place of any time it had.
    pub(crate) fn set(&mut self, key: K, at: Instant) {
        if self.live.insert(key.clone(), at) != Some(at) {
            self.heap.push(Reverse((at, key)));
        }
        self.drop_stale();
    }

    /// Makes `key` fire no later than `at`: an earlier time it has stays.
    pub(crate) fn set_by(&mut self, key: K, at: Instant) {
        match self.live.entry(key.clone()) {
            Entry::Occupied(t) if *t.get() <= at => {}
            Entry::Occupied(mut t) => {
                t.insert(at);
                self.heap.push(Reverse((at, key)));
            }
            Entry::Vacant(t) => {
                t.insert(at);
                self.heap.push(Reverse((at, key)));
            }
        }
        self.drop_stale();
    }

    /// `key` no longer fires.
    pub(crate) fn cancel(&mut self, key: &K) {
        self.live.remove(key);
        self.drop_stale();
    }

    /// The earliest live time.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// A key whose time is `now` or earlier, no longer set; `None` when none is due.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let Reverse((at, _)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        let Reverse((_, key)) = self.heap.pop()?;
        self.live.remove(&key);
        self.drop_stale();
        Some(key)
    }

    /// Live timers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// Keeps a live entry on top, so that [`Timers::next`] is exact, and the heap within
    /// twice the live timers: stale entries below the top would otherwise wait for their
    /// old time (a cancelled request timeout, say), and a busy table would grow with them.
    fn drop_stale(&mut self) {
        if self.heap.len() > 2 * self.live.len() + 64 {
            // Amortised O(1): at least half the entries go.
            self.heap = self
                .live
                .iter()
                .map(|(k, at)| Reverse((*at, k.clone())))
                .collect();
        }
        while let Some(Reverse((at, key))) = self.heap.peek() {
            if self.live.get(key) == Some(at) {
                break;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn keys_fire_in_time_order_once_each() {
        let mut t = Timers::default();
        t.set("b", at(20));
        t.set("a", at(10));
        t.set("c", at(30));
        assert_eq!(t.next(), Some(at(10)));
        assert_eq!(t.pop_due(at(5)), None);
        assert_eq!(t.pop_due(at(25)), Some("a"));
        assert_eq!(t.pop_due(at(25)), Some("b"));
        assert_eq!(t.pop_due(at(25)), None);
        assert_eq!(t.next(), Some(at(30)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn setting_again_replaces_and_cancel_removes() {
        let mut t = Timers::default();
        t.set("a", at(10));
        t.set("a", at(50));
        assert_eq!(t.next(), Some(at(50)), "the old time is gone");
        t.set("b", at(20));
        t.cancel(&"b");
        assert_eq!(t.pop_due(at(40)), None);
        assert_eq!(t.pop_due(at(50)), Some("a"));
        assert_eq!(t.next(), None);
    }

    #[test]
    fn cancelled_entries_do_not_pile_up() {
        let mut t = Timers::default();
        for key in 0..10_000u32 {
            t.set(key, at(1_000_000 + u64::from(key)));
            t.cancel(&key);
        }
        t.set(7, at(5));
        assert!(
            t.heap.len() <= 2 * t.live.len() + 64,
            "{} entries",
            t.heap.len()
        );
        assert_eq!(t.next(), Some(at(5)));
    }

    #[test]
    fn set_by_only_ever_brings_a_time_forward() {
        let mut t = Timers::default();
        t.set_by("a", at(30));
        t.set_by("a", at(40));
        assert_eq!(t.next(), Some(at(30)));
        t.set_by("a", at(10));
        assert_eq!(t.next(), Some(at(10)));
        assert_eq!(t.pop_due(at(10)), Some("a"));
        assert_eq!(t.pop_due(at(100)), None, "the replaced entries are stale");
    }
}
