"""The parallel map from Python against the real binary: a Python worker in a Rust
`scale0 map` and behind a Rust vent/sink pair, Rust `scale0 work` workers in a Python `Map`,
Python workers in a Python `Map`, timeouts, retries, and workers killed -9 holding jobs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import Proc, Spawn, binary, eventually

import scale0
from scale0.pipeline import JobFailed, Map, Source, Unrunnable, _MapCore, work

LOOPBACK = "tcp://127.0.0.1:*"
PACKAGE_DIR = str(Path(scale0.__file__).resolve().parent.parent)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python" / "ten_participants.py"

StartWorker = Callable[..., threading.Event]


@pytest.fixture
def python_workers() -> Iterator[StartWorker]:
    """Starts `work` in threads of this process; all are told to stop at the end (not
    waited for: a goodbye to a map already gone lingers)."""
    stops: list[threading.Event] = []

    def start(source: Source, fn: Callable[[bytes], bytes], **kw: object) -> threading.Event:
        stop = threading.Event()
        kwargs = {"stop": stop, "interval_ms": 100, **kw}
        threading.Thread(target=work, args=(source, fn), kwargs=kwargs, daemon=True).start()
        stops.append(stop)
        return stop

    yield start
    for s in stops:
        s.set()


def map_endpoints(proc: Proc) -> Source:
    """A `scale0 map` prints its two `listening` lines on stderr (stdout is for results)."""

    def listening() -> list[str]:
        return [m.group(1) for m in map(re.compile(r"listening (\S+)").match, proc.stderr) if m]

    eventually(lambda: len(listening()) >= 2, what=f"map listening lines: {proc.stderr}")
    jobs, results = listening()[:2]
    return Source(jobs, results)


def lines_of(proc: Proc, n: int, timeout: float = 20.0) -> list[str]:
    return [proc.line(timeout) for _ in range(n)]


def test_a_python_worker_serves_a_rust_map(
    spawn: Spawn, python_workers: StartWorker, tmp_path: Path
) -> None:
    jobs = [f"job {i}" for i in range(30)] + ["sleep"]
    (tmp_path / "jobs").write_text("\n".join(jobs) + "\n")

    def reverse(payload: bytes) -> bytes:
        if payload == b"sleep":
            time.sleep(3)
        return payload[::-1]

    rust_map = spawn(
        binary(),
        "map",
        "--vent",
        LOOPBACK,
        "--sink",
        LOOPBACK,
        "--input",
        str(tmp_path / "jobs"),
        "--json",
        "--no-progress",
        "--timeout-ms",
        "300",
        "--retries",
        "1",
    )
    python_workers(map_endpoints(rust_map), reverse, capacity=2, name="py-worker")
    out = [json.loads(line) for line in lines_of(rust_map, len(jobs))]
    assert [o["index"] for o in out] == list(range(len(jobs)))
    for o, job in zip(out[:-1], jobs):
        assert (o["status"], o["output"], o["worker"]) == ("ok", job[::-1], "py-worker")
    # The Python worker reported the overrun job timed out at 300 ms; the map ran it once
    # more, then gave up.
    assert out[-1]["status"] == "failed" and out[-1]["attempts"] == 2, out[-1]
    assert "timed out" in out[-1]["error"]
    assert rust_map.popen.wait(10) == 1  # a job failed


def test_a_python_worker_serves_a_rust_vent_and_sink(
    spawn: Spawn, python_workers: StartWorker, tmp_path: Path
) -> None:
    (tmp_path / "jobs").write_text("".join(f"v{i}\n" for i in range(20)))
    sink = spawn(binary(), "sink", "--bind", LOOPBACK, "--expect", "20", "--json", listens=1)
    vent = spawn(binary(), "vent", "--bind", LOOPBACK, "--input", str(tmp_path / "jobs"), listens=1)
    python_workers(Source(vent.endpoint, sink.endpoint), bytes.upper, name="py-vent-worker")
    got = [json.loads(line) for line in lines_of(sink, 21)]
    events = [g for g in got if "event" in g]
    results = [g for g in got if "event" not in g]
    assert events == [{"event": "worker_joined", "worker": "py-vent-worker", "capacity": 1}]
    assert sorted(r["output"] for r in results) == sorted(f"V{i}" for i in range(20))
    assert {(r["status"], r["worker"]) for r in results} == {("ok", "py-vent-worker")}


def test_a_python_worker_answers_plain_jobs_with_plain_results(
    spawn: Spawn, python_workers: StartWorker, tmp_path: Path
) -> None:
    (tmp_path / "jobs").write_text("".join(f"p{i}\n" for i in range(10)))
    sink = spawn(binary(), "sink", "--bind", LOOPBACK, "--expect", "10", "--json", listens=1)
    vent = spawn(
        binary(),
        "vent",
        "--plain",
        "--bind",
        LOOPBACK,
        "--input",
        str(tmp_path / "jobs"),
        listens=1,
    )
    python_workers(Source(vent.endpoint, sink.endpoint), bytes.upper)
    got = [json.loads(line) for line in lines_of(sink, 10)]
    # The Guide's framing: one frame each way, no hello, no ids.
    assert sorted(g["output"] for g in got) == sorted(f"P{i}" for i in range(10))
    assert all(set(g) == {"output"} for g in got), got


def test_rust_workers_run_a_python_map(spawn: Spawn) -> None:
    with Map(LOOPBACK, LOOPBACK, timeout_ms=5000) as m:
        for _ in range(2):
            spawn(
                binary(),
                "work",
                "--vent",
                m.vent_endpoints[0],
                "--sink",
                m.sink_endpoints[0],
                "--capacity",
                "2",
                "--sleep-ms",
                "10",
            )
        # Jobs of 10 ms: the run lasts 0.5 s with both workers (1 s with one), time for
        # the second to connect; instant jobs could all go to the first.
        jobs = [f"x{i}" for i in range(200)]
        results = m.run(jobs)
        assert [r.index for r in results] == list(range(200))
        assert [r.output.decode() for r in results] == jobs
        assert all(r.ok and r.attempts == 1 for r in results)
        assert len({r.worker for r in results}) == 2, "both workers took jobs"
        assert m.stats.done == 200 and m.stats.workers == 2 and m.stats.capacity == 4


def test_python_workers_run_a_python_map_ordered_or_not(python_workers: StartWorker) -> None:
    with Map(LOOPBACK, LOOPBACK) as m:
        for i in range(3):
            python_workers(m.source, lambda p: p + b"!", capacity=2, name=f"w{i}")
        outputs = list(m.map(f"{i}" for i in range(300)))
        assert outputs == [f"{i}!".encode() for i in range(300)]
        # A second run on the same map and workers.
        assert list(m.map([b"again"])) == [b"again!"]
    with Map(LOOPBACK, LOOPBACK, ordered=False) as m:
        python_workers(m.source, lambda p: p, capacity=4)
        got = m.run(str(i) for i in range(100))
        assert sorted(r.index for r in got) == list(range(100))
        assert all(r.output == r.input for r in got)


def test_timeouts_failures_and_retries(python_workers: StartWorker) -> None:
    calls: dict[bytes, int] = {}
    lock = threading.Lock()

    def job(payload: bytes) -> bytes:
        with lock:
            calls[payload] = n = calls.get(payload, 0) + 1
        if payload == b"slow once" and n == 1:
            time.sleep(2)
        if payload == b"always slow":
            time.sleep(2)
        if payload == b"fails once" and n == 1:
            raise RuntimeError("first time unlucky")
        if payload == b"boom":
            raise ValueError("boom")
        if payload == b"never":
            raise Unrunnable("cannot ever run this")
        return payload

    jobs = ["ok", "slow once", "always slow", "fails once", "boom", "never", "last"]
    with Map(LOOPBACK, LOOPBACK, timeout_ms=300, retries=1) as m:
        python_workers(m.source, job, capacity=2)
        started = time.monotonic()
        by_input = {r.input.decode(): r for r in m.run(jobs)}
        took = time.monotonic() - started
        assert list(by_input) == jobs, "in input order"
        ok = {k: (r.ok, r.attempts) for k, r in by_input.items()}
        assert ok == {
            "ok": (True, 1),
            "slow once": (True, 2),
            "always slow": (False, 2),
            "fails once": (True, 2),
            "boom": (False, 2),
            "never": (False, 1),
            "last": (True, 1),
        }
        assert by_input["always slow"].error == "timed out after 300 ms"
        assert by_input["boom"].error == "ValueError: boom"
        assert by_input["never"].error == "cannot ever run this"
        # The overruns were reported at their timeout, not when the functions returned.
        assert took < 1.9, took
        with pytest.raises(JobFailed) as failed:
            list(m.map(["ok", "boom"]))
        assert failed.value.result.index == 1


WORKER_SCRIPT = """
import sys, time
from pathlib import Path
from scale0.pipeline import Source, work

