"""scale0.Worker against the real broker: credit, partials, heartbeats while busy,
reconnects, SIGTERM and kill -9."""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
from collections.abc import Generator, Iterator

import pytest
from conftest import Proc, Spawn, broker_on, eventually, python_worker, wait_for_service

import scale0
from scale0 import _sockets


def status(endpoint: str) -> dict[str, object]:
    with scale0.Client(endpoint) as c:
        doc: dict[str, object] = json.loads(c.request("mmi.status")[0])
        return doc


def test_a_decorated_handler_serves_frames(broker: Proc) -> None:
    w = scale0.Worker(broker.endpoint, "join")

    @w.handler
    def join(*frames: bytes) -> bytes:
        return b"+".join(frames)

    w.start()
    try:
        wait_for_service(broker.endpoint, "join")
        with scale0.Client(broker.endpoint) as c:
            assert c.request("join", b"a", b"b") == [b"a+b"]
            assert c.request("join") == [b""]
    finally:
        w.stop(timeout=10)
    assert w.join(0)


def test_capacity_holds_n_requests_at_once(broker: Proc) -> None:
    barrier = threading.Barrier(4, timeout=10)

    def meet(body: bytes) -> str:
        barrier.wait()  # passes only when four handlers run together
        return body.decode().upper()

    w = scale0.Worker(broker.endpoint, "meet", capacity=4).start(meet)
    try:
        wait_for_service(broker.endpoint, "meet")
        with scale0.Client(broker.endpoint, timeout=10) as c:
            assert list(c.map("meet", ["a", "b", "c", "d"])) == [[b"A"], [b"B"], [b"C"], [b"D"]]
        (svc,) = [s for s in status(broker.endpoint)["services"] if s["name"] == "meet"]  # type: ignore[attr-defined]
        assert svc["workers"][0]["capacity"] == 4
    finally:
        w.stop(timeout=10)


def test_a_generator_streams_partials_then_the_final(broker: Proc) -> None:
    def count(n: bytes) -> Iterator[str]:
        for i in range(int(n)):
            yield str(i)

    def count_then_total(n: bytes) -> Generator[str, None, str]:
        for i in range(int(n)):
            yield str(i)
        return "total"

    w1 = scale0.Worker(broker.endpoint, "count").start(count)
    w2 = scale0.Worker(broker.endpoint, "total").start(count_then_total)
    try:
        wait_for_service(broker.endpoint, "count")
        wait_for_service(broker.endpoint, "total")
        with scale0.Client(broker.endpoint) as c:
            # The last yield is the final reply.
            assert list(c.stream("count", "3")) == [[b"0"], [b"1"], [b"2"]]
            # A returned value is the final reply, after every yield as a partial.
            seen: list[list[bytes]] = []
            assert c.request("total", "2", on_partial=seen.append) == [b"total"]
            assert seen == [[b"0"], [b"1"]]
    finally:
        w1.stop(timeout=10)
        w2.stop(timeout=10)


def test_a_failing_handler_is_a_service_error(broker: Proc) -> None:
    def fail(body: bytes) -> bytes:
        raise RuntimeError("no good: " + body.decode())

    w = scale0.Worker(broker.endpoint, "fail").start(fail)
    try:
        wait_for_service(broker.endpoint, "fail")
        with scale0.Client(broker.endpoint) as c, pytest.raises(scale0.ServiceError) as e:
            c.request("fail", b"x")
        assert "no good: x" in str(e.value)
        assert w.stats["failed"] == 1
    finally:
        w.stop(timeout=10)


