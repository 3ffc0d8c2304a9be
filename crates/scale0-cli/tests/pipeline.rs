//! Pipelines with real processes: `scale0 map`, `vent`, `work`, `sink`, the Guide's
//! single-frame programs (pyzmq, tests/peers/task_*.py) in any stage, and workers on other
//! hosts (network namespaces joined by veth pairs).

mod common;

use common::{HANG, Lines, Net, Proc, eventually, peer, scale0, spawn_lines};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

const LOOPBACK: &str = "tcp://127.0.0.1:*";

/// A job file of `n` lines `job-0` .. `job-{n-1}`.
fn job_file(dir: &tempfile::TempDir, n: usize, name: &str) -> String {
    let path = dir.path().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    for i in 0..n {
        writeln!(f, "job-{i}").unwrap();
    }
    path.to_string_lossy().into_owned()
}

/// A child with stdout and stderr both collected as lines.
struct Running {
    proc: Proc,
    out: Lines,
    err: Lines,
}

fn start(name: &str, mut cmd: Command) -> Running {
    cmd.stderr(Stdio::piped());
    let (mut proc, out) = spawn_lines(name, cmd);
    let err = Lines::collect(proc.child.stderr.take().expect("piped stderr"));
    Running { proc, out, err }
}

impl Running {
    /// Waits for the exit (the pipes drain meanwhile) and returns its status.
    fn wait(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.proc.child.try_wait().unwrap() {
                // The collectors read to the end of the pipes.
                std::thread::sleep(std::time::Duration::from_millis(100));
                return status;
            }
            assert!(
                started.elapsed() < HANG * 4,
                "{} hung; stderr: {:?}",
                self.proc.name,
                self.err.get()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// `scale0 map` on loopback ports; returns it and its (vent, sink) endpoints.
fn map(args: &[&str]) -> (Running, String, String) {
    let mut cmd = scale0();
    cmd.args(["map", "--vent", LOOPBACK, "--sink", LOOPBACK, "--json"])
        .args(args);
    let m = start("map", cmd);
    let ends = m.err.listening(2);
    let (vent, sink) = (ends[0].clone(), ends[1].clone());
    (m, vent, sink)
}

fn work(vent: &str, sink: &str, name: &str, task: &[&str]) -> Proc {
    let mut cmd = scale0();
    cmd.args(["work", "--vent", vent, "--sink", sink, "--name", name])
        .args(["--capacity", "1", "--interval-ms", "200"])
        .args(task)
        .stdout(Stdio::null());
    Proc::spawn(name, cmd)
}

fn json_lines(lines: &Lines) -> Vec<Value> {
    lines
        .get()
        .iter()
        .filter(|l| !l.starts_with("listening "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// One result per job of a `job_file`, in input order, each ok with its own output.
fn assert_each_ok_once_in_order(results: &[Value], n: usize) {
    assert_eq!(results.len(), n, "one result per job");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i as u64, "in input order");
        assert_eq!(r["status"], "ok");
        assert_eq!(r["output"], format!("job-{i}"), "its own output");
    }
}

#[test]
fn map_survives_a_killed_worker_and_a_late_one_takes_work() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = job_file(&dir, 1000, "jobs");
    let (mut m, vent, sink) = map(&["--input", &jobs]);
    let task = ["--sleep-ms", "20"];
    let mut workers: Vec<Proc> = (0..4)
        .map(|i| work(&vent, &sink, &format!("w{i}"), &task))
        .collect();
    m.out.wait_for("\"status\":\"ok\"", 250);
    workers[1].kill9();
    let late = work(&vent, &sink, "late", &task);
    assert!(m.wait().success(), "map failed: {:?}", m.err.get());
    drop(late);
    drop(workers);

    let results = json_lines(&m.out);
    assert_each_ok_once_in_order(&results, 1000);
    let ran = |name: &str| results.iter().filter(|r| r["worker"] == name).count();
    assert!(ran("late") > 0, "the worker that joined mid-run took work");
    assert!(ran("w1") > 0, "the killed worker had taken work");
    let summary = m.err.get().join("\n");
    assert!(summary.contains("1000 jobs"), "{summary}");
    assert!(summary.contains("1000 ok, 0 failed"), "{summary}");
}

#[test]
fn a_worker_killed_holding_a_batch_of_short_jobs_loses_none() {
    // Short jobs go in batches, several queued at each worker: a kill strands some.
    let dir = tempfile::tempdir().unwrap();
    let jobs = job_file(&dir, 20_000, "jobs");
    let (mut m, vent, sink) = map(&["--input", &jobs]);
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| work(&vent, &sink, &format!("w{i}"), &["--echo"]))
        .collect();
    m.out.wait_for("\"status\":\"ok\"", 3000);
    workers[0].kill9();
    assert!(m.wait().success(), "map failed: {:?}", m.err.get());
    drop(workers);

    let results = json_lines(&m.out);
    assert_each_ok_once_in_order(&results, 20_000);
    assert!(
        results.iter().any(|r| r["worker"] == "w0"),
        "the killed worker took work"
    );
    let summary = m.err.get().join("\n");
    assert!(summary.contains("20000 ok, 0 failed"), "{summary}");
}

#[test]
fn a_job_that_always_fails_is_reported_after_its_retries() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = job_file(&dir, 30, "jobs");
    let script = r#"case "$0" in job-13) echo "cannot do $0" >&2; exit 3;; esac; echo "did $0""#;
    let mut cmd = scale0();
    cmd.args([
        "map", "--vent", LOOPBACK, "--sink", LOOPBACK, "--input", &jobs,
    ])
    .args([
        "--local",
        "3",
        "--retries",
        "2",
        "--",
        "sh",
        "-c",
        script,
        "{}",
    ]);
    let mut m = start("map", cmd);
    let status = m.wait();
    assert_eq!(status.code(), Some(1), "failures make a non-zero exit");
    let out = m.out.get();
    let expected: Vec<String> = (0..30)
        .filter(|i| *i != 13)
        .map(|i| format!("did job-{i}"))
        .collect();
    assert_eq!(out, expected, "every other job's output, in order");
    let err = m.err.get().join("\n");
    assert!(
        err.contains("job 13 failed after 3 attempts") && err.contains("cannot do job-13"),
        "{err}"
    );
    assert!(err.contains("29 ok, 1 failed, 2 retried"), "{err}");
}

#[test]
fn a_job_that_cannot_start_fails_once_and_its_long_input_is_cut_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    // A 1 MB argument is over Linux's limit for one (128 KiB): E2BIG, every time.
    std::fs::write(&jobs, format!("{}\nshort\n", "a".repeat(1 << 20))).unwrap();
    let mut cmd = scale0();
    cmd.args(["map", "--vent", LOOPBACK, "--sink", LOOPBACK, "--input"])
        .arg(&jobs)
        .args(["--local", "1", "--retries", "2", "--", "echo", "{}"]);
    let mut m = start("map", cmd);
    assert_eq!(m.wait().code(), Some(1));
    assert_eq!(m.out.get(), ["short"]);
    let err = m.err.get();
    let line = err
        .iter()
        .find(|l| l.contains("job 0 failed"))
        .unwrap_or_else(|| panic!("{err:?}"));
    assert!(
        line.contains("failed after 1 attempts"),
        "not retried: {line}"
    );
    assert!(line.contains("(1048576 bytes in all)"), "{line}");
    assert!(line.len() < 500, "the message quotes {} bytes", line.len());
    assert!(
        err.iter().any(|l| l.contains("1 ok, 1 failed, 0 retried")),
        "{err:?}"
    );
}

