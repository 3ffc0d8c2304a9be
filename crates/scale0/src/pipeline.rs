//! PUSH/PULL pipelines: the ventilator ([`Vent`]), the worker ([`TaskWorker`]) and the
//! sink ([`Sink`]). The parallel map is in `map.rs`. Frames are in
//! [`scale0_proto::pipeline`] and `docs/protocol.md`.

use crate::clock::Clock;
use crate::endpoints;
use crate::error::{Error, Result, ZmqContext};
use crate::ids::random_u64;
use crate::security::{self, CurveClient, CurveServer, ZapHandler};
use crate::shutdown::Shutdown;
use crate::sockets::{self, ConnectionCounter, pipeline_socket};
use crate::task::{Task, TaskOutcome};
use bytes::Bytes;
use scale0_proto::pipeline::{Job, MAX_CAPACITY, MAX_ID_BYTES, Report, Status};
use scale0_proto::task_worker::{self, TaskWorker as TaskSession};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;
use tracing::{debug, info, warn};

// ---------------------------------------------------------------------------------------
// The worker.

/// Where a worker pulls jobs from and pushes their results to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// A ventilator's (or map's) jobs endpoint, such as `tcp://host:5557`.
    pub jobs: String,
    /// The sink for results of jobs from there, such as `tcp://host:5558`.
    pub results: String,
}

impl Source {
    /// `host` alone means its ventilator and sink ports (5557, 5558); an endpoint with a
    /// port is the ventilator, and the sink is on the port after it.
    pub fn host(host: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidConfig(format!(
                "{host:?} is not a host, host:port or tcp://host:port"
            ))
        };
        let rest = host.strip_prefix("tcp://").unwrap_or(host);
        if rest.is_empty() || rest.contains('/') {
            return Err(bad());
        }
        // An IPv6 address is bracketed; a port follows the last colon outside brackets.
        let (name, port) = match rest.rsplit_once(':') {
            Some((name, port)) if !name.is_empty() && !port.contains(']') => {
                let port: u16 = port.parse().map_err(|_| bad())?;
                (name, port)
            }
            _ => (rest, endpoints::VENT_PORT),
        };
        let sink = port.checked_add(1).ok_or_else(bad)?;
        Ok(Self {
            jobs: format!("tcp://{name}:{port}"),
            results: format!("tcp://{name}:{sink}"),
        })
    }
}

/// A pipeline worker's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskWorkerConfig {
    /// Ventilators (or maps) and their sinks; jobs from each go back to its own sink.
    pub sources: Vec<Source>,
    /// Jobs run at once.
    pub capacity: u32,
    /// Heartbeats to sinks that sent framed jobs, in milliseconds.
    pub interval_ms: u64,
    /// Limit for one-frame jobs, which carry none; 0 for no limit.
    pub plain_timeout_ms: u64,
    /// The worker's name in reports; `None` for host.pid.random.
    pub name: Option<String>,
    /// Largest frame read from a peer, in bytes: a peer that sends a larger one is
    /// disconnected before it is stored (libzmq's ZMQ_MAXMSGSIZE).
    pub max_message_bytes: usize,
    /// CURVE towards ventilators and sinks that require it (one server key for all).
    pub curve: Option<CurveClient>,
    /// Most jobs one batched report mentions (answers to a map's batches).
    pub report_jobs: usize,
    /// Most output bytes in one batched report (a larger output still goes, alone).
    pub report_bytes: usize,
}

impl TaskWorkerConfig {
    /// One source, one job at a time, heartbeats every second.
    pub fn new(source: Source) -> Self {
        Self {
            sources: vec![source],
            capacity: 1,
            interval_ms: task_worker::Config::DEFAULT_INTERVAL_MS,
            plain_timeout_ms: 0,
            name: None,
            max_message_bytes: scale0_proto::DEFAULT_MAX_MESSAGE_BYTES,
            curve: None,
            report_jobs: task_worker::Config::DEFAULT_REPORT_JOBS,
            report_bytes: task_worker::Config::DEFAULT_REPORT_BYTES,
        }
    }
}

