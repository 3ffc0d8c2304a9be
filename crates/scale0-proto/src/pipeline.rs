//! Pipelines: the frames of `scale0 vent | work | sink`, and the parallel map as a sans-IO
//! state machine.
//!
//! Jobs travel PUSH -> PULL and reports travel back PUSH -> PULL, so any stage can be a
//! plain ZeroMQ program: a one-frame message is a job (or a result) with no id, as in the
//! ZeroMQ Guide's task ventilator, worker and sink. A framed job carries an id and a
//! timeout, and a worker that received one from a ventilator tells that ventilator's sink
//! when it starts each job, what it is running (heartbeats), and how each job ended.
//!
//! PUSH cannot address one worker, so the map bounds what waits in socket buffers by
//! credit: it keeps at most the announced capacity of the live workers (plus a small
//! prefetch each) in flight. A job's timeout runs from its start notice, never while it
//! waits in a buffer. A job whose worker dies, whose result is lost on a broken connection
//! (the worker's next heartbeat no longer lists it), or which may have been in a buffer
//! that went away (a disconnection) is sent again. Only the first result of a job counts,
//! so nothing is emitted twice.
//!
//! Protocol 2 carries short jobs cheaply: batches of jobs to workers that announce they
//! read them (only while every connection is such a worker, since PUSH picks the
//! connection), a queue beyond capacity sized from the run time workers report, batched
//! reports back, and jobs handed back unstarted when they wait too long behind slower
//! ones.

use crate::mdp::Frames;
use crate::time::Instant;
use crate::timers::Timers;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;
use tracing::{debug, info};

/// First frame of a framed job.
pub const JOB: &[u8] = b"s0job";
/// First frame of a worker's result.
pub const RESULT: &[u8] = b"s0res";
/// First frame of a worker's heartbeat (its first one is its hello).
pub const ALIVE: &[u8] = b"s0alive";
/// First frame of a start notice.
pub const START: &[u8] = b"s0start";
/// First frame of a worker's goodbye.
pub const BYE: &[u8] = b"s0bye";
/// First frame of a batch of framed jobs (protocol 2).
pub const JOBS: &[u8] = b"s0jobs";
/// First frame of a worker's batched report: starts, returns and results (protocol 2).
pub const REPORT: &[u8] = b"s0rep";
/// Put first among a heartbeat's running ids by a worker that reads batches (protocol 2).
/// A protocol-1 map takes it for an id it never sent, and ignores it.
pub const BATCHES: &[u8] = b"s0/2";

/// Most jobs in one batch, and most entries of each kind in one batched report: a
/// message announcing more is refused.
pub const MAX_BATCH_JOBS: usize = 1024;

/// Longest job id or worker name, in bytes.
pub const MAX_ID_BYTES: usize = 255;
/// Most jobs one worker may announce it runs at once.
pub const MAX_CAPACITY: u32 = 65_535;
/// Longest heartbeat interval a worker may announce (one hour).
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

/// Why a pipeline message was not understood.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    /// No frames at all.
    #[error("empty message")]
    Empty,
    /// A known first frame with the wrong number of frames after it.
    #[error("{kind} needs {expected} frames, got {got}")]
    FrameCount {
        /// The first frame, as text.
        kind: &'static str,
        /// Frames the message should have.
        expected: &'static str,
        /// Frames it has.
        got: usize,
    },
    /// Several frames, the first of which is not one of ours.
    #[error("unknown message kind {0:?}")]
    UnknownKind(String),
    /// A field that must be ASCII decimal is not, or is out of range.
    #[error("bad {field}: {value:?}")]
    BadNumber {
        /// Which field.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// An id or worker name that is empty or too long.
    #[error("bad {field}: empty or longer than {MAX_ID_BYTES} bytes")]
    BadId {
        /// Which field.
        field: &'static str,
    },
    /// A result status other than ok, failed, timeout.
    #[error("unknown status {0:?}")]
    BadStatus(String),
}

fn number(field: &'static str, frame: &[u8], max: u64) -> Result<u64, PipeError> {
    let bad = || PipeError::BadNumber {
        field,
        value: String::from_utf8_lossy(frame).into_owned(),
    };
    if frame.is_empty() || frame.len() > 20 || !frame.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n: u64 = std::str::from_utf8(frame)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    if n > max {
        return Err(bad());
    }
    Ok(n)
}

fn id(field: &'static str, frame: &Bytes) -> Result<Bytes, PipeError> {
    if frame.is_empty() || frame.len() > MAX_ID_BYTES {
        return Err(PipeError::BadId { field });
    }
    Ok(frame.clone())
}

fn count(kind: &'static str, expected: &'static str, got: usize) -> PipeError {
    PipeError::FrameCount {
        kind,
        expected,
        got,
    }
}

fn ascii(n: u64) -> Bytes {
    Bytes::from(n.to_string())
}

/// A job as a worker receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// `[s0job, id, timeout_ms, payload]`: answered with reports to the sink.
    Framed {
        /// Opaque to the worker; handed back with the result.
        id: Bytes,
        /// The worker stops the job after this long; 0 for no limit.
        timeout_ms: u64,
        /// The job's input.
        payload: Bytes,
    },
    /// A one-frame job (the Guide's ventilator): answered with a one-frame result.
    Plain(Bytes),
    /// `[s0jobs, timeout_ms, hold_ms, keep, (id, payload)...]`: several framed jobs in one
    /// message, answered with batched reports ([`Report::Batch`]).
    Batch(Batch),
}

/// Framed jobs sent together to a worker that announced [`BATCHES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Each job's limit, from its own start; 0 for none.
    pub timeout_ms: u64,
    /// Longest a job of the batch may wait at the worker unstarted (its slots busy with
    /// others) before the worker hands it back; 0 for never.
    pub hold_ms: u64,
    /// Unstarted jobs from this map the worker keeps whatever their wait (the map's
    /// prefetch): only those queued behind them are handed back.
    pub keep: u32,
    /// The jobs: (id, payload), at least one.
    pub jobs: Vec<(Bytes, Bytes)>,
}

impl Job {
    /// Reads a job message.
    pub fn decode(frames: &[Bytes]) -> Result<Self, PipeError> {
        match frames {
            [] => Err(PipeError::Empty),
            [payload] => Ok(Job::Plain(payload.clone())),
            [kind, rest @ ..] if kind[..] == *JOB => match rest {
                [job_id, timeout, payload] => Ok(Job::Framed {
                    id: id("job id", job_id)?,
                    timeout_ms: number("timeout", timeout, u64::from(u32::MAX))?,
                    payload: payload.clone(),
                }),
                _ => Err(count("s0job", "4", frames.len())),
            },
            [kind, timeout, hold, keep, jobs @ ..] if kind[..] == *JOBS => {
                if jobs.is_empty() || jobs.len() % 2 != 0 || jobs.len() > 2 * MAX_BATCH_JOBS {
                    return Err(count(
                        "s0jobs",
                        "4 + 2 per job (1 to 1024 jobs)",
                        frames.len(),
                    ));
                }
                Ok(Job::Batch(Batch {
                    timeout_ms: number("timeout", timeout, u64::from(u32::MAX))?,
                    hold_ms: number("hold", hold, u64::from(u32::MAX))?,
                    keep: u32::try_from(number("keep", keep, u64::from(MAX_CAPACITY))?)
                        .unwrap_or(MAX_CAPACITY),
                    jobs: jobs
                        .chunks_exact(2)
                        .map(|p| Ok((id("job id", &p[0])?, p[1].clone())))
                        .collect::<Result<_, _>>()?,
                }))
            }
            [kind, ..] if kind[..] == *JOBS => Err(count("s0jobs", "at least 6", frames.len())),
            [kind, ..] => Err(PipeError::UnknownKind(
                String::from_utf8_lossy(&kind[..kind.len().min(32)]).into_owned(),
            )),
        }
    }

