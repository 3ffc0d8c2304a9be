"""A Majordomo worker (MDP/0.2, RFC 18 framing, with scale0's credit) serving a Python
function. The socket loop heartbeats while handlers run on a thread pool, so a long
handler never looks dead (docs/protocol.md, "Worker rules" and "Worker credit")."""

from __future__ import annotations

import collections
import concurrent.futures
import inspect
import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, Callable, TypeVar

import zmq

from . import _sockets, _wire
from .keys import KeySpec

log = logging.getLogger("scale0.worker")

#: A handler: called with the request's frames (bytes) as positional arguments; returns
#: the reply (bytes, str, a sequence of those, or None for an empty body), or is a
#: generator whose yields are partial replies (see `Worker`).
Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)

_PARTIAL, _FINAL = _wire.W_PARTIAL, _wire.W_FINAL
_Result = tuple[int, bytes, bytes, list[bytes]]  # epoch, address, command, body
_NOTHING = object()


def _reply(value: Any) -> list[bytes]:
    if value is None:
        return []
    if isinstance(value, Sequence):  # bytes and str too: one frame
        return _wire.body(value)
    raise TypeError(f"a reply is bytes, str, a sequence of them or None, not {type(value)}")


class Worker:
    """A worker of `service` on the broker at `endpoint` (one endpoint: run a Worker per
    broker to serve several), serving a Python function.

    The function gets the request's frames as positional `bytes` arguments and returns the
    reply: `bytes` or `str` (one frame), a sequence of them (several frames) or None (an
    empty body). A generator function streams: each value it yields is sent as a partial
    reply except the last, which is the final reply, unless the generator returns a
    value, which is then the final reply (and every yield a partial). An exception
    becomes the error reply `scale0.error`, message, which a `Client` raises as
    `ServiceError`.

    `capacity` is how many requests the broker may hand this worker at once (scale0's
    credit extension); they run on a pool of that many threads. The worker heartbeats
    every `heartbeat_interval` seconds from its socket loop, also while handlers run;
    after `heartbeat_liveness` intervals of broker silence it reconnects on a fresh
    socket, backing off from `reconnect_initial` doubling up to `reconnect_max` seconds;
    told DISCONNECT it reconnects after `reconnect_initial`. It does not re-register
    while a handler still runs a request of the old connection (that reply is dropped;
    the broker has given the request to another worker).

    On SIGTERM or SIGINT (when `serve` runs on the main thread) or `stop()`, it takes no
    new request, finishes those it holds (for at most `grace` seconds), sends their
    replies, then DISCONNECT, and `serve` returns. Requests the broker sent meanwhile go
    back to its queue with the DISCONNECT.

        worker = scale0.Worker("tcp://localhost:5555", "upper")

        @worker.handler
        def upper(body: bytes) -> bytes:
            return body.upper()

        worker.serve()
    """

    def __init__(
        self,
        endpoint: str,
        service: str,
        capacity: int = 1,
        *,
        heartbeat_interval: float = 2.5,
        heartbeat_liveness: int = 3,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 5.0,
        grace: float = 30.0,
        curve_server_key: KeySpec | None = None,
        curve_key: KeySpec | None = None,
        max_message_bytes: int = _wire.DEFAULT_MAX_MESSAGE_BYTES,
        green: bool | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        if not isinstance(endpoint, str):
            # One DEALER to several brokers would send READY to one and heartbeats to
            # each in turn: run one Worker per broker instead.
            raise TypeError("a Worker serves one broker endpoint (a str)")
        #: The broker's endpoint.
        self.endpoint = endpoint
        name = service.encode()
        if not 1 <= len(name) <= 255 or service.startswith("mmi."):
            raise ValueError(f"a service name is 1 to 255 bytes and not mmi.*: {service!r}")
        if not 1 <= capacity <= 1024:
            raise ValueError("capacity is 1 to 1024")
        #: The service served.
        self.service = service
        #: Requests held at once.
        self.capacity = capacity
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_liveness = heartbeat_liveness
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.grace = grace
        self._curve = _sockets.curve(curve_server_key, curve_key)
        self._max_message_bytes = max_message_bytes
        self._zmq = _sockets.zmq_module(green)
        self._context = context
        self._fn: Handler | None = None
        self._results: collections.deque[_Result] = collections.deque()
        self._wake: _sockets.Wake | None = None
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        #: Counters: requests served, handler failures, reconnects, malformed messages.
        self.stats = {"served": 0, "failed": 0, "reconnects": 0, "malformed": 0}
        #: Set once the worker has sent READY on its first connection.
        self.ready = threading.Event()

    def handler(self, fn: F) -> F:
        """Decorator: makes `fn` this worker's handler (returned unchanged)."""
        self._fn = fn
        return fn

    def start(self, fn: Handler | None = None) -> Worker:
        """Serves on a background thread; returns at once (stop with `stop()`)."""
        self._thread = threading.Thread(
            target=self.serve, args=(fn,), name="scale0-worker", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Asks the worker to finish what it holds, say DISCONNECT and return from
        `serve`; with `wait`, waits until it has (up to `timeout` seconds)."""
        self._stopping.set()
        if self._wake is not None:
            self._wake.ring()
        if wait and threading.current_thread() is not self._thread:
            self._done.wait(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Waits for `serve` to return; True if it has."""
        return self._done.wait(timeout)

    def serve(self, fn: Handler | None = None) -> None:
        """Serves requests with `fn` (or the `handler`-decorated function) until stopped."""
        if fn is not None:
            self._fn = fn
        if self._fn is None:
            raise ValueError("no handler: pass one to serve() or decorate it with handler")
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            self._loop()
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            self._done.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the requests held, then disconnecting", signum)
        self.stop(wait=False)

    # -- the handler threads ----------------------------------------------------------

    def _post(self, result: _Result) -> None:
        self._results.append(result)
        if self._wake is not None:
            self._wake.ring()

    def _handle(self, fn: Handler, epoch: int, address: bytes, body: list[bytes]) -> None:
        try:
            out = fn(*body)
            if inspect.isgenerator(out):
                last: Any = _NOTHING
                while True:
                    try:
                        item = next(out)
                    except StopIteration as end:
                        if end.value is not None:
                            if last is not _NOTHING:
                                self._post((epoch, address, _PARTIAL, _reply(last)))
                            last = end.value
                        break
                    if last is not _NOTHING:
                        self._post((epoch, address, _PARTIAL, _reply(last)))
                    last = item
                out = None if last is _NOTHING else last
            reply = _reply(out)
        except Exception as e:  # the handler's failure is the client's error reply
            log.exception("the handler of %s failed", self.service)
            self.stats["failed"] += 1
            reply = [_wire.ERROR_MARKER, (str(e) or type(e).__name__).encode()]
        self._post((epoch, address, _FINAL, reply))

    # -- the socket loop --------------------------------------------------------------

    def _loop(self) -> None:
        fn = self._fn
        assert fn is not None
        ctx: Any = self._zmq.Context() if self._context is None else self._context
        wake = self._wake = _sockets.Wake()
        if self._stopping.is_set():
            wake.ring()
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.capacity, thread_name_prefix="scale0-handler"
        )
        poller = self._zmq.Poller()
        poller.register(wake.fd, zmq.POLLIN)
        interval = self.heartbeat_interval
        sock: Any = None
        epoch = 0
        busy = 0  # requests of the current connection being handled
        stale = 0  # requests of earlier connections still being handled
        backoff = self.reconnect_initial
        reconnect_at = time.monotonic()
        alive_until = math.inf
        next_beat = math.inf
        stop_by = math.inf

        def close() -> None:
            nonlocal sock, epoch, busy, stale, alive_until, next_beat
            if sock is not None:
                poller.unregister(sock)
                sock.close(0)
                sock = None
            epoch += 1
            stale += busy
            busy = 0
            alive_until = next_beat = math.inf

        def send(*frames: bytes) -> None:
            try:
                _sockets.send_frames(sock, [_wire.MDPW02, *frames])
            except zmq.Again:
                log.warning("send to the broker would block; dropped")

        try:
            while True:
                wake.clear()
                now = time.monotonic()
                # Replies first: they free credit and let a stop finish.
                while self._results:
                    r_epoch, address, command, body = self._results.popleft()
                    if r_epoch != epoch or sock is None:
                        if command == _FINAL:
                            stale -= 1
                        continue
                    send(command, address, b"", *body)
                    if command == _FINAL:
                        busy -= 1
                        self.stats["served"] += 1
                if self._stopping.is_set():
                    if stop_by == math.inf:
                        stop_by = now + self.grace
                    if busy == 0 or now >= stop_by or sock is None:
                        if sock is not None:
                            send(_wire.W_DISCONNECT)
                        break
                if (
                    sock is None
                    and stale == 0
                    and now >= reconnect_at
                    and not self._stopping.is_set()
                ):
                    sock = _sockets.dealer(
                        ctx,
                        [self.endpoint],
                        identity=None,
                        curve=self._curve,
                        max_message_bytes=self._max_message_bytes,
                    )
                    poller.register(sock, zmq.POLLIN)
                    ready = [_wire.W_READY, self.service.encode()]
                    if self.capacity > 1:
                        ready.append(b"capacity=%d" % self.capacity)
                    send(*ready)
                    self.ready.set()
                    alive_until = now + interval * self.heartbeat_liveness
                    next_beat = now + interval
                if sock is not None and now >= next_beat:
                    send(_wire.W_HEARTBEAT)
                    next_beat = now + interval
                if sock is not None and now >= alive_until:
                    log.warning(
                        "no word from the broker for %.1f s; reconnecting in %.1f s",
                        interval * self.heartbeat_liveness,
                        backoff,
                    )
                    close()
                    self.stats["reconnects"] += 1
                    reconnect_at = now + backoff
                    backoff = min(backoff * 2, self.reconnect_max)
                due = min(next_beat, alive_until, stop_by)
                if sock is None and not self._stopping.is_set():
                    due = min(due, reconnect_at)
                wait = -1 if due == math.inf else max(0, math.ceil((due - now) * 1000))
                events = dict(poller.poll(wait))
                if sock is None or sock not in events:
                    continue
                while sock is not None:
                    try:
                        message = _sockets.recv_frames(sock)
                    except zmq.Again:
                        break
                    now = time.monotonic()
                    alive_until = now + interval * self.heartbeat_liveness
                    backoff = self.reconnect_initial
                    if len(message) < 2 or message[0] != _wire.MDPW02:
                        self._malformed(message, "not MDP/0.2 worker framing")
                        continue
                    command = message[1]
                    if command == _wire.W_REQUEST:
                        if len(message) < 4 or message[3] != b"" or not message[2]:
                            self._malformed(message, "REQUEST needs an address and a delimiter")
                            continue
                        if self._stopping.is_set():
                            continue  # not started: DISCONNECT gives it back
                        busy += 1
                        pool.submit(self._handle, fn, epoch, message[2], message[4:])
                    elif command == _wire.W_HEARTBEAT:
                        pass
                    elif command == _wire.W_DISCONNECT:
                        log.info("the broker said DISCONNECT; reconnecting")
                        close()
                        self.stats["reconnects"] += 1
                        reconnect_at = now + self.reconnect_initial
                    else:
                        self._malformed(message, "unexpected command")
        finally:
            if sock is not None:
                # Linger a little: the last replies and the DISCONNECT just queued must
                # reach the broker before the process exits.
                sock.close(linger=1000)
            pool.shutdown(wait=False)
            self._wake = None
            wake.close()
            if self._context is None:
                ctx.term()

    def _malformed(self, message: list[bytes], why: str) -> None:
        self.stats["malformed"] += 1
        _wire.log_dropped(log, self.stats["malformed"], why, message)
