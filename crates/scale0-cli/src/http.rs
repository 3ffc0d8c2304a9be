//! The HTTP flags every server shares: `--http` and its bounds.

use anyhow::{Context, Result};
use scale0::http::{HttpConfig, MIN_HEADER_BYTES};
use std::path::PathBuf;

/// The defaults the flags show: stated once, in the library.
fn defaults() -> HttpConfig {
    HttpConfig::new("")
}

/// Flags of a server's HTTP endpoint (docs/http.md).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct HttpArgs {
    /// Serve the dashboard at HOST:PORT/ with /api/status, /api/events (server-sent
    /// events) and Prometheus /metrics; a bare PORT listens on 127.0.0.1, port 0 picks a
    /// free one (printed as a `listening http://...` line). `--metrics` is the old name.
    #[arg(long, visible_alias = "metrics", value_name = "HOST:PORT")]
    http: Option<String>,
    /// HTTP: a file holding a token that /metrics and /api/* then require, as
    /// `Authorization: Bearer TOKEN` or `?token=TOKEN` (open the page as /?token=TOKEN).
    #[arg(long, value_name = "FILE", requires = "http")]
    http_token_file: Option<PathBuf>,
    /// HTTP: connections served at once; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = defaults().max_connections as u64, value_parser = clap::value_parser!(u64).range(1..))]
    http_max_connections: u64,
    /// HTTP: largest request head (request line and headers), in bytes; larger is 431.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().max_header_bytes as u64, value_parser = clap::value_parser!(u64).range(MIN_HEADER_BYTES as u64..))]
    http_max_header_bytes: u64,
    /// HTTP: how long a client may take to send its request head, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = defaults().header_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    http_header_timeout_ms: u64,
    /// HTTP: how long one request and its answer may take in all, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = defaults().response_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    http_response_timeout_ms: u64,
    /// HTTP: event streams (/api/events) open at once; more are answered 503.
    #[arg(long, value_name = "N", default_value_t = defaults().max_streams as u64, value_parser = clap::value_parser!(u64).range(1..))]
    http_max_streams: u64,
    /// HTTP: how long one event stream lasts, in milliseconds (a browser reconnects at
    /// once and misses nothing).
    #[arg(long, value_name = "MS", default_value_t = defaults().stream_ms, value_parser = clap::value_parser!(u64).range(1..))]
    http_stream_ms: u64,
}

impl HttpArgs {
    /// The endpoint's config, if `--http` was given.
    pub(crate) fn config(&self) -> Result<Option<HttpConfig>> {
        let Some(addr) = &self.http else {
            return Ok(None);
        };
        let token = match &self.http_token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the HTTP token from {}", path.display()))?;
                Some(text.trim().to_string())
            }
        };
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Some(HttpConfig {
            addr: addr.clone(),
            token,
            max_connections: size(self.http_max_connections),
            max_header_bytes: size(self.http_max_header_bytes),
            header_timeout_ms: self.http_header_timeout_ms,
            response_timeout_ms: self.http_response_timeout_ms,
            max_streams: size(self.http_max_streams),
            stream_ms: self.http_stream_ms,
        }))
    }
}

/// Failures the map's page lists, newest first; older ones are only counted.
const MAP_FAILURES_SHOWN: usize = 50;

/// What `scale0 map` shows on its page beyond its progress: each worker's finished jobs
/// and the latest failures, gathered from the finished jobs as they come.
#[derive(Debug, Default)]
pub(crate) struct MapBoard {
    /// Per worker name: jobs done and failed on it.
    workers: std::collections::BTreeMap<String, (u64, u64)>,
    failures: std::collections::VecDeque<serde_json::Value>,
}

impl MapBoard {
    /// Counts a finished job.
    pub(crate) fn finished(&mut self, f: &scale0::proto::pipeline::Finished) {
        use scale0::proto::pipeline::Outcome;
        let worker = f
            .worker
            .as_deref()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .unwrap_or_default();
        let counts = self.workers.entry(worker.clone()).or_default();
        match &f.outcome {
            Outcome::Done(_) => counts.0 += 1,
            Outcome::Failed(why) => {
                counts.1 += 1;
                if self.failures.len() >= MAP_FAILURES_SHOWN {
                    self.failures.pop_back();
                }
                self.failures.push_front(serde_json::json!({
                    "index": f.index, "attempts": f.attempts, "worker": worker, "error": why,
                }));
            }
        }
    }

    /// The map's `/api/status` document (docs/http.md).
    pub(crate) fn status(&self, p: &scale0::MapProgress) -> String {
        let c = &p.counters;
        let workers: Vec<serde_json::Value> = self
            .workers
            .iter()
            .map(|(name, (done, failed))| {
                serde_json::json!({"name": name, "done": done, "failed": failed})
            })
            .collect();
        serde_json::json!({
            "version": 1,
            "kind": "map",
            "elapsed_ms": u64::try_from(p.elapsed.as_millis()).unwrap_or(u64::MAX),
            "input_done": p.input_done,
            "totals": {
                "jobs": c.jobs, "done": c.done, "failed": c.failed, "retried": c.retried,
                "sent": c.sent, "late_results": c.late_results, "malformed": c.malformed,
                "workers_lost": c.workers_lost,
            },
            "workers": p.workers,
            "capacity": p.capacity,
            "in_flight": p.in_flight,
            "per_worker": workers,
            "failures": self.failures,
            "cluster": null,
        })
        .to_string()
    }
}
