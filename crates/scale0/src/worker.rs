//! The worker's socket loop: a DEALER to each broker, and a handler thread behind an
//! `inproc` pair so heartbeats keep flowing while the handler runs (or, for handlers of
//! microseconds, the handler called on the loop's own thread: `WorkerConfig::inline`).
//! With several brokers the core's [`Group`] splits the capacity between them; the loop
//! only moves frames between each DEALER and its broker's session.

use crate::clock::Clock;
use crate::error::{Error, Result, ZmqContext};
use crate::security::{self, CurveClient};
use crate::shutdown::Shutdown;
use crate::sockets;
use bytes::Bytes;
use scale0_proto::mdp::Version;
use scale0_proto::worker::{self as core, Action, Drained, Group};
use scale0_proto::{Body, ServiceName};
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use tracing::{debug, info, warn};

/// Where a worker connects, what it serves, and its timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The brokers' endpoints, such as `tcp://localhost:5555`: one, or several independent
    /// brokers, each of which the worker registers with. `capacity` is split between them
    /// (each gets at least 1, so it must be at least their number), unless they are the
    /// nodes of one cluster (`cluster`).
    pub connect: Vec<String>,
    /// The service to register for.
    pub service: String,
    /// How often to heartbeat; should match the broker's.
    pub heartbeat_interval_ms: u64,
    /// Intervals of broker silence before reconnecting.
    pub heartbeat_liveness: u32,
    /// First pause before a reconnect; doubles up to `reconnect_max_ms`.
    pub reconnect_initial_ms: u64,
    /// Longest pause between reconnects.
    pub reconnect_max_ms: u64,
    /// The Majordomo version to speak: MDP/0.2 (the default) can stream partial replies.
    pub version: Version,
    /// Call the handler on the socket loop's thread instead of a handler thread: two
    /// thread wake-ups less per request, which is most of a fast handler's cost. While it
    /// runs nothing else happens (no heartbeats), so it must finish well within
    /// `heartbeat_interval_ms` × the broker's liveness, or the broker presumes the worker
    /// dead and sends its request elsewhere. Partial replies leave when it returns.
    pub inline: bool,
    /// On shutdown, how long a worker busy with a request goes on to send its reply
    /// before it says DISCONNECT; 0 stops at once (the broker sends the request to
    /// another worker). With a grace period the worker has a ZeroMQ context of its own
    /// (unless its broker is inproc), so that its last reply and its goodbye leave before
    /// the process exits. Default [`crate::DEFAULT_GRACE_MS`].
    pub grace_ms: u64,
    /// Largest frame read from a peer, in bytes: a peer that sends a larger one is
    /// disconnected before it is stored (libzmq's ZMQ_MAXMSGSIZE).
    pub max_message_bytes: usize,
    /// CURVE: the broker's public key and this worker's pair.
    pub curve: Option<CurveClient>,
    /// Requests the brokers may send this worker before it replies (1 to 1024; scale0's
    /// READY extension, which the Majordomo brokers we know ignore: they send one at a
    /// time), split between the brokers ([`scale0_proto::worker::Group::shares`]). The
    /// handler still
    /// takes them one at a time, in order; above 1 the broker keeps the worker's queue
    /// filled, so a fast handler never waits for the next request's round trip. Its
    /// requests wait behind each other, so keep it small for slow handlers.
    pub capacity: u32,
    /// The `connect` endpoints are the nodes of one replicated cluster (`scale0 broker
    /// --cluster`), not independent brokers: each node is given the whole capacity,
    /// since only the leader hands out requests ([`scale0_proto::worker::Group::cluster`]).
    pub cluster: bool,
    /// With a capacity above 1, ask brokers for bundles (READY's `bundle=1`): a scale0
    /// broker then sends what it has for this worker at once as one message, and the
    /// worker answers the same way. Other brokers ignore the frame. Frames up to
    /// [`scale0_proto::bundle::MAX_BYTES`] are then read whatever `max_message_bytes`
    /// says. Default on.
    pub bundle: bool,
}

