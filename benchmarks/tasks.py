"""The Celery app the benchmarks publish to and the workers run, set up the way the README says.

Two no-op tasks with the same body and arguments: ``plain_noop`` (a plain
Celery ``Task``) and ``once_noop`` (``OnceTask``). The body does nothing,
except that the first and last few tasks of a drain write the time they were
done, from which the throughput is taken (a write per task would be measured
too). Results are ignored, as for most fire-and-forget tasks; logging is left
to the worker's command line.

The app reads the port of the benchmark's redis-server from
``BENCH_REDIS_PORT``, here and in worker subprocesses.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

import redis
from celery import Celery, Task, signals

from celery_once_task import OnceTask, OnceTaskUnlockBootStep, configure, setup_once_task_signals

PORT = int(os.environ.get("BENCH_REDIS_PORT", "0"))
BROKER_URL = f"redis://127.0.0.1:{PORT}/0"
LOCKS_URL = f"redis://127.0.0.1:{PORT}/2"
RECORDS_URL = f"redis://127.0.0.1:{PORT}/4"

#: How many tasks at each end of a drain write the time they were done.
#: A prefork pool may finish tasks slightly out of order; the earliest and
#: the latest finish are always among these.
EDGE = 16

app = Celery("benchmarks", broker=BROKER_URL)
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)

configure(redis_url=LOCKS_URL)
setup_once_task_signals()
app.steps["worker"].add(OnceTaskUnlockBootStep)

_records: Optional[redis.Redis] = None

#: Called in the body of ``once_probe`` (set by the round-trip counter).
probe_hook: Optional[Callable[[], None]] = None


def records() -> redis.Redis:
    global _records
    if _records is None:
        _records = redis.Redis.from_url(RECORDS_URL)
    return _records


def done_key(run: str) -> str:
    return f"done:{run}"


def _done(run: str, i: int, n: int) -> None:
    if i < EDGE or i >= n - EDGE:
        records().rpush(done_key(run), f"{i} {time.time()!r}")


@app.task(base=Task)
def plain_noop(run: str, i: int, n: int) -> None:
    _done(run, i, n)


@app.task(base=OnceTask)
def once_noop(run: str, i: int, n: int) -> None:
    _done(run, i, n)


@app.task(base=OnceTask)
def once_probe(run: str, i: int, n: int) -> None:
    if probe_hook is not None:
        probe_hook()


@signals.worker_ready.connect
def _announce_ready(sender: Any = None, **_: Any) -> None:
    # Workers run with -l warning, which hides Celery's "ready." line.
    records().rpush("ready", str(getattr(sender, "hostname", "")))


@app.task(base=OnceTask, name="benchmarks.tasks.reindex", lock_args=["doc_id"], debounce=30.0, queue="bursts")
def reindex(doc_id: str, version: int) -> None:
    """A debounced task whose messages nobody consumes: a burst that stays open while the benchmark calls."""
