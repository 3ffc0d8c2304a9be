//! Events for an observer (`scale0 watch`), and their wire form on the broker's PUB
//! socket (docs/protocol.md, "Broker events"): four text frames,
//! `topic | service | worker | detail`.

use super::Broker;
use crate::mdp::{Frames, PeerId, ServiceName};
use bytes::Bytes;

/// Why a worker left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// Silent for liveness x interval.
    Expired,
    /// Held a request past its deadline.
    Overran,
    /// Said DISCONNECT.
    Disconnected,
    /// libzmq could not reach it.
    Unreachable,
    /// Said something out of turn and was told to DISCONNECT.
    Protocol,
}

impl Gone {
    /// Every reason, in the order the protocol lists them.
    pub const ALL: [Gone; 5] = [
        Self::Expired,
        Self::Overran,
        Self::Disconnected,
        Self::Unreachable,
        Self::Protocol,
    ];

    /// A lowercase word.
    pub fn label(self) -> &'static str {
        match self {
            Gone::Expired => "expired",
            Gone::Overran => "overran",
            Gone::Disconnected => "disconnected",
            Gone::Unreachable => "unreachable",
            Gone::Protocol => "protocol",
        }
    }
}

/// Something an operator may want to watch (`scale0 watch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A worker registered.
    WorkerReady {
        /// Its service.
        service: ServiceName,
        /// Its routing id.
        worker: PeerId,
    },
    /// A worker was removed.
    WorkerGone {
        /// Its service.
        service: ServiceName,
        /// Its routing id.
        worker: PeerId,
        /// Why.
        why: Gone,
    },
    /// A service got its first worker.
    ServiceUp {
        /// The service.
        service: ServiceName,
    },
    /// A service lost its last worker.
    ServiceDown {
        /// The service.
        service: ServiceName,
    },
    /// A request whose worker went away went back to its queue.
    Redelivered {
        /// Its service.
        service: ServiceName,
        /// Dispatches so far.
        attempts: u32,
    },
}

/// What every event's topic starts with: subscribe to it for all of them.
pub const EVENT_TOPIC_PREFIX: &str = "s0ev.";

/// Why frames are not a broker event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not exactly four frames.
    #[error("an event has four frames")]
    FrameCount,
    /// A topic that is not one of the documented ones.
    #[error("unknown event topic")]
    UnknownTopic,
    /// The service frame is not a service name.
    #[error("bad service name")]
    BadServiceName,
    /// The worker frame is not a routing id in hex, or is not empty where the event
    /// names no worker.
    #[error("bad worker frame")]
    BadWorker,
    /// The detail frame does not fit the topic.
    #[error("bad detail frame")]
    BadDetail,
}

impl Event {
    /// Its topic without [`EVENT_TOPIC_PREFIX`]: `worker.ready`, `worker.gone`,
    /// `service.up`, `service.down` or `request.redelivered`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::WorkerReady { .. } => "worker.ready",
            Event::WorkerGone { .. } => "worker.gone",
            Event::ServiceUp { .. } => "service.up",
            Event::ServiceDown { .. } => "service.down",
            Event::Redelivered { .. } => "request.redelivered",
        }
    }

    /// The service it is about.
    pub fn service(&self) -> &ServiceName {
        match self {
            Event::WorkerReady { service, .. }
            | Event::WorkerGone { service, .. }
            | Event::ServiceUp { service }
            | Event::ServiceDown { service }
            | Event::Redelivered { service, .. } => service,
        }
    }

    /// The worker it is about, if any.
    pub fn worker(&self) -> Option<&PeerId> {
        match self {
            Event::WorkerReady { worker, .. } | Event::WorkerGone { worker, .. } => Some(worker),
            _ => None,
        }
    }

    /// The detail frame's text: why a worker left, a redelivered request's dispatches so
    /// far; empty for the other kinds.
    pub fn detail(&self) -> String {
        match self {
            Event::WorkerGone { why, .. } => why.label().to_string(),
            Event::Redelivered { attempts, .. } => attempts.to_string(),
            _ => String::new(),
        }
    }

    /// `[topic, service, worker, detail]`, the worker as its routing id in hex.
    pub fn encode(&self) -> Frames {
        let topic = format!("{EVENT_TOPIC_PREFIX}{}", self.kind());
        let worker = self.worker().map(ToString::to_string).unwrap_or_default();
        vec![
            Bytes::from(topic),
            self.service().as_bytes().clone(),
            Bytes::from(worker),
            Bytes::from(self.detail()),
        ]
    }

    /// Reads an event published by a broker.
    pub fn decode(frames: &[Bytes]) -> Result<Self, EventError> {
        let [topic, service, worker, detail] = frames else {
            return Err(EventError::FrameCount);
        };
        let kind = topic
            .strip_prefix(EVENT_TOPIC_PREFIX.as_bytes())
            .ok_or(EventError::UnknownTopic)?;
        let service = ServiceName::new(service.clone()).map_err(|_| EventError::BadServiceName)?;
        let id = || from_hex(worker).ok_or(EventError::BadWorker);
        let event = match kind {
            b"worker.ready" => Event::WorkerReady {
                service,
                worker: id()?,
            },
            b"worker.gone" => Event::WorkerGone {
                service,
                worker: id()?,
                why: Gone::ALL
                    .into_iter()
                    .find(|g| g.label().as_bytes() == detail.as_ref())
                    .ok_or(EventError::BadDetail)?,
            },
            b"service.up" => Event::ServiceUp { service },
            b"service.down" => Event::ServiceDown { service },
            b"request.redelivered" => Event::Redelivered {
                service,
                attempts: decimal(detail).ok_or(EventError::BadDetail)?,
            },
            _ => return Err(EventError::UnknownTopic),
        };
        // A frame the kind does not use must be empty.
        if event.worker().is_none() && !worker.is_empty() {
            return Err(EventError::BadWorker);
        }
        if event.detail().is_empty() && !detail.is_empty() {
            return Err(EventError::BadDetail);
        }
        Ok(event)
    }
}

