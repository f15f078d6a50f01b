"""Conflict policies and key selection: what a duplicate gets, and which arguments form the key."""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import uuid
from typing import Any

import pytest
from celery import Celery, states

from celery_once_task import OnceTask, OnceTaskDuplicate, OnceTaskError, configure
from celery_once_task.ownership import Lease
from celery_once_task.settings import resolve
from tests import worker_app as tasks
from tests.support import Worker, events, is_waiting_copy, lock_key_of, running_worker, started, wait_until

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker

LEASE = Lease(tasks.HEARTBEAT_TIMEOUT)


def no_locks_left(locks: Any, task: Any, *args: Any) -> bool:
    return locks.exists(*(lock_key_of(task, kind, *args) for kind in ("queue", "running", "waiting"))) == 0


# -- defaults ------------------------------------------------------------------------------


def test_defaults_are_reject_and_drop() -> None:
    settings = resolve(tasks.app, tasks.gated)
    assert (settings.running_lock_conflict, settings.queue_lock_conflict) == ("reject", "drop")


# -- queue_lock_conflict -----------------------------------------------------------------


def test_existing_returns_the_queued_calls_result() -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked_existing.delay(tag)
    duplicate = tasks.parked_existing.delay(tag)
    assert duplicate is not None
    assert duplicate.id == first.id


def test_raise_raises_once_task_duplicate_naming_task_holder_and_key() -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked_raising.delay(tag)
    with pytest.raises(OnceTaskDuplicate) as raised:
        tasks.parked_raising.delay(tag)
    message = str(raised.value)
    assert tasks.parked_raising.name in message
    assert first.id in message
    assert lock_key_of(tasks.parked_raising, "queue", tag) in message
    assert isinstance(raised.value, OnceTaskError)


def test_once_task_duplicate_pickles() -> None:
    exc = OnceTaskDuplicate("proj.tasks.send", "holder-id", "once_task:proj.tasks.send:0123456789abcdef:queue")
    copy = pickle.loads(pickle.dumps(exc))
    assert (type(copy), str(copy), copy.holder_id, copy.key) == (type(exc), str(exc), exc.holder_id, exc.key)


def test_fixed_task_id_keeps_its_terminal_failure_under_raise() -> None:
    tag = uuid.uuid4().hex
    tasks.parked_raising.delay(tag)
    fixed = str(uuid.uuid4())
    assert tasks.parked_raising.apply_async((tag,), task_id=fixed) is None
    assert tasks.app.AsyncResult(fixed).state == states.FAILURE


def test_app_conf_sets_the_queue_lock_conflict_of_every_task() -> None:
    app = Celery("policies-app", broker=tasks.BROKER_URL, backend=tasks.BACKEND_URL, set_as_current=False)
    app.conf.update(tasks.QUEUE_CONF)
    app.conf.update(once_redis_url=tasks.LOCKS_URL, once_queue_lock_conflict="existing",
                    task_default_queue="parked")

    @app.task(base=OnceTask, name="tests.test_policies.conf_existing", shared=False)
    def conf_existing(tag: str) -> str:
        return tag

    tag = uuid.uuid4().hex
    first = conf_existing.delay(tag)
    assert conf_existing.delay(tag).id == first.id


def test_task_option_wins_over_the_app_conf() -> None:
    app = Celery("policies-app-2", broker=tasks.BROKER_URL, set_as_current=False)
    app.conf.update(tasks.QUEUE_CONF)
    app.conf.update(once_redis_url=tasks.LOCKS_URL, once_queue_lock_conflict="existing", task_default_queue="parked")

    @app.task(base=OnceTask, name="tests.test_policies.own_drop", queue_lock_conflict="drop", shared=False)
    def own_drop(tag: str) -> str:
        return tag

    tag = uuid.uuid4().hex
    own_drop.delay(tag)
    assert own_drop.delay(tag) is None


def test_bad_app_conf_policy_is_an_error_naming_the_setting() -> None:
    app = Celery("policies-bad", set_as_current=False)
    app.conf.once_running_lock_conflict = "queue"
    with pytest.raises(ValueError, match=r"app\.conf\.once_running_lock_conflict must be one of 'reject', 'wait'"):
        resolve(app)


def test_bad_configure_policy_is_an_error_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="queue_lock_conflict must be one of 'drop', 'existing', 'raise'"):
        configure(queue_lock_conflict="ignore")


def test_bad_task_policy_is_an_error_at_definition_naming_the_task() -> None:
    with pytest.raises(ValueError, match=r"tests\.bad_policy: running_lock_conflict must be one of"):
        @tasks.app.task(base=OnceTask, name="tests.bad_policy", running_lock_conflict="retry", shared=False)
        def bad_policy() -> None: ...

        bad_policy.run  # noqa: B018 - a task is built when first used


# -- lock_args -------------------------------------------------------------------------


def test_lock_args_positional_and_keyword_spellings_are_one_call() -> None:
    account = uuid.uuid4().int % 10**9
    first = tasks.charge.delay(account, 5)
    assert first is not None
    assert tasks.charge.delay(account=account, amount=7, note="again") is None
    assert lock_key_of(tasks.charge, "queue", account, 5) == str(tasks.charge.once_key((), {"account": account,
                                                                                  "amount": 9}, "queue"))


