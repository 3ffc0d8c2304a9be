//! The few socket chores every loop shares: one process-wide context, multipart
//! receive into `Bytes`, multipart send, EINTR-proof polls, connection counts. Public for
//! programs that drive libzmq beside scale0 (the benchmarks' baselines).

use crate::error::{Error, Result, ZmqContext};
use crate::security::{HANDSHAKE_FAILURES, HandshakeLog};
use bytes::Bytes;
use scale0_proto::Frames;
use std::sync::OnceLock;

pub use crate::clock::Clock;

/// The process-wide ZeroMQ context; `inproc` endpoints only connect within one.
pub fn context() -> zmq::Context {
    static CONTEXT: OnceLock<zmq::Context> = OnceLock::new();
    CONTEXT.get_or_init(zmq::Context::new).clone()
}

/// Caps one frame read from any peer of `socket` at `max_bytes` (libzmq's
/// ZMQ_MAXMSGSIZE): a peer that sends a larger frame is disconnected before the frame is
/// stored, so an oversized frame costs about the bound in memory, not its own size. The
/// cap is per frame: a message of many frames each under it is read whole before the
/// server's own total check refuses it.
pub(crate) fn cap_frames(socket: &zmq::Socket, max_bytes: usize) -> Result<()> {
    socket
        .set_maxmsgsize(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .context(|| "setting MAXMSGSIZE".into())
}

/// The frame bound of a client or worker reading up to `max_message_bytes` per
/// message: a bundle's packed frame may be longer, when it asks for bundles.
pub(crate) fn frame_bound(max_message_bytes: usize, bundle: bool) -> usize {
    if bundle {
        max_message_bytes.max(scale0_proto::bundle::MAX_BYTES)
    } else {
        max_message_bytes
    }
}

/// Starts a monitor on `socket` for `events` and returns the PAIR that reads it; `ctx`
/// must be the socket's own (the monitor is an `inproc` endpoint). Its events must be read
/// regularly, and the monitor stopped ([`stop_monitor`]) before the reader closes: libzmq's
/// I/O thread blocks on a full or orphaned monitor pipe.
pub(crate) fn monitor(
    ctx: &zmq::Context,
    socket: &zmq::Socket,
    events: i32,
    what: &str,
) -> Result<zmq::Socket> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static MONITORS: AtomicU64 = AtomicU64::new(0);
    let addr = format!(
        "inproc://scale0-monitor-{}",
        MONITORS.fetch_add(1, Ordering::Relaxed)
    );
    socket
        .monitor(&addr, events)
        .context(|| format!("monitoring {what}"))?;
    let reader = ctx
        .socket(zmq::PAIR)
        .context(|| "creating a monitor reader".into())?;
    reader
        .connect(&addr)
        .context(|| format!("connecting to {addr}"))?;
    Ok(reader)
}

/// The event id and value of a monitor message's first frame (libzmq writes a u16 id and
/// a u32 value in the machine's byte order); `None` for a frame too short to be one.
pub(crate) fn monitor_event(frame: &[u8]) -> Option<(u16, u32)> {
    match *frame {
        [e0, e1, v0, v1, v2, v3, ..] => Some((
            u16::from_ne_bytes([e0, e1]),
            u32::from_ne_bytes([v0, v1, v2, v3]),
        )),
        _ => None,
    }
}

/// Stops the monitor of `socket`, which must happen before its reader closes: libzmq's
/// I/O thread sends monitor events blocking, so an event for a reader that is gone (a
/// peer disconnecting while the socket closes, say) would stall every socket of the
/// context for good. The `zmq` crate cannot pass the NULL endpoint that means "stop", so
/// this starts a replacement monitor that reports nothing: starting one stops the old.
pub fn stop_monitor(socket: &zmq::Socket) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STOPPED: AtomicU64 = AtomicU64::new(0);
    let addr = format!(
        "inproc://scale0-monitor-stopped-{}",
        STOPPED.fetch_add(1, Ordering::Relaxed)
    );
    if let Err(e) = socket.monitor(&addr, 0) {
        tracing::debug!(error = %e, "stopping a socket monitor");
    }
}

