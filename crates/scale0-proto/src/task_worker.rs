//! The pipeline task worker's session (`scale0 work`; `docs/protocol.md`, "Pipelines"):
//! which jobs it holds, its hello, heartbeats, start notices, results and goodbye.
//!
//! The driver pulls a job from source `s` only while [`TaskWorker::has_room`], hands it
//! to [`TaskWorker::handle_job`], runs what [`TaskWorker::poll_run`] gives, reports each
//! end with [`TaskWorker::handle_done`], and pushes every [`Transmit`] to its sink. A
//! one-frame job (the ZeroMQ Guide's ventilator) is answered with a one-frame result and
//! no heartbeats: only a sink that sent framed jobs is known to speak our reports.

use crate::mdp::Frames;
use crate::pipeline::{Job, PipeError, Report, Status};
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tracing::warn;

/// A task worker's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Its name in reports, unique among workers.
    pub name: Bytes,
    /// Jobs run at once.
    pub capacity: u32,
    /// Heartbeats to sinks that sent framed jobs, in milliseconds.
    pub interval_ms: u64,
    /// Limit for one-frame jobs, which carry none, in milliseconds; 0 for no limit.
    pub plain_timeout_ms: u64,
    /// For each source (ventilator or map), the index of its sink; sources that share a
    /// sink share an index.
    pub sink_of: Vec<usize>,
}

impl Config {
    /// The default heartbeat interval.
    pub const DEFAULT_INTERVAL_MS: u64 = 1000;
}

/// A job to run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Handed back to [`TaskWorker::handle_done`].
    pub seq: u64,
    /// Stop it after this long; `None` for no limit.
    pub timeout: Option<Duration>,
    /// Its input.
    pub payload: Bytes,
}

/// A report for a sink: `dest` is the sink's index, as [`Config::sink_of`] gives it.
pub type Transmit = crate::Transmit<usize>;

/// What the worker did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Jobs started.
    pub jobs: u64,
    /// Jobs that succeeded.
    pub ok: u64,
    /// Jobs that failed or could not start.
    pub failed: u64,
    /// Jobs stopped at their timeout.
    pub timed_out: u64,
    /// Messages on a jobs socket that were not jobs.
    pub malformed: u64,
}

struct Held {
    source: usize,
    /// The framed job's id; `None` for a one-frame job.
    id: Option<Bytes>,
}

/// One task worker's jobs and reports.
pub struct TaskWorker {
    config: Config,
    held: HashMap<u64, Held>,
    /// Sources that sent a framed job and so get heartbeats.
    greeted: Vec<bool>,
    /// The next heartbeat, once any source is greeted.
    next_beat: Option<Instant>,
    seq: u64,
    runs: VecDeque<Run>,
    transmits: VecDeque<Transmit>,
    counters: Counters,
    leaving: bool,
}

