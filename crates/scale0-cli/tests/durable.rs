//! The durable broker as a real process: accepted requests survive `kill -9` under
//! pipelined load, stored replies reach only clients that chose their routing id, Titanic
//! (RFC 9) works for a Python client across restarts, and a damaged log recovers as
//! documented.

mod common;

use bytes::Bytes;
use common::*;
use scale0::{Client, ClientConfig};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime};

/// A durable broker on `bind` with its data in `dir`; info-level logs go to `dir/../NAME.log`.
fn durable(bind: &str, dir: &Path, log: &Path, extra: &[&str]) -> Broker {
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut args = vec![
        "--data-dir",
        dir.to_str().unwrap(),
        "--heartbeat-interval-ms",
        "250",
    ];
    args.extend_from_slice(extra);
    Broker::start_with(bind, &args, |cmd| {
        cmd.env("RUST_LOG", "info").stderr(Stdio::from(log_file));
    })
}

fn echo_worker(endpoint: &str) -> Proc {
    let mut cmd = scale0();
    cmd.args([
        "worker",
        "--connect",
        endpoint,
        "--service",
        "echo",
        "--echo",
        "--concurrency",
        "2",
        // One request at a time each, so that a run lasts through the kills (with the
        // default credit the requests are done before the first).
        "--capacity",
        "1",
        "--heartbeat-interval-ms",
        "250",
    ]);
    Proc::spawn("echo worker", cmd)
}

/// The numbers `recovered from the request log requests=N` reported in a broker log.
fn recovered(log: &Path) -> Vec<u64> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("recovered from the request log"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("requests="))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

/// A scratch directory: the data directory and the broker's log file inside it.
fn site() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, log) = (tmp.path().join("data"), tmp.path().join("broker.log"));
    (tmp, dir, log)
}

/// A small xorshift generator: random kill moments, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("SCALE0_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64 | 1)
            });
        eprintln!("kill moments from SCALE0_KILL_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn no_accepted_request_is_lost_or_answered_twice_through_kill9_restarts() {
    let (_tmp, dir, log) = site();
    let mut broker = durable("tcp://127.0.0.1:*", &dir, &log, &[]);
    let bind = format!("tcp://127.0.0.1:{}", broker.port());
    let endpoint = broker.endpoint.clone();
    let _worker = echo_worker(&endpoint);

    const N: usize = 2000;
    let client = thread::spawn(move || {
        let mut config = ClientConfig::new(endpoint);
        config.timeout_ms = 1000;
        config.retries = 30;
        let mut client = Client::connect(config).unwrap();
        let bodies = (0..N).map(|i| vec![Bytes::from(format!("job {i}"))]);
        let mut answers = vec![Vec::new(); N];
        let summary = client
            .request_many("echo", bodies, 40, |i, r| {
                answers[i].push(r.map(|r| r.body).map_err(|e| e.to_string()));
            })
            .unwrap();
        (summary, answers)
    });

    let mut rng = Rng::new();
    for _ in 0..3 {
        // Not a synchronisation: the random moment of the next crash.
        thread::sleep(Duration::from_millis(200 + rng.below(600)));
        broker.proc.kill9();
        broker = durable(&bind, &dir, &log, &[]);
    }
    let (summary, answers) = client.join().unwrap();

    assert_eq!(summary.sent, N as u64);
    assert_eq!(summary.ok, N as u64, "{summary:?}");
    assert_eq!(summary.timed_out + summary.errors + summary.rejected, 0);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.len(), 1, "request {i} answered {} times", a.len());
        let body = a[0].as_ref().unwrap();
        assert_eq!(body, &vec![Bytes::from(format!("job {i}"))], "request {i}");
    }
    // The first start found an empty store, then one line per restart.
    eventually("every restart logs its recovery", || {
        recovered(&log).len() == 4
    });
    let counts = recovered(&log);
    assert_eq!(counts.len(), 4, "three restarts logged: {counts:?}");
    assert!(
        counts.iter().sum::<u64>() > 0,
        "the kills found accepted requests on disk: {counts:?}"
    );

    // Everything answered is gone from the store: a restart finds nothing to redo.
    broker.proc.kill9();
    let _broker = durable(&bind, &dir, &log, &[]);
    eventually("the last restart logs its recovery", || {
        recovered(&log).len() == 5
    });
    assert_eq!(recovered(&log).last(), Some(&0));
}

