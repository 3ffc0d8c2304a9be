//! The HTTP side of a server: its dashboard page, `/api/status`, `/api/events` and
//! `/metrics` (docs/http.md). It runs hyper on a small tokio runtime on a thread of its
//! own and serves only what the server last published, so no HTTP client, however slow or
//! hostile, can make the server's own loop wait: the loop renders a snapshot a few times a
//! second and hands it over ([`HttpServer::publish_status`]), and pushes events into a
//! bounded ring ([`HttpServer::publish_event`]); neither call blocks beyond a short lock.

mod serve;

use crate::error::{Error, Result};
use bytes::Bytes;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::warn;

/// Where an HTTP endpoint listens, who may use it and how much it takes.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// `HOST:PORT` to listen on; a bare `PORT` means `127.0.0.1:PORT`, and port 0 picks a
    /// free one (read it back with [`HttpServer::addr`]).
    pub addr: String,
    /// When set, every request must carry `Authorization: Bearer <token>` (or, for the
    /// page and its event stream, which a browser cannot give headers, `?token=<token>`).
    pub token: Option<String>,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes; a larger one is
    /// answered 431. At least [`MIN_HEADER_BYTES`].
    pub max_header_bytes: usize,
    /// How long a client gets to send its whole request head, in milliseconds.
    pub header_timeout_ms: u64,
    /// How long a client gets for its whole exchange (request and answer), in
    /// milliseconds; the event stream is bounded by `stream_ms` instead.
    pub response_timeout_ms: u64,
    /// Event streams (`/api/events`) open at once; more are answered 503.
    pub max_streams: usize,
    /// How long one event stream lasts, in milliseconds. The browser's EventSource
    /// reconnects by itself with the last id it saw and misses nothing the ring still
    /// holds, so this bounds what a stream whose reader stopped reading can hold.
    pub stream_ms: u64,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("max_connections", &self.max_connections)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("header_timeout_ms", &self.header_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("max_streams", &self.max_streams)
            .field("stream_ms", &self.stream_ms)
            .finish()
    }
}

/// The smallest [`HttpConfig::max_header_bytes`] (hyper's smallest read buffer).
pub const MIN_HEADER_BYTES: usize = 8192;

impl HttpConfig {
    /// The defaults, listening on `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            token: None,
            max_connections: 1024,
            max_header_bytes: 16 * 1024,
            header_timeout_ms: 5_000,
            response_timeout_ms: 10_000,
            max_streams: 64,
            stream_ms: 300_000,
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |why: String| Err(Error::InvalidConfig(why));
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return bad(format!(
                "the HTTP header bound is at least {MIN_HEADER_BYTES} bytes, not {}",
                self.max_header_bytes
            ));
        }
        if self.max_connections == 0 || self.max_streams == 0 {
            return bad("the HTTP connection and stream bounds are at least 1".into());
        }
        if self.header_timeout_ms == 0 || self.response_timeout_ms == 0 || self.stream_ms == 0 {
            return bad("the HTTP timeouts are at least 1 ms".into());
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            return bad("an empty HTTP token would let everyone in".into());
        }
        Ok(())
    }
}

/// Which page `/` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// The broker's: traffic plots, services, workers, events.
    Broker,
    /// The queue device's: servers, in flight, re-sends, drops.
    Queue,
    /// The parallel map's: progress, rate, ETA, workers, failures.
    Map,
}

impl Page {
    fn html(self) -> &'static str {
        match self {
            Page::Broker => include_str!("page/broker.html"),
            Page::Queue => include_str!("page/queue.html"),
            Page::Map => include_str!("page/map.html"),
        }
    }
}

/// Events kept for streams that connect or fall behind.
const EVENT_RING: usize = 1000;

/// The last [`EVENT_RING`] events, numbered from 1.
#[derive(Debug, Default)]
struct Ring {
    next: u64,
    events: VecDeque<(u64, Bytes)>,
}

/// What the server's loop publishes and the HTTP thread reads.
#[derive(Debug)]
struct Shared {
    page: Page,
    config: HttpConfig,
    /// Whether the Host header must name this machine (see `serve::host_allowed`).
    check_host: bool,
    metrics: Mutex<Option<Bytes>>,
    status: Mutex<Bytes>,
    ring: Mutex<Ring>,
    /// The newest event's number, for streams waiting for more.
    newest: tokio::sync::watch::Sender<u64>,
}

