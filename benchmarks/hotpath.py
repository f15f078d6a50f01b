"""(h) where the time goes: this project's Python on the publish, duplicate and worker paths, per function.

py-spy samples this process from outside (``--nonblocking``, so the process
runs at full speed; 1000 stacks a second) while it runs, on the library as it
is: ``N`` calls of ``once_noop.delay()`` with new arguments (published), ``N``
with the arguments of a call already queued (dropped), and a solo worker
(in-process, ``celery.contrib.testing.worker.start_worker``) running ``N``
tasks from a full queue, plain ones first for scale.

What is charged to the library, walking each sampled stack from its root:
the time in every function defined in ``celery_once_task``, and the whole time
under any other function it calls (Celery's ``app.conf``, ``json``,
``hashlib``, ``inspect``, ``uuid``, ...), charged to that function; except, at
any depth, redis-py (the lock store's round trips, with redis-py's packing and
parsing), Celery's ``Task.apply_async`` (the broker publish) and the task's
body.

py-spy takes CPU time of its own, which on a small machine slows the sampled
process down; so the samples give shares, and a share is turned into µs by
multiplying it with the operation's time measured without py-spy, just before
(the same number of operations: the median call of a publish loop, or a
drain timed from the first task's start to the last task's end).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

import redis
from celery import signals
from celery.contrib.testing.worker import start_worker

from . import tasks
from .compare import wait_for
from .stats import median

QUEUE = "bench.hotpath"
STAGING = "bench.hotpath.staging"
LIBRARY = "/celery_once_task/"
RATE = 1000


class Sampler:
    """``py-spy record`` on this process, every thread, idle or not, as raw collapsed stacks."""

    def __init__(self) -> None:
        self.output = Path(tempfile.mkstemp(prefix="bench-py-spy-", suffix=".txt")[1])
        py_spy = Path(sys.executable).parent / "py-spy"
        self.process = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(os.getpid()), "--rate", str(RATE), "--nonblocking",
             "--format", "raw", "--full-filenames", "--threads", "--idle", "-o", str(self.output)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(0.5)  # py-spy attaches
        if self.process.poll() is not None:
            raise RuntimeError(f"py-spy did not start: {self.process.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]

    def stop(self) -> list[tuple[list[str], int]]:
        """The stacks sampled, each a list of frames from the thread down, with its count."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(60)
        stacks = []
        for line in self.output.read_text().splitlines():
            frames, _, count = line.rpartition(" ")
            # A frame whose text holds a line break (a string in a code object's name) splits its line: skip it.
            if frames.startswith("thread (") and count.isdigit():
                stacks.append((frames.split(";"), int(count)))
        self.output.unlink(missing_ok=True)
        return stacks


def _parse(frame: str) -> tuple[str, str]:
    """``function (path:line)`` -> (function, path)."""
    function, _, where = frame.partition(" (")
    return function, where.rsplit(":", 1)[0]


def _library_name(function: str, path: str) -> Optional[str]:
    if LIBRARY not in path:
        return None
    return f"{path.split(LIBRARY)[-1].removesuffix('.py').replace('/', '.')}.{function}"


def _excluded(function: str, path: str) -> Optional[str]:
    """What a frame under the library is, if it is not the library's Python."""
    if "/redis/" in path:
        return "redis"
    if path.endswith("celery/app/task.py") and function.endswith("apply_async"):
        return "publish"
    if "/benchmarks/" in path:
        return "body"
    return None


def _other_name(function: str, path: str) -> str:
    short = path.split("site-packages/")[-1]
    if "/lib/python3." in short:  # the standard library
        short = short.split("/lib/python3.")[-1].split("/", 1)[-1]
    return f"{short.removesuffix('.py').replace('/', '.')}.{function}"


def attribute(stacks: list[tuple[list[str], int]], keep: Callable[[list[str]], bool], wall_us: float) -> dict[str, Any]:
    """Microseconds per operation: the library's functions, what they call, round trips and publish.

    ``keep`` chooses the samples of the operations measured; ``wall_us`` is
    the time of one operation without the profiler, which they share.
    """
    charged: dict[tuple[str, bool], int] = defaultdict(int)
    excluded: dict[str, int] = defaultdict(int)
    kept = 0
    for frames, count in stacks:
        if not keep(frames):
            continue
        kept += count
        owner: Optional[tuple[str, bool]] = None
        for frame in frames[1:]:
            function, path = _parse(frame)
            name = _library_name(function, path)
            if name is not None:
                owner = (name, True)
                continue
            if owner is None:
                continue
            kind = _excluded(function, path)
            if kind is not None:
                excluded[kind] += count
                owner = None
                break
            if owner[1]:
                owner = (_other_name(function, path), False)  # charged the whole subtree under it
        if owner is not None:
            charged[owner] += count
    us = wall_us / max(kept, 1)
    rows = [{"function": f, "us": c * us, "library": lib} for (f, lib), c in charged.items()]
    rows.sort(key=lambda r: -r["us"])
    return {
        "library_us": sum(r["us"] for r in rows),
        "redis_us": excluded["redis"] * us,
        "publish_us": excluded["publish"] * us,
        "samples": kept,
        "wall_us": wall_us,
        "functions": rows,
    }


