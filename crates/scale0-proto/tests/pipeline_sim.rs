//! The parallel map in virtual time: workers simulated as the real `scale0 work` behaves
//! (jobs round robin into per-connection buffers, a job starts when a slot frees, a start
//! notice, heartbeats listing running jobs, the job's timeout enforced by the worker from
//! the job's own start). A worker speaks protocol 1 (a job per message, a report per
//! event) or 2 (batches of jobs queued for its slots, batched reports flushed at the end
//! of each step it had something to say, jobs handed back after their hold).

mod sim;

use bytes::Bytes;
use proptest::prelude::*;
use scale0_proto::pipeline::{
    BatchReport, Finished, Job, JobEnd, Map, MapConfig, Outcome, Report, Status,
};
use scale0_proto::{Frames, Instant};
use sim::{at, bytes};
use std::collections::VecDeque;

const LATENCY_MS: u64 = 1;

/// What a job does, from its payload: `ms` runs that long and echoes; `fail` fails at
/// once; `hang` runs until stopped.
fn behave(payload: &[u8]) -> (Option<u64>, Status) {
    match payload {
        b"fail" => (Some(1), Status::Failed),
        b"unrunnable" => (Some(0), Status::Unrunnable),
        b"hang" => (None, Status::Ok),
        p => (
            Some(
                std::str::from_utf8(p)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(1),
            ),
            Status::Ok,
        ),
    }
}

struct Running {
    key: Bytes,
    payload: Bytes,
    started: u64,
    ends: Option<u64>,
    status: Status,
    timeout_ms: u64,
    batched: bool,
}

/// A batched job waiting at a worker for a slot.
struct Queued {
    key: Bytes,
    payload: Bytes,
    timeout_ms: u64,
    arrived: u64,
    hold_until: Option<u64>,
    batched: bool,
    keep: u32,
}

struct SimWorker {
    name: Bytes,
    capacity: u32,
    interval: u64,
    connected: bool,
    inbox: VecDeque<Frames>,
    running: Vec<Running>,
    said_hello: bool,
    next_beat: u64,
    /// Reports on the way to the map: (arrival, frames). One connection, in order.
    wire: VecDeque<(u64, Frames)>,
    /// Drop every report from now on while true (a broken sink connection).
    lose_reports: bool,
    /// Reads batches (protocol 2).
    batches: bool,
    /// Has been sent a batch: takes messages while its slots are busy too.
    batch_source: bool,
    queued: VecDeque<Queued>,
    /// The batched report being gathered this step.
    pending: BatchReport,
}

struct Sim {
    now: u64,
    map: Map,
    workers: Vec<SimWorker>,
    rr: usize,
    out: Vec<Finished>,
    /// (job index, worker) for every run started, to count executions.
    runs: Vec<(u64, usize)>,
    max_in_flight_seen: usize,
    /// Longest a batched job waited at a worker before a slot began it.
    max_queue_wait: u64,
    /// When each job was emitted.
    emitted_at: Vec<u64>,
}

impl Sim {
    fn new(config: MapConfig, jobs: &[&str]) -> Self {
        let mut map = Map::new(config, 0xfeed);
        for j in jobs {
            map.push_job(bytes(j));
        }
        map.close_input();
        Self {
            now: 0,
            map,
            workers: Vec::new(),
            rr: 0,
            out: Vec::new(),
            runs: Vec::new(),
            max_in_flight_seen: 0,
            max_queue_wait: 0,
            emitted_at: Vec::new(),
        }
    }

    fn connections(&self) -> usize {
        self.workers.iter().filter(|w| w.connected).count()
    }

    fn add_worker(&mut self, capacity: u32) -> usize {
        self.add(capacity, false)
    }

    fn add_batch_worker(&mut self, capacity: u32) -> usize {
        self.add(capacity, true)
    }

    fn add(&mut self, capacity: u32, batches: bool) -> usize {
        let n = self.workers.len();
        self.workers.push(SimWorker {
            name: bytes(&format!("w{n}")),
            capacity,
            interval: 100,
            connected: true,
            inbox: VecDeque::new(),
            running: Vec::new(),
            said_hello: false,
            next_beat: 0,
            wire: VecDeque::new(),
            lose_reports: false,
            batches,
            batch_source: false,
            queued: VecDeque::new(),
            pending: BatchReport {
                worker: bytes(&format!("w{n}")),
                ..BatchReport::default()
            },
        });
        let c = self.connections();
        self.map.set_connections(at(self.now), c);
        n
    }

