"""What a listed lock is (``Lock``), and how the lock store's replies become ``Lock`` rows.

Nothing here talks to the server: ``listing`` reads the replies and this
module turns them into rows -- one per plain lock or ``unique_for`` window;
one per slot held or reserved of a limited key (``limits``), or one for its
line of waiting calls alone; one per burst of a debounced key
(``debounce``); one per limit of a throttled key's log (``throttle``). A
key named by a ``lock_name`` names it where a task's name would be
(``Lock.task``), and its holder's value names the holder's task
(``Lock.holder_task``). Values are read
leniently: a field that a value lacks (values written by older releases
do) or that is malformed is None, never an error, so that one odd lock
cannot keep an operator from listing the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional, TypedDict

from ..ids import SEPARATOR, split_call_id, split_holder
from ..keys import BURST, KEY_PREFIX, QUEUE, SLOTS, THROTTLE, UNIQUE, parse_key
from ..ownership import owner_fields
from ..rates import parse_spec
from ..store.slots import LEGACY_LIMIT, LIMIT, held_since, slot_field
from ..store.throttles import margin_for
from .values import Reply, as_text, json_object, optional_float, optional_int, optional_str, seconds

__all__ = ["HeldSlot", "Lock", "LockDict", "ReservedSlot", "SlotsView", "as_text", "describe_slots", "json_object",
           "optional_float", "optional_int", "optional_str", "seconds"]


class _LockFields(TypedDict):
    key: str
    task: str
    type: str
    task_id: str
    ttl: Optional[float]
    worker: Optional[str]
    attempt: Optional[int]
    alive: Optional[bool]
    age: Optional[float]
    instance: Optional[str]
    digest: str
    value: str
    holder_task: Optional[str]
    state: Optional[str]


class LockDict(_LockFields, total=False):
    """``Lock.as_dict()``: the lock's fields as JSON, those of slots and bursts only for their rows."""

    slot: Optional[str]
    limit: Optional[int]
    used: Optional[int]
    waiting: Optional[int]
    reserved: bool
    calls: Optional[int]
    due_in: Optional[float]
    period: Optional[float]


@dataclass(frozen=True)
class Lock:
    """One lock as it was read: its key, its exact value, and what the value says.

    Attributes:
        key: The lock's key.
        task: The name in the key: the task's, or the ``lock_name`` its tasks share.
        digest: The digest of the call's arguments.
        type: ``queue``, ``running``, ``slots`` (a slot of a limited key), ``burst``, ``unique`` (a
            ``unique_for`` window) or ``throttle`` (one limit of a throttled key's log).
        value: The exact value read; clearing deletes the lock only if it still holds it.
        ttl: Seconds to live; None if the key has no expiry.
        task_id: The holder's task id.
        attempt: For running locks and slots: Celery's attempt number (``request.retries``).
        worker: For running locks and slots: the node name of the holder's worker.
        instance: For running locks and slots: the holder's worker instance.
        alive: Whether the holder's worker instance has a live heartbeat; None when unknown
            (a queue lock, or a worker without the boot step, which keeps no heartbeat).
        age: Seconds since the execution took the lock; None if the value does not say.
        slot: A slot of a limited key: its field in the key's hash (None for a row of waiting calls only).
        limit: A limited key's ``running_limit``; a throttle's N.
        used: The slots of a limited key held or reserved; a throttle's starts in the current window.
        waiting: The calls waiting in a limited key's line; a throttle's calls postponed (starts reserved ahead).
        period: A throttle's period, in seconds.
        reserved: A slot reserved for a waiting call handed over, whose message is on its way.
        calls: A burst of a debounced key: the calls it covers.
        due_in: A burst: seconds until it is due (None once it runs); a throttle: seconds until a new call
            could start (0: now).
        holder_task: The holder's task, where the key is named by a ``lock_name`` (its value says which task
            holds it); None otherwise.
        state: A queue lock's call: ``queued``, or ``running`` (its queue lock is held until its run ends:
            ``queue_lock_until="end"``); None for the other types.
    """

    key: str
    task: str
    digest: str
    type: str
    value: str
    ttl: Optional[float]
    task_id: str
    attempt: Optional[int] = None
    worker: Optional[str] = None
    instance: Optional[str] = None
    alive: Optional[bool] = None
    age: Optional[float] = None
    slot: Optional[str] = None
    limit: Optional[int] = None
    used: Optional[int] = None
    waiting: Optional[int] = None
    reserved: bool = False
    calls: Optional[int] = None
    due_in: Optional[float] = None
    holder_task: Optional[str] = None
    state: Optional[str] = None
    period: Optional[float] = None

    def as_dict(self) -> LockDict:
        """The lock as JSON, as ``once locks --json`` prints it.

        Returns:
            Every field but the slots' (for a slot's row only) and the bursts'
                (for a burst's row only).
        """
        found: LockDict = {
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
            "holder_task": self.holder_task,
            "state": self.state,
        }
        if self.type == SLOTS:
            found["slot"] = self.slot
            found["limit"] = self.limit
            found["used"] = self.used
            found["waiting"] = self.waiting
            found["reserved"] = self.reserved
        if self.type == BURST:
            found["calls"] = self.calls
            found["due_in"] = self.due_in
        if self.type == THROTTLE:
            found["limit"] = self.limit
            found["period"] = self.period
            found["used"] = self.used
            found["waiting"] = self.waiting
            found["due_in"] = self.due_in
        return found

    def describe_owner(self) -> str:
        """Who holds the lock, in words: ``task <id>, attempt <n>, worker <node name>`` and the like."""
        if self.type == BURST:
            state = "running" if self.due_in is None else f"due in {self.due_in:.1f}s"
            return f"burst {self.task_id} ({self.calls if self.calls is not None else '?'} calls, {state})"
        if self.type == SLOTS and self.slot is None:
            return "nobody (calls wait in line)"
        if self.type == THROTTLE:
            return (f"{self.used}/{self.limit} started in {self.period or 0:g}s, next start free in "
                    f"{self.due_in or 0:.1f}s, {self.waiting} postponed")
        holder = f"task {self.task_id}" + (f" of {self.holder_task}" if self.holder_task else "")
        if self.reserved:
            return f"{holder}, attempt {self.attempt}, reserved (handed over, on its way)"
        if self.type == QUEUE and self.state == "running":
            return f"{holder}, running (held until its run ends)"
        if self.type in (QUEUE, UNIQUE):
            return holder
        attempt = "?" if self.attempt is None else str(self.attempt)
        return f"{holder}, attempt {attempt}, worker {self.worker or '?'}"


