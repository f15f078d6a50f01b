"""The library's signals for users, and the receivers that release locks when Celery revokes a task.

The signals are Celery ``Signal`` objects, defined in ``events`` (a module
every other one can import) and offered here; connect to them as to any
Celery signal. A receiver that raises is logged and never breaks the call or
the worker.

    from celery_once_task.signals import duplicate_call

Attributes:
    duplicate_call: Sent in the publishing process when a call meets a held
        queue lock or ``unique_for`` window, with ``sender`` (the task),
        ``key``, ``holder_id`` (the task id holding it), ``policy`` (what the
        call got: ``"drop"``, ``"existing"``, ``"raise"``, ``"replace"``) and
        ``window`` (what held the key: ``"pickup"``, a queued call;
        ``"end"``, a call queued or running; ``"unique_for"``, a call made
        less than ``unique_for`` seconds before).
    duplicate_execution: Sent in the process that meets a held running lock
        (or a full ``running_limit``), with ``sender`` (the task), ``task_id``
        (the duplicate's), ``key``, ``holder_id`` and ``policy`` (what the
        execution got: ``"reject"``, ``"wait"`` ...).
    lock_recovered: Sent when the lock of a gone or finished owner is taken
        over or released late, with ``sender`` (the task), ``key``, ``holder``
        (the value that held the lock) and ``reason``.
    execution_throttled: Sent in the process whose execution a ``throttle``
        did not let start now, with ``sender`` (the task), ``task_id``,
        ``key`` (the key's log), ``outcome`` (``"postponed"``: it starts at
        ``start_at``; ``"rejected"``: it failed with ``OnceTaskThrottled``),
        ``start_at`` (epoch seconds by the lock store's clock: its reserved
        start, or the earliest a window allowed) and ``limits`` (the
        throttle, e.g. ``"3/2s"``).

Receivers the library connects (``setup_once_task_signals``):
``task_revoked`` is sent in the worker's main process for a revoked message
(queued, prefetched, expired, or terminated while running); the message never
runs (again), so its queue lock and its running lock are released.
``task_internal_error`` is sent in the process that ran the task when Celery's
own tracing failed around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

from celery import signals

from .cleanup import release_locks
from .events import duplicate_call, duplicate_execution, execution_throttled, lock_recovered
from .headers import message_headers
from .protocols import WorkerRequest

__all__ = [
    "duplicate_call",
    "duplicate_execution",
    "execution_throttled",
    "lock_recovered",
    "setup_once_task_signals",
    "signals_connected",
    "teardown_once_task_signals",
]

_REVOKED_UID = "celery_once_task.revoked"
_INTERNAL_ERROR_UID = "celery_once_task.internal_error"


def on_task_revoked(
    sender: object = None, request: Optional[WorkerRequest] = None, terminated: bool = False, **_: object
) -> None:
    """``task_revoked``: release the queue lock and running lock of a revoked message (its task's, if a OnceTask)."""
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
    sender: object = None, task_id: Optional[str] = None, args: Optional[Sequence[object]] = None,
    kwargs: Optional[Mapping[str, object]] = None, request: object = None, **_: object,
) -> None:
    """``task_internal_error``: release the locks of the execution Celery's tracing failed around.

    ``request`` is the execution's ``Context``.
    """
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
    """Connect the receivers that release a task's locks when Celery revokes it or its tracing fails.

    Call it once in the module that makes the Celery app (under Django,
    ``OnceTaskAppConfig`` calls it). Calling it again changes nothing.
    """
    signals.task_revoked.connect(on_task_revoked, weak=False, dispatch_uid=_REVOKED_UID)
    signals.task_internal_error.connect(on_task_internal_error, weak=False, dispatch_uid=_INTERNAL_ERROR_UID)


def teardown_once_task_signals() -> None:
    """Disconnect the receivers ``setup_once_task_signals`` connected (for tests)."""
    signals.task_revoked.disconnect(on_task_revoked, dispatch_uid=_REVOKED_UID)
    signals.task_internal_error.disconnect(on_task_internal_error, dispatch_uid=_INTERNAL_ERROR_UID)


def signals_connected() -> bool:
    """Whether the receivers are connected (for diagnostics and tests).

    Returns:
        True once ``setup_once_task_signals`` has connected them, until ``teardown_once_task_signals``.
    """
    return any(_REVOKED_UID in str(key) for key, _ in signals.task_revoked.receivers)