impl WorkerConfig {
    /// Defaults for serving `service` from the broker at `connect` (set
    /// [`WorkerConfig::connect`] for several).
    pub fn new(connect: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            connect: vec![connect.into()],
            service: service.into(),
            heartbeat_interval_ms: scale0_proto::DEFAULT_HEARTBEAT_INTERVAL_MS,
            heartbeat_liveness: scale0_proto::DEFAULT_HEARTBEAT_LIVENESS,
            reconnect_initial_ms: scale0_proto::worker::Config::DEFAULT_RECONNECT_INITIAL_MS,
            reconnect_max_ms: scale0_proto::worker::Config::DEFAULT_RECONNECT_MAX_MS,
            version: Version::V2,
            inline: false,
            grace_ms: crate::DEFAULT_GRACE_MS,
            max_message_bytes: scale0_proto::DEFAULT_MAX_MESSAGE_BYTES,
            curve: None,
            capacity: scale0_proto::worker::Config::DEFAULT_CAPACITY,
            cluster: false,
            bundle: true,
        }
    }
}

/// Why a handler could not answer; the client receives it as an error reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError(pub String);

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandlerError {}

/// Turns a request body into a reply body. Runs on its own thread, one request at a time.
///
/// Any `FnMut(Body) -> Result<Body, HandlerError>` is a handler; implement the trait to
/// stream partial replies through [`Progress`].
pub trait Handler: Send + 'static {
    /// Serves one request; `progress` sends partial replies before the final one.
    fn handle(
        &mut self,
        body: Body,
        progress: &Progress<'_>,
    ) -> std::result::Result<Body, HandlerError>;
}

impl<F> Handler for F
where
    F: FnMut(Body) -> std::result::Result<Body, HandlerError> + Send + 'static,
{
    fn handle(
        &mut self,
        body: Body,
        _progress: &Progress<'_>,
    ) -> std::result::Result<Body, HandlerError> {
        self(body)
    }
}

/// Sends partial replies for the request a handler is serving (MDP/0.2 workers only; an
/// MDP/0.1 client of the request sees only the final reply).
pub struct Progress<'a> {
    to: ProgressTo<'a>,
}

enum ProgressTo<'a> {
    /// The handler thread's end of the pair to the loop.
    Pipe(&'a zmq::Socket),
    /// An inline handler's partials, sent when it returns.
    Collect(&'a RefCell<Vec<Body>>),
}

impl std::fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

impl Progress<'_> {
    /// Sends `body` to the client as a partial reply.
    pub fn partial(&self, body: &[Bytes]) {
        match &self.to {
            ProgressTo::Pipe(pipe) => {
                let frames = std::iter::once(PARTIAL).chain(body.iter().map(|f| &f[..]));
                if sockets::retry_eintr(|| pipe.send_multipart(frames.clone(), 0)).is_err() {
                    debug!("the worker loop is gone; partial reply dropped");
                }
            }
            ProgressTo::Collect(partials) => partials.borrow_mut().push(body.to_vec()),
        }
    }
}

/// What a worker did before it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Totals of the session.
    pub counters: core::Counters,
}

/// A Majordomo worker: MDP/0.2 by default, MDP/0.1 on request ([`WorkerConfig::version`]).
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    service: ServiceName,
}

/// Control frames on the pair between the loop and the handler thread.
const RUN: &[u8] = b"R";
const PARTIAL: &[u8] = b"P";
const QUIT: &[u8] = b"Q";

impl Worker {
    /// Checks the config; nothing connects until [`Worker::run`].
    pub fn new(config: WorkerConfig) -> Result<Self> {
        for endpoint in &config.connect {
            sockets::check_endpoint(endpoint)?;
        }
        if config.capacity == 0 || config.capacity > scale0_proto::mdp::MAX_WORKER_CAPACITY {
            return Err(Error::InvalidConfig(format!(
                "a worker's capacity is 1 to {}",
                scale0_proto::mdp::MAX_WORKER_CAPACITY
            )));
        }
        if !config.cluster {
            Group::shares(config.capacity, config.connect.len())
                .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        }
        let service = ServiceName::new(Bytes::from(config.service.clone().into_bytes()))
            .map_err(|_| Error::InvalidServiceName(config.service.clone()))?;
        if service.is_mmi() {
            return Err(Error::InvalidConfig(format!(
                "service {:?} is in the broker's reserved mmi.* namespace",
                config.service
            )));
        }
        Ok(Self { config, service })
    }

