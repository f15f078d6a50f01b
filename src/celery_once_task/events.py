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
