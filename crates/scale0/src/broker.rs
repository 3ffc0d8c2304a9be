//! The broker's socket loop: one ROUTER, one poll loop, the core does the thinking.

use crate::clock::Clock;
use crate::error::{Result, ZmqContext};
use crate::shutdown::Shutdown;
use crate::sockets;
use scale0_proto::PeerId;
use scale0_proto::broker::{self as core, Counters};
use tracing::{info, warn};

/// Everything a broker needs to run: where to listen and how to behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Endpoints the ROUTER binds, such as `tcp://*:5555`.
    pub bind: Vec<String>,
    /// Heartbeat, liveness and size settings of the state machine.
    pub core: core::Config,
    /// Messages libzmq may queue per peer in each direction before sends fail.
    pub socket_hwm: i32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            bind: vec!["tcp://*:5555".into()],
            core: core::Config::default(),
            socket_hwm: 100_000,
        }
    }
}

/// A broker whose endpoints are bound, ready to [`Broker::run`].
pub struct Broker {
    socket: zmq::Socket,
    endpoints: Vec<String>,
    config: BrokerConfig,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Creates the ROUTER and binds every endpoint of `config`.
    pub fn bind(config: BrokerConfig) -> Result<Self> {
        if config.bind.is_empty() {
            return Err(crate::Error::InvalidConfig(
                "the broker needs at least one endpoint to bind".into(),
            ));
        }
        let socket = sockets::context()
            .socket(zmq::ROUTER)
            .context(|| "creating the broker's ROUTER socket".into())?;
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
        let mut endpoints = Vec::with_capacity(config.bind.len());
        for endpoint in &config.bind {
            endpoints.push(sockets::bind(&socket, endpoint)?);
        }
        Ok(Self {
            socket,
            endpoints,
            config,
        })
    }

    /// The endpoints actually bound, with real ports where `:*` was asked for.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Serves until `shutdown` is triggered; returns the final counters.
    pub fn run(self, shutdown: &Shutdown) -> Result<Counters> {
        let clock = Clock::new();
        let mut core = core::Broker::new(self.config.core.clone(), clock.now());
        info!(endpoints = ?self.endpoints, "broker running");
        while !shutdown.is_triggered() {
            let wait = clock.wait_ms(Some(core.poll_timeout()));
            self.socket
                .poll(zmq::POLLIN, wait)
                .context(|| "polling the broker socket".into())?;
            // Drain everything that is ready, flushing replies as we go so the
            // outgoing queue stays short however deep the backlog.
            while let Some(frames) = sockets::try_recv(&self.socket)? {
                core.handle_message(clock.now(), frames);
                self.flush(&mut core, clock);
            }
            let now = clock.now();
            if core.poll_timeout() <= now {
                core.handle_timeout(now);
            }
            self.flush(&mut core, clock);
        }
        info!("broker stopped");
        Ok(core.counters().clone())
    }

    fn flush(&self, core: &mut core::Broker, clock: Clock) {
        while let Some(t) = core.poll_transmit() {
            match sockets::send(&self.socket, &t.frames) {
                Ok(()) => {}
                Err(zmq::Error::EHOSTUNREACH | zmq::Error::EAGAIN) => {
                    if let Some(peer) = t.frames.first().and_then(|id| PeerId::new(id.clone()).ok())
                    {
                        core.handle_unroutable(clock.now(), &peer);
                    }
                }
                Err(e) => warn!(error = %e, "send failed"),
            }
        }
    }
}
