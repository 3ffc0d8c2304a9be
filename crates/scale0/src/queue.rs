//! The queue device's socket loop: a ROUTER for REQ clients, a DEALER for REP servers (with
//! a socket monitor counting them), a ROUTER for Paranoid Pirate workers.

use crate::clock::Clock;
use crate::error::{Result, ZmqContext};
use crate::http::{HttpConfig, HttpServer, Page};
use crate::security::{self, CurveServer, ZapHandler};
use crate::shutdown::Shutdown;
use crate::sockets::{self, ConnectionCounter};
use scale0_proto::queue::{self as core, Counters, Dest};
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// How often the HTTP endpoint's status document is rendered.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);

/// Where the queue listens and how it behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Endpoints for REQ clients (the Guide's `tcp://*:5559`).
    pub frontend: Vec<String>,
    /// Endpoints for REP servers (the Guide's `tcp://*:5560`).
    pub backend: Vec<String>,
    /// Endpoints for Paranoid Pirate workers (the Guide's `tcp://*:5556`); empty for none.
    pub workers: Vec<String>,
    /// Timeouts, attempts and bounds of the state machine.
    pub core: core::Config,
    /// Messages libzmq may queue per peer in each direction.
    pub socket_hwm: i32,
    /// CURVE on all three sockets, with the clients', servers' and workers' keys allowed.
    pub curve: Option<CurveServer>,
    /// The HTTP endpoint: the queue's dashboard at `/` and `/api/status`; `None` for none.
    pub http: Option<HttpConfig>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            frontend: vec![crate::endpoints::QUEUE_FRONTEND.into()],
            backend: vec![crate::endpoints::QUEUE_BACKEND.into()],
            workers: vec![crate::endpoints::QUEUE_WORKERS.into()],
            core: core::Config::default(),
            socket_hwm: 100_000,
            curve: None,
            http: None,
        }
    }
}

/// The endpoints a queue actually bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEndpoints {
    /// For REQ clients.
    pub frontend: Vec<String>,
    /// For REP servers.
    pub backend: Vec<String>,
    /// For Paranoid Pirate workers.
    pub workers: Vec<String>,
}

/// A queue whose endpoints are bound, ready to [`Queue::run`].
pub struct Queue {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    workers: zmq::Socket,
    servers: ConnectionCounter,
    endpoints: QueueEndpoints,
    config: QueueConfig,
    zap: Option<ZapHandler>,
    http: Option<HttpServer>,
}

