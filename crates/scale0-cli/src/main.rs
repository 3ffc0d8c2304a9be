//! The `scale0` command: one subcommand per file, each with its own `Args` and `run`.

mod bench;
mod broker;
mod bus;
mod config;
mod curve;
mod demo;
mod handlers;
mod http;
mod limits;
mod pipeline;
mod queue;
mod request;
mod status;
mod watch;
mod worker;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Distributed work over ZeroMQ: a Majordomo broker, workers and clients.
#[derive(Debug, Parser)]
#[command(name = "scale0", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Logs (stderr) as one JSON object per line, for log collectors; `RUST_LOG` sets
    /// the level as usual (default info).
    #[arg(long, global = true)]
    log_json: bool,
    /// Read options from this TOML file: each key is a flag of the command without its
    /// dashes (`scale0 config --default COMMAND` prints one); flags given here win.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Majordomo broker (MDP/0.1 and 0.2, with MMI) on a ROUTER socket.
    Broker(broker::Args),
    /// Serve a service: run a built-in handler or a command for each request.
    Worker(worker::Args),
    /// Send requests to a service through a broker and print the replies.
    Request(request::Args),
    /// Broker, sha1 workers and a client in one process, on loopback: see it work.
    Demo(demo::Args),
    /// Queue device for unmodified REQ clients and REP servers (and Paranoid Pirate
    /// workers), re-sending a request whose server died.
    Queue(queue::Args),
    /// Heartbeat-bus forwarder: XSUB in, XPUB out, subscriptions passed upstream.
    Forwarder(bus::ForwarderArgs),
    /// A node of the heartbeat bus: publishes heartbeats, prints membership events.
    Node(bus::NodeArgs),
    /// Many heartbeat-bus nodes in one process, to measure a forwarder at scale.
    Swarm(bus::SwarmArgs),
    /// Ventilator: push jobs (lines of stdin or a file) round robin to connected workers.
    Vent(pipeline::VentArgs),
    /// Pipeline worker: pull jobs from ventilators or maps, run a task, push results.
    Work(pipeline::WorkArgs),
    /// Sink: collect results pushed by workers and print them.
    Sink(pipeline::SinkArgs),
    /// Parallel map: run every input line as a job on all connected workers, with
    /// timeouts and retries; results in input order.
    Map(pipeline::MapArgs),
    /// Print a broker's events (workers, services, redeliveries) from its --events PUB.
    Watch(watch::Args),
    /// Ask a broker what it is doing: services, queues, workers (idle, busy, since),
    /// totals, uptime (over MMI, `mmi.status`).
    Status(status::Args),
    /// Measure: PUSH/PULL, PUB/SUB, request/reply direct and through the broker, the raw
    /// pipeline and the map, each repeated, medians in a table (or JSON).
    Bench(bench::Args),
    /// Print a configuration file for a command, every option at its default.
    Config(config::Args),
    /// Write a CURVE key pair: NAME.key (public, for the peers that must trust it) and
    /// NAME.key_secret (private).
    Keygen(curve::KeygenArgs),
    /// One client process of `scale0 bench broker --processes`.
    #[command(hide = true)]
    BenchClient(bench::ClientArgs),
}

/// The shutdown that SIGTERM and SIGINT trigger: servers stop cleanly (a second signal
/// ends the process at once). Installed once, before a server binds, so a supervisor
/// that signals as soon as it reads `listening` never meets the default action.
pub(crate) fn stop_on_signals() -> anyhow::Result<scale0::Shutdown> {
    static SIGNALLED: std::sync::OnceLock<scale0::Shutdown> = std::sync::OnceLock::new();
    if let Some(s) = SIGNALLED.get() {
        return Ok(s.clone());
    }
    let shutdown = scale0::Shutdown::new();
    shutdown
        .on_signals()
        .map_err(|e| anyhow::anyhow!("installing the SIGTERM/SIGINT handlers: {e}"))?;
    Ok(SIGNALLED.get_or_init(|| shutdown).clone())
}

impl Command {
    /// Servers, which stop cleanly on signals; the rest keep the default (die at once).
    fn is_server(&self) -> bool {
        matches!(
            self,
            Command::Broker(_)
                | Command::Worker(_)
                | Command::Queue(_)
                | Command::Forwarder(_)
                | Command::Node(_)
                | Command::Vent(_)
                | Command::Work(_)
                | Command::Sink(_)
                | Command::Map(_)
        )
    }
}

/// Fewest open files scale0 starts with.
const MIN_FDS: u64 = 64;

fn main() -> ExitCode {
    // A bad configuration file is a usage error, like a bad flag: exit 2.
    let argv = match config::merge(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("scale0: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(argv);
    init_logging(cli.log_json);
    if cli.command.is_server()
        && let Err(e) = stop_on_signals()
    {
        eprintln!("scale0: error: {e:#}");
        return ExitCode::FAILURE;
    }
    // Each connection is a descriptor: take all the process may have. Below a few dozen,
    // libzmq aborts inside its I/O thread instead of returning an error: refuse clearly.
    let fds = scale0::raise_fd_limit();
    if let Some(n) = fds.filter(|n| *n < MIN_FDS) {
        eprintln!(
            "scale0: error: only {n} file descriptors may be open (RLIMIT_NOFILE); scale0 needs \
             at least {MIN_FDS}, and one more per connection. Raise it (`ulimit -n`, or \
             LimitNOFILE= in a systemd unit) and start again."
        );
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Broker(args) => broker::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Request(args) => request::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Queue(args) => queue::run(args),
        Command::Forwarder(args) => bus::forwarder(args),
        Command::Node(args) => bus::node(args),
        Command::Watch(args) => watch::run(args),
        Command::Status(args) => status::run(args),
        Command::Swarm(args) => bus::swarm(args),
        Command::Vent(args) => pipeline::vent(args),
        Command::Work(args) => pipeline::work(args),
        Command::Sink(args) => pipeline::sink(args),
        Command::Map(args) => pipeline::map(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchClient(args) => bench::client(args),
        Command::Config(args) => config::run(args),
        Command::Keygen(args) => curve::keygen(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scale0: error: {e:#}");
            let text = format!("{e:#}");
            if text.contains("Too many open files") {
                let (soft, hard) = scale0::fd_limits();
                let show = |l: Option<u64>| l.map_or("unlimited".to_string(), |n| n.to_string());
                eprintln!(
                    "scale0: the process ran out of file descriptors (RLIMIT_NOFILE: soft {}, hard {}); \
                     every connection uses one. Raise the hard limit (`ulimit -Hn`, or LimitNOFILE= \
                     in a systemd unit) and start again.",
                    show(soft),
                    show(hard)
                );
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr so stdout carries only results (and the `listening` lines).
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
