//! The scenarios of `scale0 bench`, all in one process on loopback TCP: libzmq alone
//! (PUSH/PULL, PUB/SUB, a raw ventilator-workers-sink pipeline, DEALER/ROUTER echo) as the
//! baselines, and the same work through scale0 (the broker, the parallel map), so each can
//! be quoted as a ratio of what the sockets alone do in the same run.
//!
//! Throughput clocks start at the first message the receiving end sees (as libzmq's own
//! `local_thr` does), so connection set-up is not measured.

use crate::{BenchError as Error, Result};
use bytes::Bytes;
use scale0::sockets::{self, ConnectionCounter, pipeline_socket};
use scale0::{
    Allowlist, Broker, BrokerConfig, Client, ClientConfig, CurveClient, CurveServer, KeyPair,
    Latencies, Map, MapConfig, Shutdown, Task, Worker, WorkerConfig, ZmqContext,
};
use scale0_proto::mdp;
use scale0_proto::pipeline::{self, Outcome};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const LOOPBACK: &str = "tcp://127.0.0.1:*";
/// How long a receiver waits for the next message before it counts the rest as lost.
const QUIET: Duration = Duration::from_secs(2);

/// What one scenario measured.
#[derive(Clone, Debug, Default)]
pub struct Measurement {
    /// Messages (or requests, or jobs) that made it.
    pub messages: u64,
    /// Sent but never received (PUB/SUB drops at its high-water mark).
    pub lost: u64,
    /// From the first message received to the last.
    pub elapsed: Duration,
    /// Round trips, when the scenario has them.
    pub latencies: Latencies,
}

impl Measurement {
    /// Messages per second.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.messages as f64 / s
        } else {
            0.0
        }
    }

    /// The `q` quantile of the latencies (0 when there are none).
    pub fn quantile(&self, q: f64) -> Duration {
        self.latencies.quantile(q)
    }
}

fn socket(ctx: &zmq::Context, kind: zmq::SocketType, hwm: i32) -> Result<zmq::Socket> {
    Ok(sockets::plain_socket(ctx, kind, hwm, "benchmark")?)
}

fn join<T>(h: thread::JoinHandle<Result<T>>, what: &str) -> Result<T> {
    h.join().map_err(|_| Error::Panicked(what.to_string()))?
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<thread::JoinHandle<Result<T>>> {
    thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|error| Error::Spawn {
            name: name.to_string(),
            error,
        })
}

/// Receives up to `n` messages, the clock starting at the first; stops early after
/// [`QUIET`] without one (the rest count as lost).
fn receive(pull: &zmq::Socket, n: u64, skip_empty: bool) -> Result<Measurement> {
    let mut msg = zmq::Message::new();
    let mut got = 0u64;
    let mut started = None;
    let mut last = Instant::now();
    while got < n {
        let mut items = [pull.as_poll_item(zmq::POLLIN)];
        let wait = if started.is_some() { QUIET } else { QUIET * 5 };
        sockets::poll(
            &mut items,
            i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
        )
        .context(|| "polling".into())?;
        if !items[0].is_readable() {
            break;
        }
        loop {
            match pull.recv(&mut msg, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => Err(e).context(|| "receiving".into())?,
            }
            if skip_empty && msg.is_empty() {
                continue;
            }
            let now = Instant::now();
            started.get_or_insert(now);
            last = now;
            got += 1;
            if got == n {
                break;
            }
        }
    }
    Ok(Measurement {
        messages: got,
        lost: n - got,
        elapsed: started.map_or(Duration::ZERO, |s| last - s),
        latencies: Latencies::default(),
    })
}

/// PUSH -> PULL, one connection: `messages` of `size` bytes.
pub fn push_pull(messages: u64, size: usize) -> Result<Measurement> {
    let ctx = zmq::Context::new();
    let pull = socket(&ctx, zmq::PULL, 1000)?;
    let endpoint = sockets::bind(&pull, LOOPBACK)?;
    let push = socket(&ctx, zmq::PUSH, 1000)?;
    push.connect(&endpoint)
        .context(|| format!("connecting {endpoint}"))?;
    let payload = vec![b'x'; size];
    let sender = spawn("push", move || {
        for _ in 0..messages {
            push.send(&payload[..], 0).context(|| "sending".into())?;
        }
        // Handed back, not dropped: with LINGER 0 closing it would discard what is queued.
        Ok(push)
    })?;
    let m = receive(&pull, messages, false)?;
    join(sender, "push")?;
    Ok(m)
}

