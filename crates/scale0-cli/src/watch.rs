//! `scale0 watch`: print a broker's events.

use anyhow::Result;
use bytes::Bytes;
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;

/// Flags of `scale0 watch`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The broker's events endpoint (its `--events`); repeat for several brokers.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://localhost:5563")]
    connect: Vec<String>,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

fn line(frames: &[Bytes], as_json: bool) -> String {
    let text = |i: usize| {
        frames
            .get(i)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default()
    };
    let topic = text(0);
    let kind = topic.strip_prefix("s0ev.").unwrap_or(&topic);
    if as_json {
        return json!({"event": kind, "service": text(1), "worker": text(2), "detail": text(3)})
            .to_string();
    }
    let mut line = format!("{kind} service={}", text(1));
    for (key, i) in [("worker", 2), ("detail", 3)] {
        if !text(i).is_empty() {
            line.push_str(&format!(" {key}={}", text(i)));
        }
    }
    line
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    scale0::watch_events(&args.connect, &scale0::Shutdown::new(), |frames| {
        // Keep going while stdout takes the lines.
        writeln!(out, "{}", line(frames, args.json))
            .and_then(|()| out.flush())
            .is_ok()
    })?;
    Ok(ExitCode::SUCCESS)
}
