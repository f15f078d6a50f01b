"""Chains, groups and chords with ``OnceTask`` members, on the shared worker and the Redis result backend.

Canvas members have their result ids fixed before they are published. A member
that is a duplicate when it is published gets that result marked FAILURE with
``OnceTaskLocked``; a member rejected when it starts (its running lock held by
another task) is stored as FAILURE too. Either way the canvas fails promptly,
never waits for ever, and never carries on as if the member had run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError

from celery_once_task import OnceTaskLocked
from tests import worker_app as tasks
from tests.support import events, gated_run, wait_until

#: Long enough for a loaded machine; a canvas that hangs fails here instead of never.
TIMEOUT = 20


def lock_keys(task: Any, *args: Any, **kwargs: Any) -> list[str]:
    return [str(task.once_key(args, kwargs, lock_type)) for lock_type in ("queue", "running")]


def values(recs: Any, tag: str) -> list[Any]:
    return [event["value"] for event in events(recs, tag, "run")]


@pytest.fixture(autouse=True)
def worker_app_is_current() -> None:
    """Celery 5.0's Redis backend completes a chord through the *current* app.

    The publisher completes a chord whose header it marked failed; other test
    modules create apps of their own, and the last one created is current.
    """
    tasks.app.set_current()


@pytest.fixture(params=["queued", "running"])
def held(request: Any, worker: Any, recs: Any) -> Iterator[str]:
    """A tag whose call ``gated(tag)`` is already queued or running; a member ``gated.si(tag)`` is a duplicate.

    queued: its message waits in a queue no worker consumes, holding the queue
    lock, so the member is a duplicate when it is published.
    running: it runs on the shared worker, holding the running lock, so the
    member is published and rejected when it starts.
    """
    tag = uuid.uuid4().hex
    if request.param == "queued":
        assert tasks.gated.apply_async((tag,), queue="parked") is not None
        yield tag
        return
    with gated_run(tasks.gated, recs, tag, TIMEOUT):
        yield tag


# -- canvases without duplicates ------------------------------------------------------


def test_chain_runs_and_leaves_no_locks(worker: Any, locks: Any) -> None:
    x = uuid.uuid4().int % 10**9
    result = chain(tasks.add.s(x, 1), tasks.add.s(2)).apply_async()
    assert result.get(timeout=TIMEOUT) == x + 3
    assert locks.exists(*lock_keys(tasks.add, x, 1), *lock_keys(tasks.add, x + 1, 2)) == 0


def test_group_runs_and_leaves_no_locks(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = group(tasks.echo.si(tag, n) for n in range(4)).apply_async()
    assert result.get(timeout=TIMEOUT) == [0, 1, 2, 3]
    assert locks.exists(*(key for n in range(4) for key in lock_keys(tasks.echo, tag, n))) == 0


def test_chord_runs_and_leaves_no_locks(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = chord(tasks.echo.si(tag, n) for n in (1, 2, 3))(tasks.total.s(tag=tag))
    assert result.get(timeout=TIMEOUT) == 6
    member_keys = [key for n in (1, 2, 3) for key in lock_keys(tasks.echo, tag, n)]
    assert locks.exists(*member_keys, *lock_keys(tasks.total, [1, 2, 3], tag=tag)) == 0


# -- groups -----------------------------------------------------------------------------


def test_group_with_two_identical_members_runs_one_and_fails_the_other(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    # The countdown keeps the first member queued (its queue lock held) while the second is published.
    result = group(tasks.echo.si(tag, 1), tasks.echo.si(tag, 1)).apply_async(countdown=1)
    with pytest.raises(OnceTaskLocked, match=result.results[0].id):
        result.get(timeout=TIMEOUT)
    assert result.results[1].state == "FAILURE"
    assert result.results[0].get(timeout=TIMEOUT) == 1
    assert values(recs, tag) == [1]


def test_group_with_a_duplicate_member_raises_once_task_locked(held: str, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = group(tasks.echo.si(tag, 1), tasks.gated.si(held)).apply_async()
    with pytest.raises(OnceTaskLocked):
        result.get(timeout=TIMEOUT)
    assert result.results[1].state == "FAILURE"
    assert result.results[0].get(timeout=TIMEOUT) == 1


# -- chords -------------------------------------------------------------------------------


def duplicate_chord(held: str, position: str = "last", body: Any = None) -> Any:
    header = [tasks.echo.si(uuid.uuid4().hex, 1), tasks.gated.si(held)]
    if position == "first":
        # Published, and so marked failed if it is a duplicate, before the
        # header's last member sets the chord's size in the result backend.
        header.reverse()
    return chord(header)(body or tasks.total.s())


def body_of(result: Any) -> Any:
    """The chord body's result on its own, as a caller that kept only its id sees it."""
    return tasks.total.AsyncResult(result.id)


