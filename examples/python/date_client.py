#!/usr/bin/env python3
"""A plain REQ client: once a second sends the current date and time, and prints the
reply with its process id. Lazy Pirate (the ZeroMQ Guide's reliable REQ): when no reply
comes within --timeout-ms it closes the socket, opens a new one and sends again.

    python3 date_client.py [--connect tcp://localhost:5559] [--count N] [--interval-ms 1000]
        [--curve-server-key queue.key --curve-key me.key_secret]
"""
import argparse
import datetime
import os
import sys
import time

import zmq


def curve(sock, server_key, key):
    """CURVE towards a server started with --curve-secret: its public key file and our
    own key pair file, both as written by `scale0 keygen`."""
    if not server_key:
        return
    from zmq.auth import load_certificate
    sock.curve_serverkey, _ = load_certificate(server_key)
    sock.curve_publickey, sock.curve_secretkey = load_certificate(key)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--connect", default="tcp://localhost:5559")
    p.add_argument("--count", type=int, default=0, help="stop after N replies (0: never)")
    p.add_argument("--interval-ms", type=int, default=1000)
    p.add_argument("--timeout-ms", type=int, default=2500)
    p.add_argument("--retries", type=int, default=10)
    p.add_argument("--curve-server-key", default=None, help="the queue's NAME.key")
    p.add_argument("--curve-key", default=None, help="this client's NAME.key_secret")
    args = p.parse_args()

    ctx = zmq.Context()
    sock = None
    sent = 0
    pid = os.getpid()
    while args.count == 0 or sent < args.count:
        text = "%s #%d" % (datetime.datetime.now().isoformat(sep=" "), sent)
        for attempt in range(args.retries + 1):
            if sock is None:
                sock = ctx.socket(zmq.REQ)
                sock.setsockopt(zmq.LINGER, 0)
                curve(sock, args.curve_server_key, args.curve_key)
                sock.connect(args.connect)
            sock.send_string(text)
            if sock.poll(args.timeout_ms, zmq.POLLIN):
                reply = sock.recv_string()
                print("python %d sent %s got %s" % (pid, text, reply), flush=True)
                break
            print("python %d no reply, retrying" % pid, file=sys.stderr, flush=True)
            sock.close()
            sock = None
        else:
            print("python %d giving up: no server" % pid, file=sys.stderr, flush=True)
            return 1
        sent += 1
        if args.count == 0 or sent < args.count:
            time.sleep(args.interval_ms / 1000)
    if sock is not None:
        sock.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
