"""Reading and clearing locks for operators: what the ``once`` command and the Django page show and do.

Listing walks the keys with ``SCAN`` in batches (never ``KEYS``) and reads each
batch's values and TTLs in one pipeline, then the heartbeats of the worker
instances that batch names in a second one. A key with a ``running_limit``
(``limits``) is listed as one row per slot held or reserved -- each with the
key's limit, the slots used and the calls waiting in its line -- or as one
row without a holder where only calls wait. Clearing is owner-checked: a lock
is deleted only if it still holds the exact value that was listed (the
library's compare-and-delete), so a lock that changed hands between listing
and clearing is left alone and reported as such.

Nothing here prints; it returns plain data for the command line and the page.
Nothing here ever returns a password either: URLs go through ``redact_url``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

from ..keys import (
    BURST,
    KEY_PREFIX,
    LOCK_TYPES,
    QUEUE,
    RUNNING,
    SEPARATOR,
    SLOTS,
    WAITERS,
    call_id,
    parse_key,
    sibling,
    split_call_id,
)
from ..ownership import HEARTBEAT_PREFIX, heartbeat_key, value_of_token
from ..store import LockStore
from ..store.connection import parse_url, scan_keys
from ..store.values import text

#: Keys asked of each SCAN call, and keys read per pipeline.
BATCH = 500

__all__ = [
    "BATCH", "CHANGED_HANDS", "DELETED", "GONE", "LOCK_TYPES", "Cleared", "Lock", "WorkerInstance", "address_of",
    "clear", "clear_value", "get_lock", "get_locks", "iter_keys", "iter_locks", "iter_workers", "lock_pattern",
    "parse_key", "read_locks",
]


def iter_keys(client: Any, match: str, count: int) -> Iterator[bytes]:
    """Every key matching ``match``, by ``SCAN`` with ``count`` per call.

    The one place that scans: on a Redis Cluster it must walk every primary
    (``connection.scan_keys`` does).
    """
    for key in scan_keys(client, match, count):
        yield key.encode("utf-8")


@dataclass(frozen=True)
class Lock:
    """One lock as it was read: its key, its exact value, and what the value says."""

    key: str
    task: str
    digest: str
    type: str
    #: The exact value read; clearing deletes the lock only if it still holds it.
    value: str
    #: Seconds to live; None if the key has no expiry.
    ttl: Optional[float]
    task_id: str
    #: For running locks: Celery's attempt number, the worker's node name, its instance.
    attempt: Optional[int] = None
    worker: Optional[str] = None
    instance: Optional[str] = None
    #: Whether the holder's worker instance has a live heartbeat; None when unknown
    #: (a queue lock, or a worker without the boot step, which keeps no heartbeat).
    alive: Optional[bool] = None
    #: Seconds since the execution took the lock; None if the value does not say.
    age: Optional[float] = None
    #: A slot of a limited key: its field in the key's hash (None for a row of waiting calls only),
    #: the key's limit, the slots used, and the calls waiting in its line.
    slot: Optional[str] = None
    limit: Optional[int] = None
    used: Optional[int] = None
    waiting: Optional[int] = None
    #: A slot reserved for a waiting call handed over, whose message is on its way.
    reserved: bool = False
    #: A burst of a debounced key: the calls it covers, and seconds until it is due (None once it runs).
    calls: Optional[int] = None
    due_in: Optional[float] = None

    def as_dict(self) -> dict[str, Any]:
        found = {
            "key": self.key,
            "task": self.task,
            "type": self.type,
            "task_id": self.task_id,
            "ttl": self.ttl,
            "worker": self.worker,
            "attempt": self.attempt,
            "alive": self.alive,
            "age": self.age,
            "instance": self.instance,
            "digest": self.digest,
            "value": self.value,
        }
        if self.type == SLOTS:
            found.update(slot=self.slot, limit=self.limit, used=self.used, waiting=self.waiting,
                         reserved=self.reserved)
        if self.type == BURST:
            found.update(calls=self.calls, due_in=self.due_in)
        return found

    def describe_owner(self) -> str:
        if self.type == BURST:
            state = "running" if self.due_in is None else f"due in {self.due_in:.1f}s"
            return f"burst {self.task_id} ({self.calls if self.calls is not None else '?'} calls, {state})"
        if self.type == SLOTS and self.slot is None:
            return "nobody (calls wait in line)"
        if self.reserved:
            return f"task {self.task_id}, attempt {self.attempt}, reserved (handed over, on its way)"
        if self.type == QUEUE:
            return f"task {self.task_id}"
        attempt = "?" if self.attempt is None else str(self.attempt)
        return f"task {self.task_id}, attempt {attempt}, worker {self.worker or '?'}"


@dataclass(frozen=True)
class WorkerInstance:
    """A worker instance that keeps a heartbeat, and the running locks it holds."""

    instance: str
    #: The worker's node name, when its heartbeat says it.
    worker: Optional[str]
    pid: Optional[int]
    #: Seconds until the heartbeat expires.
    ttl: Optional[float]
    heartbeat_timeout: Optional[float]
    locks: tuple[Lock, ...] = field(default=())

    @property
    def beat_age(self) -> Optional[float]:
        """Seconds since the last heartbeat, where the heartbeat says its lease."""
        if self.heartbeat_timeout is None or self.ttl is None:
            return None
        return round(max(0.0, self.heartbeat_timeout - self.ttl), 1)

    def as_dict(self) -> dict[str, Any]:
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


@dataclass(frozen=True)
class Cleared:
    """What ``clear`` did with each lock it was given."""

    deleted: tuple[Lock, ...]
    #: Held by another value now: the lock changed hands and was left alone.
    changed_hands: tuple[Lock, ...]
    #: Gone before the delete (released or expired meanwhile).
    gone: tuple[Lock, ...]


def lock_pattern(task: Optional[str] = None, lock_type: Optional[str] = None) -> str:
    """The SCAN pattern of the locks of ``task`` (every task if None) of ``lock_type``."""
    name = _glob_escape(task) if task else "*"
    return f"{KEY_PREFIX}:{name}:*:{_glob_escape(lock_type) if lock_type else '*'}"


def iter_locks(
    client: Any, task: Optional[str] = None, lock_type: Optional[str] = None, *, now: Optional[float] = None
) -> Iterator[Lock]:
    """Every lock (of ``task``, of ``lock_type``) on the server."""
    batch: list[bytes] = []
    for key in iter_keys(client, lock_pattern(task, lock_type), BATCH):
        batch.append(key)
        if len(batch) >= BATCH:
            yield from read_locks(client, batch, now=now)
            batch = []
    yield from read_locks(client, batch, now=now)


def get_lock(client: Any, key: str) -> Optional[Lock]:
    """The lock at ``key``, or None if there is none (or ``key`` is not a lock key); a limited key's first slot."""
    found = get_locks(client, key)
    return found[0] if found else None


