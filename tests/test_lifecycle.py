"""Locks stay right on every path of a task's life: retries, revocation, time limits, shutdown, redelivery."""

from __future__ import annotations

import datetime
import os
import signal
import time
import uuid
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from celery_once_task.ownership import owner_fields
from tests import worker_app as tasks
from tests.support import Worker, events, running_worker, wait_until

#: The core tests run with RabbitMQ as the broker too (see conftest).
pytestmark = pytest.mark.any_broker


def key(task: Any, lock_type: str, *args: Any) -> str:
    return str(task.once_key(args, {}, lock_type))


def started(recs: Any, tag: str, count: int = 1) -> list[dict[str, Any]]:
    return wait_until(lambda: len(events(recs, tag, "start")) >= count and events(recs, tag, "start"),
                      what=f"{count} start(s) of {tag}")


# -- retries ------------------------------------------------------------------


def test_retry_with_countdown_zero_runs_until_it_succeeds(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    assert tasks.retrying.delay(tag, 2, 0).get(timeout=30) == 3
    assert [run["retries"] for run in events(recs, tag, "run")] == [0, 1, 2]


def test_retry_with_a_delay_runs(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    assert tasks.retrying.delay(tag, 1, 1).get(timeout=30) == 2


def test_autoretry_runs_until_it_succeeds(worker: Any) -> None:
    tag = uuid.uuid4().hex
    assert tasks.autoretrying.delay(tag, 2).get(timeout=30) == 3


def test_retried_task_leaves_no_lock(worker: Any, locks: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.retrying.delay(tag, 2, 0).get(timeout=30)
    assert locks.exists(key(tasks.retrying, "queue", tag, 2, 0), key(tasks.retrying, "running", tag, 2, 0)) == 0


def test_new_call_is_deduplicated_against_a_waiting_retry(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.retrying.delay(tag, 1, 3)
    wait_until(lambda: events(recs, tag, "run"), what="the first attempt")
    # The retry is published with the same id and holds the queue lock while it waits.
    wait_until(lambda: locks.get(key(tasks.retrying, "queue", tag, 1, 3)) == result.id.encode(),
               what="the waiting retry to hold the queue lock")
    assert tasks.retrying.delay(tag, 1, 3) is None
    assert result.get(timeout=30) == 2
    assert len(events(recs, tag, "run")) == 2


def test_retry_runs_while_the_first_attempts_hooks_are_still_running(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.retry_with_slow_hook.delay(tag)
    wait_until(lambda: len(events(recs, tag, "run")) == 2, what="the retry to run")
    assert events(recs, tag, "hook-start") and not events(recs, tag, "hook-end")
    recs.rpush(f"gate:{tag}:hook", 1)
    assert result.get(timeout=30) == 2


def test_retry_whose_earlier_attempt_released_in_between_takes_the_lock(locks: Any) -> None:
    """The race a retry with countdown=0 can meet: the takeover finds the lock already free."""
    from celery.app.task import Context

    from celery_once_task import running as running_lock
    from celery_once_task.ownership import RunningOwner
    from celery_once_task.store import LockStore

    task_id = str(uuid.uuid4())
    running = key(tasks.retrying, "running", task_id)
    earlier = RunningOwner.for_execution(task_id, 0)
    retry = RunningOwner.for_execution(task_id, 1)
    store = LockStore(locks)
    # The retry saw the earlier attempt's token; the earlier attempt has since released it.
    settings = tasks.retrying.once_settings()
    held = running_lock._conflict(tasks.retrying, Context(id=task_id, retries=1),
                                  running_lock.RunningLock(store, settings, running, running.rsplit(":", 2)[1], retry),
                                  earlier.value())
    assert held.token == retry.token
    assert retry.holds(locks.get(running).decode())
    locks.delete(running)


# -- revocation -----------------------------------------------------------------


@pytest.fixture
def busy_worker(redis_server: Any, recs: Any) -> Any:
    """A worker with one pool process kept busy, so that the next message waits behind a running task.

    Prefork, not solo: its main process stays free to take the revoke broadcast.
    """
    queue = f"busy-{uuid.uuid4().hex[:8]}"
    with running_worker(redis_server.port, queue, concurrency=1, queues=queue) as worker:
        blocker = uuid.uuid4().hex
        tasks.gated.apply_async((blocker,), queue=queue)
        started(recs, blocker)
        worker.queue = queue
        worker.release = lambda: recs.rpush(f"gate:{blocker}", 1)
        yield worker


def test_revoked_queued_task_releases_its_queue_lock(busy_worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    victim = tasks.echo.apply_async((tag,), queue=busy_worker.queue)
    victim.revoke()
    wait_until(lambda: f"flagged as revoked: {victim.id}" in busy_worker.read_log(),
               what="the worker to take the revoke")
    assert locks.get(key(tasks.echo, "queue", tag)) == victim.id.encode()
    busy_worker.release()
    wait_until(lambda: not locks.exists(key(tasks.echo, "queue", tag)), what="the queue lock to be released")
    assert victim.state == "REVOKED"
    assert events(recs, tag, "run") == []


def test_expired_task_releases_its_queue_lock(busy_worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    victim = tasks.echo.apply_async((tag,), queue=busy_worker.queue, expires=1)
    deadline = time.time() + 1.5
    wait_until(lambda: time.time() > deadline, what="the message to expire")
    busy_worker.release()
    wait_until(lambda: not locks.exists(key(tasks.echo, "queue", tag)), what="the queue lock to be released")
    assert victim.state == "REVOKED"
    assert events(recs, tag, "run") == []


def test_revoked_prefetched_task_releases_its_queue_lock(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    victim = tasks.echo.apply_async((tag,), countdown=2)
    if tasks.QUEUE_TYPE != "quorum":  # there, native delayed delivery keeps it in the broker until due
        wait_until(lambda: f"tests.worker_app.echo[{victim.id}]" in worker.read_log(),
                   what="the worker to prefetch the message")
    victim.revoke()
    wait_until(lambda: not locks.exists(key(tasks.echo, "queue", tag)), what="the queue lock to be released")
    assert events(recs, tag, "run") == []


def test_terminated_task_releases_its_running_lock(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    victim = tasks.gated.delay(tag)
    started(recs, tag)
    victim.revoke(terminate=True)
    wait_until(lambda: not locks.exists(key(tasks.gated, "running", tag)), timeout=10,
               what="the running lock to be released")
    wait_until(lambda: victim.state == "REVOKED", what="the task to be marked revoked")


# -- internal errors, time limits, killed children ------------------------------------


def test_internal_error_leaves_no_lock(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.internal_error.delay(tag)
    wait_until(lambda: result.state in ("SUCCESS", "FAILURE"), what="the task to end")
    assert locks.exists(key(tasks.internal_error, "queue", tag), key(tasks.internal_error, "running", tag)) == 0


def test_hard_time_limit_releases_the_running_lock_within_seconds(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.hard_limited.delay(tag)
    started(recs, tag)
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=20)
    wait_until(lambda: not locks.exists(key(tasks.hard_limited, "running", tag)), timeout=5,
               what="the running lock to be released")


def test_soft_time_limit_releases_the_running_lock(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.soft_limited.delay(tag)
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=20)
    assert locks.exists(key(tasks.soft_limited, "running", tag)) == 0


def test_killed_pool_child_releases_the_running_lock_within_seconds(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.gated.delay(tag)
    (start,) = started(recs, tag)
    os.kill(start["pid"], signal.SIGKILL)
    with pytest.raises(WorkerLostError):
        result.get(timeout=20)
    wait_until(lambda: not locks.exists(key(tasks.gated, "running", tag)), timeout=5,
               what="the running lock to be released")


# -- worker shutdown ------------------------------------------------------------------


def test_warm_shutdown_keeps_the_running_lock_until_the_task_ends(redis_server: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    worker = Worker(redis_server.port, "warm", queues="warm").wait_ready()
    try:
        result = tasks.gated.apply_async((tag,), queue="warm")
        started(recs, tag)
        worker.signal(signal.SIGTERM)
        wait_until(lambda: "Warm shutdown" in worker.read_log(), what="the warm shutdown to begin")
        # The task still runs: for a while, its lock must stay.
        observe_until = time.monotonic() + 1.5
        while time.monotonic() < observe_until:
            assert locks.exists(key(tasks.gated, "running", tag)) == 1
            time.sleep(0.1)
        recs.rpush(f"gate:{tag}", 1)
        assert result.get(timeout=20) == tag
        assert locks.exists(key(tasks.gated, "running", tag)) == 0
    finally:
        worker.stop()


def test_cold_shutdown_releases_the_running_locks_of_killed_tasks(redis_server: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    worker = Worker(redis_server.port, "cold", queues="cold").wait_ready()
    try:
        tasks.gated.apply_async((tag,), queue="cold")
        started(recs, tag)
        worker.signal(signal.SIGQUIT)
        worker.process.wait(30)
        assert locks.exists(key(tasks.gated, "running", tag)) == 0
    finally:
        worker.stop()


@pytest.mark.redis_broker  # reads the Redis broker's lists
def test_prefetched_message_keeps_its_queue_lock_at_shutdown(redis_server: Any, locks: Any, broker: Any) -> None:
    tag = uuid.uuid4().hex
    worker = Worker(redis_server.port, "prefetch", queues="prefetch").wait_ready()
    try:
        waiting = tasks.echo.apply_async((tag,), queue="prefetch", countdown=60)
        wait_until(lambda: f"tests.worker_app.echo[{waiting.id}]" in worker.read_log(),
                   what="the worker to prefetch it")
        worker.stop()
        assert locks.get(key(tasks.echo, "queue", tag)) == waiting.id.encode()
        assert any(waiting.id.encode() in raw for raw in broker.lrange("prefetch", 0, -1))
    finally:
        worker.stop()


# -- acks_late and redelivery ----------------------------------------------------------


VISIBILITY_TIMEOUT = 2
VISIBILITY = {"ONCE_TEST_VISIBILITY": str(VISIBILITY_TIMEOUT)}


def wait_out_visibility_timeout() -> None:
    """The broker hands an unacknowledged message out again once it is this old.

    kombu restores such messages when a consumer starts (and then only every
    few minutes), so the tests start the receiving worker after this.
    """
    deadline = time.time() + VISIBILITY_TIMEOUT + 0.5
    wait_until(lambda: time.time() > deadline, what="the visibility timeout to pass")


@pytest.mark.redis_broker  # reads the Redis broker's lists
def test_redelivered_message_does_not_run_beside_the_original(redis_server: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"late-{tag[:8]}"
    with running_worker(redis_server.port, f"late-a-{tag[:6]}", queues=queue, env=VISIBILITY) as first:
        result = tasks.gated_late.apply_async((tag,), queue=queue)
        started(recs, tag)
        wait_out_visibility_timeout()
        with running_worker(redis_server.port, f"late-b-{tag[:6]}", queues=queue, env=VISIBILITY) as second:
            # Either worker may receive the copy: the first turns it away at
            # once (its own instance runs the original), the second once it
            # has seen the first worker's heartbeat stay alive.
            wait_until(lambda: "another delivery of this task holds running lock"
                       in first.read_log() + second.read_log(),
                       timeout=30, what="the redelivered copy to be turned away")
        assert len(events(recs, tag, "start")) == 1
        recs.rpush(f"gate:{tag}", 1)
        assert result.get(timeout=20) == tag


def test_message_of_a_dead_worker_runs_once_its_heartbeat_expires(redis_server: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    queue = f"dead-{tag[:8]}"
    doomed = Worker(redis_server.port, f"doomed-{tag[:6]}", queues=queue, env=VISIBILITY).wait_ready()
    try:
        result = tasks.gated_late.apply_async((tag,), queue=queue)
        started(recs, tag)
        holder = owner_fields(locks.get(key(tasks.gated_late, "running", tag)).decode())
        for pid in doomed.child_pids():
            os.kill(pid, signal.SIGKILL)
        doomed.process.kill()
        doomed.process.wait(10)
    finally:
        doomed.stop()
    wait_out_visibility_timeout()
    with running_worker(redis_server.port, f"heir-{tag[:6]}", queues=queue, env=VISIBILITY):
        started(recs, tag, count=2)
        assert owner_fields(locks.get(key(tasks.gated_late, "running", tag)).decode())["instance"] != holder["instance"]
        recs.rpush(f"gate:{tag}", 1)
        assert result.get(timeout=20) == tag


# -- countdown and ETA ---------------------------------------------------------------------


def test_eta_further_ahead_than_the_ttl_keeps_the_queue_lock_until_pickup(locks: Any) -> None:
    tag = uuid.uuid4().hex
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=5)
    tasks.parked.apply_async((tag,), eta=eta)
    assert locks.pttl(key(tasks.parked, "queue", tag)) > (5 * 3600 + 3590) * 1000
