"""The pytest plugin for the users' own tests: a private lock store, the library switched off, and asking about locks.

Registered through the ``pytest11`` entry point, so that an installed
library offers its fixtures to every test session; or named with
``-p celery_once_task.testing`` (or ``pytest_plugins``). It does nothing
until a test asks for one of its fixtures: importing it starts no server,
configures nothing and imports nothing of the library.

Fixtures:

``once_redis`` (session)
    A redis-server of the session's own, on a free port in a temp dir,
    stopped at the end. Where ``redis-server`` is not installed the tests
    that use it are skipped, with the package to install. With
    ``$ONCE_REDIS_URL`` set (a CI service container, say), that server is
    used instead and none is started.
``once_task_store``
    The library configured (``configure()``) to that server for one test
    (database 0 of a server of its own), with the locks and finished records
    it writes cleared before and after the test: locks do not leak from one
    test into the next. Gives a ``OnceStore``, which
    answers ``is_queued``, ``is_running`` and ``held_keys``.
``once_disabled``
    ``enabled=False`` for one test: every ``OnceTask`` is a plain Celery
    task that never contacts the lock store, eager or not.

The functions ``is_queued``, ``is_running`` and ``held_keys`` ask the store
the library is configured to, wherever it is; they read, never write. The
keys they look at come from the task itself (``OnceTask.once_key`` and the
library's key grammar, ``keys``), so they follow ``lock_name``,
``lock_args``, ``key_prefix`` and ``running_limit``.

Settings an app sets in its own configuration (``app.conf.once_redis_url``,
``app.conf.once_enabled``) win over ``configure()``, and so over these
fixtures: leave them out of the configuration the tests use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from .protocols import CeleryApp
    from .store.connection import Client

__all__ = [
    "MISSING_SERVER", "OnceStore", "RedisServer", "held_keys", "is_queued", "is_running", "once_disabled",
    "once_redis", "once_task_store",
]

#: The skip message where no redis-server can be found.
MISSING_SERVER = (
    "redis-server not found: apt-get install redis-server / brew install redis "
    "(or set $ONCE_REDIS_SERVER to a redis-server or valkey-server, or $ONCE_REDIS_URL to a running server)"
)

#: Seconds a starting server has to answer PING.
_START_TIMEOUT = 10.0


class RedisServer:
    """A redis-server of this test session's own, on a free port, with its data in a temp dir.

    Attributes:
        url: ``redis://127.0.0.1:<port>``: add ``/<db>`` for a database other than 0.
        port: The port it listens on (127.0.0.1 only).
        owned: Whether this session started it (and stops it); False for ``$ONCE_REDIS_URL``.
    """

    def __init__(self, binary: str) -> None:
        """Start ``binary`` (a redis-server or valkey-server) and wait until it answers; ``RuntimeError`` if not."""
        self.owned = True
        self._dir = tempfile.mkdtemp(prefix="once-task-redis-")
        self._process: Optional[subprocess.Popen[bytes]] = None
        last = ""
        for _ in range(3):  # another process may take the free port before the server binds it
            self.port = _free_port()
            self.url = f"redis://127.0.0.1:{self.port}"
            self._process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self._dir],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            last = self._wait_ready()
            if not last:
                return
        self.stop()
        raise RuntimeError(f"{binary} did not start: {last}")

    @classmethod
    def at(cls, url: str) -> RedisServer:
        """A server someone else runs (``$ONCE_REDIS_URL``): used as it is, never stopped."""
        server = cls.__new__(cls)
        server.owned, server.url, server._dir, server._process = False, url, "", None
        server.port = urlsplit(url).port or 6379
        return server

    def stop(self) -> None:
        """Stop the server and remove its directory (nothing for a server this session did not start)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _wait_ready(self) -> str:
        """"" once the server answers; else what went wrong (the server's output if it exited)."""
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + _START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                assert self._process is not None
                if self._process.poll() is not None:
                    output = self._process.stdout.read() if self._process.stdout else b""
                    return output.decode(errors="replace").strip()[-500:]
                try:
                    if client.ping():
                        return ""
                except redis.ConnectionError:
                    time.sleep(0.02)
            return f"no answer to PING within {_START_TIMEOUT}s"
        finally:
            client.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client(task: object = None, app: Optional[CeleryApp] = None) -> tuple[Client, str]:
    """The client of the lock store in force for ``task`` (or ``app``), and the key prefix there."""
    from .settings import resolve
    from .store import client_for

    settings = resolve(getattr(task, "app", app), task)
    return client_for(settings.redis_url, settings.redis_options), settings.key_prefix