class HeldSlot(TypedDict):
    """A slot held by an execution: its field, owner token and value, when it expires, since when it is held."""

    field: str
    token: str
    value: str
    expiry_ms: int
    since: Optional[float]


class ReservedSlot(TypedDict):
    """A slot reserved for a waiting call that was handed over: its field, the call, the value, when it expires."""

    field: str
    task_id: str
    attempt: str
    value: str
    expiry_ms: int


class SlotsView(TypedDict):
    """A limited key's slots as operators see them (``describe_slots``)."""

    limit: int
    held: list[HeldSlot]
    reserved: list[ReservedSlot]


class _SlotRow(TypedDict):
    """The fields every row of one limited key shares."""

    task: str
    digest: str
    type: str
    limit: int
    used: int
    waiting: int


def describe_slots(fields: Mapping[str, str]) -> SlotsView:
    """A limited key's slots as operators see them.

    Args:
        fields: The key's hash, decoded.

    Returns:
        The key's limit, the slots held (owner token, expiry, since when) and
            the slots reserved (the call, expiry), expired ones included.
    """
    limit = int(fields.get(LIMIT) or fields.get(LEGACY_LIMIT) or 0)
    held: list[HeldSlot] = []
    reserved: list[ReservedSlot] = []
    for name, value in fields.items():
        kind = slot_field(name)
        if kind is None:
            continue
        is_held, ident = kind
        if is_held:
            held.append({"field": name, "token": ident, "value": value, "expiry_ms": int(value.partition(":")[0]),
                         "since": held_since(value, legacy=name.startswith("s:"))})
        else:
            task_id, attempt = split_call_id(ident)
            reserved.append({"field": name, "task_id": task_id, "attempt": attempt, "value": value,
                             "expiry_ms": int(value.partition(SEPARATOR)[0])})
    return {"limit": limit, "held": held, "reserved": reserved}


def make_lock(key: str, value: str, pttl: Optional[int], now: float, prefix: str = KEY_PREFIX,
              running: Optional[Reply] = None) -> Optional[Lock]:
    """The row of a queue or running lock, or a window, from its value and ``PTTL``; None if ``key`` is no lock key.

    ``running``: for a queue lock, the value of its call's running lock (None: none is held).
    """
    parsed = parse_key(key, prefix=prefix)
    if parsed is None:
        return None
    task, digest, lock_type = parsed
    ttl = seconds(pttl)
    if lock_type in (QUEUE, UNIQUE):
        task_id, holder_task = split_holder(value)
        state = None
        if lock_type == QUEUE:
            runs = running is not None and owner_fields(as_text(running)).get("task_id") == task_id
            state = "running" if runs else "queued"
        return Lock(key, task, digest, lock_type, value, ttl, task_id=task_id, holder_task=holder_task or None,
                    state=state)
    data = owner_fields(value)
    since = optional_float(data.get("since"))
    return Lock(
        key, task, digest, lock_type, value, ttl,
        task_id=str(data.get("task_id", value)),
        attempt=optional_int(data.get("retries")),
        worker=optional_str(data.get("worker") or None),
        instance=optional_str(data.get("instance")),
        # Only a worker with the boot step keeps a heartbeat: filled in by the reader, which asks the server.
        alive=None,
        age=None if since is None else round(max(0.0, now - since), 1),
        holder_task=optional_str(data.get("task")),
    )


