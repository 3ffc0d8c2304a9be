//! A Majordomo client speaking the scale0 native protocol (`docs/protocol.md`): request
//! ids, so many requests fly on one DEALER and replies come back in any order; explicit
//! error statuses; retries with the same id, which the broker never executes twice.
//!
//! Given several independent brokers, the client holds a DEALER to each and the core's
//! session spreads requests over the live ones, retries each on the broker that holds it,
//! and moves a dead broker's requests to a live one (`docs/protocol.md`, "Several
//! brokers"): execution is then at least once, and each request still ends exactly once.

use crate::clock::Clock;
use crate::error::{Error, Result, ZmqContext};
use crate::latency::Latencies;
use crate::security::{self, CurveClient, HandshakeWatch};
use crate::sockets;
use bytes::Bytes;
use scale0_proto::client::{self, Event, Outcome};
use scale0_proto::{Body, ServiceName};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Where a client connects and how patient it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The brokers' endpoints, such as `tcp://localhost:5555`: one, or several
    /// independent brokers to spread requests over.
    pub connect: Vec<String>,
    /// How long one attempt waits for its reply.
    pub timeout_ms: u64,
    /// How many times a request is re-sent (same id) after a timeout, or moved to another
    /// broker: `retries + 1` attempts in all.
    pub retries: u32,
    /// With several brokers: attempts of one request in a row, each timed out with
    /// nothing at all from its broker, after which that broker is judged dead and its
    /// requests move to the others ([`client::Config::dead_after_silent_attempts`]).
    pub dead_after_silent_attempts: u32,
    /// With several brokers: how often a broker judged dead is asked whether it is back,
    /// in milliseconds.
    pub probe_interval_ms: u64,
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
    /// Send requests that are ready together as one message (a bundle), and take the
    /// answers the same way, with brokers that read bundles (asked once per broker, with
    /// `mmi.bundle`; others are sent requests one by one). Frames up to
    /// [`scale0_proto::bundle::MAX_BYTES`] are then read whatever `max_message_bytes`
    /// says. Default on.
    pub bundle: bool,
}

impl ClientConfig {
    /// Defaults for the broker at `connect` (set [`ClientConfig::connect`] for several):
    /// the core's ([`client::Config::DEFAULT_TIMEOUT_MS`] per attempt,
    /// [`client::Config::DEFAULT_RETRIES`] retries).
    pub fn new(connect: impl Into<String>) -> Self {
        let session = client::Config::default();
        Self {
            connect: vec![connect.into()],
            timeout_ms: session.timeout_ms,
            retries: session.retries,
            dead_after_silent_attempts: session.dead_after_silent_attempts,
            probe_interval_ms: session.probe_interval_ms,
            max_message_bytes: scale0_proto::DEFAULT_MAX_MESSAGE_BYTES,
            curve: None,
            acknowledged: session.acknowledged,
            bundle: true,
        }
    }

    /// What the core's session needs of it.
    fn session(&self) -> client::Config {
        client::Config {
            timeout_ms: self.timeout_ms,
            retries: self.retries,
            acknowledged: self.acknowledged,
            dead_after_silent_attempts: self.dead_after_silent_attempts,
            probe_interval_ms: self.probe_interval_ms,
            bundle: self.bundle,
        }
    }
}

/// One reply of a [`Client::request_many`] run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The reply body.
    pub body: Body,
    /// From the first send of the request to its reply.
    pub latency: Duration,
}

/// What a [`Client::request_many`] run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManySummary {
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
    /// Re-sends that went to another broker, the one holding them judged dead.
    pub moved: u64,
    /// Answers for requests already finished (retries crossing an answer); ignored.
    pub duplicates: u64,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Latency of every answered request.
    pub latencies: Latencies,
}

