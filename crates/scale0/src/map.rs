//! The parallel map's socket loop: a PUSH for jobs, a PULL for reports, a monitor counting
//! connections, and the [`scale0_proto::pipeline::Map`] state machine deciding.

use crate::clock::Clock;
use crate::error::{Error, Result, ZmqContext};
use crate::ids::random_u64;
use crate::pipeline::{Source, TaskWorker, TaskWorkerConfig, TaskWorkerSummary};
use crate::security::{self, CurveClient, CurveServer, KeyPair, ZapHandler};
use crate::shutdown::Shutdown;
use crate::sockets::{self, ConnectionCounter, local_endpoint, pipeline_socket};
use crate::task::Task;
use bytes::Bytes;
use scale0_proto::pipeline::{self, Finished, MapCounters};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// Where a map listens and how it behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapConfig {
    /// Endpoints workers pull jobs from (the Guide's ventilator port).
    pub vent: Vec<String>,
    /// Endpoints workers push reports to (the Guide's sink port).
    pub sink: Vec<String>,
    /// Timeouts, retries, prefetch, ordering: the core's settings.
    pub core: pipeline::MapConfig,
    /// How often progress is reported.
    pub progress_every: Duration,
    /// Largest frame read from a peer, in bytes: a peer that sends a larger one is
    /// disconnected before it is stored (libzmq's ZMQ_MAXMSGSIZE).
    pub max_message_bytes: usize,
    /// CURVE on both sockets, with the workers' keys allowed. Local workers get a key
    /// pair of their own, allowed for this map only.
    pub curve: Option<CurveServer>,
}

impl Default for MapConfig {
    fn default() -> Self {
        Self {
            vent: vec![crate::endpoints::VENT.into()],
            sink: vec![crate::endpoints::SINK.into()],
            core: pipeline::MapConfig::default(),
            progress_every: Duration::from_millis(200),
            max_message_bytes: scale0_proto::DEFAULT_MAX_MESSAGE_BYTES,
            curve: None,
        }
    }
}

/// Where a map stands, for a progress bar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapProgress {
    /// Totals so far.
    pub counters: MapCounters,
    /// Jobs pushed so far, and whether that is all of them.
    pub input_done: bool,
    /// Workers alive.
    pub workers: usize,
    /// Jobs they run at once in all.
    pub capacity: u64,
    /// Jobs sent and not finished.
    pub in_flight: usize,
    /// Since the map began.
    pub elapsed: Duration,
}

/// What a map did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSummary {
    /// Final totals.
    pub counters: MapCounters,
    /// From start to the last result.
    pub elapsed: Duration,
    /// False when it stopped on shutdown before every job finished.
    pub complete: bool,
}

/// The parallel map (`scale0 map`): workers reached through a ventilator and a sink;
/// [`Map::run`] distributes jobs to every connected worker and collects one outcome per job.
pub struct Map {
    push: zmq::Socket,
    pull: zmq::Socket,
    connections: ConnectionCounter,
    vent: Vec<String>,
    sink: Vec<String>,
    config: MapConfig,
    local: Vec<JoinHandle<Result<TaskWorkerSummary>>>,
    local_stop: Shutdown,
    local_curve: Option<CurveClient>,
    zap: Option<ZapHandler>,
}

impl std::fmt::Debug for Map {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("vent", &self.vent)
            .field("sink", &self.sink)
            .field("local_workers", &self.local.len())
            .finish_non_exhaustive()
    }
}

/// Where a map's jobs come from.
enum Input<'a> {
    /// Never blocks: all jobs are at hand.
    Iter(Box<dyn Iterator<Item = Bytes> + 'a>),
    /// Jobs arriving (from stdin, say); the map keeps working while it waits.
    Channel(mpsc::Receiver<Bytes>),
    Closed,
}

/// Jobs read ahead of dispatch; beyond this the input waits.
const READ_AHEAD: usize = 4096;

