"""The scale0 native client for asyncio, on pyzmq's `zmq.asyncio`.

`scale0.aio.Client` has the blocking client's API with coroutines: `await request(...)`,
`submit(...)` returning an `asyncio.Future`, `async for` over `stream(...)` and
`map(...)`. Its socket belongs to the event loop it is first used in; use it from that
loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from . import _requests, _sockets, _wire
from ._requests import ClientBase, FutureSink, Item, QueueSink, Replies, shut
from ._session import Call
from ._wire import Body, Frame
from .keys import KeySpec

log = logging.getLogger("scale0.aio")

__all__ = ["Client"]


class Client(ClientBase):
    """A client of a scale0 broker for asyncio: the same protocol, options and errors as
    `scale0.Client` (see there), with coroutines.

        async with scale0.aio.Client("tcp://localhost:5555") as client:
            reply = await client.request("echo", b"hello")
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
        context: zmq.asyncio.Context | None = None,
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
        self._own_context = context is None
        self._ctx: Any = zmq.asyncio.Context() if context is None else context
        self._sock: Any = None
        self._monitor: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.Task[None] | None = None
        self._kick: asyncio.Event | None = None
        self._opened = 0.0
        self._closed = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the socket; requests still in flight fail with `Scale0Error`."""
        if self._closed:
            return
        self._closed = True
        for task in [*self._tasks, *([self._timer] if self._timer else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._session.fail_all(_requests.closed())
        self._shut()
        if self._own_context:
            self._ctx.term()

    # -- the socket -------------------------------------------------------------------

    def _open(self) -> None:
        self._sock, self._monitor = self._dealer(self._ctx)
        self._opened = time.monotonic()
        self._tasks = [
            asyncio.ensure_future(self._read()),
            asyncio.ensure_future(self._watch()),
        ]

    def _shut(self) -> None:
        if self._sock is None:
            return
        shut(self._sock, self._monitor)
        self._sock = self._monitor = None

    async def _reopen(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._shut()
        self._open()

    def _ensure_open(self) -> None:
        if self._closed:
            raise _requests.closed()
        if self._sock is None:
            self._kick = asyncio.Event()
            self._open()
            self._timer = asyncio.ensure_future(self._timers())

    async def _read(self) -> None:
        while True:
            message = await self._sock.recv_multipart()
            self._session.handle_message(message, time.monotonic())

    async def _watch(self) -> None:
        while True:
            raw = await self._monitor.recv_multipart()
            try:
                event = parse_monitor_message(raw)
            except (ValueError, zmq.ZMQError) as e:
                log.warning("unreadable socket monitor event: %s", e)
                continue
            self._session.refusal = _sockets.refusal(event, self._session.refusal)

    async def _timers(self) -> None:
        assert self._kick is not None
        session = self._session
        while True:
            due = session.poll_timeout()
            wait = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), wait)
            self._kick.clear()
            now = time.monotonic()
            resend = session.handle_timeout(now)
            if not resend:
                continue
            quiet = session.silent_for(now, self._opened)
            if quiet is not None:
                log.debug("no answer from the broker for %.1f s; reconnecting", quiet)
                await self._reopen()
            for message in resend:
                self._transmit(message)

    def _transmit(self, message: list[bytes]) -> None:
        try:
            sent = self._sock.send_multipart(message, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("send would block; the retry timer will re-send")
            return
        if isinstance(sent, asyncio.Future):
            sent.add_done_callback(_log_send_failure)

    def _start(self, calls: Iterable[Call]) -> None:
        self._ensure_open()
        now = time.monotonic()
        for call in calls:
            self._transmit(self._session.start(call, now))
        assert self._kick is not None
        self._kick.set()  # a new call's timer may be the earliest

    # -- the API ----------------------------------------------------------------------

    def submit(
        self,
        service: str,
        *frames: Frame,
        timeout: float | None = None,
        retries: int | None = None,
        deadline: float | None = None,
    ) -> asyncio.Future[list[bytes]]:
        """Sends a request now and returns a future of its reply frames (or of the
        exception for its status). Call it from the client's event loop."""
        fut: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        sink = FutureSink(fut)
        self._start([self._call(service, _wire.frames(frames), sink, timeout, retries, deadline)])
        return fut

    async def request(
        self,
        service: str,
        *frames: Frame,
        timeout: float | None = None,
        retries: int | None = None,
        deadline: float | None = None,
        on_partial: Callable[[list[bytes]], None] | None = None,
    ) -> list[bytes]:
        """Sends a request and returns its reply frames; raises as `scale0.Client.request`
        does. `on_partial` gets each partial reply before the final one."""
        if on_partial is None:
            return await self.submit(
                service, *frames, timeout=timeout, retries=retries, deadline=deadline
            )
        final: list[bytes] = []
        async for part, is_final in self._stream(service, frames, timeout, retries, deadline):
            if is_final:
                final = part
            else:
                on_partial(part)
        return final

    async def stream(
        self,
        service: str,
        *frames: Frame,
        timeout: float | None = None,
        retries: int | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[list[bytes]]:
        """Yields each partial reply as it comes, then the final reply as the last item."""
        async for part, _ in self._stream(service, frames, timeout, retries, deadline):
            yield part

    async def _stream(
        self,
        service: str,
        frames: Sequence[Frame],
        timeout: float | None,
        retries: int | None,
        deadline: float | None,
    ) -> AsyncIterator[tuple[list[bytes], bool]]:
        q: asyncio.Queue[Item] = asyncio.Queue()
        sink = QueueSink(q, 0)
        self._start([self._call(service, _wire.frames(frames), sink, timeout, retries, deadline)])
        while True:
            part, is_final = _requests.streamed(await q.get())
            yield part, is_final
            if is_final:
                return

    async def map(
        self,
        service: str,
        bodies: Iterable[Body],
        in_flight: int = 64,
        ordered: bool = True,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[list[bytes]]:
        """Like `scale0.Client.map`, as an async iterator."""
        replies = Replies(bodies, in_flight, ordered)
        q: asyncio.Queue[Item] = asyncio.Queue()
        while True:
            batch = [
                self._call(service, body, QueueSink(q, i), timeout, retries, deadline)
                for i, body in replies.more()
            ]
            if batch:
                self._start(batch)
            if replies.finished:
                return
            while replies.waiting():
                replies.arrive(await q.get())
            yield replies.next()


def _log_send_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("send failed (%s); the retry timer will re-send", fut.exception())
