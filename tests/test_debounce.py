"""``debounce``: a burst of calls becomes one execution, after the burst, with the last call's arguments."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from celery import chain, states

from celery_once_task import OnceTask
from celery_once_task.keys import limited_key
from celery_once_task.ownership import Lease
from celery_once_task.store import LockStore
from tests import worker_app as tasks
from tests.support import Worker, events, running_worker, started, wait_until
from tests.test_cli import once

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker


def burst_key(task: Any, doc: str) -> str:
    return limited_key(task.name, task.once_digest((doc, 0), {}), "burst")


def test_a_burst_of_calls_runs_once_after_it_with_the_last_calls_arguments(worker: Worker, recs: Any) -> None:
    doc = uuid.uuid4().hex
    results = []
    for version in range(1, 8):
        results.append(tasks.reindex.delay(doc, version))
        time.sleep(0.1)  # an edit every tenth of a second: one burst
    last_call = time.time()
    assert len({result.id for result in results}) == 1  # every call of the burst has the burst's result
    assert [result.get(timeout=20) for result in results] == [7] * 7
    (run,) = events(recs, doc, "run")
    assert run["version"] == 7
    assert run["t"] >= last_call + 1.0 - 0.2  # debounce after the last call (clocks of one machine)


def test_a_burst_runs_no_later_than_debounce_max_after_its_first_call(worker: Worker, recs: Any) -> None:
    doc = uuid.uuid4().hex
    first_call = time.time()
    results = []
    while time.time() - first_call < 5:  # calls every half second, for longer than debounce_max (3 s)
        results.append(tasks.reindex.delay(doc, len(results)))
        time.sleep(0.5)
    wait_until(lambda: all(result.ready() for result in results), timeout=20, what="every call's result")
    runs = events(recs, doc, "run")
    assert 2 <= len(runs) <= 3
    assert runs[0]["t"] - first_call <= 3.0 + 1.0
    # Each call reached the end of the execution that covered it: one result per burst, in order.
    bursts = [result.id for result in results]
    assert len(set(bursts)) == len(runs)
    assert [results[bursts.index(burst_id)].get() for burst_id in dict.fromkeys(bursts)] == [
        run["version"] for run in runs]


def test_a_call_made_while_the_execution_runs_starts_a_new_burst(worker: Worker, recs: Any) -> None:
    doc = uuid.uuid4().hex
    first = tasks.reindex_gated.delay(doc, 1)
    started(recs, doc)
    second = tasks.reindex_gated.delay(doc, 2)
    assert second.id != first.id
    recs.rpush(f"gate:{doc}:1", 1)
    assert first.get(timeout=20) == 1
    started(recs, doc, count=2)
    recs.rpush(f"gate:{doc}:2", 1)
    assert second.get(timeout=20) == 2
    assert [event["version"] for event in events(recs, doc, "start")] == [1, 2]


def test_a_burst_runs_once_though_the_worker_holding_its_message_died(redis_server: Any, locks: Any,
                                                                      recs: Any) -> None:
    """Under Celery's default visibility timeout (an hour): the burst's parked message is rescued."""
    doc = uuid.uuid4().hex
    queue = f"doomed-{doc[:8]}"
    doomed = Worker(redis_server.port, f"doomed-{doc[:6]}", queues=queue, concurrency=1).wait_ready()
    try:
        results = [tasks.reindex_late.apply_async((doc, version), queue=queue) for version in (1, 2, 3)]
        wait_until(lambda: results[0].id in doomed.read_log(), what="the doomed worker to hold the burst's message")
        doomed.process.kill()  # before the burst is due: its message goes back to the broker
        doomed.process.wait(10)
    finally:
        doomed.stop()
    with running_worker(redis_server.port, f"heir-{doc[:6]}", queues=queue):
        assert [result.get(timeout=30) for result in results] == [3, 3, 3]
    assert [event["version"] for event in events(recs, doc, "run")] == [3]
    # Its arguments are forgotten; its last call is recognised for one lease more (the key expires).
    key = burst_key(tasks.reindex_late, doc)
    assert set(locks.hkeys(key)) <= {b"p"}
    ttl = locks.pttl(key)  # read once: the key may expire between two reads
    assert ttl == -2 or 0 < ttl <= Lease(tasks.HEARTBEAT_TIMEOUT).ttl * 1000


def test_a_retried_burst_retries_with_its_last_calls_arguments(worker: Worker, recs: Any) -> None:
    doc = uuid.uuid4().hex
    results = [tasks.reindex_retrying.delay(doc, version) for version in (1, 2, 3)]
    assert results[0].get(timeout=20) == 3
    assert [(event["version"], event["retries"]) for event in events(recs, doc, "run")] == [(3, 0), (3, 1)]


def test_an_open_burst_is_listed_with_its_deadline_and_calls() -> None:
    doc = uuid.uuid4().hex
    results = [tasks.parked_reindex.delay(doc, version) for version in (1, 2, 3)]
    key = burst_key(tasks.parked_reindex, doc)
    done = once("locks", "--type", "burst", "--json")
    assert done.returncode == 0, done.stderr
    (burst,) = [lock for lock in json.loads(done.stdout) if lock["key"] == key]
    assert (burst["type"], burst["task_id"], burst["calls"]) == ("burst", results[0].id, 3)
    assert 25 < burst["due_in"] <= 30


def test_eager_calls_and_calls_with_a_fixed_id_are_not_debounced(worker: Worker, recs: Any) -> None:
    doc = uuid.uuid4().hex
    assert tasks.reindex.apply((doc, 1)).get() == 1
    fixed = str(uuid.uuid4())
    result = tasks.reindex.apply_async((doc, 2), task_id=fixed)
    assert result.id == fixed and result.get(timeout=20) == 2
    assert [event["version"] for event in events(recs, doc, "run")] == [1, 2]


def test_canvas_members_are_not_debounced(worker: Worker, recs: Any) -> None:
    doc = uuid.uuid4().hex
    result = chain(tasks.reindex.si(doc, 1), tasks.reindex.si(doc, 2)).delay()
    assert result.get(timeout=20) == 2
    assert [event["version"] for event in events(recs, doc, "run")] == [1, 2]


def test_a_burst_that_meets_a_running_execution_waits_for_it_under_the_wait_policy(worker: Worker,
                                                                                   recs: Any) -> None:
    doc = uuid.uuid4().hex
    first = tasks.reindex_waiting.delay(doc, 1)
    started(recs, doc)
    later = [tasks.reindex_waiting.delay(doc, version) for version in (2, 3)]
    assert later[0].id == later[1].id != first.id
    wait_until(lambda: f"{later[0].id}]: execution waiting: running lock" in worker.read_log(), timeout=10,
               what="the burst's execution to wait")
    recs.rpush(f"gate:{doc}:1", 1)
    assert first.get(timeout=20) == 1
    started(recs, doc, count=2)
    recs.rpush(f"gate:{doc}:3", 1)
    assert [result.get(timeout=20) for result in later] == [3, 3]
    assert [event["version"] for event in events(recs, doc, "start")] == [1, 3]


def test_bursts_of_a_key_run_side_by_side_up_to_its_running_limit(worker: Worker, recs: Any) -> None:
    doc = uuid.uuid4().hex
    first = tasks.reindex_two.delay(doc, 1)
    started(recs, doc)
    second = tasks.reindex_two.delay(doc, 2)  # a new burst: the first one's execution runs
    started(recs, doc, count=2)  # beside it, the limit being two
    for version in (1, 2):
        recs.rpush(f"gate:{doc}:{version}", 1)
    assert (first.get(timeout=20), second.get(timeout=20)) == (1, 2)


def test_a_debounced_execution_keeps_its_running_lock(worker: Worker, recs: Any) -> None:
    doc = uuid.uuid4().hex
    first = tasks.reindex_gated.delay(doc, 1)
    started(recs, doc)
    # The same call sent by name (no burst): it meets the running lock, and is refused.
    duplicate = tasks.app.send_task(tasks.reindex_gated.name, args=[doc, 1])
    wait_until(lambda: duplicate.ready(), timeout=20, what="the duplicate to be refused")
    assert duplicate.state == states.FAILURE
    recs.rpush(f"gate:{doc}:1", 1)
    assert first.get(timeout=20) == 1


def _sent_again(locks: Any, key: str, token: str) -> tuple[int, str, int]:
    """A call's BURST_CALL sent again with its token, as after a lost reply (debounce 50 ms)."""
    return tuple(LockStore(locks).bursts.call(key, token, debounce=0.05, most=None,
                                              arguments=json.dumps({"args": [token], "kwargs": {}}), keep=60,
                                              overdue=60))  # type: ignore[return-value]


