"""Listing locks: walking the lock keys, reading them in pipelines, and the holders' liveness.

Listing walks the keys under the configured ``key_prefix`` with ``SCAN`` in
batches (never ``KEYS``) and reads each batch's values and TTLs in one
pipeline -- with, for each queue lock, its call's running lock, which tells a
queued call from one that runs and holds its queue lock until its run ends
(``queue_lock_until="end"``) -- then the heartbeats of the worker instances
that batch names in a second one; ``rows`` turns the replies into ``Lock``
rows. A key with a ``running_limit`` (``limits``) is listed as one row per
slot held or reserved -- each with the key's limit, the slots used and the
calls waiting in its line -- or as one row without a holder where only calls
wait. A ``unique_for`` window is a row of its own (type ``unique``).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator, Sequence
from typing import Optional

from ..keys import BURST, KEY_PREFIX, LOCK_TYPES, QUEUE, RUNNING, SLOTS, THROTTLE, UNIQUE, WAITERS, parse_key, sibling
from ..ownership import owner_fields
from ..record_keys import heartbeat_key
from ..store.connection import Client, scan_keys
from .rows import Lock, as_text, burst_locks, json_object, make_lock, slot_locks, throttle_locks
from .values import optional_str

__all__ = ["BATCH", "get_lock", "get_locks", "glob_escape", "iter_keys", "iter_locks", "lock_pattern", "lock_patterns",
           "read_locks"]

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


def lock_pattern(task: Optional[str] = None, lock_type: Optional[str] = None, prefix: str = KEY_PREFIX) -> str:
    """The ``SCAN`` pattern of the locks of a task, of a type (but for windows: see ``lock_patterns``).

    Args:
        task: The name that stands for the task in its keys (its ``lock_name``, else its full dotted name);
            every task's if None.
        lock_type: One of ``LOCK_TYPES``; every type's if None.
        prefix: The ``key_prefix`` the keys were written under.

    Returns:
        A pattern that matches those names literally, whatever they contain.
    """
    name = glob_escape(task) if task else "*"
    return f"{glob_escape(prefix)}:{name}:*:{glob_escape(lock_type) if lock_type else '*'}"


def lock_patterns(task: Optional[str] = None, lock_type: Optional[str] = None,
                  prefix: str = KEY_PREFIX) -> list[str]:
    """The ``SCAN`` patterns of the locks of a task, of a type, ``unique_for`` windows included.

    A window's key is tagged with its queue lock's (``keys.companion_key``),
    so that a task's windows need a pattern of their own.
    """
    if task is None and lock_type is None:
        return [f"{glob_escape(prefix)}:*"]
    patterns = [] if lock_type == UNIQUE else [lock_pattern(task, lock_type, prefix)]
    if lock_type in (None, UNIQUE):
        patterns.append(f"{glob_escape(prefix)}:{{{lock_pattern(task, QUEUE, prefix)}}}:{UNIQUE}")
    return patterns


def glob_escape(text: str) -> str:
    """``text`` matched literally by a ``SCAN`` ``MATCH`` pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def iter_locks(
    client: Client, task: Optional[str] = None, lock_type: Optional[str] = None, *, now: Optional[float] = None,
    prefix: str = KEY_PREFIX,
) -> Iterator[Lock]:
    """Every lock on the server, read a batch of keys at a time.

    Args:
        client: A client of the lock store.
        task: Only the locks of this name (a task's ``lock_name``, else its full dotted name); every task's if None.
        lock_type: Only locks of this type (one of ``LOCK_TYPES``); every type's if None.
        now: The time the locks' ages are counted to (``time.time()`` if None).
        prefix: The ``key_prefix`` the locks were written under.

    Yields:
        Each lock -- each slot held or reserved of a limited key, each burst
            of a debounced key, each window -- in the order ``SCAN`` finds the keys.

    Raises:
        redis.RedisError: The lock store could not be read.
    """
    types = (lock_type,) if lock_type else None
    for pattern in lock_patterns(task, lock_type, prefix):
        batch: list[bytes] = []
        for key in iter_keys(client, pattern, BATCH):
            batch.append(key)
            if len(batch) >= BATCH:
                yield from read_locks(client, batch, now=now, prefix=prefix, types=types)
                batch = []
        yield from read_locks(client, batch, now=now, prefix=prefix, types=types)


def get_lock(client: Client, key: str, prefix: str = KEY_PREFIX) -> Optional[Lock]:
    """The lock at a key.

    Args:
        client: A client of the lock store.
        key: The lock's key.
        prefix: The ``key_prefix`` the lock was written under.

    Returns:
        The lock (a limited key's first slot), or None if there is none or
            ``key`` is not a lock key.
    """
    found = get_locks(client, key, prefix)
    return found[0] if found else None


