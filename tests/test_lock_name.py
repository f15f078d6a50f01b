"""``lock_name``: tasks with one lock name and the same values of ``lock_args`` are one key."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery import Celery

from celery_once_task import OnceTask, OnceTaskLocked
from tests import worker_app as tasks
from tests.support import Worker, started
from tests.test_cli import once_json


def account() -> int:
    return uuid.uuid4().int % 10**12


def test_two_tasks_with_one_lock_name_are_one_key() -> None:
    acct = account()
    assert tasks.sync_account.apply_async((acct,), {"full": True}, queue="parked") is not None
    assert tasks.rebuild_account.apply_async((acct,), queue="parked") is None
    assert tasks.rebuild_account.apply_async((acct + 1,), queue="parked") is not None
    assert tasks.sync_account.once_key((acct,), {}, "queue") == tasks.rebuild_account.once_key((acct,), {}, "queue")


def test_one_task_running_refuses_the_other_on_the_same_values(worker: Worker, recs: Any) -> None:
    acct = account()
    syncing = tasks.sync_account.delay(acct)
    started(recs, str(acct))
    rebuilding = tasks.rebuild_account.delay(acct)  # its queue lock is free: the sync runs
    with pytest.raises(OnceTaskLocked):
        rebuilding.get(timeout=20)
    recs.rpush(f"gate:{acct}", 1)
    assert syncing.get(timeout=20) == acct


def test_the_key_is_named_by_the_lock_name_and_its_value_by_the_holder_and_its_task(locks: Any) -> None:
    acct = account()
    result = tasks.sync_account.apply_async((acct,), queue="parked")
    key = tasks.sync_account.once_key((acct,), {}, "queue")
    assert key.startswith("once_task:account:")
    assert locks.get(key) == f"{result.id}\x1ftests.worker_app.sync_account".encode()


def test_the_once_command_shows_the_lock_name_and_which_task_holds_it(worker: Worker, recs: Any) -> None:
    acct = account()
    queued = tasks.rebuild_account.apply_async((acct + 1,), queue="parked")
    running = tasks.sync_account.delay(acct)
    started(recs, str(acct))
    try:
        listed = {(lock["type"], lock["task_id"]): lock for lock in once_json("locks", "--task", "account")}
    finally:
        recs.rpush(f"gate:{acct}", 1)
    assert running.get(timeout=20) == acct
    held = listed[("running", running.id)]
    assert (held["task"], held["holder_task"]) == ("account", "tests.worker_app.sync_account")
    waiting = listed[("queue", queued.id)]
    assert (waiting["task"], waiting["holder_task"], waiting["state"]) == (
        "account", "tests.worker_app.rebuild_account", "queued")


def test_a_lock_args_name_the_task_lacks_is_an_error_at_definition() -> None:
    with pytest.raises(ValueError, match=r"tests\.shared_bad: lock_args names 'acount'"):
        @tasks.app.task(base=OnceTask, name="tests.shared_bad", lock_name="account", lock_args=["acount"],
                        shared=False)
        def shared_bad(account: int) -> None: ...

        shared_bad.run  # noqa: B018 - a task is built when first used


@pytest.mark.parametrize("name", ["", "has space", "{tag}", 7])
def test_a_lock_name_that_cannot_stand_in_a_key_is_an_error_at_definition(name: Any) -> None:
    with pytest.raises(ValueError, match=r"tests\.bad_name: lock_name must be a text"):
        @tasks.app.task(base=OnceTask, name="tests.bad_name", lock_name=name, shared=False)
        def bad_name(account: int) -> None: ...

        bad_name.run  # noqa: B018 - a task is built when first used


def test_tasks_that_share_a_lock_name_but_not_their_locks_are_refused_at_first_use() -> None:
    """Of the tasks the app registered by then: a worker's app has them all."""
    app = Celery("lock-name-mismatch", set_as_current=False)

    @app.task(base=OnceTask, name="tests.mismatch.one", lock_name="shared", shared=False)
    def one(item: int) -> None: ...

    @app.task(base=OnceTask, name="tests.mismatch.two", lock_name="shared", running_limit=2, queue_lock=False,
              shared=False)
    def two(item: int) -> None: ...

    app.finalize()
    with pytest.raises(ValueError, match=r"tests\.mismatch\.\w+ and tests\.mismatch\.\w+ share lock_name 'shared'"):
        one.once_digest((1,), {})
