//! `scale0 queue`.

use crate::broker::print_listening;
use anyhow::Result;
use scale0::{Queue, QueueConfig};
use std::process::ExitCode;

/// The core's defaults, which the flags show.
fn core() -> scale0::proto::queue::Config {
    scale0::proto::queue::Config::default()
}

/// Flags of `scale0 queue`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Endpoint for REQ clients; repeat for several.
    #[arg(long, value_name = "ENDPOINT", default_value = scale0::endpoints::QUEUE_FRONTEND)]
    frontend: Vec<String>,
    /// Endpoint for REP servers; repeat for several.
    #[arg(long, value_name = "ENDPOINT", default_value = scale0::endpoints::QUEUE_BACKEND)]
    backend: Vec<String>,
    /// Endpoint for Paranoid Pirate workers (RFC 6: READY and HEARTBEAT); repeat for
    /// several.
    #[arg(long, value_name = "ENDPOINT", default_value = scale0::endpoints::QUEUE_WORKERS)]
    workers: Vec<String>,
    /// How long a server may take to reply before the request is sent to another, in
    /// milliseconds. Keep it below the clients' own timeout and above the slowest request.
    #[arg(long, value_name = "MS", default_value_t = core().request_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
    /// Sends of one request at most before it is dropped (the client's retry takes over).
    #[arg(long, value_name = "N", default_value_t = core().max_attempts, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Requests that may wait for a server; further ones are dropped.
    #[arg(long, value_name = "N", default_value_t = core().max_queued as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_queued: u64,
    /// Largest request accepted, in bytes over all frames.
    #[arg(long, value_name = "BYTES", default_value_t = scale0::proto::DEFAULT_MAX_MESSAGE_BYTES, value_parser = crate::limits::parse_max_message_bytes)]
    max_message_bytes: usize,
    /// Heartbeat interval towards Paranoid Pirate workers, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = core().heartbeat_interval_ms, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_interval_ms: u64,
    /// Intervals a Paranoid Pirate worker may stay silent before it is presumed dead.
    #[arg(long, value_name = "N", default_value_t = core().heartbeat_liveness, value_parser = clap::value_parser!(u32).range(1..))]
    heartbeat_liveness: u32,
    #[command(flatten)]
    curve: crate::curve::ServerArgs,
    #[command(flatten)]
    http: crate::http::HttpArgs,
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let mut config = QueueConfig {
        frontend: args.frontend,
        backend: args.backend,
        workers: args.workers,
        curve: args.curve.load()?,
        http: args.http.config()?,
        ..QueueConfig::default()
    };
    config.core.request_timeout_ms = args.request_timeout_ms;
    config.core.max_attempts = args.max_attempts;
    config.core.max_queued = usize::try_from(args.max_queued).unwrap_or(usize::MAX);
    config.core.max_message_bytes = args.max_message_bytes;
    config.core.heartbeat_interval_ms = args.heartbeat_interval_ms;
    config.core.heartbeat_liveness = args.heartbeat_liveness;
    let queue = Queue::bind(config)?;
    let e = queue.endpoints();
    let all: Vec<String> = [&e.frontend, &e.backend, &e.workers]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    print_listening(&all)?;
    print_listening(queue.http_endpoint().as_slice())?;
    queue.run(&crate::stop_on_signals()?)?;
    Ok(ExitCode::SUCCESS)
}
