"""The heartbeat bus from Python against the real binary: a Python `Node` seen by a Rust
`scale0 node` and the reverse, through a Rust `scale0 forwarder`; nodes killed -9 expire
from the tables; bad messages are ignored. The table's rules are also stepped in virtual
time."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import Proc, Spawn, binary

import scale0
from scale0.bus import DEAD, JOINED, RECOVERED, RESTARTED, SUSPECT, Event, Heartbeat, Node
from scale0.bus import _Membership as Membership

LOOPBACK = "tcp://127.0.0.1:*"
PACKAGE_DIR = str(Path(scale0.__file__).resolve().parent.parent)


@pytest.fixture
def forwarder(spawn: Spawn) -> Proc:
    """A forwarder on free loopback ports: endpoints[0] is its XSUB, [1] its XPUB."""
    return spawn(binary(), "forwarder", "--frontend", LOOPBACK, "--backend", LOOPBACK, listens=2)


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Nodes of this process, closed at the end."""
    made: list[Node] = []
    yield made
    for n in made:
        n.close()


def rust_node(spawn: Spawn, forwarder: Proc, *args: str) -> Proc:
    return spawn(
        binary(),
        "node",
        "--publish",
        forwarder.endpoints[0],
        "--subscribe",
        forwarder.endpoints[1],
        "--interval-ms",
        "100",
        "--json",
        *args,
    )


def next_event(proc: Proc, event: str, shard: int, timeout: float = 10.0) -> dict[str, Any]:
    """The next JSON event line `event` about `shard` from a Rust node."""
    end = time.monotonic() + timeout
    while True:
        e: dict[str, Any] = json.loads(proc.line(max(0.01, end - time.monotonic())))
        if e["event"] == event and e.get("shard", e.get("member", {}).get("shard")) == shard:
            return e
        if time.monotonic() > end:
            pytest.fail(f"no {event} for shard {shard} within {timeout} s")


def expect(node: Node, kind: str, shard: int, timeout: float = 10.0) -> Event:
    """The next event `kind` about `shard` on a Python node (others are passed over)."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        e = node.next_event(left)
        if e is not None and e.kind == kind and e.shard == shard:
            return e
    pytest.fail(f"no {kind} for shard {shard} within {timeout} s")


NODE_SCRIPT = """
import sys, threading
from scale0.bus import Node
node = Node(7, publish=[sys.argv[1]], subscribe=[sys.argv[2]], name="py-7", role="tester",
            address="here:1")