impl Map {
    /// Binds the two sockets.
    pub fn bind(config: MapConfig) -> Result<Self> {
        if config.vent.is_empty() || config.sink.is_empty() {
            return Err(Error::InvalidConfig(
                "a map needs a ventilator and a sink endpoint".into(),
            ));
        }
        if config.core.max_attempts == 0 {
            return Err(Error::InvalidConfig(
                "a job needs at least one attempt".into(),
            ));
        }
        security::check_endpoints(
            config.curve.as_ref(),
            config.vent.iter().chain(&config.sink),
        )?;
        // Local workers connect like remote ones, so with CURVE they need a key: a fresh
        // pair, allowed here only.
        let (curve, local_curve) = match &config.curve {
            Some(c) => {
                let pair = KeyPair::generate()?;
                let mut allow = (*c.allow).clone();
                allow.add(pair.public, "local");
                let local = CurveClient {
                    server: c.pair.public,
                    pair,
                };
                let server = CurveServer {
                    pair: c.pair.clone(),
                    allow: Arc::new(allow),
                };
                (Some(server), Some(local))
            }
            None => (None, None),
        };
        let ctx = security::server_context(curve.as_ref());
        // The map bounds what is queued by credit; the socket itself need not hold back.
        let push = pipeline_socket(&ctx, zmq::PUSH, 100_000, "jobs")?;
        let connections = ConnectionCounter::watch(&ctx, &push, "jobs", curve.is_some())?;
        let pull = pipeline_socket(&ctx, zmq::PULL, 100_000, "reports")?;
        sockets::cap_frames(&push, config.max_message_bytes)?;
        sockets::cap_frames(&pull, config.max_message_bytes)?;
        // The push socket's monitor is the counter's, which logs its refusals itself.
        let zap = security::secure(curve.as_ref(), &ctx, &[&push, &pull], &[&pull])?;
        let vent = config
            .vent
            .iter()
            .map(|e| sockets::bind(&push, e))
            .collect::<Result<_>>()?;
        let sink = config
            .sink
            .iter()
            .map(|e| sockets::bind(&pull, e))
            .collect::<Result<_>>()?;
        Ok(Self {
            push,
            pull,
            connections,
            vent,
            sink,
            config,
            local: Vec::new(),
            local_stop: Shutdown::new(),
            local_curve,
            zap,
        })
    }

    /// The ventilator endpoints bound.
    pub fn vent_endpoints(&self) -> &[String] {
        &self.vent
    }

    /// The sink endpoints bound.
    pub fn sink_endpoints(&self) -> &[String] {
        &self.sink
    }

    /// Starts `n` workers in this process, each running one job at a time with `task`,
    /// connected over loopback like any other worker. They stop when the map is dropped.
    pub fn spawn_local(&mut self, n: u32, task: Arc<dyn Task>) -> Result<()> {
        let source = Source {
            jobs: local_endpoint(&self.vent[0]),
            results: local_endpoint(&self.sink[0]),
        };
        for i in 0..n {
            let mut config = TaskWorkerConfig::new(source.clone());
            config.curve.clone_from(&self.local_curve);
            config.max_message_bytes = self.config.max_message_bytes;
            config.name = Some(format!(
                "local.{}.{i}.{:04x}",
                std::process::id(),
                random_u64() & 0xffff
            ));
            let worker = TaskWorker::new(config)?;
            let task = Arc::clone(&task);
            let stop = self.local_stop.clone();
            let handle = thread::Builder::new()
                .name(format!("local-worker-{i}"))
                .spawn(move || worker.run(task, &stop))
                .map_err(|error| Error::Spawn {
                    what: "a local worker",
                    error,
                })?;
            self.local.push(handle);
        }
        Ok(())
    }

    /// Runs every job of `jobs` (an iterator that does not block) on the map's workers.
    /// `finished` gets each job's outcome once, in input order unless the config says
    /// otherwise; `progress` gets totals every `progress_every`.
    pub fn run<I>(
        &mut self,
        jobs: I,
        shutdown: &Shutdown,
        finished: impl FnMut(Finished),
        progress: impl FnMut(&MapProgress),
    ) -> Result<MapSummary>
    where
        I: IntoIterator<Item = Bytes>,
    {
        let input = Input::Iter(Box::new(jobs.into_iter()));
        self.drive(input, shutdown, finished, progress)
    }

    /// As [`Map::run`], with jobs arriving on a channel (read from stdin by another
    /// thread, say); the input ends when every sender is dropped.
    pub fn run_channel(
        &mut self,
        jobs: mpsc::Receiver<Bytes>,
        shutdown: &Shutdown,
        finished: impl FnMut(Finished),
        progress: impl FnMut(&MapProgress),
    ) -> Result<MapSummary> {
        self.drive(Input::Channel(jobs), shutdown, finished, progress)
    }

