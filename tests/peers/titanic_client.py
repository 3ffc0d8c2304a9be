#!/usr/bin/env python3
"""A Titanic client written from ZeroMQ RFC 9 (TSP) over MDP/0.1 (RFC 7), for testing
scale0's built-in Titanic with a real peer.

    titanic_client.py --endpoint E request SERVICE BODY   -> prints "200 <uuid>"
    titanic_client.py --endpoint E reply UUID              -> prints the status, then frames
    titanic_client.py --endpoint E close UUID              -> prints the status

Each call is one MDP request on a REQ socket; the reply's frames are printed one per line.
Exit status 0 when the broker answered, 1 on a timeout.
"""
import argparse
import sys

import zmq

MDPC = b"MDPC01"


def ask(endpoint, service, body, timeout_ms):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([MDPC, service.encode()] + body)
    if not sock.poll(timeout_ms, zmq.POLLIN):
        sock.close()
        ctx.term()
        print("timeout", file=sys.stderr)
        sys.exit(1)
    frames = sock.recv_multipart()
    sock.close()
    ctx.term()
    # RFC 7: the reply is header, service, then the body.
    if len(frames) < 3 or frames[0] != MDPC or frames[1] != service.encode():
        print("malformed reply: %r" % frames, file=sys.stderr)
        sys.exit(2)
    return frames[2:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--timeout-ms", type=int, default=10000)
    p.add_argument("verb", choices=["request", "reply", "close"])
    p.add_argument("args", nargs="+")
    a = p.parse_args()
    body = [x.encode() for x in a.args]
    reply = ask(a.endpoint, "titanic." + a.verb, body, a.timeout_ms)
    status = reply[0].decode(errors="replace")
    # RFC 9: three digits, optionally followed by a space and text.
    if len(status) < 3 or not status[:3].isdigit():
        print("bad status frame %r" % reply[0], file=sys.stderr)
        sys.exit(2)
    if a.verb == "request" and status.startswith("200"):
        uuid = reply[1].decode()
        if len(uuid) != 32 or any(c not in "0123456789abcdefABCDEF" for c in uuid):
            print("bad uuid %r" % uuid, file=sys.stderr)
            sys.exit(2)
    for frame in reply:
        print(frame.decode(errors="replace"))


if __name__ == "__main__":
    main()
