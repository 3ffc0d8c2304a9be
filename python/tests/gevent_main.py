"""The blocking client under gevent (monkey-patched), for test_gevent.py.

    python gevent_main.py ENDPOINT

Twenty greenlets each make a request to `slow` (200 ms a request, on twenty workers) at
the same time, while another greenlet ticks; prints one JSON line.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import zmq.green  # noqa: E402

import scale0  # noqa: E402


def main() -> int:
    endpoint = sys.argv[1]
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    with scale0.Client(endpoint, timeout=5) as c:
        green = c._zmq is zmq.green
        start = time.monotonic()
        jobs = [gevent.spawn(c.request, "slow", str(i)) for i in range(20)]
        gevent.joinall(jobs, timeout=20)
        elapsed = time.monotonic() - start
        replies = [j.value for j in jobs]
        fut = c.submit("slow", b"future")
        future_reply = fut.result(timeout=5)
        try:
            c.request("nobody", b"x", deadline=0)
            error = ""
        except scale0.DeadlineExceeded as e:
            error = type(e).__name__
    ticker.kill()
    out = {
        "green": green,
        "ok": replies == [[str(i).encode()] for i in range(20)],
        "future": future_reply == [b"future"],
        "elapsed": elapsed,
        "ticks": ticks,
        "error": error,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
