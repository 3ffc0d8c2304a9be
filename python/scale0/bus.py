"""The heartbeat bus from Python: `Node` publishes its heartbeats through one or more
`scale0 forwarder`s, hears everyone's, and keeps the live membership table, with its events
(joined, suspect, dead, recovered, restarted, conflict) as an iterator, a callback, or
`wait_for` a condition on the table.

A heartbeat is nine frames (docs/protocol.md, "The heartbeat bus"), numbers in ASCII
decimal and texts in UTF-8 of at most 255 bytes:
`s0hb | 1 | shard | started_ms | seq | interval_ms | name | role | address`. A member silent
for `suspect_after` of its own intervals is suspect, for `dead_after` dead; heard again it
has recovered; heard with a new start time after the old one fell silent, restarted; two
start times heard in turn while both are alive are a conflict (two nodes claim the shard).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from . import _sockets, _wire

__all__ = [
    "CONFLICT",
    "DEAD",
    "JOINED",
    "RECOVERED",
    "RESTARTED",
    "SUSPECT",
    "Event",
    "Heartbeat",
    "Member",
    "Node",
]

log = logging.getLogger("scale0.bus")

#: Event kind: a shard heard for the first time.
JOINED = "joined"
#: Event kind: silent for `suspect_after` intervals.
SUSPECT = "suspect"
#: Event kind: silent for `dead_after` intervals (it left, or it died).
DEAD = "dead"
#: Event kind: heard again after being suspect or dead.
RECOVERED = "recovered"
#: Event kind: back with a new start time after the old incarnation fell silent.
RESTARTED = "restarted"
#: Event kind: two start times for one shard, both heard alive in turn.
CONFLICT = "conflict"

_TOPIC = b"s0hb"
_VERSION = b"1"
_MAX_TEXT_BYTES = 255
_MAX_INTERVAL_MS = 3_600_000
_MAX_SHARD = 2**32 - 1


class _NotHeartbeat(ValueError):
    """Frames that are not a heartbeat of ours."""


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat: who is speaking, and a little about it."""

    #: The node's identity in the cluster.
    shard: int
    #: When this incarnation of the node started, in ms since the Unix epoch.
    started_ms: int
    #: Counts up by one per heartbeat of this incarnation, from 1.
    seq: int
    #: The interval the node beats at, in ms; others judge its silence by it.
    interval_ms: int
    #: A human name.
    name: str
    #: What the node does.
    role: str
    #: Where it can be reached, as the node says.
    address: str

    def encode(self) -> list[bytes]:
        """The nine frames of this heartbeat."""
        return [
            _TOPIC,
            _VERSION,
            b"%d" % self.shard,
            b"%d" % self.started_ms,
            b"%d" % self.seq,
            b"%d" % self.interval_ms,
            self.name.encode(),
            self.role.encode(),
            self.address.encode(),
        ]

    @classmethod
    def decode(cls, frames: Sequence[bytes]) -> Heartbeat:
        """Reads a heartbeat; raises ValueError for anything else."""
        if len(frames) != 9 or frames[0] != _TOPIC:
            raise _NotHeartbeat("not a heartbeat")
        if frames[1] != _VERSION:
            raise _NotHeartbeat(f"unknown heartbeat version {frames[1][:16]!r}")
        shard, started, seq, interval = (_number(f) for f in frames[2:6])
        if not 1 <= interval <= _MAX_INTERVAL_MS:
            # A member that claims to beat once an age would never be suspected.
            raise _NotHeartbeat(f"bad interval {interval}")
        if shard > _MAX_SHARD:
            raise _NotHeartbeat(f"bad shard {shard}")
        name, role, address = (_text(f) for f in frames[6:9])
        return cls(shard, started, seq, interval, name, role, address)


def _number(frame: bytes) -> int:
    if not frame or len(frame) > 20 or not frame.isdigit():
        raise _NotHeartbeat(f"bad number {frame[:24]!r}")
    return int(frame)


