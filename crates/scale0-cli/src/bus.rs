//! `scale0 forwarder` and `scale0 node`: the heartbeat bus.

use crate::broker::print_listening;
use anyhow::Result;
use scale0::proto::membership::{Event, Heartbeat, Membership};
use scale0::{Forwarder, ForwarderConfig, Node, NodeConfig, NodeUpdate, Shutdown};
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `scale0 forwarder`.
#[derive(Debug, clap::Args)]
pub(crate) struct ForwarderArgs {
    /// XSUB endpoint that nodes publish to; repeat for several.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://*:5561")]
    frontend: Vec<String>,
    /// XPUB endpoint that nodes listen to; repeat for several.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://*:5562")]
    backend: Vec<String>,
    /// Print the traffic counts every MS milliseconds on stdout.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    stats_ms: Option<u64>,
    #[command(flatten)]
    limit: crate::limits::MessageLimit,
    /// Longest subscription (topic prefix) a subscriber may send, in bytes; one that sends
    /// a longer one is disconnected.
    #[arg(long, value_name = "BYTES", default_value_t = scale0::DEFAULT_MAX_SUBSCRIPTION_BYTES as u64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    max_subscription_bytes: u64,
    #[command(flatten)]
    curve: crate::curve::ServerArgs,
}

pub(crate) fn forwarder(args: ForwarderArgs) -> Result<ExitCode> {
    let f = Forwarder::bind(ForwarderConfig {
        frontend: args.frontend,
        backend: args.backend,
        max_message_bytes: args.limit.max_message_bytes,
        max_subscription_bytes: usize::try_from(args.max_subscription_bytes).unwrap_or(usize::MAX),
        curve: args.curve.load()?,
        ..ForwarderConfig::default()
    })?;
    let (front, back) = f.endpoints();
    let all: Vec<String> = front.iter().chain(back).cloned().collect();
    print_listening(&all)?;
    f.run(
        &crate::stop_on_signals()?,
        args.stats_ms.map(Duration::from_millis),
        |s| {
            println!(
                "messages {} bytes {} subscriptions {}",
                s.messages, s.bytes, s.subscriptions
            );
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Flags of `scale0 node`.
#[derive(Debug, clap::Args)]
pub(crate) struct NodeArgs {
    /// This node's identity in the cluster; without it the node only listens.
    #[arg(long, value_name = "N")]
    shard: Option<u32>,
    /// A forwarder host: publish to tcp://HOST:5561, listen to tcp://HOST:5562. Repeat
    /// for several forwarders. Without it and without --publish/--subscribe: localhost.
    #[arg(long, value_name = "HOST")]
    forwarder: Vec<String>,
    /// A forwarder XSUB endpoint to publish to; repeat for several.
    #[arg(long, value_name = "ENDPOINT")]
    publish: Vec<String>,
    /// A forwarder XPUB endpoint to listen to; repeat for several.
    #[arg(long, value_name = "ENDPOINT")]
    subscribe: Vec<String>,
    /// Heartbeat interval in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    interval_ms: u64,
    /// Silent intervals (the member's own) before a member is suspect.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    suspect_after: u32,
    /// Silent intervals before a member is dead.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    dead_after: u32,
    /// Members tracked at most.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    max_members: usize,
    /// A name carried in heartbeats (default: the host name and shard).
    #[arg(long)]
    name: Option<String>,
    /// What this node does, carried in heartbeats.
    #[arg(long, default_value = "")]
    role: String,
    /// Where this node can be reached, carried in heartbeats.
    #[arg(long, default_value = "")]
    address: String,
    /// Print events as JSON lines.
    #[arg(long)]
    json: bool,
    /// Also print the whole membership table every MS milliseconds (shard, state, name,
    /// role, address, last seen, intervals missed, heartbeats lost).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    table_ms: Option<u64>,
    #[command(flatten)]
    limit: crate::limits::MessageLimit,
    #[command(flatten)]
    curve: crate::curve::ClientArgs,
}

fn table_lines(table: &Membership, now: scale0::proto::Instant, as_json: bool) -> Vec<String> {
    let rows = table.members().map(|m| {
        let ago = now.saturating_since(m.last_seen).as_millis();
        (m, ago, m.missed(now))
    });
    if as_json {
        let members: Vec<_> = rows
            .map(|(m, ago, missed)| {
                let mut v = member_json(&m.last);
                v["state"] = json!(m.state.label());
                v["last_seen_ms_ago"] = json!(ago);
                v["missed"] = json!(missed);
                v["lost"] = json!(m.lost);
                v
            })
            .collect();
        return vec![json!({"event": "table", "members": members}).to_string()];
    }
    rows.map(|(m, ago, missed)| {
        format!(
            "table shard={} state={} name={:?} role={:?} address={:?} last_seen_ms_ago={ago} missed={missed} lost={}",
            m.last.shard,
            m.state.label(),
            m.last.name,
            m.last.role,
            m.last.address,
            m.lost
        )
    })
    .collect()
}

fn member_json(hb: &Heartbeat) -> serde_json::Value {
    json!({
        "shard": hb.shard, "name": hb.name, "role": hb.role, "address": hb.address,
        "started_ms": hb.started_ms, "interval_ms": hb.interval_ms,
    })
}

fn event_line(e: &Event, table: &Membership, as_json: bool) -> String {
    let alive = table
        .members()
        .filter(|m| m.state == scale0::proto::membership::State::Alive)
        .count();
    if as_json {
        let mut v = match e {
            Event::Joined(hb) => json!({"event": "joined", "member": member_json(hb)}),
            Event::Recovered(hb) => json!({"event": "recovered", "member": member_json(hb)}),
            Event::Suspect { shard, missed } => {
                json!({"event": "suspect", "shard": shard, "missed": missed})
            }
            Event::Dead { shard, missed } => {
                json!({"event": "dead", "shard": shard, "missed": missed})
            }
            Event::Restarted {
                heartbeat,
                previous_started_ms,
            } => json!({"event": "restarted", "member": member_json(heartbeat),
                        "previous_started_ms": previous_started_ms}),
            Event::Conflict { shard, started_ms } => {
                json!({"event": "conflict", "shard": shard, "started_ms": started_ms})
            }
        };
        v["alive"] = json!(alive);
        return v.to_string();
    }
    let what = match e {
        Event::Joined(hb) => format!(
            "joined shard={} name={:?} role={:?} address={:?} started_ms={}",
            hb.shard, hb.name, hb.role, hb.address, hb.started_ms
        ),
        Event::Recovered(hb) => format!("recovered shard={}", hb.shard),
        Event::Suspect { shard, missed } => format!("suspect shard={shard} missed={missed}"),
        Event::Dead { shard, missed } => format!("dead shard={shard} missed={missed}"),
        Event::Restarted {
            heartbeat,
            previous_started_ms,
        } => format!(
            "restarted shard={} started_ms={} previous_started_ms={previous_started_ms}",
            heartbeat.shard, heartbeat.started_ms
        ),
        Event::Conflict { shard, started_ms } => format!(
            "conflict shard={shard} started_ms={},{}",
            started_ms[0], started_ms[1]
        ),
    };
    format!("{what} alive={alive}")
}

pub(crate) fn node(args: NodeArgs) -> Result<ExitCode> {
    let mut config = NodeConfig::new(args.shard);
    if !args.forwarder.is_empty() || !args.publish.is_empty() || !args.subscribe.is_empty() {
        config.publish = args.publish;
        config.subscribe = args.subscribe;
        for host in &args.forwarder {
            config.publish.push(format!("tcp://{host}:5561"));
            config.subscribe.push(format!("tcp://{host}:5562"));
        }
    }
    config.interval_ms = args.interval_ms;
    config.max_message_bytes = args.limit.max_message_bytes;
    config.curve = args.curve.load()?;
    config.membership.suspect_after = args.suspect_after;
    config.membership.dead_after = args.dead_after.max(args.suspect_after);
    config.membership.max_members = args.max_members;
    config.name = args.name.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        match args.shard {
            Some(s) => format!("{}-{s}", host.trim()),
            None => host.trim().to_string(),
        }
    });
    config.role = args.role;
    config.address = args.address;
    let node = Node::connect(config)?;
    let mut out = std::io::stdout().lock();
    let every = args.table_ms.map(Duration::from_millis);
    node.run(&crate::stop_on_signals()?, every, |update| {
        let lines = match update {
            NodeUpdate::Event(e, table) => vec![event_line(e, table, args.json)],
            NodeUpdate::Table(table, now) => table_lines(table, now, args.json),
        };
        // stdout gone (a closed pipe): nothing useful left to do with the lines.
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Flags of `scale0 swarm`.
#[derive(Debug, clap::Args)]
pub(crate) struct SwarmArgs {
    /// Nodes to run in this process.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(2..=100_000))]
    nodes: u32,
    /// Shard of the first node; the others follow.
    #[arg(long, default_value_t = 0)]
    first_shard: u32,
    /// The forwarder's XSUB endpoint.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://localhost:5561")]
    publish: String,
    /// The forwarder's XPUB endpoint.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://localhost:5562")]
    subscribe: String,
    /// Heartbeat interval of every node, in ms.
    #[arg(long, value_name = "MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    interval_ms: u64,
    /// Silent intervals before a member is suspect.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    suspect_after: u32,
    /// Silent intervals before a member is dead.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    dead_after: u32,
    /// How long to measure once every node knows every other, in ms.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    measure_ms: u64,
    /// Silence the first node this long into the measurement, to time its detection.
    #[arg(long, value_name = "MS")]
    kill_after_ms: Option<u64>,
}

/// Detection times in milliseconds, summarised with the library's one quantile rule.
fn quantiles(v: &[u64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut l = scale0::Latencies::default();
    for ms in v {
        l.record(Duration::from_millis(*ms));
    }
    let ms = |q: f64| l.quantile(q).as_millis();
    format!(
        "min {} p50 {} max {} ms ({} nodes)",
        ms(0.0),
        ms(0.5),
        ms(1.0),
        v.len()
    )
}

pub(crate) fn swarm(args: SwarmArgs) -> Result<ExitCode> {
    let config = scale0_bench::SwarmConfig {
        first_shard: args.first_shard,
        nodes: args.nodes,
        publish: args.publish,
        subscribe: args.subscribe,
        interval_ms: args.interval_ms,
        membership: scale0::proto::membership::Config {
            suspect_after: args.suspect_after,
            dead_after: args.dead_after.max(args.suspect_after),
            max_members: 1_000_000,
        },
        measure_ms: args.measure_ms,
        kill_after_ms: args.kill_after_ms,
    };
    let r = scale0_bench::run_swarm(&config, &Shutdown::new())?;
    let lost = r.expected.saturating_sub(r.received);
    println!(
        "nodes {}  converged {} ms  heartbeats sent {}  deliveries {} of {} ({:.3}% lost)",
        r.nodes,
        r.converged_ms,
        r.sent,
        r.received,
        r.expected,
        100.0 * lost as f64 / r.expected.max(1) as f64
    );
    if r.received > r.expected {
        println!(
            "(more deliveries than beats sent while measuring: this process's nodes were \
             behind, their backlog arrived during the measurement; the numbers below then \
             measure this process, not the forwarder)"
        );
    }
    println!("suspect after kill: {}", quantiles(&r.suspect_ms));
    println!("dead after kill: {}", quantiles(&r.dead_ms));
    Ok(ExitCode::SUCCESS)
}