/// What a worker did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskWorkerSummary {
    /// Jobs started.
    pub jobs: u64,
    /// Jobs that succeeded.
    pub ok: u64,
    /// Jobs that failed.
    pub failed: u64,
    /// Jobs stopped at their timeout.
    pub timed_out: u64,
    /// Jobs handed back unstarted after their hold.
    pub returned: u64,
    /// Messages on a jobs socket that were not jobs.
    pub malformed: u64,
}

/// A pipeline worker: pulls jobs, runs them on `capacity` threads, pushes results.
#[derive(Debug)]
pub struct TaskWorker {
    config: TaskWorkerConfig,
    name: Bytes,
}

impl TaskWorker {
    /// Checks the settings.
    pub fn new(config: TaskWorkerConfig) -> Result<Self> {
        if config.sources.is_empty() {
            return Err(Error::InvalidConfig(
                "a worker needs a ventilator to connect to".into(),
            ));
        }
        if config.capacity == 0 || config.capacity > MAX_CAPACITY {
            return Err(Error::InvalidConfig(format!(
                "capacity must be 1 to {MAX_CAPACITY}"
            )));
        }
        if config.interval_ms == 0 {
            return Err(Error::InvalidConfig(
                "the heartbeat interval must be above 0".into(),
            ));
        }
        for s in &config.sources {
            sockets::check_endpoint(&s.jobs)?;
            sockets::check_endpoint(&s.results)?;
        }
        let name = match &config.name {
            Some(n) if n.is_empty() || n.len() > MAX_ID_BYTES => {
                return Err(Error::InvalidConfig(format!(
                    "a worker name has 1 to {MAX_ID_BYTES} bytes"
                )));
            }
            Some(n) => n.clone(),
            None => {
                let host = rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned();
                format!(
                    "{host}.{}.{:04x}",
                    std::process::id(),
                    random_u64() & 0xffff
                )
            }
        };
        Ok(Self {
            config,
            name: Bytes::from(name),
        })
    }

