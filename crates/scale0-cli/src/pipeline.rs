//! `scale0 vent`, `scale0 work`, `scale0 sink` and `scale0 map`.

use crate::handlers;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use scale0::proto::pipeline::{self, Finished, MAX_INTERVAL_MS, Outcome, Status};
use scale0::proto::task_worker;
use scale0::{
    CommandTask, Map, MapConfig, MapProgress, Sink, SinkConfig, SinkItem, Source, Task, TaskWorker,
    TaskWorkerConfig, Vent, VentConfig,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

/// What a worker runs per job: one built-in or a command.
#[derive(Debug, clap::Args)]
pub(crate) struct TaskArgs {
    /// Output the job unchanged.
    #[arg(long, help_heading = "Task")]
    echo: bool,
    /// Output the hex SHA-1 of the job.
    #[arg(long, help_heading = "Task")]
    sha1: bool,
    /// Sleep this many milliseconds, then output the job.
    #[arg(long, value_name = "MS", help_heading = "Task")]
    sleep_ms: Option<u64>,
    /// Sleep as many milliseconds as the job says, output nothing (the Guide's workers).
    #[arg(long, help_heading = "Task")]
    sleep_payload: bool,
    /// Run this command per job: `{}` in an argument is replaced by the job, else the job
    /// is its stdin; its stdout is the output, a non-zero exit a failure. It runs in its
    /// own process group, killed whole at the job's timeout.
    #[arg(last = true, value_name = "COMMAND", help_heading = "Task")]
    command: Vec<String>,
}

impl TaskArgs {
    fn given(&self) -> usize {
        [
            self.echo,
            self.sha1,
            self.sleep_ms.is_some(),
            self.sleep_payload,
            !self.command.is_empty(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }

    fn task(&self) -> Result<Arc<dyn Task>> {
        if self.given() != 1 {
            bail!(
                "say what to run, once: --echo, --sha1, --sleep-ms MS, --sleep-payload, or -- COMMAND"
            );
        }
        Ok(if self.echo {
            Arc::new(|p: &[u8]| Ok::<_, String>(Bytes::copy_from_slice(p)))
        } else if self.sha1 {
            Arc::new(|p: &[u8]| {
                Ok::<_, String>(Bytes::from(handlers::sha1_hex(&[Bytes::copy_from_slice(
                    p,
                )])))
            })
        } else if let Some(ms) = self.sleep_ms {
            Arc::new(move |p: &[u8]| {
                thread::sleep(Duration::from_millis(ms));
                Ok::<_, String>(Bytes::copy_from_slice(p))
            })
        } else if self.sleep_payload {
            Arc::new(|p: &[u8]| {
                let text = String::from_utf8_lossy(p);
                let ms: u64 = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("not a number of milliseconds: {text:?}"))?;
                thread::sleep(Duration::from_millis(ms));
                Ok::<_, String>(Bytes::new())
            })
        } else {
            Arc::new(CommandTask::new(self.command.clone())?)
        })
    }
}

/// How jobs are separated in input and results in output.
#[derive(Debug, clap::Args)]
pub(crate) struct Framing {
    /// Jobs and results are separated by NUL bytes instead of newlines.
    #[arg(short = '0', long = "null")]
    null: bool,
}

impl Framing {
    fn separator(&self) -> u8 {
        if self.null { b'\0' } else { b'\n' }
    }
}

/// Reads `path` (or stdin for `-` or none) on its own thread, one job per separator.
fn read_jobs(path: Option<&str>, separator: u8) -> Result<mpsc::Receiver<Bytes>> {
    let reader: Box<dyn Read + Send> = match path {
        None | Some("-") => Box::new(std::io::stdin()),
        Some(p) => Box::new(std::fs::File::open(p).with_context(|| format!("opening {p}"))?),
    };
    let (tx, rx) = mpsc::sync_channel(4096);
    thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            let mut reader = BufReader::new(reader);
            loop {
                let mut job = Vec::new();
                match reader.read_until(separator, &mut job) {
                    Ok(0) => return,
                    Ok(_) => {
                        if job.last() == Some(&separator) {
                            job.pop();
                        }
                        if tx.send(Bytes::from(job)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("scale0: error: reading the jobs: {e}");
                        return;
                    }
                }
            }
        })
        .context("starting the input thread")?;
    Ok(rx)
}

/// Writes an output followed by the separator unless it already ends with one.
fn write_output(out: &mut impl Write, output: &[u8], separator: u8) -> std::io::Result<()> {
    if output.is_empty() {
        return Ok(());
    }
    out.write_all(output)?;
    if output.last() != Some(&separator) {
        out.write_all(&[separator])?;
    }
    Ok(())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Longest part of a job's input quoted in a message meant for a person.
const EXCERPT_CHARS: usize = 120;

/// A job's input for a log line: quoted, and cut after [`EXCERPT_CHARS`] characters with
/// its full size said, so a 10 MB input is not a 10 MB line.
fn excerpt(input: &[u8]) -> String {
    let all = String::from_utf8_lossy(input);
    if all.chars().count() <= EXCERPT_CHARS {
        return format!("{all:?}");
    }
    let head: String = all.chars().take(EXCERPT_CHARS).collect();
    format!("{head:?}... ({} bytes in all)", input.len())
}

// ---------------------------------------------------------------------------------------

/// Flags of `scale0 work`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkArgs {
    /// A host running a ventilator or map: pull jobs from HOST:5557, push results to
    /// HOST:5558 (HOST:PORT means PORT and the one after it). Repeat for several; each
    /// job's result goes back to where it came from.
    #[arg(long, value_name = "HOST")]
    connect: Vec<String>,
    /// A ventilator endpoint to pull jobs from (repeatable; results go to --sink).
    #[arg(long, value_name = "ENDPOINT", requires = "sink")]
    vent: Vec<String>,
    /// The sink endpoint for results of jobs from --vent.
    #[arg(long, value_name = "ENDPOINT", requires = "vent")]
    sink: Option<String>,
    /// Jobs run at once (default: the number of CPUs).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65535))]
    capacity: Option<u32>,
    /// Heartbeat interval towards sinks, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = task_worker::Config::DEFAULT_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(1..=MAX_INTERVAL_MS))]
    interval_ms: u64,
    /// Limit for one-frame jobs, which carry none, in milliseconds (0: none).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    plain_timeout_ms: u64,
    /// The name to report under (default: host.pid.random).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    limit: crate::limits::MessageLimit,
    #[command(flatten)]
    curve: crate::curve::ClientArgs,
}

pub(crate) fn work(args: WorkArgs) -> Result<ExitCode> {
    let task = args.task.task()?;
    let mut sources = args
        .connect
        .iter()
        .map(|h| Source::host(h))
        .collect::<scale0::Result<Vec<_>>>()?;
    if let Some(sink) = &args.sink {
        sources.extend(args.vent.iter().map(|v| Source {
            jobs: v.clone(),
            results: sink.clone(),
        }));
    }
    if sources.is_empty() {
        sources.push(Source::host("localhost")?);
    }
    let capacity = args.capacity.unwrap_or_else(|| {
        thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
    });
    // The report bounds keep their defaults.
    let defaults = TaskWorkerConfig::new(sources[0].clone());
    let config = TaskWorkerConfig {
        sources,
        capacity,
        interval_ms: args.interval_ms,
        plain_timeout_ms: args.plain_timeout_ms,
        name: args.name,
        max_message_bytes: args.limit.max_message_bytes,
        curve: args.curve.load()?,
        ..defaults
    };
    let worker = TaskWorker::new(config)?;
    let summary = worker.run(task, &crate::stop_on_signals()?)?;
    eprintln!(
        "work: {} jobs, {} ok, {} failed, {} timed out, {} handed back",
        summary.jobs, summary.ok, summary.failed, summary.timed_out, summary.returned
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------

/// Flags of `scale0 vent`.
#[derive(Debug, clap::Args)]
pub(crate) struct VentArgs {
    /// Endpoint workers connect to (repeatable).
    #[arg(long, value_name = "ENDPOINT", default_values_t = [scale0::endpoints::VENT.to_string()])]
    bind: Vec<String>,
    /// Read jobs from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    input: Option<String>,
    #[command(flatten)]
    framing: Framing,
    /// Send one-frame jobs, as the Guide's ventilator does (for its workers).
    #[arg(long)]
    plain: bool,
    /// Per-job limit carried in each framed job, in milliseconds (0: none).
    #[arg(long, value_name = "MS", default_value_t = VentConfig::default().job_timeout_ms)]
    timeout_ms: u64,
    /// Wait for this many workers before sending, so the first to connect does not get
    /// every job.
    #[arg(long, value_name = "N", default_value_t = 1)]
    workers: usize,
    /// Jobs libzmq may queue per worker.
    #[arg(long, value_name = "N", default_value_t = VentConfig::default().socket_hwm, value_parser = clap::value_parser!(i32).range(1..))]
    hwm: i32,
    /// After the last job, how long queued jobs get to reach workers, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    linger_ms: u64,
    #[command(flatten)]
    limit: crate::limits::MessageLimit,
    #[command(flatten)]
    curve: crate::curve::ServerArgs,
}

pub(crate) fn vent(args: VentArgs) -> Result<ExitCode> {
    let jobs = read_jobs(args.input.as_deref(), args.framing.separator())?;
    let mut vent = Vent::bind(VentConfig {
        bind: args.bind,
        plain: args.plain,
        job_timeout_ms: args.timeout_ms,
        socket_hwm: args.hwm,
        max_message_bytes: args.limit.max_message_bytes,
        curve: args.curve.load()?,
    })?;
    for e in vent.endpoints() {
        println!("listening {e}");
    }
    std::io::stdout().flush()?;
    let shutdown = crate::stop_on_signals()?;
    vent.wait_for_workers(args.workers, &shutdown)?;
    for job in jobs {
        vent.send(job, &shutdown)?;
    }
    let sent = vent.sent();
    let workers = vent.workers()?;
    vent.finish(Duration::from_millis(args.linger_ms))?;
    eprintln!("vent: sent {sent} jobs to {workers} connected workers");
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------

/// Flags of `scale0 sink`.
#[derive(Debug, clap::Args)]
pub(crate) struct SinkArgs {
    /// Endpoint workers push results to (repeatable).
    #[arg(long, value_name = "ENDPOINT", default_values_t = [scale0::endpoints::SINK.to_string()])]
    bind: Vec<String>,
    /// Exit after this many results (framed or one-frame).
    #[arg(long, value_name = "N")]
    expect: Option<u64>,
    #[command(flatten)]
    framing: Framing,
    /// One JSON object per line: id, worker, status, output (and worker events).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    limit: crate::limits::MessageLimit,
    #[command(flatten)]
    curve: crate::curve::ServerArgs,
}

/// Lines about workers joining and leaving, at most [`Quieted::PER_SECOND`] a second: a
/// peer forging worker names by the thousand gets a count, not a line each.
#[derive(Default)]
struct Quieted {
    second: Option<std::time::Instant>,
    said: u32,
    unsaid: u64,
}

impl Quieted {
    const PER_SECOND: u32 = 20;

    fn say(&mut self, line: impl FnOnce()) {
        let now = std::time::Instant::now();
        if self
            .second
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            self.flush();
            self.second = Some(now);
            self.said = 0;
        }
        if self.said < Self::PER_SECOND {
            self.said += 1;
            line();
        } else {
            self.unsaid += 1;
        }
    }

    fn flush(&mut self) {
        if self.unsaid > 0 {
            eprintln!(
                "sink: {} more workers joined or left (not shown)",
                self.unsaid
            );
            self.unsaid = 0;
        }
    }
}

pub(crate) fn sink(args: SinkArgs) -> Result<ExitCode> {
    let sink = Sink::bind(SinkConfig {
        bind: args.bind,
        max_message_bytes: args.limit.max_message_bytes,
        curve: args.curve.load()?,
        ..SinkConfig::default()
    })?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for e in sink.endpoints() {
        writeln!(out, "listening {e}")?;
    }
    out.flush()?;
    let separator = args.framing.separator();
    let mut seen = 0u64;
    let mut failed = 0u64;
    let mut write_error = None;
    let expect = args.expect;
    let mut membership = Quieted::default();
    let mut each = |item: SinkItem| -> std::io::Result<bool> {
        if args.json {
            let v = match &item {
                SinkItem::Result {
                    worker,
                    id,
                    status,
                    output,
                } => {
                    serde_json::json!({"id": id, "worker": worker, "status": status.label(), "output": text(output)})
                }
                SinkItem::Plain(output) => serde_json::json!({"output": text(output)}),
                SinkItem::WorkerJoined { worker, capacity } => {
                    serde_json::json!({"event": "worker_joined", "worker": worker, "capacity": capacity})
                }
                SinkItem::WorkerLeft { worker } => {
                    serde_json::json!({"event": "worker_left", "worker": worker})
                }
            };
            writeln!(out, "{v}")?;
        } else {
            match &item {
                SinkItem::Result {
                    status: Status::Ok,
                    output,
                    ..
                }
                | SinkItem::Plain(output) => write_output(&mut out, output, separator)?,
                SinkItem::Result {
                    id,
                    worker,
                    status,
                    output,
                } => eprintln!(
                    "sink: job {id} {} on {worker}: {}",
                    status.label(),
                    text(output).trim_end()
                ),
                SinkItem::WorkerJoined { worker, capacity } => membership.say(|| {
                    eprintln!("sink: worker {worker} joined ({capacity} at once)");
                }),
                SinkItem::WorkerLeft { worker } => {
                    membership.say(|| eprintln!("sink: worker {worker} left"));
                }
            }
        }
        if matches!(item, SinkItem::Result { status, .. } if status != Status::Ok) {
            failed += 1;
        }
        if matches!(item, SinkItem::Result { .. } | SinkItem::Plain(_)) {
            seen += 1;
        }
        out.flush()?;
        Ok(expect.is_none_or(|n| seen < n))
    };
    let summary = sink.run(&crate::stop_on_signals()?, |item| match each(item) {
        Ok(more) => more,
        Err(e) => {
            write_error = Some(e);
            false
        }
    })?;
    if let Some(e) = write_error {
        return Err(e).context("writing results");
    }
    membership.flush();
    eprintln!(
        "sink: {seen} results, {failed} failed, {} malformed messages dropped",
        summary.malformed
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

// ---------------------------------------------------------------------------------------

/// Flags of `scale0 map`.
#[derive(Debug, clap::Args)]
pub(crate) struct MapArgs {
    /// Read jobs from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    input: Option<String>,
    #[command(flatten)]
    framing: Framing,
    /// Also run N workers in this process (with the task given here).
    #[arg(long, value_name = "N", default_value_t = 0)]
    local: u32,
    /// Endpoint workers pull jobs from (repeatable).
    #[arg(long, value_name = "ENDPOINT", default_values_t = [scale0::endpoints::VENT.to_string()])]
    vent: Vec<String>,
    /// Endpoint workers push results to (repeatable).
    #[arg(long, value_name = "ENDPOINT", default_values_t = [scale0::endpoints::SINK.to_string()])]
    sink: Vec<String>,
    /// Longest a job may run once started, in milliseconds (0: no limit).
    #[arg(long, value_name = "MS", default_value_t = pipeline::MapConfig::default().job_timeout_ms)]
    timeout_ms: u64,
    /// Runs after the first for a job that failed, timed out or lost its worker.
    #[arg(long, value_name = "N", default_value_t = pipeline::MapConfig::default().max_attempts - 1, value_parser = clap::value_parser!(u32).range(0..=1000))]
    retries: u32,
    /// Jobs sent to each worker beyond those it runs at once.
    #[arg(long, value_name = "N", default_value_t = pipeline::MapConfig::default().prefetch)]
    prefetch: u32,
    /// Heartbeats a worker may miss before its jobs are sent elsewhere.
    #[arg(long, value_name = "N", default_value_t = pipeline::MapConfig::default().liveness, value_parser = clap::value_parser!(u32).range(1..))]
    liveness: u32,
    /// Longest a sent job may wait to be started before it is sent again, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = pipeline::MapConfig::default().dispatch_timeout_ms, value_parser = clap::value_parser!(u64).range(1..))]
    dispatch_timeout_ms: u64,
    /// Most jobs in one message to workers that read batches (1: a job per message).
    #[arg(long, value_name = "N", default_value_t = pipeline::MapConfig::default().batch_jobs, value_parser = clap::value_parser!(u32).range(1..=pipeline::MAX_BATCH_JOBS as i64))]
    batch: u32,
    /// Most payload bytes in one batch (a larger job still goes, alone).
    #[arg(long, value_name = "BYTES", default_value_t = pipeline::MapConfig::default().batch_bytes)]
    batch_bytes: usize,
    /// Longest a batched job waits unstarted at a busy worker before it is handed back
    /// to go elsewhere, in milliseconds (0: never; then nothing is queued beyond
    /// --prefetch). A quarter of it bounds the work queued beyond --prefetch when jobs
    /// are short.
    #[arg(long, value_name = "MS", default_value_t = pipeline::MapConfig::default().hold_ms)]
    hold_ms: u64,
    /// Write results as they finish instead of in input order.
    #[arg(long)]
    unordered: bool,
    /// One JSON object per job: index, input, status, attempts, worker, output or error.
    #[arg(long)]
    json: bool,
    /// No progress bar, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    limit: crate::limits::MessageLimit,
    #[command(flatten)]
    curve: crate::curve::ServerArgs,
    #[command(flatten)]
    http: crate::http::HttpArgs,
}

pub(crate) fn map(args: MapArgs) -> Result<ExitCode> {
    let task = if args.local > 0 {
        Some(args.task.task()?)
    } else {
        if args.task.given() > 0 {
            bail!(
                "a task is only for --local workers: add --local N, or leave it to `scale0 work`"
            );
        }
        None
    };
    let separator = args.framing.separator();
    let jobs = read_jobs(args.input.as_deref(), separator)?;
    let mut map = Map::bind(MapConfig {
        vent: args.vent.clone(),
        sink: args.sink.clone(),
        core: pipeline::MapConfig {
            job_timeout_ms: args.timeout_ms,
            max_attempts: args.retries + 1,
            prefetch: args.prefetch,
            liveness: args.liveness,
            dispatch_timeout_ms: args.dispatch_timeout_ms,
            ordered: !args.unordered,
            batch_jobs: args.batch,
            batch_bytes: args.batch_bytes,
            hold_ms: args.hold_ms,
        },
        max_message_bytes: args.limit.max_message_bytes,
        curve: args.curve.load()?,
        ..MapConfig::default()
    })?;
    // Listening lines go to stderr: stdout carries only results, in order.
    for e in map.vent_endpoints().iter().chain(map.sink_endpoints()) {
        eprintln!("listening {e}");
    }
    let mut http = match args.http.config()? {
        Some(c) => Some(scale0::http::HttpServer::bind(c, scale0::http::Page::Map)?),
        None => None,
    };
    let board = std::cell::RefCell::new(crate::http::MapBoard::default());
    if let Some(h) = &mut http {
        eprintln!("listening {}", h.url());
        // Until the first progress report, the page shows a map that has not begun.
        h.publish_status(board.borrow().status(&scale0::MapProgress {
            counters: Default::default(),
            input_done: false,
            workers: 0,
            capacity: 0,
            in_flight: 0,
            elapsed: std::time::Duration::ZERO,
        }));
        h.start()?;
    }
    if let Some(task) = task {
        map.spawn_local(args.local, task)?;
    }
    // Drawn on stderr only when it is a terminal (indicatif hides it otherwise).
    let bar = if args.no_progress {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failures: Vec<Finished> = Vec::new();
    let mut write_error: Option<std::io::Error> = None;
    let json = args.json;
    let summary = map.run_channel(
        jobs,
        &crate::stop_on_signals()?,
        |f| {
            if http.is_some() {
                board.borrow_mut().finished(&f);
            }
            if write_error.is_some() {
                return;
            }
            let written = if json {
                let worker = f.worker.as_deref().map(text);
                let v = match &f.outcome {
                    Outcome::Done(output) => serde_json::json!({
                        "index": f.index, "input": text(&f.input), "status": "ok",
                        "attempts": f.attempts, "worker": worker, "output": text(output),
                    }),
                    Outcome::Failed(why) => serde_json::json!({
                        "index": f.index, "input": text(&f.input), "status": "failed",
                        "attempts": f.attempts, "worker": worker, "error": why,
                    }),
                };
                writeln!(out, "{v}")
            } else if let Outcome::Done(output) = &f.outcome {
                write_output(&mut out, output, separator)
            } else {
                Ok(())
            };
            if let Err(e) = written {
                write_error = Some(e);
            }
            if matches!(f.outcome, Outcome::Failed(_)) {
                failures.push(f);
            }
        },
        |p| {
            show_progress(&bar, p);
            if let Some(h) = &http {
                h.publish_status(board.borrow().status(p));
            }
        },
    )?;
    bar.finish_and_clear();
    out.flush()?;
    if let Some(e) = write_error {
        return Err(e).context("writing results");
    }
    let c = &summary.counters;
    let secs = summary.elapsed.as_secs_f64();
    eprintln!(
        "map: {} jobs in {secs:.2} s ({:.0} jobs/s): {} ok, {} failed, {} retried",
        c.jobs,
        c.done as f64 / secs.max(1e-9),
        c.done,
        c.failed,
        c.retried
    );
    for f in &failures {
        if let Outcome::Failed(why) = &f.outcome {
            eprintln!(
                "map: job {} failed after {} attempts: {why} (input: {})",
                f.index,
                f.attempts,
                excerpt(&f.input)
            );
        }
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Updates the bar: its length once the whole input is read (a spinner before), and the
/// counts, workers and rate as its message.
fn show_progress(bar: &indicatif::ProgressBar, p: &MapProgress) {
    let c = &p.counters;
    if p.input_done && c.jobs > 0 && bar.length() != Some(c.jobs) {
        bar.set_length(c.jobs);
        bar.set_style(
            indicatif::ProgressStyle::with_template("[{bar:24}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("#>-"),
        );
    }
    bar.set_position(c.done + c.failed);
    bar.set_message(progress_line(p));
}

/// `ok 510 failed 2 retried 7 | 4 workers (8 slots) | 210/s`, or `[reading input] ...`
/// before the input's end is known.
fn progress_line(p: &MapProgress) -> String {
    let c = &p.counters;
    let finished = c.done + c.failed;
    let rate = finished as f64 / p.elapsed.as_secs_f64().max(1e-3);
    let reading = if p.input_done { "" } else { "[reading input] " };
    let workers = if p.workers == 0 {
        "waiting for workers".to_string()
    } else {
        format!("{} workers ({} slots)", p.workers, p.capacity)
    };
    format!(
        "{reading}ok {} failed {} retried {} | {workers} | {rate:.0}/s",
        c.done, c.failed, c.retried
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_get_one_separator() {
        let mut out = Vec::new();
        write_output(&mut out, b"a", b'\n').unwrap();
        write_output(&mut out, b"b\n", b'\n').unwrap();
        write_output(&mut out, b"", b'\n').unwrap();
        write_output(&mut out, b"c", b'\0').unwrap();
        assert_eq!(out, b"a\nb\nc\0");
    }

    #[test]
    fn progress_shows_counts_rate_and_the_bar_its_length() {
        let p = MapProgress {
            counters: scale0::proto::pipeline::MapCounters {
                jobs: 100,
                done: 48,
                failed: 2,
                retried: 3,
                ..Default::default()
            },
            input_done: true,
            workers: 4,
            capacity: 8,
            in_flight: 8,
            elapsed: Duration::from_secs(5),
        };
        let line = progress_line(&p);
        assert!(line.starts_with("ok 48 failed 2 retried 3"), "{line}");
        assert!(line.contains("4 workers (8 slots)"), "{line}");
        assert!(line.ends_with("| 10/s"), "{line}");
        let bar = indicatif::ProgressBar::hidden();
        show_progress(&bar, &p);
        assert_eq!((bar.position(), bar.length()), (50, Some(100)));
        let reading = MapProgress {
            input_done: false,
            ..p
        };
        assert!(progress_line(&reading).starts_with("[reading input] "));
    }
}
