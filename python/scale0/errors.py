"""The exceptions of scale0: one per broker status, under one `Scale0Error`."""

from __future__ import annotations


class Scale0Error(Exception):
    """Base of every error this package raises about a request or a connection."""

    def __init__(self, message: str, *, service: str | None = None) -> None:
        super().__init__(message)
        #: The service the request was for, when there was one.
        self.service = service
        #: The human-readable text.
        self.message = message


class Timeout(Scale0Error):
    """No answer came after every attempt (the broker is absent, slow or unreachable)."""


class Refused(Scale0Error):
    """The broker refused the connection's handshake (CURVE: unknown key, wrong server key,
    or a plaintext client of a CURVE broker); retrying does not help."""


class ServiceError(Scale0Error):
    """The worker's handler failed: its reply was the two frames `scale0.error`, message."""


#: Every documented status word and its exception class (each class below enters itself).
STATUSES: dict[str, type[BrokerError]] = {}


class BrokerError(Scale0Error):
    """The broker ended the request with an explicit status (an ERROR of the native
    protocol). Each documented status has its own subclass; an unknown one is this class."""

    #: The status word this class stands for (`queue_full`, ...); the base has none.
    STATUS: str = ""

    def __init_subclass__(cls, *, status: str = "", **kwargs: object) -> None:
        # `class QueueFull(BrokerError, status="queue_full")` is the class of that status
        # word in `STATUSES`; a subclass without one keeps its base's.
        super().__init_subclass__(**kwargs)
        if status:
            cls.STATUS = status
            STATUSES[status] = cls

    def __init__(self, message: str, *, service: str | None = None, status: str = "") -> None:
        super().__init__(message, service=service)
        #: The status word the broker sent.
        self.status = status or self.STATUS

    def __str__(self) -> str:
        where = f" ({self.service})" if self.service else ""
        return f"{self.status}{where}: {self.message}"


class QueueFull(BrokerError, status="queue_full"):
    """`queue_full`: the service's queue holds `max_queue_depth` requests."""


class NoWorker(BrokerError, status="no_worker"):
    """`no_worker`: no worker for the service appeared within `unknown_service_wait_ms`."""


class TooManyServices(BrokerError, status="too_many_services"):
    """`too_many_services`: the broker already tracks `max_services` services."""


class TooLarge(BrokerError, status="too_large"):
    """`too_large`: the request is over the broker's `max_message_bytes`."""


class DeadlineExceeded(BrokerError, status="deadline_exceeded"):
    """`deadline_exceeded`: the request's own deadline passed before a reply."""


class AttemptsExhausted(BrokerError, status="attempts_exhausted"):
    """`attempts_exhausted`: `max_attempts` workers died or overran the deadline holding it."""


class BadRequest(BrokerError, status="bad_request"):
    """`bad_request`: the broker read a malformed request (a bug in the sender)."""


class ShuttingDown(BrokerError, status="shutting_down"):
    """`shutting_down`: the broker is stopping and takes no new requests, or its grace
    period ended before a worker answered this one."""


class Forbidden(BrokerError, status="forbidden"):
    """`forbidden`: under CURVE, this client's key may not use the service."""


class NotLeader(BrokerError, status="not_leader"):
    """`not_leader`: this node of a cluster does not serve; ask the leader."""


def from_status(status: str, message: str, service: str | None = None) -> BrokerError:
    """The exception for a native ERROR's status and message."""
    cls = STATUSES.get(status, BrokerError)
    return cls(message, service=service, status=status)
