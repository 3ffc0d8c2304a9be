"""Malformed messages of many shapes at one of scale0's servers, then checks that it still serves.

KIND picks the peers and shapes: broker (DEALERs and a REQ; MDP/0.1, MDP/0.2 and native
headers), queue-frontend (DEALER and REQ clients), queue-workers (Paranoid Pirate DEALER and
REQ workers), forwarder (XPUB publishers on the XSUB frontend), sink (PUSH reports),
vent-peer (forged PULL peers that send, and PULLs that take a job and vanish: they eat
jobs, so give the vent more than it can finish, e.g. 100000), node-bus
(malformed s0hb heartbeats published on a forwarder's frontend for the nodes listening;
pass a node's pid). Forwarder and node-bus with --backend: an XSUB peer also sends garbage
subscriptions to the XPUB side, and then a forged XSUB subscribes --long-subscriptions times
(1) with a random --long-subscription prefix (200000 bytes) and leaves. Every kind also gets
raw TCP peers: random bytes, bad ZMTP greetings, a frame declaring 2**62 bytes.

usage: malformed_frames.py ENDPOINT KIND [COUNT] [--check-pid PID] [--max-rss-mib N]
                           [--backend ENDPOINT] [--expect-reply] [--seed N]
                           [--long-subscription BYTES] [--long-subscriptions N]
Then: the endpoint still sends a ZMTP greeting; broker: an MDP/0.1 mmi.service request is
answered within 10 s; queue-frontend with --expect-reply: a REQ request is answered;
queue-workers: a new READY worker hears from the queue; forwarder and node-bus with
--backend: a message published on ENDPOINT reaches a subscriber on the backend;
--check-pid: the process is alive, not a zombie, and its VmRSS is under --max-rss-mib.
Exit 0 when every check passed; the last line is `ok: kind=K sent=N ...`.
"""

import argparse
import random
import socket
import sys
import time

import zmq

HUGE, U64MAX = b"99999999999999999999999", b"18446744073709551615"
PEERS = {"broker": [zmq.DEALER] * 3, "queue-frontend": [zmq.DEALER] * 2, "queue-workers": [zmq.DEALER] * 2,
         "sink": [zmq.PUSH], "vent-peer": [], "forwarder": [zmq.XPUB], "node-bus": [zmq.XPUB]}
# What an XSUB peer sends the forwarder's XPUB side: these and random bytes, sometimes two frames.
SUBSCRIPTIONS = [b"\x01", b"\x00", b"\x01" + b"p" * 65536, b"\x00" + b"p" * 65536, b"\x02junk", b""]
WIRE_TYPE = {"sink": b"PUSH", "vent-peer": b"PULL", "forwarder": b"PUB", "node-bus": b"PUB"}


