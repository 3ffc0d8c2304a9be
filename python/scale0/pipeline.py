"""Pipelines from Python: `work` runs a Python function as a worker of a `scale0 map` (or of a
`scale0 vent` / `scale0 sink` pair), and `Map` hands a Python iterable of jobs to every
connected worker (`scale0 work` or `work`), with per-job timeouts, retries and exactly one
result per job, in input order.

The frames are those of docs/protocol.md, "Pipelines": jobs travel from the map's PUSH to
the workers' PULL, reports travel from the workers' PUSH to the map's PULL. A framed job is
`s0job | id | timeout_ms | payload`; a worker answers `s0start`, `s0res` and heartbeats
(`s0alive`), and `s0bye` when it leaves. A one-frame job (the ZeroMQ Guide's ventilator)
gets a one-frame result and nothing else.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import queue
import random
import re
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Union

import zmq
import zmq.utils.monitor

from . import _sockets, _wire
from .errors import Scale0Error

__all__ = [
    "DEFAULT_SINK",
    "DEFAULT_VENT",
    "JobFailed",
    "JobResult",
    "Map",
    "MapStats",
    "Source",
    "Unrunnable",
    "WorkSummary",
    "work",
]

log = logging.getLogger("scale0.pipeline")

#: The Guide's ventilator port, where workers pull jobs.
DEFAULT_VENT = "tcp://*:5557"
#: The Guide's sink port, where workers push results.
DEFAULT_SINK = "tcp://*:5558"

_JOB = b"s0job"
_RESULT = b"s0res"
_ALIVE = b"s0alive"
_START = b"s0start"
_BYE = b"s0bye"
_STATUSES = (b"ok", b"failed", b"timeout", b"unrunnable")

_MAX_ID_BYTES = 255
_MAX_CAPACITY = 65_535
_MAX_INTERVAL_MS = 3_600_000
_MAX_TIMEOUT_MS = 2**32 - 1
# TCP keepalive, so a peer whose machine vanished is noticed by the kernel.
_KEEPALIVE_IDLE_S = 30
_KEEPALIVE_INTVL_S = 10
_KEEPALIVE_CNT = 3
# Jobs read from the input ahead of dispatch; beyond this the input waits.
_READ_AHEAD = 4096
# Reports a worker holds for a sink that cannot take them before it stops taking jobs.
_OUTBOX_LIMIT = 10_000

_counter = itertools.count()


class _BadMessage(ValueError):
    """A pipeline message that does not parse."""


def _number(what: str, frame: bytes, maximum: int) -> int:
    if not frame or len(frame) > 20 or not frame.isdigit():
        raise _BadMessage(f"bad {what}: {frame[:32]!r}")
    n = int(frame)
    if n > maximum:
        raise _BadMessage(f"bad {what}: {n} is over {maximum}")
    return n


def _ident(what: str, frame: bytes) -> bytes:
    if not frame or len(frame) > _MAX_ID_BYTES:
        raise _BadMessage(f"bad {what}: empty or longer than {_MAX_ID_BYTES} bytes")
    return frame


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "replace")


def _pipeline_socket(ctx: zmq.Context[Any], kind: int, hwm: int) -> zmq.Socket[Any]:
    s: zmq.Socket[Any] = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, hwm)
    s.setsockopt(zmq.RCVHWM, hwm)
    s.setsockopt(zmq.TCP_KEEPALIVE, 1)
    s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, _KEEPALIVE_IDLE_S)
    s.setsockopt(zmq.TCP_KEEPALIVE_INTVL, _KEEPALIVE_INTVL_S)
    s.setsockopt(zmq.TCP_KEEPALIVE_CNT, _KEEPALIVE_CNT)
    return s


def _try_recv(s: zmq.Socket[Any]) -> list[bytes] | None:
    try:
        return s.recv_multipart(zmq.NOBLOCK)
    except zmq.Again:
        return None


def _local(bound: str) -> str:
    """`tcp://0.0.0.0:5557` as a peer on this machine connects to it."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:"):
        if bound.startswith(wildcard):
            return "tcp://127.0.0.1:" + bound[len(wildcard) :]
    if bound.startswith("tcp://[::]:"):
        return "tcp://[::1]:" + bound[len("tcp://[::]:") :]
    return bound