    /// The name this worker reports under.
    pub fn name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }

    /// Pulls and runs jobs until `shutdown`; then says goodbye to the sinks and stops
    /// running jobs (their tasks see `shutdown` as their cancel signal).
    pub fn run(self, task: Arc<dyn Task>, shutdown: &Shutdown) -> Result<TaskWorkerSummary> {
        let config = &self.config;
        let mut sinks: Vec<String> = Vec::new();
        let mut sink_of = Vec::new();
        for s in &config.sources {
            let i = sinks
                .iter()
                .position(|e| *e == s.results)
                .unwrap_or_else(|| {
                    sinks.push(s.results.clone());
                    sinks.len() - 1
                });
            sink_of.push(i);
        }
        let pulls = config
            .sources
            .iter()
            .map(|s| {
                // One waiting message per connection: the rest stay with the ventilator,
                // which gives them to workers with room.
                let pull = pipeline_socket(&sockets::context(), zmq::PULL, 1, "jobs")?;
                sockets::cap_frames(&pull, config.max_message_bytes)?;
                security::apply_client(&pull, config.curve.as_ref())?;
                sockets::connect(&pull, &s.jobs)?;
                Ok(pull)
            })
            .collect::<Result<Vec<_>>>()?;
        let pushes = sinks
            .iter()
            .map(|e| {
                let push = pipeline_socket(&sockets::context(), zmq::PUSH, 100_000, "results")?;
                // Results still queued at exit get this long to leave.
                push.set_linger(2000).context(|| "setting LINGER".into())?;
                security::apply_client(&push, config.curve.as_ref())?;
                sockets::connect(&push, e)?;
                Ok(push)
            })
            .collect::<Result<Vec<_>>>()?;
        info!(
            jobs = %config.sources.iter().map(|s| s.jobs.as_str()).collect::<Vec<_>>().join(" "),
            results = %sinks.join(" "),
            "task worker running"
        );

        static WORKERS: AtomicU64 = AtomicU64::new(0);
        let done_addr = format!(
            "inproc://scale0-task-worker-{}",
            WORKERS.fetch_add(1, Ordering::Relaxed)
        );
        let done = sockets::context()
            .socket(zmq::PULL)
            .context(|| "creating the slots' wake-up pipe".into())?;
        done.bind(&done_addr)
            .context(|| format!("binding {done_addr}"))?;
        let slots = Arc::new(Slots::default());
        // Stops the slots however this loop ends.
        let _close = CloseOnDrop(Arc::clone(&slots));
        for i in 0..config.capacity {
            let slots = Arc::clone(&slots);
            let task = Arc::clone(&task);
            let cancel = shutdown.clone();
            let wake = sockets::context()
                .socket(zmq::PUSH)
                .context(|| "creating a slot's wake-up pipe".into())?;
            wake.set_sndhwm(0).context(|| "setting SNDHWM".into())?;
            wake.connect(&done_addr)
                .context(|| format!("connecting {done_addr}"))?;
            thread::Builder::new()
                .name(format!("task-slot-{i}"))
                .spawn(move || slot(&slots, task.as_ref(), &cancel, &wake))
                .map_err(|error| Error::Spawn {
                    what: "a slot thread",
                    error,
                })?;
        }

        let mut session = TaskSession::new(task_worker::Config {
            name: self.name.clone(),
            capacity: config.capacity,
            interval_ms: config.interval_ms,
            plain_timeout_ms: config.plain_timeout_ms,
            sink_of,
            report_jobs: config.report_jobs,
            report_bytes: config.report_bytes,
        });
        let clock = Clock::new();
        let mut outbox: VecDeque<task_worker::Transmit> = VecDeque::new();
        let mut events = Vec::new();
        let mut turn = 0usize;
        debug!(worker = %self.name(), capacity = config.capacity, sources = config.sources.len(), "pipeline worker running");

        while !shutdown.is_triggered() {
            // Deliver reports in order; a sink that cannot take more holds the rest.
            while let Some(t) = outbox.front() {
                match sockets::send(&pushes[t.dest], &t.frames) {
                    Ok(()) => {
                        outbox.pop_front();
                    }
                    Err(zmq::Error::EAGAIN) => break,
                    Err(e) => return Err(e).context(|| "sending a report".into()),
                }
            }
            let wait_ms = if outbox.is_empty() {
                clock.wait_ms(session.poll_timeout())
            } else {
                10
            };
            {
                let mut items: Vec<zmq::PollItem<'_>> = vec![done.as_poll_item(zmq::POLLIN)];
                let open = outbox.len() < MAX_OUTBOX;
                let polled: Vec<usize> = (0..pulls.len())
                    .filter(|&s| open && session.has_room(s))
                    .collect();
                items.extend(polled.iter().map(|&s| pulls[s].as_poll_item(zmq::POLLIN)));
                sockets::poll(&mut items, wait_ms)
                    .context(|| "polling the worker's sockets".into())?;
            }
            // Wake-ups say "look"; what happened is in the slots' queue.
            while sockets::try_recv(&done)?.is_some() {}
            slots.take_events(&mut events);
            let now = clock.now();
            for event in events.drain(..) {
                match event {
                    SlotEvent::Started(seq) => session.handle_started(now, seq),
                    SlotEvent::Done {
                        seq,
                        status,
                        output,
                        busy,
                    } => session.handle_done(seq, status, output, busy),
                }
            }
            // Take jobs while there is room, turn by turn across the sources.
            let n = pulls.len();
            let mut idle_rounds = 0;
            let mut runs = Vec::new();
            while idle_rounds < n && outbox.len() < MAX_OUTBOX {
                let source = turn % n;
                turn = turn.wrapping_add(1);
                if !session.has_room(source) {
                    idle_rounds += 1;
                    continue;
                }
                let Some(frames) = sockets::try_recv(&pulls[source])? else {
                    idle_rounds += 1;
                    continue;
                };
                idle_rounds = 0;
                if let Err(e) = session.handle_job(clock.now(), source, frames) {
                    warn!(error = %e, "not a job: dropped");
                }
                runs.extend(std::iter::from_fn(|| session.poll_run()));
            }
            slots.queue(runs);
            session.handle_timeout(clock.now());
            while let Some(seq) = session.poll_withdraw() {
                if slots.withdraw(seq) {
                    session.handle_withdrawn(seq);
                }
            }
            // Everything that was ready is taken in: what it says goes now.
            session.flush();
            outbox.extend(std::iter::from_fn(|| session.poll_transmit()));
        }
        // Leaving: no more jobs from here; results of running jobs are not waited for
        // (the map sends them again elsewhere).
        session.leave();
        outbox.extend(std::iter::from_fn(|| session.poll_transmit()));
        for t in outbox {
            let _ = sockets::send(&pushes[t.dest], &t.frames);
        }
        let c = session.counters();
        debug!(worker = %self.name(), jobs = c.jobs, "pipeline worker stopped");
        Ok(TaskWorkerSummary {
            jobs: c.jobs,
            ok: c.ok,
            failed: c.failed,
            timed_out: c.timed_out,
            returned: c.returned,
            malformed: c.malformed,
        })
    }
}

