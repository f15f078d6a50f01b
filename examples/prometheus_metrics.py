"""Prometheus counters from celery-once-task's signals: how many duplicates were stopped, and locks recovered.

Call ``connect_metrics()`` once per process, in the processes that publish
tasks (duplicate calls are counted where ``delay()`` is called) and in the
workers (duplicate executions and recovered locks are counted there), and
expose the registry as you already do (``prometheus_client.start_http_server``,
or the multiprocess collector of a prefork worker)::

    from prometheus_client import REGISTRY
    from examples.prometheus_metrics import connect_metrics

    connect_metrics(REGISTRY)

The counters are labelled with the task name and the policy or reason only:
never the lock key or an argument, which would make one series per call.

``prometheus_client`` is not a dependency of celery-once-task:
``pip install prometheus_client``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from celery_once_task.signals import duplicate_call, duplicate_execution, lock_recovered


@dataclass
class OnceMetrics:
    """The counters, and ``disconnect()`` to stop counting."""

    duplicate_calls: Counter
    duplicate_executions: Counter
    locks_recovered: Counter
    dispatch_uid: str

    def disconnect(self) -> None:
        for signal in (duplicate_call, duplicate_execution, lock_recovered):
            signal.disconnect(dispatch_uid=self.dispatch_uid)


def _task_name(sender: Any) -> str:
    return str(getattr(sender, "name", None) or sender)


def connect_metrics(registry: CollectorRegistry = REGISTRY) -> OnceMetrics:
    """Register the counters in ``registry`` and count every signal the library sends from now on."""
    metrics = OnceMetrics(
        duplicate_calls=Counter(
            "celery_once_duplicate_calls", "Calls that found the same call already queued (queue lock held).",
            ["task", "policy"], registry=registry,
        ),
        duplicate_executions=Counter(
            "celery_once_duplicate_executions", "Executions that found the same call already running.",
            ["task", "policy"], registry=registry,
        ),
        locks_recovered=Counter(
            "celery_once_locks_recovered", "Locks of a gone or finished owner taken over or released late.",
            ["task", "reason"], registry=registry,
        ),
        # One connection per registry: connecting twice must not count twice.
        dispatch_uid=f"celery_once_task.prometheus.{id(registry)}",
    )

    def on_duplicate_call(sender: Any = None, policy: Any = None, **_: Any) -> None:
        metrics.duplicate_calls.labels(task=_task_name(sender), policy=str(policy)).inc()

    def on_duplicate_execution(sender: Any = None, policy: Any = None, **_: Any) -> None:
        metrics.duplicate_executions.labels(task=_task_name(sender), policy=str(policy)).inc()

    def on_lock_recovered(sender: Any = None, reason: Any = None, **_: Any) -> None:
        metrics.locks_recovered.labels(task=_task_name(sender), reason=str(reason)).inc()

    duplicate_call.connect(on_duplicate_call, weak=False, dispatch_uid=metrics.dispatch_uid)
    duplicate_execution.connect(on_duplicate_execution, weak=False, dispatch_uid=metrics.dispatch_uid)
    lock_recovered.connect(on_lock_recovered, weak=False, dispatch_uid=metrics.dispatch_uid)
    return metrics
