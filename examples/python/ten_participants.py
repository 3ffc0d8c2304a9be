#!/usr/bin/env python3
"""The classic test of a task pool: ten participants, each at once a worker and able to
distribute. One of them pushes 1000 half-second jobs to all of them and waits for every
result, or for its retries: each job ends in exactly one result, in input order, even when
a participant leaves halfway with jobs in hand (`--leave-at`).

Every participant binds a `scale0.Map` (its own jobs and results endpoints) and runs a
`scale0.work` worker connected to the maps of all participants, its own included, so any of
them could distribute. Rust `scale0 work` workers can join the same maps (the endpoints are
printed), and so can workers on other machines when the maps bind `tcp://*:PORT`.

    pip install ./python
    python examples/python/ten_participants.py                  # 1000 jobs of 500 ms
    python examples/python/ten_participants.py --jobs 40 --job-ms 20 --participants 4
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time

import scale0
from scale0.pipeline import Map, Source


class Participant:
    """A member of the pool: a map it can distribute with, and a worker for everyone."""

    def __init__(self, name: str, job_ms: int, timeout_ms: int) -> None:
        self.name = name
        self.job_ms = job_ms
        self.map = Map("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", timeout_ms=timeout_ms)
        self.stop = threading.Event()
        self.worker: threading.Thread | None = None

    def job(self, payload: bytes) -> bytes:
        """What a job does here: half a second of work, then who did it."""
        time.sleep(self.job_ms / 1000)
        return payload + b" by " + self.name.encode()

    def join(self, everyone: list[Source]) -> None:
        """Starts this participant's worker on the maps of every participant."""
        self.worker = threading.Thread(
            target=scale0.work,
            args=(everyone, self.job),
            kwargs={"stop": self.stop, "name": self.name, "interval_ms": 200},
            daemon=True,
        )
        self.worker.start()

    def leave(self) -> None:
        """Stops the worker: it says goodbye, and the jobs it held are sent elsewhere."""
        self.stop.set()

    def close(self) -> None:
        """Leaves and closes the map."""
        self.leave()
        self.map.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--participants", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--job-ms", type=int, default=500, help="how long each job takes")
    p.add_argument(
        "--timeout-ms", type=int, default=0, help="per-job limit (default: ten job times)"
    )
    p.add_argument(
        "--leave-at",
        type=float,
        default=0.5,
        help="the last participant leaves when this share of the results is in (0: never)",
    )
    args = p.parse_args()
    timeout_ms = args.timeout_ms or 10 * args.job_ms
    members = [Participant(f"p{i}", args.job_ms, timeout_ms) for i in range(args.participants)]
    everyone = [m.map.source for m in members]
    for m in members:
        m.join(everyone)
    distributor, leaver = members[0], members[-1]
    print(f"{len(members)} participants; {distributor.name} distributes on {everyone[0].jobs}")
    started = time.monotonic()
    done_by: collections.Counter[str] = collections.Counter()
    ok = failed = retried = 0
    try:
        for r in distributor.map.results(f"job {i}" for i in range(args.jobs)):
            if r.index != ok + failed:
                print(f"out of order: job {r.index} after {ok + failed}", file=sys.stderr)
                return 1
            if r.ok:
                ok += 1
                done_by[r.worker or "?"] += 1
            else:
                failed += 1
                print(f"job {r.index} failed after {r.attempts} attempts: {r.error}")
            retried += r.attempts > 1
            if args.leave_at and ok + failed == int(args.jobs * args.leave_at) and leaver.worker:
                print(f"{leaver.name} leaves after {ok + failed} results")
                leaver.leave()
            if (ok + failed) % max(1, args.jobs // 10) == 0:
                print(f"{ok + failed}/{args.jobs} in {time.monotonic() - started:.1f} s")
    finally:
        stats = distributor.map.stats
        for m in members:
            m.close()
    took = time.monotonic() - started
    print(f"{args.jobs} jobs: {ok} ok, {failed} failed, {retried} run more than once")
    print(f"in {took:.1f} s; map: {stats.sent} sent, {stats.retried} retried")
    print("by worker: " + ", ".join(f"{w} {n}" for w, n in sorted(done_by.items())))
    return 0 if failed == 0 and ok == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
