"""Locks at the master of a Sentinel deployment: workers and publishers follow a failover."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_once_task import OnceTaskLocked
from celery_once_task.store.connection import make_client
from tests.lock_scenarios import (
    TOPOLOGY_QUEUE,
    assert_no_locks_left,
    duplicate_call_is_dropped,
    duplicate_execution_is_rejected,
    lock_keys,
    new_tag,
    publishing_to,
    topology_worker,
)
from tests.support import RedisServer, Worker, events, wait_until
from tests.topologies import SERVICE, SentinelTopology
from tests.worker_app import gated


@pytest.fixture(scope="module")
def sentinel(redis_server: RedisServer) -> Iterator[tuple[SentinelTopology, Worker]]:
    topology = SentinelTopology()
    try:
        # The worker uses Celery's broker spelling and options copied from broker_transport_options,
        # the publisher (this process) the redis+sentinel:// form.
        broker_transport_options = {"master_name": SERVICE, "visibility_timeout": 3600}
        with topology_worker(redis_server.port, "sentinel", topology.kombu_url(), broker_transport_options) as worker:
            yield topology, worker
    finally:
        topology.stop()


@pytest.fixture()
def locks(sentinel: tuple[SentinelTopology, Worker]) -> Iterator[Any]:
    """The lock store's client, following the master; this process publishes through it."""
    topology, _ = sentinel
    with publishing_to(topology.url(), {}):
        yield make_client(topology.url())


def test_duplicate_call_is_dropped_with_locks_at_a_sentinel_master(locks: Any, recs: redis.Redis) -> None:
    duplicate_call_is_dropped(recs, locks, new_tag("sentinel-queue"))


def test_duplicate_execution_is_rejected_with_locks_at_a_sentinel_master(locks: Any, recs: redis.Redis) -> None:
    duplicate_execution_is_rejected(recs, locks, new_tag("sentinel-running"))


def test_a_replicated_running_lock_still_excludes_duplicates_after_a_failover(
    sentinel: tuple[SentinelTopology, Worker], locks: Any, recs: redis.Redis
) -> None:
    topology, worker = sentinel
    tag = new_tag("sentinel-failover")
    _, running_key = lock_keys(gated, tag)
    first = gated.apply_async((tag,), queue=TOPOLOGY_QUEUE)
    wait_until(lambda: events(recs, tag, "start"), what=f"gated({tag}) to start")
    old_master = topology.master.port
    assert locks.execute_command("WAIT", 1, 5000) == 1  # the replica has the running lock

    topology.failover()

    assert topology.master_port() != old_master
    assert locks.exists(running_key)  # read from the new master
    duplicate = gated.apply_async((tag,), queue=TOPOLOGY_QUEUE)
    with pytest.raises(OnceTaskLocked):
        duplicate.get(timeout=30)
    recs.rpush(f"gate:{tag}", 1)
    assert first.get(timeout=30) == tag
    assert len(events(recs, tag, "start")) == 1
    assert_no_locks_left(locks, gated, tag)
    # The same worker and publisher, without a restart, de-duplicate at the new master.
    duplicate_call_is_dropped(recs, locks, new_tag("sentinel-after"))
    assert worker.alive()