    /// Serves requests with `handler` until `shutdown` is triggered.
    pub fn run(self, handler: impl Handler, shutdown: &Shutdown) -> Result<WorkerSummary> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // An inproc broker lives in the shared context, so such a worker stays in it.
        let own_ctx = self.config.grace_ms > 0
            && !self
                .config
                .connect
                .iter()
                .any(|e| e.starts_with("inproc://"));
        let ctx = if own_ctx {
            zmq::Context::new()
        } else {
            sockets::context()
        };
        let pipe = format!(
            "inproc://scale0-worker-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let to_handler = ctx
            .socket(zmq::PAIR)
            .context(|| "creating the handler pipe".into())?;
        // Up to `capacity` requests wait in the pipe; the session bounds them.
        to_handler
            .set_sndhwm(0)
            .context(|| "setting SNDHWM".into())?;
        to_handler
            .bind(&pipe)
            .context(|| format!("binding {pipe}"))?;
        let handler_end = ctx
            .socket(zmq::PAIR)
            .context(|| "creating the handler pipe".into())?;
        handler_end
            .connect(&pipe)
            .context(|| format!("connecting {pipe}"))?;
        let mut inline: Option<Box<dyn Handler>> = None;
        let handler_thread = if self.config.inline {
            inline = Some(Box::new(handler));
            // No thread owns the far end: close it now, or destroying the context at
            // the end waits for it forever.
            drop(handler_end);
            None
        } else {
            Some(
                thread::Builder::new()
                    .name(format!("handler-{}", self.service))
                    .spawn(move || handler_loop(handler, &handler_end))
                    .map_err(|error| Error::Spawn {
                        what: "the handler thread",
                        error,
                    })?,
            )
        };
        let mut to_handler = HandlerEnd {
            ctx,
            pipe: to_handler,
            inline,
        };

        let clock = Clock::new();
        let make = if self.config.cluster {
            Group::cluster
        } else {
            Group::new
        };
        let mut session = make(
            &core::Config {
                service: self.service.clone(),
                heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                heartbeat_liveness: self.config.heartbeat_liveness,
                reconnect_initial_ms: self.config.reconnect_initial_ms,
                reconnect_max_ms: self.config.reconnect_max_ms,
                version: self.config.version,
                capacity: self.config.capacity,
                announce_capacity: false,
                bundle: self.config.bundle,
            },
            self.config.connect.len(),
            clock.now(),
        )
        .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        // One connection per broker, by the index the session uses.
        let mut brokers: Vec<Option<zmq::Socket>> =
            self.config.connect.iter().map(|_| None).collect();
        let result = self.serve(&mut session, &mut brokers, &mut to_handler, clock, shutdown);
        session.shutdown();
        // Best effort goodbye; the brokers also notice silence.
        let _ = self.perform(&mut session, &mut brokers, &mut to_handler, clock);
        let busy = session.is_busy();
        let _ = to_handler.pipe.send(QUIT, zmq::DONTWAIT);
        if !busy && let Some(t) = handler_thread {
            let _ = t.join();
        }
        if own_ctx {
            // Give the last reply and the DISCONNECT a second to leave. Terminating the
            // context waits for every socket in it, so only when the handler thread is
            // gone; a handler still running past the grace period is abandoned.
            for s in brokers.iter_mut().filter_map(Option::take) {
                let _ = s.set_linger(1000);
            }
            let HandlerEnd { mut ctx, pipe, .. } = to_handler;
            drop(pipe);
            if !busy && let Err(e) = ctx.destroy() {
                debug!(error = %e, "closing the worker's context");
            }
        }
        result?;
        info!(service = %self.service, "worker stopped");
        Ok(WorkerSummary {
            counters: session.counters(),
        })
    }