class _Quiet:
    """Logs the 1st, 2nd, 4th, 8th... occurrence: seen, but never a flood of lines."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, message: str, *args: object) -> None:
        self.count += 1
        if _wire.sparse(self.count):
            log.warning(message + " (%d so far)", *args, self.count)


# ---------------------------------------------------------------------------------------
# The worker.


class Source(NamedTuple):
    """Where a worker pulls jobs from (a map's or ventilator's PUSH) and where it pushes
    their results (that map's or ventilator's sink)."""

    #: The jobs endpoint, such as `tcp://host:5557`.
    jobs: str
    #: The results endpoint, such as `tcp://host:5558`.
    results: str

    @classmethod
    def host(cls, host: str) -> Source:
        """`host` alone means its ventilator and sink ports (5557, 5558); `host:port` or
        `tcp://host:port` is the ventilator, and the sink is on the port after it (as
        `scale0 work --connect`)."""
        rest = host[len("tcp://") :] if host.startswith("tcp://") else host
        bad = ValueError(f"{host!r} is not a host, host:port or tcp://host:port")
        if not rest or "/" in rest:
            raise bad
        name, colon, port_text = rest.rpartition(":")
        if colon and name and "]" not in port_text:
            if not port_text.isdigit() or int(port_text) > 65_535:
                raise bad
            port = int(port_text)
        else:
            name, port = rest, 5557
        if port >= 65_535:
            raise bad
        return cls(f"tcp://{name}:{port}", f"tcp://{name}:{port + 1}")


#: What `work` accepts as where to connect.
Connect = Union[str, Source, Sequence[Union[str, Source]]]

#: A job function: the job's payload in, its output out (bytes or str; None for nothing).
JobFunction = Callable[[bytes], Union[bytes, bytearray, memoryview, str, None]]


class Unrunnable(Exception):
    """Raise it from a job function to fail the job for good: the map reports it failed at
    once instead of running it again (status `unrunnable`)."""


@dataclass
class WorkSummary:
    """What a worker did before it stopped."""

    #: Jobs started.
    jobs: int = 0
    #: Jobs that succeeded.
    ok: int = 0
    #: Jobs that failed (the function raised).
    failed: int = 0
    #: Jobs reported timed out (the function overran the job's timeout).
    timed_out: int = 0
    #: Messages on a jobs socket that were not jobs, dropped.
    malformed: int = 0


def _sources(connect: Connect) -> list[Source]:
    items: Sequence[str | Source]
    items = [connect] if isinstance(connect, (str, Source)) else list(connect)
    out = [s if isinstance(s, Source) else Source.host(s) for s in items]
    if not out:
        raise ValueError("a worker needs a map or ventilator to connect to")
    return out


class _Running(NamedTuple):
    source: int
    #: The framed job's id; None for a one-frame job.
    key: bytes | None
    #: When the worker gives up on it (monotonic seconds), if it has a timeout.
    deadline: float | None
    timeout_ms: int


class _Slots:
    """The threads that run the job function, `capacity` at a time. A job that overruns
    its timeout cannot be stopped (Python cannot stop a thread): it is reported timed out,
    its thread is left to finish and a fresh one takes its place, while fewer than four
    times the capacity are stuck so."""

    def __init__(self, ctx: zmq.Context[Any], fn: JobFunction, capacity: int, addr: str) -> None:
        self._ctx = ctx
        self._fn = fn
        self._addr = addr
        self._capacity = capacity
        self._jobs: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: The job each thread is running, by thread.
        self._current: dict[threading.Thread, int] = {}
        #: Threads still running a job reported timed out.
        self._stuck: set[threading.Thread] = set()
        self._threads: set[threading.Thread] = set()
        with self._lock:
            for _ in range(capacity):
                self._spawn()

    def _spawn(self) -> None:
        t = threading.Thread(target=self._run, name="scale0-job", daemon=True)
        self._threads.add(t)
        t.start()

    @property
    def live(self) -> int:
        """Threads that take jobs: all but the stuck ones."""
        with self._lock:
            return len(self._threads) - len(self._stuck)

    def submit(self, seq: int, payload: bytes) -> None:
        self._jobs.put((seq, payload))

    def abandon(self, seq: int) -> None:
        """Job `seq` overran: its thread no longer counts, and another takes its place."""
        with self._lock:
            thread = next((t for t, s in self._current.items() if s == seq), None)
            if thread is None:
                return  # it has just finished (its result is dropped), or not yet begun
            self._stuck.add(thread)
            if len(self._stuck) <= 4 * self._capacity:
                self._spawn()
            else:
                log.warning(
                    "%d job functions overran their timeout and are still running: "
                    "this worker runs fewer jobs at once until they return",
                    len(self._stuck),
                )

    def stop(self) -> None:
        with self._lock:
            n = len(self._threads)
        for _ in range(n):
            self._jobs.put(None)

    def _run(self) -> None:
        me = threading.current_thread()
        back = self._ctx.socket(zmq.PUSH)
        back.setsockopt(zmq.LINGER, 0)
        back.setsockopt(zmq.SNDHWM, 0)
        back.connect(self._addr)
        try:
            while True:
                item = self._jobs.get()
                if item is None:
                    return
                seq, payload = item
                with self._lock:
                    self._current[me] = seq
                status, output = self._call(payload)
                with self._lock:
                    del self._current[me]
                    leave = me in self._stuck and len(self._threads) > self._capacity
                    self._stuck.discard(me)
                    if leave:
                        self._threads.discard(me)
                try:
                    back.send_multipart([seq.to_bytes(8, "little"), status, output])
                except zmq.ZMQError:
                    return
                if leave:
                    return
        finally:
            back.close()

    def _call(self, payload: bytes) -> tuple[bytes, bytes]:
        try:
            out = self._fn(payload)
        except Unrunnable as e:
            return b"unrunnable", str(e).encode("utf-8", "replace")
        except BaseException as e:  # noqa: BLE001 (a job's failure is its result)
            return b"failed", f"{type(e).__name__}: {e}".encode("utf-8", "replace")
        if out is None:
            return b"ok", b""
        try:
            return b"ok", _wire.frame(out, "a job function's result")
        except TypeError as e:
            return b"failed", str(e).encode()


@dataclass
class _TaskWorker:
    """The socket loop of `work`; every socket here belongs to the thread that calls
    `run`, except each slot's pipe, which its slot thread owns."""

    sources: list[Source]
    fn: JobFunction
    capacity: int
    interval_ms: int
    name: bytes
    plain_timeout_ms: int
    max_message_bytes: int
    summary: WorkSummary = field(default_factory=WorkSummary)

    def _alive(self, running: dict[int, _Running], source: int) -> list[bytes]:
        ids = [r.key for r in running.values() if r.source == source and r.key is not None]
        return [_ALIVE, self.name, b"%d" % self.capacity, b"%d" % self.interval_ms, *ids]

    def run(self, stop: threading.Event) -> WorkSummary:
        # The network sockets in one context, terminated here (the goodbye gets its
        # linger); the slots' pipes in another, which a job function that never returns
        # would hold open, so it is terminated in the background.
        ctx: zmq.Context[Any] = zmq.Context()
        slot_ctx: zmq.Context[Any] = zmq.Context()
        sinks: list[str] = []
        sink_of: list[int] = []
        for s in self.sources:
            if s.results not in sinks:
                sinks.append(s.results)
            sink_of.append(sinks.index(s.results))
        pulls: list[zmq.Socket[Any]] = []
        pushes: list[zmq.Socket[Any]] = []
        done: zmq.Socket[Any] | None = None
        slots: _Slots | None = None
        said_hello = [False] * len(self.sources)
        try:
            for s in self.sources:
                # One waiting job per connection: the rest stay with the map, which gives
                # them to workers with room.
                pull = _pipeline_socket(ctx, zmq.PULL, 1)
                pull.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
                pull.connect(s.jobs)
                pulls.append(pull)
            for e in sinks:
                push = _pipeline_socket(ctx, zmq.PUSH, 100_000)
                push.connect(e)
                pushes.append(push)
            addr = _sockets.inproc("work")
            done = slot_ctx.socket(zmq.PULL)
            done.setsockopt(zmq.LINGER, 0)
            done.bind(addr)
            slots = _Slots(slot_ctx, self.fn, self.capacity, addr)
            log.info(
                "worker %s running: jobs from %s, results to %s",
                self.name.decode("utf-8", "replace"),
                " ".join(s.jobs for s in self.sources),
                " ".join(sinks),
            )
            self._loop(
                stop=stop,
                pulls=pulls,
                pushes=pushes,
                done=done,
                slots=slots,
                sink_of=sink_of,
                said_hello=said_hello,
            )
        finally:
            # Leaving: no more jobs; running ones are not waited for (the map sends them
            # again elsewhere). The goodbye and what is queued get two seconds to leave.
            for source, hello in enumerate(said_hello):
                if hello:
                    with contextlib.suppress(zmq.ZMQError):
                        pushes[sink_of[source]].send_multipart([_BYE, self.name], zmq.NOBLOCK)
            for p in pushes:
                p.setsockopt(zmq.LINGER, 2000)
            for sock in [*pulls, *pushes]:
                sock.close()
            ctx.term()
            if slots is not None:
                slots.stop()
            if done is not None:
                done.close()
            threading.Thread(target=slot_ctx.term, name="scale0-work-term", daemon=True).start()
        log.info("worker %s stopped: %s", self.name.decode("utf-8", "replace"), self.summary)
        return self.summary

    def _loop(
        self,
        *,
        stop: threading.Event,
        pulls: list[zmq.Socket[Any]],
        pushes: list[zmq.Socket[Any]],
        done: zmq.Socket[Any],
        slots: _Slots,
        sink_of: list[int],
        said_hello: list[bool],
    ) -> None:
        summary = self.summary
        running: dict[int, _Running] = {}
        outbox: collections.deque[tuple[int, list[bytes]]] = collections.deque()
        interval = self.interval_ms / 1000
        next_beat = time.monotonic() + interval
        seq = 0
        turn = 0
        malformed = _Quiet()
        jobs_poller = zmq.Poller()
        jobs_poller.register(done, zmq.POLLIN)
        for p in pulls:
            jobs_poller.register(p, zmq.POLLIN)
        done_poller = zmq.Poller()
        done_poller.register(done, zmq.POLLIN)
        while not stop.is_set():
            # Reports leave in order; a sink that cannot take more holds the rest.
            while outbox:
                sink, frames = outbox[0]
                try:
                    pushes[sink].send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    break
                outbox.popleft()
            now = time.monotonic()
            wake = min([next_beat, *(r.deadline for r in running.values() if r.deadline)])
            wait = 0.01 if outbox else min(max(0.0, wake - now), 0.1)
            take_jobs = slots.live > len(running) and len(outbox) < _OUTBOX_LIMIT
            poller = jobs_poller if take_jobs else done_poller
            poller.poll(int(wait * 1000) + 1)
            while (report := _try_recv(done)) is not None:
                self._finished(report, running, outbox, sink_of)
            # Jobs overdue: reported timed out now; their threads are left to finish.
            now = time.monotonic()
            for s, r in list(running.items()):
                if r.deadline is not None and now >= r.deadline:
                    del running[s]
                    slots.abandon(s)
                    summary.timed_out += 1
                    why = f"timed out after {r.timeout_ms} ms".encode()
                    if r.key is not None:
                        frames = [_RESULT, self.name, r.key, b"timeout", why]
                    else:
                        log.warning("a one-frame job timed out; its sink gets an empty result")
                        frames = [b""]
                    outbox.append((sink_of[r.source], frames))
            # Take jobs while slots are free, turn by turn across the sources.
            idle = 0
            while slots.live > len(running) and idle < len(pulls) and len(outbox) < _OUTBOX_LIMIT:
                source = turn % len(pulls)
                turn += 1
                job = _try_recv(pulls[source])
                if job is None:
                    idle += 1
                    continue
                idle = 0
                try:
                    key, timeout_ms, payload = self._decode_job(job)
                except _BadMessage as e:
                    summary.malformed += 1
                    malformed("not a job, dropped: %s", e)
                    continue
                sink = sink_of[source]
                if key is not None:
                    # Framed jobs mean a scale0 sink: it gets heartbeats from now on.
                    if not said_hello[source]:
                        said_hello[source] = True
                        outbox.append((sink, self._alive(running, source)))
                    outbox.append((sink, [_START, self.name, key]))
                seq += 1
                summary.jobs += 1
                deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
                running[seq] = _Running(source, key, deadline, timeout_ms)
                slots.submit(seq, payload)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + interval
                for source, hello in enumerate(said_hello):
                    if hello:
                        outbox.append((sink_of[source], self._alive(running, source)))

    def _decode_job(self, frames: list[bytes]) -> tuple[bytes | None, int, bytes]:
        if len(frames) == 1:
            return None, self.plain_timeout_ms, frames[0]
        if frames[0] != _JOB:
            raise _BadMessage(f"unknown message kind {frames[0][:32]!r}")
        if len(frames) != 4:
            raise _BadMessage(f"s0job needs 4 frames, got {len(frames)}")
        key = _ident("job id", frames[1])
        return key, _number("timeout", frames[2], _MAX_TIMEOUT_MS), frames[3]

    def _finished(
        self,
        frames: list[bytes],
        running: dict[int, _Running],
        outbox: collections.deque[tuple[int, list[bytes]]],
        sink_of: list[int],
    ) -> None:
        seq_frame, status, output = frames
        job = running.pop(int.from_bytes(seq_frame, "little"), None)
        if job is None:
            return  # a job reported timed out already
        if status == b"ok":
            self.summary.ok += 1
        else:
            self.summary.failed += 1
        sink = sink_of[job.source]
        if job.key is not None:
            outbox.append((sink, [_RESULT, self.name, job.key, status, output]))
        else:
            if status != b"ok":
                log.warning(
                    "a one-frame job failed (%s); its sink gets an empty result",
                    output.decode("utf-8", "replace"),
                )
            outbox.append((sink, [output if status == b"ok" else b""]))