def get_locks(client: Any, key: str) -> list[Lock]:
    """The lock at ``key`` -- or, at a limited key, each of its slots -- as a list (empty where none)."""
    if parse_key(key) is None:
        return []
    return read_locks(client, [key.encode("utf-8")])


def read_locks(client: Any, keys: Sequence[bytes], *, now: Optional[float] = None) -> list[Lock]:
    """The locks at ``keys``: values and TTLs in one pipeline, heartbeats in another."""
    keys = [key for key in keys if parse_key(_text(key)) is not None]
    if not keys:
        return []
    limited = {key for key in keys if _text(key).endswith(f":{SLOTS}")}
    bursts = {key for key in keys if _text(key).endswith(f":{BURST}")}
    pipe = client.pipeline(transaction=False)
    for key in keys:
        if key in bursts:
            pipe.hgetall(key)
            pipe.pttl(key)
        elif key in limited:
            # A limited key: its slots, and the length of its line. One key per command (Cluster).
            pipe.hgetall(key)
            pipe.zcard(sibling(_text(key), WAITERS))
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
            locks.extend(_burst_locks(_text(raw_key), first, second, server_ms))
            continue
        if raw_key in limited:
            locks.extend(_slot_locks(_text(raw_key), first, int(second), server_ms, now))
            continue
        if first is None:  # released or expired since the scan
            continue
        lock = _make_lock(_text(raw_key), _text(first), second, now)
        if lock is not None:
            locks.append(lock)
    return _with_liveness(client, locks)


