"""``running_limit``: at most N executions of one key at once, fleet-wide; the calls beyond N wait or are refused.

A task with ``running_limit=N`` (N > 1) holds, instead of one running lock
per key, one of N *slots* of its key (``keys.limited_key``: the key's slots
are a hash, its waiting calls a list, in one Redis Cluster hash slot):

* a slot is a lease, as the running lock is: valued with its owner token,
  renewed in the worker's renewal round trip (``renewal``), freed within a
  lease when its worker dies, released by its owner token alone;
* pickup is one round trip (``scripts.SLOT_ACQUIRE``): the queue lock's
  release and the slot, whatever N; the release is one round trip too
  (``scripts.SLOT_RELEASE``), and records the execution's end
  (``redelivery``);
* beyond N, under ``running_lock_conflict="reject"`` the execution fails
  with ``OnceTaskLocked``; under ``"wait"`` it joins the key's *line*, in
  call order, and goes back to the broker: no pool process is held while it
  waits. A slot that frees is handed to the head of the line in the same
  script (reserved for that call, whose message the freeing worker
  publishes at once). Every waiting call also leaves a *safety copy* of its
  message in the broker, back after a lease (later for calls further back in
  the line): if the worker that should have published a hand-over died
  first, or the slots' holders died and nobody released them, the call's
  safety copy claims its reservation, or the free slot, itself. A copy of a
  call that is still in line goes back again; one of a call that ran is
  ignored (its finished record); one of a call that runs waits for it.

The queue lock keeps its meaning: at most one call of a key queued (or, with
``"wait"``, waiting) at a time -- so with the queue lock, a key has at most N
executions running and one waiting, and new calls are dropped meanwhile. With
``queue_lock=False`` every call is kept and waits its turn in the line.
``running_lock_conflict="wait"`` with ``queue_lock=False`` uses the line for
``running_limit=1`` too: one execution at a time, every call kept, in order.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, NamedTuple, Optional

from celery.exceptions import Ignore
from redis.exceptions import RedisError

from .deferral import defer, store_down
from .events import duplicate_execution, lock_recovered
from .headers import AFTER_HEADER, CALLED_HEADER, TAKEOVER_HEADER, header, message_headers
from .janitor import Cleanup, janitor
from .keys import MESSAGES, QUEUE, SLOTS, WAITERS, finished_key, limited_key, lock_key
from .ownership import Lease, RunningOwner, running_ttl
from .redelivery import call_of, copy_of_finished, ended, guard_seconds
from .rejection import record_rejection, reject_duplicate
from .settings import Settings
from .store import (
    FINISHED,
    FULL,
    IN_LINE,
    SAME_ATTEMPT,
    FinishedCheck,
    FinishedRecord,
    Joining,
    LockStore,
    RetryPolicy,
)
from .waiting import hand_over_entries as hand_over
from .waiting import message_of

logger = logging.getLogger("celery_once_task")

#: How long a slot reserved for a waiting call handed over is kept for its message to arrive.
RESERVE_SECONDS = 60.0
#: A waiting call's safety copy comes back after a lease, times its place in line over the limit, at most this.
SAFETY_LEASES = 10


def limit_of(task: Any) -> int:
    return int(getattr(task, "running_limit", None) or 1)


def may_wait_in_line(task: Any) -> bool:
    """Whether the task's calls may wait in a line, by its own options: they are stamped with their time."""
    return limit_of(task) > 1 or (task.running_lock_conflict == "wait" and not task.queue_lock)


def limited(task: Any, settings: Settings) -> bool:
    """Whether the task's executions take slots (``running_limit > 1``, or a line kept without a queue lock)."""
    return limit_of(task) > 1 or (settings.running_lock_conflict == "wait" and not task.queue_lock)


def keys_of(task: Any, digest: str) -> tuple[str, tuple[str, str]]:
    """The slots of a limited call, and its line: the waiting calls, and their messages."""
    return limited_key(task.name, digest, SLOTS), (limited_key(task.name, digest, WAITERS),
                                                   limited_key(task.name, digest, MESSAGES))


def call_id(task_id: str, attempt: int) -> str:
    return f"{task_id}\x1f{attempt}"


def attempt_prefix(owner: RunningOwner) -> str:
    """The owner tokens of every execution of this attempt begin with this."""
    return owner.token[: owner.token.index(',"worker"') + 1]


class Slot(NamedTuple):
    """The slot an execution holds, released when the body ends."""

    store: LockStore
    settings: Settings
    key: str
    token: str
    finished: Optional[FinishedCheck]
    #: The key's line of waiting calls, and their messages.
    line: tuple[str, str]
    limit: int


