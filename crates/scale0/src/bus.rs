//! The heartbeat bus over real sockets: the XSUB/XPUB [`Forwarder`], and the [`Node`] that
//! publishes heartbeats through forwarders and keeps the membership table.

use crate::clock::Clock;
use crate::error::{Result, ZmqContext};
use crate::security::{self, CurveClient, CurveServer, ZapHandler};
use crate::shutdown::Shutdown;
use crate::sockets;
use bytes::Bytes;
use scale0_proto::Instant;
use scale0_proto::membership::{self, Event, Heartbeat, Membership, TOPIC};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::info;

/// Where a forwarder listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// XSUB endpoints publishers connect to (the Guide's `tcp://*:5561`).
    pub frontend: Vec<String>,
    /// XPUB endpoints subscribers connect to (`tcp://*:5562`).
    pub backend: Vec<String>,
    /// Messages queued per subscriber before the forwarder drops for it.
    pub socket_hwm: i32,
    /// Largest frame read from a peer, in bytes: a peer that sends a larger one is
    /// disconnected before it is stored (libzmq's ZMQ_MAXMSGSIZE).
    pub max_message_bytes: usize,
    /// Longest subscription (topic prefix) a subscriber may send, in bytes; one that
    /// sends a longer one is disconnected. libzmq stores subscriptions a node per byte and
    /// removes them recursively (a 150 KB one overflowed the stack), and every publisher
    /// behind the forwarder would store it too.
    pub max_subscription_bytes: usize,
    /// CURVE on both sockets, with the nodes' keys allowed.
    pub curve: Option<CurveServer>,
}

/// The default [`ForwarderConfig::max_subscription_bytes`]: far above the bus's own topics
/// (a few bytes) and any the Guide's subscribers use.
pub const DEFAULT_MAX_SUBSCRIPTION_BYTES: usize = 1024;

impl Default for ForwarderConfig {
    fn default() -> Self {
        Self {
            frontend: vec!["tcp://*:5561".into()],
            backend: vec!["tcp://*:5562".into()],
            socket_hwm: 100_000,
            max_message_bytes: scale0_proto::DEFAULT_MAX_MESSAGE_BYTES,
            max_subscription_bytes: DEFAULT_MAX_SUBSCRIPTION_BYTES,
            curve: None,
        }
    }
}

/// What a forwarder passed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Messages from publishers to subscribers.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Subscription changes passed upstream.
    pub subscriptions: u64,
}

