"""The tasks of part (l), ``memory``: each samples ``MEMORY USAGE`` of the keys the library wrote for it.

Imported once ``BENCH_REDIS_PORT`` names the benchmark's redis-server (``tasks`` reads it at import).
"""

from __future__ import annotations

import json

import redis

from . import tasks

IDLE_QUEUE = "memory-idle"
SAMPLED = "memory:samples:"


def lock_client() -> redis.Redis:
    return redis.Redis.from_url(tasks.LOCKS_URL)


def sample(pattern: str, kind: str, limit: int = 1) -> None:
    """Push ``MEMORY USAGE`` of up to ``limit`` keys matching ``pattern`` (of the lock store) to the samples."""
    client = lock_client()
    found = 0
    for key in client.scan_iter(match=pattern, count=1000):
        usage = client.memory_usage(key)
        if usage is not None:
            tasks.records().rpush(SAMPLED + kind, json.dumps([key.decode(), int(usage)]))
            found += 1
        if found >= limit:
            break
    client.close()


@tasks.app.task(base=tasks.OnceTask, name="benchmarks.memory.runs")
def runs(i: int) -> None:
    sample("once_task:benchmarks.memory.runs:*:running", "running")


@tasks.app.task(base=tasks.OnceTask, name="benchmarks.memory.limited", running_limit=2)
def limited(i: int) -> None:
    sample("once_task:benchmarks.memory.limited:*:slots", "slot")


@tasks.app.task(base=tasks.OnceTask, name="benchmarks.memory.queued", queue=IDLE_QUEUE)
def queued(i: int) -> None:
    """Never runs: its calls hold their queue locks."""


@tasks.app.task(base=tasks.OnceTask, name="benchmarks.memory.windowed", queue=IDLE_QUEUE, unique_for=600)
def windowed(i: int) -> None:
    """Never runs: its calls hold their windows."""


@tasks.app.task(base=tasks.OnceTask, name="benchmarks.memory.debounced", queue=IDLE_QUEUE, debounce=600.0)
def debounced(i: int) -> None:
    """Never runs: its calls hold their bursts."""


# -- THROTTLE: the ``throttle`` task option, where this release has it (a release without it has no such key,
# and the row says so). Its executions sample their key's throttle log, as ``runs`` its running lock.
HAS_THROTTLE = hasattr(tasks.OnceTask, "throttle")
throttled = None
if HAS_THROTTLE:

    @tasks.app.task(base=tasks.OnceTask, name="benchmarks.memory.throttled", throttle=(1_000_000, 60),
                    queue_lock=False)
    def throttled(i: int) -> None:
        sample("once_task:benchmarks.memory.throttled:*:throttle", "throttle")
