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