/// `zmq::poll` for loops that must survive signals: a poll interrupted by one (SIGTERM
/// arriving on this thread, say) reports nothing ready instead of failing, and the loop
/// goes round again, where it notices the shutdown the signal asked for.
pub fn poll(
    items: &mut [zmq::PollItem<'_>],
    timeout_ms: i64,
) -> std::result::Result<i32, zmq::Error> {
    match zmq::poll(items, timeout_ms) {
        Err(zmq::Error::EINTR) => Ok(0),
        other => other,
    }
}

/// [`poll`] on one socket for input.
pub(crate) fn poll_in(
    socket: &zmq::Socket,
    timeout_ms: i64,
) -> std::result::Result<i32, zmq::Error> {
    poll(&mut [socket.as_poll_item(zmq::POLLIN)], timeout_ms)
}

/// Repeats a blocking call that a signal interrupted.
pub(crate) fn retry_eintr<T>(
    mut call: impl FnMut() -> std::result::Result<T, zmq::Error>,
) -> std::result::Result<T, zmq::Error> {
    loop {
        match call() {
            Err(zmq::Error::EINTR) => {}
            other => return other,
        }
    }
}

/// Receives one whole multipart message without blocking; `Ok(None)` when none is ready.
pub fn try_recv(socket: &zmq::Socket) -> Result<Option<Frames>> {
    match socket.recv_multipart(zmq::DONTWAIT) {
        Ok(parts) => Ok(Some(parts.into_iter().map(Bytes::from).collect())),
        Err(zmq::Error::EAGAIN) => Ok(None),
        Err(e) => Err(e).context(|| "receiving a message".into()),
    }
}

/// Receives one whole multipart message, waiting up to `timeout_ms` (negative: for
/// ever); `Ok(None)` when none came in time or a signal cut the wait short.
///
/// For a loop on one socket this is far cheaper than [`poll_in`] and [`try_recv`]:
/// libzmq takes a message that is already there without a system call, and otherwise
/// sleeps in one `poll`, where `zmq_poll` makes three or four system calls each time
/// and a non-blocking receive that finds nothing makes one more. Measured in the broker
/// (BENCHMARKS.md, "System calls per request").
pub fn recv_timeout(socket: &zmq::Socket, timeout_ms: i64) -> Result<Option<Frames>> {
    Ok(recv_msgs(socket, timeout_ms, false)?.map(|(frames, _)| frames))
}

/// A loop's way to wait for the next message on its one socket: [`recv_timeout`], after
/// spinning a while where the loop is configured to.
///
/// Waking a thread that sleeps in `poll` costs tens of microseconds on a virtual machine
/// (the vCPU sleeps too). Spinning first (looking again and again, yielding the core in
/// between) saves that in a busy conversation whose messages come microseconds apart.
/// It stops after [`Receiver::MISSES`] fruitless spins in a row and then spins only
/// before one sleep in [`Receiver::PROBE`], to notice when messages come close together
/// again: an idle or sparsely used loop costs next to no CPU for it.
#[derive(Debug)]
pub(crate) struct Receiver {
    spin: std::time::Duration,
    /// The User-Id of each message is wanted (CURVE).
    with_user: bool,
    /// Spins in a row that found nothing.
    misses: u32,
    /// Sleeps so far.
    sleeps: u32,
}

impl Receiver {
    /// Fruitless spins in a row after which spinning mostly stops.
    pub(crate) const MISSES: u32 = 8;
    /// Once stopped, a spin before one sleep in this many.
    pub(crate) const PROBE: u32 = 64;

    /// Spinning up to `spin_us` microseconds (0 never) before each sleep; with the
    /// User-Id of each message when `with_user`.
    pub(crate) fn new(spin_us: u64, with_user: bool) -> Self {
        Self {
            spin: std::time::Duration::from_micros(spin_us),
            with_user,
            misses: 0,
            sleeps: 0,
        }
    }

    /// The next message and its User-Id (when asked for), waiting up to `timeout_ms`.
    pub(crate) fn recv(
        &mut self,
        socket: &zmq::Socket,
        timeout_ms: i64,
    ) -> Result<Option<(Frames, Option<String>)>> {
        let mut received = None;
        if timeout_ms != 0
            && !self.spin.is_zero()
            && (self.misses < Self::MISSES || self.sleeps.is_multiple_of(Self::PROBE))
        {
            let until = std::time::Instant::now() + self.spin;
            while received.is_none() && std::time::Instant::now() < until {
                received = recv_msgs(socket, 0, self.with_user)?;
                if received.is_none() {
                    std::thread::yield_now();
                }
            }
            self.misses = if received.is_some() {
                0
            } else {
                self.misses.saturating_add(1)
            };
        }
        if received.is_none() {
            self.sleeps = self.sleeps.wrapping_add(1);
            received = recv_msgs(socket, timeout_ms, self.with_user)?;
        }
        Ok(received)
    }
}

/// Like [`recv_timeout`], with the User-Id the connection authenticated as (ZAP) when
/// `with_user` (looking it up allocates, so only where CURVE is on).
fn recv_msgs(
    socket: &zmq::Socket,
    timeout_ms: i64,
    with_user: bool,
) -> Result<Option<(Frames, Option<String>)>> {
    // RCVTIMEO is a plain field of the socket; setting it makes no system call.
    let timeout = i32::try_from(timeout_ms.max(-1)).unwrap_or(i32::MAX);
    socket
        .set_rcvtimeo(timeout)
        .context(|| "setting RCVTIMEO".into())?;
    let mut first = match socket.recv_msg(0) {
        Ok(m) => m,
        Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => return Ok(None),
        Err(e) => return Err(e).context(|| "receiving a message".into()),
    };
    // Looking a property up allocates (the name becomes a C string): only under CURVE.
    let user = if with_user {
        first
            .gets("User-Id")
            .filter(|u| !u.is_empty())
            .map(str::to_string)
    } else {
        None
    };
    let mut more = first.get_more();
    let mut frames = Vec::with_capacity(if more { 6 } else { 1 });
    frames.push(Bytes::copy_from_slice(&first));
    drop(first);
    while more {
        // The rest of a multipart message is already here: libzmq delivers it whole.
        let part = retry_eintr(|| socket.recv_msg(0)).context(|| "receiving a message".into())?;
        more = part.get_more();
        frames.push(Bytes::copy_from_slice(&part));
    }
    Ok(Some((frames, user)))
}

/// Sends a multipart message without blocking.
pub fn send(socket: &zmq::Socket, frames: &Frames) -> std::result::Result<(), zmq::Error> {
    socket.send_multipart(frames.iter().map(|f| &f[..]), zmq::DONTWAIT)
}

/// Catches endpoint mistakes libzmq lets through: it takes `tcp://host:99999` and
/// silently binds port 99999 mod 65536.
pub(crate) fn check_endpoint(endpoint: &str) -> Result<()> {
    if let Some(rest) = endpoint.strip_prefix("tcp://") {
        let port = rest.rsplit_once(':').map(|(_, p)| p);
        let valid = match port {
            Some("*") => true,
            Some(p) => p.parse::<u16>().is_ok(),
            None => false,
        };
        if !valid {
            return Err(Error::InvalidConfig(format!(
                "endpoint {endpoint:?} needs a port from 0 to 65535, or * for any free port"
            )));
        }
    }
    Ok(())
}

/// Connects `socket` to `endpoint`.
pub fn connect(socket: &zmq::Socket, endpoint: &str) -> Result<()> {
    check_endpoint(endpoint)?;
    socket
        .connect(endpoint)
        .context(|| format!("connecting to {endpoint}"))
}

/// Binds `endpoint` and returns the endpoint actually bound (the real port for `:*`).
pub fn bind(socket: &zmq::Socket, endpoint: &str) -> Result<String> {
    check_endpoint(endpoint)?;
    socket
        .bind(endpoint)
        .context(|| format!("binding {endpoint}"))?;
    let bound = socket
        .get_last_endpoint()
        .context(|| format!("reading the endpoint bound for {endpoint}"))?;
    Ok(bound.unwrap_or_else(|raw| String::from_utf8_lossy(&raw).into_owned()))
}

/// Dead hosts on pipeline connections are found by TCP keepalive (idle 10 s, then 3 probes
/// 5 s apart), not ZeroMQ heartbeats: a worker stops reading while its slots are busy, so
/// it cannot answer a PING in time. (With heartbeats on, libzmq 4.3.5 also aborted when a
/// peer went away from a connection whose input was stopped: patched now, ARCHITECTURE.md.)
const KEEPALIVE_IDLE_S: i32 = 10;
const KEEPALIVE_INTVL_S: i32 = 5;
const KEEPALIVE_CNT: i32 = 3;

/// A socket of `kind` that drops what is unsent when closed (no linger) and queues `hwm`
/// messages each way; `what` names it in errors.
pub fn plain_socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    hwm: i32,
    what: &str,
) -> Result<zmq::Socket> {
    let s = ctx
        .socket(kind)
        .context(|| format!("creating the {what} socket"))?;
    s.set_linger(0).context(|| "setting LINGER".into())?;
    s.set_sndhwm(hwm).context(|| "setting SNDHWM".into())?;
    s.set_rcvhwm(hwm).context(|| "setting RCVHWM".into())?;
    Ok(s)
}

