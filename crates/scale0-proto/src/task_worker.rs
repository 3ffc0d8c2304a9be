//! The pipeline task worker's session (`scale0 work`; `docs/protocol.md`, "Pipelines"):
//! which jobs it holds, its hello, heartbeats, start notices, results and goodbye.
//!
//! The driver pulls a message from source `s` only while [`TaskWorker::has_room`] for it,
//! hands it to [`TaskWorker::handle_job`] and queues every [`Run`] that [`TaskWorker::poll_run`]
//! gives for its slots, which take them in order, `capacity` at a time. It reports each
//! start with [`TaskWorker::handle_started`] and each end with
//! [`TaskWorker::handle_done`]; when it has taken in everything that is ready it calls
//! [`TaskWorker::flush`] and pushes every [`Transmit`] to its sink. A job the session
//! wants back ([`TaskWorker::poll_withdraw`]) is taken out of the slots' queue if no slot
//! has begun it, and reported with [`TaskWorker::handle_withdrawn`].
//!
//! Jobs that came one per message (protocol 1) are answered one report per message, as
//! before; jobs that came in a batch (protocol 2) are answered in batched reports, one
//! per sink per flush. A one-frame job (the ZeroMQ Guide's ventilator) is answered with a
//! one-frame result and no heartbeats: only a sink that sent framed jobs is known to
//! speak our reports.

use crate::mdp::Frames;
use crate::pipeline::{BatchReport, Job, JobEnd, MAX_BATCH_JOBS, PipeError, Report, Status};
use crate::time::Instant;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
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
    /// Most jobs one batched report mentions; a fuller one is sent before the flush.
    pub report_jobs: usize,
    /// Most output bytes in one batched report (a larger output still goes, alone).
    pub report_bytes: usize,
}

impl Config {
    /// The default heartbeat interval.
    pub const DEFAULT_INTERVAL_MS: u64 = 1000;
    /// The default for [`Config::report_jobs`].
    pub const DEFAULT_REPORT_JOBS: usize = 256;
    /// The default for [`Config::report_bytes`].
    pub const DEFAULT_REPORT_BYTES: usize = 1 << 20;
}

/// A job to run now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Handed back to [`TaskWorker::handle_done`].
    pub seq: u64,
    /// Stop it after this long from its start; `None` for no limit.
    pub timeout: Option<Duration>,
    /// Its input.
    pub payload: Bytes,
}

/// A report for a sink: `dest` is the sink's index, as [`Config::sink_of`] gives it.
pub type Transmit = crate::Transmit<usize>;

/// What the worker did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Jobs taken.
    pub jobs: u64,
    /// Jobs that succeeded.
    pub ok: u64,
    /// Jobs that failed or could not start.
    pub failed: u64,
    /// Jobs stopped at their timeout.
    pub timed_out: u64,
    /// Jobs handed back unstarted after their hold.
    pub returned: u64,
    /// Messages on a jobs socket that were not jobs.
    pub malformed: u64,
}

struct Held {
    source: usize,
    /// The framed job's id; `None` for a one-frame job.
    id: Option<Bytes>,
    /// It came in a batch: reported in batched reports.
    batched: bool,
    /// When a slot began it.
    started: Option<Instant>,
    /// When it is handed back if still unstarted (batched jobs with a hold).
    hold_until: Option<Instant>,
    /// Unstarted jobs of its source kept whatever their wait (its batch's `keep`).
    keep: u32,
}

/// How a batched job may be handed back.
#[derive(Clone, Copy)]
struct Hold {
    /// Handed back if still unstarted then.
    until: Option<Instant>,
    /// Unless fewer than this many unstarted jobs of its source are ahead of it.
    keep: u32,
}

/// What a sink will be told at the next flush about jobs that came in batches.
#[derive(Default)]
struct Pending {
    report: BatchReport,
    bytes: usize,
}

