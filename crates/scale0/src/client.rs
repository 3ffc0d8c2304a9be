//! A Majordomo client speaking the scale0 native protocol (`docs/protocol.md`): request
//! ids, so many requests fly on one DEALER and replies come back in any order; explicit
//! error statuses; retries with the same id, which the broker never executes twice.

use crate::error::{Error, Result, ZmqContext};
use crate::latency::Latencies;
use crate::security::{self, CurveClient, HandshakeWatch};
use crate::sockets;
use bytes::Bytes;
use scale0_proto::mdp::{Message, NativeCommand, RequestId};
use scale0_proto::{Body, ServiceName};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::debug;

/// Where a client connects and how patient it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The broker's endpoint, such as `tcp://localhost:5555`.
    pub connect: String,
    /// How long one attempt waits for its reply.
    pub timeout_ms: u64,
    /// How many times a request is re-sent (same id) after a timeout.
    pub retries: u32,
    /// Largest frame read from a peer, in bytes: a peer that sends a larger one is
    /// disconnected before it is stored (libzmq's ZMQ_MAXMSGSIZE). For a client that is
    /// the broker, so keep it at least the broker's own bound: a larger reply would cut the
    /// connection on every try and look like a timeout.
    pub max_message_bytes: usize,
    /// CURVE: the broker's public key and this client's pair.
    pub curve: Option<CurveClient>,
    /// Ask the broker to confirm each request as soon as it is queued (ACCEPTED; with a
    /// durable broker, once it is on disk), and wait `timeout_ms` from that confirmation
    /// rather than from the send. Off, the broker sends only the answer: one message
    /// fewer each way, which is a third of the client's wake-ups.
    pub acknowledged: bool,
}

impl ClientConfig {
    /// Defaults for the broker at `connect`: 2500 ms per attempt, 2 retries.
    pub fn new(connect: impl Into<String>) -> Self {
        Self {
            connect: connect.into(),
            timeout_ms: 2500,
            retries: 2,
            max_message_bytes: scale0_proto::DEFAULT_MAX_MESSAGE_BYTES,
            curve: None,
            acknowledged: false,
        }
    }

    fn attempts(&self) -> u32 {
        self.retries.saturating_add(1)
    }
}

/// One reply of a pipelined run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The reply body.
    pub body: Body,
    /// From the first send of the request to its reply.
    pub latency: Duration,
}

/// What a pipelined run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineSummary {
    /// Requests sent (not counting retries).
    pub sent: u64,
    /// Replies that were not error replies.
    pub ok: u64,
    /// Error replies from workers' handlers.
    pub errors: u64,
    /// Requests the broker answered with an error status.
    pub rejected: u64,
    /// Requests with no answer after every retry.
    pub timed_out: u64,
    /// Re-sends after a timeout.
    pub retries: u64,
    /// Answers for requests already finished (retries crossing an answer); ignored.
    pub duplicates: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Latency of every answered request.
    pub latencies: Latencies,
}

impl PipelineSummary {
    /// The `q` quantile (0.0 to 1.0) of the latencies, zero with no replies.
    pub fn quantile(&self, q: f64) -> Duration {
        self.latencies.quantile(q)
    }

