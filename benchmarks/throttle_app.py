"""The Celery app of the throttle benchmark's workers: one key hammered, throttled and with Celery's ``rate_limit``.

``throttled_hit`` is an ``OnceTask`` with ``throttle=RATE/s`` on one bucket
(``lock_args=[]``); ``plain_hit`` a plain Celery task with
``rate_limit=RATE/s``, Celery's own limit, which holds per worker instance.
Each records when it started in the records database. The port and the rate
come from ``BENCH_REDIS_PORT`` and ``BENCH_THROTTLE_RATE``, here and in the
workers.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery, Task

from celery_once_task import OnceTask, OnceTaskUnlockBootStep, configure

PORT = int(os.environ.get("BENCH_REDIS_PORT", "0"))
RATE = int(os.environ.get("BENCH_THROTTLE_RATE", "20"))
BROKER_URL = f"redis://127.0.0.1:{PORT}/0"
LOCKS_URL = f"redis://127.0.0.1:{PORT}/2"
RECORDS_URL = f"redis://127.0.0.1:{PORT}/4"

app = Celery("benchmarks_throttle", broker=BROKER_URL)
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True, worker_prefetch_multiplier=1)
configure(redis_url=LOCKS_URL)
app.steps["worker"].add(OnceTaskUnlockBootStep)

_records = redis.Redis(port=PORT, db=4)


@app.task(base=OnceTask, name="bench.throttled_hit", throttle=f"{RATE}/s", lock_args=[], queue_lock=False)
def throttled_hit(n: int) -> None:
    _records.rpush("starts:throttled", time.time())


@app.task(base=Task, name="bench.plain_hit", rate_limit=f"{RATE}/s")
def plain_hit(n: int) -> None:
    _records.rpush("starts:plain", time.time())
