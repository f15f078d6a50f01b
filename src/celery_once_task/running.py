"""The running lock: taken at pickup with the queue lock's release, held while the body runs, then released.

At pickup the worker, in one round trip, releases the queue lock (if this
message holds it; or keeps it, and takes replaced arguments: ``windows``) and
takes the running lock (``store.locks``); the release at the end records the
execution's end in the same script (``redelivery``), and ends what the call
kept in the same round trip.
With the worker boot step, the running lock is a lease of ``Lease.ttl``
seconds that the worker's main process extends while the execution lives
(``renewal``); without it, its TTL is ``running_lock_timeout``.

Conflicts on the running lock (rare, so they may take more round trips):

* another task id holds it: this execution is a duplicate -- rejected with
  ``OnceTaskLocked`` (``holds.refuse``), or, under ``"wait"``, it becomes
  the key's waiting copy (``waiting``);
* an earlier attempt of the same task id holds it: a retry that overtook the
  attempt that published it takes the lock over;
* the same attempt holds it (the message was delivered twice): the copy never
  runs beside the original (``holds.same_attempt``).
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple, Optional

from celery.exceptions import Ignore
from redis.exceptions import RedisError

from . import holds, telemetry, waiting
from .deferral import defer, store_down
from .events import duplicate_execution
from .headers import DIGEST_HEADER, WAITER_HEADER, message_headers
from .janitor import Cleanup, release_or_leave
from .keys import RUNNING, WAITING, KeySpace, key_space
from .ownership import Lease, RunningOwner, running_ttl, split_pickup_reference
from .parking import Claim, settle
from .protocols import TaskLike, TaskRequest
from .redelivery import copy_of_finished, finished_check
from .settings_table import Settings
from .store import FinishedCheck, LockStore, Pickup, store_for
from .store.operations import RUNNING_DELETE, RUNNING_PICKUP, RUNNING_RELEASE, RUNNING_WAIT
from .windows import QueueSide, end_of

logger = logging.getLogger("celery_once_task")


class RunningLock(NamedTuple):
    """The running lock an execution holds (a tuple: one per execution)."""

    store: LockStore
    settings: Settings
    key: str
    digest: str
    owner: RunningOwner
    finished: Optional[FinishedCheck] = None
    side: Optional[QueueSide] = None
    arguments: Optional[str] = None

    @property
    def token(self) -> str:
        return self.owner.token

    def describe(self) -> str:
        return f"running lock {self.key}"

    def retake(self, task: TaskLike, request: TaskRequest) -> bool:
        return self.store.locks.retake(self.key, self.owner, running_ttl(self.settings, self.owner)).acquired

    def take_over(self, task: TaskLike, request: TaskRequest, holder_token: str) -> bool:
        if self.store.locks.replace(self.key, holder_token, self.owner.value(), running_ttl(self.settings, self.owner)):
            return True
        # The holder released it in between: take it as any execution would.
        return self.retake(task, request)

    def release(self, task: TaskLike, task_id: Optional[str], outcome: Optional[BaseException] = None,
                reason: str = "task ended") -> None:
        """Release by owner token, recording the end; under ``"wait"`` hand the key's waiting copy over.

        The waiting copy's entry is taken in the same round trip, and its
        message published (``waiting.hand_over``).
        """
        record = holds.finished_record(task, self, outcome)
        side, how = self.side, end_of(outcome)
        also = side.ended(how) if side is not None else []
        started = telemetry.started(self.settings) if telemetry.active else 0
        if self.settings.running_lock_conflict == "wait" and task.queue_lock:
            try:
                entry = self.store.waiting.release_taking_waiter(self.key, self.token, record, also)
            except RedisError:
                pass  # the waiting copy comes back by itself (its safety copy); the release goes to the janitor
            else:
                if telemetry.active:
                    telemetry.released(task, self.settings, self.store.client, RUNNING_RELEASE, self.key, started,
                                       handed=entry is not None, batch=2)
                if entry is not None:
                    waiting.hand_over(task, entry, self.key)
                return
        left = release_or_leave(
            self.store, self.settings, task, task_id, self.key, self.token, reason, prefix=True, record=record,
            also=also, also_later=side.later(self.settings, task, task_id, how, reason) if side is not None else ())
        if telemetry.active:
            telemetry.released(task, self.settings, self.store.client, RUNNING_RELEASE if record else RUNNING_DELETE,
                               self.key, started, error=left)


def pick_up(task: TaskLike, settings: Settings, space: KeySpace, digest: str, request: TaskRequest,
            side: Optional[QueueSide], takeover: str, waiter: bool, after: str,
            claim: Optional[Claim] = None) -> Optional[RunningLock]:
    """Release the queue lock and take the running lock; what a duplicate execution gets otherwise.

    ``claim``: a parked copy's claim, sent first in the same round trip (``parking``).
    """
    running_key = space.lock(digest, RUNNING) if task.running_lock else None
    waiting_key = space.lock(digest, WAITING) if waiter else None
    owner = RunningOwner.for_execution(request.id, request.retries, space.holder_task, settings.legacy_formats)
    check = None
    if running_key is not None and not request.is_eager:
        check = finished_check(running_key, request, owner.retries, settings)
    ttl = running_ttl(settings, owner)
    arguments = None
    # A reference with a moment names a slot (a limited task's, before a change of its options): its token
    # alone is a prefix of the value this lock would hold.
    takeover = split_pickup_reference(takeover)[0]
    since = time.time()
    try:
        store = store_for(task, settings)
        pickup = store.locks.pickup(None, request.id, running_key, owner, ttl, takeover=takeover,
                                    waiting_key=waiting_key, finished=check,
                                    queue=side.pickup() if side is not None else None,
                                    also=(claim.call,) if claim is not None else (), since=since)
        if claim is not None:
            _settle(task, settings, request, store, running_key, owner, pickup, claim)
        arguments = pickup.arguments
        if pickup.finished is not None:
            pickup = copy_of_finished(task, settings, request, store, running_key, pickup.finished,
                                      lambda: _retake(store, running_key, owner, ttl))
    except RedisError as exc:
        store_down(task, settings, digest, request, running_key, owner, exc, _lost(task, settings, request,
                                                                                  running_key, owner, since))
        return None
    if running_key is None:
        return None
    held = RunningLock(store, settings, running_key, digest, owner, check, side, arguments)
    if pickup.acquired:
        if after or takeover:
            holds.recovered(task, request, held, after or takeover)
        elif waiter and not pickup.queue_released:
            # The other copy of this waiting message never ran, or its run was
            # killed (no copy of it ended: the record would say so).
            logger.warning("%s[%s]: lock recovered: a waiting call runs, no copy of it ended (lock %s)",
                           task.name, request.id, running_key)
        return held
    return _conflict(task, request, held, pickup.holder or "")


def _lost(task: TaskLike, settings: Settings, request: TaskRequest, key: Optional[str], owner: RunningOwner,
          since: float) -> Optional[Cleanup]:
    """The janitor's release of the running lock a pickup whose reply was lost may have taken: by its whole value.

    Not by the owner token: the pool processes of one worker share it, and
    another copy of this attempt may hold the lock in its name meanwhile.
    """
    if key is None:
        return None
    return Cleanup(settings.redis_url, key, owner.value(since), True, task, request.id, "pickup refused",
                   options=settings.redis_options)


def _settle(task: TaskLike, settings: Settings, request: TaskRequest, store: LockStore, key: Optional[str],
            owner: RunningOwner, pickup: Pickup, claim: Claim) -> None:
    """A parked copy's claim rode in its pickup: a copy another one superseded gives back what it took (``Ignore``).

    The queue lock it released and the waiting entry it deleted are the
    other copy's to release too, under the same task id: only the running
    lock, taken in this copy's name, goes back (recording no end: it never ran).
    """
    try:
        settle(task, request, claim, pickup.also[0])
    except Ignore:
        if key is not None and pickup.acquired:
            release_or_leave(store, settings, task, request.id, key, owner.token, "copy superseded", prefix=True)
        raise


def _retake(store: LockStore, key: Optional[str], owner: RunningOwner, ttl: float) -> Pickup:
    return store.locks.retake(key, owner, ttl) if key is not None else Pickup(True)


def _conflict(task: TaskLike, request: TaskRequest, held: RunningLock, holder_value: str) -> Optional[RunningLock]:
    holder = RunningOwner.parse(holder_value)
    owner = held.owner
    if holder is None or holder.task_id != owner.task_id:
        if held.settings.running_lock_conflict == "wait" and task.queue_lock:
            return _wait(task, request, held, holder_value, holder)
        holds.refuse(task, request, held, holder_value)
    assert holder is not None
    if holder.retries < owner.retries:
        # A retry that started before the attempt that published it had
        # finished: that attempt's body is over, take over.
        if held.store.locks.replace(held.key, holder.token, owner.value(), running_ttl(held.settings, owner)):
            logger.info("%s[%s]: retry %d took over running lock %s", task.name, owner.task_id, owner.retries,
                        held.key)
            return held
        # The earlier attempt released the lock in between: take it as any
        # execution would. Whoever holds it now is a newer holder, so this
        # ends after one more look.
        pickup = held.store.locks.retake(held.key, owner, running_ttl(held.settings, owner))
        return held if pickup.acquired else _conflict(task, request, held, pickup.holder or "")
    holds.same_attempt(task, request, held, holder_value)
    return held


def _wait(task: TaskLike, request: TaskRequest, held: RunningLock, holder_value: str,
          holder: Optional[RunningOwner]) -> Optional[RunningLock]:
    """Wait for the running copy to end, as the key's waiting copy (see ``waiting``)."""
    duplicate_execution.send(sender=task, task_id=request.id, key=held.key,
                             holder_id=holder.task_id if holder else holder_value, policy="wait")
    if request.is_eager:
        if telemetry.active:  # the pickup's span ends; the next covers the retakes until it runs
            telemetry.step(request, "waiting", RUNNING_PICKUP, holder=holder_value, policy="wait",
                           client=held.store.client)
        holds.wait_here(task, request, held, holder_value)
        return held
    settings, digest = held.settings, held.digest
    headers = {DIGEST_HEADER: digest, WAITER_HEADER: "1"}
    message = waiting.entry(task, request, {**message_headers(request), **headers})
    ttl = running_ttl(settings, held.owner)
    queue_holder = key_space(task, settings).holder(request.id)
    if telemetry.active:
        telemetry.step(request, "waiting", RUNNING_WAIT, 2 + (message is not None), holder=holder_value,
                       policy="wait", client=held.store.client)
    since = time.time()
    try:
        waited = held.store.waiting.wait(held.key, held.owner, ttl, settings.queue_lock_timeout + ttl, message,
                                         queue_holder, since)
    except RedisError as exc:
        store_down(task, settings, digest, request, held.key, held.owner, exc,
                   _lost(task, settings, request, held.key, held.owner, since))
        return None
    if waited.running_taken:
        # The running copy ended in between: run now, as an ordinary pickup would.
        held.store.waiting.leave(held.key, request.id, queue_holder)
        return held
    if not waited.queue_taken:
        # Another call holds the queue lock (a waiting copy already, most
        # likely): this one comes back as an ordinary execution after a lease,
        # and waits or runs then. Only a copy that holds the queue lock is a
        # waiting copy, whose copies run once between them.
        del headers[WAITER_HEADER]
    if telemetry.active:
        telemetry.executed(task, request, "waiting", holder=holder_value, policy="wait", client=held.store.client)
    logger.info("%s[%s]: execution waiting: running lock %s is held by %s; it runs when that execution ends",
                task.name, request.id, held.key, holder_value)
    # The safety copy: back within a lease if no hand-over brings it sooner.
    defer(task, request, headers, Lease(settings.heartbeat_timeout).ttl)
    raise Ignore()
