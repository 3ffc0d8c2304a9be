//! The durable side: the journal of accepted requests and recovery from it.

use super::titanic::Titanic;
use super::workers::Service;
use super::{Broker, Config, Origin, Request};
use crate::journal::{Entry, EntryError, JournalOp, StoredOrigin};
use crate::mdp::ServiceName;
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};

/// The durable side of a broker: journal ops the driver has not taken yet, how many of
/// the ops are durable, and the Titanic table.
#[derive(Debug, Default)]
pub(super) struct Journal {
    ops: VecDeque<JournalOp>,
    /// Ops emitted since start-up.
    pub(super) emitted: u64,
    /// Of those, how many the driver has committed.
    pub(super) durable: u64,
    next_key: u64,
    /// Makes Titanic UUIDs of this run differ from those of earlier runs.
    pub(super) nonce: u64,
    pub(super) titanic: HashMap<Bytes, Titanic>,
}

/// What a durable broker found in its store at start-up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Requests put back in their queues.
    pub requests: usize,
    /// Finished Titanic requests whose replies wait for `titanic.reply`.
    pub titanic_answers: usize,
    /// Answers of native requests kept for retries.
    pub native_answers: usize,
    /// Entries that could not be decoded; they are left in the store untouched.
    pub unreadable: Vec<(u64, EntryError)>,
}

impl Broker {
    /// A durable broker, resuming from the entries of its store (`Store::load`): every
    /// stored request goes back to its queue, in acceptance order. `nonce` should differ
    /// between runs; it makes Titanic UUIDs unique across restarts.
    pub fn durable(
        config: Config,
        now: Instant,
        stored: Vec<(u64, Bytes)>,
        nonce: u64,
    ) -> (Self, Recovery) {
        let mut broker = Self::new(config, now);
        let recovery = broker.resume(now, stored, nonce);
        (broker, recovery)
    }

    /// A standby broker (a cluster node that did not serve) starts to serve from the
    /// replicated journal's live entries, as a durable broker restarts from its store:
    /// its workers stay registered and are sent the recovered requests at once. A broker
    /// that keeps a journal already is left as it is.
    pub fn resume(&mut self, now: Instant, stored: Vec<(u64, Bytes)>, nonce: u64) -> Recovery {
        if self.journal.is_some() {
            return Recovery::default();
        }
        if self.standby {
            // A standby's answers kept for retries are all `not_leader` refusals: a retry
            // of the same id must now be served, not refused again from memory.
            self.dedupe.clear();
        }
        self.standby = false;
        let broker = self;
        let mut journal = Journal {
            next_key: 1,
            nonce,
            ..Journal::default()
        };
        let mut recovery = Recovery::default();
        for (key, value) in stored {
            journal.next_key = journal.next_key.max(key.saturating_add(1));
            let (client, origin, service, body) = match Entry::decode(&value) {
                Err(e) => {
                    recovery.unreadable.push((key, e));
                    continue;
                }
                Ok(Entry::TitanicDone { uuid, outcome }) => {
                    journal.titanic.insert(uuid, Titanic::Done { key, outcome });
                    recovery.titanic_answers += 1;
                    continue;
                }
                Ok(Entry::NativeAnswer { client, id, answer }) => {
                    // Kept for the client's retries, from now for a whole window.
                    let command = match answer {
                        Ok(body) => crate::mdp::NativeCommand::Final {
                            id: id.clone(),
                            body,
                        },
                        Err((status, message)) => crate::mdp::NativeCommand::Error {
                            id: id.clone(),
                            status,
                            message,
                        },
                    };
                    let forget_at = now + broker.config.dedupe_window();
                    broker
                        .dedupe
                        .restore_answer((client, id), command, forget_at, key);
                    recovery.native_answers += 1;
                    continue;
                }
                Ok(Entry::Request {
                    client,
                    origin,
                    service,
                    body,
                }) => (client, origin, service, body),
            };
            let origin = match origin {
                StoredOrigin::Mdp(version) => Origin::Mdp(version),
                StoredOrigin::Native(id) => {
                    // A retry of this id attaches to the stored request instead of
                    // running it again.
                    let generation = broker
                        .dedupe
                        .accept((client.clone(), id.clone()), Some(key));
                    Origin::Native { id, generation }
                }
                StoredOrigin::Titanic(uuid) => {
                    journal
                        .titanic
                        .insert(uuid.clone(), Titanic::Pending { key });
                    Origin::Titanic { uuid }
                }
            };
            let mut request = Request::new(client, origin, body, now);
            request.journal = Some(key);
            request.recovered = true;
            // Accepted once already: recovered requests are not refused for depth or
            // for the number of services.
            broker
                .services
                .entry(service)
                .or_insert_with(|| Service::new(now))
                .requests
                .push_back(request);
            broker.counters.recovered += 1;
            recovery.requests += 1;
        }
        broker.journal = Some(journal);
        let names: Vec<ServiceName> = broker.services.keys().cloned().collect();
        for service in &names {
            broker.arm_waiting(service);
            broker.dispatch(now, service);
        }
        recovery
    }

    /// True when the broker keeps a journal.
    pub fn is_durable(&self) -> bool {
        self.journal.is_some()
    }

    /// The next change for the durable store, if any. Messages that depend on it are held
    /// back until the driver has committed it and called [`Broker::journal_synced`].
    pub fn poll_journal(&mut self) -> Option<JournalOp> {
        self.journal.as_mut()?.ops.pop_front()
    }

    /// Every op taken with [`Broker::poll_journal`] so far is durable now.
    pub fn journal_synced(&mut self) {
        if let Some(j) = &mut self.journal {
            j.durable = j.emitted - j.ops.len() as u64;
        }
    }

    /// The first `taken` ops taken with [`Broker::poll_journal`] are durable now (a
    /// cluster's commit, which can trail what has been taken since).
    pub fn journal_committed(&mut self, taken: u64) {
        if let Some(j) = &mut self.journal {
            let limit = j.emitted - j.ops.len() as u64;
            j.durable = j.durable.max(taken.min(limit));
        }
    }

    pub(super) fn journal_key(&mut self) -> Option<u64> {
        let j = self.journal.as_mut()?;
        let key = j.next_key;
        j.next_key += 1;
        Some(key)
    }

    /// Deletes from the journal the answers the dedupe table no longer keeps.
    pub(super) fn forget_answers(&mut self) {
        for key in self.dedupe.take_forgotten() {
            self.journal_op(JournalOp::Delete { key });
        }
    }

    pub(super) fn journal_op(&mut self, op: JournalOp) {
        if let Some(j) = &mut self.journal {
            j.ops.push_back(op);
            j.emitted += 1;
        }
    }
}
