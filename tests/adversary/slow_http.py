"""Hostile HTTP clients at the broker's HTTP endpoint while a normal scraper scrapes /metrics.

MODE: slowloris (N connections each sending a request head one byte per second, never
finished), idle (N connections opened and left silent), junk (N connections sending junk
request lines and binary garbage, reconnecting when the server closes them), bigheader (one
request with a 1 MB header: refused or closed, not a crash), lf-only (`GET /metrics
HTTP/1.1\\nHost: HOST:PORT\\n\\n` must be answered 200), query (`GET /metrics?x=1` must be 200).
The attack modes keep their connections for --hold seconds (default 5) while /metrics is
scraped normally every 0.5 s with a 5 s timeout; a scrape succeeds on a 200 with metrics.

usage: slow_http.py HOST:PORT MODE [N] [--hold S]
Exit 0 only if every normal scrape succeeded (lf-only and query: and the answer was 200).
Last line: `ok: mode=M n=N scrapes=K/K p50_ms=.. max_ms=.. ...` (or `failed: ...`).
"""

import argparse
import http.client
import random
import resource
import select
import socket
import sys
import threading
import time

JUNK = [b"\x00\xff\xfe GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"GET /metrics HTTP/9.9\r\n\r\n", b"\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", b"GET " + b"/" * 100000 + b" HTTP/1.1\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]


def scrape(host: str, port: int, path: str = "/metrics") -> tuple[int, float]:
    """(status, ms) of one normal GET; status 0 when it failed or timed out (5 s)."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        status = resp.status if resp.status != 200 or b"scale0_" in body else 0
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        conn.close()
    return status, (time.monotonic() - t0) * 1000


def raw_status(host: str, port: int, data: bytes, seconds: float = 5) -> str:
    """Sends data on a new connection; the response's status line, or what happened instead."""
    try:
        with socket.create_connection((host, port), timeout=seconds) as s:
            try:
                s.sendall(data)
            except OSError as e:
                return f"closed while sending ({e.__class__.__name__})"
            got, deadline = b"", time.monotonic() + seconds
            while b"\n" not in got and time.monotonic() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            return got.split(b"\r\n")[0].decode(errors="replace") or "closed without an answer"
    except OSError as e:
        return f"no answer ({e.__class__.__name__})"


def attack(mode: str, host: str, port: int, n: int, stop: threading.Event, st: dict) -> None:
    """Keeps mode's hostile connections going until stop; counts in st."""
    # The server's own address as Host: without a token it answers no other name.
    host_header = f"Host: {host}:{port}".encode()
    rng = random.Random(1)
    head = b"GET /metrics HTTP/1.1\r\n" + host_header + b"\r\nX-Slow: " + b"a" * 100000
    if mode == "bigheader":
        big = b"GET /metrics HTTP/1.1\r\n" + host_header + b"\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        st["answer"] = raw_status(host, port, big)
        return
    conns: dict[socket.socket, int] = {}  # connection -> bytes of the head sent so far

    def connect() -> None:
        try:
            s = socket.create_connection((host, port), timeout=2)
        except OSError:
            st["connect_failed"] += 1
            return
        s.setblocking(False)
        st["opened"] += 1
        if mode == "junk":
            try:
                s.send(rng.choice(JUNK + [rng.randbytes(4096)]))
            except OSError:
                pass
        conns[s] = 0
    for _ in range(n):
        connect()
    tick = time.monotonic()
    while not stop.is_set():
        readable = select.select(list(conns), [], [], 0.1)[0] if conns else []
        if not conns:
            stop.wait(0.1)
        for s in readable:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/"):
                code = data.split(b" ")[1].decode(errors="replace") if b" " in data else "?"
                st["answers"][code] = st["answers"].get(code, 0) + 1
            st["closed_by_server"] += 1
            conns.pop(s)
            s.close()
            if mode == "junk":
                connect()
        if mode == "slowloris" and time.monotonic() - tick >= 1:
            tick = time.monotonic()
            for s, sent in list(conns.items()):
                try:
                    conns[s] = sent + s.send(head[sent:sent + 1])
                except OSError:
                    pass  # closed: the select above will see it
    st["still_open"] = len(conns)
    for s in conns:
        s.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("address", help="HOST:PORT of the metrics endpoint")
    p.add_argument("mode", choices=["slowloris", "idle", "bigheader", "junk", "lf-only", "query"])
    p.add_argument("n", type=int, nargs="?", default=50)
    p.add_argument("--hold", type=float, default=5.0)
    a = p.parse_args()
    host, port = a.address.removeprefix("http://").split("/")[0].rsplit(":", 1)
    port_n = int(port)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, a.n + 256)), hard))
    if a.mode in ("lf-only", "query"):
        t0 = time.monotonic()
        if a.mode == "lf-only":
            line = raw_status(host, port_n, f"GET /metrics HTTP/1.1\nHost: {host}:{port_n}\n\n".encode())
            status = int(line.split(" ")[1]) if line.startswith("HTTP/") and " " in line else 0
        else:
            status, _ = scrape(host, port_n, "/metrics?x=1")
            line = f"HTTP status {status}"
        ms = (time.monotonic() - t0) * 1000
        figures = f"mode={a.mode} status={status} ms={ms:.1f} answer={line!r}"
        if status != 200:
            print(f"slow_http: {a.mode}: expected 200, got {line!r} after {ms:.0f} ms", file=sys.stderr)
            print(f"failed: {figures}")
            return 1
        print(f"ok: {figures}")
        return 0
    st: dict = {"opened": 0, "connect_failed": 0, "closed_by_server": 0, "still_open": 0, "answers": {}}
    stop = threading.Event()
    t = threading.Thread(target=attack, args=(a.mode, host, port_n, a.n, stop, st), daemon=True)
    t.start()
    time.sleep(min(0.5, a.hold))  # let the hostile connections get in first
    results: list[tuple[int, float]] = []
    end = time.monotonic() + a.hold
    while time.monotonic() < end:
        t0 = time.monotonic()
        results.append(scrape(host, port_n))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
    stop.set()
    t.join(timeout=10)
    good = sum(1 for status, _ in results if status == 200)
    lat = sorted(ms for _, ms in results)
    figures = (f"mode={a.mode} n={a.n} hold_s={a.hold:g} scrapes={good}/{len(results)} p50_ms={lat[len(lat) // 2]:.1f}"
               f" max_ms={lat[-1]:.1f} opened={st['opened']} connect_failed={st['connect_failed']}"
               f" closed_by_server={st['closed_by_server']} still_open={st['still_open']} answers={st['answers']}")
    if a.mode == "bigheader":
        figures += f" bigheader_answer={st.get('answer')!r}"
    if good < len(results) or not results:
        print(f"slow_http: {a.mode}: {len(results) - good} of {len(results)} normal scrapes failed", file=sys.stderr)
        print(f"failed: {figures}")
        return 1
    print(f"ok: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