#[test]
fn a_job_over_its_timeout_is_stopped_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs");
    std::fs::write(&path, "0.01\n30\n0.01\n").unwrap();
    let mut cmd = scale0();
    cmd.args(["map", "--vent", LOOPBACK, "--sink", LOOPBACK])
        .args(["--input", path.to_str().unwrap(), "--timeout-ms", "300"])
        .args(["--retries", "1", "--local", "2", "--", "sleep", "{}"]);
    let mut m = start("map", cmd);
    assert_eq!(m.wait().code(), Some(1));
    let err = m.err.get().join("\n");
    assert!(
        err.contains("job 1 failed after 2 attempts: timed out after 300 ms"),
        "{err}"
    );
}

#[test]
fn vent_spreads_jobs_and_a_worker_that_leaves_gets_none_until_it_returns() {
    let mut cmd = scale0();
    cmd.args(["sink", "--bind", LOOPBACK, "--json"]);
    let s = start("sink", cmd);
    let sink = s.out.listening(1)[0].clone();
    // Jobs arrive on the vent's stdin as results come back, as from a live source: the
    // vent hands each to a worker connected at that moment (what it already pushed into a
    // worker's socket buffers is that worker's).
    let mut cmd = scale0();
    cmd.args(["vent", "--bind", LOOPBACK, "--workers", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting the vent");
    let mut feed = child.stdin.take().expect("piped stdin");
    let vent_out = Lines::collect(child.stdout.take().expect("piped stdout"));
    let vent_err = Lines::collect(child.stderr.take().expect("piped stderr"));
    let mut v = Running {
        proc: Proc {
            child,
            name: "vent".into(),
        },
        out: vent_out,
        err: vent_err,
    };
    let vent = v.out.listening(1)[0].clone();
    let task = ["--sleep-ms", "5"];
    let mut w: Vec<Proc> = (0..3)
        .map(|i| work(&vent, &sink, &format!("w{i}"), &task))
        .collect();
    let mut oks = Oks::new(&s.out);
    let mut fed = 0;
    // Keeps about 30 jobs outstanding until `done` results are in; returns the number of
    // jobs fed so far.
    let mut run_until = |done: usize, oks: &mut Oks<'_>| {
        let started = Instant::now();
        loop {
            let n = oks.update();
            if n >= done {
                return fed;
            }
            assert!(started.elapsed() < HANG, "stuck at {n} results of {done}");
            while fed < n + 30 {
                writeln!(feed, "job-{fed}").unwrap();
                fed += 1;
            }
            feed.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    run_until(150, &mut oks);
    w[1].kill9();
    let at_kill = oks.update();
    // Jobs it held are lost with it (a vent does not re-send: that is what `map` is
    // for), but from the next batch on none go its way: every one is answered.
    let first_after = run_until(at_kill + 30, &mut oks);
    let fed_before_return = run_until(at_kill + 150, &mut oks);
    eventually("jobs sent after the kill are answered", || {
        oks.update();
        (first_after..fed_before_return).all(|i| oks.outputs.contains(&format!("job-{i}")))
    });
    w[1] = work(&vent, &sink, "w1", &task);
    let at_return = oks.update();
    run_until(at_return + 300, &mut oks);
    let from = |name: &str, range: std::ops::RangeFrom<usize>| {
        oks.workers[range].iter().filter(|w| *w == name).count()
    };
    assert!(
        from("w1", at_return..) >= 30,
        "the returning worker got its share: {} of {}",
        from("w1", at_return..),
        oks.workers.len() - at_return
    );
    drop(feed);
    assert!(v.wait().success(), "{:?}", v.err.get());
    assert!(from("w0", 0..) > 100 && from("w2", 0..) > 100);
}

/// A sink's `ok` results in arrival order, parsed as they come (each line once).
struct Oks<'a> {
    lines: &'a Lines,
    seen: usize,
    workers: Vec<String>,
    outputs: std::collections::HashSet<String>,
}

impl<'a> Oks<'a> {
    fn new(lines: &'a Lines) -> Self {
        Self {
            lines,
            seen: 0,
            workers: Vec::new(),
            outputs: std::collections::HashSet::new(),
        }
    }

    /// Reads the new lines; returns how many ok results there are.
    fn update(&mut self) -> usize {
        let new = self.lines.since(self.seen);
        self.seen += new.len();
        for line in new.iter().filter(|l| !l.starts_with("listening ")) {
            let r: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            if r["status"] == "ok" {
                self.workers
                    .push(r["worker"].as_str().unwrap_or_default().to_string());
                self.outputs
                    .insert(r["output"].as_str().unwrap_or_default().to_string());
            }
        }
        self.workers.len()
    }
}

#[test]
fn the_guides_single_frame_programs_stand_in_for_any_stage() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = job_file(&dir, 200, "jobs");
    let expected: Vec<String> = (0..200).map(|i| format!("job-{i}")).collect();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // The Guide's ventilator -> scale0 work -> scale0 sink.
    let mut cmd = scale0();
    cmd.args(["sink", "--bind", LOOPBACK, "--expect", "200"]);
    let mut s = start("sink", cmd);
    let sink = s.out.listening(1)[0].clone();
    let mut cmd = peer("task_vent.py");
    cmd.args(["--bind", "tcp://127.0.0.1:0", "--jobs", &jobs]);
    let v = start("py vent", cmd);
    let vent = v.out.listening(1)[0].clone();
    let _w = work(&vent, &sink, "w", &["--echo"]);
    assert!(s.wait().success(), "{:?}", s.err.get());
    let got: Vec<String> = s.out.get().into_iter().skip(1).collect();
    assert_eq!(sorted(got), sorted(expected.clone()));

    // scale0 vent --plain -> the Guide's worker -> the Guide's sink.
    let mut cmd = peer("task_sink.py");
    cmd.args(["--bind", "tcp://127.0.0.1:0", "--expect", "200"]);
    let mut s = start("py sink", cmd);
    let sink = s.out.listening(1)[0].clone();
    let mut cmd = scale0();
    cmd.args(["vent", "--plain", "--bind", LOOPBACK, "--input", &jobs]);
    let v = start("vent", cmd);
    let vent = v.out.listening(1)[0].clone();
    let mut cmd = peer("task_work.py");
    cmd.args(["--vent", &vent, "--sink", &sink]);
    let _w = start("py worker", cmd);
    assert!(s.wait().success(), "{:?}", s.err.get());
    let got: Vec<String> = s
        .out
        .get()
        .into_iter()
        .filter(|l| l.starts_with("JOB-"))
        .map(|l| l.to_lowercase())
        .collect();
    assert_eq!(sorted(got), sorted(expected));

    // The Guide's ventilator -> the Guide's worker -> scale0 sink.
    let mut cmd = scale0();
    cmd.args(["sink", "--bind", LOOPBACK, "--expect", "200"]);
    let mut s = start("sink", cmd);
    let sink = s.out.listening(1)[0].clone();
    let mut cmd = peer("task_vent.py");
    cmd.args(["--bind", "tcp://127.0.0.1:0", "--jobs", &jobs]);
    let v = start("py vent", cmd);
    let vent = v.out.listening(1)[0].clone();
    let mut cmd = peer("task_work.py");
    cmd.args(["--vent", &vent, "--sink", &sink]);
    let _w = start("py worker", cmd);
    assert!(s.wait().success(), "{:?}", s.err.get());
    assert_eq!(s.out.count("JOB-"), 200);
}

// Many hosts (`common::Net`): network namespaces joined by veth pairs.

#[test]
fn workers_on_another_host_serve_two_maps_each_getting_its_own_results() {
    let Some(net) = Net::star(2) else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut maps = Vec::new();
    for k in 0..2 {
        let path = dir.path().join(format!("jobs{k}"));
        let jobs: String = (0..150).map(|i| format!("host{k}-job{i}\n")).collect();
        std::fs::write(&path, jobs).unwrap();
        let mut cmd = Net::scale0_in(&net.names[k + 1]);
        let addr = format!("10.{}.0.1", 77 + k);
        cmd.args(["map", "--json", "--input", path.to_str().unwrap()])
            .args(["--vent", &format!("tcp://{addr}:5557")])
            .args(["--sink", &format!("tcp://{addr}:5558")]);
        let m = start("map", cmd);
        m.err.listening(2);
        maps.push(m);
    }
    // Two workers on the worker host, each pulling from both maps by host address.
    let workers: Vec<Proc> = (0..2)
        .map(|i| {
            let mut cmd = Net::scale0_in(&net.names[0]);
            cmd.args([
                "work",
                "--connect",
                "10.77.0.1",
                "--connect",
                "10.78.0.1:5557",
            ])
            .args([
                "--name",
                &format!("remote{i}"),
                "--capacity",
                "2",
                "--sleep-ms",
                "5",
            ])
            .stdout(Stdio::null());
            Proc::spawn("remote worker", cmd)
        })
        .collect();
    for (k, m) in maps.iter_mut().enumerate() {
        assert!(m.wait().success(), "map {k}: {:?}", m.err.get());
        let results = json_lines(&m.out);
        assert_eq!(results.len(), 150);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(
                r["output"],
                format!("host{k}-job{i}"),
                "map {k} got its own results"
            );
        }
        let by_remote: usize = (0..2)
            .map(|w| {
                results
                    .iter()
                    .filter(|r| r["worker"] == format!("remote{w}"))
                    .count()
            })
            .filter(|n| *n > 0)
            .count();
        assert_eq!(by_remote, 2, "both remote workers served map {k}");
    }
    drop(workers);
}