def job(payload):
    Path(sys.argv[3], "started").touch()
    time.sleep(0.3)
    return payload.upper()

work(Source(sys.argv[1], sys.argv[2]), job, capacity=2, interval_ms=100, name="doomed-py")
"""


def test_workers_killed_holding_jobs_lose_none(
    spawn: Spawn, python_workers: StartWorker, tmp_path: Path
) -> None:
    py_dir, rust_dir = tmp_path / "py", tmp_path / "rust"
    py_dir.mkdir()
    rust_dir.mkdir()
    n = 40
    with Map(LOOPBACK, LOOPBACK, liveness=3, retries=2) as m:
        jobs_ep, results_ep = m.source
        env = {"PYTHONPATH": PACKAGE_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")}
        py = spawn(sys.executable, "-c", WORKER_SCRIPT, jobs_ep, results_ep, str(py_dir), env=env)
        marker = str(rust_dir / "started")
        rust = spawn(
            binary(),
            "work",
            "--vent",
            jobs_ep,
            "--sink",
            results_ep,
            "--capacity",
            "2",
            "--interval-ms",
            "100",
            "--name",
            "doomed-rust",
            "--",
            "sh",
            "-c",
            f"touch {marker}; sleep 0.3; tr a-z A-Z",
        )
        # Survivors come only once both doomed workers hold jobs.
        results: list[scale0.pipeline.JobResult] = []
        run = m.results(f"job{i}" for i in range(n))

        def kill_when_started() -> None:
            eventually(
                lambda: (py_dir / "started").exists() and (rust_dir / "started").exists(),
                what="both doomed workers started a job",
            )
            py.popen.send_signal(signal.SIGKILL)
            rust.popen.send_signal(signal.SIGKILL)
            python_workers(m.source, bytes.upper, capacity=4, name="survivor")

        killer = threading.Thread(target=kill_when_started)
        killer.start()
        results = list(run)
        killer.join()
        assert [r.index for r in results] == list(range(n)), "one result per job, in order"
        assert all(r.ok for r in results)
        assert [r.output for r in results] == [f"JOB{i}".encode() for i in range(n)]
        retried = [r for r in results if r.attempts > 1]
        assert retried, "jobs the killed workers held ran again"
        assert m.stats.workers_lost == 2
        assert py.popen.wait(5) == -signal.SIGKILL and rust.popen.wait(5) == -signal.SIGKILL


def test_sources_are_read_as_scale0_work_reads_them() -> None:
    assert Source.host("node7") == Source("tcp://node7:5557", "tcp://node7:5558")
    assert Source.host("tcp://10.0.0.2:6000") == Source(
        "tcp://10.0.0.2:6000", "tcp://10.0.0.2:6001"
    )
    assert Source.host("[::1]") == Source("tcp://[::1]:5557", "tcp://[::1]:5558")
    for bad in ["", "host:port", "host:65535", "tcp://", "ipc:///x"]:
        with pytest.raises(ValueError):
            Source.host(bad)


def test_the_ten_participants_example_runs_small() -> None:
    env = {**os.environ, "PYTHONPATH": PACKAGE_DIR}
    args = ["--participants", "4", "--jobs", "40", "--job-ms", "20", "--leave-at", "0.5"]
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "40 jobs: 40 ok, 0 failed" in done.stdout, done.stdout


def core(**kw: Any) -> _MapCore:
    settings: dict[str, Any] = {
        "timeout_ms": 1000,
        "max_attempts": 2,
        "prefetch": 1,
        "liveness": 3,
        "dispatch_timeout_ms": 5000,
        "ordered": True,
        "run": 0xABC,
    }
    settings.update(kw)
    return _MapCore(**settings)


def dispatch_all(c: _MapCore, now: float) -> list[list[bytes]]:
    out = []
    while (d := c.poll_dispatch(now)) is not None:
        out.append(d[1])
    return out


def test_the_map_core_in_virtual_time() -> None:
    c = core()
    for i in range(6):
        c.push_job(b"j%d" % i)
    c.close_input()
    assert dispatch_all(c, 0.0) == [], "no connection, no credit"
    c.set_connections(0.0, 1)
    (first,) = dispatch_all(c, 0.0)  # one job to a stranger, to make it say hello
    assert first == [b"s0job", b"0000000000000abc.0.1", b"1000", b"j0"]
    c.handle_report(0.1, [b"s0alive", b"w", b"2", b"100"])
    c.handle_report(0.1, [b"s0start", b"w", b"0000000000000abc.0.1"])
    sent = dispatch_all(c, 0.1)
    assert [f[1] for f in sent] == [b"0000000000000abc.1.1", b"0000000000000abc.2.1"]
    # A result out of order is held until the jobs before it are done.
    c.handle_report(0.2, [b"s0start", b"w", b"0000000000000abc.1.1"])
    c.handle_report(0.2, [b"s0res", b"w", b"0000000000000abc.1.1", b"ok", b"one"])
    assert c.poll_finished() is None
    c.handle_report(0.2, [b"s0res", b"w", b"0000000000000abc.0.1", b"ok", b"zero"])
    assert [(r.index, r.output) for r in iter(c.poll_finished, None)] == [(0, b"zero"), (1, b"one")]
    # A second result for a finished job is late; bad reports are counted, never fatal.
    c.handle_report(0.2, [b"s0res", b"w", b"0000000000000abc.0.1", b"ok", b"again"])
    for bad in ([b"s0res", b"w"], [b"s0alive", b"w", b"0", b"1"], [b"nope", b"x"], []):
        c.handle_report(0.2, bad)
    assert (c.stats.late_results, c.stats.malformed) == (1, 4)
    # A started job missing from a later heartbeat lost its result: sent again.
    c.handle_report(0.3, [b"s0start", b"w", b"0000000000000abc.2.1"])
    c.handle_report(0.4, [b"s0alive", b"w", b"2", b"100"])
    assert c.stats.retried == 1 and c.jobs[2].phase == "queued"
    # The worker falls silent: what it had started is sent again after liveness intervals.
    again = dispatch_all(c, 0.4)
    assert b"0000000000000abc.2.2" in [f[1] for f in again]
    c.handle_report(0.4, [b"s0start", b"w", b"0000000000000abc.2.2"])
    assert c.poll_timeout() == pytest.approx(0.7)
    c.handle_timeout(0.7)
    assert c.stats.workers_lost == 1 and not c.workers
    # Job 2 has used both its attempts (a lost result and a dead worker): it failed.
    assert 2 in c.finished and c.finished[2].error == "its worker died"
    # An unstarted job waits at most the dispatch timeout, at no cost in attempts.
    c.set_connections(0.7, 1)
    late = dispatch_all(c, 0.7)
    assert late, "the connection still counts as a stranger"
    c.handle_timeout(0.7 + 5.0)
    assert all(c.jobs[i].failures == 0 for i in c.jobs if i not in (2,))


def test_the_map_core_times_out_a_started_job_and_fails_unrunnable_ones() -> None:
    c = core(timeout_ms=200, max_attempts=3)
    c.push_job(b"slow")
    c.push_job(b"never")
    c.close_input()
    c.set_connections(0.0, 1)
    c.handle_report(0.0, [b"s0alive", b"w", b"4", b"100"])
    dispatch_all(c, 0.0)
    c.handle_report(0.0, [b"s0start", b"w", b"0000000000000abc.0.1"])
    c.handle_report(0.0, [b"s0start", b"w", b"0000000000000abc.1.1"])
    c.handle_report(0.0, [b"s0res", b"w", b"0000000000000abc.1.1", b"unrunnable", b"no such"])
    # The worker's own timeout report is lost: the map gives up at timeout + 2 intervals.
    c.handle_report(0.3, [b"s0alive", b"w", b"4", b"100", b"0000000000000abc.0.1"])
    assert c.poll_timeout() == pytest.approx(0.4)
    c.handle_timeout(0.4)
    assert c.jobs[0].failures == 1 and c.stats.retried == 1
    assert c.finished[1].error == "no such" and c.finished[1].attempts == 1
    # A result of the superseded send still counts if it is a success.
    c.handle_report(0.5, [b"s0res", b"w", b"0000000000000abc.0.1", b"ok", b"late but fine"])
    assert [r.output for r in iter(c.poll_finished, None)] == [b"late but fine", b""]
    assert c.is_done()
