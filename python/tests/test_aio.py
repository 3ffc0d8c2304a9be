"""scale0.aio.Client: the same API on asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from conftest import Proc, Spawn, broker_on, served, wait_for_service

import scale0
import scale0.aio


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_request_submit_map_and_stream(spawn: Spawn, broker: Proc) -> None:
    served(spawn, broker.endpoint, "echo", "--echo", "--capacity", "8")

    def count(n: bytes) -> Iterator[str]:
        yield from (str(i) for i in range(int(n)))

    w = scale0.Worker(broker.endpoint, "count").start(count)
    wait_for_service(broker.endpoint, "count")

    async def main() -> None:
        async with scale0.aio.Client(broker.endpoint) as c:
            assert await c.request("echo", b"a", "b") == [b"a", b"b"]
            futs = [c.submit("echo", str(i)) for i in range(20)]
            assert await asyncio.gather(*futs) == [[str(i).encode()] for i in range(20)]
            got = [r async for r in c.map("echo", (str(i) for i in range(200)), in_flight=16)]
            assert got == [[str(i).encode()] for i in range(200)]
            unordered = [r async for r in c.map("echo", ["x", "y"], ordered=False)]
            assert sorted(unordered) == [[b"x"], [b"y"]]
            assert [p async for p in c.stream("count", "3")] == [[b"0"], [b"1"], [b"2"]]
            seen: list[list[bytes]] = []
            assert await c.request("count", "2", on_partial=seen.append) == [b"1"]
            assert seen == [[b"0"]]

    try:
        run(main())
    finally:
        w.stop(timeout=10)


def test_statuses_and_timeouts_raise(spawn: Spawn) -> None:
    b = broker_on(spawn, "--unknown-service-wait-ms", "100", "--max-queue-depth", "1")

    async def main() -> None:
        async with scale0.aio.Client(b.endpoint) as c:
            with pytest.raises(scale0.NoWorker):
                await c.request("nobody", b"x")
            with pytest.raises(scale0.DeadlineExceeded):
                await c.request("nobody", b"x", deadline=0)
            first = c.submit("nobody", b"1")
            with pytest.raises(scale0.QueueFull):
                await c.request("nobody", b"2")
            with pytest.raises(scale0.NoWorker):
                await first
        async with scale0.aio.Client("tcp://127.0.0.1:1", timeout=0.1, retries=1) as c:
            with pytest.raises(scale0.Timeout):
                await c.request("echo", b"x")
            assert c.stats["retries"] == 1
            pending = c.submit("echo", b"y", timeout=30)
        with pytest.raises(scale0.Scale0Error):
            await pending

    run(main())
