"""The Celery app the soak's workers run, and its one task: ``work(key_index)``.

Configured from the environment the driver sets (``SOAK_*``): the broker and
result backend, the lock store, the records server, ``heartbeat_timeout``,
the broker's visibility timeout and the policy for a duplicate execution.
The driver imports it too, to publish.

``work`` records its start and its end in the records server -- time, pid,
the pid of its worker's main process, node name, task id, attempt, key --
and once its result is stored, that too (``stored``),
and works between the two: it sleeps, or with ``--body cpu`` it computes
without yielding to a gevent hub, one call in five for longer than a lease;
so that the driver can tell afterwards which executions of one key ran at
the same time.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from typing import Any

import redis
from celery import Celery

from celery_once_task import OnceTask, OnceTaskUnlockBootStep, configure, setup_once_task_signals

#: The records list: one JSON object per start or end of an execution.
RECORDS_KEY = "soak:records"
#: At most this many executions of one key at once (``--running-limit``): 1 is the running lock.
RUNNING_LIMIT = int(os.environ.get("SOAK_RUNNING_LIMIT", "1"))
#: How many different calls the publishers make: ``work(0)`` to ``work(KEYS - 1)``; fewer under a
#: limit, so that calls of one key pile up past it.
#: ``--throttle N/PERIOD``: at most N starts of a key in any window of the period ("": none).
THROTTLE = os.environ.get("SOAK_THROTTLE", "")
KEYS = 16 if RUNNING_LIMIT == 1 and not THROTTLE else 4
POLICIES = ("reject", "wait")


def _setting(name: str) -> str:
    # No default: a soak that fell back to a default URL could write to a
    # Redis it did not start.
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run the soak with `bash scripts/soak.sh`")
    return value


BROKER_URL = _setting("SOAK_BROKER_URL")
BACKEND_URL = _setting("SOAK_BACKEND_URL")
LOCKS_URL = _setting("SOAK_LOCKS_URL")
RECORDS_URL = _setting("SOAK_RECORDS_URL")
HEARTBEAT_TIMEOUT = int(os.environ.get("SOAK_HEARTBEAT_TIMEOUT", "5"))
VISIBILITY_TIMEOUT = int(os.environ.get("SOAK_VISIBILITY_TIMEOUT", "8"))
POLICY = os.environ.get("SOAK_POLICY", "reject")
if POLICY not in POLICIES:
    raise RuntimeError(f"SOAK_POLICY must be one of {', '.join(POLICIES)}, got {POLICY!r}")
BODY = os.environ.get("SOAK_BODY", "sleep")
#: Seconds apart that calls of one key form a burst, run once after it (``--debounce``); 0: off.
DEBOUNCE = float(os.environ.get("SOAK_DEBOUNCE", "0"))
#: A window of the task's (``--window``): "end" (queue_lock_until), "unique_for" (``UNIQUE_FOR`` seconds); "": none.
WINDOW = os.environ.get("SOAK_WINDOW", "")
UNIQUE_FOR = float(os.environ.get("SOAK_UNIQUE_FOR", "0"))

app = Celery("soak", broker=BROKER_URL, backend=BACKEND_URL)
app.conf.update(
    broker_transport_options={
        # Short, so that the messages of a killed worker come back within the soak.
        "visibility_timeout": VISIBILITY_TIMEOUT,
        # kombu's restore of unacked messages holds a mutex with this TTL
        # (300 s by default): a worker killed while holding it would stop
        # every restore for longer than the soak drains.
        "unacked_mutex_expire": 10,
    },
    worker_prefetch_multiplier=1,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)
configure(redis_url=LOCKS_URL, heartbeat_timeout=HEARTBEAT_TIMEOUT)
setup_once_task_signals()
app.steps["worker"].add(OnceTaskUnlockBootStep)

# Celery sets every decorator option as a class attribute of the task, so a
# library that does not know ``running_lock_conflict`` yet still gets it, and
# honours it as soon as it reads the attribute.
_POLICY_OPTIONS: dict[str, Any] = {} if POLICY == "reject" else {"running_lock_conflict": POLICY}
if RUNNING_LIMIT > 1:
    # Every call kept: under "wait" they wait their turn in the key's line.
    _POLICY_OPTIONS.update(running_limit=RUNNING_LIMIT, queue_lock=False)
if DEBOUNCE:
    _POLICY_OPTIONS.update(debounce=DEBOUNCE, debounce_max=4 * DEBOUNCE)
if WINDOW == "end":
    _POLICY_OPTIONS.update(queue_lock_until="end")
elif WINDOW == "unique_for":
    _POLICY_OPTIONS.update(unique_for=UNIQUE_FOR)
if THROTTLE:
    # Every call kept, so that calls of a key pile up past the throttle and are postponed.
    _count, _, _period = THROTTLE.partition("/")
    _POLICY_OPTIONS.update(throttle=(int(_count), float(_period)) if _period.replace(".", "", 1).isdigit()
                           else THROTTLE, queue_lock=False)

# Longer than a stall of the records server could last: it is never faulted.
_records = redis.Redis.from_url(RECORDS_URL, socket_timeout=30)


def record(event: str, **fields: Any) -> None:
    """Append one event to the records list."""
    _records.rpush(RECORDS_KEY, json.dumps({"event": event, "t": time.time(), **fields}))


#: The records of the executions running in this process, by task id: their "stored" event names them.
_running: dict[str, dict[str, Any]] = {}


class RecordedTask(OnceTask):
    """Records "stored" once Celery has stored an execution's result (``on_success`` runs after that)."""

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        fields = _running.pop(task_id, None)
        if fields is not None:
            record("stored", **fields)


@app.task(
    base=RecordedTask,
    bind=True,
    name="soak.work",
    acks_late=True,
    reject_on_worker_lost=True,
    lock_args=["key_index"],
    **_POLICY_OPTIONS,
)
def work(self: Any, key_index: int, seq: int = 0) -> int:
    """One execution of the call ``work(key_index)``, recorded at its start and its end.

    ``seq`` numbers the calls (it is not part of the key): a debounced
    execution records the one it runs with, its burst's last.
    """
    fields = {
        "execution": uuid.uuid4().hex,
        "task_id": self.request.id,
        "retries": self.request.retries,
        "key": key_index,
        "seq": seq,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "worker": self.request.hostname,
    }
    record("start", **fields)
    _running[self.request.id] = fields
    if BODY == "cpu":
        # Computes without yielding to a gevent hub: one call in five for longer than a lease.
        seconds = random.uniform(1.2, 2.4) * HEARTBEAT_TIMEOUT if random.random() < 0.2 else random.uniform(0.05, 0.5)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            pass
    else:
        time.sleep(random.uniform(0.05, 0.5))  # the work it stands for
    record("end", **fields)
    return key_index