    fn serve(
        &self,
        session: &mut Group,
        brokers: &mut [Option<zmq::Socket>],
        handler: &mut HandlerEnd,
        clock: Clock,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let grace = std::time::Duration::from_millis(self.config.grace_ms);
        loop {
            let now = clock.now();
            if session.poll_timeout().is_some_and(|t| t <= now) {
                session.handle_timeout(now);
            }
            self.perform(session, brokers, handler, clock)?;
            if shutdown.is_triggered() {
                // The requests in hand are finished within the grace period; any the
                // broker still sends (a worker with credit has room) are not started, and
                // go elsewhere once this worker says DISCONNECT.
                if !session.is_draining() && session.is_busy() && !grace.is_zero() {
                    info!(
                        grace_ms = self.config.grace_ms,
                        "stopping once the requests in hand are answered"
                    );
                }
                session.begin_drain(now, grace);
                match session.drained(clock.now()) {
                    Some(Drained::Answered) => break,
                    Some(Drained::GraceOver { unanswered }) => {
                        warn!(
                            unanswered,
                            "grace period over with requests in hand; the broker will send them elsewhere"
                        );
                        break;
                    }
                    None => {}
                }
            }
            let to_handler = &handler.pipe;
            let wait = clock.wait_ms(session.poll_timeout());
            // Only a handler thread with a request in hand can answer on the pipe; until
            // then a lone broker's socket is all there is to wait on, and a plain receive
            // with a timeout takes a waiting message without a system call (see
            // `sockets::recv_timeout`).
            let handler_may_answer = handler.inline.is_none() && session.is_busy();
            if !handler_may_answer && let [Some(s)] = &brokers[..] {
                if let Some(frames) = sockets::recv_timeout(s, wait)? {
                    take_message(session, clock, 0, frames);
                }
                continue;
            }
            let (handler_ready, ready) = poll(to_handler, brokers, wait)?;
            if handler_ready {
                while let Some(mut reply) = sockets::try_recv(to_handler)? {
                    let body = reply.split_off(1.min(reply.len()));
                    if reply.first().is_some_and(|f| f.as_ref() == PARTIAL) {
                        session.partial(body);
                    } else {
                        session.reply(clock.now(), body);
                    }
                }
            }
            for (i, s) in brokers.iter().enumerate() {
                if let Some(s) = s
                    && ready.has(i)
                {
                    while let Some(frames) = sockets::try_recv(s)? {
                        take_message(session, clock, i, frames);
                    }
                }
            }
        }
        Ok(())
    }

    fn perform(
        &self,
        session: &mut Group,
        brokers: &mut [Option<zmq::Socket>],
        handler: &mut HandlerEnd,
        clock: Clock,
    ) -> Result<()> {
        while let Some((i, action)) = session.poll_action() {
            let (Some(broker), Some(endpoint)) = (brokers.get_mut(i), self.config.connect.get(i))
            else {
                continue;
            };
            match action {
                Action::Disconnect => *broker = None,
                Action::Connect => {
                    let s = handler
                        .ctx
                        .socket(zmq::DEALER)
                        .context(|| "creating the worker socket".into())?;
                    s.set_linger(0).context(|| "setting LINGER".into())?;
                    sockets::cap_frames(
                        &s,
                        sockets::frame_bound(self.config.max_message_bytes, self.config.bundle),
                    )?;
                    security::apply_client(&s, self.config.curve.as_ref())?;
                    sockets::connect(&s, endpoint)?;
                    debug!(endpoint = %endpoint, service = %self.service, "connecting");
                    *broker = Some(s);
                }
                Action::Send(frames) => {
                    if let Some(s) = broker.as_ref()
                        && let Err(e) = sockets::send(s, &frames)
                    {
                        debug!(error = %e, endpoint = %endpoint, "send to broker failed");
                    }
                }
                Action::Deliver { body, .. } => {
                    if let Some(h) = handler.inline.as_mut() {
                        let partials = RefCell::new(Vec::new());
                        let progress = Progress {
                            to: ProgressTo::Collect(&partials),
                        };
                        let reply = serve_one(h.as_mut(), body, &progress);
                        for p in partials.into_inner() {
                            session.partial(p);
                        }
                        session.reply(clock.now(), reply);
                        continue;
                    }
                    let mut frames = Vec::with_capacity(body.len() + 1);
                    frames.push(Bytes::from_static(RUN));
                    frames.extend(body);
                    sockets::send(&handler.pipe, &frames)
                        .context(|| "handing a request to the handler".into())?;
                }
            }
        }
        Ok(())
    }
}

