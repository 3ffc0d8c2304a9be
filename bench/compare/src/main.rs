//! Request/reply over NATS, measured the way `scale0 bench broker` measures the broker:
//! W echo workers in one queue group, each on its own connection; C clients, each on its
//! own connection, keeping K requests in flight; synchronous round trips timed one by one.
//! Prints one JSON object per case, in the shape of `scale0 bench --json`.

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    #[arg(long, value_delimiter = ',', default_value = "16,128,1024")]
    size: Vec<usize>,
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    #[arg(long, default_value_t = 10_000)]
    sync_requests: u64,
    #[arg(long, default_value_t = 2)]
    clients: u32,
    #[arg(long, value_delimiter = ',', default_value = "2")]
    workers: Vec<u32>,
    #[arg(long, default_value_t = 64)]
    in_flight: u32,
    #[arg(long, default_value_t = 3)]
    repeat: u32,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Run {
    rate: f64,
    latencies: Vec<u64>,
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[rank] as f64 / 1000.0
}

/// Starts `n` echo workers in a queue group on `subject`; they stop with the runtime.
async fn workers(url: &str, subject: &str, n: u32) -> Result<Vec<async_nats::Client>, Error> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let client = async_nats::connect(url).await?;
        let mut sub = client
            .queue_subscribe(subject.to_string(), "workers".to_string())
            .await?;
        let replier = client.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Some(reply) = msg.reply {
                    let _ = replier.publish(reply, msg.payload).await;
                }
            }
        });
        client.flush().await?;
        clients.push(client);
    }
    Ok(clients)
}

async fn run_case(
    args: &Args,
    subject: &str,
    clients: u32,
    in_flight: u32,
    requests: u64,
    size: usize,
) -> Result<Run, Error> {
    let payload = Bytes::from(vec![b'x'; size]);
    let mut conns = Vec::new();
    for _ in 0..clients {
        let c = async_nats::connect(&args.url).await?;
        // Not measured: the first request finds the workers.
        c.request(subject.to_string(), payload.clone()).await?;
        conns.push(c);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    let streams = u64::from(clients * in_flight);
    for (i, c) in (0..streams).zip(conns.iter().cycle()) {
        let n = requests / streams + u64::from(i < requests % streams);
        let c = c.clone();
        let payload = payload.clone();
        let subject = subject.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t = Instant::now();
                c.request(subject.clone(), payload.clone()).await?;
                lat.push(t.elapsed().as_nanos() as u64);
            }
            Ok::<_, Error>(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Run {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    for &size in &args.size {
        let mut cases = vec![("sync", 1u32, 1u32, 1u32, args.sync_requests)];
        for &w in &args.workers {
            cases.push(("pipelined", w, args.clients, args.in_flight, args.requests));
        }
        for (mode, w, clients, in_flight, requests) in cases {
            let subject = format!("bench.echo.{size}.{mode}.{w}");
            let _workers = workers(&args.url, &subject, w).await?;
            let mut runs = Vec::new();
            for _ in 0..args.repeat {
                runs.push(run_case(&args, &subject, clients, in_flight, requests, size).await?);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
            rates.sort_by(f64::total_cmp);
            let median_rate = rates[rates.len() / 2];
            // Latency of the run with the median p50.
            runs.sort_by(|a, b| quantile(&a.latencies, 0.5).total_cmp(&quantile(&b.latencies, 0.5)));
            let mid = &runs[runs.len() / 2].latencies;
            println!(
                "{}",
                serde_json::json!({
                    "scenario": "nats",
                    "mode": mode,
                    "size": size,
                    "count": requests,
                    "workers": w,
                    "clients": clients,
                    "in_flight": in_flight,
                    "rate_median": median_rate.round(),
                    "rates": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
                    "lost": 0,
                    "p50_us": quantile(mid, 0.5).round(),
                    "p99_us": quantile(mid, 0.99).round(),
                    "p999_us": quantile(mid, 0.999).round(),
                })
            );
        }
    }
    Ok(())
}
