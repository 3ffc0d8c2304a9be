#!/usr/bin/env python3
"""An MDP worker written from ZeroMQ RFC 7 (MDP/0.1) and RFC 18 (MDP/0.2), for testing
scale0 with a real peer.

Registers with READY, answers each REQUEST (echo, or echo plus its own name so tests can
see who served what), heartbeats the broker, and reconnects with a new socket when the
broker says DISCONNECT or falls silent for --liveness heartbeats, as the RFCs ask. With
--version 2 it speaks MDP/0.2 and can send --partials PARTIAL replies before each FINAL.
With --chaos SEED it misbehaves as the Guide's Paranoid Pirate worker does: after a few
requests, now and then it crashes (exits 3) or stalls for --stall-ms before answering.
"""
import argparse
import random
import sys
import time

import zmq

MDPW = b"MDPW01"
READY, REQUEST, REPLY, HEARTBEAT, DISCONNECT = (bytes([c]) for c in range(1, 6))
# MDP/0.2 command bytes.
V2 = {"header": b"MDPW02", "READY": b"\x01", "REQUEST": b"\x02", "PARTIAL": b"\x03",
      "FINAL": b"\x04", "HEARTBEAT": b"\x05", "DISCONNECT": b"\x06"}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--name", default="py")
    p.add_argument("--tag", action="store_true", help="append the worker name as a reply frame")
    p.add_argument("--heartbeat-ms", type=int, default=2500)
    p.add_argument("--liveness", type=int, default=3)
    p.add_argument("--version", type=int, choices=[1, 2], default=1)
    p.add_argument("--partials", type=int, default=0, help="MDP/0.2: PARTIALs before each FINAL")
    p.add_argument("--log", action="store_true", help="print 'served <body>' for each request")
    p.add_argument("--curve-server-cert", default=None,
                   help="CURVE: the server's public certificate (a scale0 keygen NAME.key)")
    p.add_argument("--curve-cert", default=None,
                   help="CURVE: this peer's certificate with its secret (NAME.key_secret)")
    p.add_argument("--chaos", type=int, metavar="SEED")
    p.add_argument("--stall-ms", type=int, default=3000)
    args = p.parse_args()
    v2 = args.version == 2
    rng = random.Random(args.chaos)

    def out(command, *frames):
        """Sends a worker command in the chosen protocol version."""
        if v2:
            sock.send_multipart([V2["header"], V2[command]] + list(frames))
        else:
            code = {"READY": READY, "REPLY": REPLY, "HEARTBEAT": HEARTBEAT}[command]
            sock.send_multipart([b"", MDPW, code] + list(frames))

    ctx = zmq.Context()
    sock = None
    served = 0

    def connect():
        nonlocal sock
        if sock is not None:
            sock.close()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if args.curve_server_cert:
            from zmq.auth import load_certificate
            sock.curve_serverkey, _ = load_certificate(args.curve_server_cert)
            sock.curve_publickey, sock.curve_secretkey = load_certificate(args.curve_cert)
        sock.connect(args.endpoint)
        out("READY", args.service.encode())

    connect()
    print("ready", flush=True)
    expiry = time.monotonic() + args.heartbeat_ms * args.liveness / 1000
    next_heartbeat = time.monotonic() + args.heartbeat_ms / 1000
    while True:
        wait = max(0, min(next_heartbeat, expiry) - time.monotonic())
        if sock.poll(int(wait * 1000) + 1, zmq.POLLIN):
            frames = sock.recv_multipart()
            expiry = time.monotonic() + args.heartbeat_ms * args.liveness / 1000
            if v2:
                ok = len(frames) >= 2 and frames[0] == V2["header"]
                command = frames[1:2] and {v: k for k, v in V2.items()}.get(frames[1])
                rest = frames[2:]
            else:
                ok = len(frames) >= 3 and frames[0] == b"" and frames[1] == MDPW
                command = frames[2:3] and {REQUEST: "REQUEST", HEARTBEAT: "HEARTBEAT",
                                           DISCONNECT: "DISCONNECT"}.get(frames[2])
                rest = frames[3:]
            if not ok:
                print("malformed", frames, file=sys.stderr, flush=True)
                continue
            if command == "REQUEST":
                client, empty, body = rest[0], rest[1], rest[2:]
                assert empty == b""
                if args.chaos is not None and served > 3 and rng.randrange(5) == 0:
                    print("crashing", flush=True)
                    sys.exit(3)
                if args.chaos is not None and served > 3 and rng.randrange(5) == 0:
                    print("stalling", flush=True)
                    time.sleep(args.stall_ms / 1000)
                for i in range(args.partials if v2 else 0):
                    out("PARTIAL", client, b"", b"partial %d" % i)
                if args.log:
                    print("served", b"|".join(body).decode(errors="replace"), flush=True)
                reply = body + ([args.name.encode()] if args.tag else [])
                out("FINAL" if v2 else "REPLY", client, b"", *reply)
                served += 1
            elif command == "DISCONNECT":
                connect()
            elif command != "HEARTBEAT":
                print("unexpected command", frames, file=sys.stderr, flush=True)
        now = time.monotonic()
        if now >= expiry:
            # The broker is gone: start over on a fresh socket.
            connect()
            expiry = now + args.heartbeat_ms * args.liveness / 1000
        if now >= next_heartbeat:
            out("HEARTBEAT")
            next_heartbeat = now + args.heartbeat_ms / 1000


if __name__ == "__main__":
    main()
