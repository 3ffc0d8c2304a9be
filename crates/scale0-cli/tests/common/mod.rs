//! Helpers for black-box tests: start the real `scale0` binary and pyzmq peers as
//! separate processes, find their endpoints, and wait with deadlines (never sleeps).

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Generous bound that only catches hangs; behaviour is asserted, not timing.
pub const HANG: Duration = Duration::from_secs(30);

pub fn scale0() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scale0"));
    c.env("RUST_LOG", "warn");
    c
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python with pyzmq that `scripts/test.sh` installs. Missing is a failure, not a skip.
pub fn python() -> Command {
    python_with("zmq")
}

/// The Python of `scripts/test.sh`, which must be able to import `module` (a failure, not a
/// skip, when it cannot).
pub fn python_with(module: &str) -> Command {
    let path = std::env::var_os("SCALE0_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/pyenv/bin/python"));
    let ok = Command::new(&path)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no Python with {module} at {}: run the tests with scripts/test.sh, which installs it",
        path.display()
    );
    Command::new(path)
}

/// `scale0 worker` serving `service` at `endpoint` with the built-in echo, and `extra` flags.
pub fn echo_worker(endpoint: &str, service: &str, extra: &[&str]) -> Proc {
    let mut c = scale0();
    c.args([
        "worker",
        "--connect",
        endpoint,
        "--service",
        service,
        "--echo",
    ])
    .args(extra)
    .stdout(Stdio::null());
    Proc::spawn("scale0 worker", c)
}

/// The Python program `script` in the repository folder `dir`, ready to take arguments.
pub fn python_script(dir: &str, script: &str) -> Command {
    let mut c = python();
    c.arg(repo_root().join(dir).join(script));
    c
}

pub fn peer(script: &str) -> Command {
    python_script("tests/peers", script)
}

/// A child process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            child,
            name: name.into(),
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Proc {
    /// Waits for the process to exit on its own and returns what it printed.
    pub fn output(mut self) -> Output {
        let child = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"));
        finish(child, &self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `scale0 broker`.
pub struct Broker {
    pub proc: Proc,
    pub endpoint: String,
}

impl Broker {
    /// Starts a broker on a free loopback port with extra flags.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_on("tcp://127.0.0.1:*", extra)
    }

    pub fn start_on(bind: &str, extra: &[&str]) -> Self {
        Self::start_with(bind, extra, |_| {})
    }

    /// Like [`Broker::start_on`], with the command adjusted first (env, stderr).
    pub fn start_with(bind: &str, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Self {
        let mut cmd = scale0();
        cmd.args(["broker", "--bind", bind])
            .args(extra)
            .stdout(Stdio::piped());
        adjust(&mut cmd);
        let mut proc = Proc::spawn("broker", cmd);
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let line = first_line(stdout, HANG).expect("the broker prints its endpoint");
        let endpoint = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { proc, endpoint }
    }

    pub fn port(&self) -> &str {
        self.endpoint.rsplit(':').next().unwrap()
    }
}

/// The first line of a stream, or `None` at EOF or after `deadline`.
pub fn first_line(
    stream: impl std::io::Read + Send + 'static,
    deadline: Duration,
) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let n = reader.read_line(&mut line).unwrap_or(0);
        let _ = tx.send((n > 0).then(|| line.trim_end().to_string()));
        // Keep draining so the child never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    rx.recv_timeout(deadline).ok().flatten()
}

/// Runs a command to completion, killing it if it outlives `HANG`.
pub fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    finish(child, &format!("{cmd:?}"))
}

/// Waits for a child to exit, reading its output all along (a child writing more than a
/// pipe holds would otherwise block forever), and kills it if it outlives `HANG`.
pub fn finish(child: Child, what: &str) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    if let Ok(out) = rx.recv_timeout(HANG) {
        return out.expect("output");
    }
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let out = rx.recv().expect("output after kill").expect("output");
    panic!(
        "command hung: {what}\nstdout: {}\nstderr: {}",
        tail(&out.stdout),
        tail(&out.stderr)
    );
}

/// Some output cut to its first and last 1000 characters, for failure messages.
pub fn tail(bytes: &[u8]) -> String {
    let text: Vec<char> = String::from_utf8_lossy(bytes).chars().collect();
    if text.len() <= 2000 {
        return text.into_iter().collect();
    }
    let head: String = text[..1000].iter().collect();
    let tail: String = text[text.len() - 1000..].iter().collect();
    format!("{head} … {tail}")
}

