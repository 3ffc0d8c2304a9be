//! `scale0 bench`: the scenarios ZeroMQ users compare, run in this process on loopback,
//! each repeated and reported as its median, with libzmq-alone baselines beside the
//! scale0 equivalents so they read as ratios.

use anyhow::{Result, bail};
use scale0::Task;
use scale0_bench::scenarios::{self as bench, Measurement};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// PUSH -> PULL, libzmq alone.
    PushPull,
    /// PUB -> SUB, libzmq alone (drops at the high-water mark are reported as lost).
    PubSub,
    /// Request/reply without a broker: DEALER clients, a ROUTER echo server.
    Direct,
    /// Request/reply through the broker: native clients, MDP echo workers.
    Broker,
    /// Ventilator -> workers -> sink on raw PUSH/PULL sockets.
    Pipeline,
    /// `scale0 map` with in-process workers: the raw pipeline plus credit and reports.
    Map,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::PushPull => "push-pull",
            Scenario::PubSub => "pub-sub",
            Scenario::Direct => "direct",
            Scenario::Broker => "broker",
            Scenario::Pipeline => "pipeline",
            Scenario::Map => "map",
        }
    }

    fn is_reqrep(self) -> bool {
        matches!(self, Scenario::Direct | Scenario::Broker)
    }

    fn has_workers(self) -> bool {
        matches!(self, Scenario::Broker | Scenario::Pipeline | Scenario::Map)
    }
}

/// Flags of `scale0 bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// What to measure (default: all of them).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Message (request, job) bodies in bytes; a list runs each.
    #[arg(
        long,
        value_name = "BYTES",
        value_delimiter = ',',
        default_value = "16,128,1024"
    )]
    size: Vec<usize>,
    /// Messages per run for the one-way scenarios and the pipelines.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    messages: u64,
    /// Requests per run for request/reply, pipelined.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    requests: u64,
    /// Round trips per run for request/reply, synchronous (one client, one in flight).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    sync_requests: u64,
    /// Clients for request/reply, pipelined.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1000))]
    clients: u32,
    /// Workers (broker, pipeline, map); a list runs each.
    #[arg(long, value_name = "N", value_delimiter = ',', default_value = "2", value_parser = clap::value_parser!(u32).range(1..=1000))]
    workers: Vec<u32>,
    /// Requests each client keeps in flight, pipelined.
    #[arg(long, value_name = "K", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    in_flight: u32,
    /// Map jobs sleep this long instead of echoing (to measure scaling, not overhead).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    sleep_ms: u64,
    /// The map's jobs per worker beyond the one it runs (`scale0 map --prefetch`).
    #[arg(long, value_name = "N", default_value_t = 1)]
    prefetch: u32,
    /// High-water mark of PUB and SUB, in messages.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub_sub_hwm: i32,
    /// Runs of each case; the median is reported.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Run each broker worker's handler on a thread of its own (as `scale0 worker` does)
    /// instead of inline on its socket thread, which suits a handler as quick as an echo.
    #[arg(long)]
    handler_thread: bool,
    /// Requests the broker may send each worker before it replies (`scale0 worker
    /// --capacity`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    worker_capacity: u32,
    /// The broker's `--spin-us`: how long it keeps checking for its next message before
    /// it sleeps (0 never).
    #[arg(long, value_name = "US", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=scale0::MAX_SPIN_US))]
    broker_spin_us: u64,
    /// Broker scenario: CURVE on every connection, with keys made for the run (the broker
    /// then has an I/O thread of its own; not with --connect or --processes).
    #[arg(long, conflicts_with_all = ["connect", "processes"])]
    curve: bool,
    /// Broker scenario: run the broker, every worker and every client as a process of
    /// its own (this binary) instead of threads of this one.
    #[arg(long)]
    processes: bool,
    /// Broker scenario: plain MDP/0.2 clients (RFC 18, one DEALER each, pipelining)
    /// instead of scale0's native client, to compare the two through the same broker.
    #[arg(long)]
    mdp_clients: bool,
    /// Broker scenario: clients and workers do not ask for bundles (docs/protocol.md,
    /// "Bundles"), so every message travels alone, as before bundles.
    #[arg(long)]
    no_bundle: bool,
    /// Use the broker at this endpoint instead of starting one (workers still start here).
    #[arg(long, value_name = "ENDPOINT")]
    connect: Option<String>,
    /// Print one JSON object per case instead of a table.
    #[arg(long)]
    json: bool,
}

/// One case: a scenario with its parameters.
#[derive(Clone, Debug)]
struct Case {
    scenario: Scenario,
    mode: &'static str,
    size: usize,
    workers: u32,
    clients: u32,
    in_flight: u32,
    count: u64,
}