/// PUB -> SUB, one subscriber to everything. The publisher sends empty probes until the
/// subscription has arrived, then `messages` of `size` (at least 1) bytes; drops at the
/// high-water mark (`hwm` messages each side) are reported as lost.
pub fn pub_sub(messages: u64, size: usize, hwm: i32) -> Result<Measurement> {
    let ctx = zmq::Context::new();
    let sub = socket(&ctx, zmq::SUB, hwm)?;
    sub.set_subscribe(b"").context(|| "subscribing".into())?;
    let endpoint = sockets::bind(&sub, LOOPBACK)?;
    let publisher = socket(&ctx, zmq::PUB, hwm)?;
    publisher
        .connect(&endpoint)
        .context(|| format!("connecting {endpoint}"))?;
    let heard = Arc::new(AtomicBool::new(false));
    let payload = vec![b'x'; size.max(1)];
    let sender = {
        let heard = Arc::clone(&heard);
        spawn("pub", move || {
            let deadline = Instant::now() + QUIET * 5;
            while !heard.load(Ordering::Acquire) {
                if Instant::now() > deadline {
                    return Err(Error::Failed("the subscriber never heard".into()));
                }
                publisher.send(&b""[..], 0).context(|| "sending".into())?;
                thread::sleep(Duration::from_millis(1));
            }
            for _ in 0..messages {
                publisher
                    .send(&payload[..], 0)
                    .context(|| "sending".into())?;
            }
            Ok(publisher)
        })?
    };
    let mut msg = zmq::Message::new();
    sub.recv(&mut msg, 0).context(|| "receiving".into())?;
    heard.store(true, Ordering::Release);
    let m = receive(&sub, messages, true)?;
    join(sender, "pub")?;
    Ok(m)
}

/// The Guide's pipeline on raw sockets: a PUSH ventilator, `workers` threads that PULL a
/// job and PUSH it on unchanged, and a PULL sink; `messages` jobs of `size` bytes.
pub fn raw_pipeline(workers: u32, messages: u64, size: usize) -> Result<Measurement> {
    let ctx = zmq::Context::new();
    let vent = pipeline_socket(&ctx, zmq::PUSH, 1000, "jobs")?;
    let mut connections = ConnectionCounter::watch(&ctx, &vent, "jobs", false)?;
    let jobs = sockets::bind(&vent, LOOPBACK)?;
    let sink = pipeline_socket(&ctx, zmq::PULL, 1000, "results")?;
    let results = sockets::bind(&sink, LOOPBACK)?;
    let stop = Shutdown::new();
    let mut threads = Vec::new();
    for i in 0..workers {
        let pull = socket(&ctx, zmq::PULL, 1000)?;
        let push = socket(&ctx, zmq::PUSH, 1000)?;
        pull.connect(&jobs)
            .context(|| format!("connecting {jobs}"))?;
        push.connect(&results)
            .context(|| format!("connecting {results}"))?;
        let stop = stop.clone();
        threads.push(spawn(&format!("raw-worker-{i}"), move || {
            let mut msg = zmq::Message::new();
            while !stop.is_triggered() {
                let mut items = [pull.as_poll_item(zmq::POLLIN)];
                sockets::poll(&mut items, 100).context(|| "polling".into())?;
                while pull.recv(&mut msg, zmq::DONTWAIT).is_ok() {
                    push.send(std::mem::replace(&mut msg, zmq::Message::new()), 0)
                        .context(|| "sending".into())?;
                }
            }
            Ok(())
        })?);
    }
    // Round robin only spreads over connected workers: wait for all of them.
    let deadline = Instant::now() + QUIET * 5;
    while connections.count() < workers as usize {
        if Instant::now() > deadline {
            return Err(Error::Failed("raw workers did not connect".into()));
        }
        let mut items = [connections.poll_item()];
        sockets::poll(&mut items, 100).context(|| "polling".into())?;
        connections.update()?;
    }
    let payload = vec![b'x'; size];
    let sender = spawn("raw-vent", move || {
        for _ in 0..messages {
            vent.send(&payload[..], 0).context(|| "sending".into())?;
        }
        Ok(vent)
    })?;
    let m = receive(&sink, messages, false);
    stop.trigger();
    let vent = join(sender, "raw-vent")?;
    sockets::stop_monitor(&vent);
    for t in threads {
        join(t, "raw worker")?;
    }
    m
}