/// A PUSH or PULL socket for a pipeline stage: [`plain_socket`] with TCP keepalive.
pub fn pipeline_socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    hwm: i32,
    what: &str,
) -> Result<zmq::Socket> {
    let s = plain_socket(ctx, kind, hwm, what)?;
    s.set_tcp_keepalive(1)
        .context(|| "setting TCP_KEEPALIVE".into())?;
    s.set_tcp_keepalive_idle(KEEPALIVE_IDLE_S)
        .context(|| "setting TCP_KEEPALIVE_IDLE".into())?;
    s.set_tcp_keepalive_intvl(KEEPALIVE_INTVL_S)
        .context(|| "setting TCP_KEEPALIVE_INTVL".into())?;
    s.set_tcp_keepalive_cnt(KEEPALIVE_CNT)
        .context(|| "setting TCP_KEEPALIVE_CNT".into())?;
    Ok(s)
}

/// Counts connections on a bound socket through a monitor: accepted minus disconnected.
/// With CURVE, the same monitor reports the handshakes that failed (a socket has one
/// monitor), and the counter logs them; a refused peer is counted while it is connected,
/// until its handshake fails.
pub struct ConnectionCounter {
    monitor: zmq::Socket,
    count: i64,
    handshakes: Option<HandshakeLog>,
}

