//! Clients: MDP and native requests, their answers and native deadlines.

use super::counters::{DropReason, FailReason};
use super::titanic::{Titanic, is_titanic};
use super::{Broker, Origin, Outcome, Request, Transmit, mdp_reply};
use crate::dedupe::{Key, Seen};
use crate::journal::{Entry, JournalOp, StoredOrigin};
use crate::mdp::{
    Body, ClientKind, ClientMessage, Message, NativeCommand, PeerId, RequestId, ServiceName,
    Status, Version,
};
use crate::time::Instant;
use bytes::Bytes;
use std::cmp::Reverse;
use std::time::Duration;
use tracing::warn;

impl Broker {
    pub(super) fn on_client_request(
        &mut self,
        now: Instant,
        client: PeerId,
        version: Version,
        m: ClientMessage,
    ) {
        if m.service.is_mmi() {
            let code = self.mmi(now, &m);
            let reply = ClientMessage {
                service: m.service,
                body: vec![code],
            };
            self.push(Transmit {
                dest: (),
                frames: mdp_reply(version, ClientKind::Final, reply).encode_to(&client),
            });
            return;
        }
        if self.journal.is_some() && is_titanic(&m.service) {
            let body = self.titanic(now, &client, &m);
            let reply = ClientMessage {
                service: m.service,
                body,
            };
            self.push(Transmit {
                dest: (),
                frames: mdp_reply(version, ClientKind::Final, reply).encode_to(&client),
            });
            return;
        }
        let mut request = Request::new(client, Origin::Mdp(version), m.body, now);
        let stored = self.journal_key().map(|key| {
            request.journal = Some(key);
            let entry = Entry::Request {
                client: request.client.clone(),
                origin: StoredOrigin::Mdp(version),
                service: m.service.clone(),
                body: request.body.clone(),
            };
            (key, entry)
        });
        match self.enqueue(now, &m.service, request) {
            Ok(()) => {
                if let Some((key, entry)) = stored {
                    self.journal_op(JournalOp::Put {
                        key,
                        value: entry.encode(),
                    });
                }
                self.dispatch(now, &m.service);
            }
            Err(refused) => {
                let (reason, request) = *refused;
                self.finish(now, &m.service, &request, Outcome::Fail(reason));
            }
        }
    }

    pub(super) fn on_native_request(
        &mut self,
        now: Instant,
        client: PeerId,
        id: RequestId,
        service: ServiceName,
        (deadline_ms, ack): (Option<u64>, bool),
        body: Body,
    ) {
        let key: Key = (client.clone(), id.clone());
        match self.dedupe.seen(&key) {
            Seen::New => {}
            Seen::Pending => {
                self.counters.duplicates += 1;
                if ack {
                    self.send_native(&client, NativeCommand::Accepted { id });
                }
                return;
            }
            Seen::Done(answer) => {
                self.counters.duplicates += 1;
                let answer = answer.clone();
                self.send_native(&client, answer);
                return;
            }
        }
        if deadline_ms == Some(0) {
            // Nothing could be done in time: say so rather than dispatch it to fail.
            return self.refuse_native(
                now,
                &client,
                id,
                Status::DeadlineExceeded,
                "the deadline had passed when the request arrived",
            );
        }
        if service.is_mmi() {
            let code = self.mmi(now, &ClientMessage { service, body });
            self.send_native(
                &client,
                NativeCommand::Final {
                    id,
                    body: vec![code],
                },
            );
            return;
        }
        let generation = self.dedupe.accept(key.clone(), None);
        let origin = Origin::Native {
            id: id.clone(),
            generation,
        };
        let mut request = Request::new(client.clone(), origin, body, now);
        let stored = self.journal_key().map(|journal| {
            request.journal = Some(journal);
            let entry = Entry::Request {
                client: client.clone(),
                origin: StoredOrigin::Native(id.clone()),
                service: service.clone(),
                body: request.body.clone(),
            };
            (journal, entry)
        });
        match self.enqueue(now, &service, request) {
            Ok(()) => {
                if let Some((journal, entry)) = stored {
                    self.dedupe.set_journal(&key, journal);
                    self.journal_op(JournalOp::Put {
                        key: journal,
                        value: entry.encode(),
                    });
                }
                if let Some(ms) = deadline_ms {
                    let at = now + Duration::from_millis(ms);
                    self.client_deadlines.push(Reverse((
                        at,
                        generation,
                        client.clone(),
                        id.clone(),
                    )));
                }
                if !ack {
                    self.dispatch(now, &service);
                    return;
                }
                // Queued ahead of anything the dispatch produces for this client, so
                // ACCEPTED always precedes FINAL; like it, only once the request is
                // durable.
                self.send_native(&client, NativeCommand::Accepted { id });
                self.dispatch(now, &service);
            }
            Err(refused) => {
                let (reason, request) = *refused;
                self.finish(now, &service, &request, Outcome::Fail(reason));
            }
        }
    }