    /// The frames of this job.
    pub fn encode(&self) -> Frames {
        match self {
            Job::Framed {
                id,
                timeout_ms,
                payload,
            } => vec![
                Bytes::from_static(JOB),
                id.clone(),
                ascii(*timeout_ms),
                payload.clone(),
            ],
            Job::Plain(payload) => vec![payload.clone()],
            Job::Batch(b) => {
                let mut f = Vec::with_capacity(3 + 2 * b.jobs.len());
                f.extend([
                    Bytes::from_static(JOBS),
                    ascii(b.timeout_ms),
                    ascii(b.hold_ms),
                    ascii(u64::from(b.keep)),
                ]);
                for (id, payload) in &b.jobs {
                    f.extend([id.clone(), payload.clone()]);
                }
                f
            }
        }
    }
}

/// How a job ended on a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// It succeeded; the output is its result.
    Ok,
    /// It failed (a command's non-zero exit); the output says why.
    Failed,
    /// The worker stopped it at its timeout.
    Timeout,
    /// It could not even start (no such program, arguments too long, a NUL in one):
    /// running it again cannot help, so the map does not.
    Unrunnable,
}

impl Status {
    /// The status frame.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Unrunnable => "unrunnable",
        }
    }

    /// Reads a status frame.
    pub fn parse(frame: &[u8]) -> Result<Self, PipeError> {
        match frame {
            b"ok" => Ok(Status::Ok),
            b"failed" => Ok(Status::Failed),
            b"timeout" => Ok(Status::Timeout),
            b"unrunnable" => Ok(Status::Unrunnable),
            other => Err(PipeError::BadStatus(
                String::from_utf8_lossy(&other[..other.len().min(32)]).into_owned(),
            )),
        }
    }
}

/// What a worker sends to a sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// `[s0alive, worker, capacity, interval_ms, running ids...]`: a heartbeat, sent first
    /// as a hello and then every interval, listing the framed jobs the worker is running.
    Alive {
        /// The worker's name, unique among workers.
        worker: Bytes,
        /// Jobs it runs at once.
        capacity: u32,
        /// How often it sends this.
        interval_ms: u64,
        /// Ids of the jobs it is running now.
        running: Vec<Bytes>,
        /// It reads batches of jobs (protocol 2): [`BATCHES`] leads the running ids.
        batches: bool,
    },
    /// `[s0start, worker, id]`: the worker started a job (its timeout runs from now).
    Start {
        /// The worker's name.
        worker: Bytes,
        /// The job's id.
        id: Bytes,
    },
    /// `[s0res, worker, id, status, output]`: how a framed job ended.
    Result {
        /// The worker's name.
        worker: Bytes,
        /// The job's id.
        id: Bytes,
        /// How it ended.
        status: Status,
        /// Its output, or why it failed.
        output: Bytes,
    },
    /// `[s0bye, worker]`: the worker leaves; it takes no more jobs.
    Bye {
        /// The worker's name.
        worker: Bytes,
    },
    /// A one-frame result (a plain job's, or the Guide's worker's).
    Plain(Bytes),
    /// `[s0rep, worker, busy_us, n_started, n_returned, started..., returned...,
    /// (id, status, output)...]`: what became of jobs that came in batches since the
    /// worker's last report.
    Batch(BatchReport),
}

/// A worker's batched report (protocol 2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// The worker's name.
    pub worker: Bytes,
    /// Time its slots spent running the jobs of `ended`, in microseconds: the map's
    /// measure of how long jobs take.
    pub busy_us: u64,
    /// Jobs started and not ended by the time of the report (their timeouts run from
    /// now). A job that ended since the last report is only in `ended`.
    pub started: Vec<Bytes>,
    /// Jobs handed back unstarted, after waiting their batch's `hold_ms` behind others.
    pub returned: Vec<Bytes>,
    /// Jobs that ended, in the order they did.
    pub ended: Vec<JobEnd>,
}

/// How one job of a batch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEnd {
    /// The job's id.
    pub id: Bytes,
    /// How it ended.
    pub status: Status,
    /// Its output, or why it failed.
    pub output: Bytes,
}

impl BatchReport {
    /// Whether it says nothing.
    pub fn is_empty(&self) -> bool {
        self.started.is_empty() && self.returned.is_empty() && self.ended.is_empty()
    }

    /// Jobs it mentions.
    pub fn len(&self) -> usize {
        self.started.len() + self.returned.len() + self.ended.len()
    }