impl std::fmt::Debug for ConnectionCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionCounter")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl ConnectionCounter {
    /// `ctx` must be the socket's own: the monitor is an `inproc` endpoint.
    pub fn watch(
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        what: &str,
        curve: bool,
    ) -> Result<Self> {
        let mut events = i32::from(zmq::SocketEvent::ACCEPTED.to_raw())
            | i32::from(zmq::SocketEvent::DISCONNECTED.to_raw());
        if curve {
            events |= HANDSHAKE_FAILURES;
        }
        let monitor = monitor(ctx, socket, events, &format!("the {what} socket"))?;
        Ok(Self {
            monitor,
            count: 0,
            handshakes: curve.then(HandshakeLog::default),
        })
    }

    /// Readable when connection events wait: poll it beside the counted socket.
    pub fn poll_item(&self) -> zmq::PollItem<'_> {
        self.monitor.as_poll_item(zmq::POLLIN)
    }

    /// Reads pending events; returns the new count if it changed.
    pub fn update(&mut self) -> Result<Option<usize>> {
        let before = self.count;
        while let Some(event) = try_recv(&self.monitor)? {
            // Event frame: u16 event id, u32 value (then a frame with the endpoint).
            let id = event
                .first()
                .and_then(|f| monitor_event(f))
                .map_or(0, |(id, _)| id);
            if id == zmq::SocketEvent::ACCEPTED.to_raw() {
                self.count += 1;
            } else if id == zmq::SocketEvent::DISCONNECTED.to_raw() {
                self.count = (self.count - 1).max(0);
            } else if let Some(log) = &mut self.handshakes {
                log.event(&event);
            }
        }
        Ok((self.count != before).then(|| usize::try_from(self.count).unwrap_or(0)))
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        usize::try_from(self.count).unwrap_or(0)
    }
}

