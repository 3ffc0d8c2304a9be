"""Two connections with one routing id, the first mid-way through a large message.

The second connection takes the id over (the server sets ROUTER_HANDOVER) while the
first is still sending; libzmq 4.3.5 then aborts the server (`!_io_error`,
stream_engine_base.cpp) at its next ZMTP heartbeat. Afterwards a fresh client must
still be served, which is what this program checks.

usage: same_id_takeover.py ENDPOINT SERVICE BODY_BYTES ROUNDS [PAUSE_S [LINGER_S]]
Exit 0 when the server answered a well-formed request after every round.
"""

import sys
import time

import zmq


def native_request(service: bytes, body: bytes, rid: bytes) -> list[bytes]:
    # docs/protocol.md, native protocol: [S0C1, 0x01 REQUEST, id, service, deadline, body]
    return [b"S0C1", b"\x01", rid, service, b"", body]


def probe(ctx: zmq.Context, endpoint: str, service: bytes, deadline: float) -> bool:
    """An MDP/0.1 request from a new socket; True when any reply comes back."""
    s = ctx.socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send_multipart([b"MDPC01", b"mmi.service", service])
        if s.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            s.recv_multipart()
            return True
        return False
    finally:
        s.close()


def main() -> int:
    endpoint, service, size, rounds = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4])
    ctx = zmq.Context()
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.3
    linger = float(sys.argv[6]) if len(sys.argv) > 6 else 3.0
    big = b"x" * size
    for r in range(rounds):
        ident = b"takeover-%d" % r
        first = ctx.socket(zmq.DEALER)
        first.setsockopt(zmq.ROUTING_ID, ident)
        first.setsockopt(zmq.LINGER, 0)
        first.setsockopt(zmq.SNDHWM, 0)
        first.connect(endpoint)
        first.send_multipart(native_request(service, big, b"big"), copy=False)
        time.sleep(pause)
        second = ctx.socket(zmq.DEALER)
        second.setsockopt(zmq.ROUTING_ID, ident)
        second.setsockopt(zmq.LINGER, 0)
        second.connect(endpoint)
        second.send_multipart(native_request(service, b"small", b"small"))
        # Let the server's heartbeat timer come round over the half-read connection.
        time.sleep(linger)
        first.close()
        second.close()
        if not probe(ctx, endpoint, service, time.monotonic() + 10):
            print(f"round {r}: no answer from the server", file=sys.stderr)
            return 1
    ctx.term()
    print(f"ok: {rounds} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