def _default_name() -> str:
    return f"{socket.gethostname()}.{os.getpid()}.{random.getrandbits(16):04x}"


def work(
    connect: Connect,
    fn: JobFunction,
    *,
    capacity: int = 1,
    interval_ms: int = 1000,
    name: str | None = None,
    plain_timeout_ms: int = 0,
    max_message_bytes: int = _wire.DEFAULT_MAX_MESSAGE_BYTES,
    stop: threading.Event | None = None,
) -> WorkSummary:
    """Runs `fn` on the jobs of one or more maps or ventilators until `stop` is set, then
    says goodbye to their sinks and returns what it did. Blocks: run it in a thread to do
    something else meanwhile.

    `connect` is where to pull jobs: a `Source(jobs, results)`, or a host as
    `scale0 work --connect` takes it (`host` means `host:5557` and `host:5558`;
    `host:PORT` means PORT and the one after), or a list of them; jobs are taken from each
    in turn and each result goes back to where its job came from. `fn` gets a job's payload
    and returns its output (bytes or str; None for an empty one); an exception fails the
    job (the map runs it again, up to its retries), `Unrunnable` fails it for good.
    `capacity` jobs run at once, each in its own thread. A job whose timeout passes is
    reported timed out at once; its function cannot be stopped and is left to finish in
    the background, its result dropped. `interval_ms` is the heartbeat interval towards
    sinks of framed jobs, `plain_timeout_ms` the limit for one-frame jobs (0: none).

    Without `stop`, in the main thread, SIGTERM stops it the same way; Ctrl-C stops it and
    raises KeyboardInterrupt after the goodbye.
    """
    if not 1 <= capacity <= _MAX_CAPACITY:
        raise ValueError(f"capacity must be 1 to {_MAX_CAPACITY}")
    if not 1 <= interval_ms <= _MAX_INTERVAL_MS:
        raise ValueError(f"interval_ms must be 1 to {_MAX_INTERVAL_MS}")
    if plain_timeout_ms < 0:
        raise ValueError("plain_timeout_ms must be 0 or more")
    label = _default_name() if name is None else name
    name_bytes = label.encode("utf-8")
    if not 1 <= len(name_bytes) <= _MAX_ID_BYTES:
        raise ValueError(f"a worker name has 1 to {_MAX_ID_BYTES} bytes")
    worker = _TaskWorker(
        sources=_sources(connect),
        fn=fn,
        capacity=capacity,
        interval_ms=interval_ms,
        name=name_bytes,
        plain_timeout_ms=plain_timeout_ms,
        max_message_bytes=max_message_bytes,
    )
    event = stop if stop is not None else threading.Event()
    previous: Any = None
    installed = stop is None and threading.current_thread() is threading.main_thread()
    if installed:
        previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: event.set())
    try:
        return worker.run(event)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------