def test_chord_with_a_duplicate_in_its_header_raises_once_task_locked(held: str) -> None:
    result = duplicate_chord(held)
    with pytest.raises(OnceTaskLocked):
        result.get(timeout=TIMEOUT)


@pytest.mark.parametrize("position", ["first", "last"])
def test_chord_body_fails_with_chord_error_when_a_header_member_is_a_duplicate(held: str, position: str) -> None:
    result = duplicate_chord(held, position)
    with pytest.raises(ChordError, match=r"duplicate of queued task|is running"):
        body_of(result).get(timeout=TIMEOUT)


def test_chord_body_does_not_run_when_a_header_member_is_a_duplicate(held: str, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = duplicate_chord(held, body=tasks.total.s(tag=tag))
    with pytest.raises(ChordError):
        body_of(result).get(timeout=TIMEOUT)
    assert events(recs, tag, "run") == []


def test_chord_whose_whole_header_is_duplicates_fails_with_chord_error(worker: Any) -> None:
    queued = [uuid.uuid4().hex, uuid.uuid4().hex]
    for tag in queued:
        tasks.gated.apply_async((tag,), queue="parked")
    # Both members are marked failed here, so this process completes the chord.
    result = chord(tasks.gated.si(tag) for tag in queued)(tasks.total.s())
    with pytest.raises(ChordError, match="duplicate of queued task"):
        body_of(result).get(timeout=TIMEOUT)


def test_chord_whose_body_is_a_duplicate_raises_once_task_locked(worker: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.total.apply_async(([1],), {"tag": tag}, queue="parked")
    result = chord([tasks.echo.si(uuid.uuid4().hex, 1)])(tasks.total.s(tag=tag))
    with pytest.raises(OnceTaskLocked, match="duplicate of queued task"):
        result.get(timeout=TIMEOUT)


def test_chord_errback_is_called_when_a_header_member_is_a_duplicate(held: str, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = duplicate_chord(held, body=tasks.total.s().on_error(tasks.errback.s(tag=tag)))
    with pytest.raises(ChordError):
        body_of(result).get(timeout=TIMEOUT)
    errbacks = wait_until(lambda: events(recs, tag, "errback"), what="the chord's errback")
    assert [event["task_id"] for event in errbacks] == [result.id]


# -- chains -------------------------------------------------------------------------------


def duplicate_chain(held: str, tag: str, **options: Any) -> Any:
    return chain(tasks.echo.si(tag, 1), tasks.gated.si(held), tasks.echo.si(tag, 3)).apply_async(**options)


def test_chain_with_a_duplicate_step_raises_once_task_locked(held: str) -> None:
    result = duplicate_chain(held, uuid.uuid4().hex)
    with pytest.raises(OnceTaskLocked):
        result.get(timeout=TIMEOUT)
    assert result.parent.state == "FAILURE"


def test_chain_stops_at_a_duplicate_step(held: str, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = duplicate_chain(held, tag)
    with pytest.raises(OnceTaskLocked):
        result.get(timeout=TIMEOUT)
    assert values(recs, tag) == [1]


def test_chain_errback_is_called_for_a_duplicate_step(held: str, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = duplicate_chain(held, tag, link_error=tasks.errback.s(tag=tag))
    with pytest.raises(OnceTaskLocked):
        result.get(timeout=TIMEOUT)
    errbacks = wait_until(lambda: events(recs, tag, "errback"), what="the chain's errback")
    assert [(event["task_id"], event["error"]) for event in errbacks] == [(result.parent.id, "OnceTaskLocked")]
