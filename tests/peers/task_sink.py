#!/usr/bin/env python3
"""A task sink in the style of the ZeroMQ Guide's tasksink: a PULL socket bound to
--bind that collects --expect single-frame results and prints each on its own line.

Prints "listening <endpoint>" first, then the results, then "collected <n>".
"""
import argparse
import sys

import zmq


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bind", required=True)
    p.add_argument("--expect", type=int, required=True)
    args = p.parse_args()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(args.bind)
    print("listening", pull.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    for _ in range(args.expect):
        frames = pull.recv_multipart()
        if len(frames) != 1:
            print("not a single-frame result:", frames, file=sys.stderr, flush=True)
            return 2
        print(frames[0].decode(), flush=True)
    print("collected", args.expect, flush=True)


if __name__ == "__main__":
    sys.exit(main())
