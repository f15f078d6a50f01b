"""Session set-up: a private redis-server (and RabbitMQ node), and a prefork worker shared by most tests.

The suite runs twice (``scripts/test.sh``): with Redis as the broker, and
with ``ONCE_TEST_BROKER=amqp``, RabbitMQ. The second run starts a RabbitMQ
node of its own and keeps the tests marked ``any_broker`` (the core,
lifecycle, policy and fault tests) and ``amqp_only`` (RabbitMQ's own
faults), less those marked ``redis_broker`` (they read the Redis broker's
lists); the others are deselected there, never skipped. The locks, the
result backend and the tasks' records stay on the redis-server in both.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.support import RedisServer, Worker

#: The broker of this run: "redis" or "amqp" (RabbitMQ).
BROKER = os.environ.get("ONCE_TEST_BROKER", "redis")
if BROKER not in ("redis", "amqp"):
    raise RuntimeError(f"ONCE_TEST_BROKER must be redis or amqp, got {BROKER!r}")

_server: RedisServer | None = None
_rabbit: Any = None


def pytest_configure(config: Any) -> None:
    global _server, _rabbit
    _server = RedisServer()
    # Read by tests.worker_app at import, here and in worker subprocesses.
    os.environ["ONCE_TEST_REDIS_PORT"] = str(_server.port)
    if BROKER == "amqp":
        from tests.rabbitmq import RabbitNode

        _rabbit = RabbitNode()
        os.environ["ONCE_TEST_BROKER_URL"] = _rabbit.url(_rabbit.add_vhost())


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Keep the tests of this run's broker: see the module's docstring."""
    def kept(item: Any) -> bool:
        if BROKER == "amqp":
            return item.get_closest_marker("amqp_only") is not None or (
                item.get_closest_marker("any_broker") is not None and item.get_closest_marker("redis_broker") is None)
        return item.get_closest_marker("amqp_only") is None

    deselected = [item for item in items if not kept(item)]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if kept(item)]


def pytest_unconfigure(config: Any) -> None:
    # Results left in reference cycles (raised exceptions hold them)
    # unsubscribe from the result backend when collected: let that happen
    # while the server is still up, not at interpreter exit.
    gc.collect()
    if _server is not None:
        _server.stop()
    if _rabbit is not None:
        _rabbit.stop()


@pytest.fixture(scope="session")
def rabbit() -> Any:
    """The run's RabbitMQ node (runs with RabbitMQ as the broker only)."""
    assert _rabbit is not None, "a test that needs RabbitMQ must be marked amqp_only"
    return _rabbit


@pytest.fixture(scope="session")
def vhost() -> str:
    """The virtual host of the run's broker URL."""
    return os.environ["ONCE_TEST_BROKER_URL"].rsplit("/", 1)[1]


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
