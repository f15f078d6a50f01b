"""Windows: a call is a duplicate until its run ends (``queue_lock_until="end"``), or for a period (``unique_for``)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest
from celery import states
from kombu.exceptions import SerializerNotInstalled

from celery_once_task import OnceTask, OnceTaskDuplicate
from celery_once_task.ownership import Lease
from tests import worker_app as tasks
from tests.support import Worker, events, gated_run, lock_key_of, started, wait_until

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker

LEASE = Lease(tasks.HEARTBEAT_TIMEOUT)


def no_locks_left(locks: Any, task: Any, *args: Any) -> bool:
    return locks.exists(*(lock_key_of(task, kind, *args) for kind in ("queue", "running"))) == 0


# -- queue_lock_until="end" ----------------------------------------------------------------


def test_a_call_made_while_the_same_call_runs_is_dropped(worker: Worker, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    with gated_run(tasks.until_end, recs, tag):
        assert tasks.until_end.delay(tag) is None
    assert no_locks_left(locks, tasks.until_end, tag)
    assert len(events(recs, tag, "start")) == 1


def test_a_duplicate_of_the_running_call_gets_its_result_under_existing(worker: Worker, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.until_end_existing.delay(tag)
    started(recs, tag)
    again = tasks.until_end_existing.delay(tag)
    assert again is not None and again.id == first.id
    recs.rpush(f"gate:{tag}", 1)
    assert again.get(timeout=20) == tag
    assert len(events(recs, tag, "start")) == 1


def test_a_duplicate_of_the_running_call_raises_under_raise(worker: Worker, recs: Any) -> None:
    tag = uuid.uuid4().hex
    with gated_run(tasks.until_end, recs, tag) as running, pytest.raises(OnceTaskDuplicate) as raised:
        tasks.until_end.apply_async((tag,), once={"queue_lock_conflict": "raise"})
    assert raised.value.holder_id == running.id


def test_the_key_is_free_once_a_run_failed(worker: Worker, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.until_end_failing.delay(tag)
    with pytest.raises(ValueError):
        first.get(timeout=20)
    second = tasks.until_end_failing.delay(tag)
    assert second is not None
    with pytest.raises(ValueError):
        second.get(timeout=20)
    assert len(events(recs, tag, "run")) == 2
    assert no_locks_left(locks, tasks.until_end_failing, tag)


def test_a_retry_keeps_the_key_until_the_call_ends(worker: Worker, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.until_end_retrying.delay(tag)
    started(recs, tag)  # the first attempt, which asks to be retried a second later
    assert tasks.until_end_retrying.delay(tag) is None  # its retry waits: the call goes on
    started(recs, tag, count=2)
    assert tasks.until_end_retrying.delay(tag) is None  # its retry runs
    recs.rpush(f"gate:{tag}", 1)
    assert result.get(timeout=20) == 1
    assert no_locks_left(locks, tasks.until_end_retrying, tag)


def test_a_run_longer_than_a_lease_keeps_its_key(worker: Worker, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    with gated_run(tasks.until_end, recs, tag):
        began = time.monotonic()
        wait_until(lambda: time.monotonic() >= began + LEASE.ttl + 1, timeout=LEASE.ttl + 5,
                   what="a lease to pass while the call runs")  # its worker renews the queue lock with it
        assert tasks.until_end.delay(tag) is None
    assert no_locks_left(locks, tasks.until_end, tag)


@pytest.mark.slow
def test_a_lost_worker_frees_the_key_within_a_lease(redis_server: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"doomed-{tag[:8]}"
    doomed = Worker(redis_server.port, f"doomed-{tag[:6]}", queues=queue, concurrency=1).wait_ready()
    try:
        tasks.until_end.apply_async((tag,), queue=queue)
        started(recs, tag)
        assert tasks.until_end.delay(tag) is None
        doomed.process.kill()
        killed_at = time.monotonic()
        doomed.process.wait(10)
    finally:
        doomed.stop()
    queue_lock = lock_key_of(tasks.until_end, "queue", tag)
    wait_until(lambda: locks.exists(queue_lock) == 0, timeout=LEASE.ttl + 10, what="the dead worker's lease to end")
    assert time.monotonic() - killed_at <= LEASE.ttl + 2
    assert tasks.until_end.apply_async((tag,), queue="parked") is not None


# -- unique_for ----------------------------------------------------------------------


def test_unique_for_drops_a_call_after_a_finished_run_and_accepts_one_after_the_window(worker: Worker,
                                                                                     recs: Any) -> None:
    tag = uuid.uuid4().hex
    called = time.monotonic()
    assert tasks.remind.delay(tag).get(timeout=20) == tag
    time.sleep(0.3)  # a call 0.3 s after the run ended: inside the window all the same
    assert tasks.remind.delay(tag) is None
    wait_until(lambda: time.monotonic() >= called + 3.6, timeout=10, what="the 3 s window to pass")
    later = tasks.remind.delay(tag)
    assert later is not None and later.get(timeout=20) == tag
    assert len(events(recs, tag, "run")) == 2


def test_unique_for_existing_gets_the_call_that_opened_the_window(worker: Worker, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.remind_alone.delay(tag)
    assert first.get(timeout=20) == tag
    again = tasks.remind_alone.delay(tag)
    assert again is not None and again.id == first.id
    assert again.get(timeout=20) == tag
    assert len(events(recs, tag, "run")) == 1


def test_after_the_window_the_key_is_free_though_nothing_ran(broker: Any) -> None:
    tag = uuid.uuid4().hex
    window = {"queue_lock": False, "unique_for": 0.5}
    called = time.monotonic()
    assert tasks.parked.apply_async((tag,), once=window) is not None  # queued, never run
    assert tasks.parked.apply_async((tag,), once=window) is None
    wait_until(lambda: time.monotonic() >= called + 0.6, timeout=5, what="the window to pass")
    assert tasks.parked.apply_async((tag,), once=window) is not None


def test_a_call_that_takes_its_queue_lock_and_a_window_is_queued_once(broker: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked.apply_async((tag,), once={"unique_for": 60})
    assert first is not None
    assert tasks.parked.apply_async((tag,), once={"unique_for": 60}) is None
    assert tasks.parked.apply_async((tag,), once={"unique_for": None, "queue_lock": False}) is not None


def test_a_call_whose_message_could_not_be_published_leaves_no_window(locks: Any) -> None:
    tag = uuid.uuid4().hex
    with pytest.raises(SerializerNotInstalled):
        # No such serializer: the publish fails after the locks were taken.
        tasks.parked.apply_async((tag,), serializer="no-such-serializer", once={"unique_for": 60})
    window = f"once_task:{{{lock_key_of(tasks.parked, 'queue', tag)}}}:unique"
    assert locks.exists(lock_key_of(tasks.parked, "queue", tag), window) == 0
    assert tasks.parked.apply_async((tag,), once={"unique_for": 60}) is not None


# -- what is refused where the task is defined -----------------------------------------


@pytest.mark.parametrize(("options", "why"), [
    ({"queue_lock_until": "end", "running_lock_conflict": "wait"}, '"wait" runs a call made during a run after it'),
    ({"queue_lock_until": "end", "running_limit": 2}, "lets one call of a key in at a time"),
    ({"queue_lock_until": "end", "queue_lock": False}, "keeps the call's queue lock until its run ends"),
    ({"queue_lock_until": "end", "running_lock": False}, "held as the run's lease"),
    ({"unique_for": 60, "running_lock_conflict": "wait"}, "unique_for drops the calls made within its window"),
    ({"unique_for": 60, "debounce": 1.0}, "a debounced call takes no queue lock"),
    ({"queue_lock_conflict": "replace", "queue_lock": False}, "only a call that met a queued call's queue lock"),
], ids=["end-wait", "end-limit", "end-no-queue-lock", "end-no-running-lock", "unique-wait", "unique-debounce",
        "replace-no-queue-lock"])
def test_options_that_contradict_are_refused_where_the_task_is_defined(options: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=rf"^tests\.contradicting: .* cannot be used with .*{re.escape(why)}"):
        @tasks.app.task(base=OnceTask, name="tests.contradicting", shared=False, **options)
        def contradicting(tag: str) -> None: ...

        contradicting.run  # noqa: B018 - a task is built when first used


def test_a_call_whose_options_contradict_the_tasks_is_refused() -> None:
    with pytest.raises(ValueError, match=r"tests\.worker_app\.waiting_gated: once=.*queue_lock_until"):
        tasks.waiting_gated.apply_async((uuid.uuid4().hex,), once={"queue_lock_until": "end"})


def test_a_finished_call_leaves_its_window_and_nothing_else_until_it_expires(worker: Worker, locks: Any,
                                                                            recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.remind.delay(tag)
    assert result.get(timeout=20) == tag and result.state == states.SUCCESS
    window = f"once_task:{{{lock_key_of(tasks.remind, 'queue', tag)}}}:unique"
    assert locks.get(window) == result.id.encode()
    assert 0 < locks.pttl(window) <= 3000
    assert no_locks_left(locks, tasks.remind, tag)