/// An HTTP endpoint bound at [`HttpServer::bind`] (so its port can be read back) and
/// served on a thread of its own from [`HttpServer::start`] until dropped.
#[derive(Debug)]
pub struct HttpServer {
    listener: Option<std::net::TcpListener>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// `HOST:PORT`, or a bare port on loopback.
fn listen_addr(addr: &str) -> String {
    if !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{addr}")
    } else {
        addr.to_string()
    }
}

impl HttpServer {
    /// Checks `config` and binds its address; `page` is what `/` shows.
    pub fn bind(config: HttpConfig, page: Page) -> Result<Self> {
        config.check()?;
        let addr = listen_addr(&config.addr);
        let listener = std::net::TcpListener::bind(&addr)
            .map_err(|e| Error::InvalidConfig(format!("binding the HTTP endpoint {addr}: {e}")))?;
        let bound = listener.local_addr().map_err(|error| Error::Io {
            what: "reading the HTTP address",
            error,
        })?;
        let loopback = bound.ip().is_loopback();
        if !loopback && config.token.is_none() {
            warn!(%bound, "the HTTP endpoint listens beyond this machine with no token: anyone who can reach it sees the dashboard");
        }
        let (newest, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            page,
            check_host: loopback && config.token.is_none(),
            config,
            metrics: Mutex::new(None),
            status: Mutex::new(Bytes::from_static(b"{}")),
            ring: Mutex::new(Ring {
                next: 1,
                events: VecDeque::new(),
            }),
            newest,
        });
        Ok(Self {
            listener: Some(listener),
            addr: bound,
            shared,
            stop: None,
            thread: None,
        })
    }

    /// The address bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL, `http://HOST:PORT/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Starts serving on a thread of its own; a second call does nothing.
    pub fn start(&mut self) -> Result<()> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = serve::spawn(listener, Arc::clone(&self.shared), stopped)?;
        self.stop = Some(stop);
        self.thread = Some(thread);
        Ok(())
    }

    /// Replaces what `/metrics` serves (Prometheus text); until the first call it is 404.
    pub fn publish_metrics(&self, text: String) {
        if let Ok(mut m) = self.shared.metrics.lock() {
            *m = Some(Bytes::from(text));
        }
    }

    /// Replaces what `/api/status` serves (a JSON document).
    pub fn publish_status(&self, json: String) {
        if let Ok(mut s) = self.shared.status.lock() {
            *s = Bytes::from(json);
        }
    }

    /// Adds an event (a JSON object) for `/api/events`; the oldest goes past
    /// [`EVENT_RING`]. Never waits for a reader.
    pub fn publish_event(&self, json: String) {
        let Ok(mut ring) = self.shared.ring.lock() else {
            return;
        };
        let seq = ring.next;
        ring.next += 1;
        if ring.events.len() >= EVENT_RING {
            ring.events.pop_front();
        }
        ring.events.push_back((seq, Bytes::from(json)));
        drop(ring);
        self.shared.newest.send_replace(seq);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether `ip` is this machine's loopback (for the Host check).
fn is_loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:port
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `ms` as a [`Duration`].
fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_listens_on_loopback() {
        assert_eq!(listen_addr("9555"), "127.0.0.1:9555");
        assert_eq!(listen_addr("0.0.0.0:9555"), "0.0.0.0:9555");
        assert_eq!(listen_addr("[::1]:0"), "[::1]:0");
    }

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in [
            "localhost",
            "localhost:80",
            "127.0.0.1:9555",
            "127.1.2.3",
            "[::1]:9",
        ] {
            assert!(is_loopback_name(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9555",
            "10.0.0.1:80",
            "",
            "[::2]:1",
        ] {
            assert!(!is_loopback_name(bad), "{bad}");
        }
    }

    #[test]
    fn bounds_below_their_floor_are_refused() {
        let mut c = HttpConfig::new("127.0.0.1:0");
        c.max_header_bytes = 100;
        assert!(matches!(
            HttpServer::bind(c, Page::Broker),
            Err(Error::InvalidConfig(_))
        ));
        let mut c = HttpConfig::new("127.0.0.1:0");
        c.token = Some(String::new());
        assert!(HttpServer::bind(c, Page::Broker).is_err());
    }
}