impl Case {
    fn run(&self, args: &Args) -> anyhow::Result<Measurement> {
        if self.scenario == Scenario::Broker && args.processes {
            return processes::broker(args, self);
        }
        Ok(match self.scenario {
            Scenario::PushPull => bench::push_pull(self.count, self.size),
            Scenario::PubSub => bench::pub_sub(self.count, self.size, args.pub_sub_hwm),
            Scenario::Direct => bench::direct(self.clients, self.in_flight, self.count, self.size),
            Scenario::Broker => bench::broker(&bench::BrokerCase {
                connect: args.connect.clone(),
                inline: !args.handler_thread,
                capacity: args.worker_capacity,
                workers: self.workers,
                clients: self.clients,
                in_flight: self.in_flight,
                requests: self.count,
                size: self.size,
                curve: args.curve,
                spin_us: args.broker_spin_us,
                mdp_clients: args.mdp_clients,
                bundle: !args.no_bundle,
            }),
            Scenario::Pipeline => bench::raw_pipeline(self.workers, self.count, self.size),
            Scenario::Map => {
                let task: Option<Arc<dyn Task>> = (args.sleep_ms > 0).then(|| {
                    let sleep = Duration::from_millis(args.sleep_ms);
                    Arc::new(move |p: &[u8]| {
                        std::thread::sleep(sleep);
                        Ok(bytes::Bytes::copy_from_slice(p))
                    }) as Arc<dyn Task>
                });
                bench::map(self.workers, self.count, self.size, args.prefetch, task)
            }
        }?)
    }

    fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.scenario.has_workers() {
            parts.push(format!("{}w", self.workers));
        }
        if self.scenario.is_reqrep() {
            parts.push(format!("{}c×{}", self.clients, self.in_flight));
        }
        parts.join(" ")
    }
}

fn cases(args: &Args) -> Vec<Case> {
    let all = [
        Scenario::PushPull,
        Scenario::PubSub,
        Scenario::Direct,
        Scenario::Broker,
        Scenario::Pipeline,
        Scenario::Map,
    ];
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        all.to_vec()
    } else {
        args.scenarios.clone()
    };
    let mut out = Vec::new();
    for &size in &args.size {
        for &scenario in &scenarios {
            let base = Case {
                scenario,
                mode: "throughput",
                size,
                workers: 1,
                clients: 1,
                in_flight: 1,
                count: args.messages,
            };
            if scenario.is_reqrep() {
                let workers: Vec<u32> = if scenario.has_workers() {
                    args.workers.clone()
                } else {
                    vec![1]
                };
                out.push(Case {
                    mode: "sync",
                    count: args.sync_requests,
                    ..base.clone()
                });
                for &w in &workers {
                    out.push(Case {
                        mode: "pipelined",
                        workers: w,
                        clients: args.clients,
                        in_flight: args.in_flight,
                        count: args.requests,
                        ..base.clone()
                    });
                }
            } else if scenario.has_workers() {
                for &w in &args.workers {
                    out.push(Case {
                        workers: w,
                        ..base.clone()
                    });
                }
            } else {
                out.push(base);
            }
        }
    }
    out
}

