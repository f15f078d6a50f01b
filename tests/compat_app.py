"""The Celery app of the drop-in tests: tasks written for celery_once and celery-singleton, their imports changed.

An app of its own, configured as those libraries' users configure theirs: its
lock store comes from ``app.conf.ONCE`` (a database of the test server that
``configure()`` does not name, so that a test can tell it was read), and its
messages go to a queue of its own, which the shared worker does not consume.
Its tasks record what they do as ``tests.worker_app``'s do.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_once_task import OnceTaskUnlockBootStep
from celery_once_task.compat.celery_once import QueueOnce
from celery_once_task.compat.celery_singleton import Singleton
from tests.worker_app import BACKEND_URL, BROKER_URL, PORT, record, wait_gate

#: Where ``app.conf.ONCE`` puts the locks.
ONCE_LOCKS_DB = 5
#: celery_once's ``default_timeout`` here: the queue lock's TTL of a task that gives no ``timeout``.
DEFAULT_TIMEOUT = 300
#: The queue of this app's worker; calls sent to ``PARKED`` stay queued.
QUEUE, PARKED = "compat", "compat-parked"

app = Celery("compat", broker=BROKER_URL, backend=BACKEND_URL)
app.conf.update(
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=1,
    result_expires=600,
    ONCE={
        "backend": "celery_once.backends.Redis",
        "settings": {"url": f"redis://127.0.0.1:{PORT}/{ONCE_LOCKS_DB}", "default_timeout": DEFAULT_TIMEOUT},
    },
)
app.steps["worker"].add(OnceTaskUnlockBootStep)


# -- celery_once -----------------------------------------------------------------------


@app.task(base=QueueOnce)
def once_gated(tag: str) -> str:
    """Runs until the test opens its gate."""
    record(tag, "start")
    wait_gate(tag)
    record(tag, "end")
    return tag


@app.task(base=QueueOnce, once={"graceful": True, "timeout": 60})
def once_graceful(tag: str) -> str:
    record(tag, "start")
    return tag


@app.task(base=QueueOnce, once={"unlock_before_run": True})
def once_unlocked(tag: str) -> str:
    record(tag, "start")
    wait_gate(tag)
    record(tag, "end")
    return tag


@app.task(base=QueueOnce, once={"keys": ["tag"]})
def once_keyed(tag: str, value: int = 0) -> int:
    record(tag, "start", value=value)
    return value


# -- celery-singleton --------------------------------------------------------------------


@app.task(base=Singleton)
def singleton_gated(tag: str) -> str:
    record(tag, "start")
    wait_gate(tag)
    record(tag, "end")
    return tag


@app.task(base=Singleton, raise_on_duplicate=True)
def singleton_raising(tag: str) -> str:
    record(tag, "start")
    return tag


@app.task(base=Singleton, unique_on=["tag"])
def singleton_unique_on(tag: str, value: int = 0) -> int:
    record(tag, "start", value=value)
    return value


def parked(task: Any, *args: Any, **options: Any) -> Any:
    """``task(*args)`` sent to a queue no worker consumes: it stays queued."""
    return task.apply_async(args, queue=PARKED, **options)