/// Reports queued for the sinks beyond which the worker takes no more jobs.
const MAX_OUTBOX: usize = 10_000;

/// What a slot tells the worker's loop.
enum SlotEvent {
    /// It began job `seq`.
    Started(u64),
    /// Job `seq` ended after running for `busy`.
    Done {
        seq: u64,
        status: Status,
        output: Bytes,
        busy: Duration,
    },
}

/// The jobs waiting for a slot and what the slots did, shared by the worker's loop and
/// its slot threads. Slots take the next job themselves, so a worker holding a batch
/// hands nothing over per job; a slot wakes the loop only when it finds no events
/// waiting to be read, so one wake-up carries everything that happened meanwhile.
#[derive(Default)]
struct Slots {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotState {
    runs: VecDeque<task_worker::Run>,
    events: Vec<SlotEvent>,
    closed: bool,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // A slot that panicked mid-update leaves nothing half-done worth refusing.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn queue(&self, runs: Vec<task_worker::Run>) {
        if runs.is_empty() {
            return;
        }
        self.lock().runs.extend(runs);
        self.ready.notify_all();
    }

    /// Takes job `seq` back if no slot has begun it.
    fn withdraw(&self, seq: u64) -> bool {
        let mut state = self.lock();
        let before = state.runs.len();
        state.runs.retain(|r| r.seq != seq);
        state.runs.len() < before
    }

    fn take_events(&self, into: &mut Vec<SlotEvent>) {
        into.append(&mut self.lock().events);
    }