    fn decode(rest: &[Bytes], got: usize) -> Result<Self, PipeError> {
        let [worker, busy, n_started, n_returned, lists @ ..] = rest else {
            return Err(count("s0rep", "at least 5", got));
        };
        let max = MAX_BATCH_JOBS as u64;
        let n_started = usize::try_from(number("started count", n_started, max)?).unwrap_or(0);
        let n_returned = usize::try_from(number("returned count", n_returned, max)?).unwrap_or(0);
        let ids = n_started + n_returned;
        let results = lists.len().checked_sub(ids).filter(|r| r % 3 == 0);
        let Some(results) = results.filter(|r| r / 3 <= MAX_BATCH_JOBS) else {
            return Err(count("s0rep", "5 + the counted ids + 3 per result", got));
        };
        let ids_of = |field, frames: &[Bytes]| {
            frames
                .iter()
                .map(|f| id(field, f))
                .collect::<Result<Vec<_>, _>>()
        };
        let report = BatchReport {
            worker: id("worker", worker)?,
            busy_us: number("busy", busy, u64::MAX)?,
            started: ids_of("started job id", &lists[..n_started])?,
            returned: ids_of("returned job id", &lists[n_started..ids])?,
            ended: lists[ids..]
                .chunks_exact(3)
                .map(|e| {
                    Ok(JobEnd {
                        id: id("job id", &e[0])?,
                        status: Status::parse(&e[1])?,
                        output: e[2].clone(),
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        debug_assert_eq!(report.ended.len(), results / 3);
        if report.is_empty() {
            return Err(count("s0rep", "at least one entry", got));
        }
        Ok(report)
    }

    fn encode(&self) -> Frames {
        let mut f =
            Vec::with_capacity(5 + self.started.len() + self.returned.len() + 3 * self.ended.len());
        f.extend([
            Bytes::from_static(REPORT),
            self.worker.clone(),
            ascii(self.busy_us),
            ascii(self.started.len() as u64),
            ascii(self.returned.len() as u64),
        ]);
        f.extend(self.started.iter().cloned());
        f.extend(self.returned.iter().cloned());
        for e in &self.ended {
            f.extend([
                e.id.clone(),
                Bytes::from_static(e.status.label().as_bytes()),
                e.output.clone(),
            ]);
        }
        f
    }
}

impl Report {
    /// Reads a report message.
    pub fn decode(frames: &[Bytes]) -> Result<Self, PipeError> {
        let [kind, rest @ ..] = frames else {
            return Err(PipeError::Empty);
        };
        if rest.is_empty() {
            return Ok(Report::Plain(kind.clone()));
        }
        match &kind[..] {
            k if k == ALIVE => match rest {
                [worker, capacity, interval, running @ ..] => {
                    let capacity = number("capacity", capacity, u64::from(MAX_CAPACITY))?;
                    let interval_ms = number("interval", interval, MAX_INTERVAL_MS)?;
                    if capacity == 0 || interval_ms == 0 {
                        return Err(PipeError::BadNumber {
                            field: "capacity or interval",
                            value: "0".into(),
                        });
                    }
                    let (batches, running) = match running {
                        [first, rest @ ..] if first[..] == *BATCHES => (true, rest),
                        all => (false, all),
                    };
                    Ok(Report::Alive {
                        worker: id("worker", worker)?,
                        capacity: u32::try_from(capacity).unwrap_or(MAX_CAPACITY),
                        interval_ms,
                        running: running
                            .iter()
                            .map(|r| id("running job id", r))
                            .collect::<Result<_, _>>()?,
                        batches,
                    })
                }
                _ => Err(count("s0alive", "at least 4", frames.len())),
            },
            k if k == START => match rest {
                [worker, job] => Ok(Report::Start {
                    worker: id("worker", worker)?,
                    id: id("job id", job)?,
                }),
                _ => Err(count("s0start", "3", frames.len())),
            },
            k if k == RESULT => match rest {
                [worker, job, status, output] => Ok(Report::Result {
                    worker: id("worker", worker)?,
                    id: id("job id", job)?,
                    status: Status::parse(status)?,
                    output: output.clone(),
                }),
                _ => Err(count("s0res", "5", frames.len())),
            },
            k if k == BYE => match rest {
                [worker] => Ok(Report::Bye {
                    worker: id("worker", worker)?,
                }),
                _ => Err(count("s0bye", "2", frames.len())),
            },
            k if k == REPORT => BatchReport::decode(rest, frames.len()).map(Report::Batch),
            other => Err(PipeError::UnknownKind(
                String::from_utf8_lossy(&other[..other.len().min(32)]).into_owned(),
            )),
        }
    }

    /// The frames of this report.
    pub fn encode(&self) -> Frames {
        match self {
            Report::Alive {
                worker,
                capacity,
                interval_ms,
                running,
                batches,
            } => {
                let mut f = vec![
                    Bytes::from_static(ALIVE),
                    worker.clone(),
                    ascii(u64::from(*capacity)),
                    ascii(*interval_ms),
                ];
                if *batches {
                    f.push(Bytes::from_static(BATCHES));
                }
                f.extend(running.iter().cloned());
                f
            }
            Report::Start { worker, id } => {
                vec![Bytes::from_static(START), worker.clone(), id.clone()]
            }
            Report::Result {
                worker,
                id,
                status,
                output,
            } => vec![
                Bytes::from_static(RESULT),
                worker.clone(),
                id.clone(),
                Bytes::from_static(status.label().as_bytes()),
                output.clone(),
            ],
            Report::Bye { worker } => vec![Bytes::from_static(BYE), worker.clone()],
            Report::Plain(output) => vec![output.clone()],
            Report::Batch(b) => b.encode(),
        }
    }
}

/// Behaviour of the parallel map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapConfig {
    /// Longest a job may run, from its start notice; 0 for no limit. The worker stops it
    /// then; the map gives up on it one heartbeat grace later even if the worker does not.
    pub job_timeout_ms: u64,
    /// Runs of one job at most (1 + retries); then it is reported failed for good.
    pub max_attempts: u32,
    /// Jobs sent to each worker beyond what it runs at once, so it never waits for the
    /// next one; they wait in socket buffers, not on the job's timeout.
    pub prefetch: u32,
    /// Heartbeats a worker may miss before it is presumed dead and its jobs sent again.
    pub liveness: u32,
    /// Longest a job may wait, sent but not started, before it is sent again (a worker
    /// that never starts jobs, such as a plain PULL program, must not hold one forever).
    pub dispatch_timeout_ms: u64,
    /// Emit results in input order (else as they finish).
    pub ordered: bool,
    /// Most jobs in one message to a worker that reads batches; 1 sends every job alone
    /// (protocol 1). At most [`MAX_BATCH_JOBS`].
    pub batch_jobs: u32,
    /// Most payload bytes in one batch (a larger job still goes, alone).
    pub batch_bytes: usize,
    /// Longest a job sent in a batch may wait at a worker unstarted, behind jobs that
    /// run longer than expected, before the worker hands it back to be sent elsewhere;
    /// 0 for never (and then nothing is queued beyond capacity and prefetch). A quarter
    /// of it bounds the work queued beyond capacity and prefetch when jobs are short, by
    /// the run time workers report.
    pub hold_ms: u64,
}

impl Default for MapConfig {
    fn default() -> Self {
        Self {
            job_timeout_ms: 0,
            max_attempts: 3,
            prefetch: 1,
            liveness: 3,
            dispatch_timeout_ms: 60_000,
            ordered: true,
            batch_jobs: 64,
            batch_bytes: 1 << 20,
            hold_ms: 100,
        }
    }
}

/// How a job ended for good.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its first successful result.
    Done(Bytes),
    /// Every attempt failed; the last reason.
    Failed(String),
}

/// One finished job, handed out once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Position of the job in the input, from 0.
    pub index: u64,
    /// The job's input.
    pub input: Bytes,
    /// Runs that ended (failed ones and the last).
    pub attempts: u32,
    /// The worker of the last run, if one was known.
    pub worker: Option<Bytes>,
    /// What became of it.
    pub outcome: Outcome,
}

/// Progress totals of a map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapCounters {
    /// Jobs given to the map.
    pub jobs: u64,
    /// Jobs that succeeded.
    pub done: u64,
    /// Jobs that failed for good.
    pub failed: u64,
    /// Jobs sent again (after a failure, a timeout, a worker's death, a lost buffer).
    pub retried: u64,
    /// Jobs sent to workers (a re-send counts again).
    pub sent: u64,
    /// Results for a job already finished or for a superseded send, dropped.
    pub late_results: u64,
    /// Reports that could not be read, dropped.
    pub malformed: u64,
    /// Workers presumed dead after missing heartbeats.
    pub workers_lost: u64,
    /// Jobs a worker handed back unstarted after their hold; sent again, no attempt used.
    pub returned: u64,
    /// Messages of several jobs sent.
    pub batches: u64,
}

#[derive(Debug)]
enum Phase {
    /// In the queue, not sent.
    Queued,
    /// Sent with `key`, no start notice yet; `batched` if in a batch.
    Sent {
        key: Bytes,
        at: Instant,
        batched: bool,
    },
    /// Started on `worker` with `key`.
    Started {
        key: Bytes,
        worker: Bytes,
        at: Instant,
    },
}

#[derive(Debug)]
struct JobState {
    payload: Bytes,
    /// Sends so far, numbering the keys so a superseded send's report is recognised.
    sends: u32,
    /// Runs that ended without success.
    failures: u32,
    last_worker: Option<Bytes>,
    phase: Phase,
}

#[derive(Debug)]
struct WorkerState {
    capacity: u32,
    interval_ms: u64,
    last_seen: Instant,
    /// Keys the map believes this worker is running.
    started: HashSet<Bytes>,
    /// It announced that it reads batches.
    batches: bool,
}

/// Jobs handed to the driver to send on the jobs socket, as one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// Positions of the jobs in the input (one, unless a batch).
    pub indices: Vec<u64>,
    /// The message.
    pub frames: Frames,
}

