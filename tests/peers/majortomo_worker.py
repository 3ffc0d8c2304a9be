#!/usr/bin/env python3
"""A worker built on majortomo 0.2.0 (PyPI), through its public `Worker` API only, so tests
can see how scale0 gets on with a third-party MDP/0.2 library as it really is.

Usage:
    majortomo_worker.py --endpoint tcp://127.0.0.1:PORT --service S
                        [--partials N] [--heartbeat-ms MS] [--heartbeat-timeout-ms MS]
                        [--hold-file PATH] [--reconnect] [--lifetime-s SECONDS]

Prints "ready" once it has sent READY, then for each request:
  - N PARTIAL replies, partial i being the one frame b"partial <i>";
  - a FINAL reply echoing the request body frame for frame (not joined);
  - the line "served <body frames joined by '|'>".
With --hold-file, the first request it receives is not answered: it prints
"holding <body>", writes the body (frames joined by '|') to PATH (atomically, via a rename)
and sleeps until killed, so a test can kill -9 it while it holds the request. majortomo
sends nothing at all while its caller is busy (no heartbeats), so neither does this worker.

majortomo's own loop (`WorkerRequestsIterator`) ends when the broker says DISCONNECT; so does
this worker (it prints "disconnected" and exits 2) unless --reconnect is given, in which case
it sends READY on a fresh socket and goes on. A malformed broker message is logged to stderr
("protocol error: ...") and skipped, as majortomo's iterator does. Every wait is bounded by
--lifetime-s (default 600): after it the worker says DISCONNECT and exits 3.

Needs: pip install majortomo six pyzmq (majortomo 0.2.0 imports `six` without declaring it).
"""
import argparse
import contextlib
import os
import signal
import sys
import time
from types import FrameType
from typing import List, Optional

import zmq
from loopback import loopback
from majortomo import Worker, error

class Lifetime(Exception):
    """Raised from the alarm or SIGTERM handler to end the worker wherever it waits."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, type=loopback)
    p.add_argument("--service", required=True)
    p.add_argument("--partials", type=int, default=0, help="PARTIAL replies before each FINAL")
    p.add_argument("--heartbeat-ms", type=int, default=2500,
                   help="majortomo's heartbeat_interval (its default: 2500 ms)")
    p.add_argument("--heartbeat-timeout-ms", type=int, default=10000,
                   help="majortomo's heartbeat_timeout: reconnect after this long without a "
                        "message from the broker (its default: 10000 ms)")
    p.add_argument("--hold-file", default=None,
                   help="on the first request, write this file and sleep until killed")
    p.add_argument("--reconnect", action="store_true",
                   help="on DISCONNECT send READY again on a new socket instead of exiting")
    p.add_argument("--lifetime-s", type=int, default=600,
                   help="deadline for the whole run, holding included")
    return p.parse_args()


def joined(frames: List[bytes]) -> str:
    return b"|".join(frames).decode(errors="replace")


def hold(path: str, body: List[bytes]) -> None:
    """Announces the held request, then sleeps until a signal or the lifetime ends it."""
    print("holding", joined(body), flush=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"|".join(body))
    os.replace(tmp, path)
    while True:
        time.sleep(3600)


def main() -> int:
    args = parse_args()

    def stop(signum: int, _frame: Optional[FrameType]) -> None:
        raise Lifetime(signal.Signals(signum).name)

    signal.signal(signal.SIGALRM, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.alarm(args.lifetime_s)

    ctx = zmq.Context()
    # A short linger: long enough for the DISCONNECT sent by close(), short enough for term().
    worker = Worker(args.endpoint, args.service,
                    heartbeat_interval=args.heartbeat_ms / 1000,
                    heartbeat_timeout=args.heartbeat_timeout_ms / 1000,
                    zmq_context=ctx, zmq_linger=500)
    status = 0
    try:
        worker.connect()
        print("ready", flush=True)
        while True:
            try:
                # majortomo prints a frame list to stdout on a bad header: keep stdout ours.
                with contextlib.redirect_stdout(sys.stderr):
                    client, body = worker.wait_for_request()
            except error.ProtocolError as e:
                print("protocol error:", e, file=sys.stderr, flush=True)
                continue
            except error.Disconnected:
                if not args.reconnect:
                    print("disconnected", flush=True)
                    status = 2
                    break
                print("disconnected; reconnecting", flush=True)
                worker.connect()
                continue
            if args.hold_file:
                hold(args.hold_file, body)
            for i in range(args.partials):
                worker.send_reply_partial(client, [b"partial %d" % i])
            worker.send_reply_final(client, list(body))
            print("served", joined(body), flush=True)
    except Lifetime as e:
        print("stopping:", e, file=sys.stderr, flush=True)
        status = 3 if str(e) == "SIGALRM" else 0
    finally:
        # Cleanup is short (linger 500 ms); a second SIGTERM (coreutils `timeout` sends two)
        # must not interrupt it.
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        worker.close()  # sends DISCONNECT if still connected, then closes the socket
        ctx.term()
    return status


if __name__ == "__main__":
    sys.exit(main())
