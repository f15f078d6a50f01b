"""Nothing the library puts off with a countdown waits for the broker's visibility timeout (``parking``, ``rescue``).

The workers here run under Celery's default ``visibility_timeout`` (an hour,
``worker_app``'s default): a message held by a worker that is killed comes
back from the Redis transport only by the rescuer of another worker, within
``heartbeat_timeout`` (4 s in the tests) and a second of being due.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from celery import Task
from kombu import Connection

from celery_once_task.headers import PARKED_HEADER
from celery_once_task.parking import park, publish_parked
from celery_once_task.record_keys import parked_keys
from celery_once_task.rescue import Rescuer
from celery_once_task.store import store_for
from tests import worker_app as tasks
from tests.support import Worker, events, lock_key_of, running_worker, wait_until

#: How late after its due time a rescued call may start: the grace, the rescuer's second, and the
#: time a loaded machine takes to start a worker and pass a message through the broker.
RESCUE_SLACK = tasks.HEARTBEAT_TIMEOUT + 6.0


def doomed_worker(redis_server: Any, tag: str) -> tuple[Worker, str]:
    queue = f"doomed-{tag[:8]}"
    return Worker(redis_server.port, f"doomed-{tag[:6]}", queues=queue, concurrency=1).wait_ready(), queue


def kill(worker: Worker) -> None:
    try:
        worker.process.kill()
        worker.process.wait(10)
    finally:
        worker.stop()


def restore_unacknowledged() -> None:
    """What the Redis transport does once a dead worker's messages are ``visibility_timeout`` old, done now."""
    with Connection(tasks.BROKER_URL, transport_options={"visibility_timeout": 0}) as connection:
        connection.default_channel.qos.restore_visible(num=1000)


def test_a_burst_whose_worker_was_killed_holding_its_message_runs_once_soon_after_it_is_due(
        redis_server: Any, recs: Any) -> None:
    doc = uuid.uuid4().hex
    doomed, queue = doomed_worker(redis_server, doc)
    try:
        results = [tasks.reindex.apply_async((doc, version), queue=queue) for version in range(1, 6)]
        due = time.time() + 1.0  # debounce after the last call
        wait_until(lambda: results[0].id in doomed.read_log(), what="the doomed worker to hold the burst's message")
    finally:
        kill(doomed)  # before the burst is due: the broker keeps its message for an hour
    with running_worker(redis_server.port, f"heir-{doc[:6]}", queues=queue):
        assert [result.get(timeout=30) for result in results] == [5] * 5
    (run,) = events(recs, doc, "run")
    assert run["t"] - due <= RESCUE_SLACK


def test_a_deferred_copy_whose_worker_was_killed_holding_it_runs_once(redis_server: Any, recs: Any) -> None:
    doc = uuid.uuid4().hex
    doomed, queue = doomed_worker(redis_server, doc)
    try:
        results = []
        started = time.time()
        while time.time() - started < 3.0:  # the burst's message comes due and is deferred, again and again
            results.append(tasks.reindex_late.apply_async((doc, len(results)), queue=queue))
            time.sleep(0.3)
        # Its last deferral, due a second after the last call, is held by the doomed worker.
        assert "was extended" in doomed.read_log()
    finally:
        kill(doomed)
    due = time.time() + 1.0
    with running_worker(redis_server.port, f"heir-{doc[:6]}", queues=queue):
        last = len(results) - 1
        assert {result.get(timeout=30) for result in results} == {last}
    assert [event["version"] for event in events(recs, doc, "run")] == [last]
    assert events(recs, doc, "run")[0]["t"] - due <= RESCUE_SLACK


