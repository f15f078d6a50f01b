"""The README's two promises, checked through a real worker on whatever topology holds the locks.

The broker, the result backend and the tasks' records stay on the test
session's own redis-server; only the locks live on the topology under test.
Workers consume a queue of their own, so the session's shared worker (if
another test module started it) never takes these tasks.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import redis

from celery_once_task import OnceTaskLocked, configure
from celery_once_task.keys import QUEUE, RUNNING
from tests import worker_app
from tests.support import Worker, events, running_worker, wait_until
from tests.worker_app import echo, gated

#: The queue the topology tests' workers consume.
TOPOLOGY_QUEUE = "topology"


def new_tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def topology_worker(broker_port: int, name: str, url: str, options: Mapping[str, Any]) -> Iterator[Worker]:
    """A two-process worker whose locks are at ``url`` with ``options``.

    With the default heartbeat_timeout (30 s): a manual Sentinel failover
    leaves the old master taking writes for about ten seconds, and a lease
    must outlast that window to survive it (see the topology table of docs/topologies.md).
    """
    env = {"ONCE_TEST_LOCKS_URL": url, "ONCE_TEST_LOCKS_OPTIONS": json.dumps(dict(options)),
           "ONCE_TEST_HEARTBEAT_TIMEOUT": "30"}
    with running_worker(broker_port, name, queues=TOPOLOGY_QUEUE, concurrency=2, env=env) as worker:
        yield worker


@contextlib.contextmanager
def publishing_to(url: str, options: Mapping[str, Any]) -> Iterator[None]:
    """This process's calls take their locks at ``url`` while the block runs."""
    configure(redis_url=url, redis_options=dict(options))
    try:
        yield
    finally:
        configure(redis_url=worker_app.LOCKS_URL, redis_options=worker_app.LOCKS_OPTIONS)


def lock_keys(task: Any, tag: str) -> tuple[str, str]:
    return task.once_key((tag,), {}, QUEUE), task.once_key((tag,), {}, RUNNING)


def assert_no_locks_left(locks: Any, task: Any, tag: str) -> None:
    # One key per command: on a cluster the two keys may live on different nodes.
    for key in lock_keys(task, tag):
        wait_until(lambda key=key: not locks.exists(key), timeout=10, what=f"{key} to be released")


@contextlib.contextmanager
def both_processes_busy(recs: redis.Redis, tag: str) -> Iterator[None]:
    """Hold both pool processes of the worker at gates, so that new calls wait in the queue."""
    results = [gated.apply_async((f"{tag}-busy-{n}",), queue=TOPOLOGY_QUEUE) for n in (1, 2)]
    for n in (1, 2):
        wait_until(lambda n=n: events(recs, f"{tag}-busy-{n}", "start"), what="the worker to start a gated task")
    try:
        yield
    finally:
        for n in (1, 2):
            recs.rpush(f"gate:{tag}-busy-{n}", 1)
        for result in results:
            result.get(timeout=30)


def duplicate_call_is_dropped(recs: redis.Redis, locks: Any, tag: str) -> None:
    """A call made again while the first waits in the queue is not published; the first runs once."""
    queue_key, _ = lock_keys(echo, tag)
    with both_processes_busy(recs, tag):
        first = echo.apply_async((tag,), queue=TOPOLOGY_QUEUE)
        assert echo.apply_async((tag,), queue=TOPOLOGY_QUEUE) is None
        assert locks.get(queue_key) == first.id.encode()
    first.get(timeout=30)
    assert len(events(recs, tag, "run")) == 1
    assert_no_locks_left(locks, echo, tag)


def duplicate_execution_is_rejected(recs: redis.Redis, locks: Any, tag: str) -> None:
    """A call that starts while the same call runs is rejected with OnceTaskLocked; the first completes."""
    _, running_key = lock_keys(gated, tag)
    first = gated.apply_async((tag,), queue=TOPOLOGY_QUEUE)
    wait_until(lambda: events(recs, tag, "start"), what=f"gated({tag}) to start")
    assert locks.exists(running_key)
    second = gated.apply_async((tag,), queue=TOPOLOGY_QUEUE)
    with pytest.raises(OnceTaskLocked):
        second.get(timeout=30)
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=30) == tag
    assert len(events(recs, tag, "start")) == 1
    assert_no_locks_left(locks, gated, tag)
