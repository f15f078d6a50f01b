"""examples/prometheus_metrics.py: the library's signals counted as Prometheus counters.

Duplicates are real: a duplicate call in this process, and a duplicate eager
execution in this process while the same call runs on the worker. A
recovered lock is sent as the library sends it, for a real lock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from prometheus_client import CollectorRegistry

from celery_once_task.signals import duplicate_call, lock_recovered
from examples.prometheus_metrics import OnceMetrics, connect_metrics
from tests import worker_app as tasks
from tests.support import gated_run

PARKED = "tests.worker_app.parked"


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = connect_metrics(registry)
    try:
        yield registry
    finally:
        metrics.disconnect()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> Optional[float]:
    return registry.get_sample_value(name, labels)


def queued_call() -> tuple[str, str]:
    """The key and holder of a real call's queue lock."""
    tag = uuid.uuid4().hex
    first = tasks.parked.delay(tag)
    return tasks.parked.once_key((tag,), {}, "queue"), first.id


def test_a_duplicate_call_counts_once_per_task_and_policy(registry: CollectorRegistry) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    assert tasks.parked.delay(tag) is None
    assert sample(registry, "celery_once_duplicate_calls_total", task=PARKED, policy="drop") == 1.0


def test_a_duplicate_execution_counts_once_per_task_and_policy(registry: CollectorRegistry, worker: Any,
                                                               recs: Any) -> None:
    tag = uuid.uuid4().hex
    with gated_run(tasks.gated, recs, tag):
        assert tasks.gated.apply((tag,)).state == "FAILURE"
    assert sample(registry, "celery_once_duplicate_executions_total", task=tasks.gated.name, policy="reject") == 1.0


def test_a_recovered_lock_counts_once_per_task_and_reason(registry: CollectorRegistry) -> None:
    key, holder = queued_call()
    lock_recovered.send(sender=tasks.parked, key=key, holder=holder, reason="worker gone")
    assert sample(registry, "celery_once_locks_recovered_total", task=PARKED, reason="worker gone") == 1.0


def test_disconnect_stops_counting() -> None:
    registry = CollectorRegistry()
    metrics: OnceMetrics = connect_metrics(registry)
    metrics.disconnect()
    key, holder = queued_call()
    duplicate_call.send(sender=tasks.parked, key=key, holder_id=holder, policy="drop")
    assert sample(registry, "celery_once_duplicate_calls_total", task=PARKED, policy="drop") is None
