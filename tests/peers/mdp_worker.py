#!/usr/bin/env python3
"""An MDP/0.1 worker written from ZeroMQ RFC 7, for testing scale0 with a real peer.

Registers with READY, answers each REQUEST (echo, or echo plus its own name so tests can
see who served what), heartbeats the broker, and reconnects with a new socket when the
broker says DISCONNECT or falls silent for --liveness heartbeats, as RFC 7 asks.
"""
import argparse
import sys
import time

import zmq

MDPW = b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = (bytes([c]) for c in range(1, 6))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--name", default="py")
    p.add_argument("--tag", action="store_true", help="append the worker name as a reply frame")
    p.add_argument("--heartbeat-ms", type=int, default=2500)
    p.add_argument("--liveness", type=int, default=3)
    args = p.parse_args()

    ctx = zmq.Context()
    sock = None
    served = 0

    def connect():
        nonlocal sock
        if sock is not None:
            sock.close()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(args.endpoint)
        sock.send_multipart([b"", MDPW, READY, args.service.encode()])

    connect()
    print("ready", flush=True)
    expiry = time.monotonic() + args.heartbeat_ms * args.liveness / 1000
    next_heartbeat = time.monotonic() + args.heartbeat_ms / 1000
    while True:
        wait = max(0, min(next_heartbeat, expiry) - time.monotonic())
        if sock.poll(int(wait * 1000) + 1, zmq.POLLIN):
            frames = sock.recv_multipart()
            expiry = time.monotonic() + args.heartbeat_ms * args.liveness / 1000
            if len(frames) < 3 or frames[0] != b"" or frames[1] != MDPW:
                print("malformed", frames, file=sys.stderr, flush=True)
                continue
            command = frames[2]
            if command == REQUEST:
                client, empty, body = frames[3], frames[4], frames[5:]
                assert empty == b""
                reply = body + ([args.name.encode()] if args.tag else [])
                sock.send_multipart([b"", MDPW, REPLY, client, b""] + reply)
                served += 1
            elif command == DISCONNECT:
                connect()
            elif command != HEARTBEAT:
                print("unexpected command", command, file=sys.stderr, flush=True)
        now = time.monotonic()
        if now >= expiry:
            # The broker is gone: start over on a fresh socket.
            connect()
            expiry = now + args.heartbeat_ms * args.liveness / 1000
        if now >= next_heartbeat:
            sock.send_multipart([b"", MDPW, HEARTBEAT])
            next_heartbeat = now + args.heartbeat_ms / 1000


if __name__ == "__main__":
    main()