    /// Records an event; true if the loop must be woken to read it.
    fn tell(state: &mut SlotState, event: SlotEvent) -> bool {
        state.events.push(event);
        state.events.len() == 1
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

struct CloseOnDrop(Arc<Slots>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Wakes the worker's loop; false once its end of the pipe is gone. Never blocks: with
/// no one to read it (the loop has ended) a wake-up is not needed.
fn nudge(wake: &zmq::Socket) -> bool {
    match sockets::retry_eintr(|| wake.send(&[][..], zmq::DONTWAIT)) {
        Ok(()) | Err(zmq::Error::EAGAIN) => true,
        Err(_) => false,
    }
}

/// One slot: takes jobs in order, one at a time, and says when each begins and ends.
fn slot(slots: &Slots, task: &dyn Task, cancel: &Shutdown, wake: &zmq::Socket) {
    let mut last: Option<SlotEvent> = None;
    loop {
        let (job, wake_up) = {
            let mut state = slots.lock();
            // The previous job's end and this one's start under one lock, one wake-up.
            let mut wake_up = last.take().is_some_and(|e| Slots::tell(&mut state, e));
            let job = loop {
                if state.closed {
                    break None;
                }
                if let Some(job) = state.runs.pop_front() {
                    break Some(job);
                }
                if wake_up {
                    // Wake the loop before sleeping, not after the next job.
                    drop(state);
                    if !nudge(wake) {
                        return;
                    }
                    wake_up = false;
                    state = slots.lock();
                    continue;
                }
                state = slots
                    .ready
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            };
            let Some(job) = job else { return };
            wake_up |= Slots::tell(&mut state, SlotEvent::Started(job.seq));
            (job, wake_up)
        };
        if wake_up && !nudge(wake) {
            return;
        }
        let started = std::time::Instant::now();
        let outcome = task.run(&job.payload, job.timeout, cancel);
        let busy = started.elapsed();
        let (status, output) = match outcome {
            TaskOutcome::Ok(out) => (Status::Ok, out),
            TaskOutcome::Failed(why) => (Status::Failed, Bytes::from(why)),
            TaskOutcome::TimedOut => {
                let ms = job.timeout.map_or(0, |t| t.as_millis());
                (
                    Status::Timeout,
                    Bytes::from(format!("timed out after {ms} ms")),
                )
            }
            TaskOutcome::Unrunnable(why) => (Status::Unrunnable, Bytes::from(why)),
        };
        last = Some(SlotEvent::Done {
            seq: job.seq,
            status,
            output,
            busy,
        });
    }
}

// ---------------------------------------------------------------------------------------
// The ventilator.

/// A ventilator's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VentConfig {
    /// Endpoints workers connect to.
    pub bind: Vec<String>,
    /// Send one-frame jobs (for the Guide's workers), without ids or timeouts.
    pub plain: bool,
    /// The per-job limit carried by framed jobs; 0 for none.
    pub job_timeout_ms: u64,
    /// Jobs libzmq may queue per worker; small, so a worker joining late gets its share.
    pub socket_hwm: i32,
    /// Largest frame read from a peer, in bytes: a peer that sends a larger one is
    /// disconnected before it is stored (libzmq's ZMQ_MAXMSGSIZE).
    pub max_message_bytes: usize,
    /// CURVE on every endpoint, with the workers' keys allowed.
    pub curve: Option<CurveServer>,
}

impl Default for VentConfig {
    fn default() -> Self {
        Self {
            bind: vec![endpoints::VENT.into()],
            plain: false,
            job_timeout_ms: 0,
            socket_hwm: 10,
            max_message_bytes: scale0_proto::DEFAULT_MAX_MESSAGE_BYTES,
            curve: None,
        }
    }
}

/// The ventilator: round robin of jobs to connected workers (PUSH). It does not see
/// results, so it cannot send a job again: that is what the map is for.
pub struct Vent {
    ctx: zmq::Context,
    push: zmq::Socket,
    connections: ConnectionCounter,
    endpoints: Vec<String>,
    config: VentConfig,
    run: u64,
    sent: u64,
    _zap: Option<ZapHandler>,
}

impl std::fmt::Debug for Vent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vent")
            .field("endpoints", &self.endpoints)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Vent {
    /// Binds the endpoints.
    pub fn bind(config: VentConfig) -> Result<Self> {
        if config.bind.is_empty() {
            return Err(Error::InvalidConfig(
                "the ventilator needs an endpoint".into(),
            ));
        }
        security::check_endpoints(config.curve.as_ref(), &config.bind)?;
        // Its own context, so `finish` can wait for queued jobs by terminating it.
        let ctx = zmq::Context::new();
        let push = pipeline_socket(&ctx, zmq::PUSH, config.socket_hwm, "jobs")?;
        // Workers send nothing on it but their handshake; what they could is capped.
        sockets::cap_frames(&push, config.max_message_bytes)?;
        let curve = config.curve.as_ref();
        let connections = ConnectionCounter::watch(&ctx, &push, "jobs", curve.is_some())?;
        // The counter's monitor logs refused handshakes; ZAP is up before anyone connects.
        let zap = security::secure(curve, &ctx, &[&push], &[])?;
        let endpoints = config
            .bind
            .iter()
            .map(|e| sockets::bind(&push, e))
            .collect::<Result<_>>()?;
        Ok(Self {
            ctx,
            push,
            connections,
            endpoints,
            config,
            run: random_u64(),
            sent: 0,
            _zap: zap,
        })
    }

    /// The endpoints actually bound.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Waits until `n` workers are connected (or `shutdown`): jobs sent before the last
    /// one connects would all go to the first ones.
    pub fn wait_for_workers(&mut self, n: usize, shutdown: &Shutdown) -> Result<bool> {
        while self.connections.count() < n {
            if shutdown.is_triggered() {
                return Ok(false);
            }
            let mut items = [self.connections.poll_item()];
            sockets::poll(&mut items, 100).context(|| "waiting for workers".into())?;
            self.connections.update()?;
        }
        Ok(true)
    }

    /// Workers connected now.
    pub fn workers(&mut self) -> Result<usize> {
        self.connections.update()?;
        Ok(self.connections.count())
    }

    /// Sends one job, waiting while no worker can take it. `Ok(false)` on shutdown.
    pub fn send(&mut self, payload: Bytes, shutdown: &Shutdown) -> Result<bool> {
        let job = if self.config.plain {
            Job::Plain(payload)
        } else {
            Job::Framed {
                id: Bytes::from(format!("{:016x}.{}.1", self.run, self.sent)),
                timeout_ms: self.config.job_timeout_ms,
                payload,
            }
        };
        let frames = job.encode();
        loop {
            match sockets::send(&self.push, &frames) {
                Ok(()) => {
                    self.sent += 1;
                    // Read connection events now and then even when nothing blocks:
                    // libzmq's I/O thread blocks on a full monitor pipe.
                    if self.sent.is_multiple_of(256) {
                        self.connections.update()?;
                    }
                    return Ok(true);
                }
                Err(zmq::Error::EAGAIN) => {}
                Err(e) => return Err(e).context(|| "sending a job".into()),
            }
            if shutdown.is_triggered() {
                return Ok(false);
            }
            let mut items = [self.push.as_poll_item(zmq::POLLOUT)];
            sockets::poll(&mut items, 100).context(|| "waiting for a worker".into())?;
            self.connections.update()?;
        }
    }

    /// Jobs sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Waits up to `linger` for the jobs still queued in libzmq to leave, then closes.
    pub fn finish(self, linger: Duration) -> Result<()> {
        let ms = i32::try_from(linger.as_millis()).unwrap_or(i32::MAX);
        self.push
            .set_linger(ms)
            .context(|| "setting LINGER".into())?;
        // Terminating the context blocks until the jobs are out or the linger is over;
        // the process-wide one would never be terminated, so exit would drop them.
        let mut ctx = self.ctx.clone();
        drop(self);
        ctx.destroy().context(|| "closing the ventilator".into())
    }
}

impl Drop for Vent {
    fn drop(&mut self) {
        sockets::stop_monitor(&self.push);
    }
}

// ---------------------------------------------------------------------------------------
// The sink.

/// A sink's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// Endpoints workers push results to.
    pub bind: Vec<String>,
    /// Results libzmq may queue per worker.
    pub socket_hwm: i32,
    /// Largest frame read from a peer, in bytes: a peer that sends a larger one is
    /// disconnected before it is stored (libzmq's ZMQ_MAXMSGSIZE).
    pub max_message_bytes: usize,
    /// CURVE on every endpoint, with the workers' keys allowed.
    pub curve: Option<CurveServer>,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            bind: vec![endpoints::SINK.into()],
            socket_hwm: 100_000,
            max_message_bytes: scale0_proto::DEFAULT_MAX_MESSAGE_BYTES,
            curve: None,
        }
    }
}

