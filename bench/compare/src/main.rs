//! Request/reply over NATS, measured the way `scale0 bench broker` measures the broker:
//! W echo workers in one queue group, each on its own connection; C clients, each on its
//! own connection, keeping K requests in flight; synchronous round trips timed one by one.
//! Prints one JSON object per case, in the shape of `scale0 bench --json`.
//!
//! By default every worker and client is a task of this one process (shape "threads", as
//! `scale0 bench broker` runs); with `--processes` every worker and every client is a
//! process of its own (this binary, started with a hidden `--role`), as `scale0 bench
//! broker --processes` runs them: the deployed shape, with nats-server the broker.

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use scale0_compare::{
    Children, Error, Run, client_line, exit_with_parent, report, run_clients, split,
    start_part, this_binary,
};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Worker,
    Client,
}

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
    /// Every worker and every client a process of its own.
    #[arg(long)]
    processes: bool,
    /// What this process is, when the parent started it (hidden).
    #[arg(long, value_enum, hide = true)]
    role: Option<Role>,
    /// The subject a worker serves or a client requests (hidden).
    #[arg(long, hide = true)]
    subject: Option<String>,
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

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let rt = || tokio::runtime::Runtime::new();
    match args.role {
        Some(Role::Worker) => rt()?.block_on(worker_process(&args)),
        Some(Role::Client) => rt()?.block_on(client_process(&args)),
        None if args.processes => processes(&args),
        None => rt()?.block_on(threads(&args)),
    }
}

/// One worker process: serves the subject until its parent goes.
async fn worker_process(args: &Args) -> Result<(), Error> {
    exit_with_parent();
    let subject = args.subject.as_deref().ok_or("--subject")?;
    let _workers = workers(&args.url, subject, 1).await?;
    println!("ready");
    std::future::pending::<()>().await;
    Ok(())
}

/// One client process: `--requests` with `--in-flight` outstanding on one connection,
/// after one request not measured; prints what it measured as one JSON line.
async fn client_process(args: &Args) -> Result<(), Error> {
    let subject = args.subject.as_deref().ok_or("--subject")?;
    let size = args.size.first().copied().unwrap_or(128);
    let started = Instant::now();
    let run = run_case(args, subject, 1, args.in_flight, args.requests, size).await?;
    let elapsed = if run.rate > 0.0 {
        Duration::from_secs_f64(run.latencies.len() as f64 / run.rate)
    } else {
        started.elapsed()
    };
    println!("{}", client_line(run.latencies.len() as u64, elapsed, &run.latencies));
    Ok(())
}

/// The cases with a process per worker and per client.
fn processes(args: &Args) -> Result<(), Error> {
    for &size in &args.size {
        let mut cases = vec![("sync", 1u32, 1u32, 1u32, args.sync_requests)];
        for &w in &args.workers {
            cases.push(("pipelined", w, args.clients, args.in_flight, args.requests));
        }
        for (mode, w, clients, in_flight, requests) in cases {
            let subject = format!("bench.echo.{}.{size}.{mode}.{w}", std::process::id());
            let mut parts = Children::default();
            for _ in 0..w {
                let mut c = this_binary()?;
                c.args(["--role", "worker", "--url", &args.url, "--subject", &subject]);
                start_part(&mut c, &mut parts)?;
            }
            let mut runs = Vec::new();
            for _ in 0..args.repeat {
                let mut cmds = Vec::new();
                for n in split(requests, clients) {
                    let mut c = this_binary()?;
                    c.args(["--role", "client", "--url", &args.url, "--subject", &subject])
                        .args(["--size", &size.to_string()])
                        .args(["--requests", &n.to_string()])
                        .args(["--in-flight", &in_flight.to_string()]);
                    cmds.push(c);
                }
                runs.push(run_clients(cmds)?);
                std::thread::sleep(Duration::from_millis(100));
            }
            let v = report(
                "nats", "processes", mode, size, requests, Some(w), clients, in_flight, runs,
            );
            println!("{v}");
        }
    }
    Ok(())
}

/// The cases with every worker and client a task of this process.
async fn threads(args: &Args) -> Result<(), Error> {
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
                runs.push(run_case(args, &subject, clients, in_flight, requests, size).await?);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let v = report(
                "nats", "threads", mode, size, requests, Some(w), clients, in_flight, runs,
            );
            println!("{v}");
        }
    }
    Ok(())
}