def pick_up(task: Any, settings: Settings, digest: str, request: Any) -> Optional[Slot]:
    """Release the queue lock and take a slot; what an execution beyond the limit gets otherwise."""
    slots, line = keys_of(task, digest)
    queue_key = lock_key(task.name, digest, QUEUE) if task.queue_lock and not request.is_eager else None
    owner = RunningOwner.for_execution(request.id, request.retries)
    check = None if request.is_eager else FinishedCheck(finished_key(slots, request.id), owner.retries,
                                                        call_of(request))
    takeover = header(request, TAKEOVER_HEADER)
    takeover = takeover if isinstance(takeover, str) else ""
    limit = limit_of(task)
    lease = running_ttl(settings, owner)
    since = f"{time.time():.3f}"
    same = attempt_prefix(owner)
    ident = call_id(request.id, owner.retries)
    held = Slot(_store(task, settings), settings, slots, owner.token, check, line, limit)
    try:
        pickup = held.store.slot_pickup(queue_key, request.id, slots, line, owner.token, since, lease, limit, ident,
                                        same, reserve=RESERVE_SECONDS, takeover=takeover, finished=check)
        if pickup.code == FINISHED:
            pickup = copy_of_finished(
                task, settings, request, held.store, slots, pickup.detail,
                lambda: held.store.slot_pickup(None, request.id, slots, line, owner.token, since, lease, limit,
                                               ident, same, reserve=RESERVE_SECONDS))
    except RedisError as exc:
        lost = Cleanup(settings.redis_url, slots, owner.token, True, task, request.id, "pickup refused",
                       options=settings.redis_options, line=line, limit=limit, reserve=RESERVE_SECONDS)
        store_down(task, settings, digest, request, slots, owner, exc, lost)
        return None
    hand_over(task, pickup.handed, slots)
    if pickup.code == SAME_ATTEMPT:
        return _same_attempt(task, settings, request, held, pickup.detail)
    if pickup.code == IN_LINE:
        # A copy of a call that is still waiting in line: back to the broker.
        _come_back(task, settings, request, int(pickup.detail), limit)
        raise Ignore()
    if pickup.code == FULL:
        return _full(task, settings, request, held, queue_key, digest, pickup.detail)
    after = header(request, AFTER_HEADER)
    if after or takeover:
        logger.warning("%s[%s]: lock recovered: a slot of %s taken by a deferred copy", task.name, request.id, slots)
        lock_recovered.send(sender=task, key=slots, holder=after or takeover, reason="deferred copy")
    return held


def _store(task: Any, settings: Settings) -> LockStore:
    return LockStore.for_url(settings.redis_url, settings.redis_options, lambda: RetryPolicy.of_app(task.app))


def _full(task: Any, settings: Settings, request: Any, held: Slot, queue_key: Optional[str], digest: str,
          holder_token: str) -> Optional[Slot]:
    """No slot is free: refused, or -- under "wait" -- in line, or waiting in this process (eager)."""
    holder = RunningOwner.parse(_token_value(holder_token))
    holder_id = holder.task_id if holder else holder_token
    describe = f"running_limit {held.limit} of {held.key} is reached"
    if settings.running_lock_conflict != "wait":
        exc = reject_duplicate(task, request, held.key, holder_token, why=f"{describe} (one of them: {holder_id})")
        if held.finished is not None:
            record_rejection(task, settings, held.store, held.finished, request)
        raise exc
    duplicate_execution.send(sender=task, task_id=request.id, key=held.key, holder_id=holder_id, policy="wait")
    owner = RunningOwner.for_execution(request.id, request.retries)
    lease = running_ttl(settings, owner)
    since = f"{time.time():.3f}"
    if request.is_eager:
        return _wait_here(task, request, held, owner, lease)
    ident = call_id(request.id, owner.retries)
    joining = Joining(
        message=message_of(task, request, message_headers(request)) or "",
        called_at=called_at(request),
        line_ttl=settings.queue_lock_timeout + Lease(settings.heartbeat_timeout).ttl,
        queue_key=queue_key,
    )
    try:
        pickup = held.store.slot_pickup(
            None, request.id, held.key, held.line, owner.token, since, lease, held.limit, ident,
            attempt_prefix(owner), reserve=RESERVE_SECONDS, joining=joining)
    except RedisError as exc:
        store_down(task, settings, digest, request, held.key, owner, exc,
                   Cleanup(settings.redis_url, held.key, owner.token, True, task, request.id, "pickup refused",
                           options=settings.redis_options, line=held.line, limit=held.limit,
                           reserve=RESERVE_SECONDS))
        return None
    hand_over(task, pickup.handed, held.key)
    if pickup.code == IN_LINE:
        logger.info("%s[%s]: execution waiting: %s; waits in line, place %s", task.name, request.id, describe,
                    pickup.detail)
        _come_back(task, settings, request, int(pickup.detail), held.limit)
        raise Ignore()
    if pickup.code == SAME_ATTEMPT:
        return _same_attempt(task, settings, request, held, pickup.detail)
    if queue_key is not None:
        # A slot freed in between: it runs now, and the queue lock it took back goes.
        held.store.release_all([(queue_key, request.id, False)])
    return held


def called_at(request: Any) -> int:
    """When the call was made, in microseconds: its ``CALLED_HEADER`` (a line is in call order), else now."""
    stamp = header(request, CALLED_HEADER)
    if isinstance(stamp, int) and not isinstance(stamp, bool):
        return stamp
    try:
        return int(stamp)
    except (TypeError, ValueError):
        return time.time_ns() // 1000