/// Polls `check` until it holds or `HANG` passes.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < HANG, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The result line of `tests/peers/mdp_client.py`.
pub struct ClientReport {
    pub json: serde_json::Value,
    pub ok: bool,
    pub stderr: String,
}

impl ClientReport {
    pub fn replies(&self) -> u64 {
        self.json["replies"].as_u64().unwrap_or(0)
    }

    /// Replies per distinct reply body.
    pub fn tally(&self) -> Vec<(String, u64)> {
        let mut t: Vec<(String, u64)> = self.json["tally"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        t.sort();
        t
    }
}

/// Runs the Python MDP client and parses its report.
pub fn py_client(args: &[&str]) -> ClientReport {
    let mut cmd = peer("mdp_client.py");
    cmd.args(args);
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("client printed {stdout:?} ({e}); stderr: {stderr}"));
    ClientReport {
        json,
        ok: out.status.success(),
        stderr,
    }
}

/// Runs the Python MDP client on a DEALER: `count` requests with bodies `0`, `1`, …,
/// `in_flight` at a time, plus `extra` flags.
pub fn py_dealer(
    endpoint: &str,
    service: &str,
    count: u32,
    in_flight: u32,
    extra: &[&str],
) -> ClientReport {
    let (count, in_flight) = (count.to_string(), in_flight.to_string());
    let mut args = vec![
        "--endpoint",
        endpoint,
        "--service",
        service,
        "--socket",
        "dealer",
        "--count",
        &count,
        "--in-flight",
        &in_flight,
        "--body",
        "{i}",
    ];
    args.extend_from_slice(extra);
    py_client(&args)
}

/// Starts the Python MDP worker and waits until it has sent READY.
pub fn py_worker(endpoint: &str, service: &str, name: &str, heartbeat_ms: u32) -> Proc {
    py_worker_with(endpoint, service, name, heartbeat_ms, &[])
}

/// Like [`py_worker`], with extra flags (`--version 2`, `--partials N`).
pub fn py_worker_with(
    endpoint: &str,
    service: &str,
    name: &str,
    heartbeat_ms: u32,
    extra: &[&str],
) -> Proc {
    let mut cmd = peer("mdp_worker.py");
    cmd.args(extra);
    cmd.args([
        "--endpoint",
        endpoint,
        "--service",
        service,
        "--name",
        name,
        "--tag",
        "--heartbeat-ms",
        &heartbeat_ms.to_string(),
    ])
    .stdout(Stdio::piped());
    let mut proc = Proc::spawn(name, cmd);
    let stdout = proc.child.stdout.take().expect("piped stdout");
    assert_eq!(
        first_line(stdout, HANG).as_deref(),
        Some("ready"),
        "{name} started"
    );
    proc
}

/// Runs `scale0 request --connect endpoint ARGS...` to completion.
pub fn scale0_request(endpoint: &str, args: &[&str]) -> Output {
    let mut c = scale0();
    c.args(["request", "--connect", endpoint]).args(args);
    run(c)
}

/// Asks the broker over MMI whether `service` has workers: "200" or "404".
pub fn mmi_service(endpoint: &str, service: &str) -> String {
    let out = run({
        let mut c = scale0();
        c.args([
            "request",
            "--connect",
            endpoint,
            "--service",
            "mmi.service",
            "--timeout-ms",
            "2000",
            service,
        ]);
        c
    });
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Every line a child prints on stdout, collected by a thread as it comes.
#[derive(Clone, Default)]
pub struct Lines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Lines {
    /// Starts collecting `stream`.
    pub fn collect(stream: impl std::io::Read + Send + 'static) -> Self {
        let lines = Self::default();
        let sink = lines.clone();
        thread::spawn(move || {
            // Read to the end whatever comes, text or not: a reader that stopped at the
            // first line of binary output would close the pipe under the child.
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line);
                sink.0
                    .lock()
                    .expect("lines")
                    .push(text.trim_end_matches(['\n', '\r']).to_string());
                line.clear();
            }
        });
        lines
    }

    /// The lines so far.
    pub fn get(&self) -> Vec<String> {
        self.0.lock().expect("lines").clone()
    }

    /// The lines after the first `n`, for readers that keep their place.
    pub fn since(&self, n: usize) -> Vec<String> {
        let lines = self.0.lock().expect("lines");
        lines.get(n..).map(<[String]>::to_vec).unwrap_or_default()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.get().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `n` lines contain `needle`.
    pub fn wait_for(&self, needle: &str, n: usize) {
        eventually(&format!("{n} lines with {needle:?}"), || {
            self.count(needle) >= n
        });
    }

    /// Waits for a server's first `n` lines, `listening <endpoint>`, and returns the
    /// endpoints in order.
    pub fn listening(&self, n: usize) -> Vec<String> {
        self.wait_for("listening ", n);
        self.get()
            .iter()
            .filter_map(|l| l.strip_prefix("listening ").map(str::to_string))
            .collect()
    }
}

