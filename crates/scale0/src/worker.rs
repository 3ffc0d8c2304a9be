//! The worker's socket loop: a DEALER to the broker, and a handler thread behind an
//! `inproc` pair so heartbeats keep flowing while the handler runs.

use crate::clock::Clock;
use crate::error::{Error, Result, ZmqContext};
use crate::shutdown::Shutdown;
use crate::sockets;
use bytes::Bytes;
use scale0_proto::mdp::Version;
use scale0_proto::worker::{self as core, Action, Session};
use scale0_proto::{Body, ServiceName};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use tracing::{debug, info, warn};

/// Where a worker connects, what it serves, and its timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The broker's endpoint, such as `tcp://localhost:5555`.
    pub connect: String,
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
}

impl WorkerConfig {
    /// Defaults for serving `service` from the broker at `connect`.
    pub fn new(connect: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            connect: connect.into(),
            service: service.into(),
            heartbeat_interval_ms: 2500,
            heartbeat_liveness: 3,
            reconnect_initial_ms: 100,
            reconnect_max_ms: 5000,
            version: Version::V2,
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
    pipe: &'a zmq::Socket,
}

impl std::fmt::Debug for Progress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

impl Progress<'_> {
    /// Sends `body` to the client as a partial reply.
    pub fn partial(&self, body: &[Bytes]) {
        let frames = std::iter::once(PARTIAL).chain(body.iter().map(|f| &f[..]));
        if self.pipe.send_multipart(frames, 0).is_err() {
            debug!("the worker loop is gone; partial reply dropped");
        }
    }
}

/// What a worker did before it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Totals of the session.
    pub counters: core::Counters,
}

/// An MDP/0.1 worker.
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
        sockets::check_endpoint(&config.connect)?;
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
        let ctx = sockets::context();
        let pipe = format!(
            "inproc://scale0-worker-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let to_handler = ctx
            .socket(zmq::PAIR)
            .context(|| "creating the handler pipe".into())?;
        to_handler
            .bind(&pipe)
            .context(|| format!("binding {pipe}"))?;
        let handler_end = ctx
            .socket(zmq::PAIR)
            .context(|| "creating the handler pipe".into())?;
        handler_end
            .connect(&pipe)
            .context(|| format!("connecting {pipe}"))?;
        let handler_thread = thread::Builder::new()
            .name(format!("handler-{}", self.service))
            .spawn(move || handler_loop(handler, &handler_end))
            .map_err(|e| Error::InvalidConfig(format!("cannot start the handler thread: {e}")))?;

        let clock = Clock::new();
        let mut session = Session::new(
            core::Config {
                service: self.service.clone(),
                heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                heartbeat_liveness: self.config.heartbeat_liveness,
                reconnect_initial_ms: self.config.reconnect_initial_ms,
                reconnect_max_ms: self.config.reconnect_max_ms,
                version: self.config.version,
            },
            clock.now(),
        );
        let mut broker: Option<zmq::Socket> = None;
        let result = self.serve(&mut session, &mut broker, &to_handler, clock, shutdown);
        session.shutdown();
        // Best effort goodbye; the broker also notices silence.
        let _ = self.perform(&mut session, &mut broker, &to_handler);
        let busy = session.is_busy();
        let _ = to_handler.send(QUIT, zmq::DONTWAIT);
        if !busy {
            let _ = handler_thread.join();
        }
        result?;
        info!(service = %self.service, "worker stopped");
        Ok(WorkerSummary {
            counters: session.counters().clone(),
        })
    }

    fn serve(
        &self,
        session: &mut Session,
        broker: &mut Option<zmq::Socket>,
        to_handler: &zmq::Socket,
        clock: Clock,
        shutdown: &Shutdown,
    ) -> Result<()> {
        while !shutdown.is_triggered() {
            let now = clock.now();
            if session.poll_timeout().is_some_and(|t| t <= now) {
                session.handle_timeout(now);
            }
            self.perform(session, broker, to_handler)?;
            let wait = clock.wait_ms(session.poll_timeout());
            // A fixed array rather than a Vec: this runs once per request.
            let (handler_ready, broker_ready) = match broker.as_ref() {
                Some(s) => {
                    let mut items = [
                        to_handler.as_poll_item(zmq::POLLIN),
                        s.as_poll_item(zmq::POLLIN),
                    ];
                    zmq::poll(&mut items, wait).context(|| "polling the worker sockets".into())?;
                    let [h, b] = &items;
                    (h.is_readable(), b.is_readable())
                }
                None => {
                    let mut items = [to_handler.as_poll_item(zmq::POLLIN)];
                    zmq::poll(&mut items, wait).context(|| "polling the worker sockets".into())?;
                    let [h] = &items;
                    (h.is_readable(), false)
                }
            };
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
            if broker_ready && let Some(s) = broker.as_ref() {
                while let Some(frames) = sockets::try_recv(s)? {
                    if let Err(e) = session.handle_message(clock.now(), frames) {
                        warn!(error = %e, "malformed message from the broker, ignored");
                    }
                }
            }
        }
        Ok(())
    }

    fn perform(
        &self,
        session: &mut Session,
        broker: &mut Option<zmq::Socket>,
        to_handler: &zmq::Socket,
    ) -> Result<()> {
        while let Some(action) = session.poll_action() {
            match action {
                Action::Disconnect => *broker = None,
                Action::Connect => {
                    let s = sockets::context()
                        .socket(zmq::DEALER)
                        .context(|| "creating the worker socket".into())?;
                    s.set_linger(0).context(|| "setting LINGER".into())?;
                    sockets::connect(&s, &self.config.connect)?;
                    debug!(endpoint = %self.config.connect, service = %self.service, "connecting");
                    *broker = Some(s);
                }
                Action::Send(frames) => {
                    if let Some(s) = broker.as_ref()
                        && let Err(e) = sockets::send(s, &frames)
                    {
                        debug!(error = %e, "send to broker failed");
                    }
                }
                Action::Deliver { body, .. } => {
                    let mut frames = Vec::with_capacity(body.len() + 1);
                    frames.push(Bytes::from_static(RUN));
                    frames.extend(body);
                    sockets::send(to_handler, &frames)
                        .context(|| "handing a request to the handler".into())?;
                }
            }
        }
        Ok(())
    }
}

/// Runs on the handler thread: one request in, one reply out, until told to quit.
fn handler_loop(mut handler: impl Handler, pipe: &zmq::Socket) {
    loop {
        let Ok(frames) = pipe.recv_multipart(0) else {
            return;
        };
        let mut frames = frames.into_iter().map(Bytes::from);
        if frames.next().as_deref() != Some(RUN) {
            return;
        }
        let progress = Progress { pipe };
        let reply = match handler.handle(frames.collect(), &progress) {
            Ok(body) => body,
            Err(e) => {
                warn!(error = %e, "handler failed; sending an error reply");
                vec![
                    Bytes::from_static(crate::ERROR_REPLY_MARKER),
                    Bytes::from(e.0.into_bytes()),
                ]
            }
        };
        // The marker frame lets a reply with no body frames still cross the pipe.
        let frames = std::iter::once(RUN).chain(reply.iter().map(|f| &f[..]));
        if pipe.send_multipart(frames, 0).is_err() {
            return;
        }
    }
}
