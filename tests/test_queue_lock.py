"""The queue lock: taken at apply_async()/delay(), released when a worker picks the task up."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from typing import Any

import pytest
from kombu.exceptions import OperationalError

from celery_once_task import OnceTaskLocked
from tests import worker_app as tasks
from tests.support import events, wait_until

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker


def queue_key(task: Any, *args: Any) -> str:
    return str(task.once_key(args, {}, "queue"))


def test_first_call_is_published_and_takes_the_queue_lock(locks: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.parked.delay(tag)
    assert result is not None
    assert locks.get(queue_key(tasks.parked, tag)) == result.id.encode()


def test_duplicate_call_returns_none(locks: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked.delay(tag)
    assert tasks.parked.delay(tag) is None
    assert tasks.parked.apply_async((tag,)) is None
    assert locks.get(queue_key(tasks.parked, tag)) == first.id.encode()


@pytest.mark.redis_broker  # reads the Redis broker's lists
def test_duplicate_call_publishes_no_message(broker: Any) -> None:
    tag = uuid.uuid4().hex
    for _ in range(5):
        tasks.parked.delay(tag)
    assert sum(tag.encode() in raw for raw in broker.lrange("parked", 0, -1)) == 1


def test_calls_with_other_arguments_are_not_duplicates() -> None:
    tag = uuid.uuid4().hex
    assert tasks.parked.delay(tag) is not None
    assert tasks.parked.delay(tag + "-other") is not None


def test_queue_lock_has_the_configured_ttl(locks: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    assert 3590_000 < locks.pttl(queue_key(tasks.parked, tag)) <= 3600_000


def test_per_task_queue_lock_timeout_is_the_ttl(locks: Any, recs: Any, worker: Any) -> None:
    tag = uuid.uuid4().hex
    # Published with a countdown so that the lock can be read before pickup.
    result = tasks.own_timeouts.apply_async((tag,), countdown=2)
    ttl = locks.pttl(queue_key(tasks.own_timeouts, tag))
    assert 70_000 < ttl <= 72_000
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=30)


def test_countdown_longer_than_the_ttl_keeps_the_lock_until_pickup(locks: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.apply_async((tag,), countdown=7200)
    assert locks.pttl(queue_key(tasks.parked, tag)) > 7200_000 + 3590_000


def test_worker_releases_the_queue_lock_at_pickup(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.gated.delay(tag)
    wait_until(lambda: events(recs, tag, "start"), what="the task to start")
    assert locks.exists(queue_key(tasks.gated, tag)) == 0
    # While the first runs, the same call may be queued again.
    second = tasks.gated.delay(tag)
    assert second is not None
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag


def test_call_after_the_task_finished_is_published(worker: Any) -> None:
    tag = uuid.uuid4().hex
    assert tasks.echo.delay(tag).get(timeout=20) is None
    again = tasks.echo.delay(tag)
    assert again is not None
    again.get(timeout=20)


def test_publish_failure_releases_the_lock_and_propagates(locks: Any) -> None:
    tag = uuid.uuid4().hex
    with pytest.raises(OperationalError):
        # Nothing listens on the broker URL: the publish fails after the lock was taken.
        tasks.parked.apply_async((tag,), connection=tasks.app.connection_for_write("redis://127.0.0.1:1/0"),
                                 retry=False)
    assert locks.exists(queue_key(tasks.parked, tag)) == 0
    assert tasks.parked.delay(tag) is not None


@pytest.mark.redis_broker  # reads the Redis broker's lists
def test_queue_lock_false_publishes_every_call(broker: Any, locks: Any) -> None:
    tag = uuid.uuid4().hex
    assert tasks.without_queue_lock.apply_async((tag,), queue="parked") is not None
    assert tasks.without_queue_lock.apply_async((tag,), queue="parked") is not None
    assert locks.exists(queue_key(tasks.without_queue_lock, tag)) == 0


def test_duplicate_with_a_fixed_task_id_gets_a_failed_result(locks: Any) -> None:
    """A caller who fixed the id may wait on it: it must not stay PENDING for ever."""
    tag = uuid.uuid4().hex
    first = tasks.parked.delay(tag)
    fixed = str(uuid.uuid4())
    assert tasks.parked.apply_async((tag,), task_id=fixed) is None
    result = tasks.parked.AsyncResult(fixed)
    assert result.state == "FAILURE"
    with pytest.raises(OnceTaskLocked, match=first.id):
        result.get(timeout=5)


def test_republishing_the_queued_id_leaves_its_result_alone() -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked.delay(tag)
    assert tasks.parked.apply_async((tag,), task_id=first.id) is None
    assert tasks.parked.AsyncResult(first.id).state == "PENDING"


def _call_from_threads(tag: str, threads: int, start: Any, published: Any) -> None:
    from tests import worker_app

    def call() -> None:
        start.wait()
        if worker_app.parked.delay(tag) is not None:
            with published.get_lock():
                published.value += 1

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


@pytest.mark.redis_broker  # reads the Redis broker's lists
def test_many_threads_in_several_processes_publish_exactly_one_message(broker: Any) -> None:
    tag = uuid.uuid4().hex
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    published = context.Value("i", 0)
    processes = [context.Process(target=_call_from_threads, args=(tag, 8, start, published)) for _ in range(4)]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert published.value == 1
    assert sum(tag.encode() in raw for raw in broker.lrange("parked", 0, -1)) == 1