    /// SIGKILL: its buffered and running jobs vanish, its connection closes.
    fn kill(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        worker.connected = false;
        worker.inbox.clear();
        worker.running.clear();
        worker.queued.clear();
        worker.wire.clear();
        worker.pending = BatchReport {
            worker: worker.name.clone(),
            ..BatchReport::default()
        };
        let c = self.connections();
        self.map.set_connections(at(self.now), c);
    }

    fn send(&mut self, w: usize, report: Report) {
        // What was gathered goes first: the sink hears events in the order they happened.
        self.flush(w);
        self.put(w, report);
    }

    fn flush(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        if worker.pending.is_empty() {
            return;
        }
        let empty = BatchReport {
            worker: worker.name.clone(),
            ..BatchReport::default()
        };
        let report = std::mem::replace(&mut worker.pending, empty);
        self.put(w, Report::Batch(report));
    }

    fn put(&mut self, w: usize, report: Report) {
        let worker = &mut self.workers[w];
        if !worker.lose_reports {
            worker
                .wire
                .push_back((self.now + LATENCY_MS, report.encode()));
        }
    }

    fn step(&mut self) {
        let now = at(self.now);
        sim::fire_due(&mut self.map, now);
        // PUSH: round robin over connected peers.
        while self.connections() > 0 {
            let Some(d) = self.map.poll_dispatch(now) else {
                break;
            };
            loop {
                self.rr = (self.rr + 1) % self.workers.len();
                if self.workers[self.rr].connected {
                    break;
                }
            }
            let rr = self.rr;
            self.workers[rr].inbox.push_back(d.frames);
        }
        self.max_in_flight_seen = self.max_in_flight_seen.max(self.map.in_flight());
        for w in 0..self.workers.len() {
            if !self.workers[w].connected {
                continue;
            }
            self.work(w);
        }
        for w in 0..self.workers.len() {
            while self.workers[w]
                .wire
                .front()
                .is_some_and(|(at, _)| *at <= self.now)
            {
                if let Some((_, frames)) = self.workers[w].wire.pop_front() {
                    self.map.handle_report(now, frames);
                }
            }
        }
        while let Some(f) = self.map.poll_finished() {
            self.out.push(f);
            self.emitted_at.push(self.now);
        }
        self.now += 1;
    }

    fn work(&mut self, w: usize) {
        let now = self.now;
        // Finished or timed out runs report first, freeing their slots.
        let mut ended = Vec::new();
        self.workers[w].running.retain(|r| {
            let timed_out = r.timeout_ms > 0 && now >= r.started + r.timeout_ms;
            let done = r.ends.is_some_and(|e| now >= e);
            let busy = now - r.started;
            if timed_out && !done {
                ended.push((
                    r.key.clone(),
                    Status::Timeout,
                    Bytes::new(),
                    r.batched,
                    busy,
                ));
                false
            } else if done {
                ended.push((r.key.clone(), r.status, r.payload.clone(), r.batched, busy));
                false
            } else {
                true
            }
        });
        for (id, status, output, batched, busy) in ended {
            let worker = self.workers[w].name.clone();
            if batched {
                let p = &mut self.workers[w].pending;
                p.started.retain(|k| *k != id);
                p.busy_us += busy * 1000;
                p.ended.push(JobEnd { id, status, output });
            } else {
                self.send(
                    w,
                    Report::Result {
                        worker,
                        id,
                        status,
                        output,
                    },
                );
            }
        }
        // A batched job that waited its hold unstarted goes back, unless it is among the
        // first `keep` waiting.
        let worker = &mut self.workers[w];
        let mut ahead = 0;
        let mut stay = VecDeque::new();
        for q in worker.queued.drain(..) {
            if q.batched && q.hold_until.is_some_and(|h| now >= h) && ahead >= q.keep {
                worker.pending.returned.push(q.key);
            } else {
                ahead += u32::from(q.batched);
                stay.push_back(q);
            }
        }
        worker.queued = stay;
        loop {
            let held = self.workers[w].running.len() + self.workers[w].queued.len();
            let mut room = self.workers[w].capacity as usize;
            if self.workers[w].batch_source {
                room += 1024;
            }
            if held >= room {
                break;
            }
            let Some(frames) = self.workers[w].inbox.pop_front() else {
                break;
            };
            let job = Job::decode(&frames);
            if !self.workers[w].said_hello {
                self.workers[w].said_hello = true;
                self.beat(w);
            }
            match job {
                Ok(Job::Framed {
                    id,
                    timeout_ms,
                    payload,
                }) => self.workers[w].queued.push_back(Queued {
                    key: id,
                    payload,
                    timeout_ms,
                    arrived: now,
                    hold_until: None,
                    batched: false,
                    keep: 0,
                }),
                Ok(Job::Batch(batch)) if self.workers[w].batches => {
                    let worker = &mut self.workers[w];
                    worker.batch_source = true;
                    // Slots all busy with jobs that ran a hold already: what is not kept
                    // goes back at once.
                    let latest = worker.running.iter().map(|r| r.started).max();
                    let stuck = worker.running.len() >= worker.capacity as usize
                        && batch.hold_ms > 0
                        && latest.is_some_and(|t| t + batch.hold_ms <= now);
                    let mut waiting = worker.queued.iter().filter(|q| q.batched).count();
                    for (key, payload) in batch.jobs {
                        let worker = &mut self.workers[w];
                        if stuck && waiting >= batch.keep as usize {
                            worker.pending.returned.push(key);
                            continue;
                        }
                        waiting += 1;
                        worker.queued.push_back(Queued {
                            key,
                            payload,
                            timeout_ms: batch.timeout_ms,
                            arrived: now,
                            hold_until: (batch.hold_ms > 0).then_some(now + batch.hold_ms),
                            batched: true,
                            keep: batch.keep,
                        });
                    }
                }
                other => panic!("the map sent a job the worker cannot read: {other:?}"),
            }
            self.start_queued(w);
        }
        self.start_queued(w);
        if self.workers[w].said_hello && now >= self.workers[w].next_beat {
            self.beat(w);
        }
        // The worker has nothing more ready this step: what it gathered goes.
        self.flush(w);
    }

