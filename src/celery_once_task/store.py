"""The lock store: one Redis client per process and URL, and every lock operation.

Each operation here is one network round trip. Callers decide what an error
means (raise at publish, log in worker hooks); this module only talks to Redis.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from . import scripts
from .connection import Client, make_client
from .ownership import heartbeat_key
from .scripts import Call

_clients: dict[tuple[str, str], Client] = {}
_clients_lock = threading.Lock()


def client_for(url: str, options: Optional[Mapping[str, Any]] = None) -> Client:
    """The process's client for ``url`` and ``options`` (``redis_options``), made on first use.

    redis-py's connection pool notices a fork (it compares pids) and opens new
    connections in the child, so one client serves a prefork worker's main
    process and all its children.
    """
    # Options may hold dicts (sentinel_kwargs): key on a canonical spelling.
    cache_key = (url, json.dumps(options, sort_keys=True, default=repr) if options else "")
    client = _clients.get(cache_key)
    if client is None:
        with _clients_lock:
            client = _clients.get(cache_key)
            if client is None:
                client = make_client(url, options)
                _clients[cache_key] = client
    return client


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


@dataclass(frozen=True)
class Pickup:
    """What happened when a worker picked a task up."""

    #: The running lock is now this execution's (True also when none was asked for).
    acquired: bool
    #: The token of the running lock's holder when it was not acquired.
    holder: Optional[str] = None


class LockStore:
    """Lock operations against one Redis server."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    def for_url(cls, url: str, options: Optional[Mapping[str, Any]] = None) -> LockStore:
        return cls(client_for(url, options))

    # -- queue lock ---------------------------------------------------------

    def acquire_queue(self, key: str, task_id: str, ttl: float) -> bool:
        """Take the queue lock for ``task_id`` if it is free."""
        return bool(self.client.set(key, task_id, nx=True, px=_ms(ttl)))

    def acquire_or_renew_queue(self, key: str, task_id: str, ttl: float) -> bool:
        """Take the queue lock if it is free or already ``task_id``'s (a retry)."""
        (reply,) = scripts.run(self.client, [Call(scripts.ACQUIRE_OR_RENEW, key, (task_id, _ms(ttl)))])
        return bool(reply)

    def holder(self, key: str) -> Optional[str]:
        """The token that holds ``key``, if any."""
        value = self.client.get(key)
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    # -- both ---------------------------------------------------------------

    def release(self, key: str, token: str) -> bool:
        """Delete ``key`` if ``token`` holds it."""
        (reply,) = scripts.run(self.client, [Call(scripts.COMPARE_AND_DELETE, key, (token,))])
        return bool(reply)

    def pickup(
        self,
        queue_key: Optional[str],
        task_id: str,
        running_key: Optional[str],
        running_token: str,
        running_ttl: float,
    ) -> Pickup:
        """Release the task's queue lock and take its running lock, in one round trip."""
        calls = []
        if queue_key is not None:
            calls.append(Call(scripts.COMPARE_AND_DELETE, queue_key, (task_id,)))
        if running_key is not None:
            calls.append(Call(scripts.ACQUIRE_OR_HOLDER, running_key, (running_token, _ms(running_ttl))))
        if not calls:
            return Pickup(acquired=True)
        replies = scripts.run(self.client, calls)
        if running_key is None:
            return Pickup(acquired=True)
        reply = replies[-1]
        if reply == 1:
            return Pickup(acquired=True)
        holder = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        return Pickup(acquired=False, holder=holder)

    def replace(self, key: str, expected: str, token: str, ttl: float) -> bool:
        """Hand ``key`` from the holder ``expected`` to ``token``; False if someone else holds it."""
        call = Call(scripts.COMPARE_AND_SWAP, key, (expected, token, _ms(ttl)))
        (reply,) = scripts.run(self.client, [call])
        return bool(reply)

    # -- worker liveness ----------------------------------------------------

    def beat(self, instance: str, ttl: float) -> None:
        self.client.set(heartbeat_key(instance), "1", px=_ms(ttl))

    def forget_instance(self, instance: str) -> None:
        self.client.delete(heartbeat_key(instance))

    def instance_alive(self, instance: str) -> bool:
        return bool(self.client.exists(heartbeat_key(instance)))
