"""Each broker status the client can provoke, raised as its own exception class."""

from __future__ import annotations

import os
import signal

import pytest
import zmq
from conftest import Spawn, broker_on, eventually, served

import scale0
from scale0._session import Session


def test_every_documented_status_has_a_class() -> None:
    statuses = {
        "queue_full": scale0.QueueFull,
        "no_worker": scale0.NoWorker,
        "too_many_services": scale0.TooManyServices,
        "too_large": scale0.TooLarge,
        "deadline_exceeded": scale0.DeadlineExceeded,
        "attempts_exhausted": scale0.AttemptsExhausted,
        "bad_request": scale0.BadRequest,
        "shutting_down": scale0.ShuttingDown,
        "forbidden": scale0.Forbidden,
    }
    for status, cls in statuses.items():
        e = scale0.errors.from_status(status, "why", "svc")
        assert type(e) is cls and isinstance(e, scale0.BrokerError)
        assert isinstance(e, scale0.Scale0Error)
        assert (e.status, e.message, e.service) == (status, "why", "svc")
    other = scale0.errors.from_status("something_new", "why")
    assert type(other) is scale0.BrokerError and other.status == "something_new"


def test_queue_full(spawn: Spawn) -> None:
    b = broker_on(spawn, "--max-queue-depth", "1")
    with scale0.Client(b.endpoint, timeout=5) as c:
        first = c.submit("nobody", b"1")
        with pytest.raises(scale0.QueueFull) as e:
            c.request("nobody", b"2")
        assert e.value.service == "nobody"
        assert not first.done()


def test_no_worker(spawn: Spawn) -> None:
    b = broker_on(spawn, "--unknown-service-wait-ms", "100")
    with scale0.Client(b.endpoint) as c, pytest.raises(scale0.NoWorker):
        c.request("nobody", b"x")


def test_too_many_services(spawn: Spawn) -> None:
    b = broker_on(spawn, "--max-services", "1")
    served(spawn, b.endpoint, "one")
    with scale0.Client(b.endpoint) as c, pytest.raises(scale0.TooManyServices):
        c.request("two", b"x")


def test_too_large(spawn: Spawn) -> None:
    b = broker_on(spawn, "--max-message-bytes", "1024")
    served(spawn, b.endpoint, "echo")
    with scale0.Client(b.endpoint) as c:
        assert c.request("echo", b"x" * 100) == [b"x" * 100]
        with pytest.raises(scale0.TooLarge):
            c.request("echo", b"x" * 1500)


def test_deadline_exceeded(spawn: Spawn) -> None:
    b = broker_on(spawn)
    served(spawn, b.endpoint, "slow", "--sleep-ms", "2000")
    with scale0.Client(b.endpoint, timeout=5) as c:
        with pytest.raises(scale0.DeadlineExceeded):
            c.request("slow", b"x", deadline=0)  # passed on arrival: no worker sees it
        with pytest.raises(scale0.DeadlineExceeded):
            c.request("slow", b"x", deadline=0.2)


def test_attempts_exhausted(spawn: Spawn) -> None:
    # Every worker overruns the broker's request deadline; after one attempt it fails.
    b = broker_on(spawn, "--request-timeout-ms", "100", "--max-attempts", "1")
    served(spawn, b.endpoint, "slow", "--sleep-ms", "1000")
    with scale0.Client(b.endpoint, timeout=5) as c, pytest.raises(scale0.AttemptsExhausted):
        c.request("slow", b"x")


def test_shutting_down(spawn: Spawn) -> None:
    b = broker_on(spawn, "--grace-ms", "3000")
    served(spawn, b.endpoint, "slow", "--sleep-ms", "700")
    with scale0.Client(b.endpoint, timeout=5) as c:
        held = c.submit("slow", b"held")
        probe = scale0.Client(b.endpoint)

        def busy() -> bool:
            status = probe.request("mmi.status")[0]
            return b'"outstanding":1' in status

        eventually(busy, what="the request is held")
        b.popen.send_signal(signal.SIGTERM)

        def draining() -> bool:
            try:
                return b'"draining":true' in probe.request("mmi.status")[0]
            except scale0.ShuttingDown:
                return True

        eventually(draining, what="the broker noticed SIGTERM")
        probe.close()
        # New requests are refused while the broker serves out its grace period.
        with pytest.raises(scale0.ShuttingDown):
            c.request("slow", b"late", retries=0, timeout=2)
        assert held.result(timeout=10) == [b"held"]


def test_bad_request_from_a_raw_malformed_request(spawn: Spawn) -> None:
    # The client never sends a malformed request; a raw socket does, and the broker's
    # answer decodes to BadRequest.
    b = broker_on(spawn)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.ROUTING_ID, b"\x01raw" + os.urandom(4))
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(b.endpoint)
    raw.send_multipart([b"S0C1", b"\x06", b"1", b"echo", b"not-a-number", b"x"])
    assert raw.poll(5000)
    answer = raw.recv_multipart()
    raw.close()
    ctx.term()
    session = Session()
    got: list[BaseException | None] = []

    class Sink:
        def partial(self, body: list[bytes]) -> None:
            pass

        def done(self, body: list[bytes] | None, error: scale0.Scale0Error | None) -> None:
            got.append(error)

    call = session.new_call("echo", [b"x"], timeout=1, retries=0, deadline=None, sink=Sink())
    session.start(call, 0.0)
    assert answer[2] == call.id == b"1"
    session.handle_message(answer, 0.1)
    assert isinstance(got[0], scale0.BadRequest), answer


def test_a_handler_failure_is_a_service_error(spawn: Spawn) -> None:
    b = broker_on(spawn)
    served(spawn, b.endpoint, "fails", "--", "sh", "-c", "echo oops >&2; exit 3")
    with scale0.Client(b.endpoint) as c, pytest.raises(scale0.ServiceError) as e:
        c.request("fails", b"x")
    assert "oops" in str(e.value)