/// A routing id from its hex text (as `PeerId` displays).
fn from_hex(text: &[u8]) -> Option<PeerId> {
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let bytes = text
        .chunks(2)
        .map(|pair| match *pair {
            [hi, lo] => Some(digit(hi)? << 4 | digit(lo)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()?;
    PeerId::new(bytes).ok()
}

/// ASCII decimal digits, nothing else.
fn decimal(text: &[u8]) -> Option<u32> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Events kept for the driver at most; a driver that keeps up never gets near it.
const MAX_EVENTS: usize = 10_000;

impl Broker {
    /// The next event, when [`Config::events`] is on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(super) fn event(&mut self, make: impl FnOnce() -> Event) {
        if self.config.events {
            if self.events.len() >= MAX_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(make());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&str]) -> Frames {
        parts.iter().map(|p| Bytes::from(p.to_string())).collect()
    }

    fn every_kind() -> Vec<Event> {
        let service = ServiceName::new("echo").unwrap();
        let worker = PeerId::new(&b"\x00k\x8b"[..]).unwrap();
        let mut events = vec![
            Event::WorkerReady {
                service: service.clone(),
                worker: worker.clone(),
            },
            Event::ServiceUp {
                service: service.clone(),
            },
            Event::ServiceDown {
                service: service.clone(),
            },
            Event::Redelivered {
                service: service.clone(),
                attempts: 2,
            },
        ];
        events.extend(Gone::ALL.map(|why| Event::WorkerGone {
            service: service.clone(),
            worker: worker.clone(),
            why,
        }));
        events
    }

    #[test]
    fn events_are_four_text_frames_with_the_worker_in_hex() {
        let service = ServiceName::new("echo").unwrap();
        let worker = PeerId::new(&b"\x00k\x8b"[..]).unwrap();
        let gone = Event::WorkerGone {
            service: service.clone(),
            worker,
            why: Gone::Expired,
        };
        assert_eq!(
            gone.encode(),
            frames(&["s0ev.worker.gone", "echo", "006b8b", "expired"])
        );
        let up = Event::ServiceUp { service };
        assert_eq!(up.encode(), frames(&["s0ev.service.up", "echo", "", ""]));
    }

    #[test]
    fn every_kind_decodes_to_what_was_encoded() {
        for event in every_kind() {
            assert_eq!(Event::decode(&event.encode()), Ok(event));
        }
    }

    #[test]
    fn frames_that_do_not_fit_their_topic_are_errors() {
        let bad = |parts: &[&str]| Event::decode(&frames(parts)).unwrap_err();
        assert_eq!(
            bad(&["s0ev.service.up", "echo", ""]),
            EventError::FrameCount
        );
        assert_eq!(
            bad(&["s0ev.worker.born", "echo", "", ""]),
            EventError::UnknownTopic
        );
        assert_eq!(
            bad(&["worker.ready", "echo", "01", ""]),
            EventError::UnknownTopic
        );
        assert_eq!(
            bad(&["s0ev.service.up", "", "", ""]),
            EventError::BadServiceName
        );
        assert_eq!(
            bad(&["s0ev.worker.ready", "echo", "", ""]),
            EventError::BadWorker
        );
        assert_eq!(
            bad(&["s0ev.worker.ready", "echo", "0", ""]),
            EventError::BadWorker
        );
        assert_eq!(
            bad(&["s0ev.worker.ready", "echo", "+f", ""]),
            EventError::BadWorker
        );
        assert_eq!(
            bad(&["s0ev.service.up", "echo", "01", ""]),
            EventError::BadWorker
        );
        assert_eq!(
            bad(&["s0ev.worker.ready", "echo", "01", "x"]),
            EventError::BadDetail
        );
        assert_eq!(
            bad(&["s0ev.worker.gone", "echo", "01", "bored"]),
            EventError::BadDetail
        );
        let redelivered = |detail| bad(&["s0ev.request.redelivered", "echo", "", detail]);
        assert_eq!(redelivered("+2"), EventError::BadDetail);
        assert_eq!(redelivered(""), EventError::BadDetail);
        assert_eq!(redelivered("99999999999"), EventError::BadDetail);
    }
}
