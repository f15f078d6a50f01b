"""Listing locks: walking the lock keys, reading them in pipelines, and the holders' liveness.

Listing walks the keys with ``SCAN`` in batches (never ``KEYS``) and reads each
batch's values and TTLs in one pipeline, then the heartbeats of the worker
instances that batch names in a second one; ``rows`` turns the replies into
``Lock`` rows. A key with a ``running_limit`` (``limits``) is listed as one
row per slot held or reserved -- each with the key's limit, the slots used
and the calls waiting in its line -- or as one row without a holder where
only calls wait.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator, Sequence
from typing import Optional

from ..keys import BURST, KEY_PREFIX, SLOTS, WAITERS, parse_key, sibling
from ..ownership import heartbeat_key
from ..store.connection import Client, scan_keys
from .rows import Lock, as_text, burst_locks, json_object, make_lock, slot_locks

__all__ = ["BATCH", "get_lock", "get_locks", "glob_escape", "iter_keys", "iter_locks", "lock_pattern", "read_locks"]

#: Keys asked of each SCAN call, and keys read per pipeline.
BATCH = 500


def iter_keys(client: Client, match: str, count: int) -> Iterator[bytes]:
    """Every key matching a pattern, by ``SCAN``.

    The one place that scans: on a Redis Cluster it must walk every primary
    (``connection.scan_keys`` does).

    Args:
        client: A client of the lock store.
        match: The ``SCAN`` ``MATCH`` pattern.
        count: The keys asked of each ``SCAN`` call.

    Yields:
        The names of the keys, encoded as UTF-8.
    """
    for key in scan_keys(client, match, count):
        yield key.encode("utf-8")


def lock_pattern(task: Optional[str] = None, lock_type: Optional[str] = None) -> str:
    """The ``SCAN`` pattern of the locks of a task, of a type.

    Args:
        task: The task's full dotted name; every task's if None.
        lock_type: One of ``LOCK_TYPES``; every type's if None.

    Returns:
        A pattern that matches those names literally, whatever they contain.
    """
    name = glob_escape(task) if task else "*"
    return f"{KEY_PREFIX}:{name}:*:{glob_escape(lock_type) if lock_type else '*'}"


def glob_escape(text: str) -> str:
    """``text`` matched literally by a ``SCAN`` ``MATCH`` pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def iter_locks(
    client: Client, task: Optional[str] = None, lock_type: Optional[str] = None, *, now: Optional[float] = None
) -> Iterator[Lock]:
    """Every lock on the server, read a batch of keys at a time.

    Args:
        client: A client of the lock store.
        task: Only this task's locks (its full dotted name); every task's if None.
        lock_type: Only locks of this type (one of ``LOCK_TYPES``); every type's if None.
        now: The time the locks' ages are counted to (``time.time()`` if None).

    Yields:
        Each lock -- each slot held or reserved of a limited key, each burst
            of a debounced key -- in the order ``SCAN`` finds the keys.

    Raises:
        redis.RedisError: The lock store could not be read.
    """
    batch: list[bytes] = []
    for key in iter_keys(client, lock_pattern(task, lock_type), BATCH):
        batch.append(key)
        if len(batch) >= BATCH:
            yield from read_locks(client, batch, now=now)
            batch = []
    yield from read_locks(client, batch, now=now)


def get_lock(client: Client, key: str) -> Optional[Lock]:
    """The lock at a key.

    Args:
        client: A client of the lock store.
        key: The lock's key.

    Returns:
        The lock (a limited key's first slot), or None if there is none or
            ``key`` is not a lock key.
    """
    found = get_locks(client, key)
    return found[0] if found else None


def get_locks(client: Client, key: str) -> list[Lock]:
    """The lock at a key -- or, at a limited key, each of its slots.

    Args:
        client: A client of the lock store.
        key: The lock's key.

    Returns:
        The rows at ``key``; empty if there are none or ``key`` is not a lock key.
    """
    if parse_key(key) is None:
        return []
    return read_locks(client, [key.encode("utf-8")])


def read_locks(client: Client, keys: Sequence[bytes], *, now: Optional[float] = None) -> list[Lock]:
    """The locks at some keys: values and TTLs in one pipeline, heartbeats in another.

    Args:
        client: A client of the lock store.
        keys: The keys to read; those that are not lock keys are skipped.
        now: The time the locks' ages are counted to (``time.time()`` if None).

    Returns:
        The rows of the keys still held, in the order of ``keys``.
    """
    keys = [key for key in keys if parse_key(as_text(key)) is not None]
    if not keys:
        return []
    limited = {key for key in keys if as_text(key).endswith(f":{SLOTS}")}
    bursts = {key for key in keys if as_text(key).endswith(f":{BURST}")}
    pipe = client.pipeline(transaction=False)
    for key in keys:
        if key in bursts:
            pipe.hgetall(key)
            pipe.pttl(key)
        elif key in limited:
            # A limited key: its slots, and the length of its line. One key per command (Cluster).
            pipe.hgetall(key)
            pipe.zcard(sibling(as_text(key), WAITERS))
        else:
            pipe.get(key)
            pipe.pttl(key)
    timed = limited or bursts
    if timed:
        pipe.time()  # slots expire, and bursts fall due, by the server's clock
    replies = pipe.execute()
    now = time.time() if now is None else now
    server_ms = (int(replies[-1][0]) * 1000 + int(replies[-1][1]) // 1000) if timed else 0
    locks: list[Lock] = []
    for index, raw_key in enumerate(keys):
        first, second = replies[2 * index], replies[2 * index + 1]
        if raw_key in bursts:
            locks.extend(burst_locks(as_text(raw_key), first, second, server_ms))
            continue
        if raw_key in limited:
            locks.extend(slot_locks(as_text(raw_key), first, int(second), server_ms, now))
            continue
        if first is None:  # released or expired since the scan
            continue
        lock = make_lock(as_text(raw_key), as_text(first), second, now)
        if lock is not None:
            locks.append(lock)
    return _with_liveness(client, locks)


def _with_liveness(client: Client, locks: list[Lock]) -> list[Lock]:
    """``locks`` with ``alive`` set for running locks whose worker keeps a heartbeat."""
    instances = sorted({lock.instance for lock in locks if lock.instance and _keeps_heartbeat(lock)})
    if not instances:
        return locks
    pipe = client.pipeline(transaction=False)
    for instance in instances:
        pipe.exists(heartbeat_key(instance))
    alive = {instance: bool(reply) for instance, reply in zip(instances, pipe.execute())}
    return [
        dataclasses.replace(lock, alive=alive[lock.instance]) if lock.instance in alive else lock
        for lock in locks
    ]


def _keeps_heartbeat(lock: Lock) -> bool:
    # Values without the flag (older formats) are taken to keep one.
    return json_object(lock.value).get("heartbeat", True) is not False