/// A case's repeated runs, summarised.
#[derive(Debug)]
struct Result_ {
    case: Case,
    rates: Vec<f64>,
    median_rate: f64,
    lost: u64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode> {
    if args.size.is_empty() || args.workers.is_empty() {
        bail!("--size and --workers need at least one value");
    }
    let cases = cases(&args);
    // Drawn on stderr only when it is a terminal (indicatif hides it otherwise).
    let progress =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    progress.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let mut results = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut rates = Vec::new();
        let mut lost = 0;
        // Latency quantiles are taken per run; the run with the median p50 is reported.
        let mut runs = Vec::new();
        for r in 0..args.repeat {
            progress.set_message(format!(
                "[{}/{}] {} {} {} B {} (run {}/{})",
                i + 1,
                cases.len(),
                case.scenario.name(),
                case.mode,
                case.size,
                case.label(),
                r + 1,
                args.repeat
            ));
            let m = case.run(&args)?;
            rates.push(m.rate());
            lost += m.lost;
            runs.push((m.quantile(0.5), m.quantile(0.99), m.quantile(0.999)));
        }
        runs.sort();
        let (p50, p99, p999) = runs.get(runs.len() / 2).copied().unwrap_or_default();
        let median_rate = median(&mut rates);
        let result = Result_ {
            case: case.clone(),
            rates,
            median_rate,
            lost,
            p50,
            p99,
            p999,
        };
        if args.json {
            let mut v = json(&result);
            if case.scenario == Scenario::Broker {
                v["client"] = if args.mdp_clients { "mdp" } else { "native" }.into();
                v["bundle"] = (!args.no_bundle).into();
            }
            println!("{v}");
        }
        results.push(result);
    }
    progress.finish_and_clear();
    if !args.json {
        print_table(&results);
    }
    Ok(ExitCode::SUCCESS)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn json(r: &Result_) -> serde_json::Value {
    let c = &r.case;
    let mut v = serde_json::json!({
        "scenario": c.scenario.name(),
        "mode": c.mode,
        "size": c.size,
        "count": c.count,
        "rate_median": r.median_rate.round(),
        "rates": r.rates.iter().map(|x| x.round()).collect::<Vec<_>>(),
        "lost": r.lost,
    });
    if c.scenario.has_workers() {
        v["workers"] = c.workers.into();
    }
    if c.scenario.is_reqrep() {
        v["clients"] = c.clients.into();
        v["in_flight"] = c.in_flight.into();
        v["p50_us"] = us(r.p50).round().into();
        v["p99_us"] = us(r.p99).round().into();
        v["p999_us"] = us(r.p999).round().into();
    }
    v
}

fn print_table(results: &[Result_]) {
    println!(
        "{:<10} {:<10} {:>6} {:<10} {:>12} {:>15} {:>9} {:>9} {:>9} {:>8}",
        "scenario",
        "mode",
        "bytes",
        "setup",
        "msg/s",
        "range",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "lost"
    );
    for r in results {
        let c = &r.case;
        let lo = r.rates.first().copied().unwrap_or_default();
        let hi = r.rates.last().copied().unwrap_or_default();
        let lat = |d: Duration| {
            if c.scenario.is_reqrep() {
                format!("{:.0}", us(d))
            } else {
                "-".into()
            }
        };
        println!(
            "{:<10} {:<10} {:>6} {:<10} {:>12.0} {:>15} {:>9} {:>9} {:>9} {:>8}",
            c.scenario.name(),
            c.mode,
            c.size,
            c.label(),
            r.median_rate,
            format!("{:.0}–{:.0}", lo, hi),
            lat(r.p50),
            lat(r.p99),
            lat(r.p999),
            r.lost,
        );
    }
    // The comparisons the scenarios exist for, when both sides ran.
    let find = |s: Scenario, mode: &str, size: usize| {
        results
            .iter()
            .filter(|r| r.case.scenario == s && r.case.mode == mode && r.case.size == size)
            .collect::<Vec<_>>()
    };
    let mut printed = false;
    for r in results {
        let c = &r.case;
        let base = match c.scenario {
            Scenario::Broker => find(Scenario::Direct, c.mode, c.size),
            Scenario::Map => find(Scenario::Pipeline, c.mode, c.size)
                .into_iter()
                .filter(|b| b.case.workers == c.workers)
                .collect(),
            _ => continue,
        };
        let Some(b) = base.first() else { continue };
        if !printed {
            println!();
            printed = true;
        }
        let mut line = format!(
            "{} / {} {} {} B {}: throughput {:.2}×",
            c.scenario.name(),
            b.case.scenario.name(),
            c.mode,
            c.size,
            c.label(),
            r.median_rate / b.median_rate.max(f64::MIN_POSITIVE)
        );
        if c.scenario.is_reqrep() && !b.p50.is_zero() {
            line += &format!(", p50 {:.2}×", r.p50.as_secs_f64() / b.p50.as_secs_f64());
        }
        println!("{line}");
    }
}

/// The broker scenario with a process per part, and the hidden client those processes run.
mod processes {
    use super::{Args, Case};
    use scale0::{Client, ClientConfig};
    use scale0_bench::Measurement;
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Child, Command, ExitCode, Stdio};
    use std::time::Duration;

    /// Flags of the hidden `scale0 bench-client`: one client process of `--processes`.
    #[derive(Debug, clap::Args)]
    pub(crate) struct ClientArgs {
        #[arg(long)]
        connect: String,
        #[arg(long)]
        service: String,
        #[arg(long)]
        requests: u64,
        #[arg(long)]
        in_flight: u32,
        #[arg(long)]
        size: usize,
        /// A plain MDP/0.2 client instead of a native one.
        #[arg(long)]
        mdp: bool,
        #[arg(long)]
        no_bundle: bool,
    }

    /// Runs one client and prints its measurement as JSON.
    pub(crate) fn client(args: ClientArgs) -> anyhow::Result<ExitCode> {
        let m = if args.mdp {
            scale0_bench::scenarios::mdp_client(
                &args.connect,
                &args.service,
                args.requests,
                args.in_flight,
                args.size,
            )?
        } else {
            let mut config = ClientConfig::new(args.connect);
            config.bundle = !args.no_bundle;
            scale0_bench::scenarios::native_client(
                &mut Client::connect(config)?,
                &args.service,
                args.requests,
                args.in_flight,
                args.size,
            )?
        };
        // The distribution as (nanoseconds, count) pairs, merged by the parent.
        println!(
            "{}",
            serde_json::json!({
                "messages": m.messages,
                "lost": m.lost,
                "elapsed_ns": u64::try_from(m.elapsed.as_nanos()).unwrap_or(u64::MAX),
                "latencies_ns": m.latencies.values(),
            })
        );
        Ok(ExitCode::SUCCESS)
    }