    /// Slots free take queued jobs in order, and say so.
    fn start_queued(&mut self, w: usize) {
        while self.workers[w].running.len() < self.workers[w].capacity as usize {
            let Some(q) = self.workers[w].queued.pop_front() else {
                break;
            };
            self.max_queue_wait = self.max_queue_wait.max(self.now - q.arrived);
            if q.batched {
                self.workers[w].pending.started.push(q.key.clone());
            } else {
                let worker = self.workers[w].name.clone();
                self.send(
                    w,
                    Report::Start {
                        worker,
                        id: q.key.clone(),
                    },
                );
            }
            self.begin(w, q.key, q.payload, q.timeout_ms, q.batched);
        }
    }

    fn begin(&mut self, w: usize, id: Bytes, payload: Bytes, timeout_ms: u64, batched: bool) {
        let now = self.now;
        let (duration, status) = behave(&payload);
        let index: u64 = std::str::from_utf8(&id)
            .ok()
            .and_then(|s| s.split('.').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        self.runs.push((index, w));
        self.workers[w].running.push(Running {
            key: id,
            payload,
            started: now,
            ends: duration.map(|d| now + d),
            status,
            timeout_ms,
            batched,
        });
    }

    fn beat(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        worker.next_beat = self.now + worker.interval;
        let report = Report::Alive {
            worker: worker.name.clone(),
            capacity: worker.capacity,
            interval_ms: worker.interval,
            running: worker.running.iter().map(|r| r.key.clone()).collect(),
            batches: worker.batches,
        };
        self.send(w, report);
    }

    fn run_until_done(&mut self, limit_ms: u64) {
        while !self.map.is_done() {
            assert!(
                self.now < limit_ms,
                "not done by {limit_ms} ms: {:?}",
                self.map.counters()
            );
            self.step();
        }
    }

    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end && !self.map.is_done() {
            self.step();
        }
    }

    fn outputs(&self) -> Vec<(u64, Outcome)> {
        self.out
            .iter()
            .map(|f| (f.index, f.outcome.clone()))
            .collect()
    }

    fn runs_of(&self, index: u64) -> usize {
        self.runs.iter().filter(|(i, _)| *i == index).count()
    }
}

fn assert_all_once_in_order(sim: &Sim, n: u64) {
    let indices: Vec<u64> = sim.out.iter().map(|f| f.index).collect();
    assert_eq!(
        indices,
        (0..n).collect::<Vec<_>>(),
        "each job once, in order"
    );
}

