//! The native client's session (`docs/protocol.md`, "The scale0 native client protocol"):
//! request ids, many requests in flight, retries with the same id, ACCEPTED, partial
//! replies and duplicate answers.
//!
//! The driver calls [`Session::request`], sends what [`Session::poll_transmit`] gives on
//! its DEALER, feeds every message it reads to [`Session::handle_message`], sleeps until
//! [`Session::poll_timeout`] and reads how each request ended from [`Session::poll_event`].
//! Each request carries a tag of the driver's own (an index, a send time), handed back
//! when the request ends, so the driver keeps no table of its own.

use crate::ServiceName;
use crate::mdp::{Body, DecodeError, Frames, Message, NativeCommand, RequestId, Status};
use crate::time::Instant;
use crate::timers::Timers;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// First frame of an error reply from a scale0 worker whose handler failed; the second
/// frame is a human-readable message (`docs/protocol.md`, worker rules).
pub const ERROR_REPLY_MARKER: &[u8] = b"scale0.error";

/// How patient a client is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long one attempt waits for its answer, in milliseconds, counted from the send
    /// or from the latest ACCEPTED or partial reply.
    pub timeout_ms: u64,
    /// How many times a request is re-sent (same id) after a timeout.
    pub retries: u32,
    /// Ask the broker to confirm each request once it holds it (ACCEPTED; a durable
    /// broker, once it is on disk). Off, the broker sends only the answer.
    pub acknowledged: bool,
}

impl Config {
    /// The default wait for one attempt.
    pub const DEFAULT_TIMEOUT_MS: u64 = 2500;
    /// The default number of re-sends.
    pub const DEFAULT_RETRIES: u32 = 2;

    /// Attempts in all: the first send and every retry.
    pub fn attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }

    /// The deadline sent with each request: when the client will have given up, so the
    /// broker stops trying then too.
    pub fn deadline_ms(&self) -> u64 {
        self.timeout_ms.saturating_mul(u64::from(self.attempts()))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            timeout_ms: Self::DEFAULT_TIMEOUT_MS,
            retries: Self::DEFAULT_RETRIES,
            acknowledged: false,
        }
    }
}

/// How a request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The worker's reply.
    Reply(Body),
    /// The worker's handler failed; its message (UTF-8 by convention).
    Failed(Bytes),
    /// The broker ended the request without a reply.
    Rejected {
        /// Why, for programs.
        status: Status,
        /// Why, for people.
        message: Bytes,
    },
    /// No answer after every attempt.
    Unanswered {
        /// Sends made, the first and every retry.
        attempts: u32,
    },
}

impl Outcome {
    fn of_final(body: Body) -> Self {
        match body.as_slice() {
            [marker, message] if marker.as_ref() == ERROR_REPLY_MARKER => {
                Self::Failed(message.clone())
            }
            _ => Self::Reply(body),
        }
    }
}

/// What the driver learns about its requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<T> {
    /// The broker holds the request.
    Accepted {
        /// Which request.
        id: RequestId,
    },
    /// A partial reply streamed before the final one.
    Partial {
        /// Which request.
        id: RequestId,
        /// The partial reply.
        body: Body,
    },
    /// A request timed out and is re-sent now, with the same id.
    Retrying {
        /// Which request.
        id: RequestId,
        /// The attempt about to be made, 2 for the first retry.
        attempt: u32,
    },
    /// A request ended; the session forgets it.
    Done {
        /// Which request.
        id: RequestId,
        /// The driver's tag given to [`Session::request`].
        tag: T,
        /// How it ended.
        outcome: Outcome,
    },
}

/// What a session has seen, for summaries and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests sent (not counting retries).
    pub sent: u64,
    /// Re-sends after a timeout.
    pub retries: u64,
    /// Final answers for requests no longer outstanding (a retry crossing an answer).
    pub duplicates: u64,
    /// Messages from the broker that are not valid native answers; dropped.
    pub malformed: u64,
}

struct Outstanding<T> {
    /// The encoded request, kept for retries.
    frames: Frames,
    sends: u32,
    tag: T,
}

/// One client's requests, from first send to their end.
pub struct Session<T> {
    config: Config,
    next_id: u64,
    outstanding: HashMap<RequestId, Outstanding<T>>,
    /// Each outstanding request's current attempt deadline.
    timers: Timers<RequestId>,
    transmits: VecDeque<Frames>,
    events: VecDeque<Event<T>>,
    counters: Counters,
}

