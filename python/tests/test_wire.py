"""The client and the worker against a fake broker (a pyzmq ROUTER in the test): the
frames they send, and bad input from the broker logged and dropped, never fatal."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

import scale0


@pytest.fixture
def router() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # As the broker does: a client reconnecting with its routing id takes it over.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.bind("tcp://127.0.0.1:*")
    yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    sock.close()
    ctx.term()


def recv(sock: zmq.Socket[bytes], timeout: float = 5.0) -> list[bytes]:
    assert sock.poll(int(timeout * 1000)), "nothing from the peer"
    return sock.recv_multipart()


def test_client_frames_and_bad_answers(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    with scale0.Client(endpoint, timeout=5, retries=1) as c:
        fut = c.submit("svc", b"a", b"b")
        peer, *request = recv(sock)
        assert peer == c.identity and len(peer) == 16 and peer[0] != 0
        # No ACCEPTED asked for; the deadline is every attempt's time together.
        assert request == [b"S0C1", b"\x06", b"1", b"svc", b"10000", b"a", b"b"]
        for junk in (
            [b"junk"],
            [b"S0C1"],
            [b"S0C1", b"\x05", b"1"],
            [b"S0C1", b"\x05", b"1", b"queue_full"],
            [b"S0C1", b"\x09", b"1"],
            [b"S0C1", b"\x02", b"1", b"extra"],
            [b"MDPC01", b"svc", b"reply"],
        ):
            sock.send_multipart([peer, *junk])
        sock.send_multipart([peer, b"S0C1", b"\x04", b"99", b"late"])  # not in flight
        sock.send_multipart([peer, b"S0C1", b"\x04", b"1", b"done"])
        assert fut.result(timeout=5) == [b"done"]
        assert c.stats["malformed"] == 7
        assert c.stats["duplicates"] == 1
        # The client's thread lives on.
        fut = c.submit("svc", deadline=float("inf"))
        peer, *request = recv(sock)
        assert request == [b"S0C1", b"\x06", b"2", b"svc", b""]
        sock.send_multipart([peer, b"S0C1", b"\x05", b"2", b"forbidden", b"no"])
        with pytest.raises(scale0.Forbidden, match="no"):
            fut.result(timeout=5)


def test_client_acknowledged_requests(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    with scale0.Client(endpoint, timeout=0.3, retries=1, acknowledged=True) as c:
        fut = c.submit("svc", b"x", deadline=2.5)
        peer, *request = recv(sock)
        assert request == [b"S0C1", b"\x01", b"1", b"svc", b"2500", b"x"]
        # ACCEPTED and each partial restart the attempt's clock: no retry while they come.
        for _ in range(4):
            sock.send_multipart([peer, b"S0C1", b"\x02", b"1"])
            time.sleep(0.15)
        assert not sock.poll(0)
        assert c.stats["retries"] == 0
        # Silence: the same request again, same id, then the answer.
        peer, *again = recv(sock)
        assert again == request
        sock.send_multipart([peer, b"S0C1", b"\x04", b"1", b"ok"])
        assert fut.result(timeout=5) == [b"ok"]


def test_worker_frames_and_bad_requests(router: tuple[zmq.Socket[bytes], str]) -> None:
    sock, endpoint = router
    w = scale0.Worker(
        endpoint, "svc", capacity=3, heartbeat_interval=0.05, heartbeat_liveness=100
    ).start(lambda body: body.upper())
    try:
        peer, *ready = recv(sock)
        assert ready == [b"MDPW02", b"\x01", b"svc", b"capacity=3"]
        assert recv(sock) == [peer, b"MDPW02", b"\x05"]  # heartbeats while idle
        for junk in (
            [b"junk"],
            [b"MDPW02"],
            [b"MDPW02", b"\x02"],
            [b"MDPW02", b"\x02", b"addr", b"not empty", b"x"],
            [b"MDPW02", b"\x09"],
        ):
            sock.send_multipart([peer, *junk])
        sock.send_multipart([peer, b"MDPW02", b"\x02", b"s0addr", b"", b"body"])
        while (reply := recv(sock))[2] == b"\x05":
            pass
        assert reply == [peer, b"MDPW02", b"\x04", b"s0addr", b"", b"BODY"]
        assert w.stats["malformed"] == 5
        # Told DISCONNECT, it comes back on a fresh connection and says READY again.
        sock.send_multipart([peer, b"MDPW02", b"\x06"])
        while (again := recv(sock))[1:3] != [b"MDPW02", b"\x01"]:
            pass
        assert again[0] != peer and again[3:] == [b"svc", b"capacity=3"]
        w.stop(timeout=5)
        while (last := recv(sock))[2] == b"\x05":
            pass
        assert last == [again[0], b"MDPW02", b"\x06"]
    finally:
        w.stop(timeout=5)


def test_a_silent_broker_makes_the_worker_reconnect(
    router: tuple[zmq.Socket[bytes], str],
) -> None:
    sock, endpoint = router
    w = scale0.Worker(
        endpoint,
        "svc",
        heartbeat_interval=0.05,
        heartbeat_liveness=2,
        reconnect_initial=0.05,
        reconnect_max=0.1,
    ).start(lambda body: body)
    try:
        peers: set[bytes] = set()
        end = time.monotonic() + 10
        while len(peers) < 3 and time.monotonic() < end:
            peer, *msg = recv(sock)
            if msg[:2] == [b"MDPW02", b"\x01"]:
                peers.add(peer)
        assert len(peers) == 3  # a READY on a fresh socket after each silence
        assert w.stats["reconnects"] >= 2
    finally:
        w.stop(timeout=5)
