#!/usr/bin/env python3
"""A client built on majortomo 0.2.0 (PyPI), through its public `Client` API only, so tests
can see how scale0 gets on with a third-party MDP/0.2 library as it really is.

Usage:
    majortomo_client.py --endpoint tcp://127.0.0.1:PORT --service S
                        [--count N] [--timeout-ms MS] [--partials]
    majortomo_client.py --endpoint tcp://127.0.0.1:PORT --mmi SERVICE [--timeout-ms MS]

Request mode sends --count requests, bodies "r0".."rN-1", one at a time and never retries
one. --timeout-ms (default 10000) is each request's deadline for all of its reply parts.
Prints one JSON line per reply:
  - without --partials, the whole reply as majortomo's `recv_all_as_list` gives it (every
    part's frames, flattened): {"body": [...], "partial": false};
  - with --partials, one line per part, {"body": [...], "partial": true} for each PARTIAL and
    {"body": [...], "partial": false} for the FINAL. majortomo's `recv_part` does not say
    which a part was; this client learns it from the next call (None after the FINAL), so a
    part's line is printed once the following part (or the end) has arrived.
A reply message majortomo rejects (ProtocolError; majortomo has already dropped it) prints
{"protocol_error": "..."} and the client keeps waiting until the deadline. Body frames are
printed as UTF-8 text (undecodable bytes replaced).
At the end: {"ok": bool, "replies": finals received, "partials": n, "protocol_errors": n,
"timed_out": bool}. On the first request past its deadline the client stops there (it
does not retry, nor send the rest). Exit 0 only if every request got its FINAL.

--mmi SERVICE asks `mmi.service` about SERVICE (RFC 8) and prints the answer code (the last
frame of the reply body, e.g. 200 or 404) on one line; exit 0 if an answer came in time,
else it prints the JSON summary and exits 1. majortomo's own broker has no MMI: there the
request waits in a queue for a worker of "mmi.service" and this mode times out.

Needs: pip install majortomo six pyzmq (majortomo 0.2.0 imports `six` without declaring it).
"""
import argparse
import contextlib
import json
import sys
import time
from typing import List, Optional

import zmq
from loopback import loopback
from majortomo import Client, error

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, type=loopback)
    p.add_argument("--service", default=None, help="required unless --mmi")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout-ms", type=int, default=10000)
    p.add_argument("--partials", action="store_true",
                   help="print each PARTIAL and the FINAL on lines of their own")
    p.add_argument("--mmi", metavar="SERVICE", default=None,
                   help="ask mmi.service whether SERVICE has workers; print the code")
    args = p.parse_args()
    if args.mmi is None and args.service is None:
        p.error("--service is required unless --mmi is given")
    if args.timeout_ms <= 0:
        p.error("--timeout-ms must be positive")
    return args


def text(frames: List[bytes]) -> List[str]:
    return [f.decode(errors="replace") for f in frames]


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


class Exchange:
    """One request's reply parts, each wait bounded by the request's deadline."""

    def __init__(self, client: Client, timeout_ms: int) -> None:
        self.client = client
        self.deadline = time.monotonic() + timeout_ms / 1000
        self.protocol_errors = 0

    def part(self) -> Optional[List[bytes]]:
        """The next part, None once the FINAL has been received; raises error.Timeout."""
        while True:
            # Even past the deadline recv_part is called (with 1 ms): after the FINAL it
            # returns None at once, which is how the FINAL is told from a PARTIAL.
            # recv_part treats a timeout of 0 as "wait forever": never pass it one.
            left = self.deadline - time.monotonic()
            try:
                # majortomo prints a frame list to stdout on a bad header: keep stdout ours.
                with contextlib.redirect_stdout(sys.stderr):
                    return self.client.recv_part(timeout=max(left, 0.001))
            except error.ProtocolError as e:
                self.protocol_errors += 1
                emit({"protocol_error": str(e)})
                if time.monotonic() >= self.deadline:
                    raise error.Timeout("deadline passed") from e


def run_requests(client: Client, args: argparse.Namespace) -> dict:
    summary = {"ok": False, "replies": 0, "partials": 0, "protocol_errors": 0,
               "timed_out": False}
    for i in range(args.count):
        client.send(args.service, b"r%d" % i)
        exchange = Exchange(client, args.timeout_ms)
        try:
            if not args.partials:
                # The same as recv_all_as_list, with one deadline for all the parts.
                body = []  # type: List[bytes]
                part = exchange.part()
                while part is not None:
                    body.extend(part)
                    part = exchange.part()
                emit({"body": text(body), "partial": False})
            else:
                previous = exchange.part()
                while previous is not None:
                    following = exchange.part()
                    emit({"body": text(previous), "partial": following is not None})
                    if following is not None:
                        summary["partials"] += 1
                    previous = following
            summary["replies"] += 1
        except error.Timeout:
            summary["timed_out"] = True
            break
        finally:
            summary["protocol_errors"] += exchange.protocol_errors
    summary["ok"] = summary["replies"] == args.count
    return summary


def run_mmi(client: Client, args: argparse.Namespace) -> Optional[dict]:
    """Prints the code and returns None, or returns a summary when no answer came."""
    client.send("mmi.service", args.mmi.encode())
    exchange = Exchange(client, args.timeout_ms)
    body = []  # type: List[bytes]
    try:
        part = exchange.part()
        while part is not None:
            body.extend(part)
            part = exchange.part()
    except error.Timeout:
        return {"ok": False, "replies": 0, "protocol_errors": exchange.protocol_errors,
                "timed_out": True}
    if not body:
        return {"ok": False, "replies": 1, "protocol_errors": exchange.protocol_errors,
                "timed_out": False, "empty_reply": True}
    print(body[-1].decode(errors="replace"), flush=True)
    return None


def main() -> int:
    args = parse_args()
    ctx = zmq.Context()
    client = Client(args.endpoint, zmq_context=ctx)
    try:
        client.connect()
        if args.mmi is not None:
            summary = run_mmi(client, args)
            if summary is None:
                return 0
        else:
            summary = run_requests(client, args)
        emit(summary)
        return 0 if summary["ok"] else 1
    finally:
        client.close()  # sets linger 0 and closes the socket
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