#[test]
fn stored_requests_run_after_a_restart_and_replies_go_only_to_chosen_ids() {
    let (_tmp, dir, log) = site();
    let mut broker = durable("tcp://127.0.0.1:*", &dir, &log, &[]);
    let bind = format!("tcp://127.0.0.1:{}", broker.port());
    let endpoint = broker.endpoint.clone();

    // One MDP client with libzmq's generated routing id sends and goes away; a native
    // client (its own routing id, retries with the same request ids) waits through the
    // restart.
    let anonymous = py_dealer(
        &endpoint,
        "echo",
        3,
        3,
        &["--body", "anon {i}", "--timeout-ms", "300"],
    );
    assert_eq!(anonymous.replies(), 0, "no worker yet");
    let mut native = scale0();
    native
        .args(["request", "--connect", &endpoint, "--service", "echo"])
        .args([
            "--count",
            "5",
            "--in-flight",
            "5",
            "--timeout-ms",
            "500",
            "--retries",
            "60",
        ])
        .arg("native")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let native = native.stdin(Stdio::null()).spawn().expect("native client");
    eventually("all eight requests are on disk", || stored_puts(&dir) >= 8);
    broker.proc.kill9();
    let broker = durable(&bind, &dir, &log, &[]);
    // The recovery line follows the `listening` line.
    eventually("the restart logs its recovery", || {
        recovered(&log).len() == 2
    });
    assert_eq!(
        recovered(&log),
        vec![0, 8],
        "an empty start, then all eight"
    );

    let mut cmd = peer("mdp_worker.py");
    cmd.args([
        "--endpoint",
        &broker.endpoint,
        "--service",
        "echo",
        "--name",
        "w1",
    ])
    .args(["--log", "--heartbeat-ms", "250"])
    .stdout(Stdio::piped());
    let mut worker = Proc::spawn("python worker", cmd);
    let out = finish(native, "native client");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{summary} {}", tail(&out.stderr));
    assert!(summary.contains("requests 5  ok 5  errors 0"), "{summary}");

    // "ready", then one line per request served: the anonymous ones ran too, and the
    // native ones ran once each (their retries attached to the stored requests).
    let lines = read_lines_until(&mut worker, 9);
    for i in 0..3 {
        assert!(lines.contains(&format!("served anon {i}")), "{lines:?}");
    }
    assert_eq!(
        lines.iter().filter(|l| *l == "served native").count(),
        5,
        "{lines:?}"
    );
    eventually("the three replies nobody may receive are counted", || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("stale_client"))
            .count()
            >= 2 // logged at the 1st and 2nd drop, then at powers of two
    });
}

/// Put records in the request log, read with the documented record layout.
fn stored_puts(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut puts = 0;
    for e in entries.flatten() {
        if e.path().extension().is_none_or(|x| x != "log") {
            continue;
        }
        let data = fs::read(e.path()).unwrap_or_default();
        let mut at = 8;
        while at + 9 <= data.len() {
            let len = u32::from_le_bytes(data[at + 4..at + 8].try_into().unwrap()) as usize;
            if at + 8 + len > data.len() {
                break;
            }
            puts += usize::from(data[at + 8] == 1);
            at += 8 + len;
        }
    }
    puts
}

/// Reads `n` lines of a child's stdout, failing after the hang bound.
fn read_lines_until(proc: &mut Proc, n: usize) -> Vec<String> {
    use std::io::BufRead;
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    while out.len() < n {
        match rx.recv_timeout(HANG) {
            Ok(line) => out.push(line),
            Err(_) => panic!("{} printed {} of {n} lines: {out:?}", proc.name, out.len()),
        }
    }
    out
}

