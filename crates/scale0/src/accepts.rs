//! Connections a server cannot accept. Out of file descriptors, libzmq's listener keeps
//! failing `accept` (EMFILE) and every new peer waits unanswered, with nothing reported
//! but a socket-monitor event. So the server's monitor is read for those events: the
//! first refusal is logged with the open-files limit, then one line per interval while
//! it lasts, and one when connections are accepted again.

use crate::error::{Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The monitor events [`AcceptLog`] reads.
pub(crate) const ACCEPT_EVENTS: i32 =
    zmq::SocketEvent::ACCEPTED as i32 | zmq::SocketEvent::ACCEPT_FAILED as i32;

/// At most one line per this while accepts keep failing.
const LOG_EVERY: Duration = Duration::from_secs(10);

const EMFILE: u32 = 24;
const ENFILE: u32 = 23;

/// What a server's accepts have done lately, and when it last said so.
#[derive(Debug, Default)]
pub(crate) struct AcceptLog {
    /// Refusals since the last line about them.
    refused: u64,
    /// Refusals since accepts started failing.
    refused_in_all: u64,
    /// When the last line about refusals was written; `None` while accepts succeed.
    logged: Option<Instant>,
}

impl AcceptLog {
    /// Takes one monitor event (id and value, `sockets::monitor_event`); others are ignored.
    pub(crate) fn event(&mut self, now: Instant, id: u16, value: u32) {
        if i32::from(id) == zmq::SocketEvent::ACCEPT_FAILED as i32 {
            self.refused += 1;
            self.refused_in_all += 1;
            if self
                .logged
                .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
            {
                self.say_refused(value);
                self.logged = Some(now);
                self.refused = 0;
            }
        } else if i32::from(id) == zmq::SocketEvent::ACCEPTED as i32 && self.logged.is_some() {
            info!(refused = self.refused_in_all, "accepting connections again");
            *self = Self::default();
        }
    }

    fn say_refused(&self, errno: u32) {
        let why = std::io::Error::from_raw_os_error(i32::try_from(errno).unwrap_or(0));
        if matches!(errno, EMFILE | ENFILE) {
            let (soft, _) = crate::limits::fd_limits();
            let limit = soft.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
            warn!(
                open_files_limit = %limit,
                refused = self.refused,
                "refusing new connections: out of file descriptors ({why}); they are \
                 accepted again once descriptors free up (raise `ulimit -n` for more peers)"
            );
        } else {
            warn!(
                refused = self.refused,
                "refusing new connections: accept failed ({why})"
            );
        }
    }
}

/// A thread that reads a server socket's monitor into an [`AcceptLog`], for servers whose
/// monitor no other thread reads (with CURVE, the ZAP handler's thread does).
pub(crate) struct AcceptWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AcceptWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcceptWatch")
    }
}

impl AcceptWatch {
    /// Starts watching `socket` (of context `ctx`); stop it with [`AcceptWatch::stop`]
    /// before the socket closes.
    pub(crate) fn start(ctx: &zmq::Context, socket: &zmq::Socket) -> Result<Self> {
        let reader = crate::sockets::monitor(ctx, socket, ACCEPT_EVENTS, "accepts")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("scale0-accepts".into())
            .spawn(move || {
                let mut log = AcceptLog::default();
                // The monitor must be drained as fast as libzmq fills it: its I/O thread
                // blocks on a full monitor pipe, and a listener out of descriptors retries
                // its accept at once, with an event each time.
                while !flag.load(Ordering::Relaxed) {
                    if !matches!(crate::sockets::poll_in(&reader, 100), Ok(n) if n > 0) {
                        continue;
                    }
                    while let Ok(event) = reader.recv_multipart(zmq::DONTWAIT) {
                        if let Some((id, value)) =
                            event.first().and_then(|f| crate::sockets::monitor_event(f))
                        {
                            log.event(Instant::now(), id, value);
                        }
                    }
                }
            })
            .map_err(|error| Error::Spawn {
                what: "the accept watcher",
                error,
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the monitor of `socket` (see `sockets::stop_monitor`), then the thread.
    pub(crate) fn stop(self, socket: &zmq::Socket) {
        crate::sockets::stop_monitor(socket);
        drop(self);
    }
}

impl Drop for AcceptWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAILED: u16 = zmq::SocketEvent::ACCEPT_FAILED as u16;
    const ACCEPTED: u16 = zmq::SocketEvent::ACCEPTED as u16;

    #[test]
    fn refusals_are_counted_and_logged_once_per_interval_then_recovery_resets() {
        let t0 = Instant::now();
        let mut log = AcceptLog::default();
        log.event(t0, FAILED, EMFILE);
        assert_eq!(log.logged, Some(t0), "the first refusal is said at once");
        for _ in 0..1000 {
            log.event(t0 + Duration::from_secs(1), FAILED, EMFILE);
        }
        assert_eq!(log.logged, Some(t0), "not again within the interval");
        assert_eq!(log.refused, 1000);
        log.event(t0 + LOG_EVERY, FAILED, EMFILE);
        assert_eq!(log.logged, Some(t0 + LOG_EVERY));
        assert_eq!((log.refused, log.refused_in_all), (0, 1002));
        log.event(t0 + LOG_EVERY, ACCEPTED, 7);
        assert_eq!(log.logged, None, "accepting again");
        assert_eq!(log.refused_in_all, 0);
    }
}
