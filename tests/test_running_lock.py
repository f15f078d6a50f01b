"""The running lock: taken when execution starts, released when it ends in any way."""

from __future__ import annotations

import json
import pickle
import time
import uuid
from typing import Any

import pytest
from celery.exceptions import Reject

from celery_once_task import OnceTaskError, OnceTaskLocked
from celery_once_task.ownership import Lease, RunningOwner
from celery_once_task.record_keys import heartbeat_key
from tests import worker_app as tasks
from tests.support import events, running_worker, wait_until

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker


def running_key(task: Any, *args: Any) -> str:
    return str(task.once_key(args, {}, "running"))


def start(task: Any, recs: Any, tag: str) -> Any:
    result = task.delay(tag)
    wait_until(lambda: events(recs, tag, "start"), what=f"{task.name}({tag}) to start")
    return result


def test_running_lock_is_held_while_the_task_runs(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = start(tasks.gated, recs, tag)
    holder = RunningOwner.parse(locks.get(running_key(tasks.gated, tag)))
    assert holder is not None and holder.task_id == result.id
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=20)


def test_running_lock_value_names_worker_and_attempt(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = start(tasks.gated, recs, tag)
    holder = RunningOwner.parse(locks.get(running_key(tasks.gated, tag)))
    assert holder is not None and holder.retries == 0 and holder.heartbeat
    # A worker with a heartbeat is named by its instance's heartbeat key, which the value names.
    assert json.loads(locks.get(heartbeat_key(holder.instance)))["worker"] == worker.name
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=20)


def test_running_lock_is_a_lease_of_the_heartbeat_timeout(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = start(tasks.gated, recs, tag)
    lease = Lease(tasks.HEARTBEAT_TIMEOUT)
    assert 0 < locks.pttl(running_key(tasks.gated, tag)) <= lease.ttl * 1000
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=20)


def test_live_execution_keeps_its_running_lock_past_lease_and_running_lock_timeout(
    worker: Any, locks: Any, recs: Any
) -> None:
    tag = uuid.uuid4().hex
    result = start(tasks.short_running_lock, recs, tag)
    key = running_key(tasks.short_running_lock, tag)
    value = locks.get(key)
    deadline = time.monotonic() + max(Lease(tasks.HEARTBEAT_TIMEOUT).ttl, 2) * 1.5
    # Sampled for longer than both the lease and running_lock_timeout=2: the
    # value never changes and never disappears.
    while time.monotonic() < deadline:
        assert locks.get(key) == value
        time.sleep(0.2)
    duplicate = tasks.app.send_task(tasks.short_running_lock.name, args=[tag])
    with pytest.raises(OnceTaskLocked):
        duplicate.get(timeout=20)
    recs.rpush(f"gate:{tag}", 1)
    assert result.get(timeout=20) == tag
    assert locks.exists(key) == 0


@pytest.fixture(scope="module")
def worker_without_boot_step(redis_server: Any) -> Any:
    with running_worker(redis_server.port, "no-bootstep", pool="solo", queues="no-bootstep",
                        env={"ONCE_TEST_WITHOUT_BOOTSTEP": "1"}) as worker:
        yield worker


def test_without_the_boot_step_running_lock_timeout_is_the_ttl(
    worker_without_boot_step: Any, locks: Any, recs: Any
) -> None:
    tag = uuid.uuid4().hex
    result = tasks.gated.apply_async((tag,), queue="no-bootstep")
    wait_until(lambda: events(recs, tag, "start"), what="the task to start")
    assert 3590_000 < locks.pttl(running_key(tasks.gated, tag)) <= 3600_000
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=20)


def test_without_the_boot_step_per_task_running_lock_timeout_is_the_ttl(
    worker_without_boot_step: Any, locks: Any, recs: Any
) -> None:
    tag = uuid.uuid4().hex
    result = tasks.own_timeouts.apply_async((tag,), queue="no-bootstep")
    wait_until(lambda: events(recs, tag, "start"), what="the task to start")
    assert 100_000 < locks.pttl(running_key(tasks.own_timeouts, tag)) <= 110_000
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=20)


