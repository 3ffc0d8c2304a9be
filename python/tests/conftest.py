"""Fixtures: the real `scale0` binary (env SCALE0_BIN) run as separate processes on
`tcp://127.0.0.1:*`, their real endpoints read back from their `listening` lines."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

import scale0

#: Generous bounds that only catch hangs; nothing waits for them to pass.
STARTUP_S = 10.0


def binary() -> str:
    """The scale0 binary under test; a missing one fails the test (never a skip)."""
    path = os.environ.get("SCALE0_BIN", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"SCALE0_BIN must name the scale0 binary (got {path!r})")
    return path


class Proc:
    """A child process whose stdout lines are collected by a reader thread."""

    def __init__(self, args: list[str], *, listens: int = 0, env: dict[str, str] | None = None):
        self.args = args
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stderr: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        #: The endpoints from the first `listening` lines.
        self.endpoints = [self._listening() for _ in range(listens)]

    def _read_out(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))

    def _read_err(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.stderr.append(line)

    def line(self, timeout: float = STARTUP_S) -> str:
        """The next line of stdout."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.args}: no output in {timeout} s; stderr: {self.stderr[-5:]}")

    def _listening(self) -> str:
        first = self.line()
        assert first.startswith("listening "), first
        return first.split(" ", 1)[1].strip()

    @property
    def endpoint(self) -> str:
        """The first endpoint it listens on."""
        return self.endpoints[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signals it and waits for it to exit; kills it when it will not."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        """kill -9 and reap."""
        self.stop(signal.SIGKILL)


Spawn = Callable[..., Proc]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts processes (killed at the end of the test)."""
    procs: list[Proc] = []

    def start(*args: str, listens: int = 0, env: dict[str, str] | None = None) -> Proc:
        p = Proc(list(args), listens=listens, env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


@pytest.fixture
def broker_args() -> list[str]:
    """Extra flags for the `broker` fixture (override in a test module)."""
    return []


@pytest.fixture
def broker(spawn: Spawn, broker_args: list[str]) -> Proc:
    """A broker on a free loopback port."""
    return spawn(binary(), "broker", "--bind", "tcp://127.0.0.1:*", *broker_args, listens=1)


def broker_on(spawn: Spawn, *args: str) -> Proc:
    """A broker with these flags."""
    return spawn(binary(), "broker", "--bind", "tcp://127.0.0.1:*", *args, listens=1)


def rust_worker(spawn: Spawn, endpoint: str, service: str, *args: str) -> Proc:
    """`scale0 worker` serving `service` (`--echo` unless other handler flags are given)."""
    handler = list(args) or ["--echo"]
    return spawn(binary(), "worker", "--connect", endpoint, "--service", service, *handler)


def python_worker(spawn: Spawn, endpoint: str, service: str, *args: str) -> Proc:
    """tests/worker_main.py in its own interpreter."""
    script = str(Path(__file__).with_name("worker_main.py"))
    return spawn(sys.executable, script, endpoint, service, *args)


def wait_for_service(endpoint: str, service: str, timeout: float = STARTUP_S) -> None:
    """Polls MMI until the broker has a worker for `service`."""
    end = time.monotonic() + timeout
    with scale0.Client(endpoint, timeout=1.0, retries=0) as c:
        while time.monotonic() < end:
            if c.request("mmi.service", service) == [b"200"]:
                return
            time.sleep(0.02)
    pytest.fail(f"no worker for {service} within {timeout} s")


def served(spawn: Spawn, endpoint: str, service: str, *args: str) -> Proc:
    """`rust_worker`, once the broker has it for `service`."""
    worker = rust_worker(spawn, endpoint, service, *args)
    wait_for_service(endpoint, service)
    return worker


def eventually(check: Callable[[], bool], timeout: float = STARTUP_S, what: str = "") -> None:
    """Polls `check` until it holds or the deadline passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.02)
    pytest.fail(f"not within {timeout} s: {what}")
