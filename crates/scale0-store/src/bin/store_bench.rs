//! Measures the durable stores behind the broker's `Store` trait on a broker-like load:
//! batches of new requests, each committed with one sync, while the oldest pending ones are
//! finished (deleted), plus the time to reopen a store holding many pending requests.
//!
//! ```text
//! cargo run --release -p scale0-store --features compare --bin store-bench -- \
//!     [--requests N] [--batch B] [--pending P] [--value-bytes V] [--recover R] \
//!     [--repeat K] [--stores log,redb,fjall]
//! ```

use scale0_store::compare::{FjallStore, RedbStore};
use scale0_store::{LogOptions, LogStore, Store};
use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
struct Args {
    requests: u64,
    batch: u64,
    pending: u64,
    value_bytes: usize,
    recover: u64,
    repeat: usize,
    stores: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        requests: 100_000,
        batch: 64,
        pending: 1_000,
        value_bytes: 128,
        recover: 100_000,
        repeat: 3,
        stores: vec!["log".into(), "redb".into(), "fjall".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--requests" => a.requests = num()?,
            "--batch" => a.batch = num()?.max(1),
            "--pending" => a.pending = num()?,
            "--value-bytes" => {
                a.value_bytes = usize::try_from(num()?).map_err(|e| e.to_string())?;
            }
            "--recover" => a.recover = num()?,
            "--repeat" => a.repeat = usize::try_from(num()?.max(1)).map_err(|e| e.to_string())?,
            "--stores" => a.stores = value.split(',').map(str::to_string).collect(),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn open(kind: &str, dir: &Path) -> std::io::Result<Box<dyn Store>> {
    Ok(match kind {
        "log" => Box::new(LogStore::open(dir, LogOptions::default())?.0),
        "redb" => Box::new(RedbStore::open(dir)?),
        "fjall" => Box::new(FjallStore::open(dir)?),
        other => return Err(std::io::Error::other(format!("unknown store {other}"))),
    })
}

/// Broker-like load: returns (elapsed, commits).
fn churn(store: &mut dyn Store, a: &Args) -> std::io::Result<(Duration, u64)> {
    let value = vec![0x5a; a.value_bytes];
    let mut pending = VecDeque::new();
    let mut commits = 0;
    let start = Instant::now();
    let mut key = 0;
    while key < a.requests {
        for _ in 0..a.batch {
            key += 1;
            store.put(key, &value)?;
            pending.push_back(key);
            if pending.len() as u64 > a.pending
                && let Some(done) = pending.pop_front()
            {
                store.delete(done)?;
            }
        }
        store.commit()?;
        commits += 1;
    }
    Ok((start.elapsed(), commits))
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += dir_bytes(&p);
            } else if let Ok(m) = e.metadata() {
                total += m.len();
            }
        }
    }
    total
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    println!(
        "requests {} in batches of {} (one commit each), {} pending, {}-byte values; recovery of {} pending; median of {}",
        a.requests, a.batch, a.pending, a.value_bytes, a.recover, a.repeat
    );
    println!(
        "{:<6} {:>12} {:>12} {:>10} {:>12} {:>14}",
        "store", "requests/s", "commits/s", "us/commit", "disk after", "recovery ms"
    );
    for kind in &a.stores {
        let mut rates = Vec::new();
        let mut commit_rates = Vec::new();
        let mut per_commit = Vec::new();
        let mut recoveries = Vec::new();
        let mut disk = 0;
        for _ in 0..a.repeat {
            let tmp =
                std::env::temp_dir().join(format!("store-bench-{}-{kind}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            {
                let mut store = open(kind, &tmp)?;
                let (elapsed, commits) = churn(store.as_mut(), &a)?;
                let secs = elapsed.as_secs_f64();
                rates.push(a.requests as f64 / secs);
                commit_rates.push(commits as f64 / secs);
                per_commit.push(secs * 1e6 / commits as f64);
                disk = dir_bytes(&tmp);
            }
            let _ = std::fs::remove_dir_all(&tmp);
            {
                let mut store = open(kind, &tmp)?;
                let value = vec![0x5a; a.value_bytes];
                for key in 1..=a.recover {
                    store.put(key, &value)?;
                    if key % 1000 == 0 {
                        store.commit()?;
                    }
                }
                store.commit()?;
            }
            let start = Instant::now();
            let mut store = open(kind, &tmp)?;
            let loaded = store.load()?;
            recoveries.push(start.elapsed().as_secs_f64() * 1e3);
            assert_eq!(loaded.len() as u64, a.recover, "{kind} lost entries");
            drop(store);
            let _ = std::fs::remove_dir_all(&tmp);
        }
        println!(
            "{:<6} {:>12.0} {:>12.0} {:>10.0} {:>12} {:>14.1}",
            kind,
            median(rates),
            median(commit_rates),
            median(per_commit),
            disk,
            median(recoveries)
        );
    }
    Ok(())
}
