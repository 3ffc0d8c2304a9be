//! The tokio side: accepting within the connection bound, hyper's HTTP/1.1 with the head
//! bound and timeouts, routing, and the event streams.

use super::{Shared, is_loopback_name, ms};
use crate::error::{Error, Result};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

type Body = BoxBody<Bytes, Infallible>;

/// What a connection over [`super::HttpConfig::max_connections`] gets before it is closed.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Events a new stream without a `Last-Event-ID` starts with: the page's tail.
const STREAM_TAIL: u64 = 100;

/// A comment on an otherwise quiet stream, so proxies keep it and a vanished reader is
/// noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Runs the server on a thread of its own with a single-threaded runtime: the dashboard
/// needs no more than one core's sliver, and the server's own threads keep the rest.
pub(super) fn spawn(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    stopped: oneshot::Receiver<()>,
) -> Result<JoinHandle<()>> {
    let io = |error| Error::Io {
        what: "setting up the HTTP endpoint",
        error,
    };
    listener.set_nonblocking(true).map_err(io)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(io)?;
    thread::Builder::new()
        .name("http".into())
        .spawn(move || runtime.block_on(accept(listener, shared, stopped)))
        .map_err(|error| Error::Spawn {
            what: "the HTTP thread",
            error,
        })
}

async fn accept(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "the HTTP endpoint could not start");
            return;
        }
    };
    let connections = Arc::new(Semaphore::new(shared.config.max_connections));
    let streams = Arc::new(Semaphore::new(shared.config.max_streams));
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                    // Never waits: a client that does not read loses the answer.
                    let _ = stream.try_write(BUSY);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (shared, streams) = (Arc::clone(&shared), Arc::clone(&streams));
                tokio::spawn(connection(stream, shared, streams, permit));
            }
            Err(e) => {
                // Out of descriptors, say: try again shortly rather than spin.
                debug!(error = %e, "accepting an HTTP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One connection, one request (no keep-alive): the head within `header_timeout_ms`, the
/// whole exchange within `response_timeout_ms`, an event stream within `stream_ms`.
async fn connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    streams: Arc<Semaphore>,
    _permit: OwnedSemaphorePermit,
) {
    let config = shared.config.clone();
    let streaming = Arc::new(AtomicBool::new(false));
    let service = {
        let streaming = Arc::clone(&streaming);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let answer = route(&req, &shared, &streams, &streaming);
            async move { Ok::<_, Infallible>(answer) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ms(config.header_timeout_ms))
        .max_buf_size(config.max_header_bytes)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let first = tokio::time::timeout(ms(config.response_timeout_ms), conn.as_mut()).await;
    if first.is_err() && streaming.load(Ordering::Relaxed) {
        let _ = tokio::time::timeout(ms(config.stream_ms), conn).await;
    }
}

fn full(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    full(status, "text/plain; charset=utf-8", body)
}

/// Whether the request carries the token: `Authorization: Bearer <token>` or
/// `?token=<token>` (what an EventSource can send).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = req.uri().query().into_iter().flat_map(|q| q.split('&'));
    let in_query = query.filter_map(|kv| kv.strip_prefix("token="));
    bearer
        .into_iter()
        .chain(in_query)
        .any(|given| same(given.as_bytes(), token.as_bytes()))
}

/// Equality whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn route(
    req: &Request<Incoming>,
    shared: &Arc<Shared>,
    streams: &Arc<Semaphore>,
    streaming: &AtomicBool,
) -> Response<Body> {
    // A page elsewhere that rebinds its own name to 127.0.0.1 would send its own name
    // here: without a token, only a request to this machine by name is answered.
    let host = req.headers().get(header::HOST).map(HeaderValue::to_str);
    if shared.check_host && host.is_some_and(|h| !h.is_ok_and(is_loopback_name)) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "without a token this endpoint answers only requests to localhost, 127.0.0.1 or [::1]\n",
        );
    }
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let path = req.uri().path();
    // The page and its script carry no data: only the data needs the token.
    let data = path == "/metrics" || path.starts_with("/api/");
    if data
        && let Some(token) = &shared.config.token
        && !authorized(req, token)
    {
        let mut r = text(StatusCode::UNAUTHORIZED, "a bearer token is needed\n");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    match path {
        "/" | "/index.html" => {
            let mut r = full(
                StatusCode::OK,
                "text/html; charset=utf-8",
                shared.page.html(),
            );
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                ),
            );
            // The token may be in the page's URL.
            h.insert(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            );
            r
        }
        "/dash.js" => full(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            include_str!("page/dash.js"),
        ),
        "/dash.css" => full(
            StatusCode::OK,
            "text/css; charset=utf-8",
            include_str!("page/dash.css"),
        ),
        "/favicon.ico" => text(StatusCode::NO_CONTENT, ""),
        "/metrics" => match shared.metrics.lock().ok().and_then(|m| m.clone()) {
            Some(body) => full(StatusCode::OK, crate::metrics::CONTENT_TYPE, body),
            None => text(StatusCode::NOT_FOUND, "no metrics here\n"),
        },
        "/api/status" => {
            let body = shared.status.lock().map(|s| s.clone()).unwrap_or_default();
            full(StatusCode::OK, "application/json", body)
        }
        "/api/events" => events(req, shared, streams, streaming),
        _ => text(
            StatusCode::NOT_FOUND,
            "served here: /, /metrics, /api/status, /api/events\n",
        ),
    }
}

/// Server-sent events: the ring's events after `Last-Event-ID` (or its last
/// [`STREAM_TAIL`]), then each new one, for `stream_ms`.
fn events(
    req: &Request<Incoming>,
    shared: &Arc<Shared>,
    streams: &Arc<Semaphore>,
    streaming: &AtomicBool,
) -> Response<Body> {
    let Ok(permit) = Arc::clone(streams).try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "as many event streams are open as may be\n",
        );
    };
    streaming.store(true, Ordering::Relaxed);
    let newest = *shared.newest.borrow();
    let after = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        // An id from before a restart: start over.
        .filter(|n| *n <= newest)
        .unwrap_or(newest.saturating_sub(STREAM_TAIL));
    // A few frames in hand: a reader that stops reading holds the feed, not memory.
    let (tx, rx) = mpsc::channel(8);
    let lifetime = ms(shared.config.stream_ms);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(lifetime, feed(&shared, after, &tx)).await;
    });
    let mut r = full(StatusCode::OK, "text/event-stream", Bytes::new());
    *r.body_mut() = BodyExt::boxed(EventBody { rx });
    r
}

async fn feed(shared: &Shared, mut last: u64, tx: &mpsc::Sender<Bytes>) {
    let mut newest = shared.newest.subscribe();
    // EventSource waits this long before it reconnects.
    if tx
        .send(Bytes::from_static(b"retry: 1000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let batch: Vec<(u64, Bytes)> = match shared.ring.lock() {
            Ok(ring) => ring
                .events
                .iter()
                .filter(|(seq, _)| *seq > last)
                .cloned()
                .collect(),
            Err(_) => return,
        };
        for (seq, json) in batch {
            let mut frame = Vec::with_capacity(json.len() + 32);
            frame.extend_from_slice(format!("id: {seq}\ndata: ").as_bytes());
            frame.extend_from_slice(&json);
            frame.extend_from_slice(b"\n\n");
            if tx.send(Bytes::from(frame)).await.is_err() {
                return;
            }
            last = seq;
        }
        tokio::select! {
            changed = newest.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(KEEP_ALIVE) => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A response body fed by a stream's task; it ends when the task does.
struct EventBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|frame| frame.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
