"""The blocking client under gevent, through zmq.green, in a monkey-patched interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import Proc, Spawn, served


def test_the_client_cooperates_under_gevent(spawn: Spawn, broker: Proc) -> None:
    served(spawn, broker.endpoint, "slow", "--sleep-ms", "200", "--concurrency", "20")
    script = Path(__file__).with_name("gevent_main.py")
    done = subprocess.run(
        [sys.executable, str(script), broker.endpoint],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["green"] and out["ok"] and out["future"], out
    assert out["error"] == "DeadlineExceeded"
    # Twenty 200 ms requests at once: together, not one after another (4 s) ...
    assert out["elapsed"] < 2.0, out
    # ... and the hub kept running other greenlets meanwhile.
    assert out["ticks"] >= 5, out
