"""(j) ``debounce``: a burst of 1,000 calls -- round trips, messages published, time per call.

Calls ``reindex(doc, version)`` (``debounce=30``, routed to a queue no worker
consumes) 1,000 times for one document, each call timed on its own, the lock
client's round trips counted on its connection (``counting``) and the
broker's messages counted in its queue. Beside them, as the yardstick, a
plain Celery publish of the same call, and a dropped duplicate of a
``OnceTask`` (the cost the issue compares a joined call to).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from .counting import count, install, uninstall
from .servers import RedisServer
from .stats import median, percentile

CALLS = 1000


def run(calls: int = CALLS, server: RedisServer | None = None) -> dict[str, Any]:
    """The figures of part (j); on ``server`` (the one ``tasks`` uses), else on a server of its own."""
    own = server is None
    if server is None:
        server = RedisServer()
        os.environ["BENCH_REDIS_PORT"] = str(server.port)
    from celery_once_task.store import client_for

    from . import tasks

    try:
        client = client_for(tasks.LOCKS_URL)
        install(client.connection_pool, "bursts")
        broker = server.client(0)
        try:
            doc = uuid.uuid4().hex
            tasks.reindex.delay(doc, -1)  # the burst's first call: it publishes the burst's message
            before_trips, before_messages = count("bursts"), broker.llen("bursts")
            timings = []
            for version in range(calls):
                started = time.perf_counter()
                tasks.reindex.delay(doc, version)
                timings.append((time.perf_counter() - started) * 1e6)
            trips = count("bursts") - before_trips
            messages = broker.llen("bursts") - before_messages + 1  # and the first call's
        finally:
            uninstall(client.connection_pool)
        plain = _time(lambda i: tasks.plain_noop.apply_async(("burst", i, calls), queue="bursts-plain"), calls // 4)
        tasks.once_noop.apply_async(("burst", 0, calls), queue="bursts-once")
        duplicate = _time(lambda i: tasks.once_noop.apply_async(("burst", 0, calls), queue="bursts-once"),
                          calls // 4)
        return {
            "calls": calls + 1,
            "messages": int(messages),
            "round_trips_per_call": trips / calls,
            "call_median_us": round(median(timings), 1),
            "call_p99_us": round(percentile(timings, 99), 1),
            "plain_publish_median_us": round(median(plain), 1),
            "duplicate_median_us": round(median(duplicate), 1),
        }
    finally:
        if own:
            server.stop()


def _time(operation: Any, n: int) -> list[float]:
    timings = []
    for i in range(n):
        started = time.perf_counter()
        operation(i)
        timings.append((time.perf_counter() - started) * 1e6)
    return timings


def text(result: dict[str, Any]) -> str:
    return "\n".join([
        "| burst | messages published | round trips per joined call | joined call median / p99 | "
        "plain Celery publish | dropped OnceTask duplicate |",
        "|---|---|---|---|---|---|",
        f"| {result['calls']:,} calls | {result['messages']} | {result['round_trips_per_call']:g} | "
        f"{result['call_median_us']:.0f} / {result['call_p99_us']:.0f} µs | {result['plain_publish_median_us']:.0f} µs"
        f" | {result['duplicate_median_us']:.0f} µs |",
    ])