def shapes(kind: str, rng: random.Random) -> list[list[bytes]]:
    """Messages as a DEALER, PUB or PUSH sends them (a REQ strips the leading empty frame)."""
    junk = [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 9))]
    out = [[b""], [b"", b""], [b""] * 500, junk, [rng.randbytes(rng.randrange(1, 4096))], [b"x" * 262144]]
    s, rid, w = b"echo", b"r%d" % rng.randrange(1 << 40), b"w%d" % rng.randrange(100)
    if kind == "broker":
        out += [[b"", b"MDPC09", s, b"x"], [b"", b"MDPW09", b"\x01", s], [b"S0C9", b"\x01", rid, s, b"", b"x"],
                [b"", b"mdpc01", s, b"x"], [b"", b"MDPC01\x00", s, b"x"], [b"MDPC01", s, b"x"]]
        out += [[b"", b"MDPC01"] + t for t in ([], [b""], [b"s" * 300, b"x"], [b"\xff\xfe\x80", b"x"], [b"mmi.\xff"],
                [s] + [b""] * 500, [b"mmi.service"], [b"mmi.service", b"s" * 300], [b"mmi.status"] + [b"x"] * 500)]
        out += [[b"", b"MDPW01"] + t for t in ([], [b""], [b"\x09"], [b"\x01"], [b"\x02", b"a", b"", b"x"], [b"\x03"],
                [b"\x03", b"a", b"", b"x"], [b"\x03", b"a" * 300, b"", b"x"], [b"\x04", b"x"], [b"\x05", b"x"])]
        out += [[b"", b"MDPW01", b"\x01"] + t for t in ([b"s" * 300], [b"\xc3\x28"], [b"mmi.x"], [s, b"capacity=0"],
                [s, b"capacity=-1"], [s, b"capacity=" + HUGE], [s, b"capacity=2", b"x"])]
        out += [[b"MDPC02"] + t for t in ([], [b"\x07", s], [b"\x01"], [b"\x01", b""], [b"\x03", s])]
        out += [[b"MDPW02"] + t for t in ([b"\x01"], [b"\x09"], [b"\x04", b"a", b"", b"x"], [b"\x05", b"x"],
                [b"\x01", s, b"capacity=" + U64MAX])]
        out += [[b"S0C1"] + t for t in ([], [b"\x01"], [b"\x01", rid], [b"\x09", rid, s, b"", b"x"], [b"\x02", rid],
                [b"\x01", b"", s, b"", b"x"], [b"\x01", b"i" * 65, s, b"", b"x"], [b"\x06", rid, b"s" * 300, b""],
                [b"\x05", rid, b"queue_full", b"x"], [b"\x01", rid, s, b""] + [b""] * 500)]
        out += [[b"S0C1", b"\x01", rid + d, s, d, b"x"] for d in (b"abc", b"-1", b"0", b" 5", HUGE, U64MAX)]
    elif kind == "queue-frontend":
        out += [[b"body"], [b"a", b"b"], [b"a", b""], [b"a" * 300, b"", b"x"], [b"a"] * 200 + [b"", b"x"],
                [b"", b"x"] + [b""] * 500, [b"Q" + bytes(8), b"", b"x"], [b"", b"", b""]]
    elif kind == "queue-workers":
        tag = b"Q" + rng.randbytes(8)
        out += [[b"\x01"], [b"\x02"], [b"\x03"], [b"\x01", b"x"], [b"\x02", b"x"], [b"", b"\x01"], [b"", b"\x02"],
                [tag, b"", b"reply"], [tag], [tag, b"x"], [b"Q1", b"", b"x"], [b"", tag, b"", b"x"], [b"\x01"] * 500]
    elif kind in ("sink", "vent-peer"):
        out += [[b"s0alive"], [b"s0alive", w], [b"s0alive", w, b"x", b"1000"], [b"s0alive", w, HUGE, b"0"],
                [b"s0alive", w, b"4", U64MAX], [b"s0alive", w, b"4", b"1000"] + [b"id"] * 500, [b"s0start"],
                [b"s0alive", b"\xff" * 300, b"1", b"1"], [b"s0start", w, b"i" * 300], [b"s0res", w], [b"s0bye"],
                [b"s0res", w, rid, b"weird", b"x"], [b"s0res", w, rid, b"ok"], [b"s0bye", w, b"x"],
                [b"s0job", rid, b"0", b"x"], [b"s0res", b"", b"", b"", b""]]
    else:  # node-bus, forwarder: heartbeats with one field wrong
        base = [b"s0hb", b"1", b"%d" % rng.randrange(1, 1 << 20), b"%d" % (time.time() * 1000), b"1", b"100",
                b"n", b"r", b"a"]
        muts = [(1, b"2"), (1, b""), (2, b"abc"), (2, b"-1"), (2, HUGE), (2, U64MAX), (3, U64MAX), (3, b"0"),
                (3, HUGE), (4, b"0"), (4, U64MAX), (5, b"0"), (5, U64MAX), (5, b"1"), (5, b"-5"), (5, HUGE),
                (6, b"n" * 300), (6, b"\xff\xfe"), (7, b"\xc3\x28"), (8, b"a" * 300)]
        out += [[b"s0hb"], base[:8], base + [b"x"], base + [b""] * 500, [b"s0hbX"] + base[1:]]
        out += [base[:i] + [v] + base[i + 1:] for i, v in muts]
    return out


def zmtp(frames: list[bytes]) -> bytes:
    """ZMTP 3 message frames: flags (MORE 1, LONG 2), size, body."""
    out = b""
    for i, f in enumerate(frames):
        more = 1 if i < len(frames) - 1 else 0
        out += bytes([more | 2]) + len(f).to_bytes(8, "big") + f if len(f) > 255 else bytes([more, len(f)]) + f
    return out


GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x00"  # ZMTP 3.0 signature and version; mechanism follows


def forged(stype: bytes, declared: int = 0) -> bytes:
    """A NULL greeting and a READY naming socket type stype (declaring its length, if given)."""
    body = b"\x05READY\x0bSocket-Type" + (declared or len(stype)).to_bytes(4, "big") + stype
    return GREETING + b"NULL".ljust(20, b"\x00") + bytes(32) + b"\x04" + bytes([len(body)]) + body


