//! What the comparison tools share: a run's summary in the JSON shape of `scale0 bench
//! --json`, and the process-per-part plumbing of their `--processes` mode (each part this
//! same binary, started with a hidden `--role`, reporting back on its stdout).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// One run of a case: its rate and every round trip in nanoseconds, sorted.
pub struct Run {
    pub rate: f64,
    pub latencies: Vec<u64>,
}

/// The `q` quantile of sorted nanoseconds, in microseconds.
pub fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[rank] as f64 / 1000.0
}

/// Requests of each of `parts` clients, as even as can be.
pub fn split(total: u64, parts: u32) -> Vec<u64> {
    let parts = u64::from(parts.max(1));
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// What a case's runs come to: the median rate (the mean of the middle two for an even
/// count, as `scale0 bench` takes it), every rate sorted, and the latency quantiles of the
/// run with the median p50.
#[allow(clippy::too_many_arguments)]
pub fn report(
    scenario: &str,
    shape: &str,
    mode: &str,
    size: usize,
    count: u64,
    workers: Option<u32>,
    clients: u32,
    in_flight: u32,
    mut runs: Vec<Run>,
) -> serde_json::Value {
    let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
    rates.sort_by(f64::total_cmp);
    let median = match rates.len() {
        0 => 0.0,
        n if n % 2 == 1 => rates[n / 2],
        n => (rates[n / 2 - 1] + rates[n / 2]) / 2.0,
    };
    runs.sort_by(|a, b| quantile(&a.latencies, 0.5).total_cmp(&quantile(&b.latencies, 0.5)));
    let mid: &[u64] = runs.get(runs.len() / 2).map_or(&[], |r| &r.latencies);
    let mut v = serde_json::json!({
        "scenario": scenario,
        "shape": shape,
        "mode": mode,
        "size": size,
        "count": count,
        "clients": clients,
        "in_flight": in_flight,
        "rate_median": median.round(),
        "rates": rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        "lost": 0,
        "p50_us": quantile(mid, 0.5).round(),
        "p99_us": quantile(mid, 0.99).round(),
        "p999_us": quantile(mid, 0.999).round(),
    });
    if let Some(w) = workers {
        v["workers"] = w.into();
    }
    v
}

/// What a client process prints: one JSON line.
pub fn client_line(messages: u64, elapsed: Duration, latencies_ns: &[u64]) -> String {
    serde_json::json!({
        "messages": messages,
        "elapsed_ns": u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        "latencies_ns": latencies_ns,
    })
    .to_string()
}

/// Children killed when dropped, so a failed run leaves nothing behind.
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// This binary, to be started with a `--role`. Its stdin is a pipe held by this process,
/// so a part whose parent is gone sees end of file and stops.
pub fn this_binary() -> Result<Command, Error> {
    let mut c = Command::new(std::env::current_exe()?);
    c.stdin(Stdio::piped()).stdout(Stdio::piped());
    Ok(c)
}

/// Exits this process when its stdin closes (the parent is gone); for long-lived parts.
pub fn exit_with_parent() {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
}

/// Starts a long-lived part and waits for its first line (an endpoint, or "ready").
pub fn start_part(cmd: &mut Command, children: &mut Children) -> Result<String, Error> {
    let mut child = cmd.spawn()?;
    let out = child.stdout.take().ok_or("no stdout")?;
    children.0.push(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    if line.trim().is_empty() {
        return Err("a part exited before it was ready".into());
    }
    Ok(line.trim().to_string())
}

/// Starts every client process at once, waits for all, and merges what they measured:
/// requests summed, the longest client's time as the run's, every round trip.
pub fn run_clients(cmds: Vec<Command>) -> Result<Run, Error> {
    let mut children = Children::default();
    for mut c in cmds {
        children.0.push(c.spawn()?);
    }
    let mut messages = 0u64;
    let mut elapsed_ns = 0u64;
    let mut latencies = Vec::new();
    for c in &mut children.0 {
        let mut out = String::new();
        if let Some(mut s) = c.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        let status = c.wait()?;
        if !status.success() {
            return Err(format!("a client process failed: {status}").into());
        }
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .map_err(|e| format!("a client printed {out:?}: {e}"))?;
        messages += v["messages"].as_u64().unwrap_or(0);
        elapsed_ns = elapsed_ns.max(v["elapsed_ns"].as_u64().unwrap_or(0));
        latencies.extend(
            v["latencies_ns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_u64),
        );
    }
    latencies.sort_unstable();
    let secs = elapsed_ns as f64 / 1e9;
    Ok(Run {
        rate: if secs > 0.0 { messages as f64 / secs } else { 0.0 },
        latencies,
    })
}
