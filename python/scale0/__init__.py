"""scale0 for Python: the client, the worker, the map and the bus of scale0, on pyzmq.

`Client` speaks the scale0 native client protocol (request ids, retries, statuses,
partial replies) to a `scale0 broker`; `Worker` serves a Python function as an MDP/0.2
worker; `scale0.aio.Client` is the client for asyncio. See docs/protocol.md for the wire.
"""

from .bus import Node
from .client import Client
from .errors import (
    AttemptsExhausted,
    BadRequest,
    BrokerError,
    DeadlineExceeded,
    Forbidden,
    NotLeader,
    NoWorker,
    QueueFull,
    Refused,
    Scale0Error,
    ServiceError,
    ShuttingDown,
    Timeout,
    TooLarge,
    TooManyServices,
)
from .pipeline import Map, work
from .worker import Worker

__all__ = [
    "AttemptsExhausted",
    "BadRequest",
    "BrokerError",
    "Client",
    "DeadlineExceeded",
    "Forbidden",
    "Map",
    "NoWorker",
    "Node",
    "NotLeader",
    "QueueFull",
    "Refused",
    "Scale0Error",
    "ServiceError",
    "ShuttingDown",
    "Timeout",
    "TooLarge",
    "TooManyServices",
    "Worker",
    "work",
]
