//! The broker's timer table: what each timer is for, arming it and acting on it.

use super::counters::FailReason;
use super::events::Gone;
use super::workers::Worker;
use super::{Broker, Outcome};
use crate::mdp::{PeerId, ServiceName};
use crate::time::Instant;
use crate::timers::Timers;
use tracing::{info, warn};

/// What a timer of the broker is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Timer {
    /// A worker's expiry or its requests' deadline.
    Worker(PeerId),
    /// The wait of the oldest request of a service with no worker.
    Waiting(ServiceName),
    /// The end of a drain's grace period.
    Drain,
}

impl Broker {
    /// Sets the timer of `service` to when its oldest request gives up for want of a
    /// worker, or clears it when that does not apply (it has workers, or nothing waits).
    pub(super) fn arm_waiting(&mut self, service: &ServiceName) {
        let wait = self.config.unknown_service_wait();
        let key = Timer::Waiting(service.clone());
        match self
            .services
            .get(service)
            .and_then(|s| s.no_worker_deadline(wait))
        {
            Some(at) => self.timers.set(key, at),
            None => self.timers.cancel(&key),
        }
    }

    /// A worker's timer fired: a silent one is expired, one that held a request past its
    /// deadline is disconnected; otherwise its timer is set to when it is next due.
    pub(super) fn check_worker(&mut self, now: Instant, peer: &PeerId) {
        let Some(w) = self.workers.get_mut(peer) else {
            return;
        };
        // The table no longer holds a time for it.
        w.timer_at = None;
        let silent = w.expiry <= now && (!w.is_busy() || w.heartbeats_while_busy);
        if silent {
            info!(worker = %peer, "worker expired after heartbeat silence");
            self.counters.workers_expired += 1;
            // Tell it, in case it is alive but slow: it will re-register.
            self.delete_worker(now, peer, true, Gone::Expired);
        } else if w.deadline().is_some_and(|d| d <= now) {
            warn!(worker = %peer, "worker held a request past its deadline, disconnecting it");
            self.counters.request_timeouts += 1;
            self.delete_worker(now, peer, true, Gone::Overran);
        } else {
            arm_worker(&mut self.timers, peer, w);
        }
    }

    /// Fails the requests of `service` that waited `unknown_service_wait_ms` with no
    /// worker to take them: the head of its expiring queue, for as long as it is due.
    pub(super) fn expire_waiting(&mut self, now: Instant, service: &ServiceName) {
        let wait = self.config.unknown_service_wait();
        let mut expired = Vec::new();
        if let Some(s) = self.services.get_mut(service) {
            while s.no_worker_deadline(wait).is_some_and(|at| at <= now) {
                let Some(request) = s.requests.expiring.pop_front() else {
                    break;
                };
                expired.push(request);
            }
        }
        self.work += expired.len() as u64;
        for request in expired {
            if self.is_live(&request) {
                self.finish(now, service, &request, Outcome::Fail(FailReason::NoWorker));
            }
        }
        self.arm_waiting(service);
        self.forget_if_unused(service);
    }
}

/// Makes sure `w`'s timer fires no later than it is due: a new table entry only when its
/// due time came earlier than the one set (a deadline moving later waits for the timer).
pub(super) fn arm_worker(timers: &mut Timers<Timer>, peer: &PeerId, w: &mut Worker) {
    let due = w.due();
    if w.timer_at.is_none_or(|at| due < at) {
        timers.set(Timer::Worker(peer.clone()), due);
        w.timer_at = Some(due);
    }
}