def test_duplicate_execution_is_rejected_with_once_task_locked(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = start(tasks.gated, recs, tag)
    duplicate = tasks.app.send_task("tests.worker_app.gated", args=[tag])
    with pytest.raises(OnceTaskLocked, match=first.id):
        duplicate.get(timeout=20)
    assert len(events(recs, tag, "start")) == 1
    recs.rpush(f"gate:{tag}", 1)
    first.get(timeout=20)


def test_rejection_is_logged_with_task_name_id_and_key(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = start(tasks.gated, recs, tag)
    duplicate = tasks.app.send_task("tests.worker_app.gated", args=[tag])
    with pytest.raises(OnceTaskLocked):
        duplicate.get(timeout=20)
    line = f"tests.worker_app.gated[{duplicate.id}]: execution rejected: running lock {running_key(tasks.gated, tag)}"
    wait_until(lambda: line in worker.read_log(), what="the rejection in the worker log")
    recs.rpush(f"gate:{tag}", 1)
    first.get(timeout=20)


def test_running_lock_is_released_on_success(worker: Any, locks: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.echo.delay(tag).get(timeout=20)
    assert locks.exists(running_key(tasks.echo, tag)) == 0


def test_running_lock_is_released_on_failure(worker: Any, locks: Any) -> None:
    tag = uuid.uuid4().hex
    with pytest.raises(ValueError, match=tag):
        tasks.failing.delay(tag).get(timeout=20)
    assert locks.exists(running_key(tasks.failing, tag)) == 0


def test_running_lock_is_released_before_the_result_is_stored(worker: Any) -> None:
    """A caller that saw the result can run the same call again at once."""
    tag = uuid.uuid4().hex
    for _ in range(5):
        assert tasks.echo.delay(tag).get(timeout=20) is None


def test_running_lock_false_allows_parallel_runs(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = start(tasks.without_running_lock, recs, tag)
    second = tasks.app.send_task("tests.worker_app.without_running_lock", args=[tag])
    wait_until(lambda: len(events(recs, tag, "start")) == 2, what="both executions to run side by side")
    recs.rpush(f"gate:{tag}", 1, 1)
    assert first.get(timeout=20) == second.get(timeout=20) == tag


def test_running_lock_false_takes_no_running_lock(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = start(tasks.without_running_lock, recs, tag)
    assert locks.exists(running_key(tasks.without_running_lock, tag)) == 0
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=20)


def test_queue_lock_false_still_rejects_parallel_runs(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = start(tasks.without_queue_lock, recs, tag)
    second = tasks.without_queue_lock.delay(tag)
    with pytest.raises(OnceTaskLocked):
        second.get(timeout=20)
    recs.rpush(f"gate:{tag}", 1)
    first.get(timeout=20)


def test_direct_call_takes_no_lock(locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    assert tasks.echo(tag, 5) == 5
    assert locks.exists(running_key(tasks.echo, tag)) == 0


def test_task_calling_itself_as_a_function_is_not_rejected(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    assert tasks.recursive.delay(tag, 3).get(timeout=20) == 0
    assert [event["depth"] for event in events(recs, tag, "run")] == [3, 2, 1, 0]


def test_once_task_locked_is_a_reject_and_a_library_error() -> None:
    assert issubclass(OnceTaskLocked, Reject)
    assert issubclass(OnceTaskLocked, OnceTaskError)


def test_once_task_locked_pickles_with_its_reason() -> None:
    error = pickle.loads(pickle.dumps(OnceTaskLocked("held by x", requeue=False)))
    assert isinstance(error, OnceTaskLocked)
    assert (error.reason, error.requeue, str(error)) == ("held by x", False, "held by x")
