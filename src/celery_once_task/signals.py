"""The library's signals for users, and the receivers that release locks when Celery revokes a task.

``duplicate_call``, ``duplicate_execution`` and ``lock_recovered`` are defined
in ``events`` (see there) and offered here: ``from celery_once_task.signals
import duplicate_call``.

Receivers the library connects (``setup_once_task_signals``):

``task_revoked`` is sent in the worker's main process for a revoked message
(queued, prefetched, expired, or terminated while running); the message never
runs (again), so its queue lock and its running lock are released.
``task_internal_error`` is sent in the process that ran the task when Celery's
own tracing failed around it.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from .cleanup import release_locks
from .events import duplicate_call, duplicate_execution, lock_recovered
from .headers import message_headers

__all__ = [
    "duplicate_call",
    "duplicate_execution",
    "lock_recovered",
    "setup_once_task_signals",
    "signals_connected",
    "teardown_once_task_signals",
]

_REVOKED_UID = "celery_once_task.revoked"
_INTERNAL_ERROR_UID = "celery_once_task.internal_error"


def on_task_revoked(sender: Any = None, request: Any = None, terminated: bool = False, **_: Any) -> None:
    if request is None:
        return
    release_locks(
        sender,
        task_id=request.id,
        retries=getattr(request, "retries", 0),
        args=request.args,
        kwargs=request.kwargs,
        headers=message_headers(request),
        queue=True,
        # A terminated execution's running lock is released by its request
        # (OnceTaskRequest.terminate), once the process running it is gone.
        running=False,
        reason="terminated" if terminated else "revoked",
    )


def on_task_internal_error(
    sender: Any = None, task_id: Any = None, args: Any = None, kwargs: Any = None, request: Any = None, **_: Any
) -> None:
    release_locks(
        sender,
        task_id=task_id,
        retries=getattr(request, "retries", 0),
        args=args,
        kwargs=kwargs,
        headers=message_headers(request),
        queue=True,
        running=True,
        reason="internal error",
    )


def setup_once_task_signals() -> None:
    """Connect the receivers; calling it again changes nothing."""
    signals.task_revoked.connect(on_task_revoked, weak=False, dispatch_uid=_REVOKED_UID)
    signals.task_internal_error.connect(on_task_internal_error, weak=False, dispatch_uid=_INTERNAL_ERROR_UID)


def teardown_once_task_signals() -> None:
    """Disconnect the receivers."""
    signals.task_revoked.disconnect(on_task_revoked, dispatch_uid=_REVOKED_UID)
    signals.task_internal_error.disconnect(on_task_internal_error, dispatch_uid=_INTERNAL_ERROR_UID)


def signals_connected() -> bool:
    """Whether the receivers are connected (for diagnostics and tests)."""
    return any(_REVOKED_UID in str(key) for key, _ in signals.task_revoked.receivers)
