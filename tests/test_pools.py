"""Every pool keeps the promise: prefork, threads, solo, gevent and eventlet workers, one behaviour each.

Each pool gets two workers of its own, on a queue of its own, so that a
duplicate meets the first execution in a worker of the same pool. The gevent
and eventlet pools monkey-patch the worker: its leases are renewed on an OS
thread of their own, so that a task body that never yields to the pool's hub
(CPU work, a C library the pool does not patch) keeps its lock however long
it computes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import states

from celery_once_task import OnceTaskLocked
from celery_once_task.ownership import Lease
from tests import worker_app as tasks
from tests.support import Worker, events, lock_key_of, started, wait_until

POOLS = ("prefork", "threads", "solo", "gevent", "eventlet")
#: The pools whose tests run with RabbitMQ as the broker too (see conftest): the green pools, whose
#: monkey-patched sockets RabbitMQ's client meets differently. The rest of the RabbitMQ run is on prefork.
_ANY_BROKER = ("gevent", "eventlet")
_POOL_PARAMS = [pytest.param(pool, marks=pytest.mark.any_broker) if pool in _ANY_BROKER else pool for pool in POOLS]
#: The pools' workers keep short leases, so that outliving one takes seconds.
HEARTBEAT_TIMEOUT = 2
LEASE = Lease(HEARTBEAT_TIMEOUT)
ENV = {"ONCE_TEST_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)}


@dataclass
class Pool:
    """Two workers of one pool, consuming ``queue``."""

    name: str
    queue: str
    workers: list[Worker]

    def start_worker(self, port: int, label: str, queue: str) -> Worker:
        return Worker(port, label, pool=self.name, concurrency=concurrency(self.name), queues=queue, env=ENV)


def concurrency(pool: str) -> int:
    return 1 if pool == "solo" else 2


@pytest.fixture(scope="module", params=_POOL_PARAMS)
def pool(request: Any, redis_server: Any) -> Iterator[Pool]:
    name = request.param
    queue = f"pool-{name}"
    workers = [Worker(redis_server.port, f"{name}-{index}", pool=name, concurrency=concurrency(name), queues=queue,
                      env=ENV) for index in (1, 2)]
    try:
        for worker in workers:
            worker.wait_ready()
        yield Pool(name, queue, workers)
    finally:
        for worker in workers:
            worker.stop()


def no_locks_left(locks: Any, task: Any, *args: Any) -> bool:
    return locks.exists(*(lock_key_of(task, kind, *args) for kind in ("queue", "running", "waiting"))) == 0


def test_duplicate_call_returns_none_until_a_worker_picks_the_first_up(pool: Pool, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    # A countdown: a worker receives the first call at once, and starts it a second later.
    first = tasks.gated.apply_async((tag,), queue=pool.queue, countdown=1)
    assert tasks.gated.apply_async((tag,), queue=pool.queue) is None
    started(recs, tag)
    later = tasks.gated.apply_async((tag,), queue=pool.queue)
    assert later is not None  # the queue lock went with the pickup
    with pytest.raises(OnceTaskLocked):
        later.get(timeout=20)
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag
    assert no_locks_left(locks, tasks.gated, tag)


def test_duplicate_execution_is_rejected_while_the_first_runs(pool: Pool, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.gated.apply_async((tag,), queue=pool.queue)
    started(recs, tag)
    duplicate = tasks.app.send_task(tasks.gated.name, args=[tag], queue=pool.queue)
    with pytest.raises(OnceTaskLocked, match=first.id):
        duplicate.get(timeout=20)
    assert len(events(recs, tag, "start")) == 1
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag


def test_running_lock_is_released_when_the_task_ends(pool: Pool, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.gated.apply_async((tag,), queue=pool.queue)
    started(recs, tag)
    assert locks.exists(lock_key_of(tasks.gated, "running", tag)) == 1
    recs.rpush(f"gate:{tag}", 1)
    assert result.get(timeout=20) == tag
    assert no_locks_left(locks, tasks.gated, tag)


def test_task_past_its_running_lock_timeout_keeps_its_lock(pool: Pool, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.short_running_lock.apply_async((tag,), queue=pool.queue)
    started(recs, tag)
    key = lock_key_of(tasks.short_running_lock, "running", tag)
    value = locks.get(key)
    past = time.monotonic() + max(LEASE.ttl, tasks.short_running_lock.running_lock_timeout) + 1
    while time.monotonic() < past:
        assert locks.get(key) == value
        time.sleep(0.2)
    duplicate = tasks.app.send_task(tasks.short_running_lock.name, args=[tag], queue=pool.queue)
    with pytest.raises(OnceTaskLocked):
        duplicate.get(timeout=20)
    recs.rpush(f"gate:{tag}", 1)
    assert result.get(timeout=20) == tag
    assert locks.exists(key) == 0


def test_body_that_never_yields_keeps_its_lock_for_twice_the_heartbeat_timeout(pool: Pool, locks: Any,
                                                                               recs: Any) -> None:
    tag = uuid.uuid4().hex
    seconds = 2 * HEARTBEAT_TIMEOUT + 1
    result = tasks.spin.apply_async((tag, seconds), queue=pool.queue)
    started(recs, tag)
    key = lock_key_of(tasks.spin, "running", tag, seconds)
    value = locks.get(key)
    duplicate = tasks.app.send_task(tasks.spin.name, args=[tag, seconds], queue=pool.queue)
    with pytest.raises(OnceTaskLocked):
        duplicate.get(timeout=20)
    while not events(recs, tag, "end"):
        assert locks.get(key) == value, "the lease ran out while the body computed"
        time.sleep(0.2)
    assert result.get(timeout=20) == tag
    assert len(events(recs, tag, "start")) == 1
    assert locks.exists(key) == 0


def test_killed_worker_frees_its_keys_within_the_lease(pool: Pool, redis_server: Any, locks: Any,
                                                       recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"doomed-{pool.name}-{tag[:8]}"
    doomed = pool.start_worker(redis_server.port, f"doomed-{pool.name}-{tag[:6]}", queue).wait_ready()
    try:
        tasks.gated.apply_async((tag,), queue=queue)
        started(recs, tag)
        key = lock_key_of(tasks.gated, "running", tag)
        assert locks.exists(key) == 1
        doomed.process.kill()  # the whole worker; a prefork pool's children die with it
        killed_at = time.monotonic()
        doomed.process.wait(10)
    finally:
        doomed.stop()
    wait_until(lambda: locks.exists(key) == 0, timeout=LEASE.ttl + 10, interval=0.05,
               what="the dead worker's lease to end")
    assert time.monotonic() - killed_at <= LEASE.ttl + 3
    again = tasks.gated.apply_async((tag,), queue=pool.queue)
    started(recs, tag, count=2)
    recs.rpush(f"gate:{tag}", 1)
    assert again.get(timeout=20) == tag


def test_waiting_copy_runs_after_the_running_copy(pool: Pool, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.waiting_gated.apply_async((tag, 1), queue=pool.queue)
    started(recs, tag)
    second = tasks.waiting_gated.apply_async((tag, 2), queue=pool.queue)
    wait_until(lambda: locks.exists(lock_key_of(tasks.waiting_gated, "waiting", tag)),
               what="the second call to wait")
    assert second.state == states.PENDING
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=20) == tag
    starts = started(recs, tag, count=2)
    recs.rpush(f"gate:{tag}", 1)
    assert second.get(timeout=20) == tag
    first_end = next(event for event in events(recs, tag, "end") if event["value"] == 1)
    assert starts[1]["value"] == 2
    assert starts[1]["t"] >= first_end["t"]
    assert no_locks_left(locks, tasks.waiting_gated, tag)