    /// Answers per second over the whole run.
    pub fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let done = (self.ok + self.errors + self.rejected) as f64;
        done / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A Majordomo client.
pub struct Client {
    config: ClientConfig,
    socket: zmq::Socket,
    /// Our own routing id, kept across reconnects so the broker can match retries.
    identity: Vec<u8>,
    next_id: u64,
    /// Why the broker refused our handshake, if it did.
    handshakes: Option<HandshakeWatch>,
    /// Calls to `recv_until`, which reads `handshakes` every so often.
    waits: u64,
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.handshakes.is_some() {
            sockets::stop_monitor(&self.socket);
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one answer from the broker means for a request.
enum Answer {
    Accepted,
    Partial(Body),
    Done(Result<Body>),
}

impl Client {
    /// Connects to the broker (ZeroMQ connects in the background; an absent broker shows
    /// up as a timeout on the first request).
    pub fn connect(config: ClientConfig) -> Result<Self> {
        let identity = crate::ids::routing_id();
        let (socket, handshakes) = Self::open(&config, &identity)?;
        Ok(Self {
            config,
            socket,
            identity,
            next_id: 0,
            handshakes,
            waits: 0,
        })
    }

    /// A fresh socket with the same identity, in place of the current one.
    fn reopen(&mut self) -> Result<()> {
        if self.handshakes.is_some() {
            sockets::stop_monitor(&self.socket);
        }
        let (socket, handshakes) = Self::open(&self.config, &self.identity)?;
        self.socket = socket;
        self.handshakes = handshakes;
        Ok(())
    }

    /// The error for a request unanswered after every attempt: a refused handshake if
    /// that is why, else a timeout.
    fn unanswered(&mut self, service: &str) -> Error {
        if let Some(why) = self.handshakes.as_mut().and_then(HandshakeWatch::refusal) {
            return Error::Refused {
                endpoint: self.config.connect.clone(),
                why,
            };
        }
        Error::Timeout {
            endpoint: self.config.connect.clone(),
            service: service.into(),
            attempts: self.config.attempts(),
            timeout_ms: self.config.timeout_ms,
        }
    }

    fn open(
        config: &ClientConfig,
        identity: &[u8],
    ) -> Result<(zmq::Socket, Option<HandshakeWatch>)> {
        let (endpoint, curve) = (config.connect.as_str(), config.curve.as_ref());
        let socket = sockets::context()
            .socket(zmq::DEALER)
            .context(|| "creating the client socket".into())?;
        socket.set_linger(0).context(|| "setting LINGER".into())?;
        sockets::cap_frames(&socket, config.max_message_bytes)?;
        // The client's own bound is the number of requests in flight; a socket HWM below
        // it would turn a large `in_flight` into EAGAIN on send.
        socket.set_sndhwm(0).context(|| "setting SNDHWM".into())?;
        socket
            .set_identity(identity)
            .context(|| "setting ROUTING_ID".into())?;
        security::apply_client(&socket, curve)?;
        // Also without CURVE: a plaintext client of a CURVE broker learns why it hears
        // nothing.
        let watch = Some(HandshakeWatch::start(&sockets::context(), &socket)?);
        sockets::connect(&socket, endpoint)?;
        Ok((socket, watch))
    }

    fn new_id(&mut self) -> RequestId {
        self.next_id += 1;
        RequestId::from(self.next_id)
    }

    /// Sends one request and waits for its reply, re-sending it with the same id after
    /// each timeout, up to `retries` times; the broker runs it at most once for all that.
    pub fn request(&mut self, service: &str, body: Body) -> Result<Body> {
        self.request_with_partials(service, body, |_| {})
    }

    /// Like [`Client::request`], calling `on_partial` for each partial reply a worker
    /// streams before its final one.
    pub fn request_with_partials(
        &mut self,
        service: &str,
        body: Body,
        mut on_partial: impl FnMut(Body),
    ) -> Result<Body> {
        let name = service_name(service)?;
        let id = self.new_id();
        let frames = self.encode_request(&id, &name, body);
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let attempts = self.config.attempts();
        for attempt in 1..=attempts {
            sockets::send(&self.socket, &frames).context(|| "sending a request".into())?;
            let mut deadline = Instant::now() + timeout;
            while let Some(reply) = self.recv_until(deadline)? {
                let Some((rid, answer)) = decode(service, reply)? else {
                    continue;
                };
                if rid != id {
                    continue; // an answer to an earlier request, crossing a retry
                }
                match answer {
                    // The broker holds it: worth waiting a full timeout from here.
                    Answer::Accepted => deadline = Instant::now() + timeout,
                    Answer::Partial(body) => {
                        deadline = Instant::now() + timeout;
                        on_partial(body);
                    }
                    Answer::Done(result) => return result,
                }
            }
            // A refused handshake is refused again: no use retrying.
            if let e @ Error::Refused { .. } = self.unanswered(service) {
                return Err(e);
            }
            debug!(
                attempt,
                service, "request timed out, re-sending on a fresh connection"
            );
            // A fresh socket with the same identity: the broker hands the identity over,
            // and still knows the request by (identity, id).
            self.reopen()?;
        }
        Err(self.unanswered(service))
    }

    /// Sends every request of `requests` with up to `in_flight` outstanding at once.
    /// `on_reply` gets each request's index and its outcome, in the order answers arrive.
    /// A request unanswered for `timeout_ms` is re-sent with the same id, up to `retries`
    /// times.
    pub fn pipeline(
        &mut self,
        service: &str,
        requests: impl IntoIterator<Item = Body>,
        in_flight: usize,
        mut on_reply: impl FnMut(usize, Result<Reply>),
    ) -> Result<PipelineSummary> {
        struct Outstanding {
            index: usize,
            frames: scale0_proto::Frames,
            first_sent: Instant,
            sends: u32,
        }
        let name = service_name(service)?;
        let in_flight = in_flight.max(1);
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let attempts = self.config.attempts();
        let mut requests = requests.into_iter().enumerate();
        let mut outstanding: HashMap<Bytes, Outstanding> = HashMap::with_capacity(in_flight);
        // Send order is deadline order, since every attempt waits the same time.
        let mut deadlines: VecDeque<(Instant, Bytes)> = VecDeque::with_capacity(in_flight);
        let mut summary = PipelineSummary::default();
        let start = Instant::now();
        let mut exhausted = false;
        loop {
            while !exhausted && outstanding.len() < in_flight {
                let Some((index, body)) = requests.next() else {
                    exhausted = true;
                    break;
                };
                let id = self.new_id();
                let frames = self.encode_request(&id, &name, body);
                sockets::send(&self.socket, &frames).context(|| "sending a request".into())?;
                let now = Instant::now();
                deadlines.push_back((now + timeout, id.as_bytes().clone()));
                outstanding.insert(
                    id.as_bytes().clone(),
                    Outstanding {
                        index,
                        frames,
                        first_sent: now,
                        sends: 1,
                    },
                );
                summary.sent += 1;
            }
            if outstanding.is_empty() {
                break;
            }
            // Deal with the earliest deadline, skipping requests already answered.
            while deadlines
                .front()
                .is_some_and(|(_, id)| !outstanding.contains_key(id))
            {
                deadlines.pop_front();
            }
            let Some((deadline, _)) = deadlines.front().cloned() else {
                break;
            };
            match self.recv_until(deadline)? {
                Some(reply) => {
                    let Some((rid, answer)) = decode(service, reply)? else {
                        continue;
                    };
                    let Answer::Done(result) = answer else {
                        continue;
                    };
                    let Some(o) = outstanding.remove(rid.as_bytes()) else {
                        summary.duplicates += 1;
                        continue;
                    };
                    let latency = o.first_sent.elapsed();
                    summary.latencies.record(latency);
                    match result {
                        Ok(body) => {
                            summary.ok += 1;
                            on_reply(o.index, Ok(Reply { body, latency }));
                        }
                        Err(e) => {
                            if matches!(e, Error::Rejected { .. }) {
                                summary.rejected += 1;
                            } else {
                                summary.errors += 1;
                            }
                            on_reply(o.index, Err(e));
                        }
                    }
                }
                None => {
                    let Some((_, id)) = deadlines.pop_front() else {
                        continue;
                    };
                    let Some(o) = outstanding.get_mut(&id) else {
                        continue;
                    };
                    if o.sends < attempts {
                        o.sends += 1;
                        summary.retries += 1;
                        sockets::send(&self.socket, &o.frames)
                            .context(|| "re-sending a request".into())?;
                        deadlines.push_back((Instant::now() + timeout, id));
                    } else if let Some(o) = outstanding.remove(&id) {
                        summary.timed_out += 1;
                        let e = self.unanswered(service);
                        on_reply(o.index, Err(e));
                    }
                }
            }
        }
        summary.elapsed = start.elapsed();
        Ok(summary)
    }

    fn encode_request(
        &self,
        id: &RequestId,
        service: &ServiceName,
        body: Body,
    ) -> scale0_proto::Frames {
        // Tell the broker when we will have given up, so it stops trying then too.
        let deadline_ms = self
            .config
            .timeout_ms
            .saturating_mul(u64::from(self.config.attempts()));
        Message::Native(NativeCommand::Request {
            id: id.clone(),
            service: service.clone(),
            deadline_ms: Some(deadline_ms),
            ack: self.config.acknowledged,
            body,
        })
        .encode()
    }

    /// Waits for one message until `deadline`; `None` on timeout.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<scale0_proto::Frames>> {
        // Handshake events are kept only until read: a client that reconnects a thousand
        // times without reading them would fill the monitor's pipe, and libzmq's I/O
        // thread blocks on a full monitor. Reading finds nothing nearly always and costs
        // a system call, so only every so many waits (and on a timeout, `unanswered`):
        // a reconnect makes at most a few events.
        self.waits = self.waits.wrapping_add(1);
        if self.waits.is_multiple_of(HANDSHAKE_CHECK_EVERY)
            && let Some(w) = self.handshakes.as_mut()
        {
            w.refusal();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up: a wait cut short would only spin until the deadline.
            let ms = i64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i64::MAX);
            if let Some(frames) = sockets::recv_timeout(&self.socket, ms)? {
                return Ok(Some(frames));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}

/// Waits for replies between two reads of the client's handshake events.
const HANDSHAKE_CHECK_EVERY: u64 = 64;

fn service_name(service: &str) -> Result<ServiceName> {
    ServiceName::new(Bytes::copy_from_slice(service.as_bytes()))
        .map_err(|_| Error::InvalidServiceName(service.into()))
}

/// Decodes a broker message for a native client; `None` for messages to ignore.
fn decode(service: &str, frames: scale0_proto::Frames) -> Result<Option<(RequestId, Answer)>> {
    let Message::Native(cmd) = Message::decode(frames)? else {
        return Ok(None);
    };
    Ok(Some(match cmd {
        NativeCommand::Accepted { id } => (id, Answer::Accepted),
        NativeCommand::Partial { id, body } => (id, Answer::Partial(body)),
        NativeCommand::Final { id, body } => (id, Answer::Done(into_result(service, body))),
        NativeCommand::Error {
            id,
            status,
            message,
        } => (
            id,
            Answer::Done(Err(Error::Rejected {
                service: service.into(),
                status,
                message: String::from_utf8_lossy(&message).into_owned(),
            })),
        ),
        NativeCommand::Request { .. } => return Ok(None),
    }))
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
