"""The blocking client against the real broker and Rust workers."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time

import pytest
from conftest import Proc, Spawn, broker_on, rust_worker, served, wait_for_service

import scale0


@pytest.fixture
def echo(spawn: Spawn, broker: Proc) -> str:
    """A broker with Rust echo workers on `echo` (capacity 16); its endpoint."""
    rust_worker(spawn, broker.endpoint, "echo", "--echo", "--capacity", "16")
    rust_worker(spawn, broker.endpoint, "slow", "--sleep-ms", "300", "--concurrency", "4")
    wait_for_service(broker.endpoint, "echo")
    wait_for_service(broker.endpoint, "slow")
    return broker.endpoint


def test_request_returns_the_reply_frames(echo: str) -> None:
    with scale0.Client(echo) as c:
        assert c.request("echo", b"a", "b", bytearray(b"c")) == [b"a", b"b", b"c"]
        assert c.request("echo") == []
        assert c.stats["in_flight"] == 0


def test_submit_returns_futures_that_complete_in_any_order(echo: str) -> None:
    with scale0.Client(echo) as c:
        slow = c.submit("slow", b"slow")
        fast = [c.submit("echo", str(i)) for i in range(50)]
        done, _ = concurrent.futures.wait(fast, timeout=10)
        assert len(done) == 50
        assert not slow.done()
        assert [f.result() for f in fast] == [[str(i).encode()] for i in range(50)]
        assert slow.result(timeout=10) == [b"slow"]


def test_map_keeps_order_and_in_flight(echo: str) -> None:
    with scale0.Client(echo) as c:
        got = list(c.map("echo", (str(i) for i in range(500)), in_flight=32))
        assert got == [[str(i).encode()] for i in range(500)]
        frames = list(c.map("echo", [[b"a", b"b"], b"c"]))
        assert frames == [[b"a", b"b"], [b"c"]]


def test_unordered_map_yields_as_replies_come(echo: str) -> None:
    with scale0.Client(echo) as c:
        got = list(c.map("slow", [str(i) for i in range(8)], in_flight=8, ordered=False))
        assert sorted(got) == sorted([str(i).encode()] for i in range(8))


def test_map_raises_at_the_failing_item(spawn: Spawn) -> None:
    b = broker_on(spawn, "--unknown-service-wait-ms", "100")
    with scale0.Client(b.endpoint) as c:
        it = c.map("nobody", [b"x"])
        with pytest.raises(scale0.NoWorker):
            next(it)


def test_many_threads_share_one_client(echo: str) -> None:
    errors: list[BaseException] = []
    with scale0.Client(echo) as c:

        def run(n: int) -> None:
            try:
                for i in range(50):
                    assert c.request("echo", f"{n}-{i}") == [f"{n}-{i}".encode()]
            except BaseException as e:  # noqa: BLE001 (recorded; the test asserts none)
                errors.append(e)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_mmi_answers_native_requests(echo: str) -> None:
    with scale0.Client(echo) as c:
        assert c.request("mmi.service", "echo") == [b"200"]
        assert c.request("mmi.service", "nope") == [b"404"]
        status = json.loads(c.request("mmi.status")[0])
        assert "echo" in [s["name"] for s in status["services"]]


def test_no_broker_is_a_timeout_after_every_retry() -> None:
    with scale0.Client("tcp://127.0.0.1:1", timeout=0.1, retries=2) as c:
        with pytest.raises(scale0.Timeout) as e:
            c.request("echo", b"x")
        assert c.stats["retries"] == 2
    assert isinstance(e.value, scale0.Scale0Error)


def test_closing_fails_what_is_in_flight() -> None:
    c = scale0.Client("tcp://127.0.0.1:1", timeout=30)
    fut = c.submit("echo", b"x")
    c.close()
    with pytest.raises(scale0.Scale0Error):
        fut.result(timeout=5)
    with pytest.raises(scale0.Scale0Error):
        c.submit("echo", b"y")


def test_several_endpoints_spread_requests_over_brokers(spawn: Spawn) -> None:
    b1, b2 = broker_on(spawn), broker_on(spawn)
    for b in (b1, b2):
        served(spawn, b.endpoint, "echo")
    with scale0.Client([b1.endpoint, b2.endpoint]) as c:
        assert list(c.map("echo", [str(i) for i in range(40)])) == [
            [str(i).encode()] for i in range(40)
        ]
        totals = []
        for b in (b1, b2):
            with scale0.Client(b.endpoint) as one:
                totals.append(json.loads(one.request("mmi.status")[0])["totals"]["replies"])
    # Both brokers served some (the mmi.status requests above count too).
    assert all(t > 1 for t in totals), totals


def test_a_service_name_must_fit_the_protocol(echo: str) -> None:
    with scale0.Client(echo) as c:
        with pytest.raises(ValueError):
            c.request("", b"x")
        with pytest.raises(ValueError):
            c.request("x" * 256, b"x")


@pytest.mark.parametrize("acknowledged", [False, True])
def test_a_retry_reuses_the_id_and_never_runs_twice(broker: Proc, acknowledged: bool) -> None:
    calls: list[bytes] = []

    def slow(body: bytes) -> bytes:
        calls.append(body)
        time.sleep(0.5)
        return body

    w = scale0.Worker(broker.endpoint, "slow1").start(slow)
    try:
        wait_for_service(broker.endpoint, "slow1")
        with scale0.Client(
            broker.endpoint, timeout=0.15, retries=10, acknowledged=acknowledged
        ) as c:
            assert c.request("slow1", b"once") == [b"once"]
            if not acknowledged:
                # Each attempt re-sent the same request; the broker ran it once.
                assert c.stats["retries"] >= 2
            else:
                # ACCEPTED restarts the attempt's clock; partials nothing here.
                assert c.stats["retries"] >= 1
        assert calls == [b"once"]
    finally:
        w.stop(timeout=10)
