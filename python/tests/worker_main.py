"""A scale0.Worker in its own process, for tests that kill or signal it.

    python worker_main.py ENDPOINT SERVICE [--capacity N] [--sleep S] [--heartbeat S]

Echoes each request after sleeping S seconds; prints `started <first frame>` when a
handler starts and `done <first frame>` before it replies (flushed, for the test to read).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import scale0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("endpoint")
    p.add_argument("service")
    p.add_argument("--capacity", type=int, default=1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--heartbeat", type=float, default=2.5)
    args = p.parse_args()
    worker = scale0.Worker(
        args.endpoint, args.service, args.capacity, heartbeat_interval=args.heartbeat
    )

    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    @worker.handler
    def echo(*frames: bytes) -> list[bytes]:
        name = frames[0].decode() if frames else ""
        say(f"started {name}")
        time.sleep(args.sleep)
        say(f"done {name}")
        return list(frames)

    worker.serve()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
