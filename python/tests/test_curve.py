"""CURVE with key files from `scale0 keygen`: allowed keys work, a key limited to other
services gets Forbidden, an unknown key is Refused."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from conftest import Spawn, binary, broker_on

import scale0
import scale0.aio


def keygen(name: str, where: Path) -> None:
    subprocess.run([binary(), "keygen", name, "--dir", str(where)], check=True, capture_output=True)


def test_curve_client_and_worker(spawn: Spawn, tmp_path: Path) -> None:
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    keygen("broker", tmp_path)
    for name in ("client", "worker", "limited"):
        keygen(name, allowed)
    keygen("stranger", other)
    b = broker_on(
        spawn,
        "--curve-secret",
        str(tmp_path / "broker.key_secret"),
        "--curve-allow",
        str(allowed),
        "--curve-services",
        "limited=elsewhere",
    )
    server_key = str(tmp_path / "broker.key")
    w = scale0.Worker(
        b.endpoint,
        "secret",
        curve_server_key=server_key,
        curve_key=allowed / "worker.key_secret",
    ).start(lambda body: body[::-1])
    try:
        with scale0.Client(
            b.endpoint, curve_server_key=server_key, curve_key=allowed / "client.key_secret"
        ) as c:
            # The worker's READY may trail the first request: it waits in the queue.
            assert c.request("secret", b"abc", timeout=5) == [b"cba"]
        # The Z85 text of the server key works as well as its file.
        z85 = scale0.keys.load_public(server_key).decode()
        with (
            scale0.Client(
                b.endpoint, curve_server_key=z85, curve_key=allowed / "limited.key_secret"
            ) as c,
            pytest.raises(scale0.Forbidden),
        ):
            c.request("secret", b"abc")
        with (
            scale0.Client(
                b.endpoint,
                timeout=0.5,
                curve_server_key=server_key,
                curve_key=other / "stranger.key_secret",
            ) as c,
            pytest.raises(scale0.Refused),
        ):
            c.request("secret", b"abc")
        with scale0.Client(b.endpoint, timeout=0.5) as c, pytest.raises(scale0.Refused):
            c.request("secret", b"plaintext")

        async def aio() -> None:
            async with scale0.aio.Client(
                b.endpoint, curve_server_key=server_key, curve_key=allowed / "client.key_secret"
            ) as c:
                assert await c.request("secret", b"xyz") == [b"zyx"]
            async with scale0.aio.Client(b.endpoint, timeout=0.5) as c:
                with pytest.raises(scale0.Refused):
                    await c.request("secret", b"plaintext")

        asyncio.run(aio())
    finally:
        w.stop(timeout=10)


def test_key_files_must_be_whole(tmp_path: Path) -> None:
    keygen("me", tmp_path)
    with pytest.raises(ValueError, match="secret-key"):
        scale0.keys.load_pair(tmp_path / "me.key")
    with pytest.raises(ValueError, match="both"):
        scale0.Client("tcp://127.0.0.1:1", curve_key=tmp_path / "me.key_secret")