def test_lock_args_other_arguments_need_no_canonical_form() -> None:
    assert tasks.charge.once_digest((1, 5, object()), {}) == tasks.charge.once_digest((1, 6), {})


def test_empty_lock_args_is_one_lock_per_task_name() -> None:
    assert lock_key_of(tasks.rebuild_index, "queue", "orders") == lock_key_of(tasks.rebuild_index, "queue", "users")


def test_unknown_lock_arg_is_an_error_at_definition_naming_task_and_argument() -> None:
    with pytest.raises(ValueError, match=r"tests.bad_lock_args: lock_args names 'acount', which is not an argument"):
        @tasks.app.task(base=OnceTask, name="tests.bad_lock_args", lock_args=["acount"], shared=False)
        def bad_lock_args(account: int) -> None: ...

        bad_lock_args.run  # noqa: B018 - a task is built when first used


def test_lock_arguments_can_be_overridden_to_key_on_part_of_an_argument() -> None:
    class ByOrderId(OnceTask):
        def lock_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
            return {"order": arguments["order"]["id"]}

    @tasks.app.task(base=ByOrderId, name="tests.by_order_id", shared=False)
    def ship(order: dict[str, Any]) -> None: ...

    assert ship.once_digest(({"id": 7, "items": [1]},), {}) == ship.once_digest(({"id": 7, "items": [2]},), {})
    assert ship.once_digest(({"id": 7},), {}) != ship.once_digest(({"id": 8},), {})


# -- running_lock_conflict="wait" --------------------------------------------------------


def running_and_waiting(task: Any, locks: Any, recs: Any, tag: str, **options: Any) -> tuple[Any, Any]:
    """``task(tag, 1)`` held running, and ``task(tag, 2)`` its waiting copy; both results."""
    first = task.apply_async((tag, 1), **options)
    started(recs, tag)
    second = task.delay(tag, 2)
    wait_until(lambda: is_waiting_copy(locks, task, tag, second.id), what="the second call to wait")
    return first, second


def test_waiting_copy_runs_after_the_running_copy_and_not_beside_it(worker: Worker, locks: Any,
                                                                    recs: Any) -> None:
    tag = uuid.uuid4().hex
    first, second = running_and_waiting(tasks.waiting_gated, locks, recs, tag)
    assert second.state == states.PENDING
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag
    starts = started(recs, tag, count=2)
    recs.rpush(f"gate:{tag}", 1)
    assert second.get(timeout=20) == tag
    first_end = next(e for e in events(recs, tag, "end") if e["value"] == 1)
    assert starts[1]["value"] == 2
    assert starts[1]["t"] >= first_end["t"]
    assert starts[1]["t"] - first_end["t"] < 2.0  # handed over, not brought back by its safety copy
    assert no_locks_left(locks, tasks.waiting_gated, tag)


