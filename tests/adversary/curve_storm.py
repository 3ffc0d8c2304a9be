"""Unlisted CURVE clients and plaintext peers storming a CURVE server's handshake.

N DEALERs with fresh CURVE key pairs (zmq.curve_keypair(), so on no allowlist) and N
plaintext DEALERs connect and reconnect as fast as they can for --seconds (default 5):
libzmq retries a refused connection after 1 ms, and a socket is replaced by a new one,
with a new key pair, once it has been refused (disconnected) or is --renew-ms old (200). With --wrong-key the CURVE
clients also hold a wrong server key (a random one), so the server cannot read their
HELLO. Each socket queues one MDP/0.1 request, which a handshake that wrongly succeeded
would deliver.

usage: curve_storm.py ENDPOINT SERVER_PUBLIC_KEY_Z85 N [--seconds S] [--wrong-key] [--renew-ms MS]
Attempts (TCP connections made) and handshake outcomes are counted from each socket's
monitor. Exit 0 when no hostile socket completed a handshake (and at least one attempt was
made); whether a listed client still works is for the caller to check.
Last line: `ok: A attempts in S s (curve C, plain P; refused R, accepted 0; sockets K)`.
"""

import argparse
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

EVENTS = {zmq.EVENT_CONNECTED: "connected", zmq.EVENT_HANDSHAKE_SUCCEEDED: "accepted",
          zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused_auth", zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "refused_protocol",
          zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "refused_other", zmq.EVENT_DISCONNECTED: "disconnected"}


class Peer:
    """A hostile DEALER with a monitor, counting its events into totals[kind]."""

    def __init__(self, ctx: zmq.Context, endpoint: str, server_key: bytes | None) -> None:
        self.kind = "plain" if server_key is None else "curve"
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 1)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 0)
        if server_key is not None:
            public, secret = zmq.curve_keypair()
            self.sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
            self.sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
            self.sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.mon = self.sock.get_monitor_socket(sum(EVENTS))
        self.refused = False
        self.sock.connect(endpoint)
        try:
            self.sock.send_multipart([b"", b"MDPC01", b"echo", b"storm"], zmq.NOBLOCK)
        except zmq.Again:
            # No pipe yet (a refused handshake can leave none for a moment): the storm
            # is in the connecting, not in this one request.
            pass

    def drain(self, totals: dict[str, dict[str, int]]) -> None:
        counts = totals[self.kind]
        while self.mon.poll(0):
            name = EVENTS.get(recv_monitor_message(self.mon)["event"])
            if name:
                counts[name] = counts.get(name, 0) + 1
            self.refused = self.refused or name == "disconnected"

    def close(self, totals: dict[str, dict[str, int]]) -> None:
        self.drain(totals)
        self.sock.disable_monitor()
        self.mon.close()
        self.sock.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("endpoint")
    p.add_argument("server_key", help="the server's public key, 40 characters of Z85")
    p.add_argument("n", type=int)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--wrong-key", action="store_true")
    p.add_argument("--renew-ms", type=float, default=200.0)
    a = p.parse_args()
    server_key = zmq.curve_keypair()[0] if a.wrong_key else a.server_key.encode()
    if len(server_key) != 40:
        print("curve_storm: SERVER_PUBLIC_KEY_Z85 must be 40 characters of Z85", file=sys.stderr)
        return 2
    ctx = zmq.Context()
    # Closed sockets count against the context's limit (1023) until libzmq reaps them,
    # which lags when the machine is busy.
    ctx.set(zmq.MAX_SOCKETS, 100_000)
    totals: dict[str, dict[str, int]] = {"curve": {}, "plain": {}}
    keys = [server_key] * a.n + [None] * a.n
    peers = [Peer(ctx, a.endpoint, k) for k in keys]
    born = [time.monotonic()] * len(peers)
    made = len(peers)
    t0 = time.monotonic()
    end = t0 + a.seconds
    while time.monotonic() < end:
        poller = zmq.Poller()
        for peer in peers:
            poller.register(peer.mon, zmq.POLLIN)
        ready = {s for s, _ in poller.poll(10)}
        now = time.monotonic()
        for i, peer in enumerate(peers):
            if peer.mon in ready:
                peer.drain(totals)
            if peer.refused or (now - born[i]) * 1000 >= a.renew_ms:
                peer.close(totals)
                peers[i], born[i] = Peer(ctx, a.endpoint, keys[i]), now
                made += 1
    seconds = time.monotonic() - t0
    for peer in peers:
        peer.close(totals)
    ctx.term()
    attempts = {k: v.get("connected", 0) for k, v in totals.items()}
    accepted = sum(v.get("accepted", 0) for v in totals.values())
    refused = sum(n for v in totals.values() for k, n in v.items() if k.startswith("refused"))
    figures = (f"{sum(attempts.values())} attempts in {seconds:.1f} s (curve {attempts['curve']}, plain"
               f" {attempts['plain']}; refused {refused}, accepted {accepted}; sockets {made}; events {totals})")
    if accepted:
        print(f"curve_storm: the server completed {accepted} handshakes with unlisted or plaintext peers",
              file=sys.stderr)
        print(f"failed: {figures}")
        return 1
    if not sum(attempts.values()):
        print("curve_storm: no connection was ever made: is the server listening?", file=sys.stderr)
        print(f"failed: {figures}")
        return 1
    print(f"ok: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
