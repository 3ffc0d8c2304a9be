"""One message far over a server's bound, then proof the server still answers.

usage: oversized.py ENDPOINT KIND BYTES
KIND: broker (a native REQUEST from a DEALER), sink (a result from a PUSH),
forwarder (a publication from a PUB), queue (a request from a REQ client).
Sends the message, waits until the peer's socket has handed it to libzmq's I/O thread
(or the server cut the connection), and exits 0. The caller measures the server.
"""

import sys
import time

import zmq

SOCKETS = {"broker": zmq.DEALER, "sink": zmq.PUSH, "forwarder": zmq.PUB, "queue": zmq.REQ}


def message(kind: str, body: bytes) -> list[bytes]:
    if kind == "broker":
        # docs/protocol.md, native protocol: S0C1, REQUEST, request id, service, deadline, body
        return [b"S0C1", b"\x01", b"big", b"echo", b"", body]
    if kind == "sink":
        return [body]
    if kind == "forwarder":
        return [b"s0hb.", body]
    return [body]


def main() -> int:
    endpoint, kind, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ctx = zmq.Context()
    s = ctx.socket(SOCKETS[kind])
    s.setsockopt(zmq.LINGER, 5000)
    if kind == "broker":
        s.setsockopt(zmq.ROUTING_ID, b"oversized")
    s.connect(endpoint)
    time.sleep(0.2)  # the PUB would drop a message sent before it is connected
    s.send_multipart(message(kind, b"y" * size), copy=False)
    s.close()  # LINGER: up to 5 s for libzmq to write it out (or see the cut)
    ctx.term()
    print(f"ok: sent {size} bytes to a {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