def test_postponed_throttled_calls_whose_worker_was_killed_holding_them_run_once_within_the_limit(
        redis_server: Any, broker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    doomed, queue = doomed_worker(redis_server, tag)
    try:
        results = [tasks.throttled.apply_async((tag, tag, n), queue=queue) for n in range(6)]
        # throttle=(3, 2): three start, three are postponed about 2 s, their copies held by the doomed worker.
        wait_until(lambda: doomed.read_log().count("execution postponed") == 3 and broker.llen(queue) == 0,
                   what="the doomed worker to hold the three postponed copies")
    finally:
        kill(doomed)  # before they are due: the broker keeps their messages for an hour
    with running_worker(redis_server.port, f"heir-{tag[:6]}", queues=queue):
        assert sorted(result.get(timeout=30) for result in results) == list(range(6))
    starts = events(recs, tag, "start")
    assert sorted(start["n"] for start in starts) == list(range(6))  # none lost, none run twice
    moments = sorted(float(start["t"]) for start in starts)
    assert all(later - earlier >= 2.0 for earlier, later in zip(moments, moments[3:]))  # at most 3 in any 2 s


def test_the_dead_workers_copy_restored_late_is_turned_away(redis_server: Any, recs: Any) -> None:
    doc = uuid.uuid4().hex
    doomed, queue = doomed_worker(redis_server, doc)
    try:
        results = [tasks.reindex_late.apply_async((doc, version), queue=queue) for version in (1, 2)]
        wait_until(lambda: results[0].id in doomed.read_log(), what="the doomed worker to hold the burst's message")
    finally:
        kill(doomed)
    with running_worker(redis_server.port, f"heir-{doc[:6]}", queues=queue) as heir:
        assert results[0].get(timeout=30) == 2
        restore_unacknowledged()  # the broker hands the dead worker's copy out again, an hour late
        wait_until(lambda: f"{results[0].id}]: execution ignored: another copy" in heir.read_log(),
                   what="the restored copy to be turned away")
    assert [event["version"] for event in events(recs, doc, "run")] == [2]


def test_a_copy_another_publish_superseded_is_turned_away_and_gives_its_running_lock_back(
        worker: Worker, locks: Any, recs: Any) -> None:
    tag, task_id = uuid.uuid4().hex, str(uuid.uuid4())
    settings = tasks.echo.once_settings()
    options: dict[str, Any] = {"countdown": 60, "task_id": task_id}
    park(tasks.echo, settings, task_id, (tag,), {}, options)  # the entry is another copy's
    try:
        Task.apply_async(tasks.echo, (tag,), task_id=task_id, headers={PARKED_HEADER: "an-older-copy"})
        wait_until(lambda: f"{task_id}]: execution ignored: another copy" in worker.read_log(),
                   what="the superseded copy to be turned away")
        assert events(recs, tag, "run") == []
        assert locks.exists(lock_key_of(tasks.echo, "running", tag)) == 0
    finally:
        store_for(tasks.echo, settings).parked.forget(task_id, options["headers"][PARKED_HEADER])


def test_the_rescuer_publishes_no_message_whose_copy_was_claimed(broker: Any, locks: Any) -> None:
    settings = tasks.parked.once_settings()
    store = store_for(tasks.parked, settings)
    claimed_id, unclaimed_id = str(uuid.uuid4()), str(uuid.uuid4())
    claimed_options: dict[str, Any] = {"countdown": 0.001, "task_id": claimed_id, "queue": "parked"}
    park(tasks.parked, settings, claimed_id, ("claimed",), {}, claimed_options)
    park(tasks.parked, settings, unclaimed_id, ("unclaimed",), {},
         {"countdown": 0.001, "task_id": unclaimed_id, "queue": "parked"})
    token = claimed_options["headers"][PARKED_HEADER]
    assert store.parked.claim(claimed_id, token, 60) == 1
    rescuer = Rescuer(tasks.app)
    rescuer.grace = 0.0  # due entries are overdue at once
    time.sleep(0.01)  # the entries come due
    rescuer.rescue()
    queued = {json.loads(message)["headers"]["id"] for message in broker.lrange("parked", 0, -1)}
    assert unclaimed_id in queued and claimed_id not in queued
    entries, _ = parked_keys(settings.key_prefix)
    assert locks.hexists(entries, claimed_id) == 0


@pytest.mark.parametrize("pool", ["gevent", "eventlet"])
def test_a_worker_of_a_green_pool_publishes_a_parked_message_whose_worker_died(redis_server: Any, recs: Any,
                                                                               pool: str) -> None:
    tag, task_id = uuid.uuid4().hex, str(uuid.uuid4())
    queue = f"{pool}-{tag[:8]}"
    # Parked and never seen again: as a message is whose worker died holding it.
    park(tasks.echo, tasks.echo.once_settings(), task_id, (tag,), {},
         {"countdown": 0.001, "task_id": task_id, "queue": queue})
    with running_worker(redis_server.port, f"{pool}-{tag[:6]}", pool=pool, queues=queue):
        wait_until(lambda: events(recs, tag, "run"), timeout=RESCUE_SLACK + 10, what="the parked message to run")
        assert tasks.echo.AsyncResult(task_id).get(timeout=10) is None
    assert len(events(recs, tag, "run")) == 1


def test_a_message_whose_publish_failed_leaves_no_parked_entry(locks: Any) -> None:
    task_id = str(uuid.uuid4())
    entries, due = parked_keys(tasks.parked.once_settings().key_prefix)

    def broker_down() -> None:
        assert locks.hexists(entries, task_id) == 1  # parked before the publish
        raise ConnectionError("the broker is down")

    with pytest.raises(ConnectionError):
        publish_parked(tasks.parked, None, task_id, ("tag",), {}, {"countdown": 5, "task_id": task_id}, broker_down)
    assert locks.hexists(entries, task_id) == 0 and locks.zscore(due, task_id) is None
