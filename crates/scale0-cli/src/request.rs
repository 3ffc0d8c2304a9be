//! `scale0 request`.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use scale0::{Client, ClientConfig};
use std::io::{BufRead, Read, Write};
use std::process::ExitCode;

/// Flags of `scale0 request`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The broker to ask. Repeat it (or give a comma-separated list) to spread requests
    /// over several independent brokers: each request is retried on the broker that holds
    /// it, and moves to another only when that one is judged dead (it may then run twice;
    /// it is still answered once).
    #[arg(long, value_name = "ENDPOINT", value_delimiter = ',', default_value = scale0::endpoints::BROKER_CONNECT)]
    connect: Vec<String>,
    /// The service to ask (`mmi.service` asks the broker whether a service exists).
    #[arg(long, value_name = "NAME")]
    service: String,
    /// The request body; without it, all of stdin is the body.
    body: Option<String>,
    /// One request per line of stdin, sent one at a time, replies printed in order.
    #[arg(long, conflicts_with_all = ["body", "count"])]
    lines: bool,
    /// Send the body this many times, pipelined, and print a summary instead of replies.
    /// Each `{i}` in the body becomes the request's number (0 up), so requests can differ.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// With --count, also print each reply as it arrives: the request's number, a space,
    /// and the reply's frames joined by spaces, one line each, before the summary.
    #[arg(long, requires = "count")]
    print_replies: bool,
    /// Requests kept in flight at once with --count.
    #[arg(long, value_name = "K", default_value_t = 1, requires = "count", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    in_flight: u32,
    /// How long to wait for a reply, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = scale0::proto::client::Config::DEFAULT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Times a request is re-sent (same id: it never runs twice on one broker) after a
    /// timeout, or moved to another broker.
    #[arg(long, value_name = "N", default_value_t = scale0::proto::client::Config::DEFAULT_RETRIES)]
    retries: u32,
    /// With several brokers: attempts of one request in a row, each timed out with nothing
    /// at all from its broker, after which that broker is judged dead.
    #[arg(long, value_name = "N", default_value_t = scale0::proto::client::Config::DEFAULT_DEAD_AFTER_SILENT_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..))]
    dead_after_silent_attempts: u32,
    /// With several brokers: how often a broker judged dead is asked whether it is back,
    /// in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = scale0::proto::client::Config::DEFAULT_PROBE_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(1..))]
    probe_interval_ms: u64,
    #[command(flatten)]
    limit: crate::limits::MessageLimit,
    #[command(flatten)]
    curve: crate::curve::ClientArgs,
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let mut config = ClientConfig::new(String::new());
    config.connect = args.connect.clone();
    config.timeout_ms = args.timeout_ms;
    config.retries = args.retries;
    config.dead_after_silent_attempts = args.dead_after_silent_attempts;
    config.probe_interval_ms = args.probe_interval_ms;
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
            let numbered = body.windows(3).any(|w| w == b"{i}");
            let text = String::from_utf8_lossy(&body).into_owned();
            let requests = (0..n).map(|i| {
                if numbered {
                    vec![Bytes::from(text.replace("{i}", &i.to_string()))]
                } else {
                    vec![body.clone()]
                }
            });
            let mut first_error = None;
            let mut out = std::io::stdout().lock();
            let mut printed = Ok(());
            let s =
                client.request_many(&args.service, requests, args.in_flight as usize, |i, r| {
                    match r {
                        Ok(reply) if args.print_replies && printed.is_ok() => {
                            printed = print_numbered(&mut out, i, &reply.body);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                })?;
            printed.context("printing the replies")?;
            writeln!(
                out,
                "requests {}  ok {}  errors {}  rejected {}  timed out {}  retries {}  moved {}  duplicates {}  elapsed {:.3} s  {:.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
                s.sent,
                s.ok,
                s.errors,
                s.rejected,
                s.timed_out,
                s.retries,
                s.moved,
                s.duplicates,
                s.elapsed.as_secs_f64(),
                s.rate(),
                s.quantile(0.50).as_secs_f64() * 1e3,
                s.quantile(0.99).as_secs_f64() * 1e3,
            )?;
            drop(out);
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

/// One line: the request's number, then the reply's frames joined by spaces.
fn print_numbered(out: &mut impl Write, index: usize, reply: &[Bytes]) -> std::io::Result<()> {
    write!(out, "{index}")?;
    for frame in reply {
        out.write_all(b" ")?;
        out.write_all(frame)?;
    }
    out.write_all(b"\n")
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
