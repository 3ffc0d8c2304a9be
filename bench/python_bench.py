#!/usr/bin/env python3
"""The Python package under load, against baselines measured in the same run.

    target/pyenv/bin/python bench/python_bench.py --bin target/release/scale0 \
        [--requests 20000] [--runs 3] [--in-flight 64] [--size 100]

Each run starts a broker on loopback and measures, with bodies of --size bytes:

- python client, pipelined: `scale0.Client.map` (--in-flight outstanding) against one Rust
  worker (`scale0 worker --echo --capacity 16`);
- python client, one at a time: `scale0.Client.request` in a loop, same worker;
- rust client, pipelined: `scale0 request --count N --in-flight K`, same worker (the
  reference the Python client is compared to);
- python worker under load: the same Rust client against a `scale0.Worker` (capacity 16,
  an echo handler) in its own process, and the pipelined Python client against it;
- pyzmq REQ/REP, no broker: a REQ socket and a REP socket in another process, one round
  trip at a time.

Prints a Markdown table: the median of the runs and their range, in requests per second
(or, for the `p50 µs` rows, the median round trip in microseconds).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

import scale0
import zmq


def serve_worker(endpoint: str) -> None:
    """The Python worker under load (run in its own process)."""
    worker = scale0.Worker(endpoint, "pyecho", capacity=16)
    worker.serve(lambda *frames: list(frames))


def serve_rep(endpoint: str) -> None:
    """A pyzmq REP echo server (its own process); prints its endpoint."""
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.bind(endpoint)
    print(rep.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    while True:
        rep.send_multipart(rep.recv_multipart())


def start(args: list[str], listens: bool = False) -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    endpoint = ""
    if listens:
        assert p.stdout is not None
        endpoint = p.stdout.readline().strip().split(" ")[-1]
    return p, endpoint


def wait_for(endpoint: str, service: str) -> None:
    with scale0.Client(endpoint, timeout=1, retries=0) as c:
        end = time.monotonic() + 10
        while c.request("mmi.service", service) != [b"200"]:
            if time.monotonic() > end:
                raise SystemExit(f"no worker for {service}")
            time.sleep(0.02)


def p50_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def rust_client(binary: str, endpoint: str, service: str, n: int, k: int, body: str) -> float:
    out = subprocess.run(
        [
            binary,
            "request",
            "--connect",
            endpoint,
            "--service",
            service,
            "--count",
            str(n),
            "--in-flight",
            str(k),
            body,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"ok (\d+) .* ([\d.]+) req/s", out)
    if not m or int(m.group(1)) != n:
        raise SystemExit(f"rust client: {out!r}")
    return float(m.group(2))


def one_run(binary: str, n: int, k: int, size: int) -> dict[str, float]:
    body = b"x" * size
    procs: list[subprocess.Popen[str]] = []
    try:
        broker, endpoint = start([binary, "broker", "--bind", "tcp://127.0.0.1:*"], True)
        procs.append(broker)
        procs.append(
            start(
                [
                    binary,
                    "worker",
                    "--connect",
                    endpoint,
                    "--service",
                    "echo",
                    "--echo",
                    "--capacity",
                    "16",
                ]
            )[0]
        )
        procs.append(start([sys.executable, __file__, "--serve-worker", endpoint])[0])
        wait_for(endpoint, "echo")
        wait_for(endpoint, "pyecho")
        out: dict[str, float] = {}
        with scale0.Client(endpoint, timeout=10) as c:
            list(c.map("echo", [body] * 1000, in_flight=k))  # warm-up
            t = time.perf_counter()
            for _ in c.map("echo", (body for _ in range(n)), in_flight=k):
                pass
            out["python client, pipelined (Client.map) → rust worker"] = n / (
                time.perf_counter() - t
            )
            m = max(1000, n // 10)
            rtts = []
            t = time.perf_counter()
            for _ in range(m):
                t0 = time.perf_counter()
                c.request("echo", body)
                rtts.append(time.perf_counter() - t0)
            out["python client, one at a time (Client.request) → rust worker"] = m / (
                time.perf_counter() - t
            )
            out["python client, one at a time → rust worker: p50 µs"] = p50_us(rtts)
            t = time.perf_counter()
            for _ in c.map("pyecho", (body for _ in range(n)), in_flight=k):
                pass
            out["python client, pipelined → python worker"] = n / (time.perf_counter() - t)
        out["rust client, pipelined (scale0 request) → rust worker"] = rust_client(
            binary, endpoint, "echo", n, k, body.decode()
        )
        out["rust client, pipelined → python worker (Worker, capacity 16)"] = rust_client(
            binary, endpoint, "pyecho", n, k, body.decode()
        )
        rep, rep_endpoint = start(
            [sys.executable, __file__, "--serve-rep", "tcp://127.0.0.1:*"], True
        )
        procs.append(rep)
        ctx = zmq.Context()
        req = ctx.socket(zmq.REQ)
        req.connect(rep_endpoint)
        m = max(1000, n // 10)
        for _ in range(100):
            req.send(body)
            req.recv()
        rtts = []
        t = time.perf_counter()
        for _ in range(m):
            t0 = time.perf_counter()
            req.send(body)
            req.recv()
            rtts.append(time.perf_counter() - t0)
        out["pyzmq REQ/REP, no broker, one at a time"] = m / (time.perf_counter() - t)
        out["pyzmq REQ/REP, no broker: p50 µs"] = p50_us(rtts)
        req.close(0)
        ctx.term()
        return out
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default="target/release/scale0")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--in-flight", type=int, default=64)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--serve-worker", metavar="ENDPOINT", help=argparse.SUPPRESS)
    p.add_argument("--serve-rep", metavar="ENDPOINT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_worker:
        serve_worker(args.serve_worker)
        return 0
    if args.serve_rep:
        serve_rep(args.serve_rep)
        return 0
    runs = [one_run(args.bin, args.requests, args.in_flight, args.size) for _ in range(args.runs)]
    print(
        f"{args.requests} requests of {args.size} bytes, {args.in_flight} in flight where "
        f"pipelined; {args.runs} runs; python {sys.version.split()[0]}, pyzmq "
        f"{zmq.__version__}, libzmq {zmq.zmq_version()}, {os.cpu_count()} CPUs\n"
    )
    print("| scenario | median | range |")
    print("|---|---:|---:|")
    for name in runs[0]:
        values = [r[name] for r in runs]
        print(
            f"| {name} | {statistics.median(values):,.0f} | "
            f"{min(values):,.0f} to {max(values):,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
