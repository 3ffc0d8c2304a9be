//! The broker's socket loop: one ROUTER, one poll loop, the core does the thinking.

use crate::accepts::AcceptWatch;
use crate::clock::Clock;
use crate::error::{Result, ZmqContext};
use crate::http::{HttpConfig, HttpServer, Page};
use crate::metrics::render as render_metrics;
use crate::security::{self, CurveServer, ZapHandler};
use crate::shutdown::Shutdown;
use crate::sockets;
use bytes::Bytes;
use scale0_proto::broker::{self as core, Counters};
use scale0_store::{LogOptions, LogStore, Store};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

/// How often the HTTP endpoint's snapshot (metrics and status) is rendered.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);

/// Messages handled between two commits of a durable broker: bounds the latency one
/// batch adds, while a busy broker still shares each sync among many requests.
const MAX_BATCH: usize = 4096;

/// Messages handled, while more are waiting, before what they produced is sent. Sending
/// in bursts lets libzmq's I/O thread write many messages with one system call instead
/// of one or two each (`bench/syscalls.sh`: the I/O thread's sends per request 1.2 ->
/// 0.56). Smaller bounds did worse than none (16 or 32: more sends than sending at once);
/// 64 and 256 did the same, so the bound mostly just caps the delay of a long burst.
const SEND_BATCH: usize = 64;

/// Everything a broker needs to run: where to listen and how to behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Endpoints the ROUTER binds, such as `tcp://*:5555`.
    pub bind: Vec<String>,
    /// Heartbeat, liveness and size settings of the state machine.
    pub core: core::Config,
    /// Messages libzmq may queue per peer in each direction before sends fail.
    pub socket_hwm: i32,
    /// Durable mode: the directory of the request log. Accepted requests are on disk
    /// before they are acknowledged, and survive `kill -9` of the broker.
    pub data_dir: Option<PathBuf>,
    /// Segment size and repair mode of the request log.
    pub store: LogOptions,
    /// Endpoints of a PUB socket on which the broker publishes its events (workers
    /// ready and gone, services up and down, redeliveries); empty for none.
    pub events: Vec<String>,
    /// On shutdown, how long to keep serving the requests already accepted (new ones are
    /// refused with `shutting_down`) before stopping; 0 stops at once. A durable broker
    /// waits only for requests held by workers: queued ones stay in its log. Default
    /// [`DEFAULT_GRACE_MS`].
    pub grace_ms: u64,
    /// The HTTP endpoint: the dashboard at `/`, `/api/status`, `/api/events` and
    /// Prometheus metrics at `/metrics` (read the address back with
    /// [`Broker::http_endpoint`]); `None` for none.
    pub http: Option<HttpConfig>,
    /// CURVE on every endpoint: the broker's key pair and the client and worker keys it
    /// lets in. Per-key service rules are `core.access`, by key name.
    pub curve: Option<CurveServer>,
    /// A node of a replicated cluster (`data_dir` then holds its raft log): the leader
    /// serves, the others stand by (see [`crate::ClusterConfig`]).
    pub cluster: Option<crate::ClusterConfig>,
    /// How long the broker keeps checking for its next message, in microseconds, before
    /// it goes to sleep (at most [`MAX_SPIN_US`]; 0 never). Waking a sleeping thread
    /// costs tens of microseconds on a virtual machine; a broker that spins through the
    /// short gaps of a busy conversation answers sooner. After a few fruitless spins in
    /// a row it mostly stops (see `sockets::Receiver`), so sparse traffic costs next to
    /// no CPU.
    pub spin_us: u64,
}

/// Upper bound of [`BrokerConfig::spin_us`]: past this, spinning only burns CPU.
pub const MAX_SPIN_US: u64 = 10_000;

/// How long a stopping broker serves the requests it accepted, unless configured.
pub const DEFAULT_GRACE_MS: u64 = 5000;

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            bind: vec![crate::endpoints::BROKER.into()],
            core: core::Config::default(),
            socket_hwm: 100_000,
            data_dir: None,
            store: LogOptions::default(),
            events: Vec::new(),
            grace_ms: DEFAULT_GRACE_MS,
            http: None,
            curve: None,
            cluster: None,
            spin_us: 100,
        }
    }
}

