//! A thread that writes and syncs a durable log beside a socket loop, so the loop goes on
//! receiving while `fdatasync` runs. The loop hands it batches, each with the mark (a
//! count or a number the core gave) to report once that batch is on disk; the thread
//! writes everything queued since its last sync and syncs once for all of it (group
//! commit), then reports the highest mark. The loop polls [`Syncer::poll_item`] beside
//! its sockets and releases what waited on the marks it reads back.
//!
//! The cores already hold everything that depends on the journal until told it is
//! durable (`journal_committed`, `Node::persisted`), so moving the sync off the loop
//! changes when output leaves, never whether it may.

use crate::error::{Result, ZmqContext};
use std::io;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// What the sync thread writes to.
pub(crate) trait Sink: Send + 'static {
    /// One batch of writes.
    type Batch: Send + 'static;
    /// Writes a batch (buffered: durable only after [`Sink::sync`]).
    fn write(&mut self, batch: Self::Batch) -> io::Result<()>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
}

struct Job<B> {
    batch: B,
    mark: Option<u64>,
}

/// What the thread reports: the highest mark now durable and how many jobs that covers.
type Done = io::Result<(u64, usize)>;

/// The loop's end of a sync thread.
pub(crate) struct Syncer<S: Sink> {
    jobs: Option<mpsc::Sender<Job<S::Batch>>>,
    done: mpsc::Receiver<Done>,
    wake: zmq::Socket,
    thread: Option<JoinHandle<()>>,
    /// Jobs handed over and not yet reported durable.
    pending: usize,
}

impl<S: Sink> Syncer<S> {
    /// Starts the thread, which owns `sink` from now on.
    pub(crate) fn start(ctx: &zmq::Context, name: &str, mut sink: S) -> Result<Self> {
        let endpoint = format!("inproc://scale0-sync-{:016x}", crate::ids::random_u64());
        let ours = ctx
            .socket(zmq::PAIR)
            .context(|| "creating the sync thread's socket".into())?;
        ours.bind(&endpoint)
            .context(|| format!("binding {endpoint}"))?;
        let theirs = ctx
            .socket(zmq::PAIR)
            .context(|| "creating the sync thread's socket".into())?;
        theirs
            .connect(&endpoint)
            .context(|| format!("connecting {endpoint}"))?;
        theirs.set_linger(0).context(|| "setting LINGER".into())?;
        let (jobs, inbox) = mpsc::channel::<Job<S::Batch>>();
        let (report, done) = mpsc::channel::<Done>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let wake = |r: Done| {
                    let _ = report.send(r);
                    // A wake-up lost to a full pipe is one of many still unread.
                    let _ = theirs.send(&[][..], zmq::DONTWAIT);
                };
                let mut unsynced = false;
                while let Ok(first) = inbox.recv() {
                    let mut mark = first.mark;
                    let mut count = usize::from(first.mark.is_some());
                    let mut written = sink.write(first.batch);
                    while written.is_ok()
                        && let Ok(next) = inbox.try_recv()
                    {
                        mark = next.mark.or(mark);
                        count += usize::from(next.mark.is_some());
                        written = sink.write(next.batch);
                    }
                    unsynced = true;
                    let result = match mark {
                        Some(m) => written.and_then(|()| sink.sync()).map(|()| (m, count)),
                        // Nothing waits on these: they are synced with the next batch.
                        None => written.map(|()| (0, 0)),
                    };
                    match result {
                        Ok((_, 0)) => {}
                        Ok(r) => {
                            unsynced = false;
                            wake(Ok(r));
                        }
                        Err(e) => {
                            wake(Err(e));
                            return;
                        }
                    }
                }
                if unsynced && let Err(e) = sink.sync() {
                    wake(Err(e));
                }
            })
            .map_err(|error| crate::Error::Spawn {
                what: "the sync thread",
                error,
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            wake: ours,
            thread: Some(thread),
            pending: 0,
        })
    }

    /// Hands a batch over; `mark` is reported by [`Syncer::completed`] once it and
    /// everything before it are durable (`None`: nothing waits on it).
    pub(crate) fn submit(&mut self, batch: S::Batch, mark: Option<u64>) -> io::Result<()> {
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|j| j.send(Job { batch, mark }).is_ok());
        if !sent {
            return Err(self.stopped());
        }
        self.pending += usize::from(mark.is_some());
        Ok(())
    }

    /// Batches handed over whose marks are not yet reported.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// The socket that turns readable when a mark is reported, for the loop's poll.
    pub(crate) fn poll_item(&self) -> zmq::PollItem<'_> {
        self.wake.as_poll_item(zmq::POLLIN)
    }

    /// The highest mark reported since the last call, if any; the error that stopped
    /// the thread, once it has.
    pub(crate) fn completed(&mut self) -> io::Result<Option<u64>> {
        // Wake-ups first: one that lands after the reports below were read only makes
        // the next poll return once more, where one left unread would make every poll
        // return at once.
        while self.wake.recv_bytes(zmq::DONTWAIT).is_ok() {}
        let mut highest = None;
        loop {
            match self.done.try_recv() {
                Ok(Ok((mark, jobs))) => {
                    highest = Some(mark);
                    self.pending = self.pending.saturating_sub(jobs);
                }
                Ok(Err(e)) => {
                    // Nothing more may be written after a failure.
                    self.jobs = None;
                    return Err(e);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    if self.pending > 0 {
                        return Err(self.stopped());
                    }
                    break;
                }
            }
        }
        Ok(highest)
    }

    /// Waits until everything handed over is durable, then stops the thread; the
    /// highest mark not yet reported, if any.
    pub(crate) fn finish(mut self) -> io::Result<Option<u64>> {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut highest = None;
        while let Ok(r) = self.done.try_recv() {
            let (mark, jobs) = r?;
            if jobs > 0 {
                highest = Some(mark);
                self.pending = self.pending.saturating_sub(jobs);
            }
        }
        if self.pending > 0 {
            return Err(self.stopped());
        }
        Ok(highest)
    }

    fn stopped(&self) -> io::Error {
        io::Error::other("the sync thread stopped")
    }
}

