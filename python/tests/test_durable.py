"""A durable broker killed and restarted: the client's retries (same id) get the reply."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Spawn, binary, eventually, wait_for_service
from test_worker import free_port

import scale0


def test_a_request_survives_a_broker_restart(spawn: Spawn, tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [binary(), "broker", "--bind", endpoint, "--data-dir", str(tmp_path)]
    b = spawn(*cmd, listens=1)
    calls: list[bytes] = []
    with scale0.Client(endpoint, timeout=0.5, retries=20, acknowledged=True) as c:
        fut = c.submit("later", b"kept", deadline=float("inf"))

        def queued() -> bool:
            with scale0.Client(endpoint) as probe:
                doc = json.loads(probe.request("mmi.status")[0])
            return bool(doc["outstanding"] == 1)

        # ACCEPTED from a durable broker means on disk; mmi.status shows it queued.
        eventually(queued, what="the request is queued")
        b.kill()
        spawn(*cmd, listens=1)

        def serve(body: bytes) -> bytes:
            calls.append(body)
            return body.upper()

        w = scale0.Worker(endpoint, "later").start(serve)
        try:
            wait_for_service(endpoint, "later")
            assert fut.result(timeout=15) == [b"KEPT"]
        finally:
            w.stop(timeout=10)
        assert calls == [b"kept"]
        assert c.stats["retries"] >= 1