#[test]
fn every_job_is_emitted_once_in_input_order() {
    let jobs: Vec<String> = (0..200).map(|i| (5 + i % 17).to_string()).collect();
    let refs: Vec<&str> = jobs.iter().map(String::as_str).collect();
    let mut sim = Sim::new(MapConfig::default(), &refs);
    for cap in [1, 2, 4] {
        sim.add_worker(cap);
    }
    sim.run_until_done(60_000);
    assert_all_once_in_order(&sim, 200);
    for (f, input) in sim.out.iter().zip(&jobs) {
        assert_eq!(f.outcome, Outcome::Done(bytes(input)));
        assert_eq!(f.attempts, 1);
    }
    assert_eq!(sim.map.counters().retried, 0);
    assert_eq!(sim.runs.len(), 200, "no job ran twice");
}

#[test]
fn in_flight_never_exceeds_credit() {
    let jobs = vec!["10"; 300];
    let mut sim = Sim::new(MapConfig::default(), &jobs);
    for _ in 0..3 {
        sim.add_worker(2);
    }
    sim.run_until_done(60_000);
    // 3 workers x (2 slots + 1 prefetch).
    assert!(
        sim.max_in_flight_seen <= 9,
        "in flight peaked at {}",
        sim.max_in_flight_seen
    );
    // Nothing waits long in a buffer: every worker's inbox stayed small.
    assert_all_once_in_order(&sim, 300);
}

#[test]
fn a_hanging_job_times_out_and_fails_after_its_attempts() {
    let config = MapConfig {
        job_timeout_ms: 50,
        max_attempts: 3,
        ..MapConfig::default()
    };
    let mut sim = Sim::new(config, &["5", "hang", "5"]);
    sim.add_worker(2);
    sim.run_until_done(10_000);
    assert_all_once_in_order(&sim, 3);
    let (_, outcome) = &sim.outputs()[1];
    assert!(
        matches!(outcome, Outcome::Failed(why) if why.contains("timed out")),
        "{outcome:?}"
    );
    assert_eq!(sim.out[1].attempts, 3);
    assert_eq!(sim.runs_of(1), 3);
    assert_eq!(sim.map.counters().failed, 1);
    assert_eq!(sim.map.counters().retried, 2);
}

#[test]
fn a_failing_job_is_retried_then_reported_and_others_finish() {
    let mut sim = Sim::new(MapConfig::default(), &["3", "fail", "3", "3"]);
    sim.add_worker(1);
    sim.add_worker(1);
    sim.run_until_done(10_000);
    assert_all_once_in_order(&sim, 4);
    assert_eq!(sim.out[1].attempts, 3);
    assert!(matches!(sim.out[1].outcome, Outcome::Failed(_)));
    assert_eq!(sim.map.counters().done, 3);
}

#[test]
fn a_job_that_cannot_start_fails_at_once_without_retries() {
    let mut sim = Sim::new(MapConfig::default(), &["3", "unrunnable", "3"]);
    sim.add_worker(1);
    sim.run_until_done(10_000);
    assert_all_once_in_order(&sim, 3);
    assert_eq!(sim.out[1].attempts, 1);
    assert!(matches!(sim.out[1].outcome, Outcome::Failed(_)));
    assert_eq!(sim.map.counters().retried, 0);
}

#[test]
fn a_killed_workers_jobs_are_sent_again_and_emitted_once() {
    let jobs = vec!["20"; 400];
    let mut sim = Sim::new(MapConfig::default(), &jobs);
    for _ in 0..4 {
        sim.add_worker(1);
    }
    sim.run_for(500);
    sim.kill(1);
    sim.run_for(300);
    sim.add_worker(1);
    sim.run_until_done(60_000);
    assert_all_once_in_order(&sim, 400);
    assert!(
        sim.out
            .iter()
            .all(|f| matches!(f.outcome, Outcome::Done(_)))
    );
    let late_worker = sim.workers.len() - 1;
    assert!(
        sim.runs.iter().any(|(_, w)| *w == late_worker),
        "the worker that joined mid-run took work"
    );
    assert!(sim.map.counters().retried >= 1);
}

