"""Executing a task: pickup, what a duplicate execution gets, and the release at the end.

Celery's tracer calls the task object (``OnceTask.__call__``) after
``task_prerun`` and before it stores the result or sends the next step of a
chain. There the worker, in one round trip, releases the queue lock (if this
message holds it) and takes the running lock; runs the body; and releases the
running lock in a ``finally`` -- before the result is visible, so a caller
that saw the result can call again at once.

With the worker boot step, the running lock is a lease of ``Lease.ttl``
seconds that the worker's main process extends while the execution lives
(``renewal``); without it, its TTL is ``running_lock_timeout``.

Conflicts on the running lock (rare, so they may take more round trips):

* another task id holds it: this execution is a duplicate and is rejected
  with ``OnceTaskLocked``; its result is stored as a failure;
* an earlier attempt of the same task id holds it: a retry that overtook the
  attempt that published it takes the lock over;
* the same attempt holds it (the message was delivered twice): the copy never
  runs beside the original; it takes over only from a worker that is gone.

A copy of an attempt that already ended (a broker's redelivery) never runs
again: the execution's release records its end, the pickup's script reads
that record and takes nothing, and ``redelivery`` says what the copy gets.

Unknown outcomes: a pickup whose every try failed is published again, same
id and attempt, to run once the store answers, carrying its owner token: the
copy may take over the lock that a lost reply may have taken in its name,
and the janitor deletes that lock by token as soon as the store answers.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple, Optional

from celery.exceptions import Ignore
from redis.exceptions import RedisError

from . import limits
from .deferral import defer, store_down
from .events import duplicate_execution, lock_recovered
from .headers import AFTER_HEADER, DIGEST_HEADER, TAKEOVER_HEADER, WAITER_HEADER, header, message_headers
from .keys import QUEUE, RUNNING, finished_key, lock_key
from .limits import Slot, limited
from .ownership import Lease, RunningOwner, running_ttl
from .publish import release_or_leave_to_janitor
from .redelivery import call_of, copy_of_finished, ended, guard_seconds
from .rejection import record_rejection, reject_duplicate
from .settings import Settings
from .store import FinishedCheck, FinishedRecord, LockStore, RetryPolicy, waiting_token
from .waiting import WAITING, entry, hand_over

logger = logging.getLogger("celery_once_task")





class Held(NamedTuple):
    """The running lock an execution holds, released when the body ends (a tuple: one per execution)."""

    store: LockStore
    settings: Settings
    key: str
    token: str
    #: Where the execution records its end (None in eager mode: nothing can be delivered again).
    finished: Optional[FinishedCheck] = None




def pick_up(task: Any, settings: Settings, digest: str, request: Any) -> Optional[Held | Slot]:
    """Release the queue lock and take the running lock (or a slot: ``limits``); return what to release at the end."""
    if task.running_lock and limited(task, settings):
        return limits.pick_up(task, settings, digest, request)
    # Eager calls never took a queue lock, and are never delivered again.
    queue_key = lock_key(task.name, digest, QUEUE) if task.queue_lock and not request.is_eager else None
    running_key = lock_key(task.name, digest, RUNNING) if task.running_lock else None
    waiter = bool(header(request, WAITER_HEADER)) and queue_key is not None
    waiting_key = lock_key(task.name, digest, WAITING) if waiter else None
    owner = RunningOwner.for_execution(request.id, request.retries)
    check = None
    if running_key is not None and not request.is_eager:
        check = FinishedCheck(finished_key(running_key, request.id), owner.retries, call_of(request))
    takeover = header(request, TAKEOVER_HEADER)
    takeover = takeover if isinstance(takeover, str) else ""
    ttl = running_ttl(settings, owner)
    try:
        # Inside the try: a Redis Cluster client connects when it is made.
        store = LockStore.for_url(settings.redis_url, settings.redis_options,
                                  lambda: RetryPolicy.of_app(task.app))
        pickup = store.pickup(queue_key, request.id, running_key, owner, ttl, takeover, waiting_key, check)
        if pickup.finished is not None:
            pickup = copy_of_finished(task, settings, request, store, running_key, pickup.finished,
                                      lambda: store.pickup(None, request.id, running_key, owner, ttl))
    except RedisError as exc:
        store_down(task, settings, digest, request, running_key, owner, exc)
        return None
    if running_key is None:
        return None
    held = Held(store, settings, running_key, owner.token, check)
    if pickup.acquired:
        after = header(request, AFTER_HEADER)
        if after or takeover:
            # The delivery it waited on, or its own earlier pickup, never ended.
            logger.warning(
                "%s[%s]: lock recovered: running lock %s taken by a deferred copy", task.name, request.id, running_key
            )
            lock_recovered.send(sender=task, key=running_key, holder=after or takeover, reason="deferred copy")
        elif waiter and not pickup.queue_released:
            # The other copy of this waiting message never ran, or its run was
            # killed (no copy of it ended: the record would say so).
            logger.warning(
                "%s[%s]: lock recovered: a waiting call runs, no copy of it ended (lock %s)",
                task.name, request.id, running_key,
            )
        return held
    return _conflict(task, settings, request, store, running_key, owner, pickup.holder or "", check)


def release(task: Any, held: Held | Slot, task_id: Optional[str], outcome: Optional[BaseException] = None,
            reason: str = "task ended") -> None:
    """Release the running lock by its owner token, now or as soon as the store answers.

    ``outcome``: how the body ended (None: it returned). Where it finished,
    the release records its end in the same script (see ``redelivery``).
    Under ``running_lock_conflict="wait"`` the same round trip takes the key's
    waiting copy, which is then published.
    """
    if isinstance(held, Slot):
        limits.release(task, held, task_id, outcome, reason)
        return
    settings = held.settings
    record = _record(task, held, outcome)
    if settings.running_lock_conflict != "wait" or not task.queue_lock:
        release_or_leave_to_janitor(held.store, settings, task, task_id, held.key, held.token, reason, prefix=True,
                                    record=record)
        return
    waiting_key = held.key[: -len(RUNNING)] + WAITING
    try:
        waiting = held.store.release_taking_waiter(held.key, held.token, waiting_key, record)
    except RedisError:
        # The waiting copy comes back by itself (its safety copy).
        release_or_leave_to_janitor(held.store, settings, task, task_id, held.key, held.token, reason, prefix=True,
                                    record=record)
        return
    if waiting is not None:
        hand_over(task, waiting, held.key)


def _record(task: Any, held: Held, outcome: Optional[BaseException]) -> Optional[FinishedRecord]:
    if held.finished is None:
        return None
    finished = ended(task, outcome)
    if finished is None:
        return None
    return FinishedRecord(held.finished.key, finished.value(), guard_seconds(task, held.settings),
                          finished.attempt, finished.call)


def _conflict(task: Any, settings: Settings, request: Any, store: LockStore, key: str, owner: RunningOwner,
              holder_value: str, check: Optional[FinishedCheck] = None) -> Optional[Held]:
    holder = RunningOwner.parse(holder_value)
    if holder is None or holder.task_id != owner.task_id:
        if settings.running_lock_conflict == "wait" and task.queue_lock:
            return _wait(task, settings, request, store, key, owner, holder_value, check)
        exc = reject_duplicate(task, request, key, holder_value)
        if check is not None:
            # Its result is final (a failure): a copy of its message must not run it after all.
            record_rejection(task, settings, store, check, request)
        raise exc
    ttl = running_ttl(settings, owner)
    held = Held(store, settings, key, owner.token, check)
    if holder.retries < owner.retries:
        # A retry that started before the attempt that published it had
        # finished: that attempt's body is over, take over.
        if store.replace(key, holder.token, owner.value(), ttl):
            logger.info("%s[%s]: retry %d took over running lock %s", task.name, owner.task_id, owner.retries, key)
            return held
        # The earlier attempt released the lock in between: take it as any
        # execution would. Whoever holds it now is a newer holder, so this
        # ends after one more look.
        pickup = store.pickup(None, owner.task_id, key, owner, ttl)
        if pickup.acquired:
            return held
        return _conflict(task, settings, request, store, key, owner, pickup.holder or "", check)
    # The same message delivered twice (a broker's redelivery). The copy
    # never runs beside the original: it runs only if the original's worker
    # is gone (its heartbeat expired), and else waits to see which it is.
    if holder.heartbeat and not store.instance_alive(holder.instance):
        if store.replace(key, holder.token, owner.value(), ttl):
            logger.warning(
                "%s[%s]: lock recovered: took over running lock %s from gone worker %s",
                task.name, owner.task_id, key, holder.worker,
            )
            lock_recovered.send(sender=task, key=key, holder=holder_value, reason="worker gone")
            return held
        pickup = store.pickup(None, owner.task_id, key, owner, ttl)
        if pickup.acquired:
            return held
        return _conflict(task, settings, request, store, key, owner, pickup.holder or "", check)
    logger.info(
        "%s[%s]: execution waiting: another delivery of this task holds running lock %s (holder %s); "
        "deferred by %.1fs",
        task.name, owner.task_id, key, holder_value, running_ttl(settings, holder),
    )
    defer(task, request, {AFTER_HEADER: holder.token}, running_ttl(settings, holder))
    raise Ignore()


def _wait(task: Any, settings: Settings, request: Any, store: LockStore, key: str, owner: RunningOwner,
          holder_value: str, check: Optional[FinishedCheck]) -> Optional[Held]:
    """Wait for the running copy to end, as the key's waiting copy (see ``waiting``)."""
    holder = RunningOwner.parse(holder_value)
    holder_id = holder.task_id if holder else holder_value
    duplicate_execution.send(sender=task, task_id=request.id, key=key, holder_id=holder_id, policy="wait")
    held = Held(store, settings, key, owner.token, check)
    ttl = running_ttl(settings, owner)
    if request.is_eager:
        return _wait_here(task, request, store, held, owner, ttl, holder_value)
    digest = key.split(":")[-2]
    headers = {DIGEST_HEADER: digest, WAITER_HEADER: "1"}
    queue_key = key[: -len(RUNNING)] + QUEUE
    waiting_key = key[: -len(RUNNING)] + WAITING
    message = entry(task, request, {**message_headers(request), **headers})
    queue_ttl = settings.queue_lock_timeout + ttl
    try:
        waited = store.wait(queue_key, request.id, queue_ttl, waiting_key, message, key, owner, ttl)
    except RedisError as exc:
        store_down(task, settings, digest, request, key, owner, exc)
        return None
    if waited.acquired:
        # The running copy ended in between: run now, as an ordinary pickup would.
        store.release_all([(queue_key, request.id, False), (waiting_key, waiting_token(request.id), True)])
        return held
    if not waited.queue_released:
        # Another call holds the queue lock (a waiting copy already, most
        # likely): this one comes back as an ordinary execution after a lease,
        # and waits or runs then. Only a copy that holds the queue lock is a
        # waiting copy, whose copies run once between them.
        del headers[WAITER_HEADER]
    logger.info(
        "%s[%s]: execution waiting: running lock %s is held by %s; it runs when that execution ends",
        task.name, request.id, key, holder_value,
    )
    # The safety copy: back within a lease if no hand-over brings it sooner.
    defer(task, request, headers, Lease(settings.heartbeat_timeout).ttl)
    raise Ignore()


def _wait_here(task: Any, request: Any, store: LockStore, held: Held, owner: RunningOwner, ttl: float,
               holder_value: str) -> Held:
    """An eager execution waits in the calling process, looking again with a growing pause."""
    logger.info(
        "%s[%s]: execution waiting: running lock %s is held by %s", task.name, request.id, held.key, holder_value
    )
    pause = 0.05
    while True:
        time.sleep(pause)
        if store.pickup(None, request.id, held.key, owner, ttl).acquired:
            return held
        pause = min(pause * 2, 1.0)

