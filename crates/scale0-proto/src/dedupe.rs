//! The broker's memory of native requests: which are in progress, and the answers of
//! recent ones, so a client's retry never executes a request twice.

use crate::mdp::{NativeCommand, PeerId, RequestId};
use crate::time::Instant;
use bytes::Bytes;
use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// A native request, as (client routing id, request id).
pub(crate) type Key = (PeerId, RequestId);

#[derive(Debug)]
enum Entry {
    /// Accepted and not yet answered; `generation` tells this acceptance from an earlier
    /// one of the same key that was forgotten.
    Pending {
        generation: u64,
        /// Its key in the durable journal, when the broker keeps one.
        journal: Option<u64>,
    },
    /// Answered; the answer is kept to be re-sent to retries (in the journal too, under
    /// `journal`, when the broker keeps one).
    Done {
        answer: NativeCommand,
        generation: u64,
        journal: Option<u64>,
    },
}

/// Hashes the broker's own sequential generation numbers (Fibonacci hashing): nothing a
/// peer chooses goes in, so it needs none of SipHash's resistance to chosen keys, and
/// the check whether a request is still pending (two or three per request) costs a
/// multiplication instead of hashing two ids.
#[derive(Default)]
struct GenerationHasher(u64);

impl Hasher for GenerationHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Bounded table of pending and recently answered native requests.
#[derive(Debug)]
pub(crate) struct Dedupe {
    entries: HashMap<Key, Entry>,
    /// The generations of the `Pending` entries.
    pending: HashSet<u64, BuildHasherDefault<GenerationHasher>>,
    /// Answered keys, oldest first, with when they may be forgotten.
    done: VecDeque<(Instant, Key, u64)>,
    done_bytes: usize,
    next_generation: u64,
    max_entries: usize,
    max_bytes: usize,
    /// Journal keys of answers forgotten, for the broker to delete.
    forgotten: Vec<u64>,
}

/// What the table knows of a key.
#[derive(Debug)]
pub(crate) enum Seen<'a> {
    New,
    Pending,
    Done(&'a NativeCommand),
}

fn answer_bytes(answer: &NativeCommand) -> usize {
    let body: usize = match answer {
        NativeCommand::Final { body, .. } | NativeCommand::Partial { body, .. } => {
            body.iter().map(Bytes::len).sum()
        }
        NativeCommand::Error { message, .. } => message.len(),
        _ => 0,
    };
    body + answer.id().as_bytes().len() + 64
}

impl Dedupe {
    /// A table keeping at most `max_entries` answers of at most `max_bytes` in all.
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            pending: HashSet::default(),
            done: VecDeque::new(),
            done_bytes: 0,
            next_generation: 1,
            max_entries,
            max_bytes,
            forgotten: Vec::new(),
        }
    }

    /// Forgets everything but the generations already given: one is never given twice
    /// in a broker's life, which [`Dedupe::is_pending`] relies on.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.pending.clear();
        self.done.clear();
        self.done_bytes = 0;
        self.forgotten.clear();
    }

    pub(crate) fn seen(&self, key: &Key) -> Seen<'_> {
        match self.entries.get(key) {
            None => Seen::New,
            Some(Entry::Pending { .. }) => Seen::Pending,
            Some(Entry::Done { answer, .. }) => Seen::Done(answer),
        }
    }

    /// Records a newly accepted request, stored under `journal` if durable; returns its
    /// generation.
    pub(crate) fn accept(&mut self, key: Key, journal: Option<u64>) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        let old = self.entries.insert(
            key,
            Entry::Pending {
                generation,
                journal,
            },
        );
        if let Some(Entry::Pending { generation: g, .. }) = old {
            self.pending.remove(&g);
        }
        self.pending.insert(generation);
        generation
    }

    /// Notes where a pending request is stored, once it is.
    pub(crate) fn set_journal(&mut self, key: &Key, key_in_journal: u64) {
        if let Some(Entry::Pending { journal, .. }) = self.entries.get_mut(key) {
            *journal = Some(key_in_journal);
        }
    }

    /// True while the acceptance `generation` (of one key: generations are never
    /// reused) still waits for its answer.
    pub(crate) fn is_pending(&self, generation: u64) -> bool {
        self.pending.contains(&generation)
    }

    /// Stores the answer of a request (pending or refused at once) until `forget_at`;
    /// returns the journal key of the pending request it ends, if it had one.
    pub(crate) fn answer(
        &mut self,
        key: Key,
        answer: NativeCommand,
        forget_at: Instant,
    ) -> Option<u64> {
        let (generation, journal) = match self.entries.get(&key) {
            Some(Entry::Pending {
                generation,
                journal,
            }) => (*generation, *journal),
            _ => {
                let g = self.next_generation;
                self.next_generation += 1;
                (g, None)
            }
        };
        self.keep(key, answer, forget_at, generation, journal);
        journal
    }

    /// An answer read back from the journal (under `journal`) after a restart or by a
    /// new cluster leader, kept until `forget_at`.
    pub(crate) fn restore_answer(
        &mut self,
        key: Key,
        answer: NativeCommand,
        forget_at: Instant,
        journal: u64,
    ) {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.keep(key, answer, forget_at, generation, Some(journal));
    }

    fn keep(
        &mut self,
        key: Key,
        answer: NativeCommand,
        forget_at: Instant,
        generation: u64,
        journal: Option<u64>,
    ) {
        self.done_bytes += answer_bytes(&answer);
        self.done.push_back((forget_at, key.clone(), generation));
        let old = self.entries.insert(
            key,
            Entry::Done {
                answer,
                generation,
                journal,
            },
        );
        match old {
            Some(Entry::Pending { generation: g, .. }) => {
                self.pending.remove(&g);
            }
            // An answer it replaces (the same key answered again) is no longer kept.
            Some(Entry::Done {
                journal: Some(j), ..
            }) if Some(j) != journal => self.forgotten.push(j),
            _ => {}
        }
        // Over a bound, the oldest answers go now, not at the next timer.
        self.evict(Instant::ZERO);
    }

    /// Journal keys of answers forgotten since the last call: the broker deletes them.
    pub(crate) fn take_forgotten(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.forgotten)
    }

    /// Forgets answers past their time, and the oldest ones while over either bound.
    pub(crate) fn evict(&mut self, now: Instant) {
        while let Some((forget_at, _, _)) = self.done.front() {
            let over = self.done.len() > self.max_entries || self.done_bytes > self.max_bytes;
            if *forget_at > now && !over {
                break;
            }
            let Some((_, key, generation)) = self.done.pop_front() else {
                break;
            };
            // One lookup: the entry is taken out only if it is this answer.
            if let Slot::Occupied(slot) = self.entries.entry(key)
                && let Entry::Done {
                    answer,
                    generation: g,
                    journal,
                } = slot.get()
                && *g == generation
            {
                self.done_bytes = self.done_bytes.saturating_sub(answer_bytes(answer));
                if let Some(j) = journal {
                    self.forgotten.push(*j);
                }
                slot.remove();
            }
        }
    }

    /// Answers stored now.
    pub(crate) fn answered(&self) -> usize {
        self.done.len()
    }

    /// Requests pending now.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }
}