/// Something a sink received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkItem {
    /// A framed job's result.
    Result {
        /// The worker that ran it.
        worker: String,
        /// The job's id.
        id: String,
        /// How it ended.
        status: Status,
        /// Its output, or why it failed.
        output: Bytes,
    },
    /// A one-frame result.
    Plain(Bytes),
    /// A worker's first heartbeat.
    WorkerJoined {
        /// Its name.
        worker: String,
        /// Jobs it runs at once.
        capacity: u32,
    },
    /// A worker said goodbye.
    WorkerLeft {
        /// Its name.
        worker: String,
    },
}

/// The sink: collects results (PULL), fair-queued across workers.
pub struct Sink {
    pull: zmq::Socket,
    endpoints: Vec<String>,
    zap: Option<ZapHandler>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(zap) = self.zap.take() {
            zap.stop(&[&self.pull]);
        }
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// What a sink saw before it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkSummary {
    /// Results, framed or plain.
    pub results: u64,
    /// Messages that were neither a result nor a report, dropped.
    pub malformed: u64,
}

impl Sink {
    /// Binds the endpoints.
    pub fn bind(config: SinkConfig) -> Result<Self> {
        if config.bind.is_empty() {
            return Err(Error::InvalidConfig("the sink needs an endpoint".into()));
        }
        let curve = config.curve.as_ref();
        security::check_endpoints(curve, &config.bind)?;
        let ctx = security::server_context(curve);
        let pull = pipeline_socket(&ctx, zmq::PULL, config.socket_hwm, "results")?;
        sockets::cap_frames(&pull, config.max_message_bytes)?;
        let zap = security::secure(curve, &ctx, &[&pull], &[&pull])?;
        let endpoints = config
            .bind
            .iter()
            .map(|e| sockets::bind(&pull, e))
            .collect::<Result<_>>()?;
        Ok(Self {
            pull,
            endpoints,
            zap,
        })
    }

