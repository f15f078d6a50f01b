"""The library's own republish: the same message again, past the user's ``apply_async`` override.

When the library publishes a message again -- a deferred copy, a waiting
call's safety copy, a waiting call handed over -- it calls
``celery.Task.apply_async`` itself, skipping every override between the
user's task class and ``celery.Task``. A republish is not a new call: the
override ran when the call was made, and the copy carries the headers and
routing that call was published with.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from celery_once_task.ownership import Lease
from tests import worker_app as tasks
from tests.support import Worker, events, is_waiting_copy, started, wait_until

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker

LEASE = Lease(tasks.HEARTBEAT_TIMEOUT)


def deliveries_of(recs: Any, tag: str, value: int) -> list[dict[str, Any]]:
    """The deliveries of the call ``(tag, value)`` that are over, with the stamp each carried."""
    return [delivery for delivery in events(recs, tag, "delivered") if delivery["value"] == value]


def test_a_republished_call_runs_once_without_the_override_and_keeps_its_stamp(worker: Worker, locks: Any,
                                                                                recs: Any) -> None:
    tag = uuid.uuid4().hex
    task = tasks.stamped_waiting_gated
    first = task.delay(tag, 1)
    started(recs, tag)
    second = task.delay(tag, 2)
    # Its execution meets the first's running lock: it waits, and the library publishes it again.
    wait_until(lambda: is_waiting_copy(locks, task, tag, second.id), what="the second call to wait")
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag
    started(recs, tag, count=2)
    recs.rpush(f"gate:{tag}", 1)
    assert second.get(timeout=20) == tag
    # Both its copies are published by now (the safety copy when it waited, the other when the first ended).
    assert int(recs.get(f"applied:{tag}")) == 2  # once per call, never for a copy published again
    # Its first delivery, the copy handed over when the first ended, and its safety copy, back after a lease:
    # each recorded once the library decided what it gets.
    deliveries = wait_until(lambda: len(deliveries_of(recs, tag, 2)) >= 3 and deliveries_of(recs, tag, 2),
                            timeout=LEASE.ttl + 15, what="the second call's safety copy to be delivered")
    assert [start["value"] for start in events(recs, tag, "start")] == [1, 2]
    assert {delivery["id"] for delivery in deliveries} == {second.id}
    assert [delivery["stamp"] for delivery in deliveries] == [tag] * len(deliveries)
