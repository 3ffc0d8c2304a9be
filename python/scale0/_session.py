"""The native client protocol as a state machine with no sockets and no clock: the blocking
and the asyncio clients both drive it. Time comes in as `now` (seconds, monotonic);
messages to send come out as lists of frames."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Protocol

from . import _wire
from .errors import Refused, Scale0Error, ServiceError, Timeout, from_status

log = logging.getLogger("scale0.client")

#: How long past a caller's explicit deadline we wait for the broker's own
#: `deadline_exceeded` before giving up locally, in seconds.
DEADLINE_GRACE = 1.0


class Sink(Protocol):
    """Where the answers of one request go."""

    def partial(self, body: list[bytes]) -> None:
        """A partial reply arrived."""

    def done(self, body: list[bytes] | None, error: Scale0Error | None) -> None:
        """The request ended: with the final reply, or with an error."""


@dataclass
class Call:
    """One request in flight."""

    id: bytes
    service: str
    #: The encoded REQUEST, re-sent unchanged on a retry.
    message: list[bytes]
    #: How long one attempt waits for an answer, in seconds.
    timeout: float
    attempts: int
    sink: Sink
    sends: int = 0
    #: When the current attempt gives up (monotonic seconds).
    expires: float = 0.0
    #: When the whole request gives up, whatever attempts are left.
    give_up: float = math.inf


@dataclass
class Session:
    """The native client protocol, version 1, for one routing id."""

    #: Ask for ACCEPTED (`0x01`) rather than not (`0x06`).
    acknowledged: bool = False
    #: Endpoints, for error messages.
    endpoints: str = ""
    #: Request ids: decimal numbers from 1 (`next` on a count is atomic under the GIL, so
    #: callers in any thread may build calls).
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    calls: dict[bytes, Call] = field(default_factory=dict)
    #: (expiry, sequence, request id); stale entries are skipped when they come round.
    timers: list[tuple[float, int, bytes]] = field(default_factory=list)
    seq: int = 0
    #: Why the broker refused our handshake, when it did.
    refusal: str | None = None
    #: Answers for requests no longer in flight (a retry crossing an answer); dropped.
    duplicates: int = 0
    #: Messages from the broker that did not decode; dropped.
    malformed: int = 0
    #: Re-sends after a timeout.
    retries: int = 0
    #: When we last heard anything from the broker.
    last_heard: float = -math.inf

    def new_call(
        self,
        service: str,
        body: list[bytes],
        *,
        timeout: float,
        retries: int,
        deadline: float | None,
        sink: Sink,
    ) -> Call:
        """A request with a fresh id, ready for `start`. `deadline` is in seconds from now
        (`math.inf` for none; `None` for the time every attempt takes together)."""
        name = service.encode()
        if not 1 <= len(name) <= 255:
            raise ValueError(f"a service name is 1 to 255 bytes, not {len(name)}: {service!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        attempts = max(0, retries) + 1
        rid = str(next(self.ids)).encode()
        if deadline is None:
            wire_deadline = str(math.ceil(timeout * attempts * 1000)).encode()
            give_up = math.inf
        elif math.isinf(deadline):
            wire_deadline = b""
            give_up = math.inf
        else:
            deadline = max(0.0, deadline)
            wire_deadline = str(math.ceil(deadline * 1000)).encode()
            give_up = deadline + DEADLINE_GRACE  # relative until `start`
        command = _wire.N_REQUEST if self.acknowledged else _wire.N_REQUEST_NO_ACK
        message = [_wire.NATIVE, command, rid, name, wire_deadline, *body]
        return Call(rid, service, message, timeout, attempts, sink, give_up=give_up)

    def start(self, call: Call, now: float) -> list[bytes]:
        """Registers `call` and returns its first send."""
        if not math.isinf(call.give_up):
            call.give_up += now
        self.calls[call.id] = call
        call.sends = 1
        self._arm(call, now)
        return call.message

    def _arm(self, call: Call, now: float) -> None:
        call.expires = min(now + call.timeout, call.give_up)
        self.seq += 1
        heapq.heappush(self.timers, (call.expires, self.seq, call.id))

    def poll_timeout(self) -> float | None:
        """The next instant something is due, or None with nothing in flight."""
        while self.timers:
            when, _, rid = self.timers[0]
            call = self.calls.get(rid)
            if call is not None and call.expires == when:
                return when
            heapq.heappop(self.timers)
        return None

    def handle_timeout(self, now: float) -> list[list[bytes]]:
        """Re-sends (returned) or fails the requests whose attempt is over."""
        out: list[list[bytes]] = []
        while self.timers and self.timers[0][0] <= now:
            when, _, rid = heapq.heappop(self.timers)
            call = self.calls.get(rid)
            if call is None or call.expires != when:
                continue
            if self.refusal is not None:
                # A refused handshake is refused again: no use retrying.
                self._finish(call, None, Refused(self.refusal, service=call.service))
            elif call.sends < call.attempts and now < call.give_up:
                call.sends += 1
                self.retries += 1
                log.debug("request %s to %s timed out; re-sending", rid, call.service)
                self._arm(call, now)
                out.append(call.message)
            else:
                sends = call.sends
                self._finish(
                    call,
                    None,
                    Timeout(
                        f"no answer from {self.endpoints} after {sends} attempt(s)",
                        service=call.service,
                    ),
                )
        return out

    def _finish(self, call: Call, body: list[bytes] | None, error: Scale0Error | None) -> None:
        del self.calls[call.id]
        try:
            call.sink.done(body, error)
        except Exception:  # a caller's callback must not stop the client
            log.exception("a reply's consumer failed")

    def handle_message(self, message: list[bytes], now: float) -> None:
        """Takes one message from the broker. Bad input is logged and dropped."""
        self.last_heard = now
        if len(message) < 3 or message[0] != _wire.NATIVE:
            self._malformed(message, "not a native reply")
            return
        command, rid = message[1], message[2]
        call = self.calls.get(rid)
        if command == _wire.N_FINAL:
            if call is None:
                self.duplicates += 1
                return
            reply = message[3:]
            if len(reply) == 2 and reply[0] == _wire.ERROR_MARKER:
                text = reply[1].decode(errors="replace")
                self._finish(call, None, ServiceError(text, service=call.service))
            else:
                self._finish(call, reply, None)
        elif command == _wire.N_ERROR:
            if len(message) != 5:
                self._malformed(message, "ERROR needs a status and a message")
                return
            if call is None:
                self.duplicates += 1
                return
            status = message[3].decode(errors="replace")
            text = message[4].decode(errors="replace")
            self._finish(call, None, from_status(status, text, call.service))
        elif command in (_wire.N_ACCEPTED, _wire.N_PARTIAL):
            if command == _wire.N_ACCEPTED and len(message) != 3:
                self._malformed(message, "ACCEPTED has no body")
                return
            if call is None:
                return
            # The broker holds it: worth a full attempt's wait from here.
            self._arm(call, now)
            if command == _wire.N_PARTIAL:
                try:
                    call.sink.partial(message[3:])
                except Exception:  # a caller's callback must not stop the client
                    log.exception("a partial reply's consumer failed")
        else:
            self._malformed(message, "unknown command")

    def _malformed(self, message: list[bytes], why: str) -> None:
        self.malformed += 1
        _wire.log_dropped(log, self.malformed, why, message)

    def silent_for(self, now: float, opened: float) -> float | None:
        """How long nothing has been heard on the connection opened at `opened`, when that
        is a whole attempt of a request in flight (time for a fresh connection with the
        same routing id: the broker hands the id over and still knows our requests by
        it); None otherwise."""
        quiet = now - max(self.last_heard, opened)
        if self.calls and quiet >= min(c.timeout for c in self.calls.values()):
            return quiet
        return None

    def fail_all(self, error: Scale0Error) -> None:
        """Ends every request in flight with `error` (the client is closing)."""
        for call in list(self.calls.values()):
            self._finish(call, None, error)
        self.timers.clear()
