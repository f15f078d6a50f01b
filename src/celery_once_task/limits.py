"""``running_limit``: at most N executions of one key at once, fleet-wide; the calls beyond N wait or are refused.

A task with ``running_limit=N`` (N > 1) holds, instead of one running lock
per key, one of N *slots* of its key (``keys.limited_key``: the key's slots
are a hash, its waiting calls a list, in one Redis Cluster hash slot):

* a slot is a lease, as the running lock is: valued with its owner token,
  renewed in the worker's renewal round trip (``renewal``), freed within a
  lease when its worker dies, released by its owner token alone;
* pickup is one round trip (``lua.slots.SLOT_ACQUIRE``): the queue lock's
  release and the slot, whatever N; the release is one round trip too
  (``lua.slots.SLOT_RELEASE``), and records the execution's end
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
from typing import NamedTuple, Optional

from celery.exceptions import Ignore
from redis.exceptions import RedisError

from . import holds, telemetry
from .deferral import defer, store_down
from .events import duplicate_execution
from .headers import CALLED_HEADER, header, message_headers
from .ids import call_id
from .janitor import Cleanup, janitor
from .keys import SLOTS, KeySpace
from .ownership import Lease, RunningOwner, running_ttl, split_pickup_reference
from .protocols import TaskLike, TaskOptions, TaskRequest
from .redelivery import copy_of_finished, finished_check
from .settings_table import Settings
from .store import Claim, FinishedCheck, Joining, LockStore, store_for
from .store.lua.slots import SlotCode
from .store.operations import SLOT_FREE, SLOT_JOIN, SLOT_PICKUP
from .waiting import hand_over_entries as hand_over
from .waiting import message_of
from .windows import QueueSide, end_of

logger = logging.getLogger("celery_once_task")

#: How long a slot reserved for a waiting call handed over is kept for its message to arrive.
RESERVE_SECONDS = 60.0
#: A waiting call's safety copy comes back after a lease, times its place in line over the limit, at most this.
SAFETY_LEASES = 10


def limit_of(task: TaskOptions) -> int:
    return int(getattr(task, "running_limit", None) or 1)


def may_wait_in_line(running_limit: int, running_lock_conflict: Optional[str], queue_lock: bool) -> bool:
    """Whether a task's calls may wait in a line, by its own options: they are stamped with their time."""
    return (running_limit or 1) > 1 or (running_lock_conflict == "wait" and not queue_lock)


def limited(task: TaskOptions, settings: Settings) -> bool:
    """Whether the task's executions take slots (``running_limit > 1``, or a line kept without a queue lock)."""
    return limit_of(task) > 1 or (settings.running_lock_conflict == "wait" and not task.queue_lock)


def slots_key(space: KeySpace, digest: str) -> str:
    """The slots of a limited call; its line and their messages are siblings (``store.slots.line_of``)."""
    return space.limited(digest, SLOTS)