impl std::fmt::Debug for TaskWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskWorker")
            .field("config", &self.config)
            .field("held", &self.held.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl TaskWorker {
    /// A worker holding nothing.
    pub fn new(config: Config) -> Self {
        let sources = config.sink_of.len();
        Self {
            config,
            held: HashMap::new(),
            greeted: vec![false; sources],
            next_beat: None,
            seq: 0,
            runs: VecDeque::new(),
            transmits: VecDeque::new(),
            counters: Counters::default(),
            leaving: false,
        }
    }

    /// What it did so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Jobs held now, running or about to.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether it may take another job.
    pub fn has_room(&self) -> bool {
        !self.leaving && self.held.len() < self.config.capacity as usize
    }

    /// A message pulled from source `source`. A message that is not a job is counted
    /// and dropped.
    pub fn handle_job(
        &mut self,
        now: Instant,
        source: usize,
        frames: Frames,
    ) -> Result<(), PipeError> {
        let Some(&sink) = self.config.sink_of.get(source) else {
            return Ok(());
        };
        let (id, timeout_ms, payload) = match Job::decode(&frames) {
            Ok(Job::Framed {
                id,
                timeout_ms,
                payload,
            }) => (Some(id), timeout_ms, payload),
            Ok(Job::Plain(payload)) => (None, self.config.plain_timeout_ms, payload),
            Err(e) => {
                self.counters.malformed += 1;
                return Err(e);
            }
        };
        if let Some(id) = &id {
            // Framed jobs mean a scale0 sink: it gets heartbeats from now on.
            if !self.greeted[source] {
                self.greeted[source] = true;
                let hello = self.alive(source);
                self.push(sink, &hello);
                let interval = Duration::from_millis(self.config.interval_ms);
                self.next_beat.get_or_insert(now + interval);
            }
            let start = Report::Start {
                worker: self.config.name.clone(),
                id: id.clone(),
            };
            self.push(sink, &start);
        }
        self.seq += 1;
        self.counters.jobs += 1;
        self.held.insert(self.seq, Held { source, id });
        self.runs.push_back(Run {
            seq: self.seq,
            timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
            payload,
        });
        Ok(())
    }

    /// Job `seq` ended; its sink is told. A one-frame job that failed gets an empty
    /// result, since a plain sink knows no statuses.
    pub fn handle_done(&mut self, seq: u64, status: Status, output: Bytes) {
        let Some(job) = self.held.remove(&seq) else {
            return;
        };
        match status {
            Status::Ok => self.counters.ok += 1,
            Status::Failed | Status::Unrunnable => self.counters.failed += 1,
            Status::Timeout => self.counters.timed_out += 1,
        }
        let report = match job.id {
            Some(id) => Report::Result {
                worker: self.config.name.clone(),
                id,
                status,
                output,
            },
            None if status == Status::Ok => Report::Plain(output),
            None => {
                warn!(
                    status = status.label(),
                    reason = %String::from_utf8_lossy(&output),
                    "a one-frame job failed; its sink gets an empty result"
                );
                Report::Plain(Bytes::new())
            }
        };
        self.push(self.config.sink_of[job.source], &report);
    }

    /// Sends the heartbeats that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_beat.is_none_or(|t| t > now) || self.leaving {
            return;
        }
        self.next_beat = Some(now + Duration::from_millis(self.config.interval_ms));
        for source in 0..self.greeted.len() {
            if self.greeted[source] {
                let beat = self.alive(source);
                self.push(self.config.sink_of[source], &beat);
            }
        }
    }

    /// Says goodbye to every sink it greeted and takes no more jobs. What it holds is
    /// not waited for: the map sends those jobs again elsewhere.
    pub fn leave(&mut self) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        for source in 0..self.greeted.len() {
            if self.greeted[source] {
                let bye = Report::Bye {
                    worker: self.config.name.clone(),
                };
                self.push(self.config.sink_of[source], &bye);
            }
        }
    }

    /// When [`TaskWorker::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.leaving { None } else { self.next_beat }
    }

    /// The next job to run.
    pub fn poll_run(&mut self) -> Option<Run> {
        self.runs.pop_front()
    }

    /// The next report to push.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn alive(&self, source: usize) -> Report {
        Report::Alive {
            worker: self.config.name.clone(),
            capacity: self.config.capacity,
            interval_ms: self.config.interval_ms,
            running: self
                .held
                .values()
                .filter(|j| j.source == source)
                .filter_map(|j| j.id.clone())
                .collect(),
        }
    }

    fn push(&mut self, sink: usize, report: &Report) {
        self.transmits.push_back(Transmit {
            dest: sink,
            frames: report.encode(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn worker(capacity: u32, sink_of: Vec<usize>) -> TaskWorker {
        TaskWorker::new(Config {
            name: Bytes::from_static(b"w1"),
            capacity,
            interval_ms: 100,
            plain_timeout_ms: 0,
            sink_of,
        })
    }

    fn framed(id: &'static [u8], timeout_ms: u64) -> Frames {
        Job::Framed {
            id: Bytes::from_static(id),
            timeout_ms,
            payload: Bytes::from_static(b"in"),
        }
        .encode()
    }

    fn reports(w: &mut TaskWorker) -> Vec<(usize, Report)> {
        std::iter::from_fn(|| w.poll_transmit())
            .map(|t| (t.dest, Report::decode(&t.frames).unwrap()))
            .collect()
    }

    #[test]
    fn a_framed_job_brings_a_hello_a_start_then_its_result() {
        let mut w = worker(2, vec![0]);
        w.handle_job(at(0), 0, framed(b"j1", 50)).unwrap();
        let run = w.poll_run().unwrap();
        assert_eq!(run.timeout, Some(Duration::from_millis(50)));
        let name = Bytes::from_static(b"w1");
        let j1 = Bytes::from_static(b"j1");
        assert_eq!(
            reports(&mut w),
            vec![
                (
                    0,
                    Report::Alive {
                        worker: name.clone(),
                        capacity: 2,
                        interval_ms: 100,
                        running: vec![],
                    }
                ),
                (
                    0,
                    Report::Start {
                        worker: name.clone(),
                        id: j1.clone()
                    }
                )
            ]
        );
        w.handle_done(run.seq, Status::Ok, Bytes::from_static(b"out"));
        assert_eq!(
            reports(&mut w),
            vec![(
                0,
                Report::Result {
                    worker: name,
                    id: j1,
                    status: Status::Ok,
                    output: Bytes::from_static(b"out")
                }
            )]
        );
        assert_eq!(w.counters().ok, 1);
    }

    #[test]
    fn heartbeats_go_every_interval_listing_what_is_held_for_that_source() {
        let mut w = worker(4, vec![0, 1]);
        assert_eq!(w.poll_timeout(), None, "no heartbeats before a framed job");
        w.handle_job(at(10), 1, framed(b"a", 0)).unwrap();
        w.handle_job(at(20), 0, vec![Bytes::from_static(b"plain")])
            .unwrap();
        reports(&mut w);
        assert_eq!(w.poll_timeout(), Some(at(110)));
        w.handle_timeout(at(109));
        assert!(reports(&mut w).is_empty());
        w.handle_timeout(at(110));
        let beats = reports(&mut w);
        assert_eq!(beats.len(), 1, "only the source that sent a framed job");
        assert!(
            matches!(&beats[0], (1, Report::Alive { running, .. }) if running == &vec![Bytes::from_static(b"a")])
        );
        assert_eq!(w.poll_timeout(), Some(at(210)));
    }

    #[test]
    fn capacity_bounds_what_it_takes_and_leaving_says_bye() {
        let mut w = worker(1, vec![0]);
        assert!(w.has_room());
        w.handle_job(at(0), 0, framed(b"a", 0)).unwrap();
        assert!(!w.has_room());
        let seq = w.poll_run().unwrap().seq;
        w.handle_done(seq, Status::Timeout, Bytes::new());
        assert!(w.has_room());
        reports(&mut w);
        w.leave();
        assert!(!w.has_room());
        assert_eq!(
            reports(&mut w),
            vec![(
                0,
                Report::Bye {
                    worker: Bytes::from_static(b"w1")
                }
            )]
        );
        assert_eq!(w.poll_timeout(), None);
        assert_eq!(w.counters().timed_out, 1);
    }

    #[test]
    fn a_failed_plain_job_gets_an_empty_result_and_garbage_is_counted() {
        let mut w = worker(1, vec![0]);
        w.handle_job(at(0), 0, vec![Bytes::from_static(b"p")])
            .unwrap();
        let seq = w.poll_run().unwrap().seq;
        w.handle_done(seq, Status::Failed, Bytes::from_static(b"why"));
        assert_eq!(reports(&mut w), vec![(0, Report::Plain(Bytes::new()))]);
        let junk = [Bytes::from_static(b"x"), Bytes::from_static(b"y")];
        assert!(w.handle_job(at(0), 0, junk.to_vec()).is_err());
        assert!(w.handle_job(at(0), 0, vec![]).is_err());
        assert_eq!(w.counters().malformed, 2);
        assert!(w.poll_run().is_none());
    }
}
