//! `scale0 worker`.

use crate::handlers;
use anyhow::{Context, Result};
use clap::ArgGroup;
use scale0::{Handler, Worker, WorkerConfig};
use std::process::ExitCode;
use std::thread;

/// Flags of `scale0 worker`.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("handler").required(true).args(["echo", "sha1", "sleep_ms", "command"])))]
pub(crate) struct Args {
    /// The broker to serve. Repeat it (or give a comma-separated list) to serve several
    /// independent brokers at once: the worker registers with each, and --capacity is
    /// split between them (so it must be at least their number; see --cluster).
    #[arg(long, value_name = "ENDPOINT", value_delimiter = ',', default_value = scale0::endpoints::BROKER_CONNECT)]
    connect: Vec<String>,
    /// The --connect endpoints are the nodes of one cluster (`scale0 broker --cluster`),
    /// not independent brokers: each node is given the whole --capacity, since only the
    /// leader hands out requests.
    #[arg(long)]
    cluster: bool,
    /// The service to offer (1 to 255 bytes, not `mmi.*`).
    #[arg(long, value_name = "NAME")]
    service: String,
    /// Reply with the request unchanged.
    #[arg(long)]
    echo: bool,
    /// Reply with the hex SHA-1 of the request.
    #[arg(long)]
    sha1: bool,
    /// Sleep this many milliseconds, then echo.
    #[arg(long, value_name = "MS")]
    sleep_ms: Option<u64>,
    /// Run this command per request: the request on its stdin, its stdout is the reply.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
    /// Independent workers to run in this process, each with its own connection.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Requests the brokers may send each worker before it replies; they are handled one
    /// after another. Above 1 a fast handler never waits for its next request; a scale0
    /// broker sends a worker more than one only when all its service's workers hold
    /// something. It adds a `capacity=N` frame to READY (other brokers ignore it). With
    /// several brokers each gets its share (8 over 3: 3, 3 and 2).
    #[arg(long, value_name = "N", default_value_t = scale0::proto::worker::Config::DEFAULT_CAPACITY, value_parser = clap::value_parser!(u32).range(1..=1024))]
    capacity: u32,
    /// The Majordomo dialect to speak: `0.2` (RFC 18), `0.1` (RFC 7), or `0.2-delimited`
    /// (MDP/0.2 with an empty first frame, as majortomo's and zeromq/majordomo's brokers
    /// expect).
    #[arg(long, value_name = "VERSION", value_enum, default_value_t = Mdp::V2)]
    mdp: Mdp,
    /// Interval between heartbeats to the broker, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = scale0::proto::DEFAULT_HEARTBEAT_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_interval_ms: u64,
    /// Heartbeat intervals of broker silence before reconnecting.
    #[arg(long, value_name = "N", default_value_t = scale0::proto::DEFAULT_HEARTBEAT_LIVENESS, value_parser = clap::value_parser!(u32).range(1..))]
    heartbeat_liveness: u32,
    /// Run the handler on the socket thread: faster for handlers of microseconds (such as
    /// --echo or --sha1), but nothing heartbeats while it runs, so it must finish well
    /// within the heartbeat interval times the broker's liveness.
    #[arg(long)]
    inline: bool,
    /// Do not ask for bundles (READY's `bundle=1`): with a capacity above 1 a scale0
    /// broker otherwise sends what it has for this worker as one message, and the worker
    /// answers the same way (docs/protocol.md, "Bundles").
    #[arg(long)]
    no_bundle: bool,
    /// On SIGTERM or SIGINT, how long a worker busy with a request goes on to send its
    /// reply before it disconnects, in milliseconds (0: at once; the broker re-sends it).
    #[arg(long, value_name = "MS", default_value_t = scale0::DEFAULT_GRACE_MS)]
    grace_ms: u64,
    #[command(flatten)]
    limit: crate::limits::MessageLimit,
    #[command(flatten)]
    curve: crate::curve::ClientArgs,
}

/// A Majordomo dialect, as `--mdp` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mdp {
    #[value(name = "0.1")]
    V1,
    #[value(name = "0.2")]
    V2,
    #[value(name = "0.2-delimited")]
    V2Delimited,
}

impl From<Mdp> for scale0::proto::mdp::Version {
    fn from(m: Mdp) -> Self {
        match m {
            Mdp::V1 => Self::V1,
            Mdp::V2 => Self::V2,
            Mdp::V2Delimited => Self::V2Delimited,
        }
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let mut config = WorkerConfig::new(String::new(), args.service.clone());
    config.connect = args.connect.clone();
    config.version = args.mdp.into();
    config.heartbeat_interval_ms = args.heartbeat_interval_ms;
    config.heartbeat_liveness = args.heartbeat_liveness;
    config.inline = args.inline;
    config.capacity = args.capacity;
    config.bundle = !args.no_bundle;
    config.cluster = args.cluster;
    config.grace_ms = args.grace_ms;
    config.max_message_bytes = args.limit.max_message_bytes;
    config.curve = args.curve.load()?;
    // Validate once, before any thread starts.
    Worker::new(config.clone())?;
    let shutdown = crate::stop_on_signals()?;
    let mut threads = Vec::new();
    for i in 0..args.concurrency {
        let config = config.clone();
        let shutdown = shutdown.clone();
        let handler = make_handler(&args);
        threads.push(
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || Worker::new(config)?.run(handler, &shutdown))
                .context("starting a worker thread")?,
        );
    }
    for t in threads {
        match t.join() {
            Ok(result) => {
                result?;
            }
            Err(_) => anyhow::bail!("a worker thread panicked"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn make_handler(
    args: &Args,
) -> Box<dyn FnMut(scale0::proto::Body) -> Result<scale0::proto::Body, scale0::HandlerError> + Send>
{
    if args.echo {
        Box::new(handlers::echo)
    } else if args.sha1 {
        Box::new(handlers::sha1)
    } else if let Some(ms) = args.sleep_ms {
        Box::new(handlers::sleep(ms))
    } else {
        Box::new(handlers::command(args.command.clone()))
    }
}

// Boxed closures are handlers too.
const _: fn() = || {
    fn assert_handler<H: Handler>() {}
    assert_handler::<
        Box<
            dyn FnMut(scale0::proto::Body) -> Result<scale0::proto::Body, scale0::HandlerError>
                + Send,
        >,
    >();
};
