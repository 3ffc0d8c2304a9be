//! An MDP/0.1 client over a DEALER: synchronous requests with timeout and retries
//! (the Guide's Lazy Pirate pattern), and a pipelined mode with many requests in flight.

use crate::error::{Error, Result, ZmqContext};
use crate::sockets;
use bytes::Bytes;
use scale0_proto::mdp::{ClientMessage, Message};
use scale0_proto::{Body, ServiceName};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tracing::debug;

/// Where a client connects and how patient it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The broker's endpoint, such as `tcp://localhost:5555`.
    pub connect: String,
    /// How long one attempt waits for its reply.
    pub timeout_ms: u64,
    /// How many times a synchronous request is re-sent after a timeout.
    pub retries: u32,
}

impl ClientConfig {
    /// Defaults for the broker at `connect`: 2500 ms per attempt, 2 retries.
    pub fn new(connect: impl Into<String>) -> Self {
        Self {
            connect: connect.into(),
            timeout_ms: 2500,
            retries: 2,
        }
    }
}

/// One reply of a pipelined run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The reply body.
    pub body: Body,
    /// Time since the oldest request still in flight was sent. Plain MDP/0.1 carries no
    /// request id, so with several workers this is an upper estimate of the latency.
    pub latency: Duration,
}

/// What a pipelined run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineSummary {
    /// Requests sent.
    pub sent: u64,
    /// Replies that were not error replies.
    pub ok: u64,
    /// Error replies from workers.
    pub errors: u64,
    /// Requests still unanswered when the run gave up waiting.
    pub timed_out: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Latency of every reply, sorted ascending.
    pub latencies: Vec<Duration>,
}

impl PipelineSummary {
    /// The `q` quantile (0.0 to 1.0) of the latencies, zero with no replies.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let last = self.latencies.len() - 1;
        // Nearest-rank on a sorted list; the cast is of a value within 0..=last.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * last as f64).round() as usize).min(last);
        self.latencies.get(rank).copied().unwrap_or_default()
    }

    /// Replies per second over the whole run.
    pub fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let done = (self.ok + self.errors) as f64;
        done / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A Majordomo client.
pub struct Client {
    config: ClientConfig,
    socket: zmq::Socket,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the broker (ZeroMQ connects in the background; an absent broker shows
    /// up as a timeout on the first request).
    pub fn connect(config: ClientConfig) -> Result<Self> {
        let socket = Self::open(&config.connect)?;
        Ok(Self { config, socket })
    }

    fn open(endpoint: &str) -> Result<zmq::Socket> {
        let socket = sockets::context()
            .socket(zmq::DEALER)
            .context(|| "creating the client socket".into())?;
        socket.set_linger(0).context(|| "setting LINGER".into())?;
        sockets::connect(&socket, endpoint)?;
        Ok(socket)
    }

    /// Sends one request and waits for its reply, re-sending on a fresh connection after
    /// each timeout, up to `retries` times.
    pub fn request(&mut self, service: &str, body: Body) -> Result<Body> {
        let name = service_name(service)?;
        let frames = Message::Client(ClientMessage {
            service: name.clone(),
            body,
        })
        .encode();
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let attempts = self.config.retries.saturating_add(1);
        for attempt in 1..=attempts {
            sockets::send(&self.socket, &frames).context(|| "sending a request".into())?;
            let deadline = Instant::now() + timeout;
            while let Some(frames) = self.recv_until(deadline)? {
                let reply = decode_reply(frames)?;
                if reply.service == name {
                    return into_result(service, reply.body);
                }
                debug!(service = %reply.service, "reply for another service, ignored");
            }
            debug!(attempt, service, "request timed out, reconnecting");
            // A fresh socket drops anything the old one still had queued, so a late
            // reply to the previous attempt cannot be mistaken for this one's.
            self.socket = Self::open(&self.config.connect)?;
        }
        Err(Error::Timeout {
            endpoint: self.config.connect.clone(),
            service: service.into(),
            attempts,
            timeout_ms: self.config.timeout_ms,
        })
    }

    /// Sends every request of `requests` with up to `in_flight` outstanding at once,
    /// calling `on_reply` for each reply in the order replies arrive. Gives up when no
    /// reply has come for `timeout_ms`; requests are not retried (plain MDP/0.1 has no
    /// request id to match a retry with).
    pub fn pipeline(
        &mut self,
        service: &str,
        requests: impl IntoIterator<Item = Body>,
        in_flight: usize,
        mut on_reply: impl FnMut(Result<Reply>),
    ) -> Result<PipelineSummary> {
        let name = service_name(service)?;
        let in_flight = in_flight.max(1);
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let mut requests = requests.into_iter();
        let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(in_flight);
        let mut summary = PipelineSummary::default();
        let start = Instant::now();
        let mut exhausted = false;
        loop {
            while !exhausted && sent_at.len() < in_flight {
                let Some(body) = requests.next() else {
                    exhausted = true;
                    break;
                };
                let frames = Message::Client(ClientMessage {
                    service: name.clone(),
                    body,
                })
                .encode();
                sockets::send(&self.socket, &frames).context(|| "sending a request".into())?;
                sent_at.push_back(Instant::now());
                summary.sent += 1;
            }
            if sent_at.is_empty() {
                break;
            }
            let Some(frames) = self.recv_until(Instant::now() + timeout)? else {
                summary.timed_out = sent_at.len() as u64;
                self.socket = Self::open(&self.config.connect)?;
                break;
            };
            let reply = decode_reply(frames)?;
            if reply.service != name {
                continue;
            }
            let latency = sent_at.pop_front().map(|t| t.elapsed()).unwrap_or_default();
            summary.latencies.push(latency);
            match into_result(service, reply.body) {
                Ok(body) => {
                    summary.ok += 1;
                    on_reply(Ok(Reply { body, latency }));
                }
                Err(e) => {
                    summary.errors += 1;
                    on_reply(Err(e));
                }
            }
        }
        summary.elapsed = start.elapsed();
        summary.latencies.sort_unstable();
        Ok(summary)
    }

    /// Waits for one message until `deadline`; `None` on timeout.
    fn recv_until(&self, deadline: Instant) -> Result<Option<scale0_proto::Frames>> {
        loop {
            if let Some(frames) = sockets::try_recv(&self.socket)? {
                return Ok(Some(frames));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = i64::try_from(left.as_millis().max(1)).unwrap_or(i64::MAX);
            self.socket
                .poll(zmq::POLLIN, ms)
                .context(|| "polling the client socket".into())?;
        }
    }
}

fn service_name(service: &str) -> Result<ServiceName> {
    ServiceName::new(Bytes::copy_from_slice(service.as_bytes()))
        .map_err(|_| Error::InvalidServiceName(service.into()))
}

fn decode_reply(frames: scale0_proto::Frames) -> Result<ClientMessage> {
    match Message::decode(frames)? {
        Message::Client(m) => Ok(m),
        Message::Worker(_) => Err(Error::BadReply(scale0_proto::DecodeError::UnknownHeader)),
    }
}

/// Turns a worker's error reply into an error.
fn into_result(service: &str, body: Body) -> Result<Body> {
    match body.as_slice() {
        [marker, message] if marker.as_ref() == crate::ERROR_REPLY_MARKER => Err(Error::Service {
            service: service.into(),
            message: String::from_utf8_lossy(message).into_owned(),
        }),
        _ => Ok(body),
    }
}