/// Of `hold_ms`, the share of expected work queued at a worker beyond its capacity and
/// prefetch: a job waits behind at most this much expected work.
const QUEUE_SHARE_OF_HOLD: u64 = 4;

/// After a worker hands jobs back, this many holds pass with nothing queued beyond
/// capacity and prefetch: jobs turned out slower than measured.
const SHALLOW_HOLDS: u32 = 4;

/// How long after a jobs connection closes the map still doubts the jobs it sent: libzmq
/// may route a send into the closing connection until the socket has taken in its end.
const SETTLE_MS: u64 = 50;

/// What the map waits for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Timer {
    /// A worker's silence; checked against its last message when it comes round.
    Worker(Bytes),
    /// A sent job's start, or a started job's timeout.
    Job(u64),
    /// The end of the doubt after a connection closed.
    Settle,
}

/// The parallel map: jobs in, dispatches out, reports in, finished jobs out.
#[derive(Debug)]
pub struct Map {
    config: MapConfig,
    /// Tells this run's keys from any earlier run's on the same workers.
    run: u64,
    jobs: HashMap<u64, JobState>,
    queue: VecDeque<u64>,
    /// Jobs sent or started.
    flight: BTreeSet<u64>,
    timers: Timers<Timer>,
    /// When the latest jobs connection closed, while that is in doubt.
    closed_at: Option<Instant>,
    /// When the number of jobs connections last changed: a batch goes only once as many
    /// workers that read batches have spoken since as there are connections.
    changed_at: Instant,
    /// When the latest jobs connection opened: a batch sent just before may have gone
    /// to it, and be lost on it if its worker turns out not to read batches.
    opened_at: Option<Instant>,
    /// Run time reported by workers and the jobs it covers, both decayed by an eighth
    /// per report: their ratio is the mean run time of recent jobs.
    busy_us: u64,
    busy_jobs: u64,
    /// Until then nothing is queued beyond capacity and prefetch (jobs were handed back).
    shallow_until: Option<Instant>,
    /// Sent, not started.
    unstarted: usize,
    /// Sent or started.
    in_flight: usize,
    workers: HashMap<Bytes, WorkerState>,
    /// Connections on the jobs socket (from the driver's socket monitor).
    connections: usize,
    /// Workers presumed dead whose connection may still be open: not strangers.
    zombies: usize,
    /// Names of workers presumed dead, so one that speaks again is no longer a zombie.
    presumed_dead: HashSet<Bytes>,
    next_index: u64,
    input_closed: bool,
    finished: BTreeMap<u64, Finished>,
    next_emit: u64,
    counters: MapCounters,
}

impl Map {
    /// A map whose job keys start with `run` (a random number, different per run).
    pub fn new(config: MapConfig, run: u64) -> Self {
        Self {
            config,
            run,
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            flight: BTreeSet::new(),
            timers: Timers::default(),
            closed_at: None,
            opened_at: None,
            changed_at: Instant::ZERO,
            busy_us: 0,
            busy_jobs: 0,
            shallow_until: None,
            unstarted: 0,
            in_flight: 0,
            workers: HashMap::new(),
            connections: 0,
            zombies: 0,
            presumed_dead: HashSet::new(),
            next_index: 0,
            input_closed: false,
            finished: BTreeMap::new(),
            next_emit: 0,
            counters: MapCounters::default(),
        }
    }

    /// Adds a job; returns its index.
    pub fn push_job(&mut self, payload: Bytes) -> u64 {
        let index = self.next_index;
        self.next_index += 1;
        self.counters.jobs += 1;
        self.jobs.insert(
            index,
            JobState {
                payload,
                sends: 0,
                failures: 0,
                last_worker: None,
                phase: Phase::Queued,
            },
        );
        self.queue.push_back(index);
        index
    }

    /// No more jobs will be pushed.
    pub fn close_input(&mut self) {
        self.input_closed = true;
    }

    /// Jobs waiting to be sent; the driver reads more input while this is small.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// True when every job pushed has been finished and handed out, and input is closed.
    pub fn is_done(&self) -> bool {
        self.input_closed && self.jobs.is_empty() && self.finished.is_empty()
    }

    /// Totals so far.
    pub fn counters(&self) -> &MapCounters {
        &self.counters
    }

    /// Workers alive now, and the jobs they run at once in all.
    pub fn workers(&self) -> (usize, u64) {
        let capacity = self.workers.values().map(|w| u64::from(w.capacity)).sum();
        (self.workers.len(), capacity)
    }

    /// Jobs sent and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The driver's count of connections on the jobs socket. A connection whose worker
    /// has not said hello yet gets one job, which makes it say hello; a lost connection
    /// may have taken jobs with it, so those not started are sent again.
    pub fn set_connections(&mut self, now: Instant, connections: usize) {
        if connections < self.connections {
            let closed = self.connections - connections;
            self.zombies = self.zombies.saturating_sub(closed);
            if self.zombies == 0 {
                self.presumed_dead.clear();
            }
            self.resend_unstarted(now, |_, _| true, "a connection closed");
            // Jobs sent from now until the socket has seen the close may go the same way.
            self.closed_at = Some(now);
            self.timers
                .set(Timer::Settle, now + Duration::from_millis(SETTLE_MS));
        } else if connections > self.connections {
            self.opened_at = Some(now);
        }
        if connections != self.connections {
            self.changed_at = now;
        }
        self.connections = connections;
    }

    /// Whether batches may be sent: PUSH picks the connection, so only while every
    /// connection belongs to a live worker that announced it reads them. A worker that
    /// died lingers in the table until its silence is noticed, so a connection is only
    /// taken for a batch reader's once as many of them have spoken since the last change
    /// of connections as there are connections (a worker presumed dead, whose connection
    /// may still be open, is not among them).
    fn batching(&self) -> bool {
        if self.config.batch_jobs <= 1 || self.connections == 0 {
            return false;
        }
        let mut heard = 0;
        for w in self.workers.values() {
            if !w.batches {
                return false;
            }
            heard += usize::from(w.last_seen >= self.changed_at);
        }
        heard >= self.connections
    }

