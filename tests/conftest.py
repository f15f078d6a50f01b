"""Session set-up: a private redis-server, and a prefork worker shared by most tests."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support import RedisServer, Worker

_server: RedisServer | None = None


def pytest_configure(config: Any) -> None:
    global _server
    _server = RedisServer()
    # Read by tests.worker_app at import, here and in worker subprocesses.
    os.environ["ONCE_TEST_REDIS_PORT"] = str(_server.port)


def pytest_unconfigure(config: Any) -> None:
    # Results left in reference cycles (raised exceptions hold them)
    # unsubscribe from the result backend when collected: let that happen
    # while the server is still up, not at interpreter exit.
    gc.collect()
    if _server is not None:
        _server.stop()


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    assert _server is not None
    return _server


@pytest.fixture(scope="session")
def locks(redis_server: RedisServer) -> redis.Redis:
    """The lock store's database."""
    return redis_server.client(2)


@pytest.fixture(scope="session")
def recs(redis_server: RedisServer) -> redis.Redis:
    """The database the tasks record their executions in."""
    return redis_server.client(4)


@pytest.fixture(autouse=True)
def open_gates_after_test(recs: redis.Redis) -> Iterator[None]:
    """Let every task a test held at a gate finish, even when the test failed.

    A task left waiting would hold a pool process of the shared worker, and
    the tests after it would fail for want of one.
    """
    yield
    for key in recs.scan_iter("records:*", count=1000):
        tag = key.decode()[len("records:"):]
        recs.rpush(f"gate:{tag}", *[1] * 4)
        recs.rpush(f"gate:{tag}:hook", 1)
        recs.delete(key)


@pytest.fixture(scope="session")
def broker(redis_server: RedisServer) -> redis.Redis:
    return redis_server.client(0)


@pytest.fixture(scope="session")
def app() -> Any:
    from tests.worker_app import app

    return app


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer) -> Iterator[Worker]:
    """A prefork worker with two processes, shared by the tests that do not stop workers."""
    worker = Worker(redis_server.port, "shared", pool="prefork", concurrency=2)
    try:
        yield worker.wait_ready()
    finally:
        worker.stop()
