//! The broker's numbers in the OpenMetrics text format (prometheus-client's encoder), for
//! `/metrics`. The broker's loop renders them a few times a second from its own state;
//! the HTTP thread serves the latest rendering, so scrapes never touch the broker.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use scale0_proto::broker::{self as core, DropReason, FailReason, LATENCY_BOUNDS_MS};
use std::time::Duration;

/// The media type of what [`render`] writes.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The numbers of one rendering, copied out of the broker's state.
#[derive(Debug)]
struct Snapshot {
    /// Name (the encoder adds `_total`), help and value.
    counters: Vec<(&'static str, &'static str, u64)>,
    failures: Vec<(&'static str, u64)>,
    drops: Vec<(&'static str, u64)>,
    /// Name, queued, idle, busy.
    services: Vec<(String, usize, usize, usize)>,
    outstanding: usize,
    /// Non-cumulative counts per upper bound in seconds, the last `+Inf`.
    latency: Vec<(f64, u64)>,
    latency_sum_s: f64,
    uptime_s: u64,
    cluster: Option<scale0_proto::cluster::Status>,
}

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        for (name, help, v) in &self.counters {
            ConstCounter::new(*v).encode(e.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        let by_reason = |e: &mut DescriptorEncoder<'_>, name, help, values: &[(&str, u64)]| {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (reason, v) in values {
                ConstCounter::new(*v).encode(m.encode_family(&[("reason", *reason)])?)?;
            }
            Ok::<_, std::fmt::Error>(())
        };
        by_reason(
            &mut e,
            "request_failures",
            "Requests that ended without a worker's reply, by reason.",
            &self.failures,
        )?;
        by_reason(
            &mut e,
            "dropped_messages",
            "Messages dropped without acting on them, by reason.",
            &self.drops,
        )?;
        let mut m = e.encode_descriptor(
            "queue_depth",
            "Requests waiting for a worker, per service.",
            None,
            MetricType::Gauge,
        )?;
        for (name, queued, _, _) in &self.services {
            ConstGauge::new(*queued).encode(m.encode_family(&[("service", name.as_str())])?)?;
        }
        let mut m = e.encode_descriptor(
            "workers",
            "Registered workers per service, idle or busy.",
            None,
            MetricType::Gauge,
        )?;
        for (name, _, idle, busy) in &self.services {
            for (state, n) in [("idle", idle), ("busy", busy)] {
                let labels = [("service", name.as_str()), ("state", state)];
                ConstGauge::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
        ConstGauge::new(self.outstanding).encode(e.encode_descriptor(
            "requests_outstanding",
            "Accepted requests not answered yet.",
            None,
            MetricType::Gauge,
        )?)?;
        let count = self.latency.iter().map(|(_, n)| n).sum();
        e.encode_descriptor(
            "request_duration_seconds",
            "Time from acceptance to the final reply.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(self.latency_sum_s, count, &self.latency, None)?;
        if let Some(c) = &self.cluster {
            let gauges: [(&str, &str, u64); 5] = [
                (
                    "cluster_serving",
                    "1 while this node leads and serves, else 0.",
                    u64::from(c.serving),
                ),
                ("cluster_term", "The node's current raft term.", c.term),
                (
                    "cluster_commit_index",
                    "The highest raft index known committed.",
                    c.commit,
                ),
                (
                    "cluster_applied_index",
                    "The highest raft index applied here.",
                    c.applied,
                ),
                (
                    "cluster_journal_entries",
                    "Live entries of the replicated journal, as applied here.",
                    c.journal as u64,
                ),
            ];
            for (name, help, v) in gauges {
                ConstGauge::new(v).encode(e.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Gauge,
                )?)?;
            }
            let mut m = e.encode_descriptor(
                "cluster_lag_entries",
                "On the leader: entries each other node has yet to store.",
                None,
                MetricType::Gauge,
            )?;
            for (node, lag) in &c.lag {
                let node = node.to_string();
                ConstGauge::new(*lag).encode(m.encode_family(&[("node", node.as_str())])?)?;
            }
        }
        ConstGauge::new(self.uptime_s).encode(e.encode_descriptor(
            "uptime_seconds",
            "Seconds since the broker started serving.",
            None,
            MetricType::Gauge,
        )?)
    }
}

/// The broker's numbers in the OpenMetrics text format.
pub(crate) fn render(core: &core::Broker, uptime: Duration) -> String {
    let c = core.counters();
    let counters = vec![
        (
            "requests",
            "Client requests accepted for a worker service.",
            c.requests,
        ),
        (
            "replies",
            "Final replies routed back to clients.",
            c.replies,
        ),
        (
            "partials",
            "Partial replies routed back to clients.",
            c.partials,
        ),
        (
            "dispatched",
            "Requests sent to workers; a redelivery counts again.",
            c.dispatched,
        ),
        (
            "redeliveries",
            "Requests put back on their queue because the worker holding them went away.",
            c.requeued,
        ),
        (
            "abandoned",
            "MDP requests dropped unsent because their client had disconnected.",
            c.abandoned,
        ),
        (
            "duplicates",
            "Native retries answered from memory instead of running again.",
            c.duplicates,
        ),
        (
            "bundles_received",
            "Bundles (many messages as one) read from peers.",
            c.bundles_received,
        ),
        (
            "bundles_sent",
            "Bundles (many messages as one) sent to peers.",
            c.bundles_sent,
        ),
        (
            "mmi_requests",
            "Requests answered by the broker itself (mmi.*).",
            c.mmi_requests,
        ),
        (
            "workers_registered",
            "Workers that sent READY.",
            c.workers_registered,
        ),
        (
            "workers_expired",
            "Workers removed after heartbeat silence.",
            c.workers_expired,
        ),
        (
            "request_timeouts",
            "Workers removed for holding a request past its deadline.",
            c.request_timeouts,
        ),
    ];
    // Buckets as the encoder wants them: each bucket's own count; it accumulates.
    let mut previous = 0;
    let latency = c
        .latency_cumulative()
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let bound = LATENCY_BOUNDS_MS
                .get(i)
                .map_or(f64::INFINITY, |ms| *ms as f64 / 1000.0);
            let own = n - previous;
            previous = n;
            (bound, own)
        })
        .collect();
    let snapshot = Snapshot {
        counters,
        failures: FailReason::ALL
            .iter()
            .map(|r| (r.label(), c.failed(*r)))
            .collect(),
        drops: DropReason::ALL
            .iter()
            .map(|r| (r.label(), c.dropped(*r)))
            .collect(),
        services: core
            .services()
            .iter()
            .map(|s| {
                let name = String::from_utf8_lossy(s.name.as_bytes()).into_owned();
                (name, s.queued, s.idle, s.workers - s.idle.min(s.workers))
            })
            .collect(),
        outstanding: core.outstanding(),
        latency,
        latency_sum_s: c.latency_sum_ms() as f64 / 1000.0,
        uptime_s: uptime.as_secs(),
        cluster: core.cluster_status().cloned(),
    };
    let mut registry = Registry::with_prefix("scale0");
    registry.register_collector(Box::new(snapshot));
    let mut out = String::with_capacity(4096);
    // Writing to a String cannot fail; an encoder error would only truncate the text.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::render;
    use scale0_proto::Instant;
    use scale0_proto::broker::{Broker, Config};
    use std::time::Duration;

