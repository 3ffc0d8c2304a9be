//! MMI (RFC 8) and the `mmi.status` document.

use super::titanic::is_titanic;
use super::workers::Worker;
use super::{Broker, FailReason, LATENCY_BOUNDS_MS};
use crate::mdp::{ClientMessage, PeerId, ServiceName};
use crate::time::Instant;
use bytes::Bytes;
use std::time::Duration;

impl Broker {
    /// The MMI answer for a request to an `mmi.*` service (RFC 8, and `mmi.status`).
    pub(super) fn mmi(&mut self, now: Instant, m: &ClientMessage) -> Bytes {
        self.counters.mmi_requests += 1;
        if m.service.as_bytes().as_ref() == b"mmi.status" {
            return Bytes::from(self.status_document(now));
        }
        if m.service.as_bytes().as_ref() == crate::bundle::SERVICE {
            // This broker reads bundles: a client asks before it sends any.
            return Bytes::from_static(b"200");
        }
        if m.service.as_bytes().as_ref() != b"mmi.service" {
            return Bytes::from_static(b"501");
        }
        let asked = m
            .body
            .first()
            .and_then(|name| ServiceName::new(name.clone()).ok());
        let known = asked.is_some_and(|name| {
            (self.journal.is_some() && is_titanic(&name))
                || self.services.get(&name).is_some_and(|s| s.workers > 0)
        });
        Bytes::from_static(if known { b"200" } else { b"404" })
    }

    /// The `mmi.status` document: services with their queues, workers and totals,
    /// failures by reason, the latency histogram, totals and uptime, as JSON
    /// (docs/protocol.md). The dashboard's `/api/status` serves the same document.
    pub fn status_document(&self, now: Instant) -> String {
        use std::fmt::Write as _;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let c = &self.counters;
        let mut out = String::with_capacity(512);
        let _ = write!(
            out,
            "{{\"version\":1,\"uptime_ms\":{},\"draining\":{},\"outstanding\":{},\
             \"totals\":{{\"requests\":{},\"replies\":{},\"partials\":{},\"dispatched\":{},\
             \"redeliveries\":{},\"duplicates\":{},\"failed\":{},\"dropped\":{},\
             \"workers_registered\":{},\"workers_expired\":{}}},",
            ms(now.saturating_since(self.started)),
            self.is_draining(),
            self.outstanding(),
            c.requests,
            c.replies,
            c.partials,
            c.dispatched,
            c.requeued,
            c.duplicates,
            c.failed_total(),
            c.dropped_total(),
            c.workers_registered,
            c.workers_expired,
        );
        out.push_str("\"failures\":{");
        for (i, r) in FailReason::ALL.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            let _ = write!(out, "{comma}\"{}\":{}", r.label(), c.failed(*r));
        }
        // Cumulative, as Prometheus has them: `counts[i]` replies took at most `le[i]`
        // ms, the last entry counting every reply.
        let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let _ = write!(
            out,
            "}},\"latency_ms\":{{\"le\":[{}],\"counts\":[{}]}},",
            list(&LATENCY_BOUNDS_MS),
            list(&c.latency_cumulative())
        );
        // A node of a cluster says which node it is and where it stands; a single broker
        // has no cluster.
        out.push_str("\"cluster\":");
        match &self.cluster {
            Some(status) => out.push_str(&status.to_json()),
            None => out.push_str("null"),
        }
        out.push_str(",\"services\":[");
        let expiry = self.config.worker_expiry();
        let mut names: Vec<&ServiceName> = self.services.keys().collect();
        names.sort();
        for (i, name) in names.into_iter().enumerate() {
            let Some(s) = self.services.get(name) else {
                continue;
            };
            let totals = self.service_totals.get(name).cloned().unwrap_or_default();
            let _ = write!(
                out,
                "{}{{\"name\":{},\"queued\":{},\"replies\":{},\"failed\":{},\"workers\":[",
                if i > 0 { "," } else { "" },
                json_string(name.as_bytes()),
                s.requests.len(),
                totals.replies,
                totals.failed
            );
            let mut workers: Vec<(&PeerId, &Worker)> = self
                .workers
                .iter()
                .filter(|(_, w)| w.service == *name)
                .collect();
            workers.sort_by_key(|(_, w)| w.since);
            for (j, (peer, w)) in workers.into_iter().enumerate() {
                let _ = write!(
                    out,
                    "{}{{\"id\":\"{peer}\",\"state\":\"{}\",\"since_ms\":{},\"held\":{},\"capacity\":{},\"heard_ms\":{}}}",
                    if j > 0 { "," } else { "" },
                    if w.is_busy() { "busy" } else { "idle" },
                    ms(now.saturating_since(w.since)),
                    w.held.len(),
                    w.capacity,
                    // Its expiry is set a fixed time after anything it says.
                    ms(expiry.saturating_sub(w.expiry.saturating_since(now)))
                );
            }
            out.push_str("]}");
        }
        out.push_str("]}");
        out
    }
}

/// `bytes` as a JSON string (lossy UTF-8, escaped).
fn json_string(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