# The map's state machine (docs/protocol.md, "The map's rules"): sans-IO, time comes in.


@dataclass
class MapStats:
    """Progress totals of a map run."""

    #: Jobs given to the map.
    jobs: int = 0
    #: Jobs that succeeded.
    done: int = 0
    #: Jobs that failed for good.
    failed: int = 0
    #: Jobs sent again (after a failure, a timeout, a worker's death, a lost buffer).
    retried: int = 0
    #: Jobs sent to workers (a re-send counts again).
    sent: int = 0
    #: Results for a job already finished or for a superseded send, dropped.
    late_results: int = 0
    #: Reports that could not be read, dropped.
    malformed: int = 0
    #: Workers presumed dead after missing heartbeats.
    workers_lost: int = 0
    #: Workers alive now (heard within their liveness).
    workers: int = 0
    #: Jobs those workers run at once, in all.
    capacity: int = 0


@dataclass(frozen=True)
class JobResult:
    """How one job ended, handed out once."""

    #: Position of the job in the input, from 0.
    index: int
    #: The job's input.
    input: bytes
    #: True if it succeeded.
    ok: bool
    #: Its output (empty when it failed).
    output: bytes
    #: Why it failed, after its last attempt (None when it succeeded).
    error: str | None
    #: Runs that ended (the failed ones and the last).
    attempts: int
    #: The worker of the last run, if one was known.
    worker: str | None