/// `tcp://*:5557` as a local peer would connect to it: `tcp://127.0.0.1:5557`.
pub fn local_endpoint(bound: &str) -> String {
    for any in ["tcp://*:", "tcp://0.0.0.0:"] {
        if let Some(port) = bound.strip_prefix(any) {
            return format!("tcp://127.0.0.1:{port}");
        }
    }
    if let Some(port) = bound.strip_prefix("tcp://[::]:") {
        return format!("tcp://[::1]:{port}");
    }
    bound.to_string()
}

#[cfg(test)]
mod tests {
    use super::{Receiver, check_endpoint, local_endpoint};

    #[test]
    fn bound_wildcards_become_loopback() {
        assert_eq!(local_endpoint("tcp://0.0.0.0:5557"), "tcp://127.0.0.1:5557");
        assert_eq!(local_endpoint("tcp://*:1"), "tcp://127.0.0.1:1");
        assert_eq!(local_endpoint("tcp://[::]:9"), "tcp://[::1]:9");
        assert_eq!(local_endpoint("tcp://127.0.0.1:9"), "tcp://127.0.0.1:9");
    }

    fn pair(name: &str) -> (zmq::Socket, zmq::Socket) {
        let ctx = super::context();
        let a = ctx.socket(zmq::PAIR).unwrap();
        let b = ctx.socket(zmq::PAIR).unwrap();
        a.bind(&format!("inproc://{name}")).unwrap();
        b.connect(&format!("inproc://{name}")).unwrap();
        (a, b)
    }

    #[test]
    fn a_receiver_takes_what_is_there_and_waits_for_what_is_not() {
        let (tx, rx) = pair("receiver-takes");
        let mut r = Receiver::new(100, false);
        assert!(r.recv(&rx, 1).unwrap().is_none());
        tx.send_multipart(["a", "b"], 0).unwrap();
        let (frames, user) = r.recv(&rx, 1000).unwrap().unwrap();
        assert_eq!(frames, vec!["a", "b"]);
        assert_eq!(user, None);
        // A message sent while the receiver sleeps wakes it.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send("late", 0).unwrap();
            tx
        });
        let (frames, _) = r.recv(&rx, 10_000).unwrap().unwrap();
        assert_eq!(frames, vec!["late"]);
        drop(sender.join());
    }

    #[test]
    fn a_receiver_stops_spinning_when_spins_find_nothing_and_probes_now_and_then() {
        let (_tx, rx) = pair("receiver-stops");
        let mut r = Receiver::new(50, false);
        for _ in 0..Receiver::MISSES {
            assert!(r.recv(&rx, 1).unwrap().is_none());
        }
        assert_eq!(r.misses, Receiver::MISSES);
        // From now on only one sleep in PROBE is preceded by a spin.
        let before = r.misses;
        for _ in 0..Receiver::PROBE {
            assert!(r.recv(&rx, 1).unwrap().is_none());
        }
        assert_eq!(
            r.misses,
            before + 1,
            "one probe per {} sleeps",
            Receiver::PROBE
        );
        // Without spinning configured there are no spins to miss.
        let mut still = Receiver::new(0, false);
        for _ in 0..4 {
            assert!(still.recv(&rx, 1).unwrap().is_none());
        }
        assert_eq!(still.misses, 0);
    }

    #[test]
    fn tcp_ports_are_checked() {
        for ok in [
            "tcp://*:5555",
            "tcp://127.0.0.1:*",
            "tcp://[::1]:0",
            "inproc://x",
            "ipc:///tmp/s",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "tcp://127.0.0.1:99999",
            "tcp://localhost",
            "tcp://h:-1",
            "tcp://h:port",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