    #[test]
    fn a_fresh_broker_renders_every_family_in_openmetrics_text() {
        let core = Broker::new(Config::default(), Instant::ZERO);
        let text = render(&core, Duration::from_secs(3));
        for line in [
            "# TYPE scale0_requests counter",
            "scale0_requests_total 0",
            "scale0_request_failures_total{reason=\"queue_full\"} 0",
            "scale0_request_duration_seconds_bucket{le=\"0.001\"} 0",
            "scale0_request_duration_seconds_bucket{le=\"+Inf\"} 0",
            "scale0_request_duration_seconds_count 0",
            "scale0_requests_outstanding 0",
            "scale0_uptime_seconds 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            !text.contains("cluster"),
            "a single broker has no cluster: {text}"
        );
    }

    #[test]
    fn a_cluster_node_renders_its_role_term_indexes_and_lag() {
        use scale0_proto::cluster::{Role, Status};
        let mut core = Broker::new(Config::default(), Instant::ZERO);
        core.set_cluster_status(Status {
            node: 1,
            role: Role::Leader,
            term: 7,
            leader: Some(1),
            serving: true,
            joining: false,
            commit: 120,
            applied: 119,
            journal: 4,
            lag: vec![(2, 0), (3, 15)],
        });
        let text = render(&core, Duration::from_secs(3));
        for line in [
            "scale0_cluster_serving 1",
            "scale0_cluster_term 7",
            "scale0_cluster_commit_index 120",
            "scale0_cluster_applied_index 119",
            "scale0_cluster_journal_entries 4",
            "scale0_cluster_lag_entries{node=\"3\"} 15",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
