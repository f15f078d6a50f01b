"""Locks held by a Redis user whose ACL allows only the library's keys and commands (docs/topologies.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_once_task import OnceTaskLocked
from celery_once_task.keys import finished_key
from celery_once_task.store.connection import make_client
from tests.lock_scenarios import (
    TOPOLOGY_QUEUE,
    duplicate_call_is_dropped,
    duplicate_execution_is_rejected,
    new_tag,
    publishing_to,
    topology_worker,
)
from tests.support import RedisServer, Worker, events, running_worker, wait_until
from tests.topologies import Server
from tests.worker_app import echo, gated

PASSWORD = "S3cret-lock-pw"
#: The ACL rules of docs/topologies.md, word for word.
ACL_RULES = (
    "~once_task:* ~once_task_worker:* ~once_task_done:* resetchannels -@all "
    "+get +set +del +exists +pttl +pexpire +evalsha +script|load +scan +ping +select"
)
#: The rules before finished records: a user set up then keeps its locks.
RULES_WITHOUT_RECORDS = ACL_RULES.replace(" ~once_task_done:*", "")


def add_user(server: Server, name: str, rules: str) -> str:
    """A user with ``rules``; its URL."""
    user = ("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules.split())
    try:
        # Redis 7.2+ and Valkey: redis-py names itself when it connects (docs/topologies.md: the optional rule).
        server.client.execute_command(*user, "+client|setinfo")
    except redis.ResponseError:  # a server without CLIENT SETINFO
        server.client.execute_command(*user)
    return f"redis://{name}:{PASSWORD}@127.0.0.1:{server.port}/2"


@pytest.fixture(scope="module")
def acl(redis_server: RedisServer) -> Iterator[tuple[str, Worker, Server]]:
    server = Server("--save", "", "--appendonly", "no", name="acl")
    try:
        url = add_user(server, "oncelock", ACL_RULES)
        with topology_worker(redis_server.port, "acl", url, {}) as worker:
            yield url, worker, server
    finally:
        server.stop()


@pytest.fixture()
def locks(acl: tuple[str, Worker, Server]) -> Iterator[Any]:
    url, _, _ = acl
    with publishing_to(url, {}):
        yield make_client(url)


OTHER_KEY = "sessions:1"


def test_the_limited_user_can_touch_no_other_key(locks: Any) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        locks.get(OTHER_KEY)


def test_duplicate_call_is_dropped_for_a_user_limited_to_the_library(locks: Any, recs: redis.Redis) -> None:
    duplicate_call_is_dropped(recs, locks, new_tag("acl-queue"))


def test_duplicate_execution_is_rejected_for_a_user_limited_to_the_library(locks: Any, recs: redis.Redis) -> None:
    duplicate_execution_is_rejected(recs, locks, new_tag("acl-running"))


def test_no_command_the_worker_sent_was_refused(acl: tuple[str, Worker, Server]) -> None:
    _, worker, server = acl
    refused = [entry for entry in server.client.acl_log() if entry["object"] != OTHER_KEY]
    assert refused == [], refused
    assert "NOPERM" not in worker.read_log()


def test_the_worker_never_logs_the_password(acl: tuple[str, Worker, Server]) -> None:
    _, worker, _ = acl
    assert PASSWORD not in worker.read_log()


def test_finished_executions_are_recorded_for_a_user_limited_to_the_library(
    acl: tuple[str, Worker, Server], locks: Any, recs: redis.Redis
) -> None:
    _, _, server = acl
    tag = new_tag("acl-record")
    result = echo.apply_async((tag,), queue=TOPOLOGY_QUEUE)
    result.get(timeout=30)
    admin = redis.Redis(port=server.port, db=2)
    assert admin.exists(finished_key(echo.once_key((tag,), {}, "running"), result.id, "-")) == 1


def test_a_user_without_the_record_pattern_keeps_its_locks_and_is_told(
    redis_server: RedisServer, acl: tuple[str, Worker, Server], recs: redis.Redis
) -> None:
    _, _, server = acl
    url = add_user(server, "oldlock", RULES_WITHOUT_RECORDS)
    tag = new_tag("acl-old")
    queue = f"acl-old-{tag}"
    env = {"ONCE_TEST_LOCKS_URL": url}
    with publishing_to(url, {}), running_worker(redis_server.port, f"acl-old-{tag}", queues=queue, env=env) as old:
        first = gated.apply_async((tag,), queue=queue)
        wait_until(lambda: events(recs, tag, "start"), what="the first call to start")
        with pytest.raises(OnceTaskLocked):
            gated.apply_async((tag,), queue=queue).get(timeout=30)
        recs.rpush(f"gate:{tag}", 1)
        assert first.get(timeout=30) == tag
    assert "add the key pattern ~once_task_done:* to the user's ACL rules" in old.read_log()
    assert server.client.exists(gated.once_key((tag,), {}, "running")) == 0
