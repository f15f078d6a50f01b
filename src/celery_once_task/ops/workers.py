"""The live worker instances, read from their heartbeats, and the running locks each holds.

A worker with the boot step (``bootstep``) keeps a heartbeat key per
instance while it runs; its value names the worker and its process, and its
TTL says how long ago the last beat was. Heartbeats are walked with ``SCAN``
in batches and read in one pipeline per batch, as the locks are
(``listing``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional, TypedDict

from ..keys import KEY_PREFIX, RUNNING, SLOTS
from ..record_keys import heartbeat_pattern
from ..store.connection import Client
from .listing import BATCH, glob_escape, iter_keys, iter_locks
from .rows import Lock
from .values import as_text, json_object, optional_float, optional_int, optional_str, seconds

__all__ = ["WorkerDict", "WorkerInstance", "iter_workers"]


class WorkerDict(TypedDict):
    """``WorkerInstance.as_dict()``: the instance as JSON, its locks by key."""

    instance: str
    worker: Optional[str]
    pid: Optional[int]
    alive: bool
    ttl: Optional[float]
    heartbeat_timeout: Optional[float]
    beat_age: Optional[float]
    locks: list[str]


@dataclass(frozen=True)
class WorkerInstance:
    """A worker instance that keeps a heartbeat, and the running locks it holds.

    Attributes:
        instance: The instance's id (one per worker process started).
        worker: The worker's node name, when its heartbeat (or a lock it holds) says it.
        pid: The worker's main process, when its heartbeat says it.
        ttl: Seconds until the heartbeat expires.
        heartbeat_timeout: The worker's ``heartbeat_timeout``, when its heartbeat says it.
        locks: The running locks and slots the instance holds.
    """

    instance: str
    worker: Optional[str]
    pid: Optional[int]
    ttl: Optional[float]
    heartbeat_timeout: Optional[float]
    locks: tuple[Lock, ...] = field(default=())

    @property
    def beat_age(self) -> Optional[float]:
        """Seconds since the last heartbeat, where the heartbeat says its lease."""
        if self.heartbeat_timeout is None or self.ttl is None:
            return None
        return round(max(0.0, self.heartbeat_timeout - self.ttl), 1)

    def as_dict(self) -> WorkerDict:
        """The instance as JSON, its locks by key (``once workers --json`` prints the locks in full)."""
        return {
            "instance": self.instance,
            "worker": self.worker,
            "pid": self.pid,
            "alive": True,
            "ttl": self.ttl,
            "heartbeat_timeout": self.heartbeat_timeout,
            "beat_age": self.beat_age,
            "locks": [lock.key for lock in self.locks],
        }


def iter_workers(client: Client, locks: Optional[Iterable[Lock]] = None,
                 prefix: str = KEY_PREFIX) -> Iterator[WorkerInstance]:
    """The worker instances whose heartbeat is alive, each with the running locks it holds.

    Args:
        client: A client of the lock store.
        locks: The running locks (and slots) to share out among the instances;
            read from the server if None.
        prefix: The ``key_prefix`` the heartbeats and locks were written under.

    Yields:
        Each live instance, in the order ``SCAN`` finds the heartbeats.

    Raises:
        redis.RedisError: The lock store could not be read.
    """
    held: dict[str, list[Lock]] = {}
    running = ([*iter_locks(client, lock_type=RUNNING, prefix=prefix), *iter_locks(client, lock_type=SLOTS,
                                                                                   prefix=prefix)]
               if locks is None else locks)
    for lock in running:
        if lock.instance is not None:
            held.setdefault(lock.instance, []).append(lock)
    head, length = heartbeat_pattern(prefix)
    batch: list[bytes] = []
    for key in iter_keys(client, f"{glob_escape(head)}*", BATCH):
        batch.append(key)
        if len(batch) >= BATCH:
            yield from _read_workers(client, batch, held, length)
            batch = []
    yield from _read_workers(client, batch, held, length)


def _read_workers(client: Client, keys: Sequence[bytes], held: Mapping[str, list[Lock]],
                  head: int) -> Iterator[WorkerInstance]:
    if not keys:
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
        pipe.pttl(key)
    replies = pipe.execute()
    for index, raw_key in enumerate(keys):
        value, pttl = replies[2 * index], replies[2 * index + 1]
        if value is None:
            continue
        instance = as_text(raw_key)[head:]
        data = json_object(as_text(value))
        holds = held.get(instance, [])
        # Heartbeats that do not name the worker: its running locks do.
        named = optional_str(data.get("worker")) or next((lock.worker for lock in holds if lock.worker), None)
        yield WorkerInstance(
            instance=instance,
            worker=named,
            pid=optional_int(data.get("pid")),
            ttl=seconds(pttl),
            heartbeat_timeout=optional_float(data.get("heartbeat_timeout")),
            locks=tuple(holds),
        )