def test_heartbeats_go_on_while_a_long_handler_runs(spawn: Spawn) -> None:
    # Liveness is 3 x 100 ms; the handler runs ten times that, and is not redelivered.
    b = broker_on(spawn, "--heartbeat-interval-ms", "100")
    calls: list[bytes] = []

    def slow(body: bytes) -> bytes:
        calls.append(body)
        time.sleep(1.0)
        return body

    w = scale0.Worker(b.endpoint, "slow", heartbeat_interval=0.1).start(slow)
    try:
        wait_for_service(b.endpoint, "slow")
        with scale0.Client(b.endpoint, timeout=5) as c:
            assert c.request("slow", b"x") == [b"x"]
        assert calls == [b"x"]
        totals = status(b.endpoint)["totals"]
        assert totals["redeliveries"] == 0 and totals["workers_expired"] == 0  # type: ignore[index]
    finally:
        w.stop(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_worker_reconnects_after_the_broker_restarts(spawn: Spawn) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    b = spawn(*broker_cmd(endpoint), listens=1)
    w = scale0.Worker(
        endpoint, "echo", heartbeat_interval=0.1, reconnect_initial=0.05, reconnect_max=0.2
    ).start(lambda *f: list(f))
    try:
        wait_for_service(endpoint, "echo")
        b.kill()
        spawn(*broker_cmd(endpoint), listens=1)
        # A new broker knows nothing of the worker; it re-registers by itself.
        wait_for_service(endpoint, "echo")
        with scale0.Client(endpoint) as c:
            assert c.request("echo", b"back") == [b"back"]
        assert w.stats["reconnects"] >= 1
    finally:
        w.stop(timeout=10)


def broker_cmd(endpoint: str, *args: str) -> list[str]:
    from conftest import binary

    return [binary(), "broker", "--bind", endpoint, "--heartbeat-interval-ms", "100", *args]


def test_sigterm_finishes_what_it_holds_then_disconnects(spawn: Spawn, broker: Proc) -> None:
    w = python_worker(spawn, broker.endpoint, "slow", "--sleep", "0.5", "--capacity", "2")
    wait_for_service(broker.endpoint, "slow")
    with scale0.Client(broker.endpoint, timeout=5) as c:
        futs = [c.submit("slow", "a"), c.submit("slow", "b")]
        started = {w.line(), w.line()}
        assert started == {"started a", "started b"}
        w.popen.send_signal(signal.SIGTERM)
        assert [f.result(timeout=10) for f in futs] == [[b"a"], [b"b"]]
        assert w.popen.wait(10) == 0
        # It said DISCONNECT: the broker forgot it at once, not after heartbeat silence.
        assert c.request("mmi.service", "slow") == [b"404"]
        totals = status(broker.endpoint)["totals"]
        assert totals["redeliveries"] == 0  # type: ignore[index]


def test_stop_returns_unstarted_requests_to_the_broker(broker: Proc) -> None:
    gate = threading.Event()
    seen: list[str] = []

    def held(body: bytes) -> bytes:
        seen.append(body.decode())
        gate.wait(10)
        return body

    w = scale0.Worker(broker.endpoint, "gate").start(held)
    other = None
    try:
        wait_for_service(broker.endpoint, "gate")
        with scale0.Client(broker.endpoint, timeout=10) as c:
            first = c.submit("gate", "1")
            eventually(lambda: seen == ["1"], what="the first request runs")
            stopper = threading.Thread(target=w.stop)
            stopper.start()
            second = c.submit("gate", "2")
            gate.set()
            assert first.result(timeout=10) == [b"1"]
            stopper.join(10)
            assert w.join(0)
            other = scale0.Worker(broker.endpoint, "gate").start(held)
            assert second.result(timeout=10) == [b"2"]
    finally:
        w.stop(timeout=10)
        if other is not None:
            other.stop(timeout=10)


def test_a_worker_killed_holding_requests_loses_none(spawn: Spawn, broker: Proc) -> None:
    doomed = python_worker(spawn, broker.endpoint, "work", "--sleep", "5", "--capacity", "3")
    wait_for_service(broker.endpoint, "work")
    with scale0.Client(broker.endpoint, timeout=10, retries=0) as c:
        futs = [c.submit("work", str(i)) for i in range(3)]
        assert {doomed.line() for _ in range(3)} == {"started 0", "started 1", "started 2"}
        doomed.kill()
        survivor = python_worker(spawn, broker.endpoint, "work", "--capacity", "3")
        assert [f.result(timeout=10) for f in futs] == [[b"0"], [b"1"], [b"2"]]
        # Each request ran once more, on the survivor; the client saw one reply each.
        assert sorted(survivor.line() for _ in range(6)) == sorted(
            [f"started {i}" for i in range(3)] + [f"done {i}" for i in range(3)]
        )
        assert c.stats["duplicates"] == 0
        totals = status(broker.endpoint)["totals"]
        assert totals["redeliveries"] == 3  # type: ignore[index]


def test_a_ring_during_the_drain_is_not_lost() -> None:
    # Regression: Wake.clear once dropped `pending` before draining its pipe, so a ring
    # landing during the drain left `pending` set with its byte read: every later ring
    # was skipped while the loop slept (a reply waited for the next heartbeat).
    wake = _sockets.Wake()
    real = wake._r

    class RingsDuringRecv:
        rang = False

        def recv(self, n: int) -> bytes:
            if not self.rang:
                self.rang = True
                wake.ring()  # another thread, while this one is in the system call
            return real.recv(n)

        def close(self) -> None:
            real.close()

    wake.ring()
    wake._r = RingsDuringRecv()  # type: ignore[assignment]
    wake.clear()
    wake.ring()  # must reach the pipe, or the loop sleeps through it
    assert select.select([wake.fd], [], [], 0)[0] == [wake.fd]
    wake.close()


def test_no_wake_up_is_lost_between_the_threads(broker: Proc) -> None:
    # Regression: the loop's wake-up once cleared its flag before draining its pipe, so a
    # ring in between was lost and a reply waited for the next heartbeat (here 30 s).
    # With retries=0 and a 2 s timeout any such stall fails the run.
    w = scale0.Worker(broker.endpoint, "quick", capacity=4, heartbeat_interval=30).start(
        lambda body: body
    )
    try:
        wait_for_service(broker.endpoint, "quick")
        with scale0.Client(broker.endpoint, timeout=2, retries=0) as c:
            for _ in range(3):
                n = sum(1 for _ in c.map("quick", (b"%d" % i for i in range(1000)), in_flight=3))
                assert n == 1000
            for i in range(300):
                assert c.request("quick", b"%d" % i) == [b"%d" % i]
    finally:
        w.stop(timeout=10)
