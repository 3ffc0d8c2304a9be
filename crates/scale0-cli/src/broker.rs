//! `scale0 broker`.

use anyhow::Result;
use bytes::Bytes;
use scale0::proto::ServiceName;
use scale0::{Broker, BrokerConfig};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The core's defaults, which the flags show: stated once, in the core.
fn core() -> scale0::proto::broker::Config {
    scale0::proto::broker::Config::default()
}

/// Flags of `scale0 broker`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Endpoint to bind; repeat for several. `:*` picks a free port.
    #[arg(long, value_name = "ENDPOINT", default_value = scale0::endpoints::BROKER)]
    bind: Vec<String>,
    /// Interval between heartbeats to workers, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = core().heartbeat_interval_ms, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_interval_ms: u64,
    /// Heartbeat intervals an idle worker may stay silent before it is expired.
    #[arg(long, value_name = "N", default_value_t = core().heartbeat_liveness, value_parser = clap::value_parser!(u32).range(1..))]
    heartbeat_liveness: u32,
    /// Largest message accepted, in bytes over all frames; larger ones are dropped.
    #[arg(long, value_name = "BYTES", default_value_t = scale0::proto::DEFAULT_MAX_MESSAGE_BYTES, value_parser = crate::limits::parse_max_message_bytes)]
    max_message_bytes: usize,
    /// Times a request may be handed to a worker before it fails (when workers holding
    /// it die or overrun its deadline).
    #[arg(long, value_name = "N", default_value_t = core().max_attempts, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Longest a worker may hold one request, in milliseconds; then it is disconnected
    /// and the request goes to another worker.
    #[arg(long, value_name = "MS", default_value_t = core().request_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
    /// A per-service request deadline, as NAME=MS; repeat for several services.
    #[arg(long, value_name = "NAME=MS", value_parser = parse_service_timeout)]
    service_timeout: Vec<(ServiceName, u64)>,
    /// Requests that may wait in one service's queue; further ones are refused.
    #[arg(long, value_name = "N", default_value_t = core().max_queue_depth as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_queue_depth: u64,
    /// Longest a request waits for a service that has no worker, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = core().unknown_service_wait_ms)]
    unknown_service_wait_ms: u64,
    /// Services tracked at once; requests and workers for more are refused.
    #[arg(long, value_name = "N", default_value_t = core().max_services as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_services: u64,
    /// How long the answer of a native request is kept for retries of the same id, in ms.
    #[arg(long, value_name = "MS", default_value_t = core().dedupe_window_ms)]
    dedupe_window_ms: u64,
    /// Answers kept for retries at most.
    #[arg(long, value_name = "N", default_value_t = core().max_dedupe_entries as u64)]
    max_dedupe_entries: u64,
    /// Bytes of answers kept for retries at most.
    #[arg(long, value_name = "BYTES", default_value_t = core().max_dedupe_bytes as u64)]
    max_dedupe_bytes: u64,
    /// Durable mode: keep the request log in DIR. Accepted requests are on disk before
    /// they are acknowledged and are served again after a restart; Titanic (RFC 9) is on.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Size at which a log segment is closed and a new one started, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = BrokerConfig::default().store.segment_bytes, value_parser = clap::value_parser!(u64).range(4096..))]
    segment_bytes: u64,
    /// Open a request log damaged in the middle by skipping the damaged records (each
    /// skip is logged); without it such a log stops the broker at start-up.
    #[arg(long, requires = "data_dir")]
    repair_log: bool,
    /// Publish the broker's events (workers ready and gone, services up and down,
    /// redeliveries) on a PUB socket bound here; `scale0 watch` prints them. Repeatable.
    #[arg(long, value_name = "ENDPOINT")]
    events: Vec<String>,
    /// Titanic requests stored at once, pending or answered and not yet closed.
    #[arg(long, value_name = "N", default_value_t = core().max_titanic_requests as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_titanic_requests: u64,
    /// On SIGTERM or SIGINT, how long to keep serving the requests already accepted
    /// (new ones are refused with `shutting_down`) before exiting, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = BrokerConfig::default().grace_ms)]
    grace_ms: u64,
    /// How long the broker keeps checking for its next message before it sleeps, in
    /// microseconds (0 never). Spinning through the short gaps of a busy conversation
    /// saves the wake-up, tens of microseconds on a virtual machine. After 8 fruitless
    /// spins in a row it spins before only one sleep in 64: sparse traffic costs next to
    /// no CPU.
    #[arg(long, value_name = "US", default_value_t = BrokerConfig::default().spin_us, value_parser = clap::value_parser!(u64).range(0..=scale0::MAX_SPIN_US))]
    spin_us: u64,
    #[command(flatten)]
    http: crate::http::HttpArgs,
    #[command(flatten)]
    curve: crate::curve::ServerArgs,
    /// CURVE: the only services a key may use, as a client or a worker, as
    /// KEY=SERVICE[,SERVICE...] where KEY is a name from --curve-allow (or the Z85 key);
    /// repeatable. Keys not named may use every service; `mmi.*` is open to all.
    #[arg(long, value_name = "KEY=SERVICES", value_parser = crate::curve::parse_services)]
    curve_services: Vec<(String, Vec<ServiceName>)>,
    /// Run as a node of a replicated cluster: every node (this one too) as ID=ENDPOINT,
    /// repeated, where ENDPOINT is what that node's cluster socket binds (here) or is
    /// reached at (the others). An odd number, 3 or more. Needs --node-id and --data-dir
    /// (the raft log). The leader serves; the others refuse clients with `not_leader`.
    #[arg(long, value_name = "ID=ENDPOINT", value_parser = parse_node, requires_all = ["node_id", "data_dir"])]
    cluster: Vec<(u64, String)>,
    /// This node's id among the --cluster nodes (never reuse one for a new node).
    #[arg(long, value_name = "ID", requires = "cluster", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: Option<u64>,
    /// The cluster's raft tick, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = scale0::proto::cluster::Config::DEFAULT_TICK_MS, value_parser = clap::value_parser!(u64).range(1..))]
    cluster_tick_ms: u64,
    /// Ticks without word from a leader before a node stands for election (each node adds
    /// up to as many again at random).
    #[arg(long, value_name = "N", default_value_t = scale0::proto::cluster::Config::DEFAULT_ELECTION_TICKS as u64, value_parser = clap::value_parser!(u64).range(3..1000))]
    election_ticks: u64,
    /// This node replaces one whose disk was lost (same --node-id, a new empty
    /// --data-dir): it neither votes nor stands for election until it has heard from
    /// every other node and caught up with the leader, since it cannot know what its lost
    /// self voted for or stored. Start every replacement with it; ignored once the data
    /// directory holds a log (a restart of a node that has joined).
    #[arg(long, requires = "cluster")]
    join: bool,
}