/// A broker whose endpoints are bound, ready to [`Broker::run`].
pub struct Broker {
    /// Its own context when it drains on stop (see [`Broker::bind`]).
    pub(crate) ctx: zmq::Context,
    own_ctx: bool,
    pub(crate) socket: zmq::Socket,
    pub(crate) endpoints: Vec<String>,
    pub(crate) config: BrokerConfig,
    /// The open request log and what it held, in durable mode.
    pub(crate) store: Option<(LogStore, Vec<(u64, Bytes)>)>,
    /// Where events are published, if anywhere.
    pub(crate) events: Option<zmq::Socket>,
    events_endpoints: Vec<String>,
    pub(crate) http: Option<HttpServer>,
    /// Answers CURVE authentication for this broker's context, when CURVE is on.
    pub(crate) zap: Option<ZapHandler>,
    /// Reads the socket's monitor when the ZAP handler does not.
    accepts: Option<AcceptWatch>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Opens the request log (durable mode), creates the ROUTER and binds every
    /// endpoint of `config`. A store that is in use or damaged fails here, before
    /// anything listens.
    pub fn bind(config: BrokerConfig) -> Result<Self> {
        if config.bind.is_empty() {
            return Err(crate::Error::InvalidConfig(
                "the broker needs at least one endpoint to bind".into(),
            ));
        }
        if config.spin_us > MAX_SPIN_US {
            return Err(crate::Error::InvalidConfig(format!(
                "spin_us is at most {MAX_SPIN_US} microseconds, not {}",
                config.spin_us
            )));
        }
        if let Some(cluster) = &config.cluster {
            cluster.validate()?;
            crate::security::check_endpoints(
                config.curve.as_ref(),
                cluster.nodes.iter().map(|(_, e)| e),
            )?;
            if config.data_dir.is_none() {
                return Err(crate::Error::InvalidConfig(
                    "a cluster node needs a data directory for its raft log".into(),
                ));
            }
        }
        let store = match &config.data_dir {
            None => None,
            Some(dir) => {
                let (mut log, report) = LogStore::open(dir, config.store.clone())?;
                if report.torn_bytes > 0 || !report.skipped.is_empty() {
                    warn!(
                        dir = %dir.display(),
                        torn_bytes = report.torn_bytes,
                        skipped = report.skipped.len(),
                        "the request log was damaged; see the lines above for what was dropped"
                    );
                }
                let stored = log.load().map_err(|error| crate::Error::Store {
                    dir: dir.display().to_string(),
                    error,
                })?;
                Some((log, stored))
            }
        };
        // A broker that drains on stop gets a context of its own, so that stopping can
        // wait until its last replies have left (terminating a context is the only way
        // libzmq offers). Otherwise it shares the process-wide one: a second I/O thread
        // costs in-process use (`scale0 bench`: sync p50 +30-50%) on two cores, and
        // inproc:// peers can only reach a broker in their own context.
        let inproc = config
            .bind
            .iter()
            .chain(&config.events)
            .any(|e| e.starts_with("inproc://"));
        security::check_endpoints(
            config.curve.as_ref(),
            config.bind.iter().chain(&config.events),
        )?;
        // A CURVE broker needs its own context: the ZAP handler is one per context.
        let (ctx, own_ctx) = if config.curve.is_none() && (inproc || config.grace_ms == 0) {
            (sockets::context(), false)
        } else {
            (zmq::Context::new(), true)
        };
        let mut socket = ctx
            .socket(zmq::ROUTER)
            .context(|| "creating the broker's ROUTER socket".into())?;
        // A peer's connection ending reaches the core as [id, empty]: a worker's requests
        // go elsewhere at once, a departed Lazy Pirate client's are not sent.
        zmq_draft::notify_disconnects(&mut socket).context(|| "setting ROUTER_NOTIFY".into())?;
        // Sends to a vanished peer fail with EHOSTUNREACH instead of vanishing silently.
        socket
            .set_router_mandatory(true)
            .context(|| "setting ROUTER_MANDATORY".into())?;
        // A client that reconnects with its own fixed identity takes over at once.
        socket
            .set_router_handover(true)
            .context(|| "setting ROUTER_HANDOVER".into())?;
        socket
            .set_sndhwm(config.socket_hwm)
            .context(|| "setting SNDHWM".into())?;
        socket
            .set_rcvhwm(config.socket_hwm)
            .context(|| "setting RCVHWM".into())?;
        socket.set_linger(0).context(|| "setting LINGER".into())?;
        // Up to twice the bound a frame is read, so that the sender can be told
        // `too_large`; a larger one ends its connection unread. A bundle's packed frame
        // may be longer than a small bound: each message in it is held to the bound.
        sockets::cap_frames(
            &socket,
            config
                .core
                .max_message_bytes
                .saturating_mul(2)
                .max(scale0_proto::bundle::MAX_BYTES),
        )?;
        // ZMTP heartbeats drop a connection whose peer froze or whose host vanished
        // without closing TCP; libzmq then reports sends to it as unroutable.
        let ivl = i32::try_from(config.core.heartbeat_interval_ms).unwrap_or(i32::MAX);
        socket
            .set_heartbeat_ivl(ivl)
            .context(|| "setting HEARTBEAT_IVL".into())?;
        socket
            .set_heartbeat_timeout(
                ivl.saturating_mul(
                    i32::try_from(config.core.heartbeat_liveness).unwrap_or(i32::MAX),
                ),
            )
            .context(|| "setting HEARTBEAT_TIMEOUT".into())?;
        // The handler is up before anything can connect.
        let zap = match &config.curve {
            Some(curve) => {
                curve.apply(&socket)?;
                Some(ZapHandler::start(
                    &ctx,
                    Arc::clone(&curve.allow),
                    &[&socket],
                )?)
            }
            None => None,
        };
        // Without CURVE nothing else reads the socket's monitor: a thread of its own says
        // when connections are refused for want of descriptors.
        let accepts = match zap {
            Some(_) => None,
            None => Some(AcceptWatch::start(&ctx, &socket)?),
        };
        let mut endpoints = Vec::with_capacity(config.bind.len());
        for endpoint in &config.bind {
            endpoints.push(sockets::bind(&socket, endpoint)?);
        }
        let mut events_endpoints = Vec::new();
        let events = if config.events.is_empty() {
            None
        } else {
            let p = ctx
                .socket(zmq::PUB)
                .context(|| "creating the events PUB socket".into())?;
            p.set_linger(0).context(|| "setting LINGER".into())?;
            for e in &config.events {
                events_endpoints.push(sockets::bind(&p, e)?);
            }
            Some(p)
        };
        let http = config
            .http
            .clone()
            .map(|c| HttpServer::bind(c, Page::Broker))
            .transpose()?;
        Ok(Self {
            http,
            zap,
            accepts,
            ctx,
            own_ctx,
            socket,
            endpoints,
            config,
            store,
            events,
            events_endpoints,
        })
    }

