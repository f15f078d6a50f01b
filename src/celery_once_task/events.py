"""The library's own signals: what happened to a duplicate, and locks recovered.

Celery ``Signal`` objects, like ``celery.signals``; connect as to any Celery
signal. A receiver that raises is logged and never breaks the call or the
worker. Defined here, in a module that imports nothing of the library, so
that every module can send them; ``signals`` offers them to users too.

``duplicate_call(sender=task, key, holder_id, policy, window)``
    in the publishing process, when a call meets a held queue lock or window;
``duplicate_execution(sender=task, task_id, key, holder_id, policy)``
    in the process that meets a held running lock (or a full ``running_limit``);
``lock_recovered(sender=task, key, holder, reason)``
    when the lock of a gone or finished owner is taken over or released late;
    ``reason`` is one of ``RECOVERY_REASONS`` (the last with why it was released).
``execution_throttled(sender=task, task_id, key, outcome, start_at, limits)``
    in the process whose execution a ``throttle`` did not let start now.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

duplicate_call = Signal(name="duplicate_call", providing_args={"key", "holder_id", "policy", "window"})
duplicate_execution = Signal(
    name="duplicate_execution", providing_args={"task_id", "key", "holder_id", "policy"}
)
lock_recovered = Signal(name="lock_recovered", providing_args={"key", "holder", "reason"})
execution_throttled = Signal(
    name="execution_throttled", providing_args={"task_id", "key", "outcome", "start_at", "limits"}
)

#: ``lock_recovered``'s reasons: a copy of a message delivered again took over from the same attempt's gone worker;
WORKER_GONE = "worker gone"
#: a copy put off to wait for another delivery took the lock, that delivery (or its own earlier pickup) never ended;
DEFERRED_COPY = "deferred copy"
#: an attempt ended but its result was never stored: it runs again;
RESULT_LOST = "result lost"
#: a release that failed while the store was away was made later (``why``: the release's own reason);
RELEASED_LATE = "released late ({why})"
#: a message put off with a countdown was not taken in time (its worker gone): published again (``rescue``).
PARKED_RESCUED = "parked message rescued"
RECOVERY_REASONS = (WORKER_GONE, DEFERRED_COPY, RESULT_LOST, RELEASED_LATE, PARKED_RESCUED)
