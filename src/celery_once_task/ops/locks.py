"""Reading and clearing locks for operators: what the ``once`` command and the Django page show and do.

This module is the operators' API, and owns clearing. What a listed lock is
(``Lock``) is ``rows``'s; listing the locks is ``listing``'s, and the live
worker instances ``workers``'s; their public names are offered here
(``__all__``), the documented place to import them from.

Clearing is owner-checked: a lock is deleted only if it still holds the
exact value that was listed (the library's compare-and-delete), so a lock
that changed hands between listing and clearing is left alone and reported
as such.

Nothing here prints; it returns plain data for the command line and the page.
Nothing here ever returns a password either: URLs go through ``redact_url``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

from ..keys import BURST, KEY_PREFIX, LOCK_TYPES, SLOTS, THROTTLE, parse_key
from ..store import LockStore
from ..store.connection import Client, parse_url
from ..store.slots import slot_field
from .listing import BATCH, get_lock, get_locks, iter_keys, iter_locks, lock_pattern, lock_patterns, read_locks
from .rows import Lock, LockDict
from .workers import WorkerDict, WorkerInstance, iter_workers

__all__ = [
    "BATCH", "CHANGED_HANDS", "DELETED", "GONE", "LOCK_TYPES", "Cleared", "Lock", "LockDict", "WorkerDict",
    "WorkerInstance", "address_of", "clear", "clear_value", "get_lock", "get_locks", "iter_keys", "iter_locks",
    "iter_workers", "lock_pattern", "lock_patterns", "parse_key", "read_locks",
]

#: What ``clear_value`` did: deleted the lock; left it alone, as another value holds it now; found it gone.
DELETED = "deleted"
CHANGED_HANDS = "changed hands"
GONE = "gone"


@dataclass(frozen=True)
class Cleared:
    """What ``clear`` did with each lock it was given.

    Attributes:
        deleted: The locks deleted.
        changed_hands: The locks held by another value now: changed hands, and left alone.
        gone: The locks gone before the delete (released or expired meanwhile).
    """

    deleted: tuple[Lock, ...]
    changed_hands: tuple[Lock, ...]
    gone: tuple[Lock, ...]


def clear_value(client: Client, key: str, value: str, slot: Optional[str] = None, prefix: str = KEY_PREFIX) -> str:
    """Delete a lock if it still holds exactly the value listed.

    Args:
        client: A client of the lock store.
        key: The lock's key.
        value: The value listed (``Lock.value``).
        slot: At a limited key, the slot to clear (``Lock.slot``).
        prefix: The ``key_prefix`` the lock was written under.

    Returns:
        ``DELETED``; ``CHANGED_HANDS`` (another value holds it now: left
            alone); or ``GONE`` (released or expired meanwhile).

    Raises:
        ValueError: ``key`` is not a lock key (nothing else is ever deleted),
            or is a limited key and ``slot`` names no slot.
        redis.RedisError: The lock store could not be reached.
    """
    parsed = parse_key(key, prefix=prefix)
    if parsed is None:
        raise ValueError(f"{key!r} is not a celery-once-task lock key")
    if parsed.type == THROTTLE:
        # Deleting the log would let N more calls start at once: the one thing a throttle promises never happens.
        raise ValueError(f"{key!r} is a throttle's log: it holds no lock, and is never cleared")
    if parsed.type == BURST:
        closed = value.startswith("closed:")
        task_id = value[len("closed:"):] if closed else value
        if LockStore(client).bursts.forget(key, task_id, "closed" if closed else "drop"):
            return DELETED
        return CHANGED_HANDS if client.exists(key) else GONE
    if parsed.type == SLOTS:
        if not slot or slot_field(slot) is None:
            raise ValueError(f"{key!r} is a limited key: name the slot to clear")
        if LockStore(client).slots.clear(key, slot, value):
            return DELETED
        return CHANGED_HANDS if client.hexists(key, slot) else GONE
    if LockStore(client).locks.release(key, value):
        return DELETED
    return CHANGED_HANDS if client.exists(key) else GONE


def clear(client: Client, locks: Iterable[Lock], prefix: str = KEY_PREFIX) -> Cleared:
    """Delete each lock if it still holds the value listed; leave it alone otherwise.

    Args:
        client: A client of the lock store.
        locks: The locks listed (rows of waiting calls only, which hold nothing, are skipped).
        prefix: The ``key_prefix`` the locks were written under.

    Returns:
        Which were deleted, which changed hands, which were gone.

    Raises:
        redis.RedisError: The lock store could not be reached (the locks before it are cleared).
    """
    outcomes: dict[str, list[Lock]] = {DELETED: [], CHANGED_HANDS: [], GONE: []}
    for lock in locks:
        if (lock.type == SLOTS and lock.slot is None) or lock.type == THROTTLE:
            continue  # a line of waiting calls, a throttle's log: nothing is held
        outcomes[clear_value(client, lock.key, lock.value, lock.slot, prefix)].append(lock)
    return Cleared(tuple(outcomes[DELETED]), tuple(outcomes[CHANGED_HANDS]), tuple(outcomes[GONE]))


def address_of(url: str) -> str:
    """Where a lock store's URL points, without its password.

    Args:
        url: A lock store URL (``redis_url``).

    Returns:
        ``host:port`` (each of them, for Sentinel and Cluster), or a socket path.
    """
    try:
        spec = parse_url(url, {"master_name": "-"})
    except ValueError:
        spec = None
    if spec is not None and spec.hosts:
        return spec.addresses()
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