    /// Children killed when dropped, so a failed run leaves nothing behind.
    struct Children(Vec<Child>);

    impl Drop for Children {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn scale0() -> anyhow::Result<Command> {
        let exe =
            std::env::current_exe().map_err(|e| anyhow::anyhow!("finding this binary: {e}"))?;
        let mut c = Command::new(exe);
        c.env("RUST_LOG", "warn").stdin(Stdio::null());
        Ok(c)
    }

    fn spawn(cmd: &mut Command, what: &str) -> anyhow::Result<Child> {
        cmd.spawn()
            .map_err(|e| anyhow::anyhow!("starting {what}: {e}"))
    }

    fn bad(what: String) -> anyhow::Error {
        anyhow::Error::msg(what)
    }

    pub(crate) fn broker(args: &Args, case: &Case) -> anyhow::Result<Measurement> {
        let mut children = Children(Vec::new());
        let endpoint = match &args.connect {
            Some(e) => e.clone(),
            None => {
                let mut child = spawn(
                    scale0()?
                        .args(["broker", "--bind", "tcp://127.0.0.1:*"])
                        .args(["--spin-us", &args.broker_spin_us.to_string()])
                        .stdout(Stdio::piped()),
                    "the broker",
                )?;
                let out = child.stdout.take();
                children.0.push(child);
                let mut line = String::new();
                BufReader::new(out.ok_or_else(|| bad("the broker's stdout".into()))?)
                    .read_line(&mut line)
                    .map_err(|e| bad(format!("reading the broker's endpoint: {e}")))?;
                line.strip_prefix("listening ")
                    .map(|e| e.trim().to_string())
                    .ok_or_else(|| bad(format!("the broker said {line:?}")))?
            }
        };
        let service = format!("bench.echo.{}", std::process::id());
        for _ in 0..case.workers {
            let mut cmd = scale0()?;
            cmd.args([
                "worker",
                "--connect",
                &endpoint,
                "--service",
                &service,
                "--echo",
            ])
            .args(["--capacity", &args.worker_capacity.to_string()])
            .stdout(Stdio::null());
            if !args.handler_thread {
                cmd.arg("--inline");
            }
            if args.no_bundle {
                cmd.arg("--no-bundle");
            }
            children.0.push(spawn(&mut cmd, "a worker")?);
        }
        let per_client = {
            let parts = u64::from(case.clients.max(1));
            (0..parts).map(move |i| case.count / parts + u64::from(i < case.count % parts))
        };
        let mut clients = Vec::new();
        for n in per_client {
            let mut cmd = scale0()?;
            cmd.args([
                "bench-client",
                "--connect",
                &endpoint,
                "--service",
                &service,
            ])
            .args([
                "--requests",
                &n.to_string(),
                "--in-flight",
                &case.in_flight.to_string(),
            ])
            .args(["--size", &case.size.to_string()])
            .stdout(Stdio::piped());
            if args.mdp_clients {
                cmd.arg("--mdp");
            }
            if args.no_bundle {
                cmd.arg("--no-bundle");
            }
            clients.push(spawn(&mut cmd, "a client")?);
        }
        let mut total = Measurement::default();
        for mut c in clients {
            let mut out = String::new();
            if let Some(mut s) = c.stdout.take() {
                s.read_to_string(&mut out)
                    .map_err(|e| bad(format!("reading a client: {e}")))?;
            }
            let status = c
                .wait()
                .map_err(|e| bad(format!("waiting for a client: {e}")))?;
            if !status.success() {
                return Err(bad(format!("a client process failed: {status}")));
            }
            let v: serde_json::Value = serde_json::from_str(out.trim())
                .map_err(|e| bad(format!("a client printed {out:?}: {e}")))?;
            total.messages += v["messages"].as_u64().unwrap_or(0);
            total.lost += v["lost"].as_u64().unwrap_or(0);
            total.elapsed = total
                .elapsed
                .max(Duration::from_nanos(v["elapsed_ns"].as_u64().unwrap_or(0)));
            for pair in v["latencies_ns"].as_array().into_iter().flatten() {
                if let (Some(ns), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) {
                    total.latencies.record_ns(ns, n);
                }
            }
        }
        Ok(total)
    }
}

pub(crate) use processes::{ClientArgs, client};