#[test]
fn a_silent_worker_is_presumed_dead_within_its_liveness() {
    // The worker's process hangs with its connection open: no reports, no disconnection.
    let jobs = vec!["1000"; 4];
    let mut sim = Sim::new(MapConfig::default(), &jobs);
    let hung = sim.add_worker(2);
    sim.run_for(50);
    sim.workers[hung].lose_reports = true;
    let hung_at = sim.now;
    sim.workers[hung].running.clear();
    sim.workers[hung].inbox.clear();
    sim.workers[hung].capacity = 0;
    sim.add_worker(2);
    // Dead after 3 missed 100 ms heartbeats (counted from its last one), then the others
    // run its jobs.
    while sim.map.counters().workers_lost == 0 {
        sim.step();
    }
    assert!(
        sim.now <= hung_at + 3 * 100 + LATENCY_MS + 1,
        "at {}",
        sim.now
    );
    // Its connection stays open until ZeroMQ's own heartbeat gives up on it (the driver
    // sets one); jobs round robin put in its buffer meanwhile are sent again then.
    sim.run_for(200);
    sim.kill(hung);
    sim.run_until_done(20_000);
    assert_all_once_in_order(&sim, 4);
}

#[test]
fn a_result_lost_on_the_way_is_noticed_at_the_next_heartbeat() {
    let mut sim = Sim::new(MapConfig::default(), &["30"]);
    let w = sim.add_worker(1);
    // Run until the job has started, then lose the worker's reports for a while: its
    // result vanishes, its heartbeats resume later without the job.
    while sim.map.in_flight() == 0 || sim.workers[w].running.is_empty() {
        sim.step();
    }
    sim.run_for(5);
    sim.workers[w].lose_reports = true;
    sim.run_for(40);
    sim.workers[w].lose_reports = false;
    sim.run_until_done(5_000);
    assert_all_once_in_order(&sim, 1);
    assert_eq!(
        sim.runs_of(0),
        2,
        "the job ran again after its result was lost"
    );
}

#[test]
fn a_late_ok_from_a_superseded_send_counts_once() {
    let config = MapConfig::default();
    let mut map = Map::new(config, 7);
    map.push_job(bytes("x"));
    map.close_input();
    map.set_connections(Instant::ZERO, 1);
    let first = map
        .poll_dispatch(Instant::ZERO)
        .expect("credit for a stranger");
    let Ok(Job::Framed { id: key1, .. }) = Job::decode(&first.frames) else {
        panic!("framed job expected");
    };
    // The connection drops before the job starts: sent again.
    map.set_connections(at(1), 0);
    map.set_connections(at(2), 1);
    let second = map.poll_dispatch(at(2)).expect("sent again");
    let Ok(Job::Framed { id: key2, .. }) = Job::decode(&second.frames) else {
        panic!("framed job expected");
    };
    assert_ne!(key1, key2);
    // The first send did reach a worker after all and succeeds: it counts.
    let ok = |key: &Bytes, out: &str| {
        Report::Result {
            worker: bytes("w"),
            id: key.clone(),
            status: Status::Ok,
            output: bytes(out),
        }
        .encode()
    };
    map.handle_report(at(3), ok(&key1, "first"));
    map.handle_report(at(4), ok(&key2, "second"));
    let f = map.poll_finished().expect("finished");
    assert_eq!(f.outcome, Outcome::Done(bytes("first")));
    assert!(map.poll_finished().is_none());
    assert!(map.is_done());
    assert_eq!(map.counters().late_results, 1);
    assert_eq!(map.counters().done, 1);
}

#[test]
fn a_report_from_another_run_is_not_taken_for_ours() {
    let mut map = Map::new(MapConfig::default(), 7);
    map.push_job(bytes("x"));
    map.set_connections(Instant::ZERO, 1);
    let d = map.poll_dispatch(Instant::ZERO).expect("sent");
    let Ok(Job::Framed { id, .. }) = Job::decode(&d.frames) else {
        panic!("framed job expected");
    };
    let foreign = String::from_utf8_lossy(&id).replacen("0000000000000007", "0000000000000008", 1);
    let report = Report::Result {
        worker: bytes("w"),
        id: bytes(&foreign),
        status: Status::Ok,
        output: bytes("not ours"),
    };
    map.handle_report(at(1), report.encode());
    assert!(map.poll_finished().is_none());
    assert_eq!(map.counters().late_results, 1);
}

#[test]
fn results_as_they_finish_when_unordered() {
    let config = MapConfig {
        ordered: false,
        ..MapConfig::default()
    };
    let mut sim = Sim::new(config, &["300", "10", "10"]);
    sim.add_worker(3);
    sim.run_until_done(5_000);
    let order: Vec<u64> = sim.out.iter().map(|f| f.index).collect();
    assert_eq!(order.last(), Some(&0), "the slow job comes last: {order:?}");
}