/// An XSUB/XPUB forwarder whose endpoints are bound.
pub struct Forwarder {
    xsub: zmq::Socket,
    xpub: zmq::Socket,
    endpoints: (Vec<String>, Vec<String>),
    zap: Option<ZapHandler>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(zap) = self.zap.take() {
            zap.stop(&[&self.xsub, &self.xpub]);
        }
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Creates the sockets and binds every endpoint.
    pub fn bind(config: ForwarderConfig) -> Result<Self> {
        let curve = config.curve.as_ref();
        security::check_endpoints(curve, config.frontend.iter().chain(&config.backend))?;
        let ctx = security::server_context(curve);
        let xsub = ctx
            .socket(zmq::XSUB)
            .context(|| "creating the XSUB".into())?;
        let xpub = ctx
            .socket(zmq::XPUB)
            .context(|| "creating the XPUB".into())?;
        for s in [&xsub, &xpub] {
            s.set_linger(0).context(|| "setting LINGER".into())?;
            s.set_sndhwm(config.socket_hwm)
                .context(|| "setting SNDHWM".into())?;
            s.set_rcvhwm(config.socket_hwm)
                .context(|| "setting RCVHWM".into())?;
        }
        sockets::cap_frames(&xsub, config.max_message_bytes)?;
        // What a subscriber sends is subscriptions: a subscription frame is its flag byte
        // and the topic.
        let subscription_frame = config.max_subscription_bytes.saturating_add(1);
        sockets::cap_frames(&xpub, subscription_frame.min(config.max_message_bytes))?;
        let zap = security::secure(curve, &ctx, &[&xsub, &xpub], &[&xsub, &xpub])?;
        let front = config
            .frontend
            .iter()
            .map(|e| sockets::bind(&xsub, e))
            .collect::<Result<Vec<_>>>()?;
        let back = config
            .backend
            .iter()
            .map(|e| sockets::bind(&xpub, e))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            xsub,
            xpub,
            endpoints: (front, back),
            zap,
        })
    }

    /// The XSUB endpoints, then the XPUB endpoints, as bound.
    pub fn endpoints(&self) -> (&[String], &[String]) {
        (&self.endpoints.0, &self.endpoints.1)
    }

    /// Forwards until `shutdown`; `report` gets the running totals every `every` (if set).
    pub fn run(
        self,
        shutdown: &Shutdown,
        every: Option<Duration>,
        mut report: impl FnMut(&ForwarderStats),
    ) -> Result<ForwarderStats> {
        let mut stats = ForwarderStats::default();
        let mut next_report = every.map(|d| std::time::Instant::now() + d);
        info!(
            frontend = %self.endpoints.0.join(" "),
            backend = %self.endpoints.1.join(" "),
            "forwarder running"
        );
        while !shutdown.is_triggered() {
            let mut items = [
                self.xsub.as_poll_item(zmq::POLLIN),
                self.xpub.as_poll_item(zmq::POLLIN),
            ];
            sockets::poll(&mut items, 100).context(|| "polling the forwarder".into())?;
            while let Some(frames) = sockets::try_recv(&self.xsub)? {
                stats.messages += 1;
                stats.bytes += frames.iter().map(|f| f.len() as u64).sum::<u64>();
                // A subscriber at its high-water mark misses this one, as with any PUB.
                let _ = sockets::send(&self.xpub, &frames);
            }
            while let Some(frames) = sockets::try_recv(&self.xpub)? {
                stats.subscriptions += 1;
                let _ = sockets::send(&self.xsub, &frames);
            }
            if let (Some(at), Some(d)) = (next_report, every)
                && std::time::Instant::now() >= at
            {
                report(&stats);
                next_report = Some(at + d);
            }
        }
        Ok(stats)
    }
}

/// A node of the heartbeat bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's identity; `None` listens without publishing.
    pub shard: Option<u32>,
    /// Forwarder XSUB endpoints to publish to.
    pub publish: Vec<String>,
    /// Forwarder XPUB endpoints to listen to.
    pub subscribe: Vec<String>,
    /// Heartbeat interval in ms.
    pub interval_ms: u64,
    /// Carried in heartbeats.
    pub name: String,
    /// Carried in heartbeats.
    pub role: String,
    /// Carried in heartbeats.
    pub address: String,
    /// Suspect and dead thresholds, and the member bound.
    pub membership: membership::Config,
    /// Largest frame read from a peer, in bytes: a peer that sends a larger one is
    /// disconnected before it is stored (libzmq's ZMQ_MAXMSGSIZE).
    pub max_message_bytes: usize,
    /// CURVE towards forwarders that require it (one server key for all).
    pub curve: Option<CurveClient>,
}

impl NodeConfig {
    /// Defaults for `shard` on a forwarder at localhost.
    pub fn new(shard: Option<u32>) -> Self {
        Self {
            shard,
            publish: vec!["tcp://localhost:5561".into()],
            subscribe: vec!["tcp://localhost:5562".into()],
            interval_ms: 100,
            name: String::new(),
            role: String::new(),
            address: String::new(),
            membership: membership::Config::default(),
            max_message_bytes: scale0_proto::DEFAULT_MAX_MESSAGE_BYTES,
            curve: None,
        }
    }
}