impl<T> std::fmt::Debug for Session<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("config", &self.config)
            .field("outstanding", &self.outstanding.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<T> Session<T> {
    /// A session with no requests yet.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            next_id: 0,
            outstanding: HashMap::new(),
            timers: Timers::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// What it has seen so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Requests sent and not yet ended.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Sends a request to `service`; `tag` comes back with its end. Ids are never reused
    /// within a session, since the broker answers a known id from its memory.
    pub fn request(&mut self, now: Instant, service: ServiceName, body: Body, tag: T) -> RequestId {
        self.next_id += 1;
        let id = RequestId::from(self.next_id);
        let frames = Message::Native(NativeCommand::Request {
            id: id.clone(),
            service,
            deadline_ms: Some(self.config.deadline_ms()),
            ack: self.config.acknowledged,
            body,
        })
        .encode();
        self.transmits.push_back(frames.clone());
        self.timers.set(id.clone(), self.attempt_deadline(now));
        self.outstanding.insert(
            id.clone(),
            Outstanding {
                frames,
                sends: 1,
                tag,
            },
        );
        self.counters.sent += 1;
        id
    }

    /// Forgets a request without an event; a late answer to it counts as a duplicate.
    pub fn cancel(&mut self, id: &RequestId) -> Option<T> {
        self.timers.cancel(id);
        self.outstanding.remove(id).map(|o| o.tag)
    }

    /// Forgets every outstanding request (a driver giving up on a run).
    pub fn cancel_all(&mut self) {
        for id in self.outstanding.keys() {
            self.timers.cancel(id);
        }
        self.outstanding.clear();
        self.transmits.clear();
    }

    /// A message the driver read from the broker. Anything but a native answer is
    /// dropped and counted.
    pub fn handle_message(&mut self, now: Instant, frames: Frames) -> Result<(), DecodeError> {
        let cmd = match Message::decode(frames) {
            Ok(Message::Native(cmd)) => cmd,
            Ok(_) => {
                self.counters.malformed += 1;
                return Ok(());
            }
            Err(e) => {
                self.counters.malformed += 1;
                return Err(e);
            }
        };
        match cmd {
            NativeCommand::Accepted { id } => {
                if self.extend(now, &id) {
                    self.events.push_back(Event::Accepted { id });
                }
            }
            NativeCommand::Partial { id, body } => {
                if self.extend(now, &id) {
                    self.events.push_back(Event::Partial { id, body });
                }
            }
            NativeCommand::Final { id, body } => self.finish(id, Outcome::of_final(body)),
            NativeCommand::Error {
                id,
                status,
                message,
            } => self.finish(id, Outcome::Rejected { status, message }),
            NativeCommand::Request { .. } => self.counters.malformed += 1,
        }
        Ok(())
    }

    /// Re-sends every request whose attempt ran out, or ends it when it had every attempt.
    pub fn handle_timeout(&mut self, now: Instant) {
        let attempts = self.config.attempts();
        while let Some(id) = self.timers.pop_due(now) {
            let Some(o) = self.outstanding.get_mut(&id) else {
                continue;
            };
            if o.sends < attempts {
                o.sends += 1;
                self.transmits.push_back(o.frames.clone());
                self.counters.retries += 1;
                let attempt = o.sends;
                self.timers.set(id.clone(), self.attempt_deadline(now));
                self.events.push_back(Event::Retrying { id, attempt });
            } else if let Some(o) = self.outstanding.remove(&id) {
                self.events.push_back(Event::Done {
                    id,
                    tag: o.tag,
                    outcome: Outcome::Unanswered { attempts: o.sends },
                });
            }
        }
    }

    /// When [`Session::handle_timeout`] is next due; `None` with nothing outstanding.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The next message to send to the broker.
    pub fn poll_transmit(&mut self) -> Option<Frames> {
        self.transmits.pop_front()
    }

    /// The next thing that happened to a request.
    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    fn attempt_deadline(&self, now: Instant) -> Instant {
        now + Duration::from_millis(self.config.timeout_ms)
    }

    /// The broker holds or works on `id`: its attempt waits a full timeout from now.
    fn extend(&mut self, now: Instant, id: &RequestId) -> bool {
        if !self.outstanding.contains_key(id) {
            return false;
        }
        self.timers.set(id.clone(), self.attempt_deadline(now));
        true
    }

    fn finish(&mut self, id: RequestId, outcome: Outcome) {
        self.timers.cancel(&id);
        match self.outstanding.remove(&id) {
            Some(o) => self.events.push_back(Event::Done {
                id,
                tag: o.tag,
                outcome,
            }),
            None => self.counters.duplicates += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn svc() -> ServiceName {
        ServiceName::new(Bytes::from_static(b"echo")).unwrap()
    }

    fn answer(cmd: NativeCommand) -> Frames {
        Message::Native(cmd).encode()
    }

    fn sent(s: &mut Session<u32>) -> Vec<(RequestId, bool, Option<u64>)> {
        std::iter::from_fn(|| s.poll_transmit())
            .map(|f| match Message::decode(f).unwrap() {
                Message::Native(NativeCommand::Request {
                    id,
                    ack,
                    deadline_ms,
                    ..
                }) => (id, ack, deadline_ms),
                other => panic!("sent {other:?}"),
            })
            .collect()
    }

    fn events(s: &mut Session<u32>) -> Vec<Event<u32>> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn ids_are_fresh_and_the_deadline_covers_every_attempt() {
        let mut s = Session::new(Config {
            acknowledged: true,
            ..Config::default()
        });
        let a = s.request(at(0), svc(), vec![], 1);
        let b = s.request(at(0), svc(), vec![], 2);
        assert_ne!(a, b);
        assert_eq!(
            sent(&mut s),
            vec![(a, true, Some(7500)), (b, true, Some(7500))]
        );
    }

    #[test]
    fn a_request_is_resent_with_its_id_then_ends_unanswered() {
        let mut s = Session::new(Config::default());
        let id = s.request(at(0), svc(), vec![Bytes::from_static(b"x")], 7);
        sent(&mut s);
        s.handle_timeout(at(2499));
        assert!(sent(&mut s).is_empty(), "not before its timeout");
        assert_eq!(s.poll_timeout(), Some(at(2500)));
        s.handle_timeout(at(2500));
        assert_eq!(sent(&mut s)[0].0, id);
        s.handle_timeout(at(5000));
        s.handle_timeout(at(7500));
        assert_eq!(
            events(&mut s),
            vec![
                Event::Retrying {
                    id: id.clone(),
                    attempt: 2
                },
                Event::Retrying {
                    id: id.clone(),
                    attempt: 3
                },
                Event::Done {
                    id,
                    tag: 7,
                    outcome: Outcome::Unanswered { attempts: 3 }
                }
            ]
        );
        assert_eq!(s.outstanding(), 0);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.counters().retries, 2);
    }

    #[test]
    fn accepted_and_partials_restart_the_attempts_clock() {
        let mut s = Session::new(Config::default());
        let id = s.request(at(0), svc(), vec![], 0);
        s.handle_message(at(2000), answer(NativeCommand::Accepted { id: id.clone() }))
            .unwrap();
        assert_eq!(s.poll_timeout(), Some(at(4500)));
        let body = vec![Bytes::from_static(b"half")];
        s.handle_message(
            at(4000),
            answer(NativeCommand::Partial {
                id: id.clone(),
                body: body.clone(),
            }),
        )
        .unwrap();
        assert_eq!(s.poll_timeout(), Some(at(6500)));
        assert_eq!(
            events(&mut s),
            vec![
                Event::Accepted { id: id.clone() },
                Event::Partial { id, body }
            ]
        );
    }

    #[test]
    fn the_first_answer_ends_a_request_and_later_ones_are_duplicates() {
        let mut s = Session::new(Config::default());
        let id = s.request(at(0), svc(), vec![], 3);
        s.handle_timeout(at(2500));
        let body = vec![Bytes::from_static(b"ok")];
        for _ in 0..2 {
            s.handle_message(
                at(2600),
                answer(NativeCommand::Final {
                    id: id.clone(),
                    body: body.clone(),
                }),
            )
            .unwrap();
        }
        let done: Vec<_> = events(&mut s)
            .into_iter()
            .filter(|e| matches!(e, Event::Done { .. }))
            .collect();
        assert_eq!(
            done,
            vec![Event::Done {
                id,
                tag: 3,
                outcome: Outcome::Reply(body)
            }]
        );
        assert_eq!(s.counters().duplicates, 1);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn errors_and_handler_failures_are_told_apart_from_replies() {
        let mut s = Session::new(Config::default());
        let a = s.request(at(0), svc(), vec![], 1);
        let b = s.request(at(0), svc(), vec![], 2);
        s.handle_message(
            at(1),
            answer(NativeCommand::Error {
                id: a.clone(),
                status: Status::QueueFull,
                message: Bytes::from_static(b"full"),
            }),
        )
        .unwrap();
        s.handle_message(
            at(1),
            answer(NativeCommand::Final {
                id: b.clone(),
                body: vec![
                    Bytes::from_static(ERROR_REPLY_MARKER),
                    Bytes::from_static(b"boom"),
                ],
            }),
        )
        .unwrap();
        assert_eq!(
            events(&mut s),
            vec![
                Event::Done {
                    id: a,
                    tag: 1,
                    outcome: Outcome::Rejected {
                        status: Status::QueueFull,
                        message: Bytes::from_static(b"full")
                    }
                },
                Event::Done {
                    id: b,
                    tag: 2,
                    outcome: Outcome::Failed(Bytes::from_static(b"boom"))
                }
            ]
        );
    }

    #[test]
    fn garbage_from_the_broker_is_counted_not_fatal() {
        let mut s = Session::<u32>::new(Config::default());
        assert!(
            s.handle_message(at(0), vec![Bytes::from_static(b"junk")])
                .is_err()
        );
        s.handle_message(
            at(0),
            Message::Native(NativeCommand::Request {
                id: RequestId::from(1),
                service: svc(),
                deadline_ms: None,
                ack: false,
                body: vec![],
            })
            .encode(),
        )
        .unwrap();
        assert_eq!(s.counters().malformed, 2);
        assert!(s.poll_event().is_none());
    }

    #[test]
    fn a_cancelled_request_leaves_no_timer_and_its_answer_is_a_duplicate() {
        let mut s = Session::new(Config::default());
        let id = s.request(at(0), svc(), vec![], 9);
        assert_eq!(s.cancel(&id), Some(9));
        assert_eq!(s.poll_timeout(), None);
        s.handle_message(at(1), answer(NativeCommand::Final { id, body: vec![] }))
            .unwrap();
        assert_eq!(s.counters().duplicates, 1);
    }
}
