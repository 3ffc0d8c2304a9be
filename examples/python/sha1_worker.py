#!/usr/bin/env python3
"""A Majordomo worker on the scale0 package: answers each request on `sha1` with the hex
SHA-1 of its body, like `scale0 worker --service sha1 --sha1`. SIGTERM or Ctrl-C finishes
the requests it holds, then it says DISCONNECT.

    pip install ./python
    python3 sha1_worker.py [--connect tcp://localhost:5555] [--capacity 4]
"""

import argparse
import hashlib

import scale0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--connect", default="tcp://localhost:5555")
    p.add_argument("--service", default="sha1")
    p.add_argument("--capacity", type=int, default=4, help="requests held at once")
    args = p.parse_args()
    worker = scale0.Worker(args.connect, args.service, capacity=args.capacity)

    @worker.handler
    def sha1(*frames: bytes) -> str:
        return hashlib.sha1(b"".join(frames)).hexdigest()

    worker.serve()


if __name__ == "__main__":
    main()
