//! `scale0 broker`.

use anyhow::Result;
use scale0::{Broker, BrokerConfig, Shutdown};
use std::io::Write;
use std::process::ExitCode;

/// Flags of `scale0 broker`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Endpoint to bind; repeat for several. `:*` picks a free port.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://*:5555")]
    bind: Vec<String>,
    /// Interval between heartbeats to workers, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2500, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_interval_ms: u64,
    /// Heartbeat intervals an idle worker may stay silent before it is expired.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    heartbeat_liveness: u32,
    /// Largest message accepted, in bytes over all frames; larger ones are dropped.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
}

impl Args {
    fn config(self) -> BrokerConfig {
        let mut config = BrokerConfig {
            bind: self.bind,
            ..BrokerConfig::default()
        };
        config.core.heartbeat_interval_ms = self.heartbeat_interval_ms;
        config.core.heartbeat_liveness = self.heartbeat_liveness;
        config.core.max_message_bytes = self.max_message_bytes;
        config
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let broker = Broker::bind(args.config())?;
    print_listening(broker.endpoints())?;
    broker.run(&Shutdown::new())?;
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