/// Request/reply without a broker: `clients` DEALERs, each keeping `in_flight` requests
/// of `size` bytes outstanding, against one ROUTER that echoes; `requests` in all.
/// With `in_flight` 1 every round trip is timed.
pub fn direct(clients: u32, in_flight: u32, requests: u64, size: usize) -> Result<Measurement> {
    let ctx = zmq::Context::new();
    let router = socket(&ctx, zmq::ROUTER, 100_000)?;
    let endpoint = sockets::bind(&router, LOOPBACK)?;
    let stop = Shutdown::new();
    let server = {
        let stop = stop.clone();
        spawn("echo-server", move || {
            while !stop.is_triggered() {
                let mut items = [router.as_poll_item(zmq::POLLIN)];
                sockets::poll(&mut items, 100).context(|| "polling".into())?;
                while let Some(frames) = sockets::try_recv(&router)? {
                    let _ = sockets::send(&router, &frames);
                }
            }
            Ok(())
        })?
    };
    let per_client = split(requests, clients);
    let mut threads = Vec::new();
    for (i, n) in per_client.into_iter().enumerate() {
        let dealer = socket(&ctx, zmq::DEALER, 100_000)?;
        dealer
            .connect(&endpoint)
            .context(|| format!("connecting {endpoint}"))?;
        let payload = vec![b'x'; size];
        threads.push(spawn(&format!("echo-client-{i}"), move || {
            client_loop(
                n,
                in_flight,
                |seq| {
                    dealer
                        .send(&seq.to_le_bytes()[..], zmq::SNDMORE)
                        .context(|| "sending".into())?;
                    Ok(dealer.send(&payload[..], 0).context(|| "sending".into())?)
                },
                || {
                    let frames = dealer.recv_multipart(0).context(|| "receiving".into())?;
                    let seq = frames
                        .first()
                        .and_then(|f| <[u8; 8]>::try_from(&f[..]).ok())
                        .map(u64::from_le_bytes)
                        .ok_or_else(|| Error::Failed("a reply without its number".into()))?;
                    Ok(seq)
                },
            )
        })?);
    }
    let result = gather(threads);
    stop.trigger();
    join(server, "echo server")?;
    result
}

/// Requests of each of `parts` clients, as even as can be.
fn split(total: u64, parts: u32) -> Vec<u64> {
    let parts = u64::from(parts.max(1));
    (0..parts)
        .map(|i| total / parts + u64::from(i < total % parts))
        .collect()
}

/// One client's loop: keeps `in_flight` requests out until `n` are answered, timing each
/// round trip by its number.
fn client_loop(
    n: u64,
    in_flight: u32,
    mut send: impl FnMut(u64) -> Result<()>,
    mut recv: impl FnMut() -> Result<u64>,
) -> Result<Measurement> {
    let window = u64::from(in_flight.max(1));
    let mut sent_at = vec![Instant::now(); usize::try_from(window).unwrap_or(1)];
    let mut latencies = Latencies::default();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut done = 0u64;
    while done < n {
        while sent < n && sent - done < window {
            if let Some(slot) = sent_at.get_mut(usize::try_from(sent % window).unwrap_or(0)) {
                *slot = Instant::now();
            }
            send(sent)?;
            sent += 1;
        }
        let seq = recv()?;
        if let Some(at) = sent_at.get(usize::try_from(seq % window).unwrap_or(0)) {
            latencies.record(at.elapsed());
        }
        done += 1;
    }
    Ok(Measurement {
        messages: done,
        lost: 0,
        elapsed: started.elapsed(),
        latencies,
    })
}

fn gather(threads: Vec<thread::JoinHandle<Result<Measurement>>>) -> Result<Measurement> {
    let mut total = Measurement::default();
    for t in threads {
        let m = join(t, "client")?;
        total.messages += m.messages;
        total.lost += m.lost;
        total.elapsed = total.elapsed.max(m.elapsed);
        total.latencies.add(&m.latencies);
    }
    Ok(total)
}

