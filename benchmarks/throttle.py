"""(l) ``throttle``: the pickup's check at N = 1, 10 and 1000, and the rate achieved on one hammered key.

Pickup: each case times the pickup's one round trip of a throttled task --
the queue lock's release and the throttle's check (``lua.throttles``) --
through the library's store on a server of its own, with the key's log
holding N - 1 starts (the costliest state in which a call still starts), and
the postponement (the log full: a start reserved). Round trips are counted
on the connection.

Rate: two workers of two processes (four in all) are handed calls of one key
as fast as they take them, first of a task with ``throttle="R/s"``, then of a
plain Celery task with ``rate_limit="R/s"``, Celery's own limit, which holds
per worker instance. The figures: the rate achieved (the starts over the time
from the first to one second after the last), and the most starts in any
one-second window, against R.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from celery_once_task.ids import call_id
from celery_once_task.keys import QUEUE, THROTTLE, limited_key, lock_key
from celery_once_task.rates import Rate
from celery_once_task.store import LockStore, throttles
from celery_once_task.store.locks import compare_and_delete
from celery_once_task.store.scripts import Call

from .counting import count, install, uninstall
from .servers import RedisServer
from .stats import median, percentile

TASK = "benchmarks.tasks.partner_call"
LEVELS = (1, 10, 1000)
#: The throttle of the rate part, per second, and how many calls of each task it publishes.
RATE = 20
CALLS = 120
ROOT = Path(__file__).resolve().parent.parent


def run(pairs: int = 2000) -> dict[str, Any]:
    server = RedisServer()
    try:
        return {"pickup": [_pickup(server, n, pairs) for n in LEVELS], "rate": _rate(server)}
    finally:
        server.stop()


def _pickup(server: RedisServer, n: int, pairs: int) -> dict[str, Any]:
    client = server.client(2)
    store = LockStore(client)
    rates = (Rate(n, 3600.0),)
    digest = uuid.uuid4().hex[:16]
    key = limited_key(TASK, digest, THROTTLE)
    queue = lock_key(TASK, digest, QUEUE)
    for index in range(n - 1):  # the key's other starts in the window
        store.runner.run([throttles.take(key, f"other-{index}", rates, "postpone")])
    install(client.connection_pool, "throttle")
    try:
        started_us, postponed_us, trips = [], [], 0
        for index in range(pairs + 1):  # the first pair loads the scripts: not counted
            task_id = str(uuid.uuid4())
            client.set(queue, task_id)
            calls: list[Call] = [compare_and_delete(queue, task_id, "exact"),
                                 throttles.take(key, call_id(task_id, 0), rates, "postpone")]
            before = count("throttle")
            began = time.perf_counter()
            replies, _ = store.runner.run(calls)
            elapsed = (time.perf_counter() - began) * 1e6
            trips += (count("throttle") - before) if index else 0
            assert throttles.gate_of(replies[-1]).code == throttles.STARTS
            # The log is full now: the next call's start is reserved.
            began = time.perf_counter()
            (reply,), _ = store.runner.run([throttles.take(key, call_id(f"late-{task_id}", 0), rates, "postpone")])
            postponed = (time.perf_counter() - began) * 1e6
            assert throttles.gate_of(reply).code == throttles.POSTPONED
            # Back to N - 1 starts (not timed).
            client.zrem(key, call_id(f"late-{task_id}", 0), *[m for m in client.zrangebyscore(key, 1, "+inf")
                                                              if m.startswith(task_id.encode())])
            if index:
                started_us.append(elapsed)
                postponed_us.append(postponed)
        return {"n": n, "pickup_median_us": round(median(started_us), 1),
                "pickup_p99_us": round(percentile(started_us, 99), 1),
                "postpone_median_us": round(median(postponed_us), 1),
                "pickup_round_trips": trips / pairs}
    finally:
        uninstall(client.connection_pool)
        client.close()


def _rate(server: RedisServer) -> dict[str, Any]:
    env = {**os.environ, "BENCH_REDIS_PORT": str(server.port), "BENCH_THROTTLE_RATE": str(RATE),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    os.environ["BENCH_REDIS_PORT"] = str(server.port)
    os.environ["BENCH_THROTTLE_RATE"] = str(RATE)
    from . import throttle_app

    records = server.client(4)
    workers = [subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "benchmarks.throttle_app", "worker", "-P", "prefork", "-c", "2",
         "-n", f"throttle{index}@bench", "-l", "warning", "--without-mingle", "--without-gossip",
         "--without-heartbeat"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for index in range(2)]
    try:
        time.sleep(3)  # the workers start (their first calls are not timed against a clock of theirs)
        figures = {}
        for name, task in (("throttled", throttle_app.throttled_hit), ("plain", throttle_app.plain_hit)):
            for n in range(CALLS):
                task.delay(n)
            deadline = time.monotonic() + 4 * CALLS / RATE + 30
            while records.llen(f"starts:{name}") < CALLS and time.monotonic() < deadline:
                time.sleep(0.2)
            starts = sorted(float(t) for t in records.lrange(f"starts:{name}", 0, -1))
            figures[name] = {
                "limit_per_s": RATE, "calls": CALLS, "started": len(starts),
                # Each start counted with the second it opens: bursts at the start of a window are not a rate.
                "achieved_per_s": round(len(starts) / (starts[-1] - starts[0] + 1.0), 2) if starts else 0,
                "most_in_any_second": most_in_window(starts, 1.0),
            }
        return figures
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()


def most_in_window(starts: list[float], period: float) -> int:
    import bisect

    return max((bisect.bisect_left(starts, start + period) - index for index, start in enumerate(starts)), default=0)


def text(figures: dict[str, Any]) -> str:
    lines = ["| throttle N | pickup median / p99 (µs) | postponement median (µs) | round trips at pickup |",
             "|---|---|---|---|"]
    for case in figures["pickup"]:
        lines.append(f"| {case['n']:,} | {case['pickup_median_us']:.0f} / {case['pickup_p99_us']:.0f} | "
                     f"{case['postpone_median_us']:.0f} | {case['pickup_round_trips']:g} |")
    lines += ["", "| one key, 4 worker processes | limit | achieved | most starts in any second |", "|---|---|---|---|"]
    for name, label in (("throttled", f"throttle=\"{RATE}/s\""), ("plain", f"plain Celery rate_limit=\"{RATE}/s\"")):
        rate = figures["rate"][name]
        lines.append(f"| {label} | {rate['limit_per_s']}/s | {rate['achieved_per_s']}/s | "
                     f"{rate['most_in_any_second']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(text(run()))
