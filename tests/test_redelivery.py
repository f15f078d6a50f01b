"""A finished execution never runs again because its message came back.

The broker delivers a message again when the worker that had it died
before acknowledging it (``acks_late``): here the worker kills itself at the
moment under test, and the Redis transport hands the message to the next
worker that starts once its ``visibility_timeout`` has passed.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from celery import states

from celery_once_task import brokers
from celery_once_task.hash_slots import slot_of
from celery_once_task.ownership import INSTANCE, Lease, RunningOwner
from celery_once_task.record_keys import finished_key, legacy_finished_key
from celery_once_task.redelivery import Finished
from celery_once_task.store import FinishedCheck, FinishedRecord, LockStore
from tests import worker_app as tasks
from tests.support import Worker, events, lock_key_of, running_worker, started, wait_until

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker

VISIBILITY_TIMEOUT = 2
ENV = {"ONCE_TEST_VISIBILITY": str(VISIBILITY_TIMEOUT)}
LEASE = Lease(tasks.HEARTBEAT_TIMEOUT)


def run_until_the_worker_dies(port: int, task: Any, tag: str, queue: str) -> Any:
    """Publish ``task(tag)`` to a worker of its own that dies at the moment under test; return the result."""
    doomed = Worker(port, f"doomed-{tag[:6]}", queues=queue, concurrency=1, env=ENV).wait_ready()
    try:
        result = task.apply_async((tag,), queue=queue)
        doomed.process.wait(30)
    finally:
        doomed.stop()
    # The Redis transport hands an unacknowledged message out again once it is this old.
    deadline = time.time() + VISIBILITY_TIMEOUT + 0.5
    wait_until(lambda: time.time() > deadline, what="the visibility timeout to pass")
    return result


def test_copy_of_a_finished_execution_is_not_run(redis_server: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"lost-ack-{tag[:8]}"
    result = run_until_the_worker_dies(redis_server.port, tasks.lost_ack, tag, queue)
    assert result.state == states.SUCCESS
    with running_worker(redis_server.port, f"heir-{tag[:6]}", queues=queue, env=ENV) as heir:
        wait_until(lambda: f"{result.id}]: execution ignored: this attempt already ran" in heir.read_log(),
                   what="the redelivered copy to be ignored")
    assert len(events(recs, tag, "run")) == 1
    assert result.get(timeout=5) == tag
    assert locks.exists(lock_key_of(tasks.lost_ack, "running", tag), lock_key_of(tasks.lost_ack, "queue", tag)) == 0


def test_copy_of_a_finished_execution_without_a_result_is_not_run(redis_server: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"lost-ack-nr-{tag[:8]}"
    result = run_until_the_worker_dies(redis_server.port, tasks.lost_ack_without_result, tag, queue)
    with running_worker(redis_server.port, f"heir-{tag[:6]}", queues=queue, env=ENV) as heir:
        wait_until(lambda: f"{result.id}]: execution ignored: this attempt already ran" in heir.read_log(),
                   what="the redelivered copy to be ignored")
    assert len(events(recs, tag, "run")) == 1


def test_execution_whose_result_was_lost_with_its_worker_runs_again(redis_server: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"lost-result-{tag[:8]}"
    result = run_until_the_worker_dies(redis_server.port, tasks.lost_result, tag, queue)
    assert result.state == states.PENDING  # released, and killed before it stored its result
    with running_worker(redis_server.port, f"heir-{tag[:6]}", queues=queue, env=ENV) as heir:
        assert result.get(timeout=LEASE.ttl + 20) == tag
        assert f"{result.id}]: lock recovered: this attempt ended but its result was never stored (its worker is " \
               "gone)" in heir.read_log()
    assert len(events(recs, tag, "run")) == 2


def test_execution_whose_result_was_lost_with_its_pool_process_runs_again(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.lost_result_in_pool.delay(tag)  # its pool process dies: the broker delivers it again
    assert result.get(timeout=30) == tag
    assert len(events(recs, tag, "run")) == 2


def test_a_new_call_with_the_task_id_of_a_finished_call_runs(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    task_id = str(uuid.uuid4())
    assert tasks.echo.apply_async((tag, 1), task_id=task_id).get(timeout=20) == 1
    # Its result is the first call's until it runs: wait for the run itself.
    tasks.echo.apply_async((tag, 1), task_id=task_id)
    wait_until(lambda: len(events(recs, tag, "run")) == 2, what="the second call with the same id to run")


def test_a_finished_execution_leaves_its_record_and_no_lock(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.gated.delay(tag)
    started(recs, tag)
    running = lock_key_of(tasks.gated, "running", tag)
    holder = RunningOwner.parse(locks.get(running))
    assert holder is not None
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=20)
    key = finished_key(running, result.id, "-")
    guard = brokers.default_guard(tasks.app.conf)
    record = Finished.parse(locks.get(key), guard)
    assert record is not None
    assert (record.attempt, record.instance, record.stores_result) == (0, holder.instance, True)
    assert (guard - 100) * 1000 < locks.pttl(key) <= guard * 1000
    assert locks.exists(running, legacy_finished_key(running, result.id)) == 0


# -- the record, against the lock store alone ---------------------------------------


def test_record_lives_in_the_hash_slot_of_its_running_lock() -> None:
    for running in ("once_task:app.tasks.t:0123456789abcdef:running", "once_task:a{b}c:0123456789abcdef:running",
                    "once_task:a}b{:0123456789abcdef:running"):
        key = finished_key(running, str(uuid.uuid4()), "-")
        assert slot_of(key) == slot_of(running) and slot_of(legacy_finished_key(running, "t")) == slot_of(running)


def test_an_earlier_attempt_never_replaces_the_record_of_a_later_one(locks: Any) -> None:
    store = LockStore(locks)
    running = f"once_task:tests.records:{uuid.uuid4().hex[:16]}:running"
    task_id = str(uuid.uuid4())
    key = finished_key(running, task_id, "-")
    # A retry that overtook the attempt that published it may release its lock first.
    for attempt in (1, 0):
        owner = RunningOwner(task_id, attempt, "", INSTANCE, True)
        record = Finished(attempt, "-", INSTANCE, 0, True, 0.0)
        store.locks.release_running(running, owner.token, FinishedRecord(key, record.value(), 60, attempt, "-"))
    stored = Finished.parse(locks.get(key), 60)
    assert stored is not None and (stored.attempt, stored.instance) == (1, INSTANCE)
    copy = RunningOwner(task_id, 0, "", INSTANCE, True)
    pickup = store.locks.pickup(None, task_id, running, copy, 60, finished=FinishedCheck(key, 0, "-"))
    assert not pickup.acquired and pickup.finished is not None
    assert locks.exists(running) == 0