impl ManySummary {
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

/// A Majordomo client: a thin driver of the core's [`client::Session`] over a DEALER per
/// broker.
pub struct Client {
    config: ClientConfig,
    /// One per endpoint, by the index the session uses.
    links: Vec<Link>,
    /// Our own routing id, on every broker and kept across reconnects so each broker can
    /// match retries.
    identity: Vec<u8>,
    /// Every request of this client's life: ids are never reused, since the broker
    /// answers a known id from its memory. Tagged with the caller's index and the time
    /// of the first send.
    session: client::Session<(usize, Instant)>,
    /// The session's clock.
    clock: Clock,
    /// Calls to `recv_until`, which reads the handshake events every so often.
    waits: u64,
    /// The link whose socket is read first, so that a busy broker cannot starve another.
    next_read: usize,
}

/// The connection to one broker.
struct Link {
    endpoint: String,
    socket: zmq::Socket,
    /// Why the broker refused our handshake, if it did.
    handshakes: Option<HandshakeWatch>,
}

impl Link {
    fn open(config: &ClientConfig, endpoint: &str, identity: &[u8]) -> Result<Self> {
        let socket = sockets::context()
            .socket(zmq::DEALER)
            .context(|| "creating the client socket".into())?;
        socket.set_linger(0).context(|| "setting LINGER".into())?;
        sockets::cap_frames(
            &socket,
            sockets::frame_bound(config.max_message_bytes, config.bundle),
        )?;
        // The client's own bound is the number of requests in flight; a socket HWM below
        // it would turn a large `in_flight` into EAGAIN on send.
        socket.set_sndhwm(0).context(|| "setting SNDHWM".into())?;
        socket
            .set_identity(identity)
            .context(|| "setting ROUTING_ID".into())?;
        security::apply_client(&socket, config.curve.as_ref())?;
        // Also without CURVE: a plaintext client of a CURVE broker learns why it hears
        // nothing.
        let handshakes = Some(HandshakeWatch::start(&sockets::context(), &socket)?);
        sockets::connect(&socket, endpoint)?;
        Ok(Self {
            endpoint: endpoint.to_string(),
            socket,
            handshakes,
        })
    }
}

impl Drop for Link {
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

impl Client {
    /// Connects to the brokers (ZeroMQ connects in the background; an absent broker shows
    /// up as a timeout on the first request it gets).
    pub fn connect(config: ClientConfig) -> Result<Self> {
        if config.connect.is_empty() {
            return Err(Error::InvalidConfig(
                "a client needs at least one broker endpoint".into(),
            ));
        }
        let identity = crate::ids::routing_id();
        let links = config
            .connect
            .iter()
            .map(|endpoint| Link::open(&config, endpoint, &identity))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            session: client::Session::with_brokers(config.session(), links.len()),
            config,
            links,
            identity,
            clock: Clock::new(),
            waits: 0,
            next_read: 0,
        })
    }

    /// A fresh socket with the same identity in place of broker `i`'s: whatever was
    /// queued for it is dropped.
    fn reopen(&mut self, i: usize) -> Result<()> {
        if let Some(link) = self.links.get_mut(i) {
            let endpoint = link.endpoint.clone();
            *link = Link::open(&self.config, &endpoint, &self.identity)?;
        }
        Ok(())
    }

