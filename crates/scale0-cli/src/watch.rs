//! `scale0 watch`: print a broker's events.

use anyhow::Result;
use scale0_proto::broker::Event;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;

/// Flags of `scale0 watch`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The broker's events endpoint (its `--events`); repeat for several brokers.
    #[arg(long, value_name = "ENDPOINT", default_value = scale0::endpoints::EVENTS_CONNECT)]
    connect: Vec<String>,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

fn line(event: &Event, as_json: bool) -> String {
    let service = event.service().to_string();
    let worker = event.worker().map(ToString::to_string).unwrap_or_default();
    let detail = event.detail();
    if as_json {
        return json!({"event": event.kind(), "service": service, "worker": worker, "detail": detail})
            .to_string();
    }
    let mut line = format!("{} service={service}", event.kind());
    for (key, value) in [("worker", worker), ("detail", detail)] {
        if !value.is_empty() {
            line.push_str(&format!(" {key}={value}"));
        }
    }
    line
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    scale0::watch_events(&args.connect, &scale0::Shutdown::new(), |event| {
        // Keep going while stdout takes the lines.
        writeln!(out, "{}", line(event, args.json))
            .and_then(|()| out.flush())
            .is_ok()
    })?;
    Ok(ExitCode::SUCCESS)
}