def test_calls_made_while_a_copy_waits_are_dropped(worker: Worker, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first, second = running_and_waiting(tasks.waiting_gated, locks, recs, tag)
    assert [tasks.waiting_gated.delay(tag, 3) for _ in range(3)] == [None, None, None]
    recs.rpush(f"gate:{tag}", 1, 1)
    assert first.get(timeout=20) == tag
    assert second.get(timeout=20) == tag
    assert len(events(recs, tag, "start")) == 2


def test_revoking_the_waiting_copy_releases_what_it_holds(worker: Worker, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first, second = running_and_waiting(tasks.waiting_gated, locks, recs, tag)
    second.revoke()
    # The safety copy is discarded when it comes back, and releases the queue lock and the entry.
    held = (lock_key_of(tasks.waiting_gated, "queue", tag), lock_key_of(tasks.waiting_gated, "waiting", tag))
    wait_until(lambda: locks.exists(*held) == 0, timeout=LEASE.ttl + 15,
               what="the revoked waiting copy to release its locks")
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag
    assert second.state == states.REVOKED
    assert len(events(recs, tag, "start")) == 1
    assert no_locks_left(locks, tasks.waiting_gated, tag)


def test_waiting_copy_runs_once_the_dead_workers_lock_is_free(redis_server: Any, worker: Worker, locks: Any,
                                                              recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"doomed-{tag[:8]}"
    doomed = Worker(redis_server.port, f"doomed-{tag[:6]}", queues=queue, concurrency=1).wait_ready()
    try:
        _, second = running_and_waiting(tasks.waiting_gated, locks, recs, tag, queue=queue)
        doomed.process.kill()
        killed_at = time.monotonic()
        doomed.process.wait(10)
    finally:
        doomed.stop()
    starts = wait_until(lambda: len(events(recs, tag, "start")) >= 2 and events(recs, tag, "start"),
                        timeout=2 * LEASE.ttl + 15, what="the waiting copy to run after the dead worker's lease")
    ran_after = time.monotonic() - killed_at
    recs.rpush(f"gate:{tag}", 1)
    assert second.get(timeout=20) == tag
    assert starts[1]["value"] == 2
    assert ran_after <= 2 * LEASE.ttl + 5
    assert no_locks_left(locks, tasks.waiting_gated, tag, 2)


def test_warm_shutdown_returns_the_waiting_copy_with_its_lock(redis_server: Any, worker: Worker, locks: Any,
                                                              recs: Any) -> None:
    tag = uuid.uuid4().hex
    waiting_queue = f"waiting-{tag[:8]}"
    first = tasks.waiting_gated.delay(tag, 1)
    started(recs, tag)
    with running_worker(redis_server.port, f"waiter-{tag[:6]}", queues=waiting_queue) as waiter:
        second = tasks.waiting_gated.apply_async((tag, 2), queue=waiting_queue)
        wait_until(lambda: is_waiting_copy(locks, tasks.waiting_gated, tag, second.id), what="the second call to wait")
        waiter.signal(signal.SIGTERM)
        waiter.process.wait(30)
    assert is_waiting_copy(locks, tasks.waiting_gated, tag, second.id)
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag
    assert len(events(recs, tag, "start")) == 1  # nothing consumes the waiting queue now
    with running_worker(redis_server.port, f"waiter2-{tag[:6]}", queues=waiting_queue):
        started(recs, tag, count=2)
        recs.rpush(f"gate:{tag}", 1)
        assert second.get(timeout=20) == tag
    assert len(events(recs, tag, "start")) == 2
    assert no_locks_left(locks, tasks.waiting_gated, tag, 2)


def test_waiting_copy_whose_run_was_killed_runs_again_when_redelivered(worker: Worker, locks: Any,
                                                                        recs: Any) -> None:
    tag = uuid.uuid4().hex
    first, second = running_and_waiting(tasks.waiting_gated_late, locks, recs, tag)
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag
    handed_over = started(recs, tag, count=2)[1]
    os.kill(handed_over["pid"], signal.SIGKILL)  # its pool process dies; the broker delivers it again
    again = started(recs, tag, count=3)[2]
    recs.rpush(f"gate:{tag}", 1)
    assert second.get(timeout=20) == tag
    assert (handed_over["value"], again["value"]) == (2, 2)
    assert no_locks_left(locks, tasks.waiting_gated_late, tag)


def test_eager_call_waits_for_the_running_copy(worker: Worker, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.waiting_gated.delay(tag, 1)
    started(recs, tag)
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=tasks.waiting_gated.apply((tag, 2))))
    thread.start()
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag
    started(recs, tag, count=2)
    recs.rpush(f"gate:{tag}", 1)
    thread.join(20)
    assert outcome["result"].state == states.SUCCESS
    first_end = events(recs, tag, "end")[0]
    assert events(recs, tag, "start")[1]["t"] >= first_end["t"]


def test_waiting_call_killed_mid_run_waits_its_turn_when_it_comes_back(redis_server: Any, worker: Worker,
                                                                         locks: Any, recs: Any) -> None:
    """A handed-over waiting copy whose worker died comes back while another call runs: it waits, then runs."""
    tag = uuid.uuid4().hex
    queue = f"doomed-{tag[:8]}"
    env = {"ONCE_TEST_VISIBILITY": "2"}
    first = tasks.waiting_gated_late.delay(tag, 1)
    started(recs, tag)
    doomed = Worker(redis_server.port, f"doomed-{tag[:6]}", queues=queue, concurrency=1, env=env).wait_ready()
    try:
        second = tasks.waiting_gated_late.apply_async((tag, 2), queue=queue)
        wait_until(lambda: is_waiting_copy(locks, tasks.waiting_gated_late, tag, second.id),
                   what="the second call to wait")
        recs.rpush(f"gate:{tag}", 1)
        assert first.get(timeout=20) == tag
        started(recs, tag, count=2)  # the second, handed over to the doomed worker
        doomed.process.kill()
        doomed.process.wait(10)
    finally:
        doomed.stop()
    # A third call runs once the dead worker's lease is over, and holds the key.
    running = lock_key_of(tasks.waiting_gated_late, "running", tag)
    wait_until(lambda: locks.exists(running) == 0, timeout=LEASE.ttl + 10, what="the dead worker's lease to end")
    third = tasks.waiting_gated_late.delay(tag, 3)
    assert started(recs, tag, count=3)[2]["value"] == 3
    # The broker hands the second call out again: it meets the third, and waits its turn.
    with running_worker(redis_server.port, f"heir-{tag[:6]}", queues=queue, env=env):
        wait_until(lambda: is_waiting_copy(locks, tasks.waiting_gated_late, tag, second.id), timeout=30,
                   what="the second call, delivered again, to wait for the third")
        recs.rpush(f"gate:{tag}", 1)
        assert third.get(timeout=20) == tag
        assert started(recs, tag, count=4)[3]["value"] == 2
        recs.rpush(f"gate:{tag}", 1)
        assert second.get(timeout=20) == tag
    assert no_locks_left(locks, tasks.waiting_gated_late, tag)