    /// Jobs queued at the workers beyond their capacity and prefetch, in all: a batch
    /// each at most, and no more than the smallest capacity runs in a quarter of the
    /// hold by the run time workers report (none before they do). Round robin can leave
    /// all of them at the slowest worker; this bounds their wait even there.
    fn depth(&self) -> u64 {
        if self.busy_jobs == 0 || self.config.hold_ms == 0 {
            return 0;
        }
        let mean_us = (self.busy_us / self.busy_jobs).max(1);
        let queue_us = self.config.hold_ms.saturating_mul(1000) / QUEUE_SHARE_OF_HOLD;
        let smallest = self.workers.values().map(|w| w.capacity).min().unwrap_or(0);
        let batches = u64::from(self.config.batch_jobs).saturating_mul(self.workers.len() as u64);
        (u64::from(smallest).saturating_mul(queue_us) / mean_us).min(batches)
    }

    fn credit(&self, now: Instant, batching: bool) -> usize {
        let deep = batching && self.shallow_until.is_none_or(|t| now >= t);
        let extra = if deep { self.depth() } else { 0 };
        let known: u64 = self
            .workers
            .values()
            .map(|w| u64::from(w.capacity) + u64::from(self.config.prefetch))
            .sum::<u64>()
            .saturating_add(extra);
        let strangers = self
            .connections
            .saturating_sub(self.workers.len() + self.zombies);
        let credit = usize::try_from(known)
            .unwrap_or(usize::MAX)
            .saturating_add(strangers);
        // Whatever the accounting says, a connected peer always gets a job to try: the
        // dispatch timeout takes it back if it never starts.
        if self.connections > 0 {
            credit.max(1)
        } else {
            credit
        }
    }

    fn key(&self, index: u64, send: u32) -> Bytes {
        Bytes::from(format!("{:016x}.{index}.{send}", self.run))
    }

    fn parse_key(&self, key: &[u8]) -> Option<(u64, u32)> {
        let text = std::str::from_utf8(key).ok()?;
        let mut parts = text.split('.');
        let run = u64::from_str_radix(parts.next()?, 16).ok()?;
        let index = parts.next()?.parse().ok()?;
        let send = parts.next()?.parse().ok()?;
        (run == self.run && parts.next().is_none()).then_some((index, send))
    }

    /// The next message to send, if credit allows: one job, or a batch of several when
    /// every connected worker reads batches. The driver sends it or gives it back with
    /// [`Map::undo_dispatch`].
    pub fn poll_dispatch(&mut self, now: Instant) -> Option<Dispatch> {
        let batching = self.batching();
        let credit = self.credit(now, batching);
        if self.in_flight >= credit || self.queue.is_empty() {
            return None;
        }
        let timeout_ms = self.config.job_timeout_ms;
        if !batching {
            let index = self.queue.pop_front()?;
            let (id, payload) = self.send_one(now, index, false)?;
            let frames = Job::Framed {
                id,
                timeout_ms,
                payload,
            }
            .encode();
            return Some(Dispatch {
                indices: vec![index],
                frames,
            });
        }
        // Shared among the connections, so that round robin keeps them about even.
        let share = credit.div_ceil(self.connections.max(1));
        let most = (credit - self.in_flight)
            .min(share)
            .min(self.config.batch_jobs as usize);
        let mut indices = Vec::with_capacity(most);
        let mut jobs = Vec::with_capacity(most);
        let mut bytes = 0usize;
        while indices.len() < most {
            let Some(&index) = self.queue.front() else {
                break;
            };
            let size = self.jobs.get(&index).map_or(0, |j| j.payload.len());
            if !indices.is_empty() && bytes.saturating_add(size) > self.config.batch_bytes {
                break;
            }
            self.queue.pop_front();
            bytes = bytes.saturating_add(size);
            if let Some(job) = self.send_one(now, index, true) {
                indices.push(index);
                jobs.push(job);
            }
        }
        if jobs.is_empty() {
            return None;
        }
        self.counters.batches += 1;
        let frames = Job::Batch(Batch {
            timeout_ms,
            hold_ms: self.config.hold_ms,
            keep: self.config.prefetch,
            jobs,
        })
        .encode();
        Some(Dispatch { indices, frames })
    }

    /// Marks queued job `index` sent; its key and payload.
    fn send_one(&mut self, now: Instant, index: u64, batched: bool) -> Option<(Bytes, Bytes)> {
        let key = {
            let job = self.jobs.get(&index)?;
            self.key(index, job.sends + 1)
        };
        let job = self.jobs.get_mut(&index)?;
        job.sends += 1;
        job.phase = Phase::Sent {
            key: key.clone(),
            at: now,
            batched,
        };
        let payload = job.payload.clone();
        self.unstarted += 1;
        self.in_flight += 1;
        self.flight.insert(index);
        self.timers.set(
            Timer::Job(index),
            now + Duration::from_millis(self.config.dispatch_timeout_ms),
        );
        self.counters.sent += 1;
        Some((key, payload))
    }

    /// The socket could not take a dispatched message: its jobs go back to the head of
    /// the queue, in order.
    pub fn undo_dispatch(&mut self, dispatch: &Dispatch) {
        if dispatch.frames.first().is_some_and(|k| k[..] == *JOBS) {
            self.counters.batches = self.counters.batches.saturating_sub(1);
        }
        for &index in dispatch.indices.iter().rev() {
            self.undo_one(index);
        }
    }

    fn undo_one(&mut self, index: u64) {
        if let Some(job) = self.jobs.get_mut(&index)
            && matches!(job.phase, Phase::Sent { .. })
        {
            job.phase = Phase::Queued;
            job.sends = job.sends.saturating_sub(1);
            self.unstarted -= 1;
            self.in_flight -= 1;
            self.flight.remove(&index);
            self.timers.cancel(&Timer::Job(index));
            self.counters.sent = self.counters.sent.saturating_sub(1);
            self.queue.push_front(index);
        }
    }

    /// Takes in one message from the sink socket.
    pub fn handle_report(&mut self, now: Instant, frames: Frames) {
        let report = match Report::decode(&frames) {
            Ok(r) => r,
            Err(e) => {
                self.counters.malformed += 1;
                debug!(error = %e, "malformed report dropped");
                return;
            }
        };
        match report {
            Report::Alive {
                worker,
                capacity,
                interval_ms,
                running,
                batches,
            } => self.alive(now, worker, capacity, interval_ms, &running, batches),
            Report::Start { worker, id } => self.start(now, worker, &id),
            Report::Result {
                worker,
                id,
                status,
                output,
            } => self.result(now, &worker, &id, status, output),
            Report::Batch(report) => self.batch_report(now, report),
            Report::Bye { worker } => {
                if let Some(w) = self.workers.remove(&worker) {
                    info!(worker = %String::from_utf8_lossy(&worker), "worker left");
                    self.orphan(now, w, "its worker left");
                }
                self.resend_unstarted(now, |_, _| true, "a worker left");
            }
            Report::Plain(_) => {
                self.counters.malformed += 1;
                debug!("a one-frame result on the map's sink: no job id, dropped");
            }
        }
    }

