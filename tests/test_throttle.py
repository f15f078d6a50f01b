"""``throttle``: at most N executions of a key start in any window of a period, fleet-wide.

The tasks run on two workers of this module's own, four processes each, so
that it is the throttle, not the pool, that holds calls back; periods are
short (a second or two) to keep the tests fast.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from celery import Task, states
from celery.result import AsyncResult

from celery_once_task import OnceTask, OnceTaskThrottled
from celery_once_task.headers import THROTTLE_HEADER
from celery_once_task.keys import limited_key
from celery_once_task.store import client_for, scripts, throttles
from tests import worker_app as tasks
from tests.support import Worker, events, running_worker, wait_until
from tests.test_cli import once, once_json

pytestmark = pytest.mark.any_broker

QUEUE = "throttle"


@pytest.fixture(scope="module")
def throttle_workers(redis_server: Any) -> Iterator[tuple[Worker, Worker]]:
    with running_worker(redis_server.port, "throttle-a", queues=QUEUE, concurrency=4) as first, \
            running_worker(redis_server.port, "throttle-b", queues=QUEUE, concurrency=4) as second:
        yield first, second


def most_in_window(starts: Sequence[float], period: float) -> int:
    """The most starts that lie in one window of ``period`` seconds."""
    moments = sorted(starts)
    return max((sum(1 for later in moments[index:] if later < moment + period)
                for index, moment in enumerate(moments)), default=0)


def start_times(recs: Any, tag: str) -> list[float]:
    return [float(entry["t"]) for entry in events(recs, tag, "start")]


def test_a_key_starts_at_most_n_in_any_window_and_other_keys_are_not_held_behind_it(
        throttle_workers: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    tenant_a, tenant_b = f"{tag}-a", f"{tag}-b"
    calls_a = [tasks.throttled.apply_async((tenant_a, f"{tag}:a", n), queue=QUEUE) for n in range(9)]
    called_b = time.time()
    calls_b = [tasks.throttled.apply_async((tenant_b, f"{tag}:b", n), queue=QUEUE) for n in range(3)]

    assert [result.get(timeout=10) for result in calls_b] == [0, 1, 2]
    assert max(start_times(recs, f"{tag}:b")) - called_b < 1.5  # not behind tenant A's six postponed calls
    assert sorted(result.get(timeout=30) for result in calls_a) == list(range(9))

    runs = events(recs, f"{tag}:a", "start")
    assert sorted(run["n"] for run in runs) == list(range(9))  # each exactly once
    assert most_in_window(start_times(recs, f"{tag}:a"), 2.0) == 3
    # Postponed, not retried: the attempt is the first one for every call.
    assert {run["retries"] for run in runs} == {0}


def test_reject_fails_the_excess_and_starts_at_most_n_in_any_window(throttle_workers: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    results = [tasks.throttled_reject.apply_async((tag, n), queue=QUEUE) for n in range(6)]
    wait_until(lambda: all(result.ready() for result in results), timeout=20, what="every call to end")

    failed = [result for result in results if result.state == states.FAILURE]
    assert failed, "6 calls at once under 2/s: some must be refused"
    assert all(isinstance(result.result, OnceTaskThrottled) for result in failed)
    assert {result.state for result in results} <= {states.SUCCESS, states.FAILURE}
    assert len(start_times(recs, tag)) == 6 - len(failed)
    assert most_in_window(start_times(recs, tag), 1.0) <= 2


def test_several_limits_hold_at_once(throttle_workers: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    results = [tasks.throttled_twice.apply_async((tag, n), queue=QUEUE) for n in range(5)]
    assert sorted(result.get(timeout=30) for result in results) == list(range(5))
    starts = start_times(recs, tag)
    assert most_in_window(starts, 1.0) <= 2
    assert most_in_window(starts, 3.0) <= 3


def test_a_throttle_and_a_running_limit_hold_together(throttle_workers: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    results = [tasks.throttled_limited.apply_async((tag, n), queue=QUEUE) for n in range(5)]
    assert sorted(result.get(timeout=30) for result in results) == list(range(5))
    runs = events(recs, tag, "start") + events(recs, tag, "end")
    moments = sorted((run["t"], 1 if run["event"] == "start" else -1) for run in runs)
    at_once = [sum(step for _, step in moments[:index + 1]) for index in range(len(moments))]
    assert max(at_once) <= 2
    assert most_in_window(start_times(recs, tag), 2.0) <= 3


def test_a_postponed_call_keeps_its_queue_lock(throttle_workers: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    assert tasks.throttled_queued.apply_async((tag, 1), queue=QUEUE).get(timeout=10) == 1
    postponed = tasks.throttled_queued.apply_async((tag, 2), queue=QUEUE)
    wait_until(lambda: any(entry.get("task_id") == postponed.id
                           for entry in tasks_signals(recs, "execution_throttled")), what="the call to be postponed")
    assert tasks.throttled_queued.apply_async((tag, 3), queue=QUEUE) is None  # a duplicate of the postponed call
    assert postponed.get(timeout=10) == 2
    assert [run["n"] for run in events(recs, tag, "start")] == [1, 2]


def test_a_postponed_call_delivered_twice_runs_once(throttle_workers: Any, recs: Any) -> None:
    # Given a key whose window is full, and a call postponed to its reservation,
    tag = uuid.uuid4().hex
    results = {tasks.throttled.apply_async((tag, tag, n), queue=QUEUE).id: n for n in range(4)}
    postponed = wait_until(lambda: [entry for entry in tasks_signals(recs, "execution_throttled")
                                    if entry.get("task_id") in results], what="a call to be postponed")[0]
    # when the broker delivers its message twice (as kombu's Redis transport does for a delayed message
    # that outlasts its visibility timeout),
    start_at = float(postponed["start_at"])
    Task.apply_async(tasks.throttled, (tag, tag, results[postponed["task_id"]]), task_id=postponed["task_id"],
                     queue=QUEUE, countdown=max(0.0, start_at - time.time()),
                     headers={THROTTLE_HEADER: str(round(start_at * 1000))})
    # then it runs once: the second copy waits a lease (the first one's worker lives), then is let go.
    assert AsyncResult(postponed["task_id"], app=tasks.app).get(timeout=20) == results[postponed["task_id"]]
    wait_until(lambda: any(f"{postponed['task_id']}]: execution ignored" in worker.read_log()
                           for worker in throttle_workers), what="the second copy to be ignored")
    assert sorted(run["n"] for run in events(recs, tag, "start")) == [0, 1, 2, 3]


def test_a_postponed_call_whose_pool_process_dies_in_its_run_runs_again(throttle_workers: Any, recs: Any) -> None:
    # Given a call postponed to its reservation, whose copy started on it and is in its body,
    tag = uuid.uuid4().hex
    assert tasks.throttled_late.apply_async((tag, 1), queue=QUEUE).get(timeout=10) == 1
    postponed = tasks.throttled_late.apply_async((tag, 2), queue=QUEUE)
    killed = wait_until(lambda: events(recs, tag, "start")[1:], what="the postponed call to start")[0]
    # when its pool process is killed (its worker gives the message back to the broker),
    os.kill(killed["pid"], signal.SIGKILL)
    # then the call runs again -- a new start, within the throttle -- and ends.
    wait_until(lambda: len(events(recs, tag, "start")) == 3, timeout=30, what="the call to run again")
    recs.rpush(f"gate:{tag}", 1)
    assert postponed.get(timeout=20) == 2
    runs = events(recs, tag, "start")
    assert [run["n"] for run in runs] == [1, 2, 2]
    assert most_in_window([float(run["t"]) for run in runs], 3.0) == 1


def test_a_postponed_call_whose_worker_is_killed_in_its_run_runs_again_once_the_worker_is_gone(
        throttle_workers: Any, redis_server: Any, recs: Any) -> None:
    # Given a call postponed to its reservation, whose copy started on it on a worker of its own,
    tag = uuid.uuid4().hex
    queue = f"doomed-{tag[:8]}"
    doomed = Worker(redis_server.port, f"doomed-{tag[:6]}", queues=queue, concurrency=1).wait_ready()
    try:
        assert tasks.throttled_late.apply_async((tag, 1), queue=queue).get(timeout=10) == 1
        postponed = tasks.throttled_late.apply_async((tag, 2), queue=queue)
        reservation = wait_until(lambda: [entry["start_at"] for entry in tasks_signals(recs, "execution_throttled")
                                          if entry.get("task_id") == postponed.id], what="the call to be postponed")[0]
        wait_until(lambda: events(recs, tag, "start")[1:], what="the postponed call to start")
        children = doomed.child_pids()
        # when that worker is killed, its pool process with it, and the broker hands the message out again
        # at once (as RabbitMQ does when the worker's connection closes) while its heartbeat still runs,
        doomed.process.kill()
        doomed.process.wait(10)
    finally:
        doomed.stop()
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), what="the pool process to die")
    Task.apply_async(tasks.throttled_late, (tag, 2), task_id=postponed.id, queue=QUEUE,
                     headers={THROTTLE_HEADER: str(round(float(reservation) * 1000))})
    # then the copy waits until the worker is known gone (its start still in the log, a period long), and runs
    # the call again.
    wait_until(lambda: len(events(recs, tag, "start")) == 3, timeout=30, what="the call to run again")
    recs.rpush(f"gate:{tag}", 1)
    assert postponed.get(timeout=20) == 2
    assert [run["n"] for run in events(recs, tag, "start")] == [1, 2, 2]


def tasks_signals(recs: Any, name: str) -> list[dict[str, Any]]:
    import json

    return [json.loads(item) for item in recs.lrange(f"signals:{name}", 0, -1)]


def test_an_eager_call_beyond_the_limit_waits_in_its_process() -> None:
    @tasks.app.task(base=OnceTask, name=f"tests.eager_throttled_{uuid.uuid4().hex}", throttle=(1, 0.5),
                    lock_args=[], shared=False)
    def eager_throttled() -> float:
        return time.time()

    first = eager_throttled.apply().get()
    second = eager_throttled.apply().get()
    assert second - first >= 0.5


def test_a_throttled_task_takes_no_running_lock_unless_set() -> None:
    assert tasks.throttled.running_lock is False
    assert tasks.throttled_limited.running_lock is True  # running_limit works through it

    @tasks.app.task(base=OnceTask, name="tests.throttled_locked", throttle="5/s", running_lock=True, shared=False)
    def throttled_locked() -> None: ...

    assert throttled_locked.running_lock is True


@pytest.mark.parametrize(("throttle", "message"), [
    ("3/w", "not a rate"),
    ("many/s", "not a rate"),
    ((0, 1), "N must be from 1"),
    ((2, -1), "the period must be a number of seconds"),
    ((2.5, 1), "N must be a whole number"),
    ([], "empty list"),
    (["1/s", (5, 1)], "two limits for one period"),
    ({"n": 1}, "not a rate"),
])
def test_a_bad_throttle_is_an_error_at_definition_naming_the_task(throttle: Any, message: str) -> None:
    with pytest.raises(ValueError, match=rf"tests\.bad_throttle: throttle .*{message}"):
        @tasks.app.task(base=OnceTask, name="tests.bad_throttle", throttle=throttle, shared=False)
        def bad_throttle() -> None: ...

        bad_throttle.run  # noqa: B018 - a task is built when first used


def test_throttle_with_debounce_is_refused_at_definition() -> None:
    with pytest.raises(ValueError, match=r"tests\.bad_throttle: throttle cannot be used with debounce"):
        @tasks.app.task(base=OnceTask, name="tests.bad_throttle", throttle="1/s", debounce=1, shared=False)
        def bad_throttle() -> None: ...

        bad_throttle.run  # noqa: B018


def test_a_bad_throttle_conflict_is_an_error_at_definition() -> None:
    with pytest.raises(ValueError, match=r"tests\.bad_throttle: throttle_conflict must be one of"):
        @tasks.app.task(base=OnceTask, name="tests.bad_throttle", throttle="1/s", throttle_conflict="drop",
                        shared=False)
        def bad_throttle() -> None: ...

        bad_throttle.run  # noqa: B018


def test_locks_shows_a_throttled_keys_window_next_free_start_and_postponed_calls() -> None:
    # Given a key of tasks.throttled (3 in 2 s) whose window is full, with one call postponed.
    digest = tasks.throttled.once_digest((uuid.uuid4().hex, "tag", 0), {})
    key = limited_key(tasks.throttled.name, digest, "throttle")
    client = client_for(tasks.LOCKS_URL)
    for n in range(4):
        scripts.run(client, [throttles.take(key, f"call-{n}", tasks.throttled._once_rates, "postpone")])

    [row] = [lock for lock in once_json("locks", "--task", tasks.throttled.name) if lock["key"] == key]
    assert (row["type"], row["used"], row["limit"], row["period"], row["waiting"]) == ("throttle", 3, 3, 2.0, 1)
    assert 0 < row["due_in"] <= 2.1  # when the first three leave the window (2 s and the margin)
    shown = once("locks", "--task", tasks.throttled.name).stdout
    assert "throttle 3/3 started in 2s" in shown and "1 postponed" in shown