print("running", flush=True)
threading.Event().wait()
"""


def test_a_python_node_is_seen_by_a_rust_node_and_expires_when_killed(
    spawn: Spawn, forwarder: Proc
) -> None:
    rust = rust_node(spawn, forwarder, "--shard", "1")
    env = {"PYTHONPATH": PACKAGE_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
    py = spawn(sys.executable, "-c", NODE_SCRIPT, *forwarder.endpoints, env=env)
    assert py.line() == "running"
    joined = next_event(rust, "joined", 7)
    assert joined["member"]["name"] == "py-7"
    assert (joined["member"]["role"], joined["member"]["address"]) == ("tester", "here:1")
    assert joined["member"]["interval_ms"] == 100
    py.kill()
    suspect = next_event(rust, "suspect", 7)
    dead = next_event(rust, "dead", 7)
    assert suspect["missed"] >= 2 and dead["missed"] >= 5


def test_a_python_node_sees_rust_nodes_join_die_and_restart(
    spawn: Spawn, forwarder: Proc, nodes: list[Node]
) -> None:
    seen: list[Event] = []
    node = Node(
        2,
        publish=[forwarder.endpoints[0]],
        subscribe=[forwarder.endpoints[1]],
        on_event=seen.append,
    )
    nodes.append(node)
    rust = rust_node(spawn, forwarder, "--shard", "9", "--name", "rust-9", "--role", "r")
    joined = expect(node, JOINED, 9)
    assert joined.heartbeat is not None
    assert (joined.heartbeat.name, joined.heartbeat.role) == ("rust-9", "r")
    assert node.wait_for(lambda m: 2 in m and 9 in m, 10), "it hears itself and the Rust node"
    first_start = joined.heartbeat.started_ms
    rust.kill()
    assert expect(node, SUSPECT, 9).missed == 2
    assert expect(node, DEAD, 9).missed == 5
    assert node.members()[9].state == "dead" and node.alive() == [2]
    # The shard comes back as a new incarnation.
    rust_node(spawn, forwarder, "--shard", "9", "--name", "rust-9")
    restarted = expect(node, RESTARTED, 9)
    assert restarted.previous_started_ms == first_start
    assert node.members()[9].alive
    kinds = [(e.kind, e.shard) for e in seen if e.shard == 9]
    assert kinds == [(JOINED, 9), (SUSPECT, 9), (DEAD, 9), (RESTARTED, 9)], "callback too"


def test_python_nodes_see_each_other_and_ignore_garbage(forwarder: Proc, nodes: list[Node]) -> None:
    pub, sub = [forwarder.endpoints[0]], [forwarder.endpoints[1]]
    a = Node(10, publish=pub, subscribe=sub, interval_ms=50)
    b = Node(11, publish=pub, subscribe=sub, interval_ms=50)
    listener = Node(None, publish=pub, subscribe=sub)
    nodes.extend([a, b, listener])
    for n in (a, b, listener):
        assert n.wait_for(lambda m: {10, 11} <= set(m), 10), "everyone knows both"
    assert 12 not in listener.members(), "a listener is not a member"
    # Bad messages on the bus: counted and ignored, the node goes on.
    rogue: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.PUB)
    rogue.setsockopt(zmq.LINGER, 0)
    rogue.connect(forwarder.endpoints[0])
    bad = [
        [b"s0hb", b"1", b"x", b"1", b"1", b"100", b"", b"", b""],
        [b"s0hb", b"2", b"5", b"1", b"1", b"100", b"", b"", b""],
        [b"s0hb", b"1", b"5", b"1", b"1", b"0", b"", b"", b""],
        [b"s0hb", b"1", b"5", b"1", b"1", b"100", b"\xff", b"", b""],
        [b"s0hb", b"short"],
    ]
    try:
        end = time.monotonic() + 10
        while listener.ignored < len(bad) and time.monotonic() < end:
            for frames in bad:
                rogue.send_multipart(frames)
            time.sleep(0.05)  # a PUB drops until the subscription arrives: send again
    finally:
        rogue.close()
    assert listener.ignored >= len(bad)
    assert 5 not in listener.members()
    # A node that closes falls silent and dies in the others' tables.
    a.close()
    assert expect(b, DEAD, 10).missed == 5
    assert listener.wait_for(lambda m: m[10].state == "dead" and m[11].alive, 10)


def hb(shard: int, started: int, seq: int) -> Heartbeat:
    return Heartbeat(shard, started, seq, 250, f"n{shard}", "", "")


def drain(t: Membership) -> list[tuple[str, int]]:
    out = [(e.kind, e.shard) for e in t.events]
    t.events.clear()
    return out


def test_the_table_follows_the_rules_in_virtual_time() -> None:
    # Intervals of 250 ms, times in quarter seconds: every deadline is exact.
    t = Membership(suspect_after=2, dead_after=5, max_members=2)
    t.handle_heartbeat(0.0, hb(1, 1000, 1))
    assert drain(t) == [(JOINED, 1)]
    assert t.poll_timeout() == 0.5
    t.handle_heartbeat(0.25, hb(1, 1000, 1))  # a duplicate through a second forwarder
    t.handle_heartbeat(0.25, hb(1, 1000, 4))  # two lost on the way
    assert t.rows[1].lost == 2 and not drain(t)
    assert t.poll_timeout() == 0.75
    t.handle_timeout(0.7)
    assert not drain(t)
    t.handle_timeout(0.75)
    assert drain(t) == [(SUSPECT, 1)] and t.poll_timeout() == 1.5
    t.handle_timeout(1.5)
    assert drain(t) == [(DEAD, 1)] and t.snapshot()[1].state == "dead"
    assert t.poll_timeout() is None
    t.handle_heartbeat(1.75, hb(1, 1000, 5))
    assert drain(t) == [(RECOVERED, 1)]
    # A new incarnation while the old one lives is held back; the old one falls silent,
    # so it was a restart.
    t.handle_heartbeat(2.0, hb(1, 2000, 1))
    t.handle_heartbeat(2.0, hb(1, 2000, 2))
    assert not drain(t) and t.rows[1].last.started_ms == 1000
    t.handle_timeout(2.25)
    assert drain(t) == [(RESTARTED, 1)] and t.rows[1].last.started_ms == 2000
    # Both incarnations heard in turn: a conflict, reported once.
    t.handle_heartbeat(2.5, hb(1, 3000, 1))
    t.handle_heartbeat(2.5, hb(1, 2000, 3))
    t.handle_heartbeat(2.75, hb(1, 3000, 2))
    t.handle_heartbeat(2.75, hb(1, 2000, 4))
    assert drain(t) == [("conflict", 1)]
    # The table is bounded; what is not a heartbeat is counted and dropped.
    t.handle_heartbeat(3.0, hb(2, 1, 1))
    t.handle_heartbeat(3.0, hb(3, 1, 1))
    assert sorted(t.rows) == [1, 2] and t.refused == 1
    t.handle_message(3.0, [b"s0hb", b"1"])
    assert t.ignored == 2