    /// Answers a native request at once with an error, remembering it for retries.
    pub(super) fn refuse_native(
        &mut self,
        now: Instant,
        client: &PeerId,
        id: RequestId,
        status: Status,
        why: &str,
    ) {
        let answer = NativeCommand::Error {
            id: id.clone(),
            status,
            message: Bytes::from(why.to_string()),
        };
        self.dedupe.answer(
            (client.clone(), id),
            answer.clone(),
            now + self.config.dedupe_window(),
        );
        self.send_native(client, answer);
    }

    fn send_native(&mut self, client: &PeerId, cmd: NativeCommand) {
        self.push(Transmit {
            dest: (),
            frames: Message::Native(cmd).encode_to(client),
        });
    }

    /// True while nobody has answered the request yet.
    pub(super) fn is_live(&self, request: &Request) -> bool {
        match &request.origin {
            Origin::Mdp(_) => true,
            Origin::Native { generation, .. } => self
                .dedupe
                .is_pending(*generation),
            Origin::Titanic { uuid } => self.journal.as_ref().is_some_and(|j| {
                matches!(j.titanic.get(uuid), Some(Titanic::Pending { key }) if Some(*key) == request.journal)
            }),
        }
    }

    /// Ends a request: the reply or the error goes to the client in its own protocol.
    pub(super) fn finish(
        &mut self,
        now: Instant,
        service: &ServiceName,
        request: &Request,
        outcome: Outcome,
    ) {
        self.count_for_service(service, matches!(outcome, Outcome::Fail(_)));
        if let Outcome::Fail(reason) = outcome {
            let n = match self.counters.failed.get_mut(reason.index()) {
                Some(n) => {
                    *n += 1;
                    *n
                }
                None => 0,
            };
            if n.is_power_of_two() {
                warn!(%service, client = %request.client, reason = reason.label(), total = n, "request failed");
            }
        } else {
            self.counters.replies += 1;
            self.counters.record_latency(
                u64::try_from(now.saturating_since(request.accepted_at).as_millis())
                    .unwrap_or(u64::MAX),
            );
        }
        // A stored reply goes only to a client that chose its own routing id.
        let stale = request.recovered && PeerId::is_generated(&request.client);
        match (&request.origin, outcome) {
            (Origin::Mdp(version), outcome) => {
                if let Some(key) = request.journal {
                    self.journal_op(JournalOp::Delete { key });
                }
                match outcome {
                    Outcome::Reply(_) if stale => self.drop_message(DropReason::StaleClient, 0),
                    Outcome::Reply(body) => {
                        let reply = ClientMessage {
                            service: service.clone(),
                            body,
                        };
                        self.push(Transmit {
                            dest: (),
                            frames: mdp_reply(*version, ClientKind::Final, reply)
                                .encode_to(&request.client),
                        });
                    }
                    // Plain MDP cannot carry an error: counted and logged above.
                    Outcome::Fail(_) => {}
                }
            }
            (Origin::Titanic { uuid }, outcome) => self.titanic_done(uuid, outcome),
            (Origin::Native { id, .. }, outcome) => {
                let answer = match outcome {
                    Outcome::Reply(body) => NativeCommand::Final {
                        id: id.clone(),
                        body,
                    },
                    Outcome::Fail(reason) => NativeCommand::Error {
                        id: id.clone(),
                        status: reason.status(),
                        message: Bytes::from_static(reason.message().as_bytes()),
                    },
                };
                let stored = self.dedupe.answer(
                    (request.client.clone(), id.clone()),
                    answer.clone(),
                    now + self.config.dedupe_window(),
                );
                if let Some(key) = stored {
                    // The answer takes the request's place in the journal, so a retry
                    // after a restart or a failover is answered, not run again; it goes
                    // when the dedupe window forgets it.
                    let kept = match &answer {
                        NativeCommand::Final { body, .. } => Ok(body.clone()),
                        NativeCommand::Error {
                            status, message, ..
                        } => Err((*status, message.clone())),
                        _ => Ok(Vec::new()),
                    };
                    let entry = crate::journal::Entry::NativeAnswer {
                        client: request.client.clone(),
                        id: id.clone(),
                        answer: kept,
                    };
                    self.journal_op(JournalOp::Put {
                        key,
                        value: entry.encode(),
                    });
                }
                self.forget_answers();
                if stale {
                    self.drop_message(DropReason::StaleClient, 0);
                } else {
                    self.send_native(&request.client, answer);
                }
            }
        }
    }

    /// Fails native requests whose own deadline has passed.
    pub(super) fn expire_client_deadlines(&mut self, now: Instant) {
        while let Some(Reverse((at, ..))) = self.client_deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, generation, client, id))) = self.client_deadlines.pop() else {
                break;
            };
            if !self.dedupe.is_pending(generation) {
                continue;
            }
            // The request may still sit in a queue or with a worker; it is dead from now
            // on (not live), so it is skipped there and a late reply is dropped.
            let request = Request::new(client, Origin::Native { id, generation }, Vec::new(), now);
            // The service is not looked up: it only names the request in the log line.
            self.finish(
                now,
                &ServiceName::unnamed(),
                &request,
                Outcome::Fail(FailReason::DeadlineExceeded),
            );
        }
    }
}