    /// The endpoints actually bound, with real ports where `:*` was asked for.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The dashboard's URL (`http://HOST:PORT/`), if `http` was set.
    pub fn http_endpoint(&self) -> Option<String> {
        self.http.as_ref().map(HttpServer::url)
    }

    /// The events PUB endpoints actually bound.
    pub fn events_endpoints(&self) -> &[String] {
        &self.events_endpoints
    }

    /// Serves until `shutdown` is triggered; returns the final counters.
    pub fn run(mut self, shutdown: &Shutdown) -> Result<Counters> {
        if self.config.cluster.is_some() {
            return self.run_cluster(shutdown);
        }
        let clock = Clock::new();
        self.config.core.events = self.events.is_some() || self.http.is_some();
        let (mut core, mut log) = match self.store.take() {
            None => (
                core::Broker::new(self.config.core.clone(), clock.now()),
                None,
            ),
            Some((log, stored)) => {
                // Titanic UUIDs of this run must not repeat those of an earlier one.
                let nonce = crate::ids::random_u64();
                let (core, recovery) =
                    core::Broker::durable(self.config.core.clone(), clock.now(), stored, nonce);
                for (key, e) in &recovery.unreadable {
                    error!(key, error = %e, "a stored entry could not be read; it is left in the store");
                }
                info!(
                    requests = recovery.requests,
                    titanic_answers = recovery.titanic_answers,
                    "recovered from the request log"
                );
                (core, Some(log))
            }
        };
        info!(endpoints = %self.endpoints.join(" "), durable = log.is_some(), "broker running");
        let started = std::time::Instant::now();
        let mut next_snapshot = started;
        if let Some(h) = &mut self.http {
            h.start()?;
        }
        // Messages handled since the last commit (durable mode).
        let mut uncommitted = 0usize;
        let mut unflushed = 0usize;
        let mut receiver = sockets::Receiver::new(self.config.spin_us, self.zap.is_some());
        loop {
            if let Some(h) = &self.http
                && std::time::Instant::now() >= next_snapshot
            {
                h.publish_metrics(render_metrics(&core, started.elapsed()));
                h.publish_status(core.status_document(clock.now()));
                next_snapshot = std::time::Instant::now() + SNAPSHOT_EVERY;
            }
            if shutdown.is_triggered() && !core.is_draining() {
                if self.config.grace_ms == 0 {
                    break;
                }
                let grace = Duration::from_millis(self.config.grace_ms);
                core.begin_drain(clock.now(), grace);
                // Nothing to wait for: stop at once, as without a grace period.
                if core.drained().is_some() {
                    break;
                }
                info!(
                    outstanding = core.unanswered(),
                    grace_ms = self.config.grace_ms,
                    "stopping: new requests refused, accepted ones still served"
                );
            }
            match core.drained() {
                None => {}
                Some(core::Drained::Answered) => {
                    info!("every accepted request answered");
                    break;
                }
                Some(core::Drained::GraceOver { unanswered }) => {
                    warn!(
                        outstanding = unanswered,
                        "grace period over; stopping with requests unanswered"
                    );
                    self.flush(&mut core, clock);
                    break;
                }
            }
            let now = clock.now();
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
                self.flush(&mut core, clock);
            }
            while let Some(e) = core.poll_event() {
                if let Some(p) = &self.events {
                    // A slow subscriber misses events past its HWM, as with any PUB.
                    let _ = sockets::send(p, &e.encode());
                }
                if let Some(h) = &self.http {
                    h.publish_event(event_json(&e));
                }
            }
            // One message per round; a message already there is taken without a system
            // call. What the messages produce is sent once nothing more is waiting (or
            // after SEND_BATCH of them, or at once when a worker with nothing in hand
            // waits on it), and in durable mode what depends on the journal is held until
            // a commit: one sync for everything that arrived together.
            let wait = if uncommitted > 0 || unflushed > 0 {
                0
            } else {
                clock.wait_ms(core.poll_timeout())
            };
            let received = receiver.recv(&self.socket, wait)?.map(|(frames, user)| {
                core.handle_message_from(clock.now(), frames, user.as_deref());
            });
            unflushed += usize::from(received.is_some());
            if received.is_none() || unflushed >= SEND_BATCH || core.wants_flush() {
                self.flush(&mut core, clock);
                unflushed = 0;
            }
            if let Some(log) = &mut log {
                uncommitted += usize::from(received.is_some());
                if received.is_none() || uncommitted >= MAX_BATCH {
                    self.commit(&mut core, log)?;
                    self.flush(&mut core, clock);
                    uncommitted = 0;
                }
            }
        }
        if let Some(log) = &mut log {
            self.commit(&mut core, log)?;
        }
        // Answers produced in the last round leave with the socket's linger.
        self.flush(&mut core, clock);
        self.close();
        info!("broker stopped");
        Ok(core.counters().clone())
    }

    /// Closes the sockets, giving replies still queued up to a second to leave.
    pub(crate) fn close(self) {
        let _ = self.socket.set_linger(1000);
        let Self {
            mut ctx,
            own_ctx,
            socket,
            events,
            zap,
            accepts,
            ..
        } = self;
        if let Some(zap) = zap {
            zap.stop(&[&socket]);
        }
        if let Some(accepts) = accepts {
            accepts.stop(&socket);
        }
        drop(socket);
        drop(events);
        if own_ctx && let Err(e) = ctx.destroy() {
            warn!(error = %e, "closing the broker's context");
        }
    }

    /// The data directory as logs and errors name it.
    pub(crate) fn data_dir_name(&self) -> String {
        self.config
            .data_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    }

    /// Writes the journal ops of the batch with one sync, then releases what they held.
    fn commit(&self, core: &mut core::Broker, log: &mut LogStore) -> Result<()> {
        let failed = |error: std::io::Error| {
            let dir = self.data_dir_name();
            error!(%dir, %error, "the request log failed; stopping so that nothing is acknowledged that is not on disk");
            crate::Error::Store { dir, error }
        };
        while let Some(op) = core.poll_journal() {
            log.apply(&op).map_err(failed)?;
        }
        log.commit().map_err(failed)?;
        core.journal_synced();
        Ok(())
    }

    pub(crate) fn flush(&self, core: &mut core::Broker, clock: Clock) {
        Self::flush_via(core, clock, |frames| sockets::send(&self.socket, frames));
    }

    /// [`Broker::flush`] through `send`, which picks the socket for each message.
    pub(crate) fn flush_via(
        core: &mut core::Broker,
        clock: Clock,
        mut send: impl FnMut(&scale0_proto::Frames) -> std::result::Result<(), zmq::Error>,
    ) {
        while let Some(t) = core.poll_transmit() {
            match send(&t.frames) {
                Ok(()) => {}
                Err(zmq::Error::EHOSTUNREACH | zmq::Error::EAGAIN) => {
                    if let Some(peer) = t.peer() {
                        core.handle_unroutable(clock.now(), &peer);
                    }
                }
                Err(e) => warn!(error = %e, "send failed"),
            }
        }
    }
}