    /// Why broker `broker` (or, for `None`, any broker) refused our handshake, if one did.
    fn refusal(&mut self, broker: Option<usize>) -> Option<Error> {
        self.links
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| broker.is_none_or(|b| b == *i))
            .find_map(|(_, l)| {
                let why = l.handshakes.as_mut().and_then(HandshakeWatch::refusal)?;
                Some(Error::Refused {
                    endpoint: l.endpoint.clone(),
                    why,
                })
            })
    }

    /// The error for a request unanswered after `attempts`: a refused handshake if that
    /// is why, else a timeout.
    fn unanswered(&mut self, service: &str, attempts: u32) -> Error {
        if let Some(refused) = self.refusal(None) {
            return refused;
        }
        Error::Timeout {
            endpoint: self.config.connect.join(", "),
            service: service.into(),
            attempts,
            timeout_ms: self.config.timeout_ms,
        }
    }

    /// How a request ended, as the caller sees it.
    fn result(&mut self, service: &str, outcome: Outcome) -> Result<Body> {
        match outcome {
            Outcome::Reply(body) => Ok(body),
            Outcome::Failed(message) => Err(Error::Service {
                service: service.into(),
                message: String::from_utf8_lossy(&message).into_owned(),
            }),
            Outcome::Rejected { status, message } => Err(Error::Rejected {
                service: service.into(),
                status,
                message: String::from_utf8_lossy(&message).into_owned(),
            }),
            Outcome::Unanswered { attempts } => Err(self.unanswered(service, attempts)),
        }
    }

    /// Sends what the session has queued, each message on its broker's socket.
    fn flush(&mut self) -> Result<()> {
        while let Some(t) = self.session.poll_transmit() {
            if let Some(link) = self.links.get(t.dest) {
                sockets::send(&link.socket, &t.frames).context(|| "sending a request".into())?;
            }
        }
        Ok(())
    }

    /// Waits for the next answer or the session's next deadline and hands it over; a
    /// deadline that came due meanwhile fires too, so a broker that answers without pause
    /// cannot hold back another's timeouts.
    fn turn(&mut self) -> Result<()> {
        let Some(due) = self.session.poll_timeout() else {
            return Ok(());
        };
        if let Some((broker, frames)) = self.recv_until(self.clock.instant(due))? {
            let now = self.clock.now();
            if let Err(e) = self.session.handle_message(now, broker, frames) {
                debug!(error = %e, "dropped a malformed message from the broker");
            }
        }
        let now = self.clock.now();
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        Ok(())
    }

    /// What the session says of a broker: one judged dead gets a fresh socket, so that
    /// the retries queued for it are not delivered when it comes back. False for any
    /// other event.
    fn on_broker_event(&mut self, event: &Event<(usize, Instant)>) -> Result<bool> {
        match *event {
            Event::BrokerDead { broker } => {
                let endpoint = self.links.get(broker).map(|l| l.endpoint.clone());
                warn!(
                    endpoint = endpoint.as_deref().unwrap_or("?"),
                    "broker judged dead; its requests move to the others"
                );
                self.reopen(broker)?;
                Ok(true)
            }
            Event::BrokerBack { broker } => {
                let endpoint = self.links.get(broker).map(|l| l.endpoint.clone());
                info!(
                    endpoint = endpoint.as_deref().unwrap_or("?"),
                    "broker is back"
                );
                Ok(true)
            }
            _ => Ok(false),
        }
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
        // Whatever a run cut short by an error left behind.
        self.session.cancel_all();
        let now = self.clock.now();
        let id = self.session.request(now, name, body, (0, Instant::now()));
        loop {
            self.flush()?;
            self.turn()?;
            while let Some(event) = self.session.poll_event() {
                if self.on_broker_event(&event)? {
                    continue;
                }
                match event {
                    Event::Partial { id: of, body } if of == id => on_partial(body),
                    Event::Retrying {
                        attempt, broker, ..
                    } => {
                        // A refused handshake is refused again: no use retrying.
                        if let Some(e) = self.refusal(Some(broker)) {
                            self.session.cancel(&id);
                            return Err(e);
                        }
                        debug!(
                            attempt,
                            service, "request timed out, re-sending on a fresh connection"
                        );
                        // A fresh socket with the same identity: the broker hands the
                        // identity over, and still knows the request by (identity, id).
                        self.reopen(broker)?;
                    }
                    Event::Done { outcome, .. } => return self.result(service, outcome),
                    _ => {}
                }
            }
        }
    }

    /// Sends every request of `requests` with up to `in_flight` outstanding at once.
    /// `on_reply` gets each request's index and its outcome, in the order answers arrive.
    /// A request unanswered for `timeout_ms` is re-sent with the same id, up to `retries`
    /// times.
    pub fn request_many(
        &mut self,
        service: &str,
        requests: impl IntoIterator<Item = Body>,
        in_flight: usize,
        mut on_reply: impl FnMut(usize, Result<Reply>),
    ) -> Result<ManySummary> {
        let name = service_name(service)?;
        let in_flight = in_flight.max(1);
        let mut requests = requests.into_iter().enumerate();
        self.session.cancel_all();
        let before = self.session.counters().clone();
        let mut summary = ManySummary::default();
        let start = Instant::now();
        let mut exhausted = false;
        loop {
            while !exhausted && self.session.outstanding() < in_flight {
                let Some((index, body)) = requests.next() else {
                    exhausted = true;
                    break;
                };
                let now = self.clock.now();
                self.session
                    .request(now, name.clone(), body, (index, Instant::now()));
                summary.sent += 1;
            }
            self.flush()?;
            if self.session.outstanding() == 0 {
                break;
            }
            self.turn()?;
            while let Some(event) = self.session.poll_event() {
                self.on_broker_event(&event)?;
                let Event::Done {
                    tag: (index, sent),
                    outcome,
                    ..
                } = event
                else {
                    continue;
                };
                let latency = sent.elapsed();
                if let Outcome::Unanswered { .. } = outcome {
                    summary.timed_out += 1;
                } else {
                    summary.latencies.record(latency);
                }
                match self.result(service, outcome) {
                    Ok(body) => {
                        summary.ok += 1;
                        on_reply(index, Ok(Reply { body, latency }));
                    }
                    Err(e) => {
                        match e {
                            Error::Rejected { .. } => summary.rejected += 1,
                            Error::Service { .. } => summary.errors += 1,
                            _ => {}
                        }
                        on_reply(index, Err(e));
                    }
                }
            }
        }
        let after = self.session.counters();
        summary.retries = after.retries - before.retries;
        summary.moved = after.moved - before.moved;
        summary.duplicates = after.duplicates - before.duplicates;
        summary.elapsed = start.elapsed();
        Ok(summary)
    }

    /// Waits for one message from any broker until `deadline`, with the index of the
    /// broker it came from; `None` on timeout.
    fn recv_until(&mut self, deadline: Instant) -> Result<Option<(usize, scale0_proto::Frames)>> {
        // Handshake events are kept only until read: a client that reconnects a thousand
        // times without reading them would fill the monitor's pipe, and libzmq's I/O
        // thread blocks on a full monitor. Reading finds nothing nearly always and costs
        // a system call, so only every so many waits (and on a timeout, `unanswered`):
        // a reconnect makes at most a few events.
        self.waits = self.waits.wrapping_add(1);
        if self.waits.is_multiple_of(HANDSHAKE_CHECK_EVERY) {
            for link in &mut self.links {
                if let Some(w) = link.handshakes.as_mut() {
                    w.refusal();
                }
            }
        }
        let ms = |deadline: Instant| {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up: a wait cut short would only spin until the deadline.
            i64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
        };
        if let [link] = &self.links[..] {
            loop {
                if let Some(frames) = sockets::recv_timeout(&link.socket, ms(deadline))? {
                    return Ok(Some((0, frames)));
                }
                if Instant::now() >= deadline {
                    return Ok(None);
                }
            }
        }
        let n = self.links.len();
        loop {
            // What is already waiting, the brokers taking turns to be read first.
            for k in 0..n {
                let i = (self.next_read + k) % n;
                if let Some(frames) = sockets::try_recv(&self.links[i].socket)? {
                    self.next_read = (i + 1) % n;
                    return Ok(Some((i, frames)));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let mut items: Vec<zmq::PollItem<'_>> = self
                .links
                .iter()
                .map(|l| l.socket.as_poll_item(zmq::POLLIN))
                .collect();
            sockets::poll(&mut items, ms(deadline))
                .context(|| "polling the client sockets".into())?;
        }
    }
}

/// Waits for replies between two reads of the client's handshake events.
const HANDSHAKE_CHECK_EVERY: u64 = 64;

fn service_name(service: &str) -> Result<ServiceName> {
    ServiceName::new(Bytes::copy_from_slice(service.as_bytes()))
        .map_err(|_| Error::InvalidServiceName(service.into()))
}