#[test]
fn nothing_is_sent_without_a_connection() {
    let mut map = Map::new(MapConfig::default(), 1);
    map.push_job(bytes("1"));
    assert!(map.poll_dispatch(Instant::ZERO).is_none());
    map.set_connections(Instant::ZERO, 1);
    let d = map
        .poll_dispatch(Instant::ZERO)
        .expect("one job for the stranger");
    // A stranger gets one job until it says hello.
    map.push_job(bytes("2"));
    assert!(map.poll_dispatch(Instant::ZERO).is_none());
    map.undo_dispatch(&d);
    assert_eq!(map.in_flight(), 0);
    assert_eq!(map.queued(), 2);
}

#[test]
fn workers_reading_batches_get_them_and_every_job_is_emitted_once_in_order() {
    let jobs: Vec<String> = (0..2000).map(|i| (1 + i % 3).to_string()).collect();
    let refs: Vec<&str> = jobs.iter().map(String::as_str).collect();
    let mut sim = Sim::new(MapConfig::default(), &refs);
    sim.add_batch_worker(1);
    sim.add_batch_worker(2);
    sim.run_until_done(60_000);
    assert_all_once_in_order(&sim, 2000);
    assert_eq!(sim.runs.len(), 2000, "no job ran twice");
    let c = sim.map.counters();
    assert!(c.batches > 0, "{c:?}");
    assert_eq!((c.retried, c.returned), (0, 0));
    // Credit: capacity + prefetch + at most a batch queued per worker.
    assert!(sim.max_in_flight_seen <= (1 + 1 + 64) + (2 + 1 + 64));
    assert!(
        sim.max_in_flight_seen > 5,
        "batches ran deeper than protocol 1"
    );
}

#[test]
fn jobs_that_take_long_are_not_queued_beyond_capacity_and_prefetch() {
    // 40 ms jobs against the 100 ms hold: a quarter of it is less than one job.
    let jobs = vec!["40"; 60];
    let mut sim = Sim::new(MapConfig::default(), &jobs);
    sim.add_batch_worker(1);
    sim.add_batch_worker(1);
    sim.run_until_done(60_000);
    assert_all_once_in_order(&sim, 60);
    assert!(
        sim.max_in_flight_seen <= 4,
        "peaked at {}",
        sim.max_in_flight_seen
    );
    assert_eq!(sim.map.counters().returned, 0);
}

#[test]
fn the_timeout_runs_from_each_jobs_own_start_not_while_queued() {
    // One slot: jobs wait behind 80 ms jobs (in the socket, or at the worker in batches,
    // which a long hold lets queue deep) but each runs only 80 ms, under the 100 ms
    // timeout, however long it waited.
    for batches in [false, true] {
        let config = MapConfig {
            job_timeout_ms: 100,
            hold_ms: 20_000,
            ..MapConfig::default()
        };
        let mut sim = Sim::new(config, &["80"; 30]);
        sim.add(1, batches);
        sim.run_until_done(60_000);
        assert_all_once_in_order(&sim, 30);
        assert!(
            sim.out
                .iter()
                .all(|f| matches!(f.outcome, Outcome::Done(_)))
        );
        assert_eq!(sim.map.counters().retried, 0);
        if batches {
            assert!(
                sim.max_queue_wait > 500,
                "jobs waited {} ms in a batch",
                sim.max_queue_wait
            );
        }
    }
}

#[test]
fn a_slow_job_holds_fast_ones_queued_behind_it_no_longer_than_the_hold() {
    let mut jobs = vec!["1"; 400];
    jobs[200] = "5000";
    let config = MapConfig {
        ordered: false,
        ..MapConfig::default()
    };
    let mut sim = Sim::new(config, &jobs);
    sim.add_batch_worker(1);
    sim.add_batch_worker(1);
    sim.run_until_done(60_000);
    let c = sim.map.counters().clone();
    assert!(
        c.returned > 0,
        "fast jobs were queued behind the slow one: {c:?}"
    );
    assert_eq!(
        sim.runs.len(),
        400,
        "a job handed back unstarted ran only once"
    );
    assert_eq!(c.retried, 0);
    let slow_at = sim.emitted_at[sim.out.iter().position(|f| f.index == 200).unwrap()];
    // Without hand-backs they would wait the slow job's 5 s; only the one the slow
    // job's worker keeps (the prefetch) does, as in protocol 1.
    let late: Vec<u64> = sim
        .out
        .iter()
        .zip(&sim.emitted_at)
        .filter(|(f, t)| f.index != 200 && **t > 1_500)
        .map(|(f, _)| f.index)
        .collect();
    assert!(
        late.len() <= 1,
        "fast jobs that waited for the slow one: {late:?}"
    );
    assert!(slow_at >= 5_000);
}