class Slot(NamedTuple):
    """The slot an execution holds, released when the body ends."""

    store: LockStore
    settings: Settings
    claim: Claim
    finished: Optional[FinishedCheck]
    side: Optional[QueueSide] = None
    arguments: Optional[str] = None

    @property
    def key(self) -> str:
        return self.claim.key

    @property
    def token(self) -> str:
        return self.claim.token

    def describe(self) -> str:
        return f"a slot of {self.key}"

    def retake(self, task: TaskLike, request: TaskRequest) -> bool:
        pickup = self.store.slots.pickup(self.claim, _now())
        hand_over(task, pickup.handed, self.key)
        return pickup.code not in _NOT_TAKEN

    def take_over(self, task: TaskLike, request: TaskRequest, holder_token: str) -> bool:
        pickup = self.store.slots.pickup(self.claim, _now(), takeover=holder_token)
        hand_over(task, pickup.handed, self.key)
        return pickup.code not in _NOT_TAKEN

    def release(self, task: TaskLike, task_id: Optional[str], outcome: Optional[BaseException] = None,
                reason: str = "task ended") -> None:
        """Free the slot by its owner token, recording the end; hand the free slots to the line."""
        record = holds.finished_record(task, self, outcome)
        claim, side, how = self.claim, self.side, end_of(outcome)
        started = telemetry.started(self.settings) if telemetry.active else 0
        try:
            _, handed = self.store.slots.release(claim.key, claim.token, claim.limit, claim.reserve, record,
                                                 side.ended(how) if side is not None else ())
        except RedisError as exc:
            if telemetry.active:
                telemetry.released(task, self.settings, self.store.client, SLOT_FREE, claim.key, started, error=exc)
            logger.warning("%s[%s]: lock operation failed: could not release a slot of %s (%s); retrying until the "
                           "lock store answers: %s", task.name, task_id, claim.key, reason, exc)
            janitor.add(Cleanup(self.settings.redis_url, claim.key, claim.token, True, task, task_id, reason,
                                options=self.settings.redis_options, record=record, slot=True, limit=claim.limit,
                                reserve=claim.reserve))
            for cleanup in side.later(self.settings, task, task_id, how, reason) if side is not None else ():
                janitor.add(cleanup)
            return
        if telemetry.active:
            telemetry.released(task, self.settings, self.store.client, SLOT_FREE, claim.key, started,
                               handed=len(handed))
        hand_over(task, handed, claim.key)


#: The pickup codes under which the execution did not get a slot.
_NOT_TAKEN = (SlotCode.SAME_ATTEMPT, SlotCode.IN_LINE, SlotCode.FULL)


def _now() -> str:
    """When a pickup is sent (milliseconds), as its slot records it: with the token, it tells that try sent again."""
    return str(int(time.time() * 1000))


def pick_up(task: TaskLike, settings: Settings, space: KeySpace, digest: str, request: TaskRequest,
            side: Optional[QueueSide], takeover: str, after: str) -> Optional[Slot]:
    """Release (or keep) the queue lock and take a slot; what an execution beyond the limit gets otherwise."""
    key = slots_key(space, digest)
    owner = RunningOwner.for_execution(request.id, request.retries, space.holder_task, settings.legacy_formats)
    check = None if request.is_eager else finished_check(key, request, owner.retries, settings)
    claim = Claim(key, owner.token, owner.attempt_prefix, call_id(request.id, owner.retries), limit_of(task),
                  running_ttl(settings, owner), RESERVE_SECONDS)
    since = _now()
    takeover, takeover_since = split_pickup_reference(takeover)
    try:
        held = Slot(store_for(task, settings), settings, claim, check, side)
        pickup = held.store.slots.pickup(claim, since, task_id=request.id, takeover=takeover,
                                         takeover_since=takeover_since, finished=check,
                                         queue=side.pickup() if side is not None else None)
        held = held._replace(arguments=pickup.arguments)
        if pickup.code == SlotCode.FINISHED:
            pickup = copy_of_finished(task, settings, request, held.store, key, str(pickup.detail),
                                      lambda: held.store.slots.pickup(claim, since))
    except RedisError as exc:
        store_down(task, settings, digest, request, key, owner, exc, _lost(task, settings, request, claim, since))
        return None
    hand_over(task, pickup.handed, key)
    if pickup.code == SlotCode.SAME_ATTEMPT:
        holds.same_attempt(task, request, held, str(pickup.detail))
        return held
    if pickup.code == SlotCode.IN_LINE:
        # A copy of a call that is still waiting in line: back to the broker.
        if telemetry.active:
            telemetry.executed(task, request, "postponed", client=held.store.client)
        _come_back(task, settings, request, int(pickup.detail), claim.limit)
        raise Ignore()
    if pickup.code == SlotCode.FULL:
        return _full(task, request, held, side, digest, str(pickup.detail))
    if after or takeover:
        holds.recovered(task, request, held, after or takeover)
    return held


