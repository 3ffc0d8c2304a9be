//! The broker's Prometheus endpoint: a small HTTP/1.1 server on a thread of its own that
//! serves the latest snapshot of the broker's numbers, which the broker loop renders a
//! few times a second. Scrapes never touch the broker's state, so a slow or hostile
//! scraper cannot stall the broker.

use crate::error::{Error, Result};
use scale0_proto::broker::{self as core, DropReason, FailReason, LATENCY_BOUNDS_MS};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;
use tracing::debug;

/// Longest request head a scraper may send.
const MAX_REQUEST_BYTES: usize = 8192;
/// How long a scraper gets to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The HTTP side: bound at `bind` time so the port can be read back, serving from `run`.
pub(crate) struct MetricsServer {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    snapshot: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` (`HOST:PORT`; port 0 picks one).
    pub(crate) fn bind(addr: &str) -> Result<Self> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            Error::InvalidConfig(format!("binding the metrics endpoint {addr}: {e}"))
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::InvalidConfig(format!("reading the metrics address: {e}")))?;
        Ok(Self {
            listener: Some(listener),
            addr: bound,
            snapshot: Arc::new(Mutex::new(String::new())),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        })
    }

    /// Where to scrape.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// Starts serving on a thread of its own.
    pub(crate) fn start(&mut self) -> Result<()> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::InvalidConfig(format!("setting up the metrics socket: {e}")))?;
        let snapshot = Arc::clone(&self.snapshot);
        let stop = Arc::clone(&self.stop);
        let thread = thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&listener, &snapshot, &stop))
            .map_err(|e| Error::InvalidConfig(format!("starting the metrics thread: {e}")))?;
        self.thread = Some(thread);
        Ok(())
    }

    /// Replaces what scrapes get.
    pub(crate) fn publish(&self, text: String) {
        if let Ok(mut s) = self.snapshot.lock() {
            *s = text;
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, snapshot: &Mutex<String>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = answer(stream, snapshot) {
                    debug!(%peer, error = %e, "metrics scrape failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                debug!(error = %e, "accepting a metrics scrape");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads one request head and answers it: the snapshot for `GET /metrics`, 404 or 405
/// otherwise; the connection closes after.
fn answer(mut stream: TcpStream, snapshot: &Mutex<String>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            snapshot.lock().map(|s| s.clone()).unwrap_or_default(),
        ),
        (b"GET", _) => (
            "404 Not Found",
            "only /metrics is served here\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// A label value as Prometheus text wants it.
fn label(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The broker's numbers in the Prometheus text format.
pub(crate) fn render(core: &core::Broker, uptime: Duration) -> String {
    let c = core.counters();
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        "scale0_requests_total",
        "counter",
        "Client requests accepted for a worker service.",
        &one(c.requests),
    );
    metric(
        "scale0_replies_total",
        "counter",
        "Final replies routed back to clients.",
        &one(c.replies),
    );
    metric(
        "scale0_partials_total",
        "counter",
        "Partial replies routed back to clients.",
        &one(c.partials),
    );
    metric(
        "scale0_dispatched_total",
        "counter",
        "Requests sent to workers; a redelivery counts again.",
        &one(c.dispatched),
    );
    metric(
        "scale0_redeliveries_total",
        "counter",
        "Requests put back on their queue because the worker holding them went away.",
        &one(c.requeued),
    );
    metric(
        "scale0_duplicates_total",
        "counter",
        "Native retries answered from memory instead of running again.",
        &one(c.duplicates),
    );
    metric(
        "scale0_mmi_requests_total",
        "counter",
        "Requests answered by the broker itself (mmi.*).",
        &one(c.mmi_requests),
    );
    let failures: Vec<(String, u64)> = FailReason::ALL
        .iter()
        .map(|r| (format!("{{reason=\"{}\"}}", r.label()), c.failed(*r)))
        .collect();
    metric(
        "scale0_request_failures_total",
        "counter",
        "Requests that ended without a worker's reply, by reason.",
        &failures,
    );
    let drops: Vec<(String, u64)> = DropReason::ALL
        .iter()
        .map(|r| (format!("{{reason=\"{}\"}}", r.label()), c.dropped(*r)))
        .collect();
    metric(
        "scale0_dropped_messages_total",
        "counter",
        "Messages dropped without acting on them, by reason.",
        &drops,
    );
    metric(
        "scale0_workers_registered_total",
        "counter",
        "Workers that sent READY.",
        &one(c.workers_registered),
    );
    metric(
        "scale0_workers_expired_total",
        "counter",
        "Workers removed after heartbeat silence.",
        &one(c.workers_expired),
    );
    metric(
        "scale0_request_timeouts_total",
        "counter",
        "Workers removed for holding a request past its deadline.",
        &one(c.request_timeouts),
    );

    let services = core.services();
    let queued: Vec<(String, u64)> = services
        .iter()
        .map(|s| {
            (
                format!("{{service=\"{}\"}}", label(s.name.as_bytes())),
                s.queued as u64,
            )
        })
        .collect();
    metric(
        "scale0_queue_depth",
        "gauge",
        "Requests waiting for a worker, per service.",
        &queued,
    );
    let workers: Vec<(String, u64)> = services
        .iter()
        .flat_map(|s| {
            let name = label(s.name.as_bytes());
            [
                (
                    format!("{{service=\"{name}\",state=\"idle\"}}"),
                    s.idle as u64,
                ),
                (
                    format!("{{service=\"{name}\",state=\"busy\"}}"),
                    (s.workers - s.idle.min(s.workers)) as u64,
                ),
            ]
        })
        .collect();
    metric(
        "scale0_workers",
        "gauge",
        "Registered workers per service, idle or busy.",
        &workers,
    );
    metric(
        "scale0_requests_outstanding",
        "gauge",
        "Accepted requests not answered yet.",
        &one(core.outstanding() as u64),
    );

    let _ = writeln!(
        out,
        "# HELP scale0_request_duration_seconds Time from acceptance to the final reply.\n\
         # TYPE scale0_request_duration_seconds histogram"
    );
    let cumulative = c.latency_cumulative();
    for (bound, n) in LATENCY_BOUNDS_MS.iter().zip(&cumulative) {
        let _ = writeln!(
            out,
            "scale0_request_duration_seconds_bucket{{le=\"{}\"}} {n}",
            *bound as f64 / 1000.0
        );
    }
    let count = cumulative.last().copied().unwrap_or(0);
    let _ = writeln!(
        out,
        "scale0_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "scale0_request_duration_seconds_sum {}",
        c.latency_sum_ms() as f64 / 1000.0
    );
    let _ = writeln!(out, "scale0_request_duration_seconds_count {count}");
    let _ = writeln!(
        out,
        "# HELP scale0_uptime_seconds Seconds since the broker started serving.\n\
         # TYPE scale0_uptime_seconds gauge\nscale0_uptime_seconds {}",
        uptime.as_secs()
    );
    out
}
