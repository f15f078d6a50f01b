"""Locks held by a Redis user whose ACL allows only the library's keys and commands (README: ACL rules)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_once_task.connection import make_client
from tests.lock_scenarios import (
    duplicate_call_is_dropped,
    duplicate_execution_is_rejected,
    new_tag,
    publishing_to,
    topology_worker,
)
from tests.support import RedisServer, Worker
from tests.topologies import Server

PASSWORD = "S3cret-lock-pw"
#: The README's ACL rules, word for word.
ACL_RULES = (
    "~once_task:* ~once_task_worker:* resetchannels -@all "
    "+get +set +del +exists +pttl +pexpire +evalsha +script|load +scan +ping +select"
)


@pytest.fixture(scope="module")
def acl(redis_server: RedisServer) -> Iterator[tuple[str, Worker, Server]]:
    server = Server("--save", "", "--appendonly", "no", name="acl")
    try:
        user = ("ACL", "SETUSER", "oncelock", "reset", "on", f">{PASSWORD}", *ACL_RULES.split())
        try:
            # Redis 7.2+ and Valkey: redis-py names itself when it connects (README: optional rule).
            server.client.execute_command(*user, "+client|setinfo")
        except redis.ResponseError:  # a server without CLIENT SETINFO
            server.client.execute_command(*user)
        url = f"redis://oncelock:{PASSWORD}@127.0.0.1:{server.port}/2"
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
