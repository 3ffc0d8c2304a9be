"""Requests as fast as possible for a service no worker offers, pipelined over several DEALERs.

By default they are MDP/0.1 requests, [b"", b"MDPC01", b"nobody", body], and no reply is
read (MDP has no frame for a failure; the broker queues them up to --max-queue-depth and
drops the rest). With --native they are native requests from DEALERs with their own routing
ids, [S0C1, 0x01, request id, b"nobody", b"" (no deadline), body]; every answer is read and
the ERRORs are counted by status (queue_full, no_worker, ...) for --wait seconds after the
last send, or until every request has had its answer.

usage: flood_absent_service.py ENDPOINT COUNT [--native] [--sockets 4] [--body-bytes 16]
                               [--wait 5] [--service nobody]
Afterwards an MDP/0.1 request to mmi.service must be answered within 10 s.
Exit 0 when every request was sent (no send blocked for 10 s) and the broker answered that.
Last line: `ok: sent N in S s (R/s) ...`, or with --native `ok: {json of the figures}`.
"""

import argparse
import json
import os
import sys
import time

import zmq


def mmi_ms(ctx: zmq.Context, endpoint: str) -> float | None:
    """Milliseconds an MDP/0.1 mmi.service request took to be answered; None after 10 s."""
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        t0 = time.monotonic()
        s.send_multipart([b"MDPC01", b"mmi.service", b"nobody"])
        if not s.poll(10000):
            return None
        s.recv_multipart()
        return (time.monotonic() - t0) * 1000
    finally:
        s.close()


def drain(s: zmq.Socket, counts: dict[str, int], errors: dict[str, int], answered: set[bytes]) -> None:
    """Reads every native answer already waiting on s: [S0C1, kind, request id, ...]."""
    while True:
        try:
            m = s.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        kind = {b"\x02": "accepted", b"\x03": "partials", b"\x04": "finals", b"\x05": "error_replies"}.get(
            m[1] if len(m) > 1 else b"", "other")
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "error_replies":
            status = m[3].decode(errors="replace") if len(m) > 3 else "(none)"
            errors[status] = errors.get(status, 0) + 1
        if kind in ("finals", "error_replies") and len(m) > 2:
            answered.add(m[2])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("endpoint")
    p.add_argument("count", type=int)
    p.add_argument("--native", action="store_true")
    p.add_argument("--sockets", type=int, default=4)
    p.add_argument("--body-bytes", type=int, default=16)
    p.add_argument("--wait", type=float, default=5.0)
    p.add_argument("--service", default="nobody")
    a = p.parse_args()
    service, body = a.service.encode(), b"x" * a.body_bytes
    ctx = zmq.Context()
    socks = []
    for k in range(a.sockets):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, 10000)  # a broker that stops reading fails the run
        if a.native:
            s.setsockopt(zmq.ROUTING_ID, b"flood-%d-%d" % (os.getpid(), k))
            s.setsockopt(zmq.RCVHWM, 0)  # keep every answer: we count them all
        s.connect(a.endpoint)
        socks.append(s)
    counts: dict[str, int] = {}
    errors: dict[str, int] = {}
    answered: set[bytes] = set()
    sent, problem = 0, None
    t0 = time.monotonic()
    try:
        for i in range(a.count):
            s = socks[i % len(socks)]
            if a.native:
                s.send_multipart([b"S0C1", b"\x01", b"%x" % i, service, b"", body])
                if i % 256 == 255:
                    drain(s, counts, errors, answered)
            else:
                s.send_multipart([b"", b"MDPC01", service, body])
            sent += 1
    except zmq.Again:
        problem = f"a send blocked for 10 s after {sent} requests: the broker stopped reading"
    seconds = max(time.monotonic() - t0, 1e-9)
    if a.native:
        deadline = time.monotonic() + a.wait
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        while len(answered) < sent and time.monotonic() < deadline:
            for s, _ in poller.poll(int(max(0.0, deadline - time.monotonic()) * 1000) + 1):
                drain(s, counts, errors, answered)
    probe = mmi_ms(ctx, a.endpoint)
    if probe is None:
        problem = problem or "mmi.service was not answered within 10 s after the flood"
    for s in socks:
        s.close()
    ctx.term()
    if problem:
        print(f"flood_absent_service: {problem}", file=sys.stderr)
        return 1
    if a.native:
        figures = {"sent": sent, "seconds": round(seconds, 3), "rate": round(sent / seconds), "answered": len(answered),
                   "unanswered": sent - len(answered), **counts, "errors": errors, "mmi_ms": round(probe, 1)}
        print("ok: " + json.dumps(figures))
    else:
        print(f"ok: sent {sent} in {seconds:.2f} s ({sent / seconds:.0f}/s), mmi.service answered in {probe:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