class JobFailed(Scale0Error):
    """A job of `Map.map` failed after all its attempts; `result` says how."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(
            f"job {result.index} failed after {result.attempts} attempts: {result.error}"
        )
        #: The job's outcome.
        self.result = result


@dataclass
class _Job:
    payload: bytes
    #: Sends so far, numbering the keys so a superseded send's report is recognised.
    sends: int = 0
    #: Runs that ended without success.
    failures: int = 0
    last_worker: bytes | None = None
    #: "queued", "sent" (no start notice yet) or "started".
    phase: str = "queued"
    key: bytes = b""
    worker: bytes = b""
    at: float = 0.0


@dataclass
class _Worker:
    capacity: int
    interval_ms: int
    last_seen: float
    #: Keys the map believes this worker is running.
    started: set[bytes] = field(default_factory=set)


# How long after a connection closed the jobs sent meanwhile are still suspect.
_SETTLE_S = 0.05

_KEY = re.compile(rb"([0-9a-f]{16})\.([0-9]{1,20})\.([0-9]{1,10})")


class _MapCore:
    """The parallel map: jobs in, dispatches out, reports in, finished jobs out. Follows
    `proto::pipeline::Map`: credit bounds what is in flight, a job's timeout runs from its
    start notice, a job whose worker died or whose buffer may have gone is sent again, and
    only a job's first result counts."""

    def __init__(
        self,
        *,
        timeout_ms: int,
        max_attempts: int,
        prefetch: int,
        liveness: int,
        dispatch_timeout_ms: int,
        ordered: bool,
        run: int,
    ) -> None:
        self.timeout_ms = timeout_ms
        self.max_attempts = max_attempts
        self.prefetch = prefetch
        self.liveness = max(1, liveness)
        self.dispatch_timeout_ms = dispatch_timeout_ms
        self.ordered = ordered
        self.run = run
        self.jobs: dict[int, _Job] = {}
        self.queue: collections.deque[int] = collections.deque()
        #: Jobs sent or started, the only ones with deadlines.
        self.flight: set[int] = set()
        self.unstarted = 0
        self.in_flight = 0
        self.workers: dict[bytes, _Worker] = {}
        self.connections = 0
        #: Workers presumed dead whose connection may still be open: not strangers.
        self.zombies = 0
        self.presumed_dead: set[bytes] = set()
        self.next_index = 0
        self.input_closed = False
        self.finished: dict[int, JobResult] = {}
        self.next_emit = 0
        self.stats = MapStats()
        self._malformed = _Quiet()
        #: When to send again what is still unstarted after a connection closed.
        self.settle_at: float | None = None

    def push_job(self, payload: bytes) -> int:
        index = self.next_index
        self.next_index += 1
        self.stats.jobs += 1
        self.jobs[index] = _Job(payload)
        self.queue.append(index)
        return index

    def close_input(self) -> None:
        self.input_closed = True

    def is_done(self) -> bool:
        return self.input_closed and not self.jobs and not self.finished

    def set_connections(self, now: float, connections: int) -> None:
        """The count of connections on the jobs socket: a lost connection may have taken
        jobs with it, so those not started are sent again."""
        if connections < self.connections:
            closed = self.connections - connections
            self.zombies = max(0, self.zombies - closed)
            if self.zombies == 0:
                self.presumed_dead.clear()
            self._resend_unstarted(now, "a connection closed")
            # The jobs socket may still send into the closed connection for a moment
            # (libzmq counts it closed before its socket stops using it): jobs sent until
            # then are lost too, so a second look follows.
            self.settle_at = now + _SETTLE_S
        self.connections = connections

    def _credit(self) -> int:
        known = sum(w.capacity + self.prefetch for w in self.workers.values())
        strangers = max(0, self.connections - len(self.workers) - self.zombies)
        credit = known + strangers
        # A connected peer always gets a job to try: the dispatch timeout takes it back.
        return max(credit, 1) if self.connections > 0 else credit

    def _key(self, index: int, send: int) -> bytes:
        return b"%016x.%d.%d" % (self.run, index, send)

    def _parse_key(self, key: bytes) -> tuple[int, int] | None:
        m = _KEY.fullmatch(key)
        if m is None or int(m.group(1), 16) != self.run:
            return None
        return int(m.group(2)), int(m.group(3))

    def poll_dispatch(self, now: float) -> tuple[int, list[bytes]] | None:
        """The next job to send, if credit allows: (index, frames)."""
        if self.in_flight >= self._credit() or not self.queue:
            return None
        index = self.queue.popleft()
        job = self.jobs[index]
        job.sends += 1
        job.key = self._key(index, job.sends)
        job.phase = "sent"
        job.at = now
        self.unstarted += 1
        self.in_flight += 1
        self.flight.add(index)
        self.stats.sent += 1
        return index, [_JOB, job.key, b"%d" % self.timeout_ms, job.payload]

    def undo_dispatch(self, index: int) -> None:
        """The socket could not take a dispatched job: back to the head of the queue."""
        job = self.jobs.get(index)
        if job is not None and job.phase == "sent":
            job.phase = "queued"
            job.sends = max(0, job.sends - 1)
            self.unstarted -= 1
            self.in_flight -= 1
            self.flight.discard(index)
            self.stats.sent = max(0, self.stats.sent - 1)
            self.queue.appendleft(index)

    def handle_report(self, now: float, frames: list[bytes]) -> None:
        """One message from the sink socket; one that does not parse is counted, dropped."""
        try:
            self._report(now, frames)
        except _BadMessage as e:
            self.stats.malformed += 1
            self._malformed("a report that does not parse, dropped: %s", e)

    def _report(self, now: float, frames: list[bytes]) -> None:
        if not frames:
            raise _BadMessage("empty message")
        kind, rest = frames[0], frames[1:]
        if not rest:
            self.stats.malformed += 1
            log.debug("a one-frame result on the map's sink: no job id, dropped")
            return
        if kind == _ALIVE:
            if len(rest) < 3:
                raise _BadMessage(f"s0alive needs at least 4 frames, got {len(frames)}")
            worker = _ident("worker", rest[0])
            capacity = _number("capacity", rest[1], _MAX_CAPACITY)
            interval_ms = _number("interval", rest[2], _MAX_INTERVAL_MS)
            if capacity == 0 or interval_ms == 0:
                raise _BadMessage("capacity or interval 0")
            running = [_ident("running job id", r) for r in rest[3:]]
            self._alive(now, worker, capacity, interval_ms, running)
        elif kind == _START:
            if len(rest) != 2:
                raise _BadMessage(f"s0start needs 3 frames, got {len(frames)}")
            self._start(now, _ident("worker", rest[0]), _ident("job id", rest[1]))
        elif kind == _RESULT:
            if len(rest) != 4:
                raise _BadMessage(f"s0res needs 5 frames, got {len(frames)}")
            worker, key = _ident("worker", rest[0]), _ident("job id", rest[1])
            if rest[2] not in _STATUSES:
                raise _BadMessage(f"unknown status {rest[2][:32]!r}")
            self._result(now, worker, key, rest[2], rest[3])
        elif kind == _BYE:
            if len(rest) != 1:
                raise _BadMessage(f"s0bye needs 2 frames, got {len(frames)}")
            w = self.workers.pop(_ident("worker", rest[0]), None)
            if w is not None:
                log.info("worker %s left", _text(rest[0]))
                self._orphan(now, w, "its worker left")
            self._resend_unstarted(now, "a worker left")
        else:
            raise _BadMessage(f"unknown message kind {kind[:32]!r}")

    def _touch(self, now: float, worker: bytes, capacity: int, interval_ms: int) -> _Worker:
        if worker not in self.workers and worker in self.presumed_dead:
            self.presumed_dead.discard(worker)
            self.zombies = max(0, self.zombies - 1)
        w = self.workers.get(worker)
        if w is None:
            log.info("worker %s joined (%d at once)", _text(worker), capacity)
            w = self.workers[worker] = _Worker(capacity, interval_ms, now)
        w.capacity, w.interval_ms, w.last_seen = capacity, interval_ms, now
        return w

    def _alive(
        self, now: float, worker: bytes, capacity: int, interval_ms: int, running: list[bytes]
    ) -> None:
        w = self._touch(now, worker, capacity, interval_ms)
        # Reports travel in order on one connection: a started job this heartbeat no
        # longer lists, with no result before it, had its result lost on the way.
        listed = set(running)
        for key in [k for k in w.started if k not in listed]:
            parsed = self._parse_key(key)
            if parsed is not None:
                self._attempt_failed(parsed[0], key, "its result was lost")

    def _start(self, now: float, worker: bytes, key: bytes) -> None:
        parsed = self._parse_key(key)
        if parsed is None:
            self.stats.late_results += 1
            return
        index, send = parsed
        job = self.jobs.get(index)
        if job is None or job.sends != send or job.phase != "sent":
            return  # a superseded send starting late: its result, if ok, still counts
        job.phase, job.worker, job.at = "started", worker, now
        job.last_worker = worker
        self.unstarted -= 1
        w = self.workers.get(worker)
        if w is None:
            # Its hello was lost or it was presumed dead: known again from now, with the
            # capacity its next heartbeat announces.
            w = self._touch(now, worker, 1, 1000)
        w.last_seen = now
        w.started.add(key)

    def _result(self, now: float, worker: bytes, key: bytes, status: bytes, output: bytes) -> None:
        w = self.workers.get(worker)
        if w is not None:
            w.started.discard(key)
            w.last_seen = now
        parsed = self._parse_key(key)
        job = None if parsed is None else self.jobs.get(parsed[0])
        if parsed is None or job is None:
            self.stats.late_results += 1
            return
        index, send = parsed
        current = job.sends == send
        if status == b"ok":
            self._leave_flight(index)
            job.last_worker = worker
            self._finish(index, output, None)
        elif not current:
            # A failure of a superseded send: the current one may still succeed.
            self.stats.late_results += 1
        elif status == b"unrunnable":
            self._leave_flight(index)
            job.failures += 1
            self._finish(index, b"", output.decode("utf-8", "replace").rstrip())
        else:
            if status == b"timeout":
                why = f"timed out after {self.timeout_ms} ms"
            else:
                why = output.decode("utf-8", "replace").rstrip()
            self._attempt_failed(index, key, why)

    def _leave_flight(self, index: int) -> None:
        """Takes a job out of the in-flight counts and its worker's started set."""
        job = self.jobs.get(index)
        if job is None:
            return
        self.flight.discard(index)
        phase, job.phase = job.phase, "queued"
        if phase == "queued":
            if index in self.queue:
                self.queue.remove(index)
        elif phase == "sent":
            self.unstarted -= 1
            self.in_flight -= 1
        else:
            self.in_flight -= 1
            w = self.workers.get(job.worker)
            if w is not None:
                w.started.discard(job.key)

    def _attempt_failed(self, index: int, key: bytes, why: str) -> None:
        """The run `key` of job `index` ended without success."""
        job = self.jobs.get(index)
        if job is None or job.phase == "queued" or job.key != key:
            return
        self._leave_flight(index)
        job.failures += 1
        if job.failures >= self.max_attempts:
            self._finish(index, b"", why)
        else:
            log.debug("job %d sent again: %s", index, why)
            self.stats.retried += 1
            self.queue.appendleft(index)

    def _finish(self, index: int, output: bytes, error: str | None) -> None:
        job = self.jobs.pop(index, None)
        if job is None:
            return
        self.flight.discard(index)
        if error is None:
            self.stats.done += 1
        else:
            self.stats.failed += 1
        self.finished[index] = JobResult(
            index=index,
            input=job.payload,
            ok=error is None,
            output=output,
            error=error,
            attempts=job.failures + (1 if error is None else 0),
            worker=_text(job.last_worker),
        )

    def _resend_unstarted(self, now: float, why: str) -> None:
        """Sent jobs not started yet may be in a buffer that went away: send them again."""
        sent = sorted(
            i for i in self.flight if self.jobs[i].phase == "sent" and self.jobs[i].at <= now
        )
        if sent:
            log.debug("%d unstarted jobs sent again: %s", len(sent), why)
        for index in reversed(sent):
            self._leave_flight(index)
            self.stats.retried += 1
            self.queue.appendleft(index)

    def _orphan(self, now: float, worker: _Worker, why: str) -> None:
        """A worker gone: its started jobs failed this attempt."""
        for key in list(worker.started):
            parsed = self._parse_key(key)
            if parsed is not None:
                self._attempt_failed(parsed[0], key, why)

    def _worker_deadline(self, w: _Worker) -> float:
        return w.last_seen + w.interval_ms * self.liveness / 1000

    def _job_deadline(self, job: _Job) -> float | None:
        if job.phase == "sent":
            return job.at + self.dispatch_timeout_ms / 1000
        if job.phase == "started" and self.timeout_ms > 0:
            # The worker stops the job at its timeout and reports it; the grace covers
            # that report's way back.
            w = self.workers.get(job.worker)
            grace = 1000 if w is None else w.interval_ms * 2
            return job.at + (self.timeout_ms + grace) / 1000
        return None

    def poll_timeout(self) -> float | None:
        """When `handle_timeout` is next due, if ever."""
        times = [self._worker_deadline(w) for w in self.workers.values()]
        if self.settle_at is not None:
            times.append(self.settle_at)
        for i in self.flight:
            d = self._job_deadline(self.jobs[i])
            if d is not None:
                times.append(d)
        return min(times) if times else None

    def handle_timeout(self, now: float) -> None:
        """Expires silent workers and overdue jobs."""
        if self.settle_at is not None and now >= self.settle_at:
            self.settle_at = None
            self._resend_unstarted(now, "a connection closed a moment ago")
        for name in [n for n, w in self.workers.items() if self._worker_deadline(w) <= now]:
            w = self.workers.pop(name)
            log.info("worker %s silent: presumed dead", _text(name))
            self.stats.workers_lost += 1
            self.zombies += 1
            if len(self.presumed_dead) < 10_000:
                self.presumed_dead.add(name)
            self._orphan(now, w, "its worker died")
            self._resend_unstarted(now, "a worker died")
        overdue = []
        for i in sorted(self.flight):
            job = self.jobs[i]
            d = self._job_deadline(job)
            if d is not None and d <= now:
                overdue.append((i, job.key, job.phase == "started"))
        for index, key, started in overdue:
            if started:
                self._attempt_failed(index, key, f"timed out after {self.timeout_ms} ms")
            else:
                # Never started: not the job's fault, so no attempt is used.
                self._leave_flight(index)
                self.stats.retried += 1
                self.queue.appendleft(index)

    def poll_finished(self) -> JobResult | None:
        """The next finished job: in input order when ordered, else as they finish."""
        if self.ordered:
            result = self.finished.pop(self.next_emit, None)
            if result is not None:
                self.next_emit += 1
            return result
        if not self.finished:
            return None
        return self.finished.pop(min(self.finished))

    def snapshot(self) -> MapStats:
        capacity = sum(w.capacity for w in self.workers.values())
        return dataclasses.replace(self.stats, workers=len(self.workers), capacity=capacity)