    /// The endpoints actually bound.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Receives until `shutdown` or until `each` returns false; returns what it saw.
    pub fn run(
        self,
        shutdown: &Shutdown,
        mut each: impl FnMut(SinkItem) -> bool,
    ) -> Result<SinkSummary> {
        let mut results = 0u64;
        let mut malformed = 0u64;
        let mut known: HashMap<Bytes, ()> = HashMap::new();
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        while !shutdown.is_triggered() {
            let mut items = [self.pull.as_poll_item(zmq::POLLIN)];
            sockets::poll(
                &mut items,
                i64::try_from(Shutdown::CHECK_INTERVAL_MS).unwrap_or(100),
            )
            .context(|| "polling the sink".into())?;
            while let Some(frames) = sockets::try_recv(&self.pull)? {
                let items = match Report::decode(&frames) {
                    Ok(Report::Result {
                        worker,
                        id,
                        status,
                        output,
                    }) => vec![SinkItem::Result {
                        worker: text(&worker),
                        id: text(&id),
                        status,
                        output,
                    }],
                    // Only a map sends batches, but a worker's answers to one are results.
                    Ok(Report::Batch(b)) => b
                        .ended
                        .into_iter()
                        .map(|e| SinkItem::Result {
                            worker: text(&b.worker),
                            id: text(&e.id),
                            status: e.status,
                            output: e.output,
                        })
                        .collect(),
                    Ok(Report::Plain(output)) => vec![SinkItem::Plain(output)],
                    Ok(Report::Alive {
                        worker, capacity, ..
                    }) => {
                        if known.len() >= 100_000 || known.insert(worker.clone(), ()).is_some() {
                            continue;
                        }
                        vec![SinkItem::WorkerJoined {
                            worker: text(&worker),
                            capacity,
                        }]
                    }
                    Ok(Report::Bye { worker }) => {
                        known.remove(&worker);
                        vec![SinkItem::WorkerLeft {
                            worker: text(&worker),
                        }]
                    }
                    Ok(Report::Start { .. }) => continue,
                    Err(e) => {
                        malformed += 1;
                        // The 1st, 2nd, 4th... of them: seen, but a flood is no log flood.
                        if malformed.is_power_of_two() {
                            warn!(error = %e, total = malformed, "not a result: dropped");
                        }
                        continue;
                    }
                };
                for item in items {
                    if matches!(item, SinkItem::Result { .. } | SinkItem::Plain(_)) {
                        results += 1;
                    }
                    if !each(item) {
                        return Ok(SinkSummary { results, malformed });
                    }
                }
            }
        }
        Ok(SinkSummary { results, malformed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_means_its_vent_and_sink_ports() {
        let s = Source::host("node7").unwrap();
        assert_eq!(s.jobs, "tcp://node7:5557");
        assert_eq!(s.results, "tcp://node7:5558");
        let s = Source::host("tcp://10.0.0.2:6000").unwrap();
        assert_eq!(
            (s.jobs.as_str(), s.results.as_str()),
            ("tcp://10.0.0.2:6000", "tcp://10.0.0.2:6001")
        );
        let s = Source::host("[::1]").unwrap();
        assert_eq!(s.jobs, "tcp://[::1]:5557");
        for bad in ["", "host:port", "host:65535", "tcp://", "ipc:///x"] {
            assert!(Source::host(bad).is_err(), "{bad}");
        }
    }
}
