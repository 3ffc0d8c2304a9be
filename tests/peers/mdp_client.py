#!/usr/bin/env python3
"""An MDP client written from ZeroMQ RFC 7 (MDP/0.1) and RFC 18 (MDP/0.2), for testing
scale0 with a real peer.

REQ mode sends one request at a time (REQ adds the empty delimiter itself);
DEALER mode keeps --in-flight requests outstanding and adds the delimiter by hand;
--version 2 speaks MDP/0.2 from a DEALER (no delimiter; PARTIAL and FINAL replies).
Prints one JSON line: counts, the final reply bodies tallied, partials, and anything
malformed.
"""
import argparse
import collections
import json
import sys
import time

import zmq

MDPC = b"MDPC01"


def secure(sock, args):
    """CURVE client keys, read with pyzmq's own certificate loader: scale0 keygen's files
    must be readable by it."""
    if not args.curve_server_cert:
        return
    from zmq.auth import load_certificate
    server_public, _ = load_certificate(args.curve_server_cert)
    public, secret = load_certificate(args.curve_cert)
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--socket", choices=["req", "dealer"], default="req")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--in-flight", type=int, default=1)
    p.add_argument("--body", default="hello")
    p.add_argument("--timeout-ms", type=int, default=10000)
    p.add_argument("--retries", type=int, default=0,
                   help="REQ only: Lazy Pirate retries on a new socket after a timeout")
    p.add_argument("--version", type=int, choices=[1, 2], default=1)
    p.add_argument("--identity", default=None,
                   help="DEALER only: set this routing id (kept across broker restarts)")
    p.add_argument("--curve-server-cert", default=None,
                   help="CURVE: the server's public certificate (a scale0 keygen NAME.key)")
    p.add_argument("--curve-cert", default=None,
                   help="CURVE: this peer's certificate with its secret (NAME.key_secret)")
    args = p.parse_args()
    v2 = args.version == 2
    partials = 0

    ctx = zmq.Context()
    tally = collections.Counter()
    bad = []
    replies = 0

    def check(frames):
        nonlocal replies, partials
        if v2:
            # MDP/0.2: header, PARTIAL (0x02) or FINAL (0x03), service, body.
            if len(frames) < 3 or frames[0] != b"MDPC02" or frames[2] != args.service.encode():
                bad.append([f.hex() for f in frames])
                return False
            if frames[1] == b"\x02":
                partials += 1
                return False
            if frames[1] != b"\x03":
                bad.append([f.hex() for f in frames])
                return False
            frames = [MDPC] + frames[2:]
        if len(frames) < 3 or frames[0] != MDPC or frames[1] != args.service.encode():
            bad.append([f.hex() for f in frames])
            return False
        replies += 1
        # The last frame names the worker when the worker tags its replies.
        tally[b"|".join(frames[2:]).decode(errors="replace")] += 1
        return True

    def body(i):
        return args.body.replace("{i}", str(i)).encode()

    if args.socket == "req":
        sock = None
        for i in range(args.count):
            for attempt in range(args.retries + 1):
                if sock is None:
                    sock = ctx.socket(zmq.REQ)
                    sock.setsockopt(zmq.LINGER, 0)
                    secure(sock, args)
                    sock.connect(args.endpoint)
                sock.send_multipart([MDPC, args.service.encode(), body(i)])
                if sock.poll(args.timeout_ms, zmq.POLLIN):
                    check(sock.recv_multipart())
                    break
                sock.close()
                sock = None
            else:
                finish(ctx, sock, args.count, replies, tally, bad, timed_out=True)
    else:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if args.identity:
            sock.setsockopt(zmq.ROUTING_ID, args.identity.encode())
        secure(sock, args)
        sock.connect(args.endpoint)
        sent = 0
        while replies + len(bad) < args.count:
            while sent < args.count and sent - replies - len(bad) < args.in_flight:
                if v2:
                    sock.send_multipart([b"MDPC02", b"\x01", args.service.encode(), body(sent)])
                else:
                    sock.send_multipart([b"", MDPC, args.service.encode(), body(sent)])
                sent += 1
            if not sock.poll(args.timeout_ms, zmq.POLLIN):
                finish(ctx, sock, sent, replies, tally, bad, timed_out=True, partials=partials)
            frames = sock.recv_multipart()
            if v2:
                check(frames)
                continue
            if not frames or frames[0] != b"":
                bad.append([f.hex() for f in frames])
                continue
            check(frames[1:])
    finish(ctx, sock, args.count, replies, tally, bad, timed_out=False, partials=partials)


def finish(ctx, sock, sent, replies, tally, bad, timed_out, partials=0):
    if sock is not None:
        sock.close()
    ctx.term()
    print(json.dumps({"sent": sent, "replies": replies, "bad": bad, "partials": partials,
                      "timed_out": timed_out, "tally": dict(tally)}))
    sys.stdout.flush()
    sys.exit(1 if timed_out or bad else 0)


if __name__ == "__main__":
    main()