/// A message from broker `i` into the session.
fn take_message(session: &mut Group, clock: Clock, i: usize, frames: scale0_proto::Frames) {
    if let Err(e) = session.handle_message(clock.now(), i, frames) {
        warn!(error = %e, broker = i, "malformed message from the broker, ignored");
    }
}

/// Which brokers' sockets have something to read, by index.
enum Ready {
    /// Of a lone broker, without allocating.
    One(bool),
    Many(Vec<bool>),
}

impl Ready {
    fn has(&self, i: usize) -> bool {
        match self {
            Self::One(ready) => i == 0 && *ready,
            Self::Many(ready) => ready.get(i).copied().unwrap_or(false),
        }
    }
}

/// Waits up to `wait` ms for the handler's pipe or any open broker socket.
fn poll(
    to_handler: &zmq::Socket,
    brokers: &[Option<zmq::Socket>],
    wait: i64,
) -> Result<(bool, Ready)> {
    let what = || "polling the worker sockets".into();
    // One broker, the usual case: a fixed array rather than a Vec, since this runs once
    // per request.
    if let [only] = brokers {
        return match only {
            Some(s) => {
                let mut items = [
                    to_handler.as_poll_item(zmq::POLLIN),
                    s.as_poll_item(zmq::POLLIN),
                ];
                sockets::poll(&mut items, wait).context(what)?;
                let [h, b] = &items;
                Ok((h.is_readable(), Ready::One(b.is_readable())))
            }
            None => {
                let mut items = [to_handler.as_poll_item(zmq::POLLIN)];
                sockets::poll(&mut items, wait).context(what)?;
                let [h] = &items;
                Ok((h.is_readable(), Ready::One(false)))
            }
        };
    }
    let open: Vec<usize> = (0..brokers.len())
        .filter(|&i| brokers[i].is_some())
        .collect();
    let mut items: Vec<zmq::PollItem<'_>> = std::iter::once(to_handler.as_poll_item(zmq::POLLIN))
        .chain(
            brokers
                .iter()
                .flatten()
                .map(|s| s.as_poll_item(zmq::POLLIN)),
        )
        .collect();
    sockets::poll(&mut items, wait).context(what)?;
    let mut ready = vec![false; brokers.len()];
    for (k, &i) in open.iter().enumerate() {
        ready[i] = items[k + 1].is_readable();
    }
    Ok((items[0].is_readable(), Ready::Many(ready)))
}

/// Where requests go: the pair to the handler thread, or the handler itself when inline.
struct HandlerEnd {
    ctx: zmq::Context,
    pipe: zmq::Socket,
    inline: Option<Box<dyn Handler>>,
}

/// One request through the handler; a failure becomes the error reply.
fn serve_one(handler: &mut (impl Handler + ?Sized), body: Body, progress: &Progress<'_>) -> Body {
    match handler.handle(body, progress) {
        Ok(body) => body,
        Err(e) => {
            warn!(error = %e, "handler failed; sending an error reply");
            vec![
                Bytes::from_static(crate::ERROR_REPLY_MARKER),
                Bytes::from(e.0.into_bytes()),
            ]
        }
    }
}

/// Runs on the handler thread: one request in, one reply out, until told to quit.
fn handler_loop(mut handler: impl Handler, pipe: &zmq::Socket) {
    loop {
        let Ok(frames) = sockets::retry_eintr(|| pipe.recv_multipart(0)) else {
            return;
        };
        let mut frames = frames.into_iter().map(Bytes::from);
        if frames.next().as_deref() != Some(RUN) {
            return;
        }
        let progress = Progress {
            to: ProgressTo::Pipe(pipe),
        };
        let reply = serve_one(&mut handler, frames.collect(), &progress);
        // The marker frame lets a reply with no body frames still cross the pipe.
        let frames = std::iter::once(RUN).chain(reply.iter().map(|f| &f[..]));
        if sockets::retry_eintr(|| pipe.send_multipart(frames.clone(), 0)).is_err() {
            return;
        }
    }
}