    fn drive(
        &mut self,
        mut input: Input<'_>,
        shutdown: &Shutdown,
        mut finished: impl FnMut(Finished),
        mut progress: impl FnMut(&MapProgress),
    ) -> Result<MapSummary> {
        let clock = Clock::new();
        let started = Instant::now();
        let mut core = pipeline::Map::new(self.config.core.clone(), random_u64());
        core.set_connections(clock.now(), self.connections.count());
        let every = self.config.progress_every;
        let mut next_progress = started + every;
        // The jobs socket had no room: wait until it has, rather than spin.
        let mut blocked = false;
        info!(
            vent = %self.vent.join(" "),
            sink = %self.sink.join(" "),
            "map running"
        );
        while !core.is_done() {
            if shutdown.is_triggered() {
                return Ok(MapSummary {
                    counters: core.counters().clone(),
                    elapsed: started.elapsed(),
                    complete: false,
                });
            }
            let waiting_for_input = read_input(&mut input, &mut core);
            let now = clock.now();
            if !blocked {
                while let Some(d) = core.poll_dispatch(now) {
                    match sockets::send(&self.push, &d.frames) {
                        Ok(()) => {}
                        Err(zmq::Error::EAGAIN) => {
                            core.undo_dispatch(&d);
                            blocked = true;
                            break;
                        }
                        Err(e) => return Err(e).context(|| "sending a job".into()),
                    }
                }
            }
            let deadline = core.poll_timeout();
            let mut wait = clock.wait_ms(deadline);
            let until_progress = next_progress.saturating_duration_since(Instant::now());
            wait = wait.min(i64::try_from(until_progress.as_millis()).unwrap_or(wait));
            if waiting_for_input {
                wait = wait.min(5);
            }
            {
                let mut items = vec![
                    self.pull.as_poll_item(zmq::POLLIN),
                    self.connections.poll_item(),
                ];
                if blocked {
                    items.push(self.push.as_poll_item(zmq::POLLOUT));
                }
                sockets::poll(&mut items, wait.max(0)).context(|| "polling the map".into())?;
                if blocked && items.get(2).is_some_and(zmq::PollItem::is_writable) {
                    blocked = false;
                }
            }
            if let Some(n) = self.connections.update()? {
                debug!(connections = n, "workers connected");
                core.set_connections(clock.now(), n);
                blocked = false;
                // Reading EVENTS makes the socket take in its pending commands, a closed
                // connection's end among them, so the jobs sent next avoid it (the core
                // still sends again what goes out before the socket has seen it).
                self.push
                    .get_events()
                    .context(|| "reading the jobs socket's events".into())?;
            }
            while let Some(frames) = sockets::try_recv(&self.pull)? {
                core.handle_report(clock.now(), frames);
            }
            let now = clock.now();
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
            while let Some(f) = core.poll_finished() {
                finished(f);
            }
            if Instant::now() >= next_progress {
                next_progress = Instant::now() + every;
                progress(&snapshot(&core, &input, started));
            }
        }
        progress(&snapshot(&core, &input, started));
        Ok(MapSummary {
            counters: core.counters().clone(),
            elapsed: started.elapsed(),
            complete: true,
        })
    }
}

/// Reads jobs ahead of dispatch; true while a channel is open but had nothing.
fn read_input(input: &mut Input<'_>, core: &mut pipeline::Map) -> bool {
    while core.queued() < READ_AHEAD {
        let next = match input {
            Input::Iter(it) => it.next(),
            Input::Channel(rx) => match rx.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => None,
            },
            Input::Closed => return false,
        };
        match next {
            Some(job) => {
                core.push_job(job);
            }
            None => {
                *input = Input::Closed;
                core.close_input();
                return false;
            }
        }
    }
    false
}

fn snapshot(core: &pipeline::Map, input: &Input<'_>, started: Instant) -> MapProgress {
    let (workers, capacity) = core.workers();
    MapProgress {
        counters: core.counters().clone(),
        input_done: matches!(input, Input::Closed),
        workers,
        capacity,
        in_flight: core.in_flight(),
        elapsed: started.elapsed(),
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        sockets::stop_monitor(&self.push);
        self.local_stop.trigger();
        for handle in self.local.drain(..) {
            match handle.join() {
                Ok(Ok(summary)) => debug!(?summary, "local worker stopped"),
                Ok(Err(e)) => info!(error = %e, "local worker failed"),
                Err(_) => info!("a local worker panicked"),
            }
        }
        if let Some(zap) = self.zap.take() {
            zap.stop(&[&self.pull]);
        }
    }
}
