//! The HTTP endpoint (`--http`, docs/http.md) of the broker, the queue and the map,
//! black-box: its APIs over plain HTTP, its bounds and token, and the dashboard page in a
//! real browser (Debian's headless Chromium driven through chromedriver's WebDriver),
//! against a broker under load from real workers and clients.

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A broker with `--http` on a free port and `extra` flags: (process, broker endpoint,
/// HTTP `HOST:PORT`).
fn broker(extra: &[&str]) -> (Proc, String, String) {
    let mut cmd = scale0();
    cmd.args([
        "broker",
        "--bind",
        "tcp://127.0.0.1:*",
        "--http",
        "127.0.0.1:0",
    ])
    .args(extra);
    let (proc, out) = spawn_lines("broker", cmd);
    let ends = out.listening(2);
    (proc, ends[0].clone(), http_addr(&ends[1]))
}

/// `scale0 queue --http` on free ports: (process, HTTP `HOST:PORT`).
fn queue() -> (Proc, String) {
    let mut cmd = scale0();
    cmd.args(["queue", "--frontend", "tcp://127.0.0.1:*"])
        .args([
            "--backend",
            "tcp://127.0.0.1:*",
            "--workers",
            "tcp://127.0.0.1:*",
        ])
        .args(["--http", "127.0.0.1:0"]);
    let (proc, out) = spawn_lines("queue", cmd);
    let addr = http_addr(&out.listening(4)[3]);
    (proc, addr)
}

/// `scale0 map --http` with `local` workers on `jobs` jobs that sleep `job_ms` each:
/// (process, its input's directory, HTTP `HOST:PORT`).
fn map(jobs: usize, job_ms: u32, local: u32) -> (Proc, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("jobs");
    std::fs::write(&input, format!("{job_ms}\n").repeat(jobs)).unwrap();
    let mut cmd = scale0();
    cmd.args([
        "map",
        "--vent",
        "tcp://127.0.0.1:*",
        "--sink",
        "tcp://127.0.0.1:*",
    ])
    .args([
        "--http",
        "127.0.0.1:0",
        "--no-progress",
        "--local",
        &local.to_string(),
    ])
    .args(["--sleep-payload", "--input", input.to_str().unwrap()])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut proc = Proc::spawn("map", cmd);
    // The map's listening lines are on stderr: stdout carries results.
    let err = Lines::collect(proc.child.stderr.take().unwrap());
    err.wait_for("listening http://", 1);
    let line = err
        .get()
        .into_iter()
        .find_map(|l| {
            l.strip_prefix("listening http://")
                .map(|a| format!("http://{a}"))
        })
        .unwrap();
    (proc, dir, http_addr(&line))
}

fn worker(endpoint: &str, service: &str, how: &[&str]) -> Proc {
    let mut w = scale0();
    w.args(["worker", "--connect", endpoint, "--service", service])
        .args(how)
        .stdout(Stdio::null());
    Proc::spawn(&format!("{service} worker"), w)
}

/// `scale0 request --count` against `service`: load until killed.
fn load(endpoint: &str, service: &str, in_flight: &str) -> Proc {
    let mut c = scale0();
    c.args(["request", "--connect", endpoint, "--service", service])
        .args(["--count", "100000000", "--in-flight", in_flight, "x"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Proc::spawn(&format!("{service} client"), c)
}

fn status_doc(addr: &str) -> Value {
    let (status, body) = http_get(addr, "/api/status");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `scale0 status --json` of the broker at `endpoint`.
fn mmi_status(endpoint: &str) -> Value {
    let out = run({
        let mut c = scale0();
        c.args(["status", "--json", "--connect", endpoint]);
        c
    });
    assert!(out.status.success(), "{}", tail(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("a JSON document")
}

fn workers_of(doc: &Value, service: &str) -> Vec<String> {
    doc["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == service)
        .flat_map(|s| s["workers"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w["id"].as_str().map(String::from))
        .collect()
}

/// Reads server-sent events from `/api/events` on a thread; each `data:` line's JSON.
fn event_stream(addr: &str) -> std::sync::mpsc::Receiver<Value> {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting");
    write!(s, "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str(data)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// Waits for an event matching `want`.
fn wait_event(rx: &std::sync::mpsc::Receiver<Value>, what: &str, want: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + HANG;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(v) if want(&v) => return,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no event: {what}");
}

#[test]
fn the_broker_serves_its_page_status_events_and_metrics_on_one_port() {
    let (_broker, endpoint, addr) = broker(&[]);
    let (status, head, page) = http_request(&addr, "GET", "/", &[], "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{head}"
    );
    assert!(page.contains("data-page=\"broker\""), "{page}");
    let (status, script) = http_get(&addr, "/dash.js");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(script.contains("brokerPage"));

    let events = event_stream(&addr);
    let mut w = worker(&endpoint, "echo", &["--echo"]);
    wait_event(&events, "worker.ready", |e| {
        e["event"] == "worker.ready" && e["service"] == "echo"
    });
    let out = scale0_request(&endpoint, &["--service", "echo", "hi"]);
    assert!(out.status.success(), "{}", tail(&out.stderr));

    let mut doc = Value::Null;
    eventually("the status document shows the worker and the reply", || {
        doc = status_doc(&addr);
        workers_of(&doc, "echo").len() == 1 && doc["totals"]["replies"].as_u64() >= Some(1)
    });
    // The mmi.status document, with the dashboard's additions.
    assert_eq!(doc["version"], 1);
    assert!(doc.get("cluster").is_some_and(Value::is_null), "{doc}");
    assert_eq!(doc["failures"]["queue_full"], 0);
    let le = doc["latency_ms"]["le"].as_array().unwrap().len();
    assert_eq!(
        doc["latency_ms"]["counts"].as_array().unwrap().len(),
        le + 1
    );
    let echo = &doc["services"].as_array().unwrap()[0];
    assert!(echo["replies"].as_u64() >= Some(1), "{echo}");
    assert!(echo["workers"][0]["heard_ms"].is_u64(), "{echo}");
    // Fields scale0 status reads agree with what it gets over MMI.
    let mmi = mmi_status(&endpoint);
    assert_eq!(workers_of(&mmi, "echo"), workers_of(&doc, "echo"));

    let id = workers_of(&doc, "echo").remove(0);
    w.kill9();
    wait_event(&events, "the killed worker's worker.gone", |e| {
        e["event"] == "worker.gone" && e["worker"] == id.as_str()
    });
    wait_event(&events, "service.down", |e| e["event"] == "service.down");

    let (status, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(metrics.contains("scale0_replies_total"), "{metrics}");
    assert_eq!(http_get(&addr, "/nothing").0, "HTTP/1.1 404 Not Found");
    let (status, head, _) = http_request(&addr, "POST", "/api/status", &[], "{}");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(head.contains("allow: GET"), "{head}");
}

#[test]
fn a_stream_resumes_after_the_last_event_id_it_saw() {
    let (_broker, endpoint, addr) = broker(&[]);
    let _a = worker(&endpoint, "a", &["--echo"]);
    let _b = worker(&endpoint, "b", &["--echo"]);
    eventually("both workers registered", || {
        let doc = status_doc(&addr);
        workers_of(&doc, "a").len() + workers_of(&doc, "b").len() == 2
    });
    // Four events so far: each worker's ready and its service's up. A stream that saw the
    // first two gets only the last two.
    let (_, _, body) = {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\nLast-Event-ID: 2\r\n\r\n"
        )
        .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Read what is there now; the stream itself stays open.
        while let Ok(n) = std::io::Read::read(&mut s, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        ((), (), String::from_utf8_lossy(&got).into_owned())
    };
    let ids: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, ["3", "4"], "{body}");
    assert!(body.contains("retry: 1000"), "{body}");
}

#[test]
fn a_token_guards_the_data_and_a_foreign_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let (_broker, _endpoint, addr) = broker(&["--http-token-file", token_file.to_str().unwrap()]);
    let get = |path: &str, headers: &[&str]| http_request(&addr, "GET", path, headers, "").0;
    assert_eq!(get("/api/status", &[]), "HTTP/1.1 401 Unauthorized");
    assert_eq!(get("/metrics", &[]), "HTTP/1.1 401 Unauthorized");
    assert_eq!(
        get("/api/status", &["Authorization: Bearer wrong"]),
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        get("/api/status", &["Authorization: Bearer s3cret"]),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(get("/metrics?token=s3cret", &[]), "HTTP/1.1 200 OK");
    // The page itself carries no data; it passes its own ?token= on.
    assert_eq!(get("/", &[]), "HTTP/1.1 200 OK");

    // Without a token, a request naming another host (a DNS-rebinding page) is refused.
    let (_open, _e, open) = broker(&[]);
    let get = |headers: &[&str]| http_request(&open, "GET", "/api/status", headers, "").0;
    assert_eq!(
        get(&["Host: evil.example:80"]),
        "HTTP/1.1 421 Misdirected Request"
    );
    assert_eq!(get(&["Host: localhost"]), "HTTP/1.1 200 OK");
}

#[test]
fn the_queue_and_the_map_serve_pages_of_their_own() {
    let (_queue, addr) = queue();
    assert!(http_get(&addr, "/").1.contains("data-page=\"queue\""));
    let doc = status_doc(&addr);
    assert_eq!(doc["kind"], "queue");
    assert_eq!(doc["servers"], 0);
    assert!(doc["dropped"]["queue_full"].is_u64(), "{doc}");

    let (_map, _input, addr) = map(1000, 20, 2);
    assert!(http_get(&addr, "/").1.contains("data-page=\"map\""));
    let mut doc = Value::Null;
    eventually("the map's page shows jobs done by both workers", || {
        doc = status_doc(&addr);
        doc["totals"]["done"].as_u64() > Some(0)
            && doc["per_worker"].as_array().is_some_and(|w| w.len() == 2)
    });
    assert_eq!(doc["kind"], "map");
    assert_eq!(doc["totals"]["jobs"], 1000);
    assert!(doc.get("cluster").is_some_and(Value::is_null));
}

// --- the page in a real browser ----------------------------------------------------------

/// Chromium's flags for a headless run as root with no network.
const CHROMIUM_ARGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// A chromedriver process and one WebDriver session in it.
struct Browser {
    _driver: Proc,
    _profile: tempfile::TempDir,
    addr: String,
    session: String,
}

impl Browser {
    /// None when chromium or chromedriver is missing, which fails under CI=true.
    fn start() -> Option<Self> {
        let (chromium, driver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
        if !std::path::Path::new(chromium).exists() || !std::path::Path::new(driver).exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI: {chromium} and {driver} are needed (apt-get install chromium chromium-driver; scripts/test.sh does)"
            );
            eprintln!(
                "SKIPPED: the browser test needs {chromium} and {driver} (scripts/test.sh installs them)"
            );
            return None;
        }
        // Port 0: chromedriver picks a free one and says which.
        let mut cmd = std::process::Command::new(driver);
        cmd.arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let (proc, out) = spawn_lines("chromedriver", cmd);
        out.wait_for("was started successfully on port", 1);
        let port = out
            .get()
            .iter()
            .find_map(|l| {
                let port = l.split("started successfully on port ").nth(1)?;
                port.trim_end_matches('.').parse::<u16>().ok()
            })
            .expect("chromedriver's port");
        let addr = format!("127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push("--window-size=1440,1200".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut browser = Self {
            _driver: proc,
            _profile: profile,
            addr,
            session: String::new(),
        };
        let v = browser.call("POST", "/session", &caps);
        browser.session = v["sessionId"].as_str().expect("a session id").to_string();
        Some(browser)
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (status, _, text) = http_request(&self.addr, method, path, &[], &body);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(
            status.contains(" 200 "),
            "WebDriver {path}: {status} {text}"
        );
        v["value"].clone()
    }

    fn session(&self, method: &str, what: &str, body: &Value) -> Value {
        self.call(method, &format!("/session/{}/{what}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session("POST", "url", &json!({ "url": url }));
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    fn js(&self, script: &str) -> Value {
        self.session(
            "POST",
            "execute/sync",
            &json!({"script": script, "args": []}),
        )
    }

    /// Waits until `script` returns true.
    fn until(&self, what: &str, script: &str) {
        eventually(what, || self.js(script) == Value::Bool(true));
    }

    fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine as _;
        let png = self.session("GET", "screenshot", &Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().expect("base64 text"))
            .expect("a PNG");
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// What the page logged at level SEVERE (JavaScript errors, failed loads).
    fn errors(&self) -> Vec<String> {
        let logs = self.session("POST", "se/log", &json!({"type": "browser"}));
        logs.as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["level"] == "SEVERE")
            .map(|l| l["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = http_request(&self.addr, "DELETE", &path, &[], "");
        }
    }
}

/// A number a tile shows (`data-metric=name`), as the page has it.
fn tile(browser: &Browser, name: &str) -> f64 {
    let v = browser.js(&format!(
        "return document.querySelector('[data-metric=\"{name}\"] .value').textContent"
    ));
    v.as_str()
        .and_then(|s| s.trim_end_matches("/s").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn the_dashboard_shows_a_loaded_broker_live_in_a_real_browser() {
    let Some(browser) = Browser::start() else {
        return;
    };
    // A service nobody serves fails its requests after 200 ms: errors by status.
    let (_broker, endpoint, addr) = broker(&[
        "--heartbeat-interval-ms",
        "500",
        "--unknown-service-wait-ms",
        "200",
    ]);
    let _echo: Vec<Proc> = (0..3)
        .map(|_| worker(&endpoint, "echo", &["--echo"]))
        .collect();
    let _slow = worker(&endpoint, "slow", &["--sleep-ms", "20"]);
    let mut sha1 = worker(&endpoint, "sha1", &["--sha1", "--capacity", "4"]);
    let _load = [
        load(&endpoint, "echo", "8"),
        load(&endpoint, "sha1", "4"),
        load(&endpoint, "slow", "4"),
        load(&endpoint, "nobody", "2"),
    ];
    browser.open(&format!("http://{addr}/"));
    browser.until(
        "the page lists the five workers",
        "return document.querySelectorAll('#workers tbody tr').length === 5",
    );
    browser.until(
        "the page is live",
        "return document.querySelector('#health').textContent === 'live'",
    );

    // The numbers move, and agree with `scale0 status`: what the page shows lies between
    // what the broker said just before and just after.
    let first = tile(&browser, "replies_total");
    let before = mmi_status(&endpoint)["totals"]["replies"].as_f64().unwrap();
    let mut shown = 0.0;
    eventually("the page's total catches up with scale0 status", || {
        shown = tile(&browser, "replies_total");
        shown >= before
    });
    let after = mmi_status(&endpoint)["totals"]["replies"].as_f64().unwrap();
    assert!(
        first < shown && shown <= after,
        "{first} < {shown} <= {after}"
    );
    let doc = mmi_status(&endpoint);
    let page_ids = browser.js(
        "return [...document.querySelectorAll('#workers tbody tr')].map(r => r.dataset.key).sort()",
    );
    let mut ids: Vec<String> = ["echo", "slow", "sha1"]
        .iter()
        .flat_map(|s| workers_of(&doc, s))
        .collect();
    ids.sort();
    assert_eq!(page_ids, json!(ids));
    eventually("rates, latency and errors are plotted", || {
        tile(&browser, "requests") > 0.0 && tile(&browser, "errors") > 0.0
    });
    browser.until(
        "p99 is known",
        "return /^[0-9.]+ ms$/.test(document.querySelector('[data-metric=p99] .value').textContent)",
    );
    browser.until(
        "the services table has its four services",
        "return document.querySelectorAll('#services tbody tr').length === 4",
    );
    // Sorting: a click on `queued` orders the services by it.
    // Sorting: the table starts by name; a click on the header reverses it.
    let names = || {
        browser.js(
            "return [...document.querySelectorAll('#services tbody tr')].map(r => r.dataset.key)",
        )
    };
    assert_eq!(names(), json!(["echo", "nobody", "sha1", "slow"]));
    browser.js("document.querySelector('#services th[data-col=name]').click(); return true");
    assert_eq!(names(), json!(["slow", "sha1", "nobody", "echo"]));

    // Enough minutes of plot to be worth a picture.
    std::thread::sleep(Duration::from_secs(12));
    browser.screenshot("broker.png");

    // A worker killed -9 leaves the page, and its departure shows in the tail.
    let gone = workers_of(&doc, "sha1").remove(0);
    sha1.kill9();
    browser.until(
        "the killed worker leaves the workers table",
        &format!("return !document.querySelector('#workers tbody tr[data-key=\"{gone}\"]')"),
    );
    browser.until(
        "its worker.gone event is in the tail",
        &format!(
            "return !!document.querySelector('#events li[data-event=\"worker.gone\"][data-worker=\"{gone}\"]')"
        ),
    );
    browser.until(
        "and the service's down event",
        "return [...document.querySelectorAll('#events li[data-event=\"service.down\"]')].some(l => l.textContent.includes('sha1'))",
    );
    browser.screenshot("broker-after-kill.png");
    assert_eq!(
        browser.js("return document.querySelector('#health').textContent"),
        "live"
    );
    let errors = browser.errors();
    assert!(errors.is_empty(), "the page logged errors: {errors:?}");
}

#[test]
fn the_queue_and_map_pages_show_live_numbers_in_a_real_browser() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let (_queue, addr) = queue();
    browser.open(&format!("http://{addr}/"));
    browser.until(
        "the queue's page is live",
        "return document.querySelector('#health').textContent === 'live' && document.querySelector('[data-metric=servers] .value').textContent === '0'",
    );
    browser.screenshot("queue.png");
    let errors = browser.errors();
    assert!(
        errors.is_empty(),
        "the queue's page logged errors: {errors:?}"
    );

    let (_map, _input, addr) = map(3000, 30, 4);
    browser.open(&format!("http://{addr}/"));
    browser.until(
        "the map's page shows four workers and progress",
        "return document.querySelectorAll('#map-workers tbody tr').length === 4 && parseFloat(document.querySelector('#bar-fill').style.width) > 0",
    );
    let done = tile(&browser, "done");
    eventually("the map's done count moves", || {
        tile(&browser, "done") > done
    });
    browser.screenshot("map.png");
    let errors = browser.errors();
    assert!(
        errors.is_empty(),
        "the map's page logged errors: {errors:?}"
    );
}
