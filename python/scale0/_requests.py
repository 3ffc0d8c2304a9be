"""The callers' side that the blocking and the asyncio clients share: their options and
protocol session, the sinks that hand answers to a future or a queue, and the
bookkeeping of `map`, all with no sockets and no waiting. Each client drives these from
its own loop (a thread's, or the event loop's), as both drive the one `Session`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, Union

import zmq

from . import _sockets, _wire
from ._session import Call, Session, Sink
from ._wire import Body
from .errors import Scale0Error
from .keys import KeySpec

#: How a request ended: its final reply, or its error.
Outcome = tuple[Union[list[bytes], None], Union[Scale0Error, None]]
#: What a `QueueSink` puts: the request's index, whether it is the end, and the outcome.
Item = tuple[int, bool, Outcome]


def closed() -> Scale0Error:
    """The error of a request that meets a closed client."""
    return Scale0Error("the client is closed")


class _Future(Protocol):
    def done(self) -> bool: ...
    def set_result(self, result: list[bytes], /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class FutureSink:
    """Delivers a request's end to a future (`concurrent.futures` or `asyncio`); one its
    caller has cancelled is left alone."""

    __slots__ = ("future",)

    def __init__(self, future: _Future) -> None:
        self.future = future

    def partial(self, body: list[bytes]) -> None:
        pass

    def done(self, body: list[bytes] | None, error: Scale0Error | None) -> None:
        if self.future.done():
            return  # cancelled by its caller
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(body if body is not None else [])


class _Queue(Protocol):
    def put_nowait(self, item: Item, /) -> None: ...


class QueueSink:
    """Delivers partials and the end of a request to a queue (`queue.SimpleQueue` or
    `asyncio.Queue`), tagged with an index."""

    __slots__ = ("index", "queue")

    def __init__(self, q: _Queue, index: int) -> None:
        self.queue = q
        self.index = index

    def partial(self, body: list[bytes]) -> None:
        self.queue.put_nowait((self.index, False, (body, None)))

    def done(self, body: list[bytes] | None, error: Scale0Error | None) -> None:
        self.queue.put_nowait((self.index, True, (body, error)))


def streamed(item: Item) -> tuple[list[bytes], bool]:
    """One item of a streamed request's queue: the reply and whether it is the final one;
    an error ends the stream by being raised."""
    _, is_final, (body, error) = item
    if error is not None:
        raise error
    return body or [], is_final


class Replies:
    """The bookkeeping of `map`: which bodies go out now (up to `in_flight` outstanding,
    read lazily), and which reply is yielded next (in the order of the bodies, or as they
    come). The client sends what `more` gives, feeds `arrive` from its queue while
    `waiting`, and yields `next` until `finished`."""

    def __init__(self, bodies: Iterable[Body], in_flight: int, ordered: bool) -> None:
        self._source = iter(bodies)
        self._in_flight = max(1, in_flight)
        self._ordered = ordered
        self._exhausted = False
        self._ready: dict[int, Outcome] = {}
        self.sent = 0
        self.yielded = 0

    def more(self) -> Iterator[tuple[int, list[bytes]]]:
        """The bodies to send now, each with its index."""
        while not self._exhausted and self.sent - self.yielded < self._in_flight:
            try:
                item = next(self._source)
            except StopIteration:
                self._exhausted = True
                return
            yield self.sent, _wire.body(item)
            self.sent += 1

    @property
    def finished(self) -> bool:
        """Every body sent has had its reply yielded (and `more` had no more)."""
        return self.yielded == self.sent

    def waiting(self) -> bool:
        """The reply to yield next has not come yet."""
        if self._ordered:
            return self.yielded not in self._ready
        return not self._ready

    def arrive(self, item: Item) -> None:
        """Takes an item from the queue the requests' `QueueSink`s fill."""
        index, is_final, outcome = item
        if is_final:
            self._ready[index] = outcome

    def next(self) -> list[bytes]:
        """The reply to yield next (raises its request's error instead)."""
        want = self.yielded if self._ordered else next(iter(self._ready))
        body, error = self._ready.pop(want)
        self.yielded += 1
        if error is not None:
            raise error
        return body or []


class ClientBase:
    """The options, routing id, CURVE keys and protocol session of a client, and the
    making of its calls and its DEALER; `scale0.Client` and `scale0.aio.Client` add the
    loop that drives them."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float,
        retries: int,
        curve_server_key: KeySpec | None,
        curve_key: KeySpec | None,
        acknowledged: bool,
        max_message_bytes: int,
    ) -> None:
        self.endpoints = _sockets.endpoint_list(endpoints)
        #: Seconds one attempt waits for an answer, unless a call says otherwise.
        self.timeout = timeout
        #: Re-sends after a timeout, unless a call says otherwise.
        self.retries = retries
        #: This client's routing id, kept across reconnects so retries match.
        self.identity = _wire.routing_id()
        self._curve = _sockets.curve(curve_server_key, curve_key)
        self._max_message_bytes = max_message_bytes
        self._session = Session(acknowledged=acknowledged, endpoints=", ".join(self.endpoints))

    @property
    def stats(self) -> dict[str, int]:
        """Counters: requests in flight, re-sends, duplicate answers dropped, malformed
        messages dropped."""
        s = self._session
        return {
            "in_flight": len(s.calls),
            "retries": s.retries,
            "duplicates": s.duplicates,
            "malformed": s.malformed,
        }

    def _call(
        self,
        service: str,
        body: list[bytes],
        sink: Sink,
        timeout: float | None,
        retries: int | None,
        deadline: float | None,
    ) -> Call:
        return self._session.new_call(
            service,
            body,
            timeout=self.timeout if timeout is None else timeout,
            retries=self.retries if retries is None else retries,
            deadline=deadline,
            sink=sink,
        )

    def _dealer(self, ctx: Any) -> tuple[Any, Any]:
        """A DEALER to every endpoint, with a monitor of its handshakes (also without
        CURVE: a plaintext client of a CURVE broker learns why it hears nothing)."""
        sock = _sockets.dealer(
            ctx,
            self.endpoints,
            identity=self.identity,
            curve=self._curve,
            max_message_bytes=self._max_message_bytes,
        )
        return sock, sock.get_monitor_socket(_sockets.MONITORED)


def shut(sock: Any, monitor: Any) -> None:
    """Closes a DEALER of `ClientBase._dealer` and its monitor."""
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    monitor.close(0)
    sock.close(0)