def get_locks(client: Client, key: str, prefix: str = KEY_PREFIX) -> list[Lock]:
    """The lock at a key -- or, at a limited key, each of its slots.

    Args:
        client: A client of the lock store.
        key: The lock's key.
        prefix: The ``key_prefix`` the lock was written under.

    Returns:
        The rows at ``key``; empty if there are none or ``key`` is not a lock key.
    """
    if parse_key(key, prefix=prefix) is None:
        return []
    return read_locks(client, [key.encode("utf-8")], prefix=prefix)


def read_locks(client: Client, keys: Sequence[bytes], *, now: Optional[float] = None, prefix: str = KEY_PREFIX,
               types: Optional[tuple[str, ...]] = None) -> list[Lock]:
    """The locks at some keys: values and TTLs in one pipeline, heartbeats in another.

    Args:
        client: A client of the lock store.
        keys: The keys to read; those that are not lock keys (of ``types``, if given) are skipped.
        now: The time the locks' ages are counted to (``time.time()`` if None).
        prefix: The ``key_prefix`` the locks were written under.
        types: Only locks of these types; every type's if None.

    Returns:
        The rows of the keys still held, in the order of ``keys``.
    """
    parsed = {key: parse_key(as_text(key), types or LOCK_TYPES, prefix) for key in keys}
    keys = [key for key in keys if parsed[key] is not None]
    if not keys:
        return []
    kinds = {key: parts.type for key, parts in parsed.items() if parts is not None}
    pipe = client.pipeline(transaction=False)
    for key in keys:
        if kinds[key] == BURST:
            pipe.hgetall(key)
            pipe.pttl(key)
        elif kinds[key] == THROTTLE:
            pipe.zrange(key, 0, -1, withscores=True)
            pipe.pttl(key)
        elif kinds[key] == SLOTS:
            # A limited key: its slots, and the length of its line. One key per command (Cluster).
            pipe.hgetall(key)
            pipe.zcard(sibling(as_text(key), WAITERS))
        else:
            pipe.get(key)
            pipe.pttl(key)
    queued = [key for key in keys if kinds[key] == QUEUE]
    for key in queued:
        pipe.get(sibling(as_text(key), RUNNING))  # the call runs: its queue lock is held until its run ends
    timed = any(kinds[key] in (SLOTS, BURST, THROTTLE) for key in keys)
    if timed:
        pipe.time()  # slots expire, and bursts fall due, by the server's clock
    replies = pipe.execute()
    now = time.time() if now is None else now
    server_ms = (int(replies[-1][0]) * 1000 + int(replies[-1][1]) // 1000) if timed else 0
    running = dict(zip(queued, replies[2 * len(keys):]))
    locks: list[Lock] = []
    for index, raw_key in enumerate(keys):
        first, second = replies[2 * index], replies[2 * index + 1]
        if kinds[raw_key] == BURST:
            locks.extend(burst_locks(as_text(raw_key), first, second, server_ms, prefix))
            continue
        if kinds[raw_key] == THROTTLE:
            locks.extend(throttle_locks(as_text(raw_key), first, second, server_ms, prefix))
            continue
        if kinds[raw_key] == SLOTS:
            locks.extend(slot_locks(as_text(raw_key), first, int(second), server_ms, now, prefix))
            continue
        if first is None:  # released or expired since the scan
            continue
        lock = make_lock(as_text(raw_key), as_text(first), second, now, prefix, running.get(raw_key))
        if lock is not None:
            locks.append(lock)
    return _with_liveness(client, locks, prefix)


def _with_liveness(client: Client, locks: list[Lock], prefix: str) -> list[Lock]:
    """``locks`` with ``alive`` set for running locks whose worker keeps a heartbeat."""
    instances = sorted({lock.instance for lock in locks if lock.instance and _keeps_heartbeat(lock)})
    if not instances:
        return locks
    pipe = client.pipeline(transaction=False)
    for instance in instances:
        pipe.get(heartbeat_key(instance, prefix))
    beats = dict(zip(instances, pipe.execute()))
    # A compact running lock names a worker with a heartbeat by its instance alone: its heartbeat names the worker.
    named = {instance: json_object(as_text(beat)).get("worker") for instance, beat in beats.items() if beat}
    return [
        dataclasses.replace(lock, alive=beats[lock.instance] is not None,
                            worker=lock.worker or optional_str(named.get(lock.instance)))
        if lock.instance in beats else lock
        for lock in locks
    ]


def _keeps_heartbeat(lock: Lock) -> bool:
    # Values without the flag (older formats) are taken to keep one.
    return owner_fields(lock.value).get("heartbeat", True) is not False
