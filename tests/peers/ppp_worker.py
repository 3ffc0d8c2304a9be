#!/usr/bin/env python3
"""A Paranoid Pirate worker written from ZeroMQ RFC 6 (PPP), for testing scale0's queue:
a DEALER that sends READY (0x01), heartbeats (0x02) every --heartbeat-ms, expects the
queue's heartbeats, and answers each REQUEST (address stack, empty frame, content) with
the same address stack and the SHA-1 (hex) of the content. Starts over with READY on a
new socket when the queue falls silent for 3 heartbeats.

Prints "ready", then "received" and "served <sha1>" per request. With --echo it answers
with the content itself. With --chaos SEED it misbehaves as the Guide's ppworker does: after
a few requests, now and then it crashes (exits 3) or stalls for --stall-ms before answering.
"""
import argparse
import hashlib
import random
import sys
import time

import zmq

READY, HEARTBEAT = b"\x01", b"\x02"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--heartbeat-ms", type=int, default=100)
    p.add_argument("--delay-ms", type=int, default=0)
    p.add_argument("--echo", action="store_true")
    p.add_argument("--chaos", type=int, metavar="SEED")
    p.add_argument("--stall-ms", type=int, default=3000)
    args = p.parse_args()
    rng = random.Random(args.chaos)
    cycles = 0
    ivl = args.heartbeat_ms / 1000
    ctx = zmq.Context()

    def connect():
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(args.endpoint)
        s.send(READY)
        return s

    sock = connect()
    print("ready", flush=True)
    next_beat = time.monotonic() + ivl
    expiry = time.monotonic() + 3 * ivl
    while True:
        timeout = max(0, next_beat - time.monotonic())
        if sock.poll(int(timeout * 1000) + 1, zmq.POLLIN):
            frames = sock.recv_multipart()
            expiry = time.monotonic() + 3 * ivl
            if frames == [HEARTBEAT]:
                pass
            elif b"" in frames:
                i = frames.index(b"")
                content = b"".join(frames[i + 1:])
                print("received", flush=True)
                cycles += 1
                if args.chaos is not None and cycles > 3 and rng.randrange(5) == 0:
                    print("crashing", flush=True)
                    sys.exit(3)
                if args.chaos is not None and cycles > 3 and rng.randrange(5) == 0:
                    print("stalling", flush=True)
                    time.sleep(args.stall_ms / 1000)
                if args.delay_ms:
                    time.sleep(args.delay_ms / 1000)
                answer = content if args.echo else hashlib.sha1(content).hexdigest().encode()
                sock.send_multipart(frames[: i + 1] + [answer])
                print("served", answer.decode(errors="replace"), flush=True)
            else:
                print("malformed", frames, file=sys.stderr, flush=True)
        now = time.monotonic()
        if now >= next_beat:
            sock.send(HEARTBEAT)
            next_beat = now + ivl
        if now >= expiry:
            sock.close()
            sock = connect()
            expiry = now + 3 * ivl


if __name__ == "__main__":
    main()