fn parse_node(s: &str) -> Result<(u64, String), String> {
    let (id, endpoint) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=ENDPOINT, got {s:?}"))?;
    let id = id
        .parse::<u64>()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| format!("bad node id {id:?}: expected a number above 0"))?;
    if endpoint.is_empty() {
        return Err(format!("node {id} has no endpoint"));
    }
    Ok((id, endpoint.to_string()))
}

fn parse_service_timeout(s: &str) -> Result<(ServiceName, u64), String> {
    let (name, ms) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected NAME=MS, got {s:?}"))?;
    let name = ServiceName::new(Bytes::copy_from_slice(name.as_bytes()))
        .map_err(|_| format!("bad service name {name:?}: it must be 1 to 255 bytes"))?;
    let ms = ms
        .parse::<u64>()
        .ok()
        .filter(|&ms| ms > 0)
        .ok_or_else(|| format!("bad timeout {ms:?}: expected milliseconds above 0"))?;
    Ok((name, ms))
}

impl Args {
    fn config(self) -> Result<BrokerConfig> {
        let mut config = BrokerConfig {
            bind: self.bind,
            ..BrokerConfig::default()
        };
        config.core.heartbeat_interval_ms = self.heartbeat_interval_ms;
        config.core.heartbeat_liveness = self.heartbeat_liveness;
        config.core.max_message_bytes = self.max_message_bytes;
        config.core.max_attempts = self.max_attempts;
        config.core.request_timeout_ms = self.request_timeout_ms;
        config.core.service_request_timeout_ms = self.service_timeout.into_iter().collect();
        config.core.max_queue_depth = usize::try_from(self.max_queue_depth).unwrap_or(usize::MAX);
        config.core.unknown_service_wait_ms = self.unknown_service_wait_ms;
        config.core.max_services = usize::try_from(self.max_services).unwrap_or(usize::MAX);
        config.core.dedupe_window_ms = self.dedupe_window_ms;
        config.core.max_dedupe_entries =
            usize::try_from(self.max_dedupe_entries).unwrap_or(usize::MAX);
        config.core.max_dedupe_bytes = usize::try_from(self.max_dedupe_bytes).unwrap_or(usize::MAX);
        config.core.max_titanic_requests =
            usize::try_from(self.max_titanic_requests).unwrap_or(usize::MAX);
        config.data_dir = self.data_dir;
        config.events = self.events;
        config.grace_ms = self.grace_ms;
        config.spin_us = self.spin_us;
        config.http = self.http.config()?;
        config.store.segment_bytes = self.segment_bytes;
        config.store.repair = self.repair_log;
        config.curve = self.curve.load()?;
        config.core.access = crate::curve::access(self.curve_services, config.curve.as_ref())?;
        if let Some(id) = self.node_id {
            let mut cluster = scale0::ClusterConfig::new(id, self.cluster);
            cluster.tick_ms = self.cluster_tick_ms;
            cluster.election_ticks = usize::try_from(self.election_ticks).unwrap_or(10);
            cluster.join = self.join;
            config.cluster = Some(cluster);
        }
        Ok(config)
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let broker = Broker::bind(args.config()?)?;
    print_listening(broker.endpoints())?;
    print_listening(broker.events_endpoints())?;
    print_listening(broker.http_endpoint().as_slice())?;
    broker.run(&crate::stop_on_signals()?)?;
    Ok(ExitCode::SUCCESS)
}

/// Every server's first lines on stdout: one `listening <endpoint>` per bound endpoint.
pub(crate) fn print_listening(endpoints: &[String]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for e in endpoints {
        writeln!(out, "listening {e}")?;
    }
    out.flush()?;
    Ok(())
}
