"""The blocking client of the scale0 native client protocol, version 1 (docs/protocol.md).

The client's DEALER lives in one background thread (a greenlet under gevent); callers in
any thread hand it requests through a queue and a wake-up, and get futures back."""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable

import zmq

from . import _requests, _sockets, _wire
from ._requests import ClientBase, FutureSink, Item, QueueSink, Replies, shut
from ._session import Call
from ._wire import Body, Frame
from .keys import KeySpec

log = logging.getLogger("scale0.client")

#: Messages read per wake before the loop looks at its timers and callers again.
READ_BATCH = 256


class Client(ClientBase):
    """A client of a scale0 broker speaking the native protocol: many requests in flight
    on one connection, each retried with the same id (the broker runs it once), answered
    with its reply frames or an exception per broker status.

    `endpoints` is one endpoint or several; with several the client connects to all of
    them and its requests (and retries) go round robin to those connected. Independent
    brokers do not share their de-duplication, so a retry that lands on another broker
    runs again there: give several endpoints only for brokers of one cluster, or accept
    at-least-once on retries.

    `timeout` is how long one attempt waits (seconds), `retries` how many times a request is
    re-sent after that. Unless told otherwise each request carries the deadline
    `timeout * (retries + 1)`, so the broker gives up when the client does.
    `curve_server_key` and `curve_key` turn on CURVE: the broker's public key (its
    `NAME.key` or the Z85 text) and this client's `NAME.key_secret`, as written by
    `scale0 keygen`. `acknowledged=True` asks the broker to confirm each request once it
    is queued (once on disk for a durable broker), and each attempt then waits `timeout`
    from that confirmation. `green=True` uses `zmq.green` for gevent; by default it is
    chosen when gevent has monkey-patched the standard library.

    The client is thread-safe: every method may be called from any thread. Use it as a
    context manager or call `close()`.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = "tcp://localhost:5555",
        *,
        timeout: float = 2.5,
        retries: int = 2,
        curve_server_key: KeySpec | None = None,
        curve_key: KeySpec | None = None,
        acknowledged: bool = False,
        max_message_bytes: int = _wire.DEFAULT_MAX_MESSAGE_BYTES,
        green: bool | None = None,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        super().__init__(
            endpoints,
            timeout=timeout,
            retries=retries,
            curve_server_key=curve_server_key,
            curve_key=curve_key,
            acknowledged=acknowledged,
            max_message_bytes=max_message_bytes,
        )
        self._zmq = _sockets.zmq_module(green)
        self._own_context = context is None
        self._ctx: Any = self._zmq.Context() if context is None else context
        self._commands: collections.deque[Call | None] = collections.deque()
        self._wake = _sockets.Wake()
        self._closed = False
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="scale0-client", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._startup_error is not None:
            self._thread.join()
            self._wake.close()
            raise self._startup_error

    # -- the callers' side ------------------------------------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the background thread; requests still in flight fail with `Scale0Error`."""
        if self._closed:
            return
        self._closed = True
        self._commands.append(None)
        self._wake.ring()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _send(self, calls: Iterable[Call]) -> None:
        if self._closed:
            raise _requests.closed()
        self._commands.extend(calls)
        self._wake.ring()

    def submit(
        self,
        service: str,
        *frames: Frame,
        timeout: float | None = None,
        retries: int | None = None,
        deadline: float | None = None,
    ) -> concurrent.futures.Future[list[bytes]]:
        """Sends a request and returns a future of its reply frames (or of the exception
        for its status). Callbacks added to the future run on the client's thread: keep
        them short. `deadline` is seconds from now that the broker may take (`math.inf`:
        none; the default is every attempt's time together)."""
        fut: concurrent.futures.Future[list[bytes]] = concurrent.futures.Future()
        sink = FutureSink(fut)
        self._send([self._call(service, _wire.frames(frames), sink, timeout, retries, deadline)])
        return fut

    def request(
        self,
        service: str,
        *frames: Frame,
        timeout: float | None = None,
        retries: int | None = None,
        deadline: float | None = None,
        on_partial: Callable[[list[bytes]], None] | None = None,
    ) -> list[bytes]:
        """Sends a request and waits for its reply frames; raises the `Scale0Error`
        subclass of the broker's status (`QueueFull`, `NoWorker`, ...), `ServiceError` when
        the worker's handler failed, `Timeout` with no answer after every attempt.
        `on_partial` is called (in this thread) with each partial reply before the final."""
        if on_partial is None:
            return self.submit(
                service, *frames, timeout=timeout, retries=retries, deadline=deadline
            ).result()
        final: list[bytes] = []
        for part, is_final in self._stream(service, frames, timeout, retries, deadline):
            if is_final:
                final = part
            else:
                on_partial(part)
        return final

    def stream(
        self,
        service: str,
        *frames: Frame,
        timeout: float | None = None,
        retries: int | None = None,
        deadline: float | None = None,
    ) -> Iterator[list[bytes]]:
        """Sends a request and yields each partial reply as it comes, then the final
        reply as the last item; an error status is raised from the iterator."""
        for part, _ in self._stream(service, frames, timeout, retries, deadline):
            yield part

    def _stream(
        self,
        service: str,
        frames: Sequence[Frame],
        timeout: float | None,
        retries: int | None,
        deadline: float | None,
    ) -> Iterator[tuple[list[bytes], bool]]:
        q: queue.SimpleQueue[Item] = queue.SimpleQueue()
        sink = QueueSink(q, 0)
        self._send([self._call(service, _wire.frames(frames), sink, timeout, retries, deadline)])
        while True:
            part, is_final = _requests.streamed(q.get())
            yield part, is_final
            if is_final:
                return

    def map(
        self,
        service: str,
        bodies: Iterable[Body],
        in_flight: int = 64,
        ordered: bool = True,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        deadline: float | None = None,
    ) -> Iterator[list[bytes]]:
        """Sends a request for each body (one frame, or a sequence of frames) with up to
        `in_flight` requests outstanding, and yields each reply's frames: in the order of
        `bodies` (`ordered=True`, like `Executor.map`) or as they come. A request that fails
        raises its exception from the iterator at its place. Unlike `Executor.map`, bodies
        are read lazily, `in_flight` ahead of the reply being yielded."""
        replies = Replies(bodies, in_flight, ordered)
        q: queue.SimpleQueue[Item] = queue.SimpleQueue()
        while True:
            batch = [
                self._call(service, body, QueueSink(q, i), timeout, retries, deadline)
                for i, body in replies.more()
            ]
            if batch:
                self._send(batch)
            if replies.finished:
                return
            while replies.waiting():
                replies.arrive(q.get())
            yield replies.next()

    # -- the socket's side: everything below runs on the client's own thread -----------

    def _run(self) -> None:
        try:
            sock, monitor = self._dealer(self._ctx)
        except Exception as e:  # noqa: BLE001 (raised again in the constructor's caller)
            self._startup_error = e
            self._started.set()
            return
        self._started.set()
        session = self._session
        poller = self._zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake.fd, zmq.POLLIN)
        opened = time.monotonic()
        try:
            while True:
                self._wake.clear()
                stop = False
                while self._commands:
                    call = self._commands.popleft()
                    if call is None:
                        stop = True
                        break
                    fut = getattr(call.sink, "future", None)
                    if fut is not None and not fut.set_running_or_notify_cancel():
                        continue  # cancelled before it left
                    self._transmit(sock, session.start(call, time.monotonic()))
                if stop:
                    break
                due = session.poll_timeout()
                wait = -1 if due is None else max(0, math.ceil((due - time.monotonic()) * 1000))
                events = dict(poller.poll(wait))
                if sock in events:
                    for _ in range(READ_BATCH):
                        try:
                            message = _sockets.recv_frames(sock)
                        except zmq.Again:
                            break
                        session.handle_message(message, time.monotonic())
                if monitor in events:
                    session.refusal = _sockets.read_refusals(monitor, session.refusal)
                now = time.monotonic()
                resend = session.handle_timeout(now)
                if resend:
                    quiet = session.silent_for(now, opened)
                    if quiet is not None:
                        log.debug("no answer from the broker for %.1f s; reconnecting", quiet)
                        poller.unregister(sock)
                        poller.unregister(monitor)
                        shut(sock, monitor)
                        sock, monitor = self._dealer(self._ctx)
                        poller.register(sock, zmq.POLLIN)
                        poller.register(monitor, zmq.POLLIN)
                        opened = now
                    for message in resend:
                        self._transmit(sock, message)
        except Exception:  # a bug: fail every caller rather than hang them
            log.exception("the scale0 client's thread failed")
        finally:
            self._closed = True
            session.fail_all(_requests.closed())
            while self._commands:
                call = self._commands.popleft()
                if call is not None:
                    fut = getattr(call.sink, "future", None)
                    if fut is None or fut.set_running_or_notify_cancel():
                        call.sink.done(None, _requests.closed())
            shut(sock, monitor)
            self._wake.close()
            if self._own_context:
                self._ctx.term()

    @staticmethod
    def _transmit(sock: Any, message: list[bytes]) -> None:
        try:
            _sockets.send_frames(sock, message)
        except zmq.Again:
            log.debug("send would block; the retry timer will re-send")