def raw_peer(host: str, port: int, variant: int, kind: str, rng: random.Random, payload: bytes = b"") -> None:
    """One TCP connection that speaks bad ZMTP (variant 0-5) or forges a peer and sends payload (6)."""
    typ = WIRE_TYPE.get(kind, b"DEALER")
    payload = payload or b"".join(zmtp(m) for m in shapes(kind, rng)[:20])
    data = [rng.randbytes(4096), GREETING[:10] + rng.randbytes(4096), GREETING + b"BOGUS".ljust(20, b"\x00") + bytes(32),
            forged(b"BOGUS"), forged(typ, 0x7FFFFFFF), forged(typ) + b"\x02" + (1 << 62).to_bytes(8, "big") + b"x",
            forged(typ) + payload][variant % 7]
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(data)
            s.settimeout(0.1)
            s.recv(65536)
    except OSError:
        pass  # the server closing on us, or not reading, is the point


def long_subscriptions(endpoint: str, size: int, n: int, rng: random.Random) -> None:
    """A forged XSUB subscribes n times with random size-byte prefixes, then leaves (libzmq drops them)."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.sendall(forged(b"XSUB") + b"".join(zmtp([b"\x01" + rng.randbytes(size)]) for _ in range(n)))
            time.sleep(0.5)
    except OSError:
        pass


def greeting(host: str, port: int) -> bool:
    """True when the server accepts a TCP connection and sends a ZMTP signature within 5 s."""
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            got, deadline = b"", time.monotonic() + 5
            while len(got) < 10 and time.monotonic() < deadline:
                chunk = s.recv(10 - len(got))
                if not chunk:
                    break
                got += chunk
            return got[:1] == b"\xff" and got[9:10] == b"\x7f"
    except OSError:
        return False


def recv(s: zmq.Socket, seconds: float) -> list[bytes] | None:
    return s.recv_multipart() if s.poll(int(seconds * 1000)) else None


def probe(ctx: zmq.Context, a: argparse.Namespace) -> str | None:
    """Asks the server to do its job; None when it did, else what went wrong."""
    bus = a.kind in ("forwarder", "node-bus")
    s = ctx.socket(zmq.SUB if bus else zmq.DEALER if a.kind == "queue-workers" else zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    try:
        if bus and a.backend:
            s.setsockopt(zmq.SUBSCRIBE, b"s0probe")
            s.connect(a.backend)
            with ctx.socket(zmq.PUB) as pub:
                pub.setsockopt(zmq.LINGER, 0)
                pub.connect(a.endpoint)
                for _ in range(100):  # PUB/SUB joins late: publish until it arrives, 10 s at most
                    pub.send_multipart([b"s0probe", b"marker"])
                    if recv(s, 0.1) == [b"s0probe", b"marker"]:
                        return None
            return "a message published on the frontend did not reach the backend within 10 s"
        s.connect(a.endpoint)
        if a.kind == "broker":
            s.send_multipart([b"MDPC01", b"mmi.service", b"echo"])
            got = recv(s, 10)
            return None if got and got[:2] == [b"MDPC01", b"mmi.service"] else f"mmi.service answered {got}"
        if a.kind == "queue-frontend" and a.expect_reply:
            s.send(b"probe")
            return None if recv(s, 10) else "no reply to a REQ request within 10 s"
        if a.kind == "queue-workers":
            s.send(b"\x01")
            return None if recv(s, 10) else "a READY worker heard nothing within 10 s"
        return None
    finally:
        s.close()


def mem_mib(pid: int, field: str = "VmRSS") -> float | None:
    """VmRSS (or VmHWM, the peak) of a live process in MiB; None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return None
    if fields.get("State", "").strip().startswith("Z"):
        return None
    return int(fields.get(field, "0 kB").split()[0]) / 1024


def peer(ctx: zmq.Context, endpoint: str, t: int, k: int, n: int) -> zmq.Socket:
    """A flooding socket; the first two DEALERs choose odd routing ids (0xff..., 255 bytes)."""
    s = ctx.socket(t)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 1)  # we never read: the server meets a full peer
    s.setsockopt(zmq.SNDTIMEO, 200)
    if t == zmq.DEALER and k < 2:
        s.setsockopt(zmq.ROUTING_ID, [b"\xff%d" % n, (b"x%d" % n).ljust(255, b"x")][k])
    s.connect(endpoint)
    return s


