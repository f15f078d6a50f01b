"""Eager mode (``task_always_eager``), ``task.apply()`` and direct calls ``task(...)``.

None of them goes through the broker, so none takes a queue lock. ``apply()``
and eager ``delay()`` run the task through Celery's tracer and take the running
lock around the body; a plain call ``task(...)`` runs the body as a function.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import chain

from celery_once_task import OnceTaskLocked
from tests import worker_app as tasks
from tests.support import events, gated_run, wait_until


def lock_keys(task: Any, *args: Any) -> list[str]:
    return [str(task.once_key(args, {}, lock_type)) for lock_type in ("queue", "running")]


@pytest.fixture
def eager(app: Any) -> Iterator[Any]:
    """``task_always_eager`` for one test; the app object is shared by the whole session."""
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, False
    try:
        yield app
    finally:
        app.conf.task_always_eager, app.conf.task_eager_propagates = saved


@pytest.fixture
def eager_propagating(eager: Any) -> Any:
    eager.conf.task_eager_propagates = True
    return eager


@pytest.fixture
def running_on_worker(worker: Any, recs: Any) -> Iterator[str]:
    """A ``gated(tag)`` running on the shared worker, holding its running lock; yields the tag.

    Request it before ``eager``: in eager mode its own ``delay()`` would run in the test.
    """
    tag = uuid.uuid4().hex
    with gated_run(tasks.gated, recs, tag):
        yield tag


# -- eager mode -------------------------------------------------------------------


def test_eager_delay_runs_the_task_and_returns_its_result(eager: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.echo.delay(tag, 5)
    assert (result.state, result.get()) == ("SUCCESS", 5)
    assert len(events(recs, tag, "run")) == 1


def test_eager_delay_leaves_no_lock(eager: Any, locks: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.echo.delay(tag, 5)
    assert locks.exists(*lock_keys(tasks.echo, tag, 5)) == 0


def test_eager_failure_is_kept_in_the_result_without_propagation(eager: Any, locks: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.failing.delay(tag)
    assert result.state == "FAILURE"
    with pytest.raises(ValueError, match=tag):
        result.get()
    assert locks.exists(*lock_keys(tasks.failing, tag)) == 0


def test_eager_failure_raises_from_delay_with_propagation(eager_propagating: Any, locks: Any) -> None:
    tag = uuid.uuid4().hex
    with pytest.raises(ValueError, match=tag):
        tasks.failing.delay(tag)
    assert locks.exists(*lock_keys(tasks.failing, tag)) == 0


def test_eager_call_is_not_deduplicated_against_a_queued_message(eager: Any, app: Any, recs: Any) -> None:
    """Nothing is queued in eager mode, so the queue lock does not apply."""
    tag = uuid.uuid4().hex
    app.conf.task_always_eager = False
    tasks.echo.apply_async((tag,), queue="parked")
    app.conf.task_always_eager = True
    assert tasks.echo.delay(tag).state == "SUCCESS"
    assert len(events(recs, tag, "run")) == 1


def test_eager_duplicate_of_a_running_task_fails_with_once_task_locked(
    running_on_worker: str, eager: Any, recs: Any
) -> None:
    result = tasks.gated.delay(running_on_worker)
    assert result.state == "FAILURE"
    with pytest.raises(OnceTaskLocked, match="is running"):
        result.get()
    assert len(events(recs, running_on_worker, "start")) == 1


def test_eager_duplicate_raises_once_task_locked_from_delay_with_propagation(
    running_on_worker: str, eager_propagating: Any, recs: Any
) -> None:
    with pytest.raises(OnceTaskLocked, match="is running"):
        tasks.gated.delay(running_on_worker)
    assert len(events(recs, running_on_worker, "start")) == 1


def test_eager_duplicate_leaves_the_running_tasks_lock_alone(
    running_on_worker: str, eager: Any, locks: Any
) -> None:
    running_key = lock_keys(tasks.gated, running_on_worker)[1]
    held = locks.get(running_key)
    tasks.gated.delay(running_on_worker)
    assert locks.get(running_key) == held


def test_eager_duplicate_calls_its_errback(running_on_worker: str, eager: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.gated.apply_async((running_on_worker,), link_error=tasks.errback.s(tag=tag))
    assert [(event["task_id"], event["error"]) for event in events(recs, tag, "errback")] == [
        (result.id, "OnceTaskLocked")
    ]



def test_eager_chain_stops_at_a_duplicate_step(running_on_worker: str, eager: Any, recs: Any) -> None:
    """As at a failing step: the chain raises instead of going on with ``None``."""
    tag = uuid.uuid4().hex
    steps = chain(tasks.echo.si(tag, 1), tasks.gated.si(running_on_worker), tasks.echo.si(tag, 3))
    with pytest.raises(OnceTaskLocked, match="is running"):
        steps.apply_async()
    assert [event["value"] for event in events(recs, tag, "run")] == [1]

# -- apply() ------------------------------------------------------------------------


def test_apply_runs_the_task_and_leaves_no_lock(locks: Any) -> None:
    tag = uuid.uuid4().hex
    assert tasks.echo.apply((tag, 7)).get() == 7
    assert locks.exists(*lock_keys(tasks.echo, tag, 7)) == 0


def test_apply_holds_the_running_lock_while_the_task_runs(locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(tasks.gated.apply((tag,))))
    thread.start()
    try:
        wait_until(lambda: events(recs, tag, "start"), what="gated to start in apply()")
        queue_key, running_key = lock_keys(tasks.gated, tag)
        assert locks.exists(running_key) == 1
        assert locks.exists(queue_key) == 0
    finally:
        recs.rpush(f"gate:{tag}", 1)
        thread.join(30)
    assert results[0].get() == tag
    assert locks.exists(running_key) == 0


def test_apply_of_a_failing_task_leaves_no_lock(locks: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.failing.apply((tag,))
    assert result.state == "FAILURE"
    assert locks.exists(*lock_keys(tasks.failing, tag)) == 0


def test_apply_of_a_duplicate_of_a_running_task_fails_with_once_task_locked(running_on_worker: str) -> None:
    result = tasks.gated.apply((running_on_worker,))
    with pytest.raises(OnceTaskLocked, match="is running"):
        result.get()


# -- direct calls ---------------------------------------------------------------------


def test_direct_call_of_a_failing_task_raises_and_leaves_no_lock(locks: Any) -> None:
    tag = uuid.uuid4().hex
    with pytest.raises(ValueError, match=tag):
        tasks.failing(tag)
    assert locks.exists(*lock_keys(tasks.failing, tag)) == 0


def test_direct_call_runs_even_while_the_same_call_runs_on_a_worker(running_on_worker: str, recs: Any) -> None:
    """A direct call is a plain function call: no lock is checked or taken."""
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(tasks.gated(running_on_worker)))
    thread.start()
    try:
        wait_until(lambda: len(events(recs, running_on_worker, "start")) == 2, what="the direct call to start")
    finally:
        # Two gates: the worker's execution waits at it too (the fixture's own is left over).
        recs.rpush(f"gate:{running_on_worker}", 1, 1)
        thread.join(30)
    assert results == [running_on_worker]

