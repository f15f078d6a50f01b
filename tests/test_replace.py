"""``queue_lock_conflict="replace"``: a duplicate of a queued call replaces its arguments; it runs once, the newest."""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import pytest

from tests import worker_app as tasks
from tests.support import Worker, events, lock_key_of, started, wait_until

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker


def arguments_key(task: Any, *args: Any) -> str:
    return f"once_task:{{{lock_key_of(task, 'queue', *args)}}}:args"


def test_a_queued_call_runs_once_with_the_newest_arguments_and_every_call_gets_its_id(worker: Worker,
                                                                                     recs: Any) -> None:
    account = uuid.uuid4().hex
    first = tasks.push_balance.apply_async((account, 1), countdown=1.5)  # queued for a moment
    calls = [tasks.push_balance.delay(account, balance) for balance in range(2, 6)]
    assert {call.id for call in calls} == {first.id}
    assert first.get(timeout=20) == 5
    assert [run["balance"] for run in events(recs, account, "run")] == [5]


def test_a_call_made_after_the_pickup_is_a_call_of_its_own(worker: Worker, recs: Any) -> None:
    account = uuid.uuid4().hex
    first = tasks.push_balance_late.delay(account, 1)
    started(recs, account)
    later = tasks.push_balance_late.apply_async((account, 2), queue="parked")
    assert later is not None and later.id != first.id
    recs.rpush(f"gate:{account}", 1)
    assert first.get(timeout=20) == 1


def test_the_replaced_arguments_go_with_the_end_of_the_run(worker: Worker, locks: Any) -> None:
    account = uuid.uuid4().hex
    first = tasks.push_balance.apply_async((account, 1), countdown=1)
    assert tasks.push_balance.delay(account, 2).id == first.id
    assert locks.exists(arguments_key(tasks.push_balance, account, 0)) == 1
    assert first.get(timeout=20) == 2
    assert locks.exists(arguments_key(tasks.push_balance, account, 0),
                        lock_key_of(tasks.push_balance, "queue", account, 0)) == 0


def test_arguments_that_are_not_json_are_refused_at_the_call_naming_the_task() -> None:
    with pytest.raises(TypeError, match=r"tests\.worker_app\.push_balance: .*must be JSON"):
        tasks.push_balance.delay(uuid.uuid4().hex, object())


def test_a_copy_of_the_message_delivered_again_runs_with_the_newest_arguments(worker: Worker, locks: Any,
                                                                             recs: Any) -> None:
    """The worker's process dies in the run: the broker delivers the message again; it runs with the same ones."""
    account = uuid.uuid4().hex
    first = tasks.push_balance_late.apply_async((account, 1), countdown=1)
    assert tasks.push_balance_late.delay(account, 7).id == first.id
    killed = started(recs, account)[0]
    os.kill(killed["pid"], signal.SIGKILL)
    again = started(recs, account, count=2)[1]
    recs.rpush(f"gate:{account}", 1)
    assert first.get(timeout=20) == 7
    assert (killed["balance"], again["balance"]) == (7, 7)
    wait_until(lambda: locks.exists(arguments_key(tasks.push_balance_late, account, 0)) == 0,
               what="the replaced arguments to go with the end of the run")
