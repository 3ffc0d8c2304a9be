"""Socket set-up shared by the clients, the worker, the map and the bus: the zmq module
(plain or gevent's), CURVE options, DEALERs with our options, the handshake monitor, a
thread-safe wake-up, and the control sockets of background loops."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .keys import Curve, KeySpec

log = logging.getLogger("scale0")

#: gevent's socket class, once `zmq_module` has loaded it.
_green_type: Any = None

#: The handshake events that say why a broker will not talk to us.
REFUSALS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake failed (protocol or mechanism mismatch:"
    " is one side using CURVE and the other not?)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the broker refused our key (CURVE: is it in its"
    " --curve-allow list?)",
}
MONITORED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
)


def zmq_module(green: bool | None) -> Any:
    """`zmq`, or `zmq.green` when asked to or (with `green=None`) when gevent has patched
    the standard library."""
    if green is None:
        monkey = sys.modules.get("gevent.monkey")
        green = bool(monkey is not None and monkey.is_module_patched("socket"))
    if green:
        global _green_type
        import zmq.green as green_zmq

        _green_type = green_zmq.Socket
        return green_zmq
    return zmq


def endpoint_list(endpoints: str | Sequence[str]) -> list[str]:
    """One endpoint or several, as a non-empty list."""
    out = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not out:
        raise ValueError("at least one endpoint is needed")
    return out


def curve(server_key: KeySpec | None, key: KeySpec | None) -> Curve | None:
    """The CURVE keys of a connecting side's `curve_server_key` and `curve_key` options:
    both or neither."""
    if (server_key is None) != (key is None):
        raise ValueError("CURVE needs both curve_server_key and curve_key")
    if server_key is None or key is None:
        return None
    return Curve.load(server_key, key)


def dealer(
    ctx: Any,
    endpoints: Sequence[str],
    *,
    identity: bytes | None,
    curve: Curve | None,
    max_message_bytes: int,
) -> Any:
    """A DEALER connected to every endpoint: no linger, no HWM (the callers bound what is
    in flight), frames above `max_message_bytes` cut the connection (ZMQ_MAXMSGSIZE)."""
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        if curve is not None:
            curve.apply(sock)
        for ep in endpoints:
            sock.connect(ep)
    except Exception:
        sock.close(0)
        raise
    return sock


def read_refusals(monitor: Any, current: str | None) -> str | None:
    """Reads every pending event of a handshake monitor; returns why the last handshake
    failed, or None when the last one succeeded."""
    while True:
        try:
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
        except zmq.Again:
            return current
        except (ValueError, zmq.ZMQError) as e:
            log.warning("unreadable socket monitor event: %s", e)
            return current
        current = refusal(event, current)


def refusal(event: Mapping[str, Any], current: str | None) -> str | None:
    """Why the last handshake failed after a handshake monitor's `event`, or None when it
    succeeded; `current` for any other event."""
    kind = event.get("event")
    if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return None
    if kind in REFUSALS:
        where = event.get("endpoint", b"")
        text = where.decode(errors="replace") if isinstance(where, bytes) else str(where)
        return f"{text}: {REFUSALS[kind]}"
    return current


_inproc_ids = itertools.count()


def inproc(kind: str) -> str:
    """A fresh in-process address of this process: `inproc://scale0-KIND-PID-N`."""
    return f"inproc://scale0-{kind}-{os.getpid()}-{next(_inproc_ids)}"


def send_control(ctx: Any, address: str, frames: list[bytes]) -> None:
    """Sends one message to a loop's control socket at `address` on a PUSH of the
    caller's own for this one message (a socket is never shared across threads),
    lingering up to a second."""
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.LINGER, 1000)
    s.connect(address)
    try:
        s.send_multipart(frames)
    finally:
        s.close()


def close_loop(ctx: Any, thread: threading.Thread, control: str) -> None:
    """Tells a background thread's loop `close` on its control socket at `control`
    (unless it has ended already), waits for it, and terminates the context."""
    if thread.is_alive():
        send_control(ctx, control, [b"close"])
        thread.join()
    ctx.term()


class Wake:
    """A wake-up for a socket loop that any thread (or a signal handler) may ring: a
    socket pair, not a ZeroMQ socket, since a ZeroMQ socket must have one owner. The loop
    polls `fd`; a ring is at most one byte in flight."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self.pending = False
        #: The file descriptor a poller watches.
        self.fd = self._r.fileno()

    def ring(self) -> None:
        """Wakes the loop (cheap when a ring is already pending)."""
        if self.pending:
            return
        self.pending = True
        try:
            self._w.send(b"\x01")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full of rings already
        except OSError:
            pass  # closed: the loop has ended

    def clear(self) -> None:
        """Called by the loop before it looks at its inputs. The pipe is drained before
        `pending` drops: the other way round, a ring between the two would leave
        `pending` set with its byte already read, and the next ring would be skipped
        while the loop sleeps."""
        try:
            while self._r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass
        self.pending = False

    def close(self) -> None:
        """Closes both ends."""
        self._r.close()
        self._w.close()


# pyzmq's send_multipart and recv_multipart combine IntFlag values for every frame, which
# costs more than the sends themselves; these do the same with plain ints.
_SEND_MORE = int(zmq.SNDMORE) | int(zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)


def send_frames(sock: Any, frames: list[bytes]) -> None:
    """Sends a multipart message without blocking (raises `zmq.Again` when it would)."""
    if _green_type is not None and isinstance(sock, _green_type):
        # gevent's socket re-arms its events after each frame unless sent as a whole.
        sock.send_multipart(frames, zmq.NOBLOCK)
        return
    last = len(frames) - 1
    for i, f in enumerate(frames):
        sock.send(f, _SEND_MORE if i < last else _NOBLOCK)


def recv_frames(sock: Any) -> list[bytes]:
    """Receives a multipart message without blocking (raises `zmq.Again` with none)."""
    if _green_type is not None and isinstance(sock, _green_type):
        return sock.recv_multipart(zmq.NOBLOCK)  # type: ignore[no-any-return]
    parts: list[bytes] = [sock.recv(_NOBLOCK)]
    while sock.get(_RCVMORE):
        parts.append(sock.recv(_NOBLOCK))
    return parts