impl<S: Sink> Drop for Syncer<S> {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records what reached it and how often it was synced.
    #[derive(Clone, Default)]
    struct Disk {
        written: Arc<Mutex<Vec<u32>>>,
        synced: Arc<Mutex<Vec<usize>>>,
        fail_at: Option<u32>,
    }

    impl Sink for Disk {
        type Batch = u32;
        fn write(&mut self, batch: u32) -> io::Result<()> {
            if self.fail_at == Some(batch) {
                return Err(io::Error::other("disk full"));
            }
            self.written.lock().unwrap().push(batch);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            let n = self.written.lock().unwrap().len();
            self.synced.lock().unwrap().push(n);
            Ok(())
        }
    }

    fn wait(s: &mut Syncer<Disk>) -> io::Result<Option<u64>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut items = [s.poll_item()];
            zmq::poll(&mut items, 100).unwrap();
            if let Some(m) = s.completed()? {
                return Ok(Some(m));
            }
            assert!(std::time::Instant::now() < deadline, "no report");
        }
    }

    #[test]
    fn every_mark_is_reported_after_a_sync_that_covers_it() {
        let ctx = zmq::Context::new();
        let disk = Disk::default();
        let mut s = Syncer::start(&ctx, "test-sync", disk.clone()).unwrap();
        for i in 1..=200 {
            s.submit(i, Some(u64::from(i))).unwrap();
        }
        let mut last = 0;
        while last < 200 {
            let m = wait(&mut s).unwrap().unwrap();
            assert!(m > last, "marks only grow");
            // Everything up to the mark was written before the sync that reported it.
            let synced = disk.synced.lock().unwrap().clone();
            assert!(synced.iter().any(|n| *n as u64 >= m), "{m} {synced:?}");
            last = m;
        }
        assert_eq!(s.pending(), 0);
        // Batches that arrived together shared a sync.
        assert!(disk.synced.lock().unwrap().len() <= 200);
        // A batch nothing waits on is still synced before the thread stops.
        s.submit(201, None).unwrap();
        assert_eq!(s.finish().unwrap(), None);
        let written = disk.written.lock().unwrap().clone();
        assert_eq!(written, (1..=201).collect::<Vec<_>>());
        assert_eq!(disk.synced.lock().unwrap().last(), Some(&201));
    }

    #[test]
    fn a_failed_write_is_reported_and_nothing_after_it_is_acknowledged() {
        let ctx = zmq::Context::new();
        let disk = Disk {
            fail_at: Some(3),
            ..Disk::default()
        };
        let mut s = Syncer::start(&ctx, "test-sync", disk).unwrap();
        s.submit(1, Some(1)).unwrap();
        assert_eq!(wait(&mut s).unwrap(), Some(1));
        s.submit(2, Some(2)).unwrap();
        s.submit(3, Some(3)).unwrap();
        let mut reported = None;
        let err = loop {
            match wait(&mut s) {
                Ok(m) => reported = m,
                Err(e) => break e,
            }
        };
        assert_eq!(err.to_string(), "disk full");
        assert_ne!(reported, Some(3));
        assert!(s.submit(4, Some(4)).is_err(), "the thread has stopped");
    }
}