/// What a running node reports.
#[derive(Debug)]
pub enum NodeUpdate<'a> {
    /// A change, with the table after it.
    Event(&'a Event, &'a Membership),
    /// The whole table, periodically, with the time now (to tell how long ago members
    /// were seen).
    Table(&'a Membership, Instant),
}

/// A connected node, ready to [`Node::run`].
pub struct Node {
    publisher: Option<zmq::Socket>,
    subscriber: zmq::Socket,
    config: NodeConfig,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Connects to every forwarder.
    pub fn connect(config: NodeConfig) -> Result<Self> {
        if config.interval_ms == 0 {
            return Err(crate::Error::InvalidConfig(
                "the heartbeat interval must be above 0 ms".into(),
            ));
        }
        let ctx = sockets::context();
        let subscriber = ctx.socket(zmq::SUB).context(|| "creating the SUB".into())?;
        subscriber
            .set_linger(0)
            .context(|| "setting LINGER".into())?;
        subscriber
            .set_subscribe(TOPIC)
            .context(|| "subscribing".into())?;
        sockets::cap_frames(&subscriber, config.max_message_bytes)?;
        security::apply_client(&subscriber, config.curve.as_ref())?;
        for e in &config.subscribe {
            sockets::connect(&subscriber, e)?;
        }
        let publisher = match config.shard {
            None => None,
            Some(_) => {
                let p = ctx.socket(zmq::PUB).context(|| "creating the PUB".into())?;
                p.set_linger(0).context(|| "setting LINGER".into())?;
                security::apply_client(&p, config.curve.as_ref())?;
                for e in &config.publish {
                    sockets::connect(&p, e)?;
                }
                Some(p)
            }
        };
        Ok(Self {
            publisher,
            subscriber,
            config,
        })
    }

    /// Beats and listens until `shutdown`; `on_update` sees every change with the table,
    /// and the whole table every `table_every` if set.
    pub fn run(
        self,
        shutdown: &Shutdown,
        table_every: Option<Duration>,
        mut on_update: impl FnMut(NodeUpdate<'_>),
    ) -> Result<()> {
        let mut next_table = table_every.map(|d| std::time::Instant::now() + d);
        let clock = Clock::new();
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let interval = Duration::from_millis(self.config.interval_ms);
        let mut table = Membership::new(self.config.membership.clone());
        let mut beat = self.config.shard.map(|shard| Heartbeat {
            shard,
            started_ms,
            seq: 0,
            interval_ms: self.config.interval_ms,
            name: self.config.name.clone(),
            role: self.config.role.clone(),
            address: self.config.address.clone(),
        });
        let mut next_beat = clock.now();
        info!(shard = ?self.config.shard, "node running");
        while !shutdown.is_triggered() {
            let now = clock.now();
            if let (Some(hb), Some(p)) = (beat.as_mut(), &self.publisher)
                && now >= next_beat
            {
                hb.seq += 1;
                // A forwarder not yet connected misses this beat; the next one follows.
                let _ = sockets::send(p, &hb.encode());
                next_beat = now + interval;
            }
            let deadline: Option<Instant> =
                [table.poll_timeout(), beat.as_ref().map(|_| next_beat)]
                    .into_iter()
                    .flatten()
                    .min();
            let wait = clock.wait_ms(deadline);
            sockets::poll_in(&self.subscriber, wait).context(|| "polling the node".into())?;
            while let Some(frames) = sockets::try_recv(&self.subscriber)? {
                let frames: Vec<Bytes> = frames;
                table.handle_message(clock.now(), &frames);
            }
            let now = clock.now();
            if table.poll_timeout().is_some_and(|t| t <= now) {
                table.handle_timeout(now);
            }
            while let Some(e) = table.poll_event() {
                on_update(NodeUpdate::Event(&e, &table));
            }
            if let (Some(at), Some(d)) = (next_table, table_every)
                && std::time::Instant::now() >= at
            {
                on_update(NodeUpdate::Table(&table, clock.now()));
                next_table = Some(at + d);
            }
        }
        Ok(())
    }
}
