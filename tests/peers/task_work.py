#!/usr/bin/env python3
"""A task worker in the style of the ZeroMQ Guide's taskwork: PULL jobs from --vent,
PUSH one single-frame result per job to --sink. The result is the job upper-cased, so a
test can check which job it came from.

Prints "ready" once both sockets are connected, then "done <n>" per 100 jobs.
"""
import argparse
import sys

import zmq


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vent", required=True)
    p.add_argument("--sink", required=True)
    args = p.parse_args()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(args.vent)
    push = ctx.socket(zmq.PUSH)
    push.connect(args.sink)
    print("ready", flush=True)
    n = 0
    while True:
        frames = pull.recv_multipart()
        # The Guide's workers read one frame per message: a multi-frame job is not theirs.
        if len(frames) != 1:
            print("not a single-frame job:", frames, file=sys.stderr, flush=True)
            return 2
        push.send(frames[0].upper())
        n += 1
        if n % 100 == 0:
            print("done", n, flush=True)


if __name__ == "__main__":
    sys.exit(main())