#[test]
fn a_worker_killed_mid_batch_loses_nothing() {
    let jobs = vec!["2"; 3000];
    let mut sim = Sim::new(MapConfig::default(), &jobs);
    let doomed = sim.add_batch_worker(1);
    sim.add_batch_worker(1);
    while sim.workers[doomed].queued.len() < 5 {
        sim.step();
    }
    sim.kill(doomed);
    sim.run_until_done(60_000);
    assert_all_once_in_order(&sim, 3000);
    assert!(
        sim.out
            .iter()
            .all(|f| f.outcome == Outcome::Done(bytes("2")))
    );
    assert!(sim.map.counters().retried > 0);
}

#[test]
fn a_worker_that_cannot_read_batches_means_none_are_sent_while_it_is_connected() {
    let jobs = vec!["1"; 4000];
    let mut sim = Sim::new(MapConfig::default(), &jobs);
    sim.add_batch_worker(1);
    sim.add_batch_worker(1);
    sim.run_for(300);
    let before = sim.map.counters().batches;
    assert!(before > 0);
    // The simulated protocol-1 worker panics on a batch.
    let old = sim.add_worker(1);
    sim.run_for(300);
    assert_eq!(
        sim.map.counters().batches,
        before,
        "no batch while it is there"
    );
    sim.kill(old);
    sim.run_until_done(60_000);
    assert_all_once_in_order(&sim, 4000);
    assert!(
        sim.map.counters().batches > before,
        "batches again once it left"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Kills, joins, lost reports and failures in any order: every job is emitted exactly
    /// once, in order, as a result or a failure, and a success carries its own output.
    #[test]
    fn chaos_never_loses_or_duplicates(
        durations in prop::collection::vec(
            prop_oneof![6 => 1u64..4, 3 => 1u64..60, 1 => 100u64..180, 1 => Just(0u64)],
            1..120,
        ),
        events in prop::collection::vec((0u64..400, 0u8..5, 0usize..6), 0..12),
        caps in prop::collection::vec((1u32..4, any::<bool>()), 1..4),
        batch_jobs in prop_oneof![Just(1u32), 2u32..8, Just(64)],
        hold_ms in prop_oneof![Just(0u64), 20u64..80, Just(100)],
    ) {
        let jobs: Vec<String> = durations
            .iter()
            .map(|d| if *d == 0 { "fail".to_string() } else { d.to_string() })
            .collect();
        let refs: Vec<&str> = jobs.iter().map(String::as_str).collect();
        let config = MapConfig { job_timeout_ms: 200, batch_jobs, hold_ms, ..MapConfig::default() };
        let mut sim = Sim::new(config, &refs);
        for (cap, batches) in &caps {
            sim.add(*cap, *batches);
        }
        let mut events = events;
        events.sort_unstable();
        for (at, kind, who) in events {
            sim.run_for(at.saturating_sub(sim.now));
            let w = who % sim.workers.len();
            match kind {
                0 => sim.kill(w),
                1 => { sim.add_batch_worker(2); }
                2 => sim.workers[w].lose_reports = true,
                3 => sim.workers[w].lose_reports = false,
                _ => { sim.add_worker(1); }
            }
        }
        for w in &mut sim.workers {
            w.lose_reports = false;
        }
        if sim.connections() == 0 {
            sim.add_batch_worker(1);
        }
        sim.run_until_done(200_000);
        let indices: Vec<u64> = sim.out.iter().map(|f| f.index).collect();
        prop_assert_eq!(indices, (0..jobs.len() as u64).collect::<Vec<_>>());
        for (f, input) in sim.out.iter().zip(&jobs) {
            match &f.outcome {
                Outcome::Done(out) => prop_assert_eq!(out, &bytes(input)),
                // Only a failing job fails, unless chaos took its every attempt.
                Outcome::Failed(why) => prop_assert!(
                    input == "fail" || why.contains("died") || why.contains("lost"),
                    "job {} ({}) failed: {}", f.index, input, why
                ),
            }
        }
    }
}