/// The request/reply-through-a-broker case: who takes part and how they behave.
#[derive(Clone, Debug)]
pub struct BrokerCase {
    /// Use the broker at this endpoint instead of starting one in this process.
    pub connect: Option<String>,
    /// Workers run their handler inline on their socket thread, not on a thread of its own.
    pub inline: bool,
    /// Requests each worker may hold at once.
    pub capacity: u32,
    /// Echo workers.
    pub workers: u32,
    /// Native-protocol clients.
    pub clients: u32,
    /// Requests each client keeps outstanding.
    pub in_flight: u32,
    /// Requests in all.
    pub requests: u64,
    /// Request body size in bytes.
    pub size: usize,
    /// CURVE on every connection, keys made for the run (the broker then has a ZeroMQ
    /// context, so an I/O thread, of its own).
    pub curve: bool,
    /// The started broker's [`BrokerConfig::spin_us`].
    pub spin_us: u64,
    /// Plain MDP/0.2 clients (RFC 18, a DEALER each, see [`mdp_client`]) instead of
    /// native ones.
    pub mdp_clients: bool,
    /// Clients and workers ask for bundles (docs/protocol.md, "Bundles").
    pub bundle: bool,
}

/// Request/reply through an in-process broker (or the one at `connect`): echo workers
/// and native clients as threads of this process (see [`BrokerCase`]).
pub fn broker(case: &BrokerCase) -> Result<Measurement> {
    let BrokerCase {
        ref connect,
        inline,
        capacity,
        workers,
        clients,
        in_flight,
        requests,
        size,
        curve,
        spin_us,
        mdp_clients,
        bundle,
    } = *case;
    let connect = connect.as_deref();
    let stop = Shutdown::new();
    let (server_curve, peer_curve) = if curve {
        let server = KeyPair::generate()?;
        let peer = KeyPair::generate()?;
        let mut allow = Allowlist::default();
        allow.add(peer.public, "bench");
        (
            Some(CurveServer {
                pair: server.clone(),
                allow: Arc::new(allow),
            }),
            Some(CurveClient {
                server: server.public,
                pair: peer,
            }),
        )
    } else {
        (None, None)
    };
    let (endpoint, broker_thread) = match connect {
        Some(_) if curve => {
            return Err(Error::Failed(
                "the CURVE benchmark starts its own broker (its keys are made for the run)".into(),
            ));
        }
        Some(e) => (e.to_string(), None),
        None => {
            let broker = Broker::bind(BrokerConfig {
                bind: vec![LOOPBACK.into()],
                curve: server_curve,
                spin_us,
                ..BrokerConfig::default()
            })?;
            let endpoint = broker
                .endpoints()
                .first()
                .cloned()
                .ok_or_else(|| Error::Failed("the broker bound nothing".into()))?;
            let stop = stop.clone();
            let t = spawn("broker", move || Ok(broker.run(&stop).map(|_| ())?))?;
            (endpoint, Some(t))
        }
    };
    let service = format!("bench.echo.{}", fastrand::u64(..));
    let mut worker_threads = Vec::new();
    for i in 0..workers {
        let mut config = WorkerConfig::new(endpoint.clone(), service.clone());
        config.inline = inline;
        config.capacity = capacity;
        config.bundle = bundle;
        config.curve.clone_from(&peer_curve);
        let worker = Worker::new(config)?;
        let stop = stop.clone();
        worker_threads.push(spawn(&format!("bench-worker-{i}"), move || {
            Ok(worker
                .run(Ok::<_, scale0::HandlerError>, &stop)
                .map(|_| ())?)
        })?);
    }
    let mut threads = Vec::new();
    for (i, n) in split(requests, clients).into_iter().enumerate() {
        if mdp_clients {
            let (endpoint, service) = (endpoint.clone(), service.clone());
            threads.push(spawn(&format!("bench-mdp-client-{i}"), move || {
                mdp_client(&endpoint, &service, n, in_flight, size)
            })?);
            continue;
        }
        let mut config = ClientConfig::new(endpoint.clone());
        config.bundle = bundle;
        config.curve.clone_from(&peer_curve);
        let mut client = Client::connect(config)?;
        let service = service.clone();
        threads.push(spawn(&format!("bench-client-{i}"), move || {
            native_client(&mut client, &service, n, in_flight, size)
        })?);
    }
    let result = gather(threads);
    stop.trigger();
    for w in worker_threads {
        join(w, "worker")?;
    }
    if let Some(b) = broker_thread {
        join(b, "broker")?;
    }
    result
}

