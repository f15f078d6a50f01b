"""The Celery app of one implementation under comparison, as its own documentation configures it.

Imported by a driver (``benchmarks.driver``) and by worker subprocesses, each
in the virtualenv of the implementation named by ``BENCH_KIND``:

``plain``        a plain Celery ``Task`` (the baseline)
``once-task``    ``celery_once_task.OnceTask``: this project, or celery-once-task 1.0.0 from PyPI
                 (same import name and setup: ``configure(redis_url=...)``, the signals, the boot step)
``celery-once``  ``celery_once.QueueOnce`` 3.0.1: ``app.conf.ONCE`` with the Redis backend,
                 ``once={"graceful": True}`` so that a duplicate returns instead of raising
``singleton``    ``celery_singleton.Singleton`` 0.3.1: ``app.conf.singleton_backend_url``

Every implementation gets one no-op task, ``noop(run, i, n)``, with the same
body as ``benchmarks.tasks``: the first and last few tasks of a drain write the
time they were done, and how many round trips this thread has sent to the
lock store so far (see ``counting.count_endpoint``), to
``BENCH_RECORDS_URL``. Lock timeouts are one hour for all.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import redis
from celery import Celery, Task, signals

from . import counting

KIND = os.environ.get("BENCH_KIND", "plain")
VARIANT = os.environ.get("BENCH_VARIANT", KIND)
BROKER_URL = os.environ["BENCH_BROKER_URL"]
LOCK_URL = os.environ["BENCH_LOCK_URL"]
RECORDS_URL = os.environ["BENCH_RECORDS_URL"]
LOCK_DB = int(os.environ["BENCH_LOCK_DB"])
TIMEOUT = 3600
#: How many tasks at each end of a drain record their time (see ``benchmarks.tasks``).
EDGE = 16

# The lock store's server: its unix socket path, or its TCP port.
_endpoint: Any = os.environ["BENCH_LOCK_ENDPOINT"]
counting.count_endpoint("locks", int(_endpoint) if _endpoint.isdigit() else _endpoint, LOCK_DB)

app = Celery("benchmarks", broker=BROKER_URL)
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    # delay() publishes here: a queue of this variant's own, consumed by no worker.
    task_default_queue=f"bench.{VARIANT}.publish",
)

base: Any = Task
options: dict[str, Any] = {}
if KIND == "once-task":
    from celery_once_task import OnceTask, OnceTaskUnlockBootStep, configure, setup_once_task_signals

    configure(redis_url=LOCK_URL, queue_lock_timeout=TIMEOUT, running_lock_timeout=TIMEOUT)
    setup_once_task_signals()
    app.steps["worker"].add(OnceTaskUnlockBootStep)
    base = OnceTask
elif KIND == "celery-once":
    from celery_once import QueueOnce

    # celery_once spells a unix socket redis+socket:///path, and takes the database as a query parameter.
    app.conf.ONCE = {"backend": "celery_once.backends.Redis",
                     "settings": {"url": LOCK_URL, "default_timeout": TIMEOUT}}
    base, options = QueueOnce, {"once": {"graceful": True}}
elif KIND == "singleton":
    from celery_singleton import Singleton

    # Without an expiry a Singleton lock never expires: give it the others' timeout.
    app.conf.update(singleton_backend_url=LOCK_URL, singleton_lock_expiry=TIMEOUT)
    base = Singleton
elif KIND != "plain":
    raise SystemExit(f"unknown BENCH_KIND {KIND!r}")

_records: Optional[redis.Redis] = None


def records() -> redis.Redis:
    global _records
    if _records is None:
        _records = redis.Redis.from_url(RECORDS_URL)
    return _records


def done_key(run: str) -> str:
    return f"done:{run}"


@app.task(base=base, name="benchmarks.noop", **options)
def noop(run: str, i: int, n: int) -> None:
    if i < EDGE or i >= n - EDGE:
        records().rpush(done_key(run), f"{i} {time.time()!r} {counting.count('locks')}")


@signals.worker_ready.connect
def _announce_ready(sender: Any = None, **_: Any) -> None:
    # Workers run with -l warning, which hides Celery's "ready." line.
    records().rpush("ready", str(getattr(sender, "hostname", "")))
