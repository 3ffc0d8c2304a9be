//! Titanic (RFC 9), served by a durable broker itself.

use super::{Broker, Origin, Outcome, Request};
use crate::journal::{Entry, JournalOp, StoredOrigin, TitanicOutcome};
use crate::mdp::{Body, ClientMessage, PeerId, ServiceName};
use crate::time::Instant;
use bytes::Bytes;

/// A Titanic request (RFC 9) the broker keeps until its client closes it.
#[derive(Debug)]
pub(super) enum Titanic {
    Pending { key: u64 },
    Done { key: u64, outcome: TitanicOutcome },
}

impl Titanic {
    fn key(&self) -> u64 {
        match self {
            Titanic::Pending { key } | Titanic::Done { key, .. } => *key,
        }
    }
}

/// The services a durable broker answers itself (RFC 9).
const TITANIC_SERVICES: [&[u8]; 3] = [b"titanic.request", b"titanic.reply", b"titanic.close"];

pub(super) fn is_titanic(service: &ServiceName) -> bool {
    TITANIC_SERVICES.contains(&service.as_bytes().as_ref())
}

pub(super) fn status_frame(text: &str) -> Body {
    vec![Bytes::from(text.to_string())]
}

impl Broker {
    /// Answers a request to one of the three Titanic services; the body is the reply.
    pub(super) fn titanic(&mut self, now: Instant, client: &PeerId, m: &ClientMessage) -> Body {
        self.counters.titanic_requests += 1;
        let uuid = m.body.first().map(|u| Bytes::from(u.to_ascii_lowercase()));
        match (m.service.as_bytes().as_ref(), uuid) {
            (b"titanic.request", _) => self.titanic_request(now, client, &m.body),
            (b"titanic.reply", Some(uuid)) => {
                match self.journal.as_ref().and_then(|j| j.titanic.get(&uuid)) {
                    None => status_frame("400"),
                    Some(Titanic::Pending { .. }) => status_frame("300"),
                    Some(Titanic::Done {
                        outcome: TitanicOutcome::Reply(body),
                        ..
                    }) => {
                        let mut out = status_frame("200");
                        out.extend(body.iter().cloned());
                        out
                    }
                    Some(Titanic::Done {
                        outcome: TitanicOutcome::Failed(why),
                        ..
                    }) => status_frame(&format!("500 {}", String::from_utf8_lossy(why))),
                }
            }
            (b"titanic.close", Some(uuid)) => {
                let gone = self.journal.as_mut().and_then(|j| j.titanic.remove(&uuid));
                if let Some(entry) = gone {
                    // A pending one is no longer live: skipped in its queue, and a late
                    // reply from its worker is dropped.
                    self.journal_op(JournalOp::Delete { key: entry.key() });
                }
                status_frame("200")
            }
            _ => status_frame("400"),
        }
    }

    fn titanic_request(&mut self, now: Instant, client: &PeerId, body: &Body) -> Body {
        let Some(service) = body.first().and_then(|n| ServiceName::new(n.clone()).ok()) else {
            return status_frame("500 the first frame must name a service");
        };
        if service.is_mmi() || is_titanic(&service) {
            return status_frame("500 that service cannot be asked through Titanic");
        }
        let (stored, nonce) = match &self.journal {
            Some(j) => (j.titanic.len(), j.nonce),
            None => return status_frame("500 the broker is not durable"),
        };
        if stored >= self.config.max_titanic_requests {
            return status_frame("500 too many Titanic requests are stored");
        }
        let Some(key) = self.journal_key() else {
            return status_frame("500 the broker is not durable");
        };
        let uuid = Bytes::from(format!("{nonce:016x}{key:016x}"));
        let request_body: Body = body.iter().skip(1).cloned().collect();
        let origin = Origin::Titanic { uuid: uuid.clone() };
        let mut request = Request::new(client.clone(), origin, request_body.clone(), now);
        request.journal = Some(key);
        if let Err(refused) = self.enqueue(now, &service, request) {
            return status_frame(&format!("500 {}", refused.0.message()));
        }
        let entry = Entry::Request {
            client: client.clone(),
            origin: StoredOrigin::Titanic(uuid.clone()),
            service: service.clone(),
            body: request_body,
        };
        self.journal_op(JournalOp::Put {
            key,
            value: entry.encode(),
        });
        if let Some(j) = &mut self.journal {
            j.titanic.insert(uuid.clone(), Titanic::Pending { key });
        }
        self.dispatch(now, &service);
        vec![Bytes::from_static(b"200"), uuid]
    }

    /// Keeps the ending of a Titanic request for `titanic.reply`, on disk.
    pub(super) fn titanic_done(&mut self, uuid: &Bytes, outcome: Outcome) {
        let Some(Titanic::Pending { key }) =
            self.journal.as_ref().and_then(|j| j.titanic.get(uuid))
        else {
            return;
        };
        let key = *key;
        let outcome = match outcome {
            Outcome::Reply(body) => TitanicOutcome::Reply(body),
            Outcome::Fail(reason) => {
                TitanicOutcome::Failed(Bytes::from_static(reason.message().as_bytes()))
            }
        };
        let entry = Entry::TitanicDone {
            uuid: uuid.clone(),
            outcome: outcome.clone(),
        };
        self.journal_op(JournalOp::Put {
            key,
            value: entry.encode(),
        });
        if let Some(j) = &mut self.journal {
            j.titanic
                .insert(uuid.clone(), Titanic::Done { key, outcome });
        }
    }
}