/// One task worker's jobs and reports.
pub struct TaskWorker {
    config: Config,
    held: HashMap<u64, Held>,
    /// Unstarted batched jobs by hold deadline.
    holds: BTreeSet<(Instant, u64)>,
    /// Jobs the driver is asked to take back from its slots' queue.
    withdraw: VecDeque<u64>,
    /// Sources that sent a framed job and so get heartbeats.
    greeted: Vec<bool>,
    /// Sources that sent a batch: they bound what they send by credit and get unstarted
    /// jobs back after a hold, so their messages are taken even while the slots are busy.
    batch_sources: Vec<bool>,
    /// The next heartbeat, once any source is greeted.
    next_beat: Option<Instant>,
    seq: u64,
    runs: VecDeque<Run>,
    /// Per sink.
    pending: Vec<Pending>,
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
        let sinks = config.sink_of.iter().max().map_or(0, |m| m + 1);
        let mut pending = Vec::new();
        pending.resize_with(sinks, Pending::default);
        for p in &mut pending {
            p.report.worker = config.name.clone();
        }
        Self {
            config,
            held: HashMap::new(),
            holds: BTreeSet::new(),
            withdraw: VecDeque::new(),
            greeted: vec![false; sources],
            batch_sources: vec![false; sources],
            next_beat: None,
            seq: 0,
            runs: VecDeque::new(),
            pending,
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

    /// Whether it may take another message from `source`. From a source that sends
    /// batches it takes them while its slots are busy too (up to [`MAX_BATCH_JOBS`]
    /// beyond its capacity): a job taken has its hold running, and comes back if it
    /// waits too long behind slower ones, where one left in the socket would wait for as
    /// long as they run. From any other source only while a slot is free.
    pub fn has_room(&self, source: usize) -> bool {
        let mut room = self.config.capacity as usize;
        if self.batch_sources.get(source).copied().unwrap_or(false) {
            room += MAX_BATCH_JOBS;
        }
        !self.leaving && self.held.len() < room
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
        let job = match Job::decode(&frames) {
            Ok(job) => job,
            Err(e) => {
                self.counters.malformed += 1;
                return Err(e);
            }
        };
        if !matches!(job, Job::Plain(_)) {
            self.greet(now, source, sink);
        }
        let stuck = self.stuck();
        match job {
            Job::Framed {
                id,
                timeout_ms,
                payload,
            } => self.hold(source, Some(id), None, timeout_ms, payload),
            Job::Plain(payload) => {
                let timeout_ms = self.config.plain_timeout_ms;
                self.hold(source, None, None, timeout_ms, payload);
            }
            Job::Batch(batch) => {
                self.batch_sources[source] = true;
                let hold = Duration::from_millis(batch.hold_ms);
                let hold_until = (batch.hold_ms > 0).then(|| now + hold);
                // Slots all busy with jobs that have run a hold already: what is not
                // kept would only wait out its hold here, so it goes back at once.
                let refuse = stuck.is_some_and(|since| batch.hold_ms > 0 && since + hold <= now);
                let mut unstarted = self.unstarted_of(source, u64::MAX);
                for (id, payload) in batch.jobs {
                    if refuse && unstarted >= batch.keep as usize {
                        self.counters.returned += 1;
                        self.pending[sink].report.returned.push(id);
                        self.bound(sink);
                        continue;
                    }
                    unstarted += 1;
                    let hold = Hold {
                        until: hold_until,
                        keep: batch.keep,
                    };
                    self.hold(source, Some(id), Some(hold), batch.timeout_ms, payload);
                }
            }
        }
        Ok(())
    }

    /// When every slot is busy, the latest start among their jobs.
    fn stuck(&self) -> Option<Instant> {
        let mut running = 0;
        let mut latest = Instant::ZERO;
        for job in self.held.values() {
            if let Some(at) = job.started {
                running += 1;
                latest = latest.max(at);
            }
        }
        (running >= self.config.capacity as usize).then_some(latest)
    }

    /// Unstarted batched jobs of `source` taken before job `seq`.
    fn unstarted_of(&self, source: usize, seq: u64) -> usize {
        self.held
            .iter()
            .filter(|(s, j)| **s < seq && j.source == source && j.batched && j.started.is_none())
            .count()
    }

    /// Framed jobs mean a scale0 sink: it gets heartbeats from now on.
    fn greet(&mut self, now: Instant, source: usize, sink: usize) {
        if !self.greeted[source] {
            self.greeted[source] = true;
            let hello = self.alive(source);
            self.push(sink, &hello);
            let interval = Duration::from_millis(self.config.interval_ms);
            self.next_beat.get_or_insert(now + interval);
        }
    }

    /// Holds a job for the slots; `batch` for a job that came in one.
    fn hold(
        &mut self,
        source: usize,
        id: Option<Bytes>,
        batch: Option<Hold>,
        timeout_ms: u64,
        payload: Bytes,
    ) {
        let batched = batch.is_some();
        let (hold_until, keep) = batch.map_or((None, 0), |h| (h.until, h.keep));
        self.seq += 1;
        self.counters.jobs += 1;
        if let Some(at) = hold_until {
            self.holds.insert((at, self.seq));
        }
        self.held.insert(
            self.seq,
            Held {
                source,
                id,
                batched,
                started: None,
                hold_until,
                keep,
            },
        );
        self.runs.push_back(Run {
            seq: self.seq,
            timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
            payload,
        });
    }

    /// A slot began job `seq`: its timeout runs from now, and its sink is told (for a
    /// batched job with the next flush, unless the job has ended by then).
    pub fn handle_started(&mut self, now: Instant, seq: u64) {
        let Some(job) = self.held.get_mut(&seq) else {
            return;
        };
        if job.started.is_some() {
            return;
        }
        job.started = Some(now);
        if let Some(at) = job.hold_until.take() {
            self.holds.remove(&(at, seq));
        }
        let Some(id) = job.id.clone() else {
            return;
        };
        let sink = self.config.sink_of[job.source];
        if job.batched {
            self.pending[sink].report.started.push(id);
            self.bound(sink);
        } else {
            let start = Report::Start {
                worker: self.config.name.clone(),
                id,
            };
            self.push(sink, &start);
        }
    }

    /// Job `seq` ended after running for `busy`; its sink is told. A one-frame job that
    /// failed gets an empty result, since a plain sink knows no statuses.
    pub fn handle_done(&mut self, seq: u64, status: Status, output: Bytes, busy: Duration) {
        let Some(job) = self.held.remove(&seq) else {
            return;
        };
        if let Some(at) = job.hold_until {
            self.holds.remove(&(at, seq));
        }
        match status {
            Status::Ok => self.counters.ok += 1,
            Status::Failed | Status::Unrunnable => self.counters.failed += 1,
            Status::Timeout => self.counters.timed_out += 1,
        }
        let sink = self.config.sink_of[job.source];
        let report = match job.id {
            Some(id) if job.batched => {
                let p = &mut self.pending[sink];
                // Its start notice, if not sent yet, says nothing the result does not.
                if let Some(at) = p.report.started.iter().rposition(|s| *s == id) {
                    p.report.started.remove(at);
                }
                p.bytes = p.bytes.saturating_add(output.len());
                let busy_us = u64::try_from(busy.as_micros()).unwrap_or(u64::MAX);
                p.report.busy_us = p.report.busy_us.saturating_add(busy_us);
                p.report.ended.push(JobEnd { id, status, output });
                self.bound(sink);
                return;
            }
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
        self.push(sink, &report);
    }

    /// The next job to take back from the slots' queue: it waited its hold unstarted.
    pub fn poll_withdraw(&mut self) -> Option<u64> {
        self.withdraw.pop_front()
    }

    /// Job `seq` was taken back before any slot began it: it goes back to its map.
    pub fn handle_withdrawn(&mut self, seq: u64) {
        let Some(job) = self.held.get(&seq) else {
            return;
        };
        if job.started.is_some() {
            return;
        }
        let Some(job) = self.held.remove(&seq) else {
            return;
        };
        if let Some(at) = job.hold_until {
            self.holds.remove(&(at, seq));
        }
        self.counters.returned += 1;
        if let Some(id) = job.id {
            let sink = self.config.sink_of[job.source];
            self.pending[sink].report.returned.push(id);
            self.bound(sink);
        }
    }

    /// Sends the reports gathered since the last flush. The driver calls this whenever
    /// it has taken in everything that was ready, so a lone result waits for nothing.
    pub fn flush(&mut self) {
        for sink in 0..self.pending.len() {
            self.flush_sink(sink);
        }
    }

    fn flush_sink(&mut self, sink: usize) {
        let p = &mut self.pending[sink];
        if p.report.is_empty() {
            return;
        }
        let empty = BatchReport {
            worker: p.report.worker.clone(),
            ..BatchReport::default()
        };
        let report = std::mem::replace(&mut p.report, empty);
        p.bytes = 0;
        self.transmits.push_back(Transmit {
            dest: sink,
            frames: Report::Batch(report).encode(),
        });
    }

    /// A report at its bounds goes now.
    fn bound(&mut self, sink: usize) {
        let p = &self.pending[sink];
        if p.report.len() >= self.config.report_jobs || p.bytes >= self.config.report_bytes {
            self.flush_sink(sink);
        }
    }

    /// Sends the heartbeats that are due, and asks back the batched jobs that waited
    /// their hold unstarted.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, seq)) = self.holds.first() {
            if at > now {
                break;
            }
            self.holds.pop_first();
            let Some(job) = self.held.get(&seq) else {
                continue;
            };
            // The first `keep` unstarted jobs wait as a prefetched one would.
            let (source, keep) = (job.source, job.keep as usize);
            let kept = self.unstarted_of(source, seq) < keep;
            if let Some(job) = self.held.get_mut(&seq) {
                job.hold_until = None;
                if !kept {
                    self.withdraw.push_back(seq);
                }
            }
        }
        if self.next_beat.is_none_or(|t| t > now) || self.leaving {
            return;
        }
        self.next_beat = Some(now + Duration::from_millis(self.config.interval_ms));
        // A heartbeat lists what runs: what ended or began before it is said first.
        self.flush();
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
        self.flush();
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
        if self.leaving {
            return None;
        }
        let hold = self.holds.first().map(|(at, _)| *at);
        match (self.next_beat, hold) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next job to queue for the slots.
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
                .filter(|j| j.source == source && j.started.is_some())
                .filter_map(|j| j.id.clone())
                .collect(),
            batches: true,
        }
    }

    /// Queues a message of its own; what is gathered for that sink goes before it, so
    /// the sink hears everything in the order it happened.
    fn push(&mut self, sink: usize, report: &Report) {
        self.flush_sink(sink);
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
            report_jobs: 4,
            report_bytes: 1000,
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
    fn a_framed_job_brings_a_hello_a_start_when_a_slot_begins_it_then_its_result() {
        let mut w = worker(2, vec![0]);
        w.handle_job(at(0), 0, framed(b"j1", 50)).unwrap();
        let run = w.poll_run().unwrap();
        assert_eq!(run.timeout, Some(Duration::from_millis(50)));
        w.handle_started(at(0), run.seq);
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
                        batches: true,
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
        w.handle_done(
            run.seq,
            Status::Ok,
            Bytes::from_static(b"out"),
            Duration::ZERO,
        );
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
        while let Some(run) = w.poll_run() {
            w.handle_started(at(0), run.seq);
        }
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
        assert!(w.has_room(0));
        w.handle_job(at(0), 0, framed(b"a", 0)).unwrap();
        assert!(!w.has_room(0));
        let seq = w.poll_run().unwrap().seq;
        w.handle_done(seq, Status::Timeout, Bytes::new(), Duration::ZERO);
        assert!(w.has_room(0));
        reports(&mut w);
        w.leave();
        assert!(!w.has_room(0));
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
        w.handle_done(
            seq,
            Status::Failed,
            Bytes::from_static(b"why"),
            Duration::ZERO,
        );
        assert_eq!(reports(&mut w), vec![(0, Report::Plain(Bytes::new()))]);
        let junk = [Bytes::from_static(b"x"), Bytes::from_static(b"y")];
        assert!(w.handle_job(at(0), 0, junk.to_vec()).is_err());
        assert!(w.handle_job(at(0), 0, vec![]).is_err());
        assert_eq!(w.counters().malformed, 2);
        assert!(w.poll_run().is_none());
    }

    fn batch(ids: &[&'static str], hold_ms: u64) -> Frames {
        Job::Batch(crate::pipeline::Batch {
            timeout_ms: 0,
            hold_ms,
            keep: 0,
            jobs: ids
                .iter()
                .map(|id| (Bytes::from_static(id.as_bytes()), Bytes::from_static(b"in")))
                .collect(),
        })
        .encode()
    }

    fn batched(w: &mut TaskWorker) -> Vec<BatchReport> {
        reports(w)
            .into_iter()
            .filter_map(|(_, r)| match r {
                Report::Batch(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    fn ids(list: &[Bytes]) -> Vec<&[u8]> {
        list.iter().map(|b| &b[..]).collect()
    }

    #[test]
    fn a_batch_is_answered_in_one_report_per_flush_without_starts_for_what_ended() {
        let mut w = worker(1, vec![0]);
        w.handle_job(at(0), 0, batch(&["a", "b", "c"], 0)).unwrap();
        let runs: Vec<Run> = std::iter::from_fn(|| w.poll_run()).collect();
        assert_eq!(runs.len(), 3, "every job goes to the slots' queue");
        assert!(w.has_room(0), "taken while they wait, so their hold runs");
        w.handle_started(at(0), runs[0].seq);
        w.handle_done(
            runs[0].seq,
            Status::Ok,
            Bytes::from_static(b"A"),
            Duration::from_micros(7),
        );
        w.handle_started(at(0), runs[1].seq);
        // Nothing leaves before the flush, and the flush needs no timer.
        let hello = reports(&mut w);
        assert!(matches!(
            &hello[..],
            [(0, Report::Alive { batches: true, .. })]
        ));
        w.flush();
        let sent = batched(&mut w);
        assert_eq!(sent.len(), 1);
        assert_eq!(ids(&sent[0].started), vec![b"b"], "a's start went unsaid");
        assert_eq!(sent[0].ended.len(), 1);
        assert_eq!(sent[0].busy_us, 7);
        w.flush();
        assert!(reports(&mut w).is_empty(), "an empty flush sends nothing");
    }

    #[test]
    fn a_heartbeat_follows_what_ended_before_it_and_lists_only_begun_jobs() {
        let mut w = worker(1, vec![0]);
        w.handle_job(at(0), 0, batch(&["a", "b"], 0)).unwrap();
        let runs: Vec<Run> = std::iter::from_fn(|| w.poll_run()).collect();
        reports(&mut w);
        w.handle_started(at(0), runs[0].seq);
        w.handle_done(runs[0].seq, Status::Ok, Bytes::new(), Duration::ZERO);
        w.handle_started(at(0), runs[1].seq);
        w.handle_timeout(at(100));
        let sent = reports(&mut w);
        assert!(matches!(&sent[0], (0, Report::Batch(b)) if b.ended.len() == 1));
        assert!(
            matches!(&sent[1], (0, Report::Alive { running, .. }) if ids(running) == vec![b"b"])
        );
    }

    #[test]
    fn jobs_unstarted_after_their_hold_are_handed_back() {
        let mut w = worker(1, vec![0]);
        w.handle_job(at(0), 0, batch(&["slow", "x", "y"], 50))
            .unwrap();
        let runs: Vec<Run> = std::iter::from_fn(|| w.poll_run()).collect();
        reports(&mut w);
        w.handle_started(at(0), runs[0].seq);
        assert_eq!(w.poll_timeout(), Some(at(50)));
        w.handle_timeout(at(49));
        assert_eq!(w.poll_withdraw(), None);
        w.handle_timeout(at(50));
        let back: Vec<u64> = std::iter::from_fn(|| w.poll_withdraw()).collect();
        assert_eq!(back, vec![runs[1].seq, runs[2].seq], "the begun one stays");
        // A slot took y just before the driver could: it runs, and is not handed back.
        w.handle_started(at(0), runs[2].seq);
        w.handle_withdrawn(runs[1].seq);
        w.handle_withdrawn(runs[2].seq);
        w.flush();
        let sent = batched(&mut w);
        assert_eq!(ids(&sent[0].started), vec![&b"slow"[..], b"y"]);
        assert_eq!(ids(&sent[0].returned), vec![b"x"]);
        assert_eq!((w.held(), w.counters().returned), (2, 1));
    }

    #[test]
    fn a_full_report_goes_before_the_flush_and_protocol_1_jobs_get_their_own() {
        let mut w = worker(8, vec![0]);
        w.handle_job(at(0), 0, framed(b"one", 0)).unwrap();
        w.handle_job(at(0), 0, batch(&["a", "b", "c", "d", "e"], 0))
            .unwrap();
        let runs: Vec<Run> = std::iter::from_fn(|| w.poll_run()).collect();
        w.handle_started(at(0), runs[0].seq);
        for r in &runs[1..] {
            w.handle_done(r.seq, Status::Ok, Bytes::new(), Duration::ZERO);
        }
        w.handle_done(runs[0].seq, Status::Ok, Bytes::new(), Duration::ZERO);
        let sent = reports(&mut w);
        let kinds: Vec<&str> = sent
            .iter()
            .map(|(_, r)| match r {
                Report::Alive { .. } => "alive",
                Report::Start { .. } => "start",
                Report::Result { .. } => "result",
                Report::Batch(b) if b.ended.len() == 4 => "batch of 4",
                Report::Batch(b) if b.ended.len() == 1 => "batch of 1",
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            vec!["alive", "start", "batch of 4", "batch of 1", "result"],
            "bounded at 4 entries; what was gathered goes before a message of its own"
        );
    }

    #[test]
    fn the_kept_prefetch_waits_and_a_worker_stuck_past_its_hold_hands_the_rest_back_at_once() {
        let mut w = worker(1, vec![0]);
        let frames = |ids: &[&'static str]| {
            Job::Batch(crate::pipeline::Batch {
                timeout_ms: 0,
                hold_ms: 50,
                keep: 1,
                jobs: ids
                    .iter()
                    .map(|id| (Bytes::from_static(id.as_bytes()), Bytes::new()))
                    .collect(),
            })
            .encode()
        };
        w.handle_job(at(0), 0, frames(&["slow", "kept", "x"]))
            .unwrap();
        let runs: Vec<Run> = std::iter::from_fn(|| w.poll_run()).collect();
        w.handle_started(at(0), runs[0].seq);
        reports(&mut w);
        w.handle_timeout(at(50));
        let back: Vec<u64> = std::iter::from_fn(|| w.poll_withdraw()).collect();
        assert_eq!(back, vec![runs[2].seq], "the first one waiting is kept");
        w.handle_withdrawn(runs[2].seq);
        // The slot has run its job a whole hold: a new batch would only wait it out.
        w.handle_job(at(60), 0, frames(&["y", "z"])).unwrap();
        assert!(w.poll_run().is_none(), "none of it is queued");
        w.flush();
        let sent = batched(&mut w);
        assert_eq!(ids(&sent[0].started), vec![b"slow"]);
        assert_eq!(ids(&sent[0].returned), vec![&b"x"[..], b"y", b"z"]);
        assert_eq!(w.counters().returned, 3);
    }
}
