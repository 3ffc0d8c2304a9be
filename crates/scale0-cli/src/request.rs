//! `scale0 request`.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use scale0::{Client, ClientConfig};
use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

/// Flags of `scale0 request`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The broker to ask.
    #[arg(long, value_name = "ENDPOINT", default_value = scale0::endpoints::BROKER_CONNECT)]
    connect: String,
    /// The service to ask (`mmi.service` asks the broker whether a service exists).
    #[arg(long, value_name = "NAME")]
    service: String,
    /// The request body; without it, all of stdin is the body.
    body: Option<String>,
    /// One request per line of stdin, sent one at a time, replies printed in order.
    #[arg(long, conflicts_with_all = ["body", "count"])]
    lines: bool,
    /// Send the body this many times, pipelined, and print a summary instead of replies.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Requests kept in flight at once with --count.
    #[arg(long, value_name = "K", default_value_t = 1, requires = "count", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    in_flight: u32,
    /// How long to wait for a reply, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = scale0::proto::client::Config::DEFAULT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Times a request is re-sent (same id: it never runs twice) after a timeout.
    #[arg(long, value_name = "N", default_value_t = scale0::proto::client::Config::DEFAULT_RETRIES)]
    retries: u32,
    #[command(flatten)]
    limit: crate::limits::MessageLimit,
    #[command(flatten)]
    curve: crate::curve::ClientArgs,
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let mut config = ClientConfig::new(args.connect.clone());
    config.timeout_ms = args.timeout_ms;
    config.retries = args.retries;
    config.max_message_bytes = args.limit.max_message_bytes;
    config.curve = args.curve.load()?;
    let mut client = Client::connect(config)?;
    if args.lines {
        let stdin = std::io::stdin().lock();
        let mut out = std::io::stdout().lock();
        for line in stdin.lines() {
            let line = line.context("reading stdin")?;
            let reply = client.request(&args.service, vec![Bytes::from(line.into_bytes())])?;
            print_reply(&mut out, &reply)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let body = match args.body {
        Some(b) => Bytes::from(b.into_bytes()),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the request body from stdin")?;
            Bytes::from(buf)
        }
    };
    match args.count {
        None => {
            // Partial replies (progress a worker streams) go to stderr, so stdout holds
            // exactly the final reply.
            let reply = client.request_with_partials(&args.service, vec![body], |partial| {
                let text: Vec<String> = partial
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                eprintln!("partial: {}", text.join(" "));
            })?;
            print_reply(&mut std::io::stdout().lock(), &reply)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(n) => {
            let requests = (0..n).map(|_| vec![body.clone()]);
            let mut first_error = None;
            let s =
                client.request_many(&args.service, requests, args.in_flight as usize, |_, r| {
                    if let Err(e) = r {
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                })?;
            println!(
                "requests {}  ok {}  errors {}  rejected {}  timed out {}  retries {}  elapsed {:.3} s  {:.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
                s.sent,
                s.ok,
                s.errors,
                s.rejected,
                s.timed_out,
                s.retries,
                s.elapsed.as_secs_f64(),
                s.rate(),
                s.quantile(0.50).as_secs_f64() * 1e3,
                s.quantile(0.99).as_secs_f64() * 1e3,
            );
            if let Some(e) = first_error {
                eprintln!("first error: {e}");
            }
            if s.timed_out > 0 {
                bail!(
                    "{} request(s) got no reply after {} attempt(s) of {} ms",
                    s.timed_out,
                    args.retries + 1,
                    args.timeout_ms
                );
            }
            Ok(if s.errors + s.rejected > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Prints each reply frame followed by a newline.
fn print_reply(out: &mut impl Write, reply: &[Bytes]) -> Result<()> {
    for frame in reply {
        out.write_all(frame)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