def test_a_call_sent_again_while_it_is_the_bursts_last_is_counted_once(locks: Any) -> None:
    key = burst_key(tasks.parked_reindex, uuid.uuid4().hex)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert _sent_again(locks, key, first)[:2] == (1, first)
    assert _sent_again(locks, key, second)[:2] == (0, first)
    assert _sent_again(locks, key, second)[:2] == (0, first)
    assert locks.hget(key, "n") == b"2"


def test_a_call_sent_again_after_its_burst_closed_does_not_start_another(locks: Any) -> None:
    key = burst_key(tasks.parked_reindex, uuid.uuid4().hex)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    _sent_again(locks, key, first)
    _sent_again(locks, key, second)
    store = LockStore(locks)
    wait_until(lambda: store.bursts.take(key, first, 60).code == 1, what="the burst to close")
    # Its arguments run in the closed burst: the call is answered as its first try was.
    assert _sent_again(locks, key, second) == (0, first, 0)
    assert not locks.hexists(key, "i")
    # Its execution ended: the call is still recognised, for as long as its retries may last.
    store.bursts.forget(key, first, "closed", remember=5)
    assert _sent_again(locks, key, second) == (0, first, 0)
    assert locks.hkeys(key) == [b"p"] and 0 < locks.pttl(key) <= 5_000


def test_bad_debounce_values_are_errors_naming_the_task() -> None:
    with pytest.raises(ValueError, match=r"tests\.bad_debounce: debounce must be a positive number of seconds"):
        @tasks.app.task(base=OnceTask, name="tests.bad_debounce", debounce=0, shared=False)
        def bad_debounce() -> None: ...

        bad_debounce.run  # noqa: B018 - a task is built when first used