fn titanic(endpoint: &str, verb: &str, args: &[&str]) -> Vec<String> {
    let mut cmd = peer("titanic_client.py");
    cmd.args(["--endpoint", endpoint, verb]).args(args);
    let out = run(cmd);
    assert!(
        out.status.success(),
        "titanic {verb}: {}",
        tail(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn titanic_serves_an_rfc9_client_across_kill9_restarts() {
    let (_tmp, dir, log) = site();
    let mut broker = durable("tcp://127.0.0.1:*", &dir, &log, &[]);
    let bind = format!("tcp://127.0.0.1:{}", broker.port());
    let ep = broker.endpoint.clone();

    let reply = titanic(&ep, "request", &["echo", "hello titanic"]);
    assert_eq!(reply[0], "200");
    let uuid = reply[1].clone();
    assert_eq!(titanic(&ep, "reply", &[&uuid]), vec!["300"]);

    broker.proc.kill9();
    broker = durable(&bind, &dir, &log, &[]);
    assert_eq!(
        titanic(&ep, "reply", &[&uuid]),
        vec!["300"],
        "still pending"
    );
    let _worker = echo_worker(&ep);
    eventually("the stored request is served", || {
        titanic(&ep, "reply", &[&uuid])[0] == "200"
    });
    assert_eq!(
        titanic(&ep, "reply", &[&uuid]),
        vec!["200", "hello titanic"]
    );

    broker.proc.kill9();
    let _broker = durable(&bind, &dir, &log, &[]);
    assert_eq!(
        titanic(&ep, "reply", &[&uuid]),
        vec!["200", "hello titanic"],
        "the reply is on disk until closed"
    );
    assert_eq!(titanic(&ep, "close", &[&uuid]), vec!["200"]);
    assert_eq!(titanic(&ep, "reply", &[&uuid]), vec!["400"]);
}

/// Ten Titanic requests stored with no worker, then the broker killed: returns the UUIDs
/// and the segment holding them.
fn ten_stored_requests(dir: &Path, log: &Path) -> (String, Vec<String>, PathBuf) {
    let mut broker = durable("tcp://127.0.0.1:*", dir, log, &[]);
    let bind = format!("tcp://127.0.0.1:{}", broker.port());
    let uuids: Vec<String> = (0..10)
        .map(|i| {
            titanic(
                &broker.endpoint,
                "request",
                &["nobody", &format!("job {i}")],
            )[1]
            .clone()
        })
        .collect();
    broker.proc.kill9();
    let mut segments: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    (bind, uuids, segments.pop().unwrap())
}

fn statuses(endpoint: &str, uuids: &[String]) -> Vec<String> {
    uuids
        .iter()
        .map(|u| titanic(endpoint, "reply", &[u])[0].clone())
        .collect()
}

#[test]
fn a_truncated_log_loses_only_its_torn_last_record() {
    let (_tmp, dir, log) = site();
    let (bind, uuids, segment) = ten_stored_requests(&dir, &log);
    let len = fs::metadata(&segment).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 7)
        .unwrap();

    let broker = durable(&bind, &dir, &log, &[]);
    let mut expected = vec!["300".to_string(); 9];
    expected.push("400".into());
    assert_eq!(statuses(&broker.endpoint, &uuids), expected);
    assert!(fs::read_to_string(&log).unwrap().contains("torn record"));
}

#[test]
fn a_bit_flip_in_the_middle_stops_the_broker_until_repair_is_asked() {
    let (_tmp, dir, log) = site();
    let (bind, uuids, segment) = ten_stored_requests(&dir, &log);
    let mut data = fs::read(&segment).unwrap();
    // Records are the same size: flip a bit inside the fifth.
    let record = (data.len() - 8) / 10;
    data[8 + 4 * record + record / 2] ^= 0x04;
    fs::write(&segment, &data).unwrap();

    let mut cmd: Command = scale0();
    cmd.args([
        "broker",
        "--bind",
        &bind,
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    let out = run(cmd);
    assert!(!out.status.success(), "a damaged log must stop the broker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(segment.file_name().unwrap().to_str().unwrap()) && err.contains("repair"),
        "the error names the file and the way out: {err}"
    );
    assert!(out.stdout.is_empty(), "nothing listened");

    let broker = durable(&bind, &dir, &log, &["--repair-log"]);
    let got = statuses(&broker.endpoint, &uuids);
    let mut expected = vec!["300".to_string(); 10];
    expected[4] = "400".into();
    assert_eq!(got, expected, "only the damaged request is lost");
}

#[test]
fn a_second_broker_on_the_same_directory_is_refused_clearly() {
    let (_tmp, dir, log) = site();
    let _first = durable("tcp://127.0.0.1:*", &dir, &log, &[]);
    let mut cmd = scale0();
    cmd.args([
        "broker",
        "--bind",
        "tcp://127.0.0.1:*",
        "--data-dir",
        dir.to_str().unwrap(),
    ]);
    let out = run(cmd);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("in use by another process").count(),
        1,
        "one clear line, said once: {err}"
    );
    assert!(out.stdout.is_empty(), "nothing listened");
}