# ---------------------------------------------------------------------------------------
# The map's socket loop.

_END = object()


class _Run:
    """One call of `Map.results`: its input pipe token, its results queue, its stop."""

    def __init__(self, token: bytes, core: _MapCore) -> None:
        self.token = token
        self.core = core
        self.out: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.abort = threading.Event()
        self.input_error: BaseException | None = None


class Map:
    """A parallel map: binds a jobs endpoint (workers pull from it) and a results endpoint
    (workers push to it), like `scale0 map`, and runs a Python iterable of jobs on every
    connected worker: Rust `scale0 work`, Python `work`, or any program speaking the
    protocol. Each job gets exactly one result, in input order (unless `ordered=False`),
    after at most `retries` further runs when a run fails, times out or loses its worker.

    `timeout_ms` is the longest a job may run once started (0: no limit); `prefetch` the
    jobs sent to each worker beyond what it runs at once; `liveness` the heartbeats a
    worker may miss before its jobs are sent elsewhere; `dispatch_timeout_ms` the longest a
    sent job may wait to be started before it is sent again. A background thread owns the
    sockets; one run at a time. Use it as a context manager, or call `close`.
    """

    def __init__(
        self,
        vent: str | Sequence[str] = DEFAULT_VENT,
        sink: str | Sequence[str] = DEFAULT_SINK,
        *,
        timeout_ms: int = 0,
        retries: int = 2,
        prefetch: int = 1,
        liveness: int = 3,
        dispatch_timeout_ms: int = 60_000,
        ordered: bool = True,
        max_message_bytes: int = _wire.DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        vents = [vent] if isinstance(vent, str) else list(vent)
        sinks = [sink] if isinstance(sink, str) else list(sink)
        if not vents or not sinks:
            raise ValueError("a map needs a jobs endpoint and a results endpoint")
        if retries < 0 or timeout_ms < 0 or prefetch < 0:
            raise ValueError("retries, timeout_ms and prefetch must be 0 or more")
        if liveness < 1 or dispatch_timeout_ms < 1:
            raise ValueError("liveness and dispatch_timeout_ms must be 1 or more")
        self._settings = {
            "timeout_ms": timeout_ms,
            "max_attempts": retries + 1,
            "prefetch": prefetch,
            "liveness": liveness,
            "dispatch_timeout_ms": dispatch_timeout_ms,
            "ordered": ordered,
        }
        self._max_message_bytes = max_message_bytes
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._control = _sockets.inproc("map")
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._stats = MapStats()
        self._closed = False
        ready: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._main, args=(vents, sinks, ready), name="scale0-map", daemon=True
        )
        self._thread.start()
        bound = ready.get()
        if isinstance(bound, BaseException):
            self._thread.join()
            self._ctx.term()
            raise bound
        assert isinstance(bound, tuple)
        #: The jobs endpoints bound (the real port when bound to `:*`).
        self.vent_endpoints: list[str] = bound[0]
        #: The results endpoints bound.
        self.sink_endpoints: list[str] = bound[1]

    @property
    def source(self) -> Source:
        """Where a worker on this machine connects: the first jobs and results endpoints,
        wildcards made loopback."""
        return Source(_local(self.vent_endpoints[0]), _local(self.sink_endpoints[0]))

    @property
    def stats(self) -> MapStats:
        """Totals of the current run, or of the last one."""
        return self._stats

    def results(self, jobs: Iterable[bytes | str]) -> Iterator[JobResult]:
        """Runs every job of `jobs` (bytes, or str sent as UTF-8) and yields one
        `JobResult` per job, in input order unless the map is unordered. The input is read
        in a thread of its own as the map needs it, so it may be long or slow. Leaving the
        loop early stops the run; an error raised by the input iterable is raised here
        after the results of the jobs read before it."""
        run = self._begin()
        feeder = threading.Thread(
            target=self._feed, args=(run, jobs), name="scale0-map-input", daemon=True
        )
        feeder.start()
        complete = False
        try:
            while True:
                item = run.out.get()
                if item is _END:
                    complete = True
                    break
                if isinstance(item, BaseException):
                    complete = True
                    raise item
                assert isinstance(item, JobResult)
                yield item
            if run.input_error is not None:
                raise run.input_error
        finally:
            run.abort.set()
            if not complete:
                self._send_control([b"stop", run.token])
            with self._lock:
                if self._run is run:
                    self._run = None

    def map(self, jobs: Iterable[bytes | str]) -> Iterator[bytes]:
        """As `results`, shaped like `Executor.map`: yields each job's output, and raises
        `JobFailed` at the first job that failed for good."""
        for r in self.results(jobs):
            if not r.ok:
                raise JobFailed(r)
            yield r.output

    def run(self, jobs: Iterable[bytes | str]) -> list[JobResult]:
        """Runs every job and returns all the results (a blocking `results`)."""
        return list(self.results(jobs))

    def close(self) -> None:
        """Stops the background thread and closes the sockets (a run in progress ends)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._run is not None:
                self._run.abort.set()
        _sockets.close_loop(self._ctx, self._thread, self._control)

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _begin(self) -> _Run:
        with self._lock:
            if self._closed:
                raise RuntimeError("this map is closed")
            if self._run is not None:
                raise RuntimeError("a map runs one iterable at a time")
            core = _MapCore(run=random.getrandbits(64), **self._settings)  # type: ignore[arg-type]
            self._run = _Run(b"%d" % next(_counter), core)
            return self._run

    def _send_control(self, frames: list[bytes]) -> None:
        _sockets.send_control(self._ctx, self._control, frames)

    def _feed(self, run: _Run, jobs: Iterable[bytes | str]) -> None:
        """The input thread: reads the iterable into the map's pipe, as the map needs it."""
        s = self._ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 1000)
        s.setsockopt(zmq.SNDHWM, 1000)
        s.setsockopt(zmq.SNDTIMEO, 100)
        s.connect(self._control + "-input")

        def send(frames: list[bytes]) -> bool:
            while not run.abort.is_set():
                try:
                    s.send_multipart(frames)
                    return True
                except zmq.Again:
                    continue
                except zmq.ZMQError:
                    return False
            return False

        try:
            send([b"begin", run.token])
            for job in jobs:
                if not send([b"job", run.token, _wire.frame(job, "a job")]):
                    return
        except Exception as e:  # noqa: BLE001 (handed to the caller, raised there)
            run.input_error = e
        finally:
            send([b"end", run.token])
            s.close()

    def _main(self, vents: list[str], sinks: list[str], ready: queue.SimpleQueue[object]) -> None:
        ctx = self._ctx
        sockets: list[zmq.Socket[Any]] = []
        try:
            push = _pipeline_socket(ctx, zmq.PUSH, 100_000)
            sockets.append(push)
            monitor = push.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            sockets.append(monitor)
            pull = _pipeline_socket(ctx, zmq.PULL, 100_000)
            sockets.append(pull)
            for s in (push, pull):
                s.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
            pipes = []
            for addr in (self._control, self._control + "-input"):
                pipe = ctx.socket(zmq.PULL)
                sockets.append(pipe)
                pipe.setsockopt(zmq.LINGER, 0)
                pipe.bind(addr)
                pipes.append(pipe)
            bound: tuple[list[str], list[str]] = ([], [])
            for s, endpoints, out in ((push, vents, bound[0]), (pull, sinks, bound[1])):
                for e in endpoints:
                    s.bind(e)
                    out.append(s.getsockopt_string(zmq.LAST_ENDPOINT))
        except Exception as e:  # noqa: BLE001 (raised in the constructor)
            for s in sockets:
                s.close()
            ready.put(e)
            return
        ready.put(bound)
        log.info("map listening: jobs %s, results %s", " ".join(bound[0]), " ".join(bound[1]))
        try:
            self._loop(push, monitor, pull, pipes[0], pipes[1])
        except Exception:
            log.exception("the map's loop failed")
            with self._lock:
                run = self._run
            if run is not None:
                run.out.put(RuntimeError("the map's loop failed; see the log"))
        finally:
            push.disable_monitor()
            for s in sockets:
                s.close()

    def _loop(
        self,
        push: zmq.Socket[Any],
        monitor: zmq.Socket[Any],
        pull: zmq.Socket[Any],
        control: zmq.Socket[Any],
        inputs: zmq.Socket[Any],
    ) -> None:
        connections = 0
        current: _Run | None = None
        core: _MapCore | None = None
        input_open = False
        blocked = False
        while True:
            now = time.monotonic()
            while (msg := _try_recv(control)) is not None:
                if msg[0] == b"close":
                    if current is not None:
                        current.out.put(RuntimeError("the map was closed"))
                    return
                if msg[0] == b"stop" and current is not None and msg[1] == current.token:
                    current, core, input_open = None, None, False
            # Input: read ahead while the map wants more jobs.
            while core is None or not input_open or len(core.queue) < _READ_AHEAD:
                msg = _try_recv(inputs)
                if msg is None:
                    break
                kind, token = msg[0], msg[1]
                if kind == b"begin":
                    with self._lock:
                        run = self._run
                    if run is not None and run.token == token:
                        current, core, input_open = run, run.core, True
                        core.set_connections(now, connections)
                        blocked = False
                elif current is None or core is None or token != current.token:
                    continue  # the input of a run already over
                elif kind == b"job":
                    core.push_job(msg[2])
                elif kind == b"end":
                    core.close_input()
                    input_open = False
            if core is not None and not blocked and core.queue:
                # libzmq reads a socket's commands on send at most once a millisecond or
                # so: a connection whose closing was just counted could still take a job
                # and lose it. Reading the commands now removes closed connections first.
                push.getsockopt(zmq.EVENTS)
                while (d := core.poll_dispatch(now)) is not None:
                    try:
                        push.send_multipart(d[1], zmq.NOBLOCK)
                    except zmq.Again:
                        core.undo_dispatch(d[0])
                        blocked = True
                        break
            deadline = core.poll_timeout() if core is not None else None
            wait = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            poller = zmq.Poller()
            for s in (pull, monitor, control):
                poller.register(s, zmq.POLLIN)
            if core is None or (input_open and len(core.queue) < _READ_AHEAD):
                poller.register(inputs, zmq.POLLIN)
            if blocked:
                poller.register(push, zmq.POLLOUT)
            events = dict(poller.poll(int(wait * 1000) + 1))
            if blocked and events.get(push, 0) & zmq.POLLOUT:
                blocked = False
            changed = False
            while (ev := _try_recv(monitor)) is not None:
                event = zmq.utils.monitor.parse_monitor_message(ev)["event"]
                if event == zmq.EVENT_ACCEPTED:
                    connections += 1
                    changed = True
                elif event == zmq.EVENT_DISCONNECTED:
                    connections = max(0, connections - 1)
                    changed = True
            if changed and core is not None:
                log.debug("%d workers connected", connections)
                core.set_connections(time.monotonic(), connections)
                blocked = False
            while (frames := _try_recv(pull)) is not None:
                if core is not None:
                    core.handle_report(time.monotonic(), frames)
            if core is None or current is None:
                continue
            now = time.monotonic()
            t = core.poll_timeout()
            if t is not None and t <= now:
                core.handle_timeout(now)
            while (result := core.poll_finished()) is not None:
                current.out.put(result)
            self._stats = core.snapshot()
            if core.is_done():
                current.out.put(_END)
                current, core, input_open = None, None, False
