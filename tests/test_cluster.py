"""Locks on a three-node Redis Cluster: every lock operation with keys spread over all nodes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_once_task import LockStoreUnavailable, internals
from celery_once_task.ownership import RunningOwner
from celery_once_task.record_keys import parked_keys
from celery_once_task.store import LockStore
from celery_once_task.store.connection import make_client, scan_keys
from tests.lock_scenarios import (
    TOPOLOGY_QUEUE,
    assert_no_locks_left,
    both_processes_busy,
    duplicate_execution_is_rejected,
    lock_keys,
    new_tag,
    publishing_to,
    topology_worker,
)
from tests.support import RedisServer, Worker, events, free_port, wait_until
from tests.test_acl import documented_rules
from tests.topologies import ClusterTopology, Server
from tests.worker_app import echo

#: The ACL rules for a cluster of docs/topologies.md, word for word: the rule, and what a cluster adds to it.
CLUSTER_ACL_RULES = f"{documented_rules()} +cluster|slots +cluster|nodes +command"


@pytest.fixture(scope="module")
def cluster(redis_server: RedisServer) -> Iterator[tuple[ClusterTopology, Worker]]:
    topology = ClusterTopology()
    try:
        with topology_worker(redis_server.port, "cluster", topology.url(), {}) as worker:
            yield topology, worker
    finally:
        topology.stop()


@pytest.fixture()
def locks(cluster: tuple[ClusterTopology, Worker]) -> Iterator[Any]:
    topology, _ = cluster
    with publishing_to(topology.url(), {}):
        yield make_client(topology.url())


def tags_on_every_node(locks: Any, prefix: str) -> list[str]:
    """Tags whose queue locks, and whose running locks, between them live on all three nodes."""
    tags: list[str] = []
    queue_nodes: set[str] = set()
    running_nodes: set[str] = set()
    while len(queue_nodes) < 3 or len(running_nodes) < 3:
        tag = new_tag(prefix)
        queue_key, running_key = lock_keys(echo, tag)
        queue_node, running_node = locks.get_node_from_key(queue_key).name, locks.get_node_from_key(running_key).name
        if queue_node not in queue_nodes or running_node not in running_nodes:
            tags.append(tag)
            queue_nodes.add(queue_node)
            running_nodes.add(running_node)
    return tags


def test_duplicate_calls_are_dropped_with_locks_on_every_cluster_node(locks: Any, recs: redis.Redis) -> None:
    tags = tags_on_every_node(locks, "cluster-queue")
    with both_processes_busy(recs, "cluster-busy"):
        firsts = [echo.apply_async((tag,), queue=TOPOLOGY_QUEUE) for tag in tags]
        assert [echo.apply_async((tag,), queue=TOPOLOGY_QUEUE) for tag in tags] == [None] * len(tags)
        assert [locks.get(lock_keys(echo, tag)[0]) for tag in tags] == [first.id.encode() for first in firsts]
    for first in firsts:
        first.get(timeout=30)
    for tag in tags:
        assert len(events(recs, tag, "run")) == 1
        assert_no_locks_left(locks, echo, tag)


def test_duplicate_execution_is_rejected_with_locks_on_a_cluster(locks: Any, recs: redis.Redis) -> None:
    duplicate_execution_is_rejected(recs, locks, new_tag("cluster-running"))


def test_scripts_are_loaded_again_on_nodes_that_lost_them(
    cluster: tuple[ClusterTopology, Worker], locks: Any, recs: redis.Redis
) -> None:
    topology, _ = cluster
    refused_before = error_replies(topology, "NOSCRIPT")
    for node in topology.nodes:
        node.client.script_flush()
    duplicate_execution_is_rejected(recs, locks, new_tag("cluster-noscript"))
    assert error_replies(topology, "NOSCRIPT") > refused_before


#: Owners of running locks taken directly through the store.
OWNER_0 = RunningOwner("id-0", 0, "tests@cluster", "0" * 16, False)
OWNER_1 = RunningOwner("id-1", 0, "tests@cluster", "1" * 16, False)


def error_replies(topology: ClusterTopology, error: str) -> int:
    """How many replies of this error the nodes have sent."""
    return sum(node.info("errorstats").get(f"errorstat_{error}", {}).get("count", 0) for node in topology.nodes)


def test_a_lock_whose_slot_moved_to_another_node_is_found_there(
    cluster: tuple[ClusterTopology, Worker], locks: Any
) -> None:
    topology, _ = cluster
    store = LockStore(locks)
    queue_key, running_key = lock_keys(echo, new_tag("cluster-moved"))
    assert store.locks.acquire_queue(queue_key, "id-1", 60).acquired
    topology.move_slot_of(queue_key)  # behind the client's back: its slot map is now stale
    redirected_before = error_replies(topology, "MOVED")

    assert store.locks.pickup(queue_key, "id-1", running_key, OWNER_1, 60).acquired
    assert error_replies(topology, "MOVED") > redirected_before
    assert not locks.exists(queue_key)
    assert store.locks.release(running_key, OWNER_1.token, prefix=True)


def test_a_lock_call_whose_reply_was_lost_is_not_sent_again_behind_the_librarys_back(
    cluster: tuple[ClusterTopology, Worker], locks: Any
) -> None:
    topology, _ = cluster
    # A node the worker's rescuer does not run its script on once a second (the parked registry's):
    # the count below is of this call's scripts alone.
    parked_node = topology.node_of(parked_keys()[0])
    while True:
        queue_key, running_key = lock_keys(echo, new_tag("cluster-lost-reply"))
        if topology.node_of(running_key) is not parked_node:
            break
    store = LockStore(make_client(topology.url(), {"socket_timeout": 0.5}))
    node = topology.node_of(running_key)
    sent_to_node = sum(topology.node_of(key) is node for key in (queue_key, running_key))
    # Scripts loaded on the nodes first: a NOSCRIPT reply would mean the call never ran.
    assert store.locks.pickup(queue_key, "id-0", running_key, OWNER_0, 60).acquired
    assert store.locks.release(running_key, OWNER_0.token, prefix=True)
    runs_before = script_runs(node)
    # The node stops answering for longer than the client waits, then runs what it was sent.
    sleeper = node.make_client().connection_pool.get_connection()
    sleeper.send_command("DEBUG", "SLEEP", "1.5")
    probe = node.make_client(socket_timeout=0.05, retry=Retry(NoBackoff(), 0))
    wait_until(lambda: not answers(probe), what="the node to sleep")

    with pytest.raises(redis.RedisError):  # the timeout, after the store's tries (none here)
        store.locks.pickup(queue_key, "id-1", running_key, OWNER_1, 60)
    assert sleeper.read_response() == b"OK"
    wait_until(lambda: OWNER_1.holds((locks.get(running_key) or b"").decode()), what="the node to run the call")
    # Once: sent again, the call would have found its own token and reported a duplicate.
    assert script_runs(node) - runs_before == sent_to_node
    assert store.locks.release(running_key, OWNER_1.token, prefix=True)


def script_runs(node: Server) -> int:
    return int(node.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.TimeoutError:
        return False


def test_listing_keys_covers_every_primary(locks: Any) -> None:
    keys = {f"once_task:listing:{n:016x}:queue" for n in range(30)}
    for key in keys:
        locks.set(key, "id", px=60_000)
    holders = {locks.get_node_from_key(key).name for key in keys}
    assert len(holders) == 3
    assert set(scan_keys(locks, "once_task:listing:*", count=10)) == keys
    for key in keys:
        locks.delete(key)


def test_a_user_limited_to_the_library_takes_and_releases_locks_on_every_node(
    cluster: tuple[ClusterTopology, Worker],
) -> None:
    topology, _ = cluster
    for node in topology.nodes:
        node.client.execute_command("ACL", "SETUSER", "oncelock", "reset", "on", ">cluster-pw",
                                    *CLUSTER_ACL_RULES.split())
        node.client.execute_command("ACL", "LOG", "RESET")
    store = LockStore(make_client(topology.url().replace("://", "://oncelock:cluster-pw@")))
    tags = tags_on_every_node(store.client, "cluster-acl")
    for tag in tags:
        queue_key, running_key = lock_keys(echo, tag)
        assert store.locks.acquire_queue(queue_key, "id-1", 60).acquired
        assert store.locks.pickup(queue_key, "id-1", running_key, OWNER_1, 60).acquired
        assert store.locks.release(running_key, OWNER_1.token, prefix=True)
    assert list(scan_keys(store.client, "once_task:*cluster-acl*")) == []
    assert [entry for node in topology.nodes for entry in node.client.acl_log()] == []


def test_an_unreachable_cluster_fails_the_call_naming_its_nodes() -> None:
    ports = (free_port(), free_port())
    url = f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    with publishing_to(url, {}), pytest.raises(LockStoreUnavailable) as raised:
        echo.delay(new_tag("cluster-unreachable"))
    assert all(f"127.0.0.1:{port}" in str(raised.value) for port in ports)


def test_no_command_of_the_library_or_the_worker_was_refused_with_crossslot(
    cluster: tuple[ClusterTopology, Worker],
) -> None:
    # Last in the module: every test above has run its lock operations by now.
    topology, worker = cluster
    assert "CROSSSLOT" not in topology.errors()
    assert "CROSSSLOT" not in worker.read_log()


def test_the_cluster_pipelines_queue_holds_the_queued_commands(locks: Any) -> None:
    # The one private reach-in of the cluster path (internals.cluster_pipeline_queue), on the installed redis-py.
    pipe = locks.pipeline()
    pipe.execute_command("SET", "internals:{a}", "1")
    pipe.execute_command("GET", "internals:{a}")
    queue = internals.cluster_pipeline_queue(pipe)
    assert len(queue) == len(pipe) == 2
    assert [command.args for command in queue] == [("SET", "internals:{a}", "1"), ("GET", "internals:{a}")]
    try:
        # What scripts sends: the queue, with no redirections pass.
        replies = pipe.send_cluster_commands(queue, raise_on_error=False, allow_redirections=False)
    finally:
        pipe.reset()
    assert list(replies) == [True, b"1"]
    assert len(internals.cluster_pipeline_queue(pipe)) == 0