    /// A worker's batched report: its entries in the order the worker made them
    /// (starts, then hand-backs, then ends).
    fn batch_report(&mut self, now: Instant, report: BatchReport) {
        let BatchReport {
            worker,
            busy_us,
            started,
            returned,
            ended,
        } = report;
        match self.workers.get_mut(&worker) {
            Some(w) => w.last_seen = now,
            // Its hello was lost or it was presumed dead: known again from now, with the
            // capacity it announces in its next heartbeat.
            None => self.touch(now, &worker, 1, 1000, true),
        }
        if !ended.is_empty() {
            self.busy_us = (self.busy_us - self.busy_us / 8).saturating_add(busy_us);
            self.busy_jobs = (self.busy_jobs - self.busy_jobs / 8) + ended.len() as u64;
        }
        for id in started {
            self.start(now, worker.clone(), &id);
        }
        let mut back: Vec<u64> = returned
            .iter()
            .filter_map(|key| self.parse_key(key).map(|(index, send)| (index, send, key)))
            .filter(|(index, send, key)| {
                self.jobs.get(index).is_some_and(|j| {
                    j.sends == *send && matches!(&j.phase, Phase::Sent { key: k, .. } if k == *key)
                })
            })
            .map(|(index, _, _)| index)
            .collect();
        if !back.is_empty() {
            debug!(jobs = back.len(), "jobs handed back unstarted");
            // Jobs run longer than measured: queue nothing beyond capacity for a while.
            let pause = self.config.hold_ms.saturating_mul(u64::from(SHALLOW_HOLDS));
            self.shallow_until = Some(now + Duration::from_millis(pause));
            back.sort_unstable();
            back.dedup();
            for &index in back.iter().rev() {
                self.leave_flight(index);
                self.counters.returned += 1;
                self.queue.push_front(index);
            }
        }
        for end in ended {
            self.result(now, &worker, &end.id, end.status, end.output);
        }
    }

    fn touch(
        &mut self,
        now: Instant,
        worker: &Bytes,
        capacity: u32,
        interval_ms: u64,
        batches: bool,
    ) {
        if !self.workers.contains_key(worker) && self.presumed_dead.remove(worker) {
            self.zombies = self.zombies.saturating_sub(1);
        }
        let liveness = u64::from(self.config.liveness.max(1));
        let joined = !self.workers.contains_key(worker);
        let w = self.workers.entry(worker.clone()).or_insert_with(|| {
            info!(worker = %String::from_utf8_lossy(worker), capacity, batches, "worker joined");
            WorkerState {
                capacity,
                interval_ms,
                last_seen: now,
                started: HashSet::new(),
                batches,
            }
        });
        w.capacity = capacity;
        w.interval_ms = interval_ms;
        w.last_seen = now;
        w.batches = batches;
        // No later than its deadline: a shorter interval brings it forward, and a later
        // deadline is found when this one comes round.
        let deadline = w.last_seen + Duration::from_millis(w.interval_ms * liveness);
        self.timers.set_by(Timer::Worker(worker.clone()), deadline);
        if joined && !batches {
            self.batch_may_be_lost(now);
        }
    }

    /// A worker that does not read batches joined: a batch sent just before its
    /// connection was counted may have gone to it and been dropped there. Its jobs, if
    /// still unstarted, are sent again (no attempt used).
    fn batch_may_be_lost(&mut self, now: Instant) {
        let Some(opened) = self.opened_at else {
            return;
        };
        if now.saturating_since(opened) > Duration::from_millis(self.config.dispatch_timeout_ms) {
            return;
        }
        let from = Instant::from_millis(opened.as_millis().saturating_sub(SETTLE_MS));
        self.opened_at = None;
        self.resend_unstarted(
            now,
            |at, batched| batched && at >= from && at <= opened,
            "a batch may have gone to a worker that cannot read it",
        );
    }

