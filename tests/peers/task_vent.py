#!/usr/bin/env python3
"""A task ventilator in the style of the ZeroMQ Guide's taskvent: a PUSH socket bound to
--bind, one single-frame job per line of --jobs (a file). The Guide waits for Enter before
sending; this starts at once, and its first send waits for a worker as any PUSH does.

Prints "listening <endpoint>" first, then "sent <n>" at the end.
"""
import argparse
import sys

import zmq


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bind", required=True)
    p.add_argument("--jobs", required=True)
    args = p.parse_args()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.bind(args.bind)
    print("listening", push.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    with open(args.jobs, "rb") as f:
        jobs = f.read().split(b"\n")
    if jobs and jobs[-1] == b"":
        jobs.pop()
    # A PUSH send blocks until some worker is connected, as in the Guide.
    for job in jobs:
        push.send(job)
    print("sent", len(jobs), flush=True)
    push.close(linger=10000)
    ctx.term()


if __name__ == "__main__":
    sys.exit(main())
