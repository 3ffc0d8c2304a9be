//! MMI (RFC 8) and the `mmi.status` document.

use super::Broker;
use super::titanic::is_titanic;
use super::workers::Worker;
use crate::mdp::{ClientMessage, PeerId, ServiceName};
use crate::time::Instant;
use bytes::Bytes;
use std::time::Duration;

impl Broker {
    /// The MMI answer for a request to an `mmi.*` service (RFC 8, and `mmi.status`).
    pub(super) fn mmi(&mut self, now: Instant, m: &ClientMessage) -> Bytes {
        self.counters.mmi_requests += 1;
        if m.service.as_bytes().as_ref() == b"mmi.status" {
            return Bytes::from(self.status_json(now));
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

    /// The `mmi.status` document: services with their queues and workers, totals and
    /// uptime, as JSON (docs/protocol.md).
    fn status_json(&self, now: Instant) -> String {
        use std::fmt::Write as _;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let c = &self.counters;
        let mut out = String::with_capacity(512);
        let _ = write!(
            out,
            "{{\"version\":1,\"uptime_ms\":{},\"draining\":{},\"outstanding\":{},\
             \"totals\":{{\"requests\":{},\"replies\":{},\"partials\":{},\"dispatched\":{},\
             \"redeliveries\":{},\"duplicates\":{},\"failed\":{},\"dropped\":{},\
             \"workers_registered\":{},\"workers_expired\":{}}},\"services\":[",
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
        let mut names: Vec<&ServiceName> = self.services.keys().collect();
        names.sort();
        for (i, name) in names.into_iter().enumerate() {
            let Some(s) = self.services.get(name) else {
                continue;
            };
            let _ = write!(
                out,
                "{}{{\"name\":{},\"queued\":{},\"workers\":[",
                if i > 0 { "," } else { "" },
                json_string(name.as_bytes()),
                s.requests.len()
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
                    "{}{{\"id\":\"{peer}\",\"state\":\"{}\",\"since_ms\":{},\"held\":{},\"capacity\":{}}}",
                    if j > 0 { "," } else { "" },
                    if w.is_busy() { "busy" } else { "idle" },
                    ms(now.saturating_since(w.since)),
                    w.held.len(),
                    w.capacity
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
