"""The lock store failing: nothing silently dropped, nothing left locked, no error inside Celery's hooks."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import ResponseError

from celery_once_task import LockStoreUnavailable, OnceTaskError, configure
from celery_once_task.keys import limited_key
from celery_once_task.ownership import RunningOwner
from celery_once_task.settings import reset_configuration
from celery_once_task.store import Claim, LockStore, scripts, wire
from celery_once_task.store.lua.slots import SlotCode
from tests import worker_app as tasks
from tests.support import RedisServer, events, free_port, running_worker, wait_until

UNREACHABLE = "redis://127.0.0.1:1/0"


@pytest.fixture
def unreachable_lock_store() -> Iterator[None]:
    configure(redis_url=UNREACHABLE)
    yield
    reset_configuration()
    configure(redis_url=tasks.LOCKS_URL)


def parked_count(broker: Any, tag: str) -> int:
    return sum(tag.encode() in raw for raw in broker.lrange("parked", 0, -1))


def test_unreachable_lock_store_raises_naming_the_task(unreachable_lock_store: None, broker: Any) -> None:
    tag = uuid.uuid4().hex
    refused = r"tests\.worker_app\.parked: the lock store redis://\S+ is unreachable"
    with pytest.raises(LockStoreUnavailable, match=refused):
        tasks.parked.delay(tag)
    assert parked_count(broker, tag) == 0


def test_lock_store_unavailable_is_a_library_error() -> None:
    assert issubclass(LockStoreUnavailable, OnceTaskError)


def test_fail_open_publishes_without_the_lock_and_warns(
    unreachable_lock_store: None, broker: Any, caplog: Any
) -> None:
    configure(fail_open=True)
    tag = uuid.uuid4().hex
    with caplog.at_level(logging.WARNING, logger="celery_once_task"):
        assert tasks.parked.delay(tag) is not None
    assert parked_count(broker, tag) == 1
    assert "publishing without queue lock" in caplog.text


def test_scripts_are_reloaded_after_script_flush(worker: Any, locks: Any) -> None:
    locks.script_flush()
    tag = uuid.uuid4().hex
    assert tasks.echo.delay(tag, 1).get(timeout=20) == 1
    assert locks.exists(tasks.echo.once_key((tag,), {}, "running")) == 0
    assert tasks.echo.delay(tag, 1) is not None


@pytest.fixture
def lock_server() -> Iterator[RedisServer]:
    """A lock store of its own, that a test may stop and start again on the same port."""
    server = RedisServer(free_port())
    yield server
    server.stop()


def test_worker_defers_a_task_while_the_lock_store_is_down(lock_server: RedisServer, recs: Any) -> None:
    tag = uuid.uuid4().hex
    port = lock_server.port
    with running_worker(tasks.PORT, "deferring", pool="solo", queues="deferring",
                        env={"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2"}) as worker:
        lock_server.stop()
        result = tasks.app.send_task("tests.worker_app.echo", args=[tag, 7], queue="deferring")
        deferred = f"{result.id}]: lock operation failed: the lock store is unreachable; deferred"
        wait_until(lambda: deferred in worker.read_log(),
                   what="the deferral in the worker log")
        assert events(recs, tag, "run") == []
        restarted = RedisServer(port)
        try:
            assert result.get(timeout=30) == 7
        finally:
            restarted.stop()
        assert len(events(recs, tag, "run")) == 1


def test_release_failure_does_not_fail_the_task(lock_server: RedisServer, recs: Any) -> None:
    tag = uuid.uuid4().hex
    with running_worker(tasks.PORT, "releasing", pool="solo", queues="releasing",
                        env={"ONCE_TEST_LOCKS_URL": f"{lock_server.url}/2"}) as worker:
        result = tasks.app.send_task("tests.worker_app.gated", args=[tag], queue="releasing")
        wait_until(lambda: events(recs, tag, "start"), what="the task to start")
        lock_server.process.kill()
        lock_server.process.wait(10)
        recs.rpush(f"gate:{tag}", 1)
        assert result.get(timeout=20) == tag
        failed = f"{result.id}]: lock operation failed: could not release lock once_task:tests.worker_app.gated:"
        assert failed in worker.read_log()


def command_calls(client: Any, command: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_free_queue_lock_is_taken_by_one_native_set_and_a_held_one_names_its_holder(
    lock_server: RedisServer,
) -> None:
    client = lock_server.client(2)
    store = LockStore(client)
    key = f"once_task:tests.store:{uuid.uuid4().hex[:16]}:queue"
    assert store.locks.acquire_queue(key, "first", 60).acquired
    refused = store.locks.acquire_queue(key, "second", 60)
    assert (refused.acquired, refused.holder) == (False, "first")
    assert (command_calls(client, "set"), command_calls(client, "evalsha")) == (2, 0)
    assert client.get(key) == b"first"
    assert 59_000 < client.pttl(key) <= 60_000


@pytest.fixture
def nx_get_refused(lock_server: RedisServer) -> Iterator[Any]:
    """A client marked as one whose server refused ``SET ... NX GET``; the mark is forgotten after the test."""
    # Redis 6.2 answers SET ... NX GET with a syntax error; no 6.2 server is
    # at hand, so the client is marked as one whose server did.
    client = lock_server.client(2)
    scripts.refused_nx_get(client)
    yield client
    scripts.forget_refusals(client)


def test_a_server_that_refuses_set_nx_get_is_given_the_script(nx_get_refused: Any) -> None:
    client = nx_get_refused
    store = LockStore(client)
    key = f"once_task:tests.store:{uuid.uuid4().hex[:16]}:queue"
    assert store.locks.acquire_queue(key, "first", 60).acquired
    refused = store.locks.acquire_queue(key, "second", 60)
    assert (refused.acquired, refused.holder) == (False, "first")
    assert command_calls(client, "evalsha") >= 2  # NOSCRIPT, then loaded and run


def test_an_error_reply_in_a_pickup_leaves_the_connection_in_step(lock_server: RedisServer) -> None:
    client = lock_server.client(2)
    store = LockStore(client)
    digest = uuid.uuid4().hex[:16]
    queue_key, running_key = f"once_task:tests.store:{digest}:queue", f"once_task:tests.store:{digest}:running"
    client.hset(queue_key, "not", "a lock")  # the queue lock's script meets a hash: WRONGTYPE
    owner = RunningOwner("id-1", 0, "tests@store", "0" * 16, False)
    for script in (scripts.COMPARE_AND_DELETE, scripts.ACQUIRE):  # loaded: no NOSCRIPT to answer first
        client.script_load(script.source)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        store.locks.pickup(queue_key, "id-1", running_key, owner, 60)
    # Both commands were read: the running lock was taken, and the next reply is the next command's own.
    assert owner.holds(client.get(running_key).decode())
    other = f"once_task:tests.store:{uuid.uuid4().hex[:16]}:queue"
    assert store.locks.acquire_queue(other, "id-2", 60).acquired
    assert store.locks.acquire_queue(other, "id-3", 60).holder == "id-2"
    # On the same connection all along: a reply left unread would have been read by a later command.
    assert wire.kept_connections(client) == 1


def test_two_copies_of_one_message_picked_up_in_one_millisecond_by_one_worker_take_one_slot(locks: Any) -> None:
    # The pool processes of one worker share an owner token; the second copy is another delivery, not
    # its own pickup sent again after a lost reply, and waits for the first instead of running beside it.
    key = limited_key("tests.limited", uuid.uuid4().hex[:16], "slots")
    task_id = str(uuid.uuid4())
    owner = RunningOwner(task_id=task_id, retries=0, worker="celery@host", instance="i1", heartbeat=True)
    claim = Claim(key, owner.token, owner.attempt_prefix, f"{task_id}\x1f0", 2, 60.0, 60.0)
    since = str(int(time.time() * 1000))
    first = LockStore(locks).slots.pickup(claim, since)
    second = LockStore(locks).slots.pickup(claim, since)
    assert (first.code, second.code, second.detail) == (SlotCode.TAKEN, SlotCode.SAME_ATTEMPT, owner.token)
    assert [name for name in locks.hkeys(key) if name.startswith(b"S")] == [f"S{owner.token}".encode()]
