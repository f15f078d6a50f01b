"""A duplicate execution refused: ``OnceTaskLocked``, its failure stored, and its end recorded.

The execution raises ``OnceTaskLocked`` (a ``Reject``: Celery acknowledges the
message and does not requeue it). Its result is a failure at once -- Celery
5.7 stores it, this module on older releases -- and its finished record says
so, so that a copy of its message delivered again does not run it after all.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import celery
from celery.exceptions import Reject
from redis.exceptions import RedisError

from . import telemetry
from .errors import OnceTaskLocked
from .events import duplicate_execution
from .janitor import Cleanup, janitor
from .ownership import RunningOwner
from .protocols import TaskLike, TaskRequest
from .redelivery import Finished, guard_seconds, writer_instance
from .settings_table import Settings
from .store import FinishedCheck, FinishedRecord, LockStore
from .store.operations import RUNNING_RECORD
from .store.scripts import Call

logger = logging.getLogger("celery_once_task")

#: Celery 5.7 stores FAILURE itself when a task rejects its message for good.
_CELERY_STORES_REJECTIONS = tuple(celery.VERSION[:3]) >= (5, 7, 0)


def reject_duplicate(task: TaskLike, request: TaskRequest, key: str, holder_value: str,
                     why: str = "") -> OnceTaskLocked:
    """The rejection of a duplicate execution (stored as a failure on Celery < 5.7).

    ``why``: what it met, where not the running lock of one other task.
    """
    holder = RunningOwner.parse(holder_value)
    holder_id = holder.task_id if holder else holder_value
    exc = OnceTaskLocked(f"{task.name}[{request.id}]: rejected, {why or f'task {holder_id} is running'} (lock {key})")
    logger.warning(
        "%s[%s]: execution rejected: running lock %s is held by %s", task.name, request.id, key, holder_value
    )
    duplicate_execution.send(sender=task, task_id=request.id, key=key, holder_id=holder_id, policy="reject")
    store_rejection(task, request, exc)
    return exc


def store_rejection(task: TaskLike, request: TaskRequest, exc: Reject) -> None:
    """Store a rejected execution's failure where Celery does not (before 5.7): its result is final."""
    if not _CELERY_STORES_REJECTIONS and not request.is_eager:
        # Older Celery stores nothing for a rejected task: its result
        # would stay PENDING and .get() would hang.
        store_errors = not task.ignore_result or task.store_errors_even_if_ignored
        try:
            task.backend.mark_as_failure(request.id, exc, request=request, store_result=store_errors)
        except Exception:
            logger.exception("%s[%s]: could not store the rejection", task.name, request.id)


def record_rejection(task: TaskLike, settings: Settings, store: LockStore, check: FinishedCheck,
                     request: TaskRequest, key: str, also: Sequence[Call] = (),
                     also_later: Sequence[Cleanup] = ()) -> None:
    """Record the rejected execution's end, so that a copy of its message never runs it.

    ``key``: the running lock (or slots) it met. ``also``: the calls that end
    its call's queue-side keys, in the same round trip (``windows``);
    ``also_later``: what the janitor makes of ``also`` should the store not answer.
    """
    finished = Finished(check.attempt, check.call, writer_instance(), os.getpid(), True, time.time(),
                        settings.legacy_formats)
    started = telemetry.started(settings) if telemetry.active else 0
    try:
        store.locks.record_finished(FinishedRecord(check.key, finished.value(), guard_seconds(task, settings),
                                                   check.attempt, check.call), also)
    except RedisError as exc:
        if telemetry.active:
            telemetry.round_trip(task, settings, store.client, RUNNING_RECORD, key, started, "store_unavailable",
                                 error=exc)
        logger.warning("%s[%s]: lock operation failed: rejection not recorded (%s): %s", task.name, request.id,
                       check.key, exc)
        for cleanup in also_later:
            janitor.add(cleanup)
        return
    if telemetry.active:
        telemetry.round_trip(task, settings, store.client, RUNNING_RECORD, key, started, "rejected")
