"""(a) publishing unique calls and (b) dropping a duplicate call, plain ``Task`` against ``OnceTask``.

Three variants:

``plain``      ``plain_noop.delay(...)`` with new arguments each call
``once``       ``once_noop.delay(...)`` with new arguments each call: one SET NX, then the publish
``duplicate``  ``once_noop.delay(...)`` with the arguments of a call already queued: dropped
``set``        the queue lock's ``SET key value PX ttl NX GET`` alone, sent as the library sends it
               (``wire.set_nx_get``): the round trip ``OnceTask`` adds to a publish (the floor of its cost)

The variants take turns at every call (plain, once, duplicate, set, then
once, duplicate, set, plain, ...), each call timed on its own. No worker consumes the
default queue during this part; the published messages and the queue locks
are deleted between rounds, outside the timing.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.utils import uuid

from celery_once_task.settings import resolve
from celery_once_task.store import client_for
from celery_once_task.store.wire import set_nx_get

from . import tasks
from .stats import median, percentile, rotation

VARIANTS = ("plain", "once", "duplicate", "set")


@dataclass
class PublishResult:
    #: Every call's latency in microseconds, by variant.
    latencies: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})
    #: Each round's calls per second (of the time spent in the calls), by variant.
    rates: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VARIANTS})

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for variant in VARIANTS:
            lat = self.latencies[variant]
            out[variant] = {
                "calls": len(lat),
                "median_us": median(lat),
                "p99_us": percentile(lat, 99),
                "calls_per_s": median(self.rates[variant]),
            }
        plain = out["plain"]["median_us"]
        out["once_ratio"] = out["once"]["median_us"] / plain
        out["duplicate_ratio"] = out["duplicate"]["median_us"] / plain
        # What a publish would cost if OnceTask added nothing but its round trip.
        out["floor_ratio"] = (plain + out["set"]["median_us"]) / plain
        # The same ratios from each round's throughput, paired within the round.
        pairs = list(zip(self.rates["plain"], self.rates["once"], self.rates["duplicate"]))
        out["once_ratio_paired"] = median([p / o for p, o, _ in pairs])
        out["duplicate_ratio_paired"] = median([p / d for p, _, d in pairs])
        return out


def run(rounds: int, calls: int, broker: redis.Redis, locks: redis.Redis) -> PublishResult:
    result = PublishResult()
    plain, once = tasks.plain_noop, tasks.once_noop
    queue = tasks.app.conf.task_default_queue
    clock = time.perf_counter_ns
    lock_client = client_for(tasks.LOCKS_URL)
    ttl_ms = resolve(tasks.app, once).queue_lock_timeout * 1000

    def bare_set(run: str, i: int, n: int) -> Any:
        return set_nx_get(lock_client, f"bench:set:{run}:{i}", uuid(), ttl_ms)

    def reset() -> None:
        broker.delete(queue)
        locks.flushdb()

    # Warm-up: connections open, kombu declares the queue, code paths are hot.
    for i in range(200):
        plain.delay("warm", i, calls)
        once.delay("warm", i, calls)
        once.delay("warm", i, calls)
        bare_set("warm", i, calls)
    reset()

    for r in range(rounds):
        held = (f"dup-{r}", -1, calls)
        if once.delay(*held) is None:
            raise RuntimeError("the call whose duplicates are dropped was not published")
        delays = {"plain": plain.delay, "once": once.delay, "duplicate": once.delay, "set": bare_set}
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        dropped = 0
        for i in range(calls):
            # The variants take turns at every call, so that the machine's
            # other load falls on all of them alike.
            for variant in rotation(VARIANTS, r + i):
                args = held if variant == "duplicate" else (f"{variant}-{r}", i, calls)
                delay = delays[variant]
                t0 = clock()
                returned = delay(*args)
                times[variant].append((clock() - t0) / 1000)
                if variant == "duplicate" and returned is None:
                    dropped += 1
        # Every unique call was published; every duplicate was dropped.
        published = broker.llen(queue)
        if published != 2 * calls + 1 or dropped != calls or locks.dbsize() != 2 * calls + 1:
            raise RuntimeError(f"round {r}: {published} messages published, {dropped} duplicates dropped")
        for variant, sink in times.items():
            result.latencies[variant].extend(sink)
            result.rates[variant].append(1e6 * len(sink) / sum(sink))
        reset()
        gc.collect()  # every round starts with the same garbage: none
    return result
