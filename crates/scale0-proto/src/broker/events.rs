//! Events for an observer (`scale0 watch`).

use super::Broker;
use crate::mdp::{PeerId, ServiceName};

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
