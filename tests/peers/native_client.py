#!/usr/bin/env python3
"""A client of the scale0 native protocol (S0C1, version 1), written from docs/protocol.md
only, to show the protocol works from another language.

Sends --count requests with ids 0..N-1 and bodies "0".."N-1", --in-flight at a time. With
--twice every request is sent twice with the same id, as a retry would be: the broker must
answer both sends alike and run the request once. Prints one JSON line.
"""
import argparse
import collections
import json
import os
import sys

import zmq

HEADER = b"S0C1"
REQUEST, ACCEPTED, PARTIAL, FINAL, ERROR = (bytes([c]) for c in range(1, 6))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--in-flight", type=int, default=1)
    p.add_argument("--twice", action="store_true")
    p.add_argument("--timeout-ms", type=int, default=10000)
    args = p.parse_args()

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    # Our own routing id, first byte not zero, so the broker can match retries.
    sock.setsockopt(zmq.ROUTING_ID, b"\x01py-" + os.urandom(8))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.endpoint)

    finals = collections.Counter()
    accepted = collections.Counter()
    errors = {}
    wrong = []
    sent = 0
    done = set()
    while len(done) < args.count:
        while sent < args.count and sent - len(done) < args.in_flight:
            rid = str(sent).encode()
            frame = [HEADER, REQUEST, rid, args.service.encode(), b"", rid]
            sock.send_multipart(frame)
            if args.twice:
                sock.send_multipart(frame)
            sent += 1
        if not sock.poll(args.timeout_ms, zmq.POLLIN):
            break
        frames = sock.recv_multipart()
        if len(frames) < 3 or frames[0] != HEADER:
            wrong.append([f.hex() for f in frames])
            continue
        command, rid = frames[1], frames[2].decode()
        if command == ACCEPTED:
            accepted[rid] += 1
        elif command == FINAL:
            # Replies may come in any order; the id says whose it is.
            if frames[3] != frames[2]:
                wrong.append([f.hex() for f in frames])
            finals[rid] += 1
            done.add(rid)
        elif command == ERROR:
            errors[rid] = frames[3].decode()
            done.add(rid)
        elif command != PARTIAL:
            wrong.append([f.hex() for f in frames])
    sock.close()
    ctx.term()
    print(json.dumps({
        "sent": sent, "answered": len(done), "wrong": wrong, "errors": errors,
        "finals_per_id": sorted(set(finals.values())),
        "accepted_per_id": sorted(set(accepted.values())),
    }))
    sys.exit(0 if len(done) == args.count and not wrong else 1)


if __name__ == "__main__":
    main()