def _text(frame: bytes) -> str:
    if len(frame) > _MAX_TEXT_BYTES:
        raise _NotHeartbeat("a text over 255 bytes")
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError:
        raise _NotHeartbeat("a text that is not UTF-8") from None


@dataclass(frozen=True)
class Member:
    """One row of the membership table, as it was when read."""

    #: The latest heartbeat heard from it.
    heartbeat: Heartbeat
    #: "alive", "suspect" or "dead".
    state: str
    #: When it was last heard, in `time.monotonic()` seconds.
    last_seen: float
    #: Heartbeats of this incarnation that never arrived (gaps in `seq`).
    lost: int

    @property
    def shard(self) -> int:
        """The member's shard."""
        return self.heartbeat.shard

    @property
    def name(self) -> str:
        """The name it carries."""
        return self.heartbeat.name

    @property
    def alive(self) -> bool:
        """True while it is heard within `suspect_after` of its intervals."""
        return self.state == "alive"


@dataclass(frozen=True)
class Event:
    """Something that changed in the membership table."""

    #: `JOINED`, `SUSPECT`, `DEAD`, `RECOVERED`, `RESTARTED` or `CONFLICT`.
    kind: str
    #: The shard it is about.
    shard: int
    #: The heartbeat that caused it (joined, recovered, restarted: the new incarnation's).
    heartbeat: Heartbeat | None = None
    #: Intervals missed (suspect, dead).
    missed: int | None = None
    #: The old incarnation's start time (restarted).
    previous_started_ms: int | None = None
    #: The start times of the two claimants (conflict).
    started_ms: tuple[int, int] | None = None


class _Row:
    __slots__ = ("challenger", "conflict_reported", "last", "last_seen", "lost", "state")

    def __init__(self, hb: Heartbeat, now: float) -> None:
        self.last = hb
        self.last_seen = now
        self.state = "alive"
        self.lost = 0
        #: A second incarnation heard while this one is alive: a restart or a conflict.
        self.challenger: tuple[Heartbeat, float] | None = None
        self.conflict_reported = False

    def deadline(self, intervals: int) -> float:
        return self.last_seen + self.last.interval_ms * intervals / 1000

    def missed(self, now: float) -> int:
        return int(max(0.0, now - self.last_seen) * 1000) // max(1, self.last.interval_ms)


