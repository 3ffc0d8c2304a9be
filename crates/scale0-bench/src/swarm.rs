//! The bus swarm: many heartbeat nodes in one thread, to load a forwarder the way a large
//! cluster would (`scale0 swarm`).

use scale0::sockets::{self, Clock};
use scale0::{Result, Shutdown, ZmqContext};
use scale0_proto::Instant;
use scale0_proto::membership::{self, Event, Heartbeat, Membership, TOPIC};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::info;

/// Many nodes in one thread, to load a forwarder the way a large cluster would: each node
/// has its own PUB, its own SUB and its own membership table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmConfig {
    /// Shard of the first node; the others follow.
    pub first_shard: u32,
    /// How many nodes.
    pub nodes: u32,
    /// The forwarder's XSUB endpoint.
    pub publish: String,
    /// The forwarder's XPUB endpoint.
    pub subscribe: String,
    /// Heartbeat interval of every node, in ms.
    pub interval_ms: u64,
    /// Suspect and dead thresholds.
    pub membership: membership::Config,
    /// How long to run after every node knows every other, in ms.
    pub measure_ms: u64,
    /// Stop the first node's heartbeats this long into the measurement, to time how fast
    /// the others declare it dead.
    pub kill_after_ms: Option<u64>,
}

/// What a swarm measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SwarmReport {
    /// Nodes.
    pub nodes: u32,
    /// From start until every node had heard every other, in ms.
    pub converged_ms: u64,
    /// Heartbeats published during the measurement.
    pub sent: u64,
    /// Deliveries expected during the measurement (each beat to every node).
    pub expected: u64,
    /// Deliveries that arrived.
    pub received: u64,
    /// Per surviving node, ms from the kill to its `suspect` event for the killed node.
    pub suspect_ms: Vec<u64>,
    /// Per surviving node, ms from the kill to its `dead` event for the killed node.
    pub dead_ms: Vec<u64>,
}

/// Sockets per context: libzmq refuses more than 1023 sockets in one context (its
/// ZMQ_MAX_SOCKETS default), so a large swarm spreads over several.
const NODES_PER_CONTEXT: u32 = 400;

/// Runs a swarm until it has measured; see [`SwarmConfig`].
pub fn run_swarm(config: &SwarmConfig, shutdown: &Shutdown) -> Result<SwarmReport> {
    let clock = Clock::new();
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut contexts = Vec::new();
    struct Member {
        publisher: zmq::Socket,
        subscriber: zmq::Socket,
        table: Membership,
        beat: Heartbeat,
        next_beat: Instant,
        knows_all: bool,
    }
    let mut nodes = Vec::new();
    for i in 0..config.nodes {
        if i % NODES_PER_CONTEXT == 0 {
            contexts.push(zmq::Context::new());
        }
        let Some(ctx) = contexts.last() else {
            break;
        };
        let publisher = ctx.socket(zmq::PUB).context(|| "creating a PUB".into())?;
        let subscriber = ctx.socket(zmq::SUB).context(|| "creating a SUB".into())?;
        for s in [&publisher, &subscriber] {
            s.set_linger(0).context(|| "setting LINGER".into())?;
        }
        subscriber
            .set_subscribe(TOPIC)
            .context(|| "subscribing".into())?;
        sockets::connect(&publisher, &config.publish)?;
        sockets::connect(&subscriber, &config.subscribe)?;
        let shard = config.first_shard.saturating_add(i);
        // Spread the beats over the interval, as independent nodes would be.
        let phase = Duration::from_millis(
            config.interval_ms * u64::from(i) / u64::from(config.nodes.max(1)),
        );
        nodes.push(Member {
            publisher,
            subscriber,
            table: Membership::new(config.membership.clone()),
            beat: Heartbeat {
                shard,
                started_ms,
                seq: 0,
                interval_ms: config.interval_ms,
                name: format!("swarm-{shard}"),
                role: "swarm".into(),
                address: String::new(),
            },
            next_beat: clock.now() + phase,
            knows_all: false,
        });
    }
    let n = nodes.len();
    let interval = Duration::from_millis(config.interval_ms.max(1));
    let mut report = SwarmReport {
        nodes: config.nodes,
        ..SwarmReport::default()
    };
    let start = clock.now();
    let mut measure_from: Option<Instant> = None;
    let mut killed_at: Option<Instant> = None;
    let victim = config.first_shard;
    while !shutdown.is_triggered() {
        let now = clock.now();
        if let Some(from) = measure_from {
            if now >= from + Duration::from_millis(config.measure_ms) {
                break;
            }
            if killed_at.is_none()
                && config
                    .kill_after_ms
                    .is_some_and(|k| now >= from + Duration::from_millis(k))
            {
                killed_at = Some(now);
            }
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            if now < node.next_beat || (i == 0 && killed_at.is_some()) {
                continue;
            }
            node.beat.seq += 1;
            if sockets::send(&node.publisher, &node.beat.encode()).is_ok() && measure_from.is_some()
            {
                report.sent += 1;
                report.expected += n as u64;
            }
            node.next_beat = now + interval;
        }
        let mut items: Vec<zmq::PollItem<'_>> = nodes
            .iter()
            .map(|m| m.subscriber.as_poll_item(zmq::POLLIN))
            .collect();
        sockets::poll(&mut items, 1).context(|| "polling the swarm".into())?;
        let ready: Vec<bool> = items.iter().map(zmq::PollItem::is_readable).collect();
        drop(items);
        let now = clock.now();
        let mut all_know = true;
        for (i, node) in nodes.iter_mut().enumerate() {
            if ready.get(i).copied().unwrap_or(false) {
                while let Some(frames) = sockets::try_recv(&node.subscriber)? {
                    if measure_from.is_some() {
                        report.received += 1;
                    }
                    node.table.handle_message(now, &frames);
                }
            }
            if node.table.poll_timeout().is_some_and(|t| t <= now) {
                node.table.handle_timeout(now);
            }
            while let Some(e) = node.table.poll_event() {
                let since_kill = killed_at.map(|k| now.saturating_since(k).as_millis() as u64);
                match e {
                    Event::Suspect { shard, .. } if shard == victim && i != 0 => {
                        if let Some(ms) = since_kill {
                            report.suspect_ms.push(ms);
                        }
                    }
                    Event::Dead { shard, .. } if shard == victim && i != 0 => {
                        if let Some(ms) = since_kill {
                            report.dead_ms.push(ms);
                        }
                    }
                    _ => {}
                }
            }
            if !node.knows_all {
                node.knows_all = node.table.members().count() >= n;
            }
            all_know &= node.knows_all;
        }
        if measure_from.is_none() && all_know {
            measure_from = Some(now);
            report.converged_ms = now.saturating_since(start).as_millis() as u64;
            info!(nodes = n, ms = report.converged_ms, "swarm converged");
        }
    }
    Ok(report)
}