    fn alive(
        &mut self,
        now: Instant,
        worker: Bytes,
        capacity: u32,
        interval_ms: u64,
        running: &[Bytes],
        batches: bool,
    ) {
        self.touch(now, &worker, capacity, interval_ms, batches);
        // Reports travel in order on one connection: a started job this heartbeat no
        // longer lists, with no result before it, had its result lost on the way.
        let running: HashSet<&Bytes> = running.iter().collect();
        let lost: Vec<Bytes> = self
            .workers
            .get(&worker)
            .map(|w| {
                w.started
                    .iter()
                    .filter(|k| !running.contains(k))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for key in lost {
            if let Some((index, _)) = self.parse_key(&key) {
                self.attempt_failed(now, index, &key, "its result was lost".into());
            }
        }
    }

    fn start(&mut self, now: Instant, worker: Bytes, key: &[u8]) {
        let Some((index, send)) = self.parse_key(key) else {
            self.counters.late_results += 1;
            return;
        };
        let Some(job) = self.jobs.get_mut(&index) else {
            return;
        };
        if job.sends != send || !matches!(job.phase, Phase::Sent { .. }) {
            // A superseded send starting late: its result, if ok, still counts.
            return;
        }
        let key = Bytes::copy_from_slice(key);
        job.phase = Phase::Started {
            key: key.clone(),
            worker: worker.clone(),
            at: now,
        };
        job.last_worker = Some(worker.clone());
        self.unstarted -= 1;
        let deadline = self.jobs.get(&index).and_then(|j| self.job_deadline(j));
        match deadline {
            Some(at) => self.timers.set(Timer::Job(index), at),
            None => self.timers.cancel(&Timer::Job(index)),
        }
        match self.workers.get_mut(&worker) {
            Some(w) => {
                w.started.insert(key);
                w.last_seen = now;
            }
            None => {
                // Its hello was lost or it was presumed dead: known again from now, with
                // the capacity it announces in its next heartbeat.
                self.touch(now, &worker, 1, 1000, false);
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.started.insert(key);
                }
            }
        }
    }

    fn result(&mut self, now: Instant, worker: &Bytes, key: &[u8], status: Status, output: Bytes) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.started.remove(key);
            w.last_seen = now;
        }
        let Some((index, send)) = self.parse_key(key) else {
            self.counters.late_results += 1;
            return;
        };
        let Some(job) = self.jobs.get(&index) else {
            self.counters.late_results += 1;
            return;
        };
        let current = job.sends == send;
        match status {
            Status::Ok => {
                self.leave_flight(index);
                if let Some(job) = self.jobs.get_mut(&index) {
                    job.last_worker = Some(worker.clone());
                }
                self.finish(index, Outcome::Done(output));
            }
            Status::Failed | Status::Timeout if current => {
                let why = if status == Status::Timeout {
                    format!("timed out after {} ms", self.config.job_timeout_ms)
                } else {
                    String::from_utf8_lossy(&output).trim_end().to_string()
                };
                self.attempt_failed(now, index, key, why);
            }
            Status::Unrunnable if current => {
                self.leave_flight(index);
                if let Some(job) = self.jobs.get_mut(&index) {
                    job.failures += 1;
                }
                let why = String::from_utf8_lossy(&output).trim_end().to_string();
                self.finish(index, Outcome::Failed(why));
            }
            // A failure of a superseded send: the current one may still succeed.
            Status::Failed | Status::Timeout | Status::Unrunnable => {
                self.counters.late_results += 1;
            }
        }
    }

    /// Takes a job out of the in-flight counts (whatever its phase) and out of the
    /// started set of its worker.
    fn leave_flight(&mut self, index: u64) {
        let Some(job) = self.jobs.get_mut(&index) else {
            return;
        };
        self.flight.remove(&index);
        self.timers.cancel(&Timer::Job(index));
        match std::mem::replace(&mut job.phase, Phase::Queued) {
            Phase::Queued => {
                self.queue.retain(|i| *i != index);
            }
            Phase::Sent { .. } => {
                self.unstarted -= 1;
                self.in_flight -= 1;
            }
            Phase::Started { key, worker, .. } => {
                self.in_flight -= 1;
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.started.remove(&key);
                }
            }
        }
    }

    /// The run `key` of job `index` ended without success.
    fn attempt_failed(&mut self, _now: Instant, index: u64, key: &[u8], why: String) {
        let Some(job) = self.jobs.get(&index) else {
            return;
        };
        let is_current = match &job.phase {
            Phase::Started { key: k, .. } | Phase::Sent { key: k, .. } => k[..] == *key,
            Phase::Queued => false,
        };
        if !is_current {
            return;
        }
        self.leave_flight(index);
        let Some(job) = self.jobs.get_mut(&index) else {
            return;
        };
        job.failures += 1;
        if job.failures >= self.config.max_attempts {
            self.finish(index, Outcome::Failed(why));
        } else {
            debug!(index, why, "job sent again");
            self.counters.retried += 1;
            self.queue.push_front(index);
        }
    }

    fn finish(&mut self, index: u64, outcome: Outcome) {
        let Some(job) = self.jobs.remove(&index) else {
            return;
        };
        self.flight.remove(&index);
        self.timers.cancel(&Timer::Job(index));
        match outcome {
            Outcome::Done(_) => self.counters.done += 1,
            Outcome::Failed(_) => self.counters.failed += 1,
        }
        let attempts = job.failures + u32::from(matches!(outcome, Outcome::Done(_)));
        self.finished.insert(
            index,
            Finished {
                index,
                input: job.payload,
                attempts,
                worker: job.last_worker,
                outcome,
            },
        );
    }

    /// Sent jobs not started yet, those whose send (time, whether batched) `suspect`
    /// picks, may be in a buffer that went away: send them again.
    fn resend_unstarted(
        &mut self,
        now: Instant,
        suspect: impl Fn(Instant, bool) -> bool,
        why: &str,
    ) {
        let mut sent: Vec<u64> = self
            .flight
            .iter()
            .filter(|i| {
                self.jobs.get(i).is_some_and(|j| {
                    matches!(j.phase, Phase::Sent { at, batched, .. } if at <= now && suspect(at, batched))
                })
            })
            .copied()
            .collect();
        if !sent.is_empty() {
            debug!(jobs = sent.len(), why, "unstarted jobs sent again");
        }
        sent.sort_unstable();
        for index in sent.into_iter().rev() {
            self.leave_flight(index);
            self.counters.retried += 1;
            self.queue.push_front(index);
        }
    }

    /// A worker gone: its started jobs failed this attempt.
    fn orphan(&mut self, now: Instant, worker: WorkerState, why: &str) {
        for key in worker.started {
            if let Some((index, _)) = self.parse_key(&key) {
                self.attempt_failed(now, index, &key, why.to_string());
            }
        }
    }

    fn worker_deadline(&self, w: &WorkerState) -> Instant {
        w.last_seen + Duration::from_millis(w.interval_ms * u64::from(self.config.liveness.max(1)))
    }

    fn job_deadline(&self, job: &JobState) -> Option<Instant> {
        match &job.phase {
            Phase::Queued => None,
            Phase::Sent { at, .. } => {
                Some(*at + Duration::from_millis(self.config.dispatch_timeout_ms))
            }
            Phase::Started { at, worker, .. } if self.config.job_timeout_ms > 0 => {
                // The worker stops the job at its timeout and reports it; the grace covers
                // that report's way back.
                let grace = self.workers.get(worker).map_or(1000, |w| w.interval_ms * 2);
                Some(*at + Duration::from_millis(self.config.job_timeout_ms + grace))
            }
            Phase::Started { .. } => None,
        }
    }

    /// When [`Map::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Expires silent workers and overdue jobs, and ends the doubt after a close.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Worker(name) => self.check_worker(now, name),
                Timer::Job(index) => self.check_job(now, index),
                Timer::Settle => {
                    if let Some(since) = self.closed_at.take() {
                        self.resend_unstarted(
                            now,
                            |at, _| at >= since,
                            "sent as a connection closed",
                        );
                    }
                }
            }
        }
    }

    /// A worker's timer came round: dead if silent for its liveness, else checked again
    /// at its deadline.
    fn check_worker(&mut self, now: Instant, name: Bytes) {
        let Some(deadline) = self.workers.get(&name).map(|w| self.worker_deadline(w)) else {
            return;
        };
        if deadline > now {
            self.timers.set(Timer::Worker(name), deadline);
            return;
        }
        let Some(w) = self.workers.remove(&name) else {
            return;
        };
        info!(worker = %String::from_utf8_lossy(&name), "worker silent: presumed dead");
        self.counters.workers_lost += 1;
        self.zombies += 1;
        // Bounded: cleared when every zombie's connection has closed.
        if self.presumed_dead.len() < 10_000 {
            self.presumed_dead.insert(name);
        }
        self.orphan(now, w, "its worker died");
        self.resend_unstarted(now, |_, _| true, "a worker died");
    }

    /// A job's timer came round: a sent job never started goes back to the queue (no
    /// attempt used: not the job's fault); a started one has failed this attempt.
    fn check_job(&mut self, now: Instant, index: u64) {
        let Some(job) = self.jobs.get(&index) else {
            return;
        };
        match self.job_deadline(job) {
            None => return,
            Some(at) if at > now => {
                self.timers.set(Timer::Job(index), at);
                return;
            }
            Some(_) => {}
        }
        match &job.phase {
            Phase::Sent { .. } => {
                self.leave_flight(index);
                self.counters.retried += 1;
                self.queue.push_front(index);
            }
            Phase::Started { key, .. } => {
                let key = key.clone();
                let why = format!("timed out after {} ms", self.config.job_timeout_ms);
                self.attempt_failed(now, index, &key, why);
            }
            Phase::Queued => {}
        }
    }

    /// The next finished job: in input order when `ordered`, else as they finish.
    pub fn poll_finished(&mut self) -> Option<Finished> {
        if self.config.ordered {
            let next = self.finished.remove(&self.next_emit)?;
            self.next_emit += 1;
            Some(next)
        } else {
            self.finished.pop_first().map(|(_, f)| f)
        }
    }
}