def burst_locks(key: str, fields: Mapping[Reply, Reply], pttl: Optional[int], server_ms: int,
                prefix: str = KEY_PREFIX) -> list[Lock]:
    """The rows of a debounced key (its hash and ``PTTL``): its open burst, and each burst whose execution runs."""
    parsed = parse_key(key, prefix=prefix)
    if parsed is None or not fields:
        return []
    task, digest, _ = parsed
    data = {as_text(name): as_text(value) for name, value in fields.items()}
    rows = []
    # One-letter fields (``lua.bursts``), or 2.0.0's names in a burst no script has touched since.
    burst_id = data.get("i", data.get("id"))
    if burst_id is not None:
        due = optional_int(data.get("d", data.get("due")))
        rows.append(Lock(
            key, task, digest, BURST, value=burst_id, ttl=seconds(pttl), task_id=burst_id,
            calls=optional_int(data.get("n", data.get("count", "1"))),
            due_in=None if due is None else round(max(0.0, (due - server_ms) / 1000), 3),
        ))
    for name in sorted(data):
        closed = name[1:] if name.startswith("C") else name[len("closed:"):] if name.startswith("closed:") else None
        if closed:
            # The row's value names the execution as ``ops.locks.clear_value`` reads it.
            rows.append(Lock(key, task, digest, BURST, value="closed:" + closed, ttl=seconds(pttl), task_id=closed))
    return rows


def slot_locks(key: str, fields: Mapping[Reply, Reply], waiting: int, server_ms: int, now: float,
               prefix: str = KEY_PREFIX) -> list[Lock]:
    """The rows of a limited key (its hash, its line's length): one per live slot, or one for its line alone."""
    parsed = parse_key(key, prefix=prefix)
    if parsed is None or not fields:
        return []
    task, digest, _ = parsed
    view = describe_slots({as_text(name): as_text(value) for name, value in fields.items()})
    held = [slot for slot in view["held"] if slot["expiry_ms"] > server_ms]
    reserved = [slot for slot in view["reserved"] if slot["expiry_ms"] > server_ms]
    common: _SlotRow = {"task": task, "digest": digest, "type": SLOTS, "limit": view["limit"],
                        "used": len(held) + len(reserved), "waiting": waiting}
    rows = []
    for held_slot in held:
        data = owner_fields(held_slot["token"])
        since = held_slot["since"]
        rows.append(Lock(
            key, value=held_slot["value"], ttl=round((held_slot["expiry_ms"] - server_ms) / 1000, 3),
            slot=held_slot["field"],
            task_id=str(data.get("task_id", "")), attempt=optional_int(data.get("retries")),
            worker=optional_str(data.get("worker") or None), instance=optional_str(data.get("instance")),
            age=None if since is None else round(max(0.0, now - since), 1),
            holder_task=optional_str(data.get("task")), **common,
        ))
    for reserved_slot in reserved:
        rows.append(Lock(
            key, value=reserved_slot["value"], ttl=round((reserved_slot["expiry_ms"] - server_ms) / 1000, 3),
            slot=reserved_slot["field"],
            task_id=reserved_slot["task_id"], attempt=optional_int(reserved_slot["attempt"]), reserved=True,
            **common,
        ))
    if not rows and waiting:
        rows.append(Lock(key, value="", ttl=None, task_id="", **common))
    return rows


def throttle_locks(key: str, entries: Sequence[tuple[Reply, float]], pttl: Optional[int], server_ms: int,
                   prefix: str = KEY_PREFIX) -> list[Lock]:
    """The rows of a throttled key's log (its members with their scores, its ``PTTL``): one per limit.

    A row says the starts in the limit's current window (used of N), the
    calls postponed (starts reserved ahead of the store's clock), and when
    a new call could start: what ``lua.throttles.THROTTLE_TAKE`` would answer.
    """
    parsed = parse_key(key, prefix=prefix)
    if parsed is None or not entries:
        return []
    task, digest, _ = parsed
    specs = [as_text(member) for member, score in entries if score == 0]
    starts = sorted((score for _, score in entries if score > 0), reverse=True)
    rows = []
    for spec in specs:
        rates = parse_spec(spec)
        margin = margin_for(rates) * 1000
        for rate in rates:
            period = rate.period * 1000
            seen = [start for start in starts if start > server_ms - period - margin]
            free = float(server_ms)
            if len(seen) >= rate.starts:
                free = max(free, seen[rate.starts - 1] + period + margin)
            rows.append(Lock(
                key, task, digest, THROTTLE, value=spec, ttl=seconds(pttl), task_id="", limit=rate.starts,
                period=rate.period, used=sum(1 for start in seen if start <= server_ms),
                waiting=sum(1 for start in starts if start > server_ms),
                due_in=round((free - server_ms) / 1000, 3),
            ))
    return rows

