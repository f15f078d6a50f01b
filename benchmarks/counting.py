"""Counting the network round trips made on a Redis connection pool, per thread.

One round trip is one ``send_packed_command`` on a connection: redis-py sends
a single command, or a whole pipeline, in one such call and then reads the
replies. The handshake of a new connection (HELLO, SELECT, CLIENT SETINFO) is
not counted: it is paid once per connection, not per lock operation.

Counts are kept per pool name and per thread, so that the lock client and the
broker, or a publisher thread and an in-process worker thread, are told apart.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Optional

import redis

_counts: Counter[tuple[str, int]] = Counter()


class CountingConnection(redis.Connection):
    """A ``redis.Connection`` that counts what it sends, outside its handshake, under ``counter``."""

    counter = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handshakes = 0

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        self._handshakes += 1
        try:
            return super().connect(*args, **kwargs)
        finally:
            self._handshakes -= 1

    def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
        # redis-py >= 6 connects through this method, not always through connect().
        self._handshakes += 1
        try:
            return super().connect_check_health(*args, **kwargs)
        finally:
            self._handshakes -= 1

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._handshakes:
            _counts[self.counter, threading.get_ident()] += 1
        super().send_packed_command(command, check_health)


def install(pool: redis.ConnectionPool, counter: str) -> None:
    """Make every connection ``pool`` opens from now on count under ``counter``."""
    if pool.connection_class is not redis.Connection:
        raise TypeError(f"cannot count round trips on {pool.connection_class.__name__} connections")
    pool.connection_class = type(f"Counting{counter.title()}Connection", (CountingConnection,), {"counter": counter})
    # Connections made before are of the plain class: drop them.
    pool.disconnect()
    pool.reset()


def uninstall(pool: redis.ConnectionPool) -> None:
    """Give ``pool`` plain connections again."""
    pool.connection_class = redis.Connection
    pool.disconnect()
    pool.reset()


def count(counter: str, thread: Optional[int] = None) -> int:
    """Round trips made so far under ``counter`` by ``thread`` (this thread by default)."""
    return _counts[counter, threading.get_ident() if thread is None else thread]


# -- counting by endpoint, for clients the benchmark does not construct -------------------------
#
# The other libraries measured build their Redis clients themselves, and a
# worker subprocess builds its own: rather than find every pool, the methods
# of redis-py's connection classes are wrapped once per process, and a send
# counts under the name given to the server it goes to (a TCP port or a unix
# socket path). Same rules as above: one send is one round trip, handshakes
# are not counted.

_endpoints: dict[Any, str] = {}


def _endpoint(connection: Any) -> tuple[Any, int]:
    where = getattr(connection, "path", None) or getattr(connection, "port", None)
    return where, int(getattr(connection, "db", 0) or 0)


def _wrap_handshake(klass: type, name: str) -> None:
    original = vars(klass)[name]

    def handshake(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._bench_handshakes = getattr(self, "_bench_handshakes", 0) + 1
        try:
            return original(self, *args, **kwargs)
        finally:
            self._bench_handshakes -= 1

    setattr(klass, name, handshake)


def count_endpoint(counter: str, endpoint: Any, db: int) -> None:
    """Count, under ``counter``, every round trip any redis-py client of this process makes to ``endpoint``, ``db``.

    ``endpoint`` is a server's TCP port or its unix socket path; the broker and
    the lock store may share a server, but never a database.
    """
    if not _endpoints:
        wrapped: set[tuple[type, str]] = set()
        for connection_class in (redis.Connection, redis.UnixDomainSocketConnection):
            for name in ("send_packed_command", "connect", "connect_check_health"):
                # Wrap the method where it is defined (a base class in redis-py >= 5), once.
                owner = next((k for k in connection_class.__mro__ if name in vars(k)), None)
                if owner is None or (owner, name) in wrapped:
                    continue
                wrapped.add((owner, name))
                if name == "send_packed_command":
                    original = vars(owner)[name]

                    def send(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                        name = _endpoints.get(_endpoint(self))
                        if name is not None and not getattr(self, "_bench_handshakes", 0):
                            _counts[name, threading.get_ident()] += 1
                        return _original(self, *args, **kwargs)

                    setattr(owner, name, send)
                else:
                    _wrap_handshake(owner, name)
    _endpoints[endpoint, db] = counter
