#!/usr/bin/env python3
"""A plain REP server: answers each request with the SHA-1 (hex) of what it received.

Nothing in it knows about scale0. By default it connects to the backend of a queue
(`scale0 queue`, tcp://localhost:5560); with --bind it listens itself, so a client can
talk to it directly.

    python3 sha1_server.py [--connect tcp://localhost:5560 | --bind tcp://*:5555] [--delay-ms N]
        [--curve-server-key queue.key --curve-key me.key_secret]
"""
import argparse
import hashlib
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
    p.add_argument("--connect", default="tcp://localhost:5560")
    p.add_argument("--bind", default=None)
    p.add_argument("--delay-ms", type=int, default=0, help="pretend each request takes this long")
    p.add_argument("--curve-server-key", default=None, help="the queue's NAME.key (with --connect)")
    p.add_argument("--curve-key", default=None, help="this server's NAME.key_secret")
    args = p.parse_args()

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    curve(sock, args.curve_server_key, args.curve_key)
    if args.bind:
        sock.bind(args.bind)
    else:
        sock.connect(args.connect)
    where = sock.getsockopt_string(zmq.LAST_ENDPOINT) if args.bind else args.connect
    print("python sha1 server %d ready %s" % (os.getpid(), where), flush=True)
    try:
        while True:
            request = b"".join(sock.recv_multipart())
            print("python %d received %d bytes" % (os.getpid(), len(request)), flush=True)
            if args.delay_ms:
                time.sleep(args.delay_ms / 1000)
            digest = hashlib.sha1(request).hexdigest()
            sock.send_string(digest)
            print("python %d served %s" % (os.getpid(), digest), flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        ctx.term()


if __name__ == "__main__":
    sys.exit(main())