def _lost(task: TaskLike, settings: Settings, request: TaskRequest, claim: Claim, since: str) -> Cleanup:
    """The janitor's release of the slot a pickup sent at ``since``, its reply lost, may have taken."""
    return Cleanup(settings.redis_url, claim.key, claim.token, True, task, request.id, "pickup refused",
                   options=settings.redis_options, slot=True, limit=claim.limit, reserve=claim.reserve, since=since)


def _full(task: TaskLike, request: TaskRequest, held: Slot, side: Optional[QueueSide], digest: str,
          holder_token: str) -> Optional[Slot]:
    """No slot is free: refused, or -- under "wait" -- in line, or waiting in this process (eager)."""
    holder = RunningOwner.parse(holder_token)
    holder_id = holder.task_id if holder else holder_token
    settings, claim = held.settings, held.claim
    describe = f"running_limit {claim.limit} of {claim.key} is reached"
    if settings.running_lock_conflict != "wait":
        holds.refuse(task, request, held, holder_token, why=f"{describe} (one of them: {holder_id})")
    duplicate_execution.send(sender=task, task_id=request.id, key=claim.key, holder_id=holder_id, policy="wait")
    if request.is_eager:
        if telemetry.active:  # the pickup's span ends; the next covers the retakes until it runs
            telemetry.step(request, "waiting", SLOT_PICKUP, holder=holder_token, policy="wait",
                           client=held.store.client)
        holds.wait_here(task, request, held, holder_token)
        return held
    joining = Joining(
        message=message_of(task, request, message_headers(request)) or "",
        called_at=called_at(request),
        line_ttl=settings.queue_lock_timeout + Lease(settings.heartbeat_timeout).ttl,
        queue_key=side.key if side is not None else None,
        holder=side.holder if side is not None else "",
    )
    if telemetry.active:
        telemetry.step(request, "waiting", SLOT_JOIN, 1 + (side is not None), holder=holder_token,
                       policy="wait", client=held.store.client)
    since = _now()
    try:
        pickup = held.store.slots.pickup(claim, since, task_id=request.id, joining=joining)
    except RedisError as exc:
        owner = RunningOwner.for_execution(request.id, request.retries)
        store_down(task, settings, digest, request, claim.key, owner, exc,
                   _lost(task, settings, request, claim, since))
        return None
    hand_over(task, pickup.handed, claim.key)
    if pickup.code == SlotCode.IN_LINE:
        if telemetry.active:
            telemetry.executed(task, request, "waiting", holder=holder_token, policy="wait", client=held.store.client)
        logger.info("%s[%s]: execution waiting: %s; waits in line, place %s", task.name, request.id, describe,
                    pickup.detail)
        _come_back(task, settings, request, int(pickup.detail), claim.limit)
        raise Ignore()
    if pickup.code == SlotCode.SAME_ATTEMPT:
        holds.same_attempt(task, request, held, str(pickup.detail))
        return held
    if side is not None:
        # A slot freed in between: it runs now, and the queue lock it took back goes.
        held.store.locks.release_all([(side.key, side.holder, False)])
    return held


def called_at(request: TaskRequest) -> int:
    """When the call was made, in microseconds: its ``CALLED_HEADER`` (a line is in call order), else now."""
    stamp = header(request, CALLED_HEADER)
    if isinstance(stamp, int) and not isinstance(stamp, bool):
        return stamp
    try:
        return int(stamp)
    except (TypeError, ValueError):
        return time.time_ns() // 1000


def _come_back(task: TaskLike, settings: Settings, request: TaskRequest, place: int, limit: int) -> None:
    """Publish the waiting call's safety copy: back after a lease, later the further back it waits."""
    leases = min(SAFETY_LEASES, max(1, math.ceil(place / max(1, limit))))
    defer(task, request, {}, Lease(settings.heartbeat_timeout).ttl * leases)