/// Spawns `cmd` with stdout piped into a [`Lines`].
pub fn spawn_lines(name: &str, mut cmd: Command) -> (Proc, Lines) {
    cmd.stdout(Stdio::piped());
    let mut proc = Proc::spawn(name, cmd);
    let stdout = proc.child.stdout.take().expect("piped stdout");
    (proc, Lines::collect(stdout))
}

/// One HTTP/1.1 exchange on a new connection (`Connection: close`): `method path` with
/// `headers` (each `Name: value`; Host is added unless given) and `body`. Returns the
/// status line, the head and the body; reads until the server closes.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (String, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the HTTP port");
    s.set_read_timeout(Some(HANG)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for h in headers {
        head.push_str(&format!("{h}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    // Some servers (chromedriver) keep the connection open anyway: read by the length.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let done = |raw: &[u8]| -> bool {
        let text = String::from_utf8_lossy(raw);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let lower = head.to_ascii_lowercase();
        if let Some(n) = lower.lines().find_map(|l| {
            l.strip_prefix("content-length:")?
                .trim()
                .parse::<usize>()
                .ok()
        }) {
            return body.len() >= n;
        }
        lower.contains("transfer-encoding: chunked") && body.ends_with("0\r\n\r\n")
    };
    while !done(&raw) {
        let n = s.read(&mut buf).expect("reading the answer");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_string();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

/// A chunked body's content.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// `GET path` over plain HTTP/1.1; returns the status line and the body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    let (status, _, body) = http_request(addr, "GET", path, &[], "");
    (status, body)
}

/// `HOST:PORT` of a `listening http://HOST:PORT/` line's endpoint.
pub fn http_addr(endpoint: &str) -> String {
    endpoint
        .strip_prefix("http://")
        .and_then(|a| a.strip_suffix('/'))
        .unwrap_or_else(|| panic!("not an HTTP endpoint: {endpoint}"))
        .to_string()
}

/// `scale0 worker --echo` serving `service` from every broker of `endpoints`.
pub fn worker_of_all(endpoints: &[&str], service: &str, extra: &[&str]) -> Proc {
    let mut c = scale0();
    c.args(["worker", "--service", service, "--echo"]);
    for e in endpoints {
        c.args(["--connect", e]);
    }
    c.args(extra).stdout(std::process::Stdio::null());
    Proc::spawn("scale0 worker", c)
}

/// The number after `key` in a summary line such as `ok 20000  moved 3`.
pub fn field(summary: &str, key: &str) -> u64 {
    let words: Vec<&str> = summary.split_whitespace().collect();
    let keys: Vec<&str> = key.split(' ').collect();
    words
        .windows(keys.len() + 1)
        .find(|w| w[..keys.len()] == keys[..])
        .and_then(|w| w[keys.len()].parse().ok())
        .unwrap_or_else(|| panic!("no {key:?} in {summary:?}"))
}

/// A pipelined `scale0 request` (`cmd` is `scale0`, or it inside a namespace) of `n`
/// requests with bodies `r{i}` over every broker of `endpoints`, `in_flight` at once, 500
/// ms attempts and `retries`, printing each reply with its index.
pub fn pipelined_request(
    mut cmd: Command,
    endpoints: &[&str],
    n: usize,
    in_flight: u32,
    retries: u32,
) -> (Proc, Lines) {
    cmd.args(["request", "--connect", &endpoints.join(",")])
        .args(["--service", "echo", "--count", &n.to_string()])
        .args(["--in-flight", &in_flight.to_string(), "--timeout-ms", "500"])
        .args(["--retries", &retries.to_string(), "--print-replies", "r{i}"]);
    spawn_lines("scale0 request", cmd)
}

/// Waits for a [`pipelined_request`] to end and checks it succeeded with every request
/// answered once; returns its summary line.
pub fn finished_once(client: &mut Proc, lines: &Lines, n: usize) -> String {
    eventually("the client finished", || {
        client.child.try_wait().ok().flatten().is_some()
    });
    lines.wait_for("requests ", 1);
    let status = client.child.wait().expect("status");
    let summary = each_answered_once(&lines.get(), n);
    assert!(status.success(), "{summary}");
    assert_eq!(field(&summary, "ok"), n as u64, "{summary}");
    summary
}

/// Checks the `--print-replies` lines of a `scale0 request --count N` run whose bodies
/// were `r{i}`: every index answered once, with its own reply. Returns the summary line.
pub fn each_answered_once(lines: &[String], n: usize) -> String {
    let summary = lines.last().expect("a summary").clone();
    let mut answers: std::collections::HashMap<usize, u32> = std::collections::HashMap::new();
    for line in &lines[..lines.len() - 1] {
        let (index, reply) = line.split_once(' ').expect("index and reply");
        let index: usize = index.parse().expect("an index");
        assert_eq!(
            reply,
            format!("r{index}"),
            "each reply is its own request's"
        );
        *answers.entry(index).or_default() += 1;
    }
    assert_eq!(answers.len(), n, "every request answered: {summary}");
    assert!(
        answers.values().all(|&k| k == 1),
        "none answered twice: {summary}"
    );
    summary
}

// ---------------------------------------------------------------------------------------
// Many hosts: network namespaces joined by veth pairs, so traffic crosses an interface.

/// Network namespaces and links this test made, removed when dropped.
pub struct Net {
    pub names: Vec<String>,
}

impl Net {
    pub fn ip(args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A namespace `w` in the middle, linked to one namespace per host; host `k` is
    /// 10.{77+k}.0.1 and the middle's side of its link 10.{77+k}.0.2, which routes
    /// between hosts. Host `k`'s end of its link is `s0a{k}x{tag}` (to cut it).
    pub fn star(hosts: usize) -> Option<Self> {
        let root = is_root();
        let has_ip = Command::new("ip")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !root || !has_ip {
            let why = "network namespaces need root and iproute2";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("SKIPPED (not CI): {why}");
            return None;
        }
        let tag = std::process::id() % 100_000;
        let w = format!("s0w{tag}");
        let mut net = Net {
            names: vec![w.clone()],
        };
        Self::ip(&["netns", "add", &w]);
        Self::ip(&["-n", &w, "link", "set", "lo", "up"]);
        for k in 0..hosts {
            let h = format!("s0h{k}x{tag}");
            net.names.push(h.clone());
            Self::ip(&["netns", "add", &h]);
            Self::ip(&["-n", &h, "link", "set", "lo", "up"]);
            let (a, b) = (format!("s0a{k}x{tag}"), format!("s0b{k}x{tag}"));
            Self::ip(&[
                "link", "add", &a, "netns", &h, "type", "veth", "peer", "name", &b, "netns", &w,
            ]);
            let net_k = 77 + k;
            Self::ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("10.{net_k}.0.1/24"),
                "dev",
                &a,
            ]);
            Self::ip(&[
                "-n",
                &w,
                "addr",
                "add",
                &format!("10.{net_k}.0.2/24"),
                "dev",
                &b,
            ]);
            Self::ip(&["-n", &h, "link", "set", &a, "up"]);
            Self::ip(&["-n", &w, "link", "set", &b, "up"]);
            // Hosts reach each other through the middle namespace.
            Self::ip(&[
                "-n",
                &h,
                "route",
                "add",
                "default",
                "via",
                &format!("10.{net_k}.0.2"),
            ]);
        }
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &w,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .expect("running sysctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(net)
    }

    /// `scale0 ARGS` inside namespace `ns`.
    pub fn scale0_in(ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_scale0")])
            .env("RUST_LOG", "warn");
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends inside it.
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
