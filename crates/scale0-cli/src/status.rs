//! `scale0 status`: what a broker is doing, asked over MMI (`mmi.status`).

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use scale0::{Client, ClientConfig};
use serde_json::Value;
use std::process::ExitCode;

/// Flags of `scale0 status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The broker's endpoint.
    #[arg(long, value_name = "ENDPOINT", default_value = scale0::endpoints::BROKER_CONNECT)]
    connect: String,
    /// Print the broker's JSON document as it is.
    #[arg(long)]
    json: bool,
    /// How long to wait for the broker, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = scale0::proto::client::Config::DEFAULT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    #[command(flatten)]
    curve: crate::curve::ClientArgs,
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms} ms"),
        1..60 => format!("{:.1} s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let mut config = ClientConfig::new(args.connect.clone());
    config.timeout_ms = args.timeout_ms;
    config.retries = 0;
    config.curve = args.curve.load()?;
    let mut client = Client::connect(config)?;
    let reply = client.request("mmi.status", Vec::new())?;
    let doc = reply.first().cloned().unwrap_or_else(Bytes::new);
    if doc.as_ref() == b"501" {
        return Err(anyhow!(
            "the broker at {} does not answer mmi.status (not a scale0 broker, or an old one)",
            args.connect
        ));
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(&doc));
        return Ok(ExitCode::SUCCESS);
    }
    let v: Value =
        serde_json::from_slice(&doc).context("reading the broker's mmi.status answer")?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let t = &v["totals"];
    println!(
        "broker {}: up {}, {} outstanding{}",
        args.connect,
        duration(n(&v["uptime_ms"])),
        n(&v["outstanding"]),
        if v["draining"] == true {
            ", draining (stopping)"
        } else {
            ""
        }
    );
    if let Some(c) = v["cluster"].as_object() {
        let lag: Vec<String> = c
            .get("lag")
            .and_then(Value::as_array)
            .unwrap_or(&Vec::new())
            .iter()
            .map(|l| format!("node {} {} behind", n(&l["node"]), n(&l["entries"])))
            .collect();
        println!(
            "cluster node {}: {}{}, term {}, leader {}, commit {}, applied {}{}",
            n(&c["node"]),
            c["role"].as_str().unwrap_or("?"),
            if c["serving"] == true {
                " (serving)"
            } else if c["joining"] == true {
                " (joining: not voting until caught up)"
            } else {
                ""
            },
            n(&c["term"]),
            c["leader"]
                .as_u64()
                .map_or_else(|| "unknown".to_string(), |l| l.to_string()),
            n(&c["commit"]),
            n(&c["applied"]),
            if lag.is_empty() {
                String::new()
            } else {
                format!("; {}", lag.join(", "))
            }
        );
    }
    println!(
        "totals: {} requests, {} replies, {} partials, {} dispatched, {} redelivered, {} failed, {} dropped",
        n(&t["requests"]),
        n(&t["replies"]),
        n(&t["partials"]),
        n(&t["dispatched"]),
        n(&t["redeliveries"]),
        n(&t["failed"]),
        n(&t["dropped"])
    );
    let empty = Vec::new();
    let services = v["services"].as_array().unwrap_or(&empty);
    println!();
    println!(
        "{:<24} {:>8} {:>8} {:>6} {:>6}",
        "service", "queued", "workers", "idle", "busy"
    );
    for s in services {
        let workers = s["workers"].as_array().unwrap_or(&empty);
        let busy = workers.iter().filter(|w| w["state"] == "busy").count();
        println!(
            "{:<24} {:>8} {:>8} {:>6} {:>6}",
            s["name"].as_str().unwrap_or_default(),
            n(&s["queued"]),
            workers.len(),
            workers.len() - busy,
            busy
        );
        for w in workers {
            // A worker with credit (capacity above 1) shows how full it is.
            let capacity = n(&w["capacity"]);
            let held = if capacity > 1 {
                format!(", holding {} of {capacity}", n(&w["held"]))
            } else {
                String::new()
            };
            println!(
                "  worker {} {} for {}{held}",
                w["id"].as_str().unwrap_or_default(),
                w["state"].as_str().unwrap_or_default(),
                duration(n(&w["since_ms"]))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
