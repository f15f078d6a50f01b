"""The library's own signals, and the receivers that release locks when Celery revokes a task.

Signals the library sends (Celery's ``Signal`` class, like ``celery.signals``);
a receiver that raises is logged and never breaks the call or the worker:

``duplicate_call(sender=task, key, holder_id, policy)``
    in the publishing process, when a call meets a held queue lock;
``duplicate_execution(sender=task, task_id, key, holder_id, policy)``
    in the process that meets a held running lock;
``lock_recovered(sender=task, key, holder, reason)``
    when the lock of a gone or finished owner is taken over or released late.

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
from celery.utils.dispatch import Signal

from .cleanup import release_locks
from .keys import DIGEST_HEADER

duplicate_call = Signal(name="duplicate_call", providing_args={"key", "holder_id", "policy"})
duplicate_execution = Signal(
    name="duplicate_execution", providing_args={"task_id", "key", "holder_id", "policy"}
)
lock_recovered = Signal(name="lock_recovered", providing_args={"key", "holder", "reason"})

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
        headers=_headers(request),
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
        headers=_headers(request),
        queue=True,
        running=True,
        reason="internal error",
    )


def _headers(request: Any) -> dict[str, Any]:
    headers = dict(getattr(request, "headers", None) or {})
    value = getattr(request, DIGEST_HEADER, None)
    if value is not None:
        headers.setdefault(DIGEST_HEADER, value)
    return headers


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
