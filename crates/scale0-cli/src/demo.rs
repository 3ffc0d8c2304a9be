//! `scale0 demo`: the whole job in one process, on loopback ports nobody else uses.

use crate::handlers;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use scale0::{Broker, BrokerConfig, Client, ClientConfig, Shutdown, Worker, WorkerConfig};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, JoinHandle};

/// Flags of `scale0 demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Number of sha1 workers.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    workers: u32,
    /// Number of requests the client sends.
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    requests: u64,
    /// Requests the client keeps in flight.
    #[arg(long, value_name = "K", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    in_flight: u32,
    /// Size of each request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 128)]
    body_bytes: usize,
    /// Requests the broker may send each worker before it replies (`scale0 worker
    /// --capacity`).
    #[arg(long, value_name = "N", default_value_t = scale0::proto::worker::Config::DEFAULT_CAPACITY, value_parser = clap::value_parser!(u32).range(1..=1024))]
    capacity: u32,
}

const SERVICE: &str = "sha1";

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    let shutdown = Shutdown::new();
    let broker = Broker::bind(BrokerConfig {
        bind: vec!["tcp://127.0.0.1:*".into()],
        ..BrokerConfig::default()
    })?;
    let endpoint = broker
        .endpoints()
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("the broker bound no endpoint"))?;
    println!(
        "scale0 demo: broker on {endpoint}, {} sha1 workers, {} requests of {} bytes, {} in flight",
        args.workers, args.requests, args.body_bytes, args.in_flight
    );
    let broker_thread = {
        let shutdown = shutdown.clone();
        thread::Builder::new()
            .name("broker".into())
            .spawn(move || broker.run(&shutdown))
            .context("starting the broker thread")?
    };
    let mut counts = Vec::new();
    let mut workers: Vec<JoinHandle<scale0::Result<scale0::WorkerSummary>>> = Vec::new();
    for i in 0..args.workers {
        let count = Arc::new(AtomicU64::new(0));
        counts.push(Arc::clone(&count));
        let mut config = WorkerConfig::new(endpoint.clone(), SERVICE);
        config.capacity = args.capacity;
        let worker = Worker::new(config)?;
        let shutdown = shutdown.clone();
        workers.push(
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    let handler = move |body| {
                        count.fetch_add(1, Ordering::Relaxed);
                        handlers::sha1(body)
                    };
                    worker.run(handler, &shutdown)
                })
                .context("starting a worker thread")?,
        );
    }

    // Distinct bodies, so every reply can be checked against the digest it must carry.
    let bodies: Vec<Bytes> = (0..args.requests)
        .map(|i| {
            let mut b = format!("request {i:010} ").into_bytes();
            b.resize(args.body_bytes.max(b.len()), b'.');
            Bytes::from(b)
        })
        .collect();
    let expected: Vec<String> = bodies
        .iter()
        .map(|b| handlers::sha1_hex(std::slice::from_ref(b)))
        .collect();
    let mut wrong = 0u64;
    let mut client = Client::connect(ClientConfig::new(endpoint))?;
    let summary = client.request_many(
        SERVICE,
        bodies.into_iter().map(|b| vec![b]),
        args.in_flight as usize,
        |index, reply| {
            // Every reply must carry the digest of its own request.
            let right = reply.ok().is_some_and(|r| {
                r.body.first().map(|f| &f[..]) == expected.get(index).map(String::as_bytes)
            });
            if !right {
                wrong += 1;
            }
        },
    )?;

    shutdown.trigger();
    for w in workers {
        w.join()
            .map_err(|_| anyhow!("a worker thread panicked"))??;
    }
    let counters = broker_thread
        .join()
        .map_err(|_| anyhow!("the broker thread panicked"))??;

    for (i, c) in counts.iter().enumerate() {
        println!(
            "worker {:>3}: {:>8} requests",
            i + 1,
            c.load(Ordering::Relaxed)
        );
    }
    println!(
        "ok {}  wrong {}  errors {}  timed out {}  (broker: {} requests, {} replies, {} dropped)",
        summary.ok - wrong.min(summary.ok),
        wrong,
        summary.errors + summary.rejected,
        summary.timed_out,
        counters.requests,
        counters.replies,
        counters.dropped_total(),
    );
    println!(
        "elapsed {:.3} s  {:.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
        summary.elapsed.as_secs_f64(),
        summary.rate(),
        summary.quantile(0.50).as_secs_f64() * 1e3,
        summary.quantile(0.99).as_secs_f64() * 1e3,
    );
    if wrong > 0 || summary.errors + summary.rejected > 0 || summary.timed_out > 0 {
        bail!("the demo did not get every reply right");
    }
    // The same traffic with libzmq alone (one DEALER, a ROUTER that echoes, no broker and
    // no work), in this process now: the ceiling, so the figure above reads as a ratio.
    let direct =
        scale0_bench::scenarios::direct(1, args.in_flight, args.requests, args.body_bytes)?;
    println!(
        "libzmq alone, same process, same requests (DEALER -> ROUTER echo, no broker): {:.0} req/s; scale0 did {:.2}x of it",
        direct.rate(),
        summary.rate() / direct.rate().max(1e-9),
    );
    Ok(ExitCode::SUCCESS)
}
