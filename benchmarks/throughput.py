"""(c) worker throughput on no-op tasks, plain ``Task`` against ``OnceTask``, solo and prefork pools.

One ``celery worker`` subprocess per pool runs for the whole part, consuming
a queue of its own, and works through both variants. A drain is timed like
this: N messages are published to a staging queue that no worker consumes,
then the staging list is renamed to the worker's queue in one command, so the
worker finds a full queue and no publisher competes with it for the CPU.
Throughput is (N - 1) / (time the last task was done - time the first task
was done), from the times the tasks themselves wrote (see ``tasks``): worker
start-up and the publishing are not in it. For ``OnceTask`` each task takes
and releases its locks as in production: the queue lock at publish, released
at pickup together with taking the running lock, released at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import redis

from . import tasks
from .stats import median, rotation

ROOT = Path(__file__).resolve().parent.parent
STAGING = "bench.staging"
VARIANTS = ("plain", "once")


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class WorkerProcess:
    """``celery -A benchmarks.tasks worker`` in a subprocess, consuming one queue."""

    def __init__(self, pool: str, concurrency: int, port: int, records: redis.Redis) -> None:
        self.pool = pool
        self.queue = f"bench.{pool}"
        self.name = f"bench-{pool}@{socket.gethostname()}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"bench-worker-{pool}-", suffix=".log")[1])
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        # -l warning: Celery's two INFO lines per task would be most of what is measured.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "benchmarks.tasks", "worker", "-P", pool,
             "-c", str(concurrency), "-n", self.name, "-Q", self.queue, "-l", "warning",
             "--without-mingle", "--without-gossip", "--without-heartbeat"],
            cwd=ROOT, env={**os.environ, "BENCH_REDIS_PORT": str(port)},
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self._ready(records), 60, f"worker {self.name} to start")

    def _ready(self, records: redis.Redis) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.log_path.read_text()[-3000:]}")
        return self.name.encode() in records.lrange("ready", 0, -1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()
        self.log_path.unlink(missing_ok=True)


@dataclass
class ThroughputResult:
    n: int
    concurrency: dict[str, int] = field(default_factory=dict)
    #: tasks per second of each round, by pool and variant.
    rates: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pool, by_variant in self.rates.items():
            plain, once = by_variant["plain"], by_variant["once"]
            out[pool] = {
                "concurrency": self.concurrency[pool],
                "plain_per_s": median(plain),
                "once_per_s": median(once),
                "ratio": median(once) / median(plain),
                "ratio_paired": median([o / p for p, o in zip(plain, once)]),
                "rounds": len(plain),
            }
        return out


def drain(
    task: Any, worker: WorkerProcess, n: int, run: str, broker: redis.Redis, locks: redis.Redis,
    records: redis.Redis,
) -> float:
    """Have ``worker`` run ``n`` calls of ``task`` from a full queue; return tasks per second."""
    key = tasks.done_key(run)
    records.delete(key)
    for i in range(n):
        task.apply_async((run, i, n), queue=STAGING)
    if broker.llen(STAGING) != n:
        raise RuntimeError(f"{run}: {broker.llen(STAGING)} messages staged, expected {n}")
    broker.rename(STAGING, worker.queue)
    expected = min(n, 2 * tasks.EDGE)
    wait_for(lambda: records.llen(key) >= expected, 300, f"{run} to be done")
    done = [item.split() for item in records.lrange(key, 0, -1)]
    times = {int(i): float(t) for i, t in done}
    first = min(t for i, t in times.items() if i < tasks.EDGE)
    last = max(t for i, t in times.items() if i >= n - tasks.EDGE)
    # Every lock the drain took is released once the last task is over.
    wait_for(lambda: not any(locks.scan_iter("once_task:*", count=1000)), 30, f"{run}: locks to be released")
    wait_for(lambda: broker.llen(worker.queue) == 0, 30, f"{run}: queue to be empty")
    records.delete(key)
    return (n - 1) / (last - first)


def run(
    rounds: int, n: int, pools: dict[str, int], port: int, broker: redis.Redis, locks: redis.Redis,
    records: redis.Redis,
) -> ThroughputResult:
    result = ThroughputResult(n=n, concurrency=dict(pools))
    by_variant = {"plain": tasks.plain_noop, "once": tasks.once_noop}
    workers = {pool: WorkerProcess(pool, concurrency, port, records) for pool, concurrency in pools.items()}
    try:
        for pool, worker in workers.items():
            result.rates[pool] = {variant: [] for variant in VARIANTS}
            # Warm-up: pool processes forked, connections open, code paths hot.
            for variant in VARIANTS:
                drain(by_variant[variant], worker, min(n, 300), f"warm-{pool}-{variant}", broker, locks, records)
        for r in range(rounds):
            for p, (pool, worker) in enumerate(workers.items()):
                for variant in rotation(VARIANTS, r + p):
                    rate = drain(by_variant[variant], worker, n, f"{pool}-{variant}-{r}", broker, locks, records)
                    result.rates[pool][variant].append(rate)
    finally:
        for worker in workers.values():
            worker.stop()
    return result
