"""examples/python/sha1_worker.py and sha1_client.py, run as a user would."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

from conftest import Proc, Spawn, wait_for_service

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "python"


def test_the_sha1_worker_and_client(spawn: Spawn, broker: Proc) -> None:
    worker = spawn(sys.executable, str(EXAMPLES / "sha1_worker.py"), "--connect", broker.endpoint)
    wait_for_service(broker.endpoint, "sha1")
    lines = [f"line {i}" for i in range(100)]
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "sha1_client.py"), "--connect", broker.endpoint],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [hashlib.sha1(line.encode()).hexdigest() for line in lines]
    assert worker.stop(signal.SIGTERM) == 0