def _burst_locks(key: str, fields: dict[Any, Any], pttl: Any, server_ms: int) -> list[Lock]:
    """The rows of a debounced key: its open burst, and each burst whose execution runs."""
    parsed = parse_key(key)
    if parsed is None or not fields:
        return []
    task, digest, _ = parsed
    data = {_text(name): _text(value) for name, value in fields.items()}
    rows = []
    if "id" in data:
        due = _optional_int(data.get("due"))
        rows.append(Lock(
            key, task, digest, BURST, value=data["id"], ttl=_seconds(pttl), task_id=data["id"],
            calls=_optional_int(data.get("count")),
            due_in=None if due is None else round(max(0.0, (due - server_ms) / 1000), 3),
        ))
    for name in sorted(data):
        if name.startswith("closed:"):
            rows.append(Lock(key, task, digest, BURST, value=name, ttl=_seconds(pttl), task_id=name[len("closed:"):]))
    return rows


def _slot_locks(key: str, fields: dict[Any, Any], waiting: int, server_ms: int, now: float) -> list[Lock]:
    """The rows of a limited key: one per slot held or reserved, or one for its line alone."""
    parsed = parse_key(key)
    if parsed is None or not fields:
        return []
    task, digest, _ = parsed
    view = describe_slots({_text(name): _text(value) for name, value in fields.items()})
    live = [slot for slot in view["held"] + view["reserved"] if slot["expiry_ms"] > server_ms]
    common = {"task": task, "digest": digest, "type": SLOTS, "limit": view["limit"], "used": len(live),
              "waiting": waiting}
    rows = []
    for slot in live:
        ttl = round((slot["expiry_ms"] - server_ms) / 1000, 3)
        if "token" in slot:
            data = _json_object(value_of_token(slot["token"]))
            since = slot["since"]
            rows.append(Lock(
                key, value=slot["value"], ttl=ttl, slot="s:" + slot["token"],
                task_id=str(data.get("task_id", "")), attempt=_optional_int(data.get("retries")),
                worker=_optional_str(data.get("worker")), instance=_optional_str(data.get("instance")),
                age=None if since is None else round(max(0.0, now - since), 1), **common,
            ))
        else:
            rows.append(Lock(
                key, value=slot["value"], ttl=ttl, slot=f"r:{call_id(slot['task_id'], slot['attempt'])}",
                task_id=slot["task_id"], attempt=_optional_int(slot["attempt"]), reserved=True, **common,
            ))
    if not rows and waiting:
        rows.append(Lock(key, value="", ttl=None, task_id="", **common))
    return rows


DELETED = "deleted"
CHANGED_HANDS = "changed hands"
GONE = "gone"


def clear_value(client: Any, key: str, value: str, slot: Optional[str] = None) -> str:
    """Delete the lock at ``key`` (with ``slot``: that slot of a limited key) if it still holds exactly ``value``.

    Returns ``DELETED``, ``CHANGED_HANDS`` (another value holds it now: left
    alone) or ``GONE`` (released or expired meanwhile). Only lock keys are
    ever deleted: anything else raises ``ValueError``.
    """
    parsed = parse_key(key)
    if parsed is None:
        raise ValueError(f"{key!r} is not a celery-once-task lock key")
    if parsed.type == BURST:
        closed = value.startswith("closed:")
        task_id = value[len("closed:"):] if closed else value
        if LockStore(client).bursts.forget(key, task_id, "closed" if closed else "drop"):
            return DELETED
        return CHANGED_HANDS if client.exists(key) else GONE
    if parsed.type == SLOTS:
        if not slot or not slot.startswith(("s:", "r:")):
            raise ValueError(f"{key!r} is a limited key: name the slot to clear")
        if LockStore(client).slots.clear(key, slot, value):
            return DELETED
        return CHANGED_HANDS if client.hexists(key, slot) else GONE
    if LockStore(client).locks.release(key, value):
        return DELETED
    return CHANGED_HANDS if client.exists(key) else GONE


def clear(client: Any, locks: Iterable[Lock]) -> Cleared:
    """Delete each lock if it still holds the value listed; leave it alone otherwise."""
    outcomes: dict[str, list[Lock]] = {DELETED: [], CHANGED_HANDS: [], GONE: []}
    for lock in locks:
        if lock.type == SLOTS and lock.slot is None:
            continue  # a line of waiting calls: nothing is held
        outcomes[clear_value(client, lock.key, lock.value, lock.slot)].append(lock)
    return Cleared(tuple(outcomes[DELETED]), tuple(outcomes[CHANGED_HANDS]), tuple(outcomes[GONE]))