def _come_back(task: Any, settings: Settings, request: Any, place: int, limit: int) -> None:
    """Publish the waiting call's safety copy: back after a lease, later the further back it waits."""
    leases = min(SAFETY_LEASES, max(1, math.ceil(place / max(1, limit))))
    defer(task, request, {}, Lease(settings.heartbeat_timeout).ttl * leases)


def _same_attempt(task: Any, settings: Settings, request: Any, held: Slot, holder_token: str) -> Optional[Slot]:
    """A copy of an execution that holds a slot: it never runs beside it; it takes over only from a gone worker."""
    holder = RunningOwner.parse(_token_value(holder_token))
    if holder is not None and holder.heartbeat and not held.store.instance_alive(holder.instance):
        owner = RunningOwner.for_execution(request.id, request.retries)
        pickup = held.store.slot_pickup(
            None, request.id, held.key, held.line, owner.token, f"{time.time():.3f}", running_ttl(settings, owner),
            held.limit, call_id(request.id, owner.retries), attempt_prefix(owner), reserve=RESERVE_SECONDS,
            takeover=holder_token)
        hand_over(task, pickup.handed, held.key)
        if pickup.code != SAME_ATTEMPT and pickup.code != IN_LINE and pickup.code != FULL:
            logger.warning("%s[%s]: lock recovered: took over a slot of %s from gone worker %s", task.name,
                           request.id, held.key, holder.worker)
            lock_recovered.send(sender=task, key=held.key, holder=holder_token, reason="worker gone")
            return held
    lease = Lease(settings.heartbeat_timeout).ttl
    logger.info("%s[%s]: execution waiting: another delivery of this task holds a slot of %s; deferred by %.1fs",
                task.name, request.id, held.key, lease)
    defer(task, request, {AFTER_HEADER: holder_token}, lease)
    raise Ignore()


def _wait_here(task: Any, request: Any, held: Slot, owner: RunningOwner, lease: float) -> Slot:
    """An eager execution waits in the calling process for a free slot, looking again with a growing pause."""
    logger.info("%s[%s]: execution waiting: running_limit %s of %s is reached", task.name, request.id, held.limit,
                held.key)
    pause = 0.05
    ident, same = call_id(request.id, owner.retries), attempt_prefix(owner)
    while True:
        time.sleep(pause)
        pickup = held.store.slot_pickup(None, request.id, held.key, held.line, owner.token, f"{time.time():.3f}",
                                        lease, held.limit, ident, same, reserve=RESERVE_SECONDS)
        hand_over(task, pickup.handed, held.key)
        if pickup.code not in (FULL, IN_LINE, SAME_ATTEMPT):
            return held
        pause = min(pause * 2, 1.0)


def release(task: Any, held: Slot, task_id: Optional[str], outcome: Optional[BaseException] = None,
            reason: str = "task ended") -> None:
    """Free the slot by its owner token, recording the end; hand the free slots to the line."""
    record = None
    finished = ended(task, outcome) if held.finished is not None else None
    if held.finished is not None and finished is not None:
        record = FinishedRecord(held.finished.key, finished.value(), guard_seconds(task, held.settings),
                                finished.attempt, finished.call)
    try:
        _, handed = held.store.slot_release(held.key, held.line, held.token, held.limit, RESERVE_SECONDS, record)
    except RedisError as exc:
        logger.warning("%s[%s]: lock operation failed: could not release a slot of %s (%s); retrying until the "
                       "lock store answers: %s", task.name, task_id, held.key, reason, exc)
        janitor.add(Cleanup(held.settings.redis_url, held.key, held.token, True, task, task_id, reason,
                            options=held.settings.redis_options, record=record, line=held.line, limit=held.limit,
                            reserve=RESERVE_SECONDS))
        return
    hand_over(task, handed, held.key)


def _token_value(token: str) -> str:
    """A slot's owner token, as a running lock's value (which ``RunningOwner.parse`` reads)."""
    return token + '"since":0}'


def describe_slots(fields: dict[str, str]) -> dict[str, Any]:
    """A key's slots as operators see them: the limit, the slots held (owner, expiry, since) and reserved."""
    limit = int(fields.get("limit", "0") or 0)
    held, reserved, waiting = [], [], 0
    for name, value in fields.items():
        if name.startswith("s:"):
            expiry, _, since = value.partition(":")
            held.append({"token": name[2:], "value": value, "expiry_ms": int(expiry), "since": _float(since)})
        elif name.startswith("r:"):
            task_id, _, attempt = name[2:].partition("\x1f")
            reserved.append({"task_id": task_id, "attempt": attempt, "value": value,
                             "expiry_ms": int(value.partition("\x1f")[0])})
        elif name.startswith("w:"):
            waiting += 1
    return {"limit": limit, "held": held, "reserved": reserved, "waiting": waiting}


def _float(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


