"""Options per call: ``apply_async(..., once={...})``, over the task's, validated at the call, carried to the worker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from celery_once_task import OnceTaskDuplicate
from tests import worker_app as tasks
from tests.conftest import BROKER
from tests.support import Worker, events, lock_key_of, started

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker


def test_a_call_without_the_queue_lock_queues_a_second_message(broker: Any) -> None:
    tag = uuid.uuid4().hex
    before = broker.llen("parked") if BROKER == "redis" else 0
    first = tasks.parked.delay(tag)
    second = tasks.parked.apply_async((tag,), once={"queue_lock": False})
    assert first is not None and second is not None and second.id != first.id
    if BROKER == "redis":
        assert broker.llen("parked") == before + 2


def test_a_call_that_raises_as_a_duplicate_raises_once_task_duplicate() -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked.delay(tag)
    with pytest.raises(OnceTaskDuplicate) as raised:
        tasks.parked.apply_async((tag,), once={"queue_lock_conflict": "raise"})
    assert raised.value.holder_id == first.id
    assert tasks.parked.delay(tag) is None  # the task's own policy, for the calls that set none


def test_a_call_may_take_the_result_of_the_queued_call() -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked.delay(tag)
    assert tasks.parked.apply_async((tag,), once={"queue_lock_conflict": "existing"}).id == first.id


@pytest.mark.parametrize(("once", "error", "message"), [
    ({"queue_lok": False}, ValueError, r"once\['queue_lok'\] is not an option a call may set"),
    ({"running_lock": False}, ValueError, r"once\['running_lock'\] is not an option a call may set"),
    ({"queue_lock": "no"}, ValueError, r"once\['queue_lock'\] must be True or False"),
    ({"queue_lock_conflict": "ignore"}, ValueError, r"once\['queue_lock_conflict'\] must be one of"),
    ({"queue_lock_timeout": 0}, ValueError, r"once\['queue_lock_timeout'\] must be a positive integer"),
    ({"unique_for": -1}, ValueError, r"once\['unique_for'\] must be a positive number of seconds"),
    (["queue_lock"], TypeError, r"once must be a dict of options"),
], ids=["unknown", "not-per-call", "queue-lock", "conflict", "timeout", "unique-for", "not-a-dict"])
def test_an_option_a_call_cannot_set_is_refused_naming_it_and_the_task(once: Any, error: type, message: str,
                                                                      broker: Any) -> None:
    tag = uuid.uuid4().hex
    with pytest.raises(error, match=rf"^tests\.worker_app\.parked: {message}"):
        tasks.parked.apply_async((tag,), once=once)
    assert tasks.parked.delay(tag) is not None  # nothing was published, no lock taken


def test_a_call_sets_its_queue_lock_timeout(locks: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.apply_async((tag,), once={"queue_lock_timeout": 30})
    assert 29_000 < locks.pttl(lock_key_of(tasks.parked, "queue", tag)) <= 30_000


def test_the_worker_keeps_the_queue_lock_of_a_call_that_asked_until_its_run_ends(worker: Worker, locks: Any,
                                                                                recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.gated.apply_async((tag,), once={"queue_lock_until": "end"})
    started(recs, tag)
    assert tasks.gated.delay(tag) is None  # the call runs, and holds its key until it ends
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag
    assert locks.exists(lock_key_of(tasks.gated, "queue", tag)) == 0
    assert len(events(recs, tag, "start")) == 1