class _Membership:
    """The table of one node, as a sans-IO state machine (time comes in as `now`); the
    rules of `proto::membership::Membership`."""

    def __init__(self, suspect_after: int, dead_after: int, max_members: int) -> None:
        self.suspect_after = suspect_after
        self.dead_after = dead_after
        self.max_members = max_members
        self.rows: dict[int, _Row] = {}
        self.events: collections.deque[Event] = collections.deque()
        #: Messages that were not heartbeats, or were over a bound.
        self.ignored = 0
        #: New members not admitted because the table was full.
        self.refused = 0

    def handle_message(self, now: float, frames: Sequence[bytes]) -> None:
        try:
            hb = Heartbeat.decode(frames)
        except _NotHeartbeat as e:
            self.ignored += 1
            if self.ignored & (self.ignored - 1) == 0:
                log.warning("not a heartbeat, ignored: %s (%d so far)", e, self.ignored)
            return
        self.handle_heartbeat(now, hb)

    def handle_heartbeat(self, now: float, hb: Heartbeat) -> None:
        m = self.rows.get(hb.shard)
        if m is None:
            if len(self.rows) >= self.max_members:
                self.ignored += 1
                self.refused += 1
                if self.refused & (self.refused - 1) == 0:
                    log.warning(
                        "membership table full (%d): shard %d not admitted (%d so far)",
                        self.max_members,
                        hb.shard,
                        self.refused,
                    )
                return
            self.rows[hb.shard] = _Row(hb, now)
            self.events.append(Event(JOINED, hb.shard, heartbeat=hb))
            return
        if hb.started_ms == m.last.started_ms:
            # Several forwarders deliver each beat more than once: only a newer one counts.
            if hb.seq <= m.last.seq:
                return
            m.lost += hb.seq - m.last.seq - 1
            if m.challenger is not None:
                ch, seen = m.challenger
                window = ch.interval_ms * self.suspect_after / 1000
                # The old claimant speaks again while the new one is alive: a conflict.
                if now - seen < window and not m.conflict_reported:
                    m.conflict_reported = True
                    pair = (m.last.started_ms, ch.started_ms)
                    self.events.append(Event(CONFLICT, hb.shard, started_ms=pair))
            recovered = m.state != "alive"
            m.last, m.last_seen, m.state = hb, now, "alive"
            if recovered:
                self.events.append(Event(RECOVERED, hb.shard, heartbeat=hb))
            return
        if m.state != "alive":
            previous = m.last.started_ms
            self.rows[hb.shard] = _Row(hb, now)
            self.events.append(
                Event(RESTARTED, hb.shard, heartbeat=hb, previous_started_ms=previous)
            )
            return
        # The old one was alive a moment ago: a quick restart or a second claimant, told
        # apart by whether the old one speaks again or falls silent.
        if m.challenger is not None and m.challenger[0].started_ms == hb.started_ms:
            if hb.seq > m.challenger[0].seq:
                m.challenger = (hb, now)
        else:
            m.challenger = (hb, now)
            m.conflict_reported = False

    def poll_timeout(self) -> float | None:
        times = [
            m.deadline(self.suspect_after if m.state == "alive" else self.dead_after)
            for m in self.rows.values()
            if m.state != "dead"
        ]
        return min(times) if times else None

    def handle_timeout(self, now: float) -> None:
        for shard, m in self.rows.items():
            missed = m.missed(now)
            if m.challenger is not None:
                ch, seen = m.challenger
                # A challenger that fell silent itself is forgotten: the conflict is over.
                if now - seen >= ch.interval_ms * self.suspect_after / 1000:
                    m.challenger = None
                    m.conflict_reported = False
            if m.state == "alive" and now >= m.deadline(self.suspect_after):
                if m.challenger is not None:
                    # The old incarnation fell silent while the new one spoke: a restart.
                    ch, seen = m.challenger
                    previous = m.last.started_ms
                    m.last, m.last_seen, m.lost = ch, seen, 0
                    m.challenger, m.conflict_reported = None, False
                    self.events.append(
                        Event(RESTARTED, shard, heartbeat=ch, previous_started_ms=previous)
                    )
                    continue
                m.state = "suspect"
                self.events.append(Event(SUSPECT, shard, missed=missed))
            elif m.state == "suspect" and now >= m.deadline(self.dead_after):
                m.state = "dead"
                self.events.append(Event(DEAD, shard, missed=missed))

    def snapshot(self) -> dict[int, Member]:
        return {
            shard: Member(m.last, m.state, m.last_seen, m.lost)
            for shard, m in sorted(self.rows.items())
        }


def _check_text(what: str, value: str) -> str:
    if len(value.encode("utf-8")) > _MAX_TEXT_BYTES:
        raise ValueError(f"{what} is at most {_MAX_TEXT_BYTES} bytes in UTF-8")
    return value


