//! The broker's memory of native requests: which are in progress, and the answers of
//! recent ones, so a client's retry never executes a request twice.

use crate::mdp::{NativeCommand, PeerId, RequestId};
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};

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

/// Bounded table of pending and recently answered native requests.
#[derive(Debug)]
pub(crate) struct Dedupe {
    entries: HashMap<Key, Entry>,
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
            done: VecDeque::new(),
            done_bytes: 0,
            next_generation: 1,
            max_entries,
            max_bytes,
            forgotten: Vec::new(),
        }
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
        self.entries.insert(
            key,
            Entry::Pending {
                generation,
                journal,
            },
        );
        generation
    }

    /// Notes where a pending request is stored, once it is.
    pub(crate) fn set_journal(&mut self, key: &Key, key_in_journal: u64) {
        if let Some(Entry::Pending { journal, .. }) = self.entries.get_mut(key) {
            *journal = Some(key_in_journal);
        }
    }

    /// True while the acceptance `generation` of `key` still waits for its answer.
    pub(crate) fn is_pending(&self, key: &Key, generation: u64) -> bool {
        matches!(self.entries.get(key), Some(Entry::Pending { generation: g, .. }) if *g == generation)
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
        // An answer it replaces (the same key answered again) is no longer kept.
        if let Some(Entry::Done {
            journal: Some(j), ..
        }) = old
            && Some(j) != journal
        {
            self.forgotten.push(j);
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
            if let Some(Entry::Done {
                answer,
                generation: g,
                journal,
            }) = self.entries.get(&key)
                && *g == generation
            {
                self.done_bytes = self.done_bytes.saturating_sub(answer_bytes(answer));
                if let Some(j) = journal {
                    self.forgotten.push(*j);
                }
                self.entries.remove(&key);
            }
        }
    }

    /// Answers stored now.
    pub(crate) fn answered(&self) -> usize {
        self.done.len()
    }

    /// Requests pending now.
    pub(crate) fn pending(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e, Entry::Pending { .. }))
            .count()
    }
}