def iter_workers(client: Any, locks: Optional[Iterable[Lock]] = None) -> Iterator[WorkerInstance]:
    """The worker instances whose heartbeat is alive, each with the running locks it holds.

    ``locks`` are the running locks to share out (read from the server if None).
    """
    held: dict[str, list[Lock]] = {}
    running = [*iter_locks(client, lock_type=RUNNING), *iter_locks(client, lock_type=SLOTS)] if locks is None else locks
    for lock in running:
        if lock.instance is not None:
            held.setdefault(lock.instance, []).append(lock)
    batch: list[bytes] = []
    for key in iter_keys(client, f"{_glob_escape(HEARTBEAT_PREFIX)}:*", BATCH):
        batch.append(key)
        if len(batch) >= BATCH:
            yield from _read_workers(client, batch, held)
            batch = []
    yield from _read_workers(client, batch, held)


def _read_workers(client: Any, keys: Sequence[bytes], held: dict[str, list[Lock]]) -> Iterator[WorkerInstance]:
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
        instance = _text(raw_key)[len(HEARTBEAT_PREFIX) + 1:]
        data = _json_object(_text(value))
        holds = held.get(instance, [])
        # Heartbeats that do not name the worker: its running locks do.
        named = _optional_str(data.get("worker")) or next((lock.worker for lock in holds if lock.worker), None)
        yield WorkerInstance(
            instance=instance,
            worker=named,
            pid=_optional_int(data.get("pid")),
            ttl=_seconds(pttl),
            heartbeat_timeout=_optional_float(data.get("heartbeat_timeout")),
            locks=tuple(holds),
        )


# -- keys and values ---------------------------------------------------------------


def describe_slots(fields: dict[str, str]) -> dict[str, Any]:
    """A key's slots as operators see them: the limit, the slots held (owner, expiry, since) and reserved."""
    limit = int(fields.get("limit", "0") or 0)
    held, reserved = [], []
    for name, value in fields.items():
        if name.startswith("s:"):
            expiry, _, since = value.partition(":")
            held.append({"token": name[2:], "value": value, "expiry_ms": int(expiry), "since": _since(since)})
        elif name.startswith("r:"):
            task_id, attempt = split_call_id(name[2:])
            reserved.append({"task_id": task_id, "attempt": attempt, "value": value,
                             "expiry_ms": int(value.partition(SEPARATOR)[0])})
    return {"limit": limit, "held": held, "reserved": reserved}


def _since(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None



def _make_lock(key: str, value: str, pttl: int, now: float) -> Optional[Lock]:
    parsed = parse_key(key)
    if parsed is None:
        return None
    task, digest, lock_type = parsed
    ttl = _seconds(pttl)
    if lock_type == QUEUE:
        return Lock(key, task, digest, lock_type, value, ttl, task_id=value)
    data = _json_object(value)
    since = _optional_float(data.get("since"))
    return Lock(
        key, task, digest, lock_type, value, ttl,
        task_id=str(data.get("task_id", value)),
        attempt=_optional_int(data.get("retries")),
        worker=_optional_str(data.get("worker")),
        instance=_optional_str(data.get("instance")),
        # Only a worker with the boot step keeps a heartbeat; filled in by _with_liveness.
        alive=None,
        age=None if since is None else round(max(0.0, now - since), 1),
    )


def _with_liveness(client: Any, locks: list[Lock]) -> list[Lock]:
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
    return _json_object(lock.value).get("heartbeat", True) is not False


def _seconds(pttl: Any) -> Optional[float]:
    # PTTL: -1 no expiry, -2 no key (gone between the GET and the PTTL).
    return None if pttl is None or int(pttl) < 0 else round(int(pttl) / 1000, 3)


def _text(value: Any) -> str:
    return str(text(value))


def _json_object(value: str) -> dict[str, Any]:
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _optional_str(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _optional_int(value: Any) -> Optional[int]:
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


def _optional_float(value: Any) -> Optional[float]:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a SCAN ``MATCH`` pattern."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


# -- URLs --------------------------------------------------------------------------


def address_of(url: str) -> str:
    """Where ``url`` points: ``host:port`` (each of them, for Sentinel and Cluster), or a socket path."""
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