def flood(ctx: zmq.Context, a: argparse.Namespace, host: str, port: int) -> tuple[int, int, int]:
    """Sends COUNT messages (60 s at most); returns (sent, blocked, raw connections)."""
    rng = random.Random(a.seed)
    socks = [peer(ctx, a.endpoint, t, k, 0) for k, t in enumerate(PEERS[a.kind])]
    extra = None  # a REQ for the kinds that take REQ peers; with --backend an XSUB there
    if a.kind in ("broker", "queue-frontend", "queue-workers") or a.backend:
        extra = peer(ctx, a.backend or a.endpoint, zmq.XSUB if a.backend else zmq.REQ, 9, 0)
        if extra.socket_type == zmq.REQ:
            extra.setsockopt(zmq.REQ_RELAXED, 1)
    if socks and socks[0].socket_type == zmq.XPUB:
        recv(socks[0], 3)  # a subscription, or the publisher filters everything away
    sent = blocked = raw = 0
    batch: list[bytes] = []
    deadline = time.monotonic() + 60
    for i in range(a.count):
        if time.monotonic() > deadline:
            break
        msgs = shapes(a.kind, rng)
        m = msgs[i % len(msgs)]
        try:
            if not socks:  # vent-peer: a forged PULL carries 100 messages at a time
                batch.append(zmtp(m))
                if len(batch) == 100 or i == a.count - 1:
                    raw_peer(host, port, 6, a.kind, rng, b"".join(batch))
                    batch, raw = [], raw + 1
            elif extra is not None and extra.socket_type == zmq.XSUB and rng.random() < 0.3:
                frame = rng.choice(SUBSCRIPTIONS) + rng.randbytes(rng.randrange(0, 32))
                extra.send_multipart([frame] + [b"x"] * rng.randrange(0, 2))
            elif extra is not None and m[0] == b"" and len(m) > 1 and rng.random() < 0.3:
                extra.send_multipart(m[1:])
            else:
                socks[i % len(socks)].send_multipart(m)
            sent += 1
        except zmq.Again:
            blocked += 1
        if i % 100 == 99:
            raw_peer(host, port, raw, a.kind, rng)
            raw += 1
        if i % 250 == 249 and socks:  # churn: drop a peer with what it had queued, connect a fresh one
            k = (i // 250) % len(socks)
            socks[k].close()
            socks[k] = peer(ctx, a.endpoint, PEERS[a.kind][k], k, i)
        elif i % 250 == 249:
            with ctx.socket(zmq.PULL) as pull:  # takes a job, if one comes, and vanishes
                pull.setsockopt(zmq.LINGER, 0)
                pull.connect(a.endpoint)
                recv(pull, 0.05)
    for s in [*socks, extra]:
        if s is not None:
            s.close()
    for v in range(raw, 7):
        raw_peer(host, port, v, a.kind, rng)
    if a.backend and a.long_subscription:
        long_subscriptions(a.backend, a.long_subscription, a.long_subscriptions, rng)
    return sent, blocked, max(raw, 7)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("endpoint")
    p.add_argument("kind", choices=sorted(PEERS))
    p.add_argument("count", type=int, nargs="?", default=2000)
    p.add_argument("--check-pid", type=int)
    p.add_argument("--max-rss-mib", type=float)
    p.add_argument("--backend")
    p.add_argument("--expect-reply", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--long-subscription", type=int, default=200000, help="bytes; 0: none (forwarder, node-bus)")
    p.add_argument("--long-subscriptions", type=int, default=1)
    a = p.parse_args()
    a.backend = a.backend if a.kind in ("forwarder", "node-bus") else None
    host, port = a.endpoint.removeprefix("tcp://").rsplit(":", 1)
    rss0 = mem_mib(a.check_pid) if a.check_pid else None
    ctx = zmq.Context()
    t0 = time.monotonic()
    sent, blocked, raw = flood(ctx, a, host, int(port))
    t1 = time.monotonic()
    problems = [] if greeting(host, int(port)) else ["no ZMTP greeting from the endpoint within 5 s"]
    failure = probe(ctx, a)
    problems += [failure] if failure else []
    t2 = time.monotonic()
    ctx.term()
    rss, hwm = (mem_mib(a.check_pid), mem_mib(a.check_pid, "VmHWM")) if a.check_pid else (None, None)
    if a.check_pid and rss is None:
        problems.insert(0, f"process {a.check_pid} is gone")
    elif rss is not None and a.max_rss_mib is not None and rss > a.max_rss_mib:
        problems.append(f"process {a.check_pid}: VmRSS {rss:.1f} MiB is over {a.max_rss_mib} MiB")
    figures = f"kind={a.kind} sent={sent} blocked={blocked} raw={raw} flood_s={t1 - t0:.2f}"
    if problems:
        print(f"{a.kind}: {'; '.join(problems)} (after {figures})", file=sys.stderr)
        return 1
    mem = f" rss_mib={rss0:.1f}->{rss:.1f} peak_mib={hwm:.1f}" if rss0 and rss and hwm else ""
    print(f"ok: {figures} probe_ms={(t2 - t1) * 1000:.0f}{mem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