/// An event as the dashboard's stream carries it: `scale0 watch --json`'s object, with
/// the wall-clock time it was published (Unix milliseconds).
pub(crate) fn event_json(e: &core::Event) -> String {
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    serde_json::json!({
        "event": e.kind(),
        "service": e.service().to_string(),
        "worker": e.worker().map(ToString::to_string).unwrap_or_default(),
        "detail": e.detail(),
        "at_ms": at_ms,
    })
    .to_string()
}

/// Listens to brokers' event endpoints (their `events`) until `shutdown` or until
/// `on_event` returns false, handing it each event; what is not an event is skipped.
pub fn watch_events(
    endpoints: &[String],
    shutdown: &Shutdown,
    mut on_event: impl FnMut(&core::Event) -> bool,
) -> Result<()> {
    let sub = sockets::context()
        .socket(zmq::SUB)
        .context(|| "creating the SUB socket".into())?;
    sub.set_linger(0).context(|| "setting LINGER".into())?;
    sub.set_subscribe(core::EVENT_TOPIC_PREFIX.as_bytes())
        .context(|| "subscribing".into())?;
    for e in endpoints {
        sockets::connect(&sub, e)?;
    }
    while !shutdown.is_triggered() {
        sockets::poll_in(&sub, 100).context(|| "polling for events".into())?;
        while let Some(frames) = sockets::try_recv(&sub)? {
            match core::Event::decode(&frames) {
                Ok(event) if !on_event(&event) => return Ok(()),
                Ok(_) => {}
                // A newer broker's kind of event, say.
                Err(e) => debug!(error = %e, "skipped a message that is not an event"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Broker, BrokerConfig, MAX_SPIN_US};

    #[test]
    fn a_spin_past_its_bound_is_refused_before_anything_listens() {
        let config = BrokerConfig {
            bind: vec!["tcp://127.0.0.1:*".into()],
            spin_us: MAX_SPIN_US + 1,
            ..BrokerConfig::default()
        };
        match Broker::bind(config) {
            Err(crate::Error::InvalidConfig(why)) => assert!(why.contains("spin_us"), "{why}"),
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