def _publish_loop(args_for: Callable[[int], tuple[Any, ...]], n: int) -> float:
    """Median µs per call: robust to the bursts of the machine's other load."""
    once = tasks.once_noop
    clock = time.perf_counter_ns
    times = []
    for i in range(n):
        t0 = clock()
        once.delay(*args_for(i))
        times.append(clock() - t0)
    return median(times) / 1000


def _profile_publish(args_for: Callable[[str, int], tuple[Any, ...]], n: int) -> dict[str, Any]:
    wall = _publish_loop(lambda i: args_for("unprofiled", i), n)
    sampler = Sampler()
    profiled = _publish_loop(lambda i: args_for("profiled", i), n)
    stacks = sampler.stop()
    out = attribute(stacks, lambda frames: any("_publish_loop" in f for f in frames), wall)
    out["profiled_wall_us"] = profiled
    return out


def _drain(task: Any, n: int, broker: redis.Redis, run: str, profile: bool) -> tuple[float, Any]:
    """Run ``n`` tasks from a full queue in the in-process worker: µs per task, and py-spy's stacks."""
    marks: dict[str, float] = {}

    def on_prerun(args: Any = (), **_: Any) -> None:
        if args and args[0] == run and args[1] == 0:
            marks["start"] = time.perf_counter()
            marks["thread"] = threading.get_native_id()

    def on_postrun(args: Any = (), **_: Any) -> None:
        if args and args[0] == run and args[1] == n - 1:
            marks["end"] = time.perf_counter()

    for i in range(n):
        task.apply_async((run, i, n), queue=STAGING)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    sampler = None
    try:
        broker.rename(STAGING, QUEUE)
        # py-spy attaches while the worker drains, so that it samples the drain only.
        sampler = Sampler() if profile else None
        wait_for(lambda: "end" in marks, 300, f"{run} to be done")
    finally:
        stacks = sampler.stop() if sampler else []
        signals.task_prerun.disconnect(on_prerun)
        signals.task_postrun.disconnect(on_postrun)
    thread = f"thread ({int(marks['thread'])})"
    return (marks["end"] - marks["start"]) * 1e6 / (n - 1), (stacks, thread)


def _profile_worker(task: Any, n: int, broker: redis.Redis) -> dict[str, Any]:
    name = task.name.rsplit(".", 1)[-1]
    wall, _ = _drain(task, n, broker, f"hotpath-{name}-unprofiled", profile=False)
    profiled, (stacks, thread) = _drain(task, n, broker, f"hotpath-{name}-profiled", profile=True)
    out = attribute(stacks, lambda frames: frames[0].startswith(thread), wall)
    out["profiled_wall_us"] = profiled
    return out


def run(n: int, broker: redis.Redis, locks: redis.Redis) -> dict[str, Any]:
    once = tasks.once_noop
    queue = tasks.app.conf.task_default_queue
    for i in range(200):  # warm-up: connections open, code paths hot
        once.delay("hotpath-warm", i, n)
    held = ("hotpath-held", -1, n)
    once.delay(*held)
    out: dict[str, Any] = {"n": n}
    out["publish"] = _profile_publish(lambda tag, i: (f"hotpath-new-{tag}", i, n), n)
    out["duplicate"] = _profile_publish(lambda tag, i: held, n)
    broker.delete(queue)
    locks.flushdb()
    with start_worker(tasks.app, pool="solo", perform_ping_check=False, queues=[QUEUE], loglevel="WARNING"):
        for task in (tasks.plain_noop, once):  # warm-up
            for i in range(100):
                task.apply_async(("hotpath-warm", i, 100), queue=QUEUE)
        wait_for(lambda: broker.llen(QUEUE) == 0, 60, "the warm-up tasks to be taken")
        out["worker_plain"] = {"wall_us": _drain(tasks.plain_noop, n, broker, "hotpath-plain", profile=False)[0]}
        out["worker"] = _profile_worker(once, n, broker)
    return out