impl Drop for Queue {
    fn drop(&mut self) {
        sockets::stop_monitor(&self.backend);
        if let Some(zap) = self.zap.take() {
            zap.stop(&[&self.frontend, &self.workers]);
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

fn bind_all(s: &zmq::Socket, endpoints: &[String]) -> Result<Vec<String>> {
    endpoints.iter().map(|e| sockets::bind(s, e)).collect()
}

impl Queue {
    /// Creates the three sockets and binds every endpoint.
    pub fn bind(config: QueueConfig) -> Result<Self> {
        if config.frontend.is_empty() || config.backend.is_empty() {
            return Err(crate::Error::InvalidConfig(
                "the queue needs a frontend and a backend endpoint".into(),
            ));
        }
        let curve = config.curve.as_ref();
        security::check_endpoints(
            curve,
            config
                .frontend
                .iter()
                .chain(&config.backend)
                .chain(&config.workers),
        )?;
        let ctx = security::server_context(curve);
        let hwm = config.socket_hwm;
        // Up to twice the bound a frame is read (and the request refused and counted); a
        // larger one ends its connection unread.
        let cap = config.core.max_message_bytes.saturating_mul(2);
        let socket = |kind, what| -> Result<zmq::Socket> {
            let s = sockets::plain_socket(&ctx, kind, hwm, what)?;
            sockets::cap_frames(&s, cap)?;
            Ok(s)
        };
        let mut frontend = socket(zmq::ROUTER, "frontend")?;
        // Clients and workers whose connection ends are reported to the core as
        // [id, empty]: a departed client's requests are not sent (again).
        zmq_draft::notify_disconnects(&mut frontend).context(|| "setting ROUTER_NOTIFY".into())?;
        // Replies to a client that left fail loudly instead of vanishing.
        frontend
            .set_router_mandatory(true)
            .context(|| "setting ROUTER_MANDATORY".into())?;
        let backend = socket(zmq::DEALER, "backend")?;
        let mut workers = socket(zmq::ROUTER, "workers")?;
        zmq_draft::notify_disconnects(&mut workers).context(|| "setting ROUTER_NOTIFY".into())?;
        workers
            .set_router_mandatory(true)
            .context(|| "setting ROUTER_MANDATORY".into())?;
        // The REP servers cannot be told apart, only counted: connections accepted and
        // lost on the backend. That monitor also logs the backend's refused handshakes.
        let servers = ConnectionCounter::watch(&ctx, &backend, "backend", curve.is_some())?;
        // The handler is up before anything can connect.
        let zap = security::secure(
            curve,
            &ctx,
            &[&frontend, &backend, &workers],
            &[&frontend, &workers],
        )?;
        let endpoints = QueueEndpoints {
            frontend: bind_all(&frontend, &config.frontend)?,
            backend: bind_all(&backend, &config.backend)?,
            workers: bind_all(&workers, &config.workers)?,
        };
        let http = config
            .http
            .clone()
            .map(|c| HttpServer::bind(c, Page::Queue))
            .transpose()?;
        Ok(Self {
            frontend,
            backend,
            workers,
            servers,
            endpoints,
            config,
            zap,
            http,
        })
    }

    /// The endpoints actually bound.
    pub fn endpoints(&self) -> &QueueEndpoints {
        &self.endpoints
    }

    /// The dashboard's URL (`http://HOST:PORT/`), if `http` was set.
    pub fn http_endpoint(&self) -> Option<String> {
        self.http.as_ref().map(HttpServer::url)
    }

    /// Serves until `shutdown` is triggered; returns the final counters.
    pub fn run(mut self, shutdown: &Shutdown) -> Result<Counters> {
        let clock = Clock::new();
        let started = Instant::now();
        let mut next_snapshot = started;
        if let Some(h) = &mut self.http {
            h.start()?;
        }
        let mut core = core::Queue::new(self.config.core.clone(), clock.now());
        info!(
            frontend = %self.endpoints.frontend.join(" "),
            backend = %self.endpoints.backend.join(" "),
            workers = %self.endpoints.workers.join(" "),
            "queue running"
        );
        while !shutdown.is_triggered() {
            let mut wait = clock.wait_ms(core.poll_timeout());
            if let Some(h) = &self.http {
                if Instant::now() >= next_snapshot {
                    h.publish_status(status_json(&core, self.servers.count(), started));
                    next_snapshot = Instant::now() + SNAPSHOT_EVERY;
                }
                let until = next_snapshot.saturating_duration_since(Instant::now());
                wait = wait.min(i64::try_from(until.as_millis()).unwrap_or(wait));
            }
            let mut items = [
                self.frontend.as_poll_item(zmq::POLLIN),
                self.backend.as_poll_item(zmq::POLLIN),
                self.workers.as_poll_item(zmq::POLLIN),
                self.servers.poll_item(),
            ];
            sockets::poll(&mut items, wait).context(|| "polling the queue sockets".into())?;
            if let Some(n) = self.servers.update()? {
                core.servers_connected(clock.now(), n);
            }
            while let Some(frames) = sockets::try_recv(&self.backend)? {
                core.handle_server(clock.now(), frames);
            }
            while let Some(frames) = sockets::try_recv(&self.workers)? {
                core.handle_worker(clock.now(), frames);
            }
            self.flush(&mut core, clock);
            while let Some(frames) = sockets::try_recv(&self.frontend)? {
                core.handle_client(clock.now(), frames);
                self.flush(&mut core, clock);
            }
            let now = clock.now();
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            self.flush(&mut core, clock);
        }
        info!("queue stopped");
        Ok(core.counters().clone())
    }

    fn flush(&self, core: &mut core::Queue, clock: Clock) {
        while let Some(t) = core.poll_transmit() {
            let socket = match t.dest {
                Dest::Frontend => &self.frontend,
                Dest::Servers => &self.backend,
                Dest::Workers => &self.workers,
            };
            match sockets::send(socket, &t.frames) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) if t.dest == Dest::Servers => {
                    // No server pipe could take it after all: it waits again.
                    if let Some(tag) = t.tag() {
                        core.server_send_failed(clock.now(), tag);
                    }
                }
                Err(zmq::Error::EHOSTUNREACH | zmq::Error::EAGAIN) if t.dest == Dest::Workers => {
                    if let Some(peer) = t.peer() {
                        core.handle_unroutable_worker(clock.now(), &peer);
                    }
                }
                // A client that left: its REQ socket is gone, and its reply with it.
                Err(e) => debug!(error = %e, dest = ?t.dest, "send failed"),
            }
        }
    }
}

/// The queue's `/api/status` document (docs/http.md).
fn status_json(core: &core::Queue, servers: usize, started: Instant) -> String {
    let c = core.counters();
    let dropped: serde_json::Map<String, serde_json::Value> = core::Drop::ALL
        .iter()
        .map(|d| (d.label().to_string(), c.dropped(*d).into()))
        .collect();
    serde_json::json!({
        "version": 1,
        "kind": "queue",
        "uptime_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "servers": servers,
        "workers": core.workers(),
        "waiting": core.waiting(),
        "in_flight": core.in_flight(),
        "totals": {
            "requests": c.requests,
            "replies": c.replies,
            "sent": c.sent,
            "resent": c.resent,
            "workers_ready": c.workers_ready,
            "workers_lost": c.workers_lost,
        },
        "dropped": dropped,
        "cluster": null,
    })
    .to_string()
}
