"""Frame constants and conversions shared by the client and the worker (docs/protocol.md)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Union

#: A frame as callers may give it: bytes-like, or text (sent as UTF-8).
Frame = Union[bytes, bytearray, memoryview, str]
#: A message body as callers may give it: one frame, or a sequence of frames.
Body = Union[Frame, Sequence[Frame]]

NATIVE = b"S0C1"
N_REQUEST = b"\x01"
N_ACCEPTED = b"\x02"
N_PARTIAL = b"\x03"
N_FINAL = b"\x04"
N_ERROR = b"\x05"
N_REQUEST_NO_ACK = b"\x06"

MDPW02 = b"MDPW02"
W_READY = b"\x01"
W_REQUEST = b"\x02"
W_PARTIAL = b"\x03"
W_FINAL = b"\x04"
W_HEARTBEAT = b"\x05"
W_DISCONNECT = b"\x06"

#: The first frame of a worker's error reply (the second is the message).
ERROR_MARKER = b"scale0.error"
#: The broker's default bound on a message, in bytes (`--max-message-bytes`).
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def frame(value: Frame, what: str = "a frame") -> bytes:
    """One frame as bytes (`what` names it in the error for anything else)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def frames(values: Iterable[Frame]) -> list[bytes]:
    """A sequence of frames as a list of bytes."""
    return [frame(v) for v in values]


def body(value: Body) -> list[bytes]:
    """A body given as one frame or a sequence of frames, as a list of frames."""
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return [frame(value)]
    return frames(value)


def routing_id() -> bytes:
    """A random 16-byte routing id whose first byte is not zero (libzmq's own ids start
    with zero and repeat across restarts; the broker keys native requests by this one)."""
    raw = bytearray(os.urandom(16))
    raw[0] = max(raw[0], 1)
    return bytes(raw)


def sparse(count: int) -> bool:
    """Whether the `count`th of something is logged: the 1st, 2nd, 4th, 8th..."""
    return count & (count - 1) == 0


def log_dropped(log: logging.Logger, count: int, why: str, message: list[bytes]) -> None:
    """Logs the `count`th message from the broker dropped as malformed, when `count` is
    the 1st, 2nd, 4th, 8th...: seen, but never a flood of lines."""
    if sparse(count):
        log.warning(
            "dropped a message from the broker (%s; %d so far): %r",
            why,
            count,
            [f[:32] for f in message[:6]],
        )