/// `client` keeping `in_flight` requests of `size` bytes to `service` outstanding until
/// `n` are answered, after one unmeasured request that waits for the workers.
pub fn native_client(
    client: &mut Client,
    service: &str,
    n: u64,
    in_flight: u32,
    size: usize,
) -> Result<Measurement> {
    let payload = Bytes::from(vec![b'x'; size]);
    client.request(service, vec![payload.clone()])?;
    let summary = client.request_many(
        service,
        (0..n).map(|_| vec![payload.clone()]),
        usize::try_from(in_flight.max(1)).unwrap_or(1),
        |_, _| {},
    )?;
    Ok(Measurement {
        messages: summary.ok,
        lost: summary.sent.saturating_sub(summary.ok),
        elapsed: summary.elapsed,
        latencies: summary.latencies,
    })
}

/// A plain MDP/0.2 client (RFC 18) on a DEALER of its own, keeping `in_flight` requests
/// of `size` bytes to `service` outstanding until `n` are answered: what a Majordomo
/// client of another language does, for comparison with the native client. Each body
/// starts with the request's number, which the echo brings back for the timing.
pub fn mdp_client(
    endpoint: &str,
    service: &str,
    n: u64,
    in_flight: u32,
    size: usize,
) -> Result<Measurement> {
    let dealer = socket(&sockets::context(), zmq::DEALER, 0)?;
    dealer
        .connect(endpoint)
        .context(|| format!("connecting {endpoint}"))?;
    let payload = vec![b'x'; size];
    let request = |seq: u64| -> Result<()> {
        let frames: [&[u8]; 5] = [
            mdp::CLIENT_HEADER_V2,
            &[0x01],
            service.as_bytes(),
            &seq.to_le_bytes(),
            &payload,
        ];
        Ok(dealer
            .send_multipart(frames, 0)
            .context(|| "sending".into())?)
    };
    // Not measured: the first request waits for the workers to register.
    request(u64::MAX)?;
    let reply = || -> Result<u64> {
        let frames = dealer.recv_multipart(0).context(|| "receiving".into())?;
        match &frames[..] {
            [header, kind, _service, seq, ..]
                if header.as_slice() == mdp::CLIENT_HEADER_V2 && kind.as_slice() == [0x03] =>
            {
                <[u8; 8]>::try_from(&seq[..])
                    .map(u64::from_le_bytes)
                    .map_err(|_| Error::Failed("a reply without its number".into()))
            }
            _ => Err(Error::Failed(format!("not an MDP/0.2 FINAL: {frames:?}"))),
        }
    };
    reply()?;
    client_loop(n, in_flight, request, reply)
}

/// The parallel map with `workers` in-process workers echoing `jobs` no-op jobs of `size`
/// bytes (or running `task`): the cost of the map's bookkeeping, start notices and
/// reports. `prefetch` is the map's jobs per worker beyond the one it runs.
pub fn map(
    workers: u32,
    jobs: u64,
    size: usize,
    prefetch: u32,
    task: Option<Arc<dyn Task>>,
) -> Result<Measurement> {
    let mut map = Map::bind(MapConfig {
        vent: vec![LOOPBACK.into()],
        sink: vec![LOOPBACK.into()],
        core: pipeline::MapConfig {
            prefetch,
            ..pipeline::MapConfig::default()
        },
        ..MapConfig::default()
    })?;
    let echo: Arc<dyn Task> =
        task.unwrap_or_else(|| Arc::new(|p: &[u8]| Ok(Bytes::copy_from_slice(p))));
    map.spawn_local(workers, echo)?;
    let payload = Bytes::from(vec![b'x'; size]);
    let mut ok = 0u64;
    let summary = map.run(
        (0..jobs).map(|_| payload.clone()),
        &Shutdown::new(),
        |f| {
            if matches!(f.outcome, Outcome::Done(_)) {
                ok += 1;
            }
        },
        |_| {},
    )?;
    Ok(Measurement {
        messages: ok,
        lost: jobs - ok,
        elapsed: summary.elapsed,
        latencies: Latencies::default(),
    })
}
