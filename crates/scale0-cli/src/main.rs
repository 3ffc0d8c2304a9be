//! The `scale0` command: one subcommand per file, each with its own `Args` and `run`.

mod broker;
mod bus;
mod demo;
mod handlers;
mod queue;
mod request;
mod worker;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Distributed work over ZeroMQ: a Majordomo broker, workers and clients.
#[derive(Debug, Parser)]
#[command(name = "scale0", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Majordomo broker (MDP/0.1 with MMI) on a ROUTER socket.
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Broker(args) => broker::run(args),
        Command::Worker(args) => worker::run(args),
        Command::Request(args) => request::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Queue(args) => queue::run(args),
        Command::Forwarder(args) => bus::forwarder(args),
        Command::Node(args) => bus::node(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scale0: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr so stdout carries only results (and the `listening` lines).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
