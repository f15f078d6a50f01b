"""Faults: a lock follows the life of its owner, and no call is lost to a lock-store failure.

Each test injects one real fault at the moment under test -- a worker
SIGKILLed or SIGSTOPped, a lock store SIGKILLed and restarted from its
append-only file, SIGSTOPped past the client's socket timeout, or its
connections killed -- and asserts the keys left and the result states.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_once_task import LockStoreUnavailable, OnceTask, OnceTaskLocked
from celery_once_task.keys import limited_key
from celery_once_task.ownership import Lease
from tests import worker_app as tasks
from tests.support import ROOT, RedisServer, Worker, events, lock_key_of, running_worker, started, wait_until

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker

LEASE = Lease(tasks.HEARTBEAT_TIMEOUT)


@pytest.fixture
def lock_server() -> Iterator[RedisServer]:
    """A lock store of the test's own, kept with an append-only file, that it may stop and restart."""
    server = RedisServer(appendonly=True)
    yield server
    server.stop()


def stats(server: RedisServer, command: str) -> int:
    """How many times the server ran ``command``."""
    return int(server.client(0).info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


# -- a worker that is gone ------------------------------------------------------------


def test_new_call_starts_within_the_lease_after_its_worker_was_killed(
    redis_server: RedisServer, locks: Any, recs: Any
) -> None:
    tag = uuid.uuid4().hex
    doomed_queue, heir_queue = f"doomed-{tag[:8]}", f"heir-{tag[:8]}"
    with running_worker(redis_server.port, f"heir-{tag[:6]}", queues=heir_queue):
        doomed = Worker(redis_server.port, f"doomed-{tag[:6]}", queues=doomed_queue, concurrency=1).wait_ready()
        try:
            tasks.gated.apply_async((tag,), queue=doomed_queue)
            started(recs, tag)
            children = doomed.child_pids()
            doomed.process.kill()  # the whole worker: its pool child dies with it
            killed_at = time.monotonic()
            doomed.process.wait(10)
        finally:
            doomed.stop()
        wait_until(lambda: not any(_alive(pid) for pid in children), what="the pool child to die with its worker")
        # New calls of the same arguments until one runs: those that meet the
        # dead worker's lease are rejected, visibly.
        calls = []
        while not len(events(recs, tag, "start")) >= 2:
            assert time.monotonic() - killed_at < LEASE.ttl + 10, "no new call ran after the worker was killed"
            calls.append(tasks.gated.apply_async((tag,), queue=heir_queue))
            wait_until(lambda: calls[-1].ready() or len(events(recs, tag, "start")) >= 2, timeout=20,
                       what="the new call to run or be rejected")
        ran_after = time.monotonic() - killed_at
        recs.rpush(f"gate:{tag}", 1)
        assert calls[-1].get(timeout=20) == tag
    assert ran_after <= LEASE.ttl + 5
    assert all(isinstance(call.result, OnceTaskLocked) for call in calls[:-1])
    assert events(recs, tag, "end") and len(events(recs, tag, "end")) == 1
    assert locks.exists(lock_key_of(tasks.gated, "running", tag), lock_key_of(tasks.gated, "queue", tag)) == 0


def _alive(pid: int) -> bool:
    from celery_once_task.janitor import process_gone

    return not process_gone(pid)


def test_stalled_worker_keeps_its_running_lock(redis_server: RedisServer, worker: Worker, locks: Any,
                                               recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"stalled-{tag[:8]}"
    with running_worker(redis_server.port, f"stalled-{tag[:6]}", queues=queue, concurrency=1) as stalled:
        first = tasks.gated.apply_async((tag,), queue=queue)
        started(recs, tag)
        running = lock_key_of(tasks.gated, "running", tag)
        value = locks.get(running)
        stalled.signal(signal.SIGSTOP)
        try:
            stall_ends = time.monotonic() + tasks.HEARTBEAT_TIMEOUT - 0.5
            # A duplicate made during the stall runs on the shared worker: rejected.
            duplicate = tasks.app.send_task(tasks.gated.name, args=[tag])
            with pytest.raises(OnceTaskLocked):
                duplicate.get(timeout=20)
            wait_until(lambda: time.monotonic() >= stall_ends, what="the stall to last almost heartbeat_timeout")
            assert locks.get(running) == value
        finally:
            stalled.signal(signal.SIGCONT)
        wait_until(lambda: locks.pttl(running) > LEASE.ttl * 1000 - 1500, what="the lease to be renewed")
        recs.rpush(f"gate:{tag}", 1)
        assert first.get(timeout=20) == tag
    assert len(events(recs, tag, "start")) == 1
    assert locks.exists(running) == 0


# -- a lock store that is away -----------------------------------------------------------------


def test_release_missed_while_the_store_was_down_is_made_when_it_is_back(lock_server: RedisServer,
                                                                         recs: Any) -> None:
    tag = uuid.uuid4().hex
    locks = lock_server.client(2)
    running = lock_key_of(tasks.gated, "running", tag)
    # A lease much longer than the test: only the release can free the key.
    env = {"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2", "ONCE_TEST_HEARTBEAT_TIMEOUT": "600"}
    with running_worker(tasks.PORT, f"away-{tag[:6]}", pool="solo", queues=f"away-{tag[:8]}", env=env) as worker:
        result = tasks.app.send_task(tasks.gated.name, args=[tag], queue=f"away-{tag[:8]}")
        started(recs, tag)
        assert locks.exists(running) == 1
        lock_server.kill()
        recs.rpush(f"gate:{tag}", 1)
        assert result.get(timeout=20) == tag
        wait_until(lambda: "could not release lock" in worker.read_log(), what="the failed release in the log")
        lock_server.start()
        wait_until(lambda: locks.exists(running) == 0, timeout=15, what="the janitor to release the lock")
        assert f"{result.id}]: released lock {running} (task ended)" in worker.read_log()
    # Operators hear of it: the lock_recovered signal, in the worker.
    recovered = [json.loads(entry) for entry in recs.lrange("signals:lock_recovered", 0, -1)]
    assert [entry["reason"] for entry in recovered if entry["key"] == running] == ["released late (task ended)"]


def test_burst_arguments_kept_while_the_store_was_down_are_forgotten_when_it_is_back(
        lock_server: RedisServer, recs: Any) -> None:
    doc = uuid.uuid4().hex
    queue = f"away-burst-{doc[:8]}"
    locks = lock_server.client(2)
    app = Celery("away-burst", broker=tasks.BROKER_URL, backend=tasks.BACKEND_URL, set_as_current=False)
    app.conf.update(tasks.QUEUE_CONF)
    app.conf.update(once_redis_url=f"{lock_server.url}/2", task_default_queue=queue)
    reindex_gated = app.task(base=OnceTask, name=tasks.reindex_gated.name, lock_args=["doc_id"], debounce=0.5,
                             shared=False)(tasks.reindex_gated.run)
    burst = limited_key(reindex_gated.name, reindex_gated.once_digest((doc, 1), {}), "burst")
    env = {"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2"}
    with running_worker(tasks.PORT, f"away-burst-{doc[:6]}", pool="solo", queues=queue, env=env) as worker:
        result = reindex_gated.delay(doc, 1)
        started(recs, doc)
        assert any(field.startswith(b"C") for field in locks.hkeys(burst))
        lock_server.kill()
        recs.rpush(f"gate:{doc}:1", 1)
        assert result.get(timeout=20) == 1
        wait_until(lambda: "not cleared; left to the janitor" in worker.read_log(), what="the failed forget")
        lock_server.start()
        wait_until(lambda: not any(field.startswith(b"C") for field in locks.hkeys(burst)), timeout=15,
                   what="the janitor to forget the burst's arguments")
        assert f"{result.id}]: released lock {burst} (task ended)" in worker.read_log()


def _lost_reply_app(lock_server: RedisServer, queue: str) -> tuple[Celery, Any]:
    """A publisher whose lock client gives up on a reply after half a second, retrying once."""
    app = Celery("lost-reply", broker=tasks.BROKER_URL, backend=tasks.BACKEND_URL, set_as_current=False)
    app.conf.update(tasks.QUEUE_CONF)
    app.conf.update(
        once_redis_url=f"{lock_server.url}/2?socket_timeout=0.5&socket_connect_timeout=0.5",
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.1},
        task_default_queue=queue,
    )

    @app.task(base=OnceTask, name=f"tests.faults.lost_reply_{queue}", shared=False)
    def lost(tag: str) -> str:
        return tag

    return app, lost


@pytest.mark.redis_broker  # reads the Redis broker's lists
def test_call_whose_reply_was_lost_leaves_no_queue_lock(lock_server: RedisServer, broker: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"lost-{tag[:8]}"
    _, lost = _lost_reply_app(lock_server, queue)
    locks = lock_server.client(2)
    queue_key = lock_key_of(lost, "queue", tag)
    lock_server.pause()
    try:
        with pytest.raises(LockStoreUnavailable, match="the call was not published"):
            lost.delay(tag)
    finally:
        lock_server.resume()
    # The stalled server ran the SET it had read, then the janitor deleted it by token.
    wait_until(lambda: stats(lock_server, "evalsha") >= 1, what="the stalled command to run")
    wait_until(lambda: locks.exists(queue_key) == 0, timeout=10, what="the janitor to delete the lock")
    assert broker.llen(queue) == 0
    assert lost.delay(tag) is not None  # the next call goes through


@pytest.mark.redis_broker  # reads the Redis broker's lists
def test_connection_killed_between_calls_is_retried(lock_server: RedisServer, broker: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"killed-{tag[:8]}"
    _, lost = _lost_reply_app(lock_server, queue)
    assert lost.delay(f"{tag}-1") is not None
    lock_server.client(0).client_kill_filter(_type="normal")
    assert lost.delay(f"{tag}-2") is not None
    assert lock_server.client(2).exists(lock_key_of(lost, "queue", f"{tag}-2")) == 1
    assert broker.llen(queue) == 2


def test_debounced_call_whose_reply_was_lost_publishes_the_burst_it_started(lock_server: RedisServer,
                                                                           recs: Any) -> None:
    doc = uuid.uuid4().hex
    queue = f"lost-burst-{doc[:8]}"
    app, _ = _lost_reply_app(lock_server, queue)
    app.conf.task_publish_retry_policy = {"max_retries": 3, "interval_start": 0, "interval_step": 0.1}
    # The worker's own task, as a publisher whose lock client gives up on a reply after half a second.
    reindex = app.task(base=OnceTask, name=tasks.reindex.name, lock_args=["doc_id"], debounce=1.0,
                       shared=False)(tasks.reindex.run)
    env = {"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2"}
    with running_worker(tasks.PORT, f"lost-burst-{doc[:6]}", pool="solo", queues=queue, env=env):
        assert reindex.delay(f"{doc}-first", 0).get(timeout=20) == 0  # connected, the script loaded
        lock_server.pause()
        # The first try starts the burst once the server runs again; its reply is lost and the
        # retry finds the burst its own: it still publishes the burst's message.
        resume = threading.Timer(0.8, lock_server.resume)
        resume.start()
        try:
            result = reindex.delay(doc, 1)
        finally:
            resume.join()
        assert result.get(timeout=20) == 1
    assert [event["version"] for event in events(recs, doc, "run")] == [1]


def test_pickup_whose_reply_was_lost_runs_once_the_store_answers(lock_server: RedisServer, recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"pickup-{tag[:8]}"
    locks = lock_server.client(2)
    env = {"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2?socket_timeout=0.5&socket_connect_timeout=0.5"}
    with running_worker(tasks.PORT, f"pickup-{tag[:6]}", pool="solo", queues=queue, env=env) as worker:
        lock_server.pause()
        try:
            result = tasks.app.send_task(tasks.echo.name, args=[tag, 7], queue=queue)
            wait_until(lambda: f"{result.id}]: lock operation failed: the lock store is unreachable; deferred"
                       in worker.read_log(), what="the pickup to be deferred")
        finally:
            lock_server.resume()
        # The pickup's commands ran when the server resumed, taking the lock in
        # the execution's name; the deferred copy takes it over and runs.
        assert result.get(timeout=30) == 7
    assert len(events(recs, tag, "run")) == 1
    assert locks.exists(lock_key_of(tasks.echo, "running", tag, 7)) == 0


def test_slot_pickup_whose_reply_was_lost_takes_its_own_slot_when_sent_again(lock_server: RedisServer,
                                                                             recs: Any) -> None:
    tenant = uuid.uuid4().hex
    queue = f"slot-pickup-{tenant[:8]}"
    env = {"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2?socket_timeout=0.5&socket_connect_timeout=0.5"}
    with running_worker(tasks.PORT, f"slot-pickup-{tenant[:6]}", pool="solo", queues=queue, env=env) as worker:
        first = tasks.app.send_task(tasks.export.name, args=[tenant, 0], queue=queue)
        assert first.get(timeout=20) == 0  # connected, the scripts loaded
        lock_server.pause()
        # The pickup's first try runs once the server runs again, taking a slot; its reply is lost,
        # and the try sent again finds that slot its own (same token, same moment): it runs now.
        resume = threading.Timer(0.8, lock_server.resume)
        resume.start()
        try:
            result = tasks.app.send_task(tasks.export.name, args=[tenant, 1], queue=queue)
            assert result.get(timeout=20) == 1
        finally:
            resume.join()
        log = worker.read_log()
    assert f"{result.id}]: execution waiting" not in log
    assert [event["n"] for event in events(recs, tenant, "start")] == [0, 1]
    slots = limited_key(tasks.export.name, tasks.export.once_digest((tenant, 0), {}), "slots")
    assert not any(name.startswith(b"S") for name in lock_server.client(2).hkeys(slots))  # released


def copy_with_a_lost_pickup(lock_server: RedisServer, worker: Worker, first: Any, task: Any, args: list[Any],
                            queue: str) -> None:
    """Another copy of ``first``'s message (a redelivery, or a hand-over beside its safety copy) reaches its
    worker while the store stalls past the client's timeout; return once it was deferred and came back."""
    lock_server.pause()
    try:
        tasks.app.send_task(task.name, args=args, queue=queue, task_id=first.id)
        wait_until(lambda: f"{first.id}]: lock operation failed: the lock store is unreachable; deferred"
                   in worker.read_log(), what="the copy's pickup to be deferred")
    finally:
        lock_server.resume()
    wait_until(lambda: f"{first.id}]: execution waiting: another delivery of this task holds"
               in worker.read_log(), timeout=30, what="the deferred copy to come back and wait")


def test_a_copy_whose_pickup_reply_was_lost_leaves_the_slot_its_twin_in_the_same_worker_holds(
        lock_server: RedisServer, recs: Any) -> None:
    # The pool processes of one worker share an owner token: what the copy's lost pickup may have taken
    # is named by the moment it was sent too, so neither the janitor's delete nor the deferred copy's
    # takeover reaches the slot the running copy holds.
    tenant = uuid.uuid4().hex
    queue = f"twin-{tenant[:8]}"
    locks = lock_server.client(2)
    slots = limited_key(tasks.export_gated.name, tasks.export_gated.once_digest((tenant, 0), {}), "slots")
    env = {"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2?socket_timeout=0.5&socket_connect_timeout=0.5"}
    with running_worker(tasks.PORT, f"twin-{tenant[:6]}", concurrency=2, queues=queue, env=env) as worker:
        first = tasks.app.send_task(tasks.export_gated.name, args=[tenant, 1], queue=queue)
        started(recs, tenant)
        [held] = [name for name in locks.hkeys(slots) if name.startswith(b"S")]
        copy_with_a_lost_pickup(lock_server, worker, first, tasks.export_gated, [tenant, 1], queue)
        assert [name for name in locks.hkeys(slots) if name.startswith(b"S")] == [held]
        recs.rpush(f"gate:{tenant}:1", 1)
        assert first.get(timeout=20) == 1
    assert [event["n"] for event in events(recs, tenant, "start")] == [1]


def test_a_copy_whose_pickup_reply_was_lost_leaves_the_running_lock_its_twin_in_the_same_worker_holds(
        lock_server: RedisServer, recs: Any) -> None:
    # As for a slot: what the copy's lost pickup may have taken is named by the whole value it would
    # have written, not by the owner token the running copy shares.
    tag = uuid.uuid4().hex
    queue = f"twin-lock-{tag[:8]}"
    locks = lock_server.client(2)
    running = lock_key_of(tasks.gated, "running", tag)
    env = {"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2?socket_timeout=0.5&socket_connect_timeout=0.5"}
    with running_worker(tasks.PORT, f"twin-lock-{tag[:6]}", concurrency=2, queues=queue, env=env) as worker:
        first = tasks.app.send_task(tasks.gated.name, args=[tag], queue=queue)
        started(recs, tag)
        held = locks.get(running)
        copy_with_a_lost_pickup(lock_server, worker, first, tasks.gated, [tag], queue)
        assert held is not None and locks.get(running) == held
        recs.rpush(f"gate:{tag}", 1)
        assert first.get(timeout=20) == tag
    assert len(events(recs, tag, "start")) == 1


def test_a_pool_process_that_dies_beside_a_twin_in_the_same_worker_leaves_the_twins_running_lock(
        lock_server: RedisServer, recs: Any) -> None:
    # Another delivery of a running message reaches the worker's other pool process, which dies in its pickup.
    # The worker's main process cleans up after a dead process by the owner token, which the two share: the
    # lock that token names is the running one's, and stays.
    tag = uuid.uuid4().hex
    queue = f"twin-dies-{tag[:8]}"
    locks = lock_server.client(2)
    running = lock_key_of(tasks.gated, "running", tag)
    # A lease longer than the stall: the running lock outlives it, renewed or not.
    env = {"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2?socket_timeout=5&socket_connect_timeout=5",
           "ONCE_TEST_HEARTBEAT_TIMEOUT": "30"}
    with running_worker(tasks.PORT, f"twin-dies-{tag[:6]}", concurrency=2, queues=queue, env=env) as worker:
        first = tasks.app.send_task(tasks.gated.name, args=[tag], queue=queue)
        runner = started(recs, tag)[0]["pid"]
        held = locks.get(running)
        lock_server.pause()  # the copy's pickup waits on the store, in the other process
        try:
            tasks.app.send_task(tasks.gated.name, args=[tag], queue=queue, task_id=first.id)
            [twin] = wait_until(lambda: [request["worker_pid"] for request in executing(worker, first.id)
                                         if request["worker_pid"] != runner], what="the copy to be in its pickup")
            os.kill(twin, signal.SIGKILL)
            wait_until(lambda: "Worker exited prematurely" in worker.read_log(), what="the main process to see it die")
        finally:
            lock_server.resume()
        wait_until(lambda: re.search(r"(locks not released|released lock \S+) \(WorkerLostError\)", worker.read_log()),
                   what="the main process to be done with the copy")
        assert held is not None and locks.get(running) == held
        recs.rpush(f"gate:{tag}", 1)
        wait_until(lambda: events(recs, tag, "end"), what="the running execution to end")
        wait_until(lambda: locks.get(running) is None, what="the running execution to release its lock")
    assert len(events(recs, tag, "start")) == 1


def executing(worker: Worker, task_id: str) -> list[dict[str, Any]]:
    """The worker's active requests of ``task_id`` (Celery's remote control)."""
    active = tasks.app.control.inspect(destination=[worker.name], timeout=1.0).active() or {}
    return [request for request in active.get(worker.name, []) if request["id"] == task_id]


# -- the first calls of a process --------------------------------------------------------------


FIRST_CALLS = """
import json, threading
from tests import worker_app as tasks

barrier = threading.Barrier(32)
results, errors = [], []

def call():
    barrier.wait()
    try:
        results.append(tasks.parked.delay({tag!r}))
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=call) for _ in range(32)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({{"published": [r.id for r in results if r is not None], "errors": errors}}))
"""


def test_first_calls_from_many_threads_publish_one_message_and_raise_nothing(locks: Any) -> None:
    tag = uuid.uuid4().hex
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(FIRST_CALLS.format(tag=tag))], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    outcome = json.loads(out.strip().splitlines()[-1])
    assert outcome["errors"] == []
    assert len(outcome["published"]) == 1
    assert locks.get(lock_key_of(tasks.parked, "queue", tag)).decode() == outcome["published"][0]