class Node:
    """A node of the heartbeat bus. With a `shard` it publishes a heartbeat every
    `interval_ms` to every forwarder; with or without one it listens to every forwarder
    and keeps the membership table (itself included, once its own beats come round).

    `forwarder` is a forwarder host (or several): publish to `tcp://HOST:5561`, listen to
    `tcp://HOST:5562`, as `scale0 node --forwarder`. `publish` and `subscribe` name the
    forwarders' XSUB and XPUB endpoints instead (or as well). With none of the three, the
    forwarder is on localhost. `name` (default host-shard), `role` and `address` travel in
    the heartbeats. A member silent for `suspect_after` of its intervals is suspect, for
    `dead_after` dead; at most `max_members` are tracked.

    Events go to `on_event` (called from the node's thread; it should be quick) and to a
    queue read by `events()` / `next_event()`, which keeps the latest `max_events`. A
    background thread owns the sockets. Use it as a context manager, or call `close`.
    """

    def __init__(
        self,
        shard: int | None = None,
        forwarder: str | Sequence[str] | None = None,
        *,
        publish: Sequence[str] = (),
        subscribe: Sequence[str] = (),
        interval_ms: int = 100,
        suspect_after: int = 2,
        dead_after: int = 5,
        max_members: int = 100_000,
        name: str | None = None,
        role: str = "",
        address: str = "",
        on_event: Callable[[Event], None] | None = None,
        max_events: int = 10_000,
        max_message_bytes: int = _wire.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if shard is not None and not 0 <= shard <= _MAX_SHARD:
            raise ValueError(f"a shard is 0 to {_MAX_SHARD}")
        if not 1 <= interval_ms <= _MAX_INTERVAL_MS:
            raise ValueError(f"interval_ms must be 1 to {_MAX_INTERVAL_MS}")
        if suspect_after < 1 or dead_after < 1 or max_members < 1 or max_events < 1:
            raise ValueError("suspect_after, dead_after, max_members, max_events: 1 or more")
        hosts = [forwarder] if isinstance(forwarder, str) else list(forwarder or [])
        if not hosts and not publish and not subscribe:
            hosts = ["localhost"]
        #: Forwarder XSUB endpoints this node publishes to.
        self.publish = [*publish, *(f"tcp://{h}:5561" for h in hosts)]
        #: Forwarder XPUB endpoints this node listens to.
        self.subscribe = [*subscribe, *(f"tcp://{h}:5562" for h in hosts)]
        #: This node's shard; None when it only listens.
        self.shard = shard
        #: Its heartbeat interval, in ms.
        self.interval_ms = interval_ms
        default_name = socket.gethostname() + ("" if shard is None else f"-{shard}")
        self._beat = Heartbeat(
            shard=0 if shard is None else shard,
            started_ms=time.time_ns() // 1_000_000,
            seq=0,
            interval_ms=interval_ms,
            name=_check_text("name", default_name if name is None else name),
            role=_check_text("role", role),
            address=_check_text("address", address),
        )
        self._table = _Membership(suspect_after, max(dead_after, suspect_after), max_members)
        self._on_event = on_event
        self._max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._events: collections.deque[Event] = collections.deque(maxlen=max_events)
        self._closed = False
        #: Events dropped because nobody read them and `max_events` were waiting.
        self.events_dropped = 0
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._control = _sockets.inproc("node")
        ready: collections.deque[BaseException | None] = collections.deque()
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._main, args=(ready, started), name="scale0-node", daemon=True
        )
        self._thread.start()
        started.wait()
        error = ready.popleft()
        if error is not None:
            self._thread.join()
            self._ctx.term()
            raise error

    @property
    def started_ms(self) -> int:
        """When this node started, in ms since the Unix epoch (its incarnation)."""
        return self._beat.started_ms

    @property
    def ignored(self) -> int:
        """Messages heard that were not heartbeats (or were over a bound), dropped."""
        return self._table.ignored

    def members(self) -> dict[int, Member]:
        """The membership table now, by shard: alive, suspect and dead members."""
        with self._lock:
            return self._table.snapshot()

    def alive(self) -> list[int]:
        """The shards alive now, in order."""
        return [s for s, m in self.members().items() if m.alive]

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to `timeout` seconds (None: until one comes or the
        node closes); None if there was none."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._events:
                if self._closed:
                    return None
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._changed.wait(left)
            return self._events.popleft()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they come, until the node closes or, with `timeout`, until none came
        for that many seconds."""
        while (e := self.next_event(timeout)) is not None:
            yield e

    def wait_for(self, condition: Callable[[dict[int, Member]], bool], timeout: float) -> bool:
        """Waits until `condition(members())` holds; False if it did not within `timeout`
        seconds. It is looked at on every event and every interval."""
        end = time.monotonic() + timeout
        while True:
            if condition(self.members()):
                return True
            left = end - time.monotonic()
            if left <= 0 or self._closed:
                return False
            with self._changed:
                self._changed.wait(min(left, self.interval_ms / 1000))

    def close(self) -> None:
        """Stops beating and listening; others see this node go silent, then dead."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._changed.notify_all()
        _sockets.close_loop(self._ctx, self._thread, self._control)

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _main(
        self, ready: collections.deque[BaseException | None], started: threading.Event
    ) -> None:
        sockets: list[zmq.Socket[Any]] = []
        try:
            control: zmq.Socket[Any] = self._ctx.socket(zmq.PULL)
            sockets.append(control)
            control.setsockopt(zmq.LINGER, 0)
            control.bind(self._control)
            sub: zmq.Socket[Any] = self._ctx.socket(zmq.SUB)
            sockets.append(sub)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
            sub.setsockopt(zmq.SUBSCRIBE, _TOPIC)
            for e in self.subscribe:
                sub.connect(e)
            pub: zmq.Socket[Any] | None = None
            if self.shard is not None:
                pub = self._ctx.socket(zmq.PUB)
                sockets.append(pub)
                pub.setsockopt(zmq.LINGER, 0)
                for e in self.publish:
                    pub.connect(e)
        except Exception as e:  # noqa: BLE001 (raised in the constructor)
            for s in sockets:
                s.close()
            ready.append(e)
            started.set()
            return
        ready.append(None)
        started.set()
        log.info("node %s running: publish %s, listen %s", self.shard, self.publish, self.subscribe)
        try:
            self._loop(control, sub, pub)
        except Exception:
            log.exception("the node's loop failed")
        finally:
            for s in sockets:
                s.close()
            with self._lock:
                self._closed = True
                self._changed.notify_all()

    def _loop(
        self, control: zmq.Socket[Any], sub: zmq.Socket[Any], pub: zmq.Socket[Any] | None
    ) -> None:
        interval = self.interval_ms / 1000
        beat = self._beat
        next_beat = time.monotonic()
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        while True:
            now = time.monotonic()
            if pub is not None and now >= next_beat:
                beat = dataclasses.replace(beat, seq=beat.seq + 1)
                # A forwarder not reachable yet misses this beat; the next one follows.
                with contextlib.suppress(zmq.Again):
                    pub.send_multipart(beat.encode(), zmq.NOBLOCK)
                next_beat = now + interval
            with self._lock:
                deadline = self._table.poll_timeout()
            wake = [t for t in (deadline, next_beat if pub is not None else None) if t is not None]
            wait = min([1.0, *(t - time.monotonic() for t in wake)])
            events = dict(poller.poll(max(0, int(wait * 1000)) + 1))
            if control in events:
                return
            new: list[Event] = []
            with self._lock:
                while True:
                    try:
                        frames = sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._table.handle_message(time.monotonic(), frames)
                now = time.monotonic()
                t = self._table.poll_timeout()
                if t is not None and t <= now:
                    self._table.handle_timeout(now)
                while self._table.events:
                    e = self._table.events.popleft()
                    if len(self._events) == self._events.maxlen:
                        self.events_dropped += 1
                    self._events.append(e)
                    new.append(e)
                if new:
                    self._changed.notify_all()
            for e in new:
                log.info("member %s: shard %d", e.kind, e.shard)
                if self._on_event is not None:
                    try:
                        self._on_event(e)
                    except Exception:
                        log.exception("on_event raised; the node goes on")
