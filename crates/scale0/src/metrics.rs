//! The broker's Prometheus endpoint: a small HTTP/1.1 server on a thread of its own that
//! serves the latest snapshot of the broker's numbers, which the broker loop renders a
//! few times a second. Scrapes never touch the broker's state, so a slow or hostile
//! scraper cannot stall the broker.

use crate::error::{Error, Result};
use scale0_proto::broker::{self as core, DropReason, FailReason, LATENCY_BOUNDS_MS};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;
use tracing::debug;

/// Longest request head a scraper may send.
const MAX_REQUEST_BYTES: usize = 8192;
/// How long a scraper gets to send its whole request head, however slowly it comes.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How long a scraper gets to read the whole answer.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered 503 and closed.
const MAX_CONNECTIONS: usize = 1024;
/// Stack of a connection's thread: it only reads a head and writes a string.
const CONNECTION_STACK_BYTES: usize = 64 * 1024;

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
        let bound = listener.local_addr().map_err(|e| Error::Io {
            what: "reading the metrics address",
            error: e,
        })?;
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
            .map_err(|error| Error::Spawn {
                what: "the metrics thread",
                error,
            })?;
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

fn serve(listener: &TcpListener, snapshot: &Arc<Mutex<String>>, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                // Each connection on a thread of its own, so a slow one holds up no other;
                // past the bound, new ones are turned away at once.
                if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                    refuse(stream);
                    continue;
                }
                active.fetch_add(1, Ordering::SeqCst);
                let (snapshot, done) = (Arc::clone(snapshot), Arc::clone(&active));
                let spawned = thread::Builder::new()
                    .name("metrics-conn".into())
                    .stack_size(CONNECTION_STACK_BYTES)
                    .spawn(move || {
                        if let Err(e) = answer(stream, &snapshot) {
                            debug!(%peer, error = %e, "metrics scrape failed");
                        }
                        done.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    active.fetch_sub(1, Ordering::SeqCst);
                    debug!(error = %e, "no thread for a metrics connection");
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

/// Best effort, never waiting: a 503 to a connection over the bound.
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

/// Where a request head ends (after its blank line, CRLF or bare LF), if it has.
fn head_end(head: &[u8]) -> Option<usize> {
    let crlf = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = head.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    crlf.into_iter().chain(lf).min()
}

/// Reads one request head within [`REQUEST_DEADLINE`] (over the whole request, however
/// it trickles in) and answers it: the snapshot for `GET /metrics` (any query string),
/// 404, 405, 400 or 431 otherwise; the connection closes after.
fn answer(mut stream: TcpStream, snapshot: &Mutex<String>) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    stream.set_nonblocking(false)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head_end(&head).is_some() {
            break true;
        }
        if head.len() >= MAX_REQUEST_BYTES {
            break false;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break head_end(&head).is_some();
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    };
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|b| *b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    let well_formed = version.is_some_and(|v| v.starts_with(b"HTTP/1.")) && parts.next().is_none();
    let (status, body) = match (method, path) {
        _ if !complete && head.len() >= MAX_REQUEST_BYTES => (
            "431 Request Header Fields Too Large",
            format!("a request head is {MAX_REQUEST_BYTES} bytes at most\n"),
        ),
        _ if !complete || !well_formed => ("400 Bad Request", "GET /metrics\n".to_string()),
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            snapshot.lock().map(|s| s.clone()).unwrap_or_default(),
        ),
        (Some(b"GET"), _) => (
            "404 Not Found",
            "only /metrics is served here\n".to_string(),
        ),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let by = std::time::Instant::now() + RESPONSE_DEADLINE;
    write_by(&mut stream, response.as_bytes(), by)
}

/// Writes all of `bytes` by `deadline`, however slowly the peer reads (a timeout per
/// write would let a reader taking one byte at a time hold the connection for ever).
fn write_by(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    deadline: std::time::Instant,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        let n = stream.write(bytes)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = bytes.get(n..).unwrap_or_default();
    }
    Ok(())
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
        "scale0_abandoned_total",
        "counter",
        "MDP requests dropped unsent because their client had disconnected.",
        &one(c.abandoned),
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
