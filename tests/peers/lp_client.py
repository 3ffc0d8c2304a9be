#!/usr/bin/env python3
"""A Lazy Pirate client, as the ZeroMQ Guide (chapter 4) describes it: a REQ socket that
sends numbered requests one at a time and waits --timeout-ms for each reply; on a timeout
it closes its socket, opens a new one (a new routing id) and sends the same request again,
up to --retries times, then gives up ("abandoning", exit 1). Replies must echo the
request. With --mdp SERVICE it speaks MDP/0.1 (RFC 7) to a broker instead of plain REQ.

Runs for --seconds, then prints "ok: N replies, R retries" and exits 0.
"""
import argparse
import sys
import time

import zmq


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--timeout-ms", type=int, default=2500)
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--mdp", metavar="SERVICE")
    args = p.parse_args()
    ctx = zmq.Context()

    def connect() -> zmq.Socket:
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(args.endpoint)
        return s

    def frames(body: bytes) -> list:
        return [b"MDPC01", args.mdp.encode(), body] if args.mdp else [body]

    sock = connect()
    end = time.monotonic() + args.seconds
    seq = replies = retries = 0
    while time.monotonic() < end:
        seq += 1
        body = str(seq).encode()
        sock.send_multipart(frames(body))
        left = args.retries
        while True:
            if sock.poll(args.timeout_ms, zmq.POLLIN):
                reply = sock.recv_multipart()
                if reply[-1] == body:
                    replies += 1
                    break
                print(f"malformed reply: {reply!r}", file=sys.stderr, flush=True)
                continue
            left -= 1
            sock.close()
            if left == 0:
                print(f"abandoning request {seq} after {args.retries} tries", flush=True)
                ctx.term()
                return 1
            retries += 1
            sock = connect()
            sock.send_multipart(frames(body))
    sock.close()
    ctx.term()
    print(f"ok: {replies} replies, {retries} retries", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