def is_queued(task: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether a call of ``task`` with these arguments is queued: its queue lock is held, or its burst is open.

    A call whose queue lock is kept until its run ends (``queue_lock_until="end"``) counts as queued only
    until its execution starts: ``is_running`` says the rest.

    Args:
        task: A ``OnceTask``.
        *args: The call's positional arguments.
        **kwargs: The call's keyword arguments.

    Raises:
        TypeError: The arguments have no canonical form (as the call itself would raise).
    """
    from .debounce import burst_key
    from .keys import QUEUE, key_space
    from .ops.listing import get_locks

    client, prefix = _client(task)
    locks = get_locks(client, task.once_key(args, kwargs, QUEUE), prefix)
    if any(lock.state != "running" for lock in locks):
        return True
    space = key_space(task, task.once_settings())
    return bool(client.exists(burst_key(space, task.once_digest(args, kwargs))))


def is_running(task: Any, *args: Any, **kwargs: Any) -> bool:
    """Whether an execution of a call of ``task`` with these arguments holds its running lock (or a slot).

    Args:
        task: A ``OnceTask``.
        *args: The call's positional arguments.
        **kwargs: The call's keyword arguments.

    Raises:
        TypeError: The arguments have no canonical form (as the call itself would raise).
    """
    from .keys import RUNNING, key_space
    from .limits import limited, slots_key
    from .ops.listing import get_locks

    client, prefix = _client(task)
    settings = task.once_settings()
    if limited(task, settings):
        slots = get_locks(client, slots_key(key_space(task, settings), task.once_digest(args, kwargs)), prefix)
        return any(lock.slot is not None and not lock.reserved for lock in slots)
    return bool(client.exists(task.once_key(args, kwargs, RUNNING)))


def held_keys(app: Optional[CeleryApp] = None) -> list[str]:
    """Every key under the ``key_prefix`` in the store configured for ``app`` (or by ``configure()``), sorted.

    Queue and running locks, slots and lines, bursts, windows (finished
    records and heartbeats live outside the prefix). Empty once every call
    ended and released its locks.
    """
    from .ops.listing import iter_keys, lock_patterns

    client, prefix = _client(app=app)
    return sorted({key.decode() for pattern in lock_patterns(prefix=prefix) for key in iter_keys(client, pattern, 500)})


@dataclass(frozen=True)
class OnceStore:
    """The lock store of one test (``once_task_store``): where it is, and what it holds.

    Attributes:
        server: The session's server.
        url: The ``redis_url`` the library is configured to for the test.
    """

    server: RedisServer
    url: str

    def is_queued(self, task: Any, *args: Any, **kwargs: Any) -> bool:
        """See ``celery_once_task.testing.is_queued``."""
        return is_queued(task, *args, **kwargs)

    def is_running(self, task: Any, *args: Any, **kwargs: Any) -> bool:
        """See ``celery_once_task.testing.is_running``."""
        return is_running(task, *args, **kwargs)

    def held_keys(self, app: Optional[CeleryApp] = None) -> list[str]:
        """See ``celery_once_task.testing.held_keys``."""
        return held_keys(app)

    def clear(self) -> None:
        """Delete the locks and finished records under the configured ``key_prefix``.

        By pattern, never ``FLUSHDB``: a broker or result backend the tests
        keep on the same server keeps its keys (a running worker's bindings),
        and the workers' heartbeats stay.
        """
        from .ops.listing import glob_escape, iter_keys
        from .settings import resolve

        client, _ = _client()
        prefix = glob_escape(resolve().key_prefix)
        for pattern in (f"{prefix}:*", f"{prefix}_done:*"):
            for key in list(iter_keys(client, pattern, 500)):
                client.delete(key)  # one at a time: on a Redis Cluster the keys live on different nodes


@pytest.fixture(scope="session")
def once_redis() -> Iterator[RedisServer]:
    """A redis-server of the session's own (or ``$ONCE_REDIS_URL``); skips the test where none can be had."""
    url = os.environ.get("ONCE_REDIS_URL")
    if url:
        yield RedisServer.at(url)
        return
    binary = shutil.which(os.environ.get("ONCE_REDIS_SERVER") or "redis-server")
    if binary is None:
        pytest.skip(MISSING_SERVER)
    server = RedisServer(binary)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def once_task_store(once_redis: RedisServer, request: pytest.FixtureRequest) -> Iterator[OnceStore]:
    """The library configured to the session's server for one test, its keys cleared before and after.

    The locks are on for the test (over an autouse fixture that switches them off), unless the test asks
    for ``once_disabled`` too, whichever order it names them in.
    """
    from .settings import configured

    # Database 0 of a server of our own; a URL given as it is (its database is the user's choice).
    url = f"{once_redis.url}/0" if once_redis.owned else once_redis.url
    store = OnceStore(once_redis, url)
    enabled = None if "once_disabled" in request.fixturenames else True
    with configured(redis_url=url, enabled=enabled):
        store.clear()
        try:
            yield store
        finally:
            store.clear()


@pytest.fixture
def once_disabled() -> Iterator[None]:
    """``enabled=False`` for one test: ``OnceTask`` calls never contact the lock store, eager or not."""
    from .settings import configured

    with configured(enabled=False):
        yield