impl fmt::Display for MapCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} jobs, {} ok, {} failed, {} retried",
            self.jobs, self.done, self.failed, self.retried
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn dispatched(map: &mut Map, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| map.poll_dispatch(now))
            .flat_map(|d| d.indices)
            .collect()
    }

    #[test]
    fn a_job_sent_as_a_connection_closes_is_sent_again_once_the_close_has_settled() {
        let mut map = Map::new(MapConfig::default(), 7);
        for n in 0..3 {
            map.push_job(b(&n.to_string()));
        }
        map.close_input();
        map.set_connections(at(0), 2);
        assert_eq!(
            dispatched(&mut map, at(0)),
            vec![0, 1],
            "one job per stranger"
        );
        // One connection closes: what was sent before is sent again at once.
        map.set_connections(at(10), 1);
        assert_eq!(dispatched(&mut map, at(10)), vec![0]);
        // Sent before the socket has taken the close in: it may have gone the same way.
        assert_eq!(map.poll_timeout(), Some(at(10 + SETTLE_MS)));
        map.handle_timeout(at(10 + SETTLE_MS - 1));
        assert!(dispatched(&mut map, at(59)).is_empty());
        map.set_connections(at(20), 2);
        map.handle_timeout(at(10 + SETTLE_MS));
        assert_eq!(dispatched(&mut map, at(60)), vec![0, 1]);
        // A job sent after the doubt is over stays where it went.
        map.set_connections(at(70), 3);
        assert_eq!(dispatched(&mut map, at(70)), vec![2]);
        map.handle_timeout(at(200));
        assert!(dispatched(&mut map, at(200)).is_empty());
        assert_eq!(map.counters().retried, 3);
    }

    #[test]
    fn a_silent_worker_expires_at_its_own_deadline_however_often_it_spoke_before() {
        let config = MapConfig {
            liveness: 3,
            ..MapConfig::default()
        };
        let mut map = Map::new(config, 7);
        map.set_connections(at(0), 1);
        let alive = Report::Alive {
            worker: b("w"),
            capacity: 1,
            interval_ms: 100,
            running: vec![],
            batches: false,
        }
        .encode();
        for ms in [0, 100, 200, 250] {
            map.handle_report(at(ms), alive.clone());
        }
        // Armed at its first deadline (300) and found alive then: moved to 250 + 300.
        map.handle_timeout(at(300));
        assert_eq!(map.workers().0, 1);
        assert_eq!(map.poll_timeout(), Some(at(550)));
        map.handle_timeout(at(549));
        assert_eq!(map.workers().0, 1);
        map.handle_timeout(at(550));
        assert_eq!((map.workers().0, map.counters().workers_lost), (0, 1));
    }

    #[test]
    fn jobs_round_trip_and_plain_frames_are_jobs() {
        let job = Job::Framed {
            id: b("k.1.1"),
            timeout_ms: 250,
            payload: b("x y"),
        };
        assert_eq!(Job::decode(&job.encode()), Ok(job));
        assert_eq!(Job::decode(&[b("42")]), Ok(Job::Plain(b("42"))));
        assert!(matches!(
            Job::decode(&[b("s0job"), b("id"), b("-1"), b("p")]),
            Err(PipeError::BadNumber { .. })
        ));
        assert!(matches!(
            Job::decode(&[b("s0job"), b("id")]),
            Err(PipeError::FrameCount { .. })
        ));
        assert!(matches!(
            Job::decode(&[b("other"), b("x")]),
            Err(PipeError::UnknownKind(_))
        ));
        assert_eq!(Job::decode(&[]), Err(PipeError::Empty));
        let batch = Job::Batch(Batch {
            timeout_ms: 5,
            hold_ms: 100,
            keep: 1,
            jobs: vec![(b("k.1.1"), b("x")), (b("k.2.1"), b(""))],
        });
        assert_eq!(Job::decode(&batch.encode()), Ok(batch));
        for bad in [
            vec![b("s0jobs"), b("0"), b("0"), b("1")],
            vec![b("s0jobs"), b("0"), b("0"), b("1"), b("id")],
            vec![b("s0jobs"), b("x"), b("0"), b("1"), b("id"), b("p")],
            vec![b("s0jobs"), b("0"), b("0"), b("1"), b(""), b("p")],
            vec![b("s0jobs"), b("0"), b("0"), b("99999"), b("id"), b("p")],
        ] {
            assert!(Job::decode(&bad).is_err(), "{bad:?}");
        }
        let mut huge = vec![b("s0jobs"), b("0"), b("0"), b("1")];
        for _ in 0..=MAX_BATCH_JOBS {
            huge.extend([b("id"), b("p")]);
        }
        assert!(matches!(
            Job::decode(&huge),
            Err(PipeError::FrameCount { .. })
        ));
    }

    #[test]
    fn reports_round_trip_and_bad_ones_are_refused() {
        let reports = [
            Report::Alive {
                worker: b("w"),
                capacity: 4,
                interval_ms: 1000,
                running: vec![b("a"), b("b")],
                batches: false,
            },
            Report::Alive {
                worker: b("w"),
                capacity: 2,
                interval_ms: 1000,
                running: vec![b("a")],
                batches: true,
            },
            Report::Batch(BatchReport {
                worker: b("w"),
                busy_us: 12,
                started: vec![b("a")],
                returned: vec![b("b"), b("c")],
                ended: vec![JobEnd {
                    id: b("d"),
                    status: Status::Ok,
                    output: b(""),
                }],
            }),
            Report::Start {
                worker: b("w"),
                id: b("a"),
            },
            Report::Result {
                worker: b("w"),
                id: b("a"),
                status: Status::Timeout,
                output: b(""),
            },
            Report::Bye { worker: b("w") },
            Report::Plain(b("out")),
        ];
        for r in reports {
            assert_eq!(Report::decode(&r.encode()), Ok(r));
        }
        for bad in [
            vec![b("s0alive"), b("w"), b("0"), b("1000")],
            vec![b("s0alive"), b("w"), b("70000"), b("1000")],
            vec![b("s0alive"), b(""), b("1"), b("1000")],
            vec![b("s0res"), b("w"), b("a"), b("maybe"), b("")],
            vec![b("s0start"), b("w")],
            vec![b("s0bye"), b("w"), b("x")],
            // Counts that do not match the frames, an empty report, a bad status.
            vec![b("s0rep"), b("w"), b("0"), b("2"), b("0"), b("a")],
            vec![b("s0rep"), b("w"), b("0"), b("0"), b("0")],
            vec![b("s0rep"), b("w"), b("0"), b("0"), b("0"), b("a"), b("ok")],
            vec![
                b("s0rep"),
                b("w"),
                b("0"),
                b("0"),
                b("0"),
                b("a"),
                b("so-so"),
                b(""),
            ],
            vec![b("s0rep"), b("w"), b("0"), b("99999"), b("0"), b("a")],
        ] {
            assert!(Report::decode(&bad).is_err(), "{bad:?}");
        }
    }
}
