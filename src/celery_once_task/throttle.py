"""``throttle``: at most N executions of a key start in any window of a period, fleet-wide; the excess waits or fails.

A throttled task's key (``lock_args`` / ``lock_name`` choose it, as for the
locks; ``lock_args=[]`` is one bucket for the task) has a *log* of its starts
in the store (``store.throttles``, ``lua.throttles``): an exact sliding window,
O(N) entries per key. At pickup the worker asks the log, in the same round
trip as its queue lock's release, whether the execution may start now:

* it may: it is entered in the log, and runs;
* no window allows it now, under ``throttle_conflict="postpone"`` (the
  default): the store reserves the earliest start a window allows, after the
  reservations already made (so calls of a key keep their order), and the
  worker publishes the message again, same task id and attempt
  (``request.retries`` unchanged, ``max_retries`` not spent), to arrive then
  (``deferral.defer``), and gives its pool process back (``Ignore``). The copy
  starts on its reservation if it arrives on time; a late one (its worker
  died, its pool was busy) gives its reservation up and reserves again at
  the end, so the limit holds whatever became of it;
* under ``"reject"``: it fails with ``OnceTaskThrottled``, its result final.

A postponed call's message can come twice (the broker hands it out again
after a visibility timeout, a lost connection, a killed pool process or
worker). A start stays counted whatever becomes of its execution, and a copy
that finds its call started on the reservation is never run beside it:

* the start's pool process died in its run: its worker's main process marked
  the start lost (``cleanup``) before Celery gave the message back; the copy
  claims the old start and runs as a new one, within the limits;
* the start's worker is gone (its heartbeat expired): the same;
* its worker lives: the copy waits a lease (``_copy_of_a_start``) -- a
  worker killed a moment ago still has a heartbeat -- and then runs as a new
  start if that worker is gone, or is let go: the execution ran, or runs.

A copy that comes after the log forgot the start (older than the longest
period) finds nothing, and runs as a new start: a throttle without a running
lock bounds the starts, and runs a redelivered call at least once.

Eager calls wait in the calling process until their reservation. Where the
task also has a running lock (or a ``running_limit``), the log is asked
first, in a round trip of its own, then the lock is taken as usual.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import NoReturn, Optional

from celery.exceptions import Ignore
from redis.exceptions import RedisError

from . import delays, telemetry
from .deferral import defer, store_down
from .errors import OnceTaskThrottled
from .events import execution_throttled
from .headers import AFTER_HEADER, DIGEST_HEADER, THROTTLE_HEADER, header
from .ids import call_id
from .keys import THROTTLE, KeySpace
from .ownership import INSTANCE, Lease, RunningOwner, heartbeat_enabled
from .protocols import TaskLike, TaskRequest
from .rates import Rate, throttle_conflict
from .rejection import store_rejection
from .settings_table import Settings
from .store import LockStore, store_for, throttles
from .store.locks import queue_reply
from .store.operations import THROTTLE_PICKUP
from .store.scripts import Call
from .windows import QueueSide

logger = logging.getLogger("celery_once_task")

#: A postponed copy that arrives at most this early waits for its reservation in its process: publishing
#: it again would cost more than the wait.
EARLY_WAIT = 0.25


def rates_of(task: object) -> tuple[Rate, ...]:
    """The task's limits, parsed where it was defined (``OnceTask.__init_subclass__``); empty: not throttled."""
    rates: tuple[Rate, ...] = getattr(type(task), "_once_rates", ())
    return rates


def throttle_key(space: KeySpace, digest: str) -> str:
    """The log of a throttled call's key: in the hash slot of the key's other tagged keys."""
    return space.limited(digest, THROTTLE)


def check(task: TaskLike, settings: Settings, space: KeySpace, digest: str, request: TaskRequest,
          side: Optional[QueueSide]) -> None:
    """Return when this execution may start; else postpone it (``Ignore``) or reject it (``OnceTaskThrottled``).

    ``side``: the call's queue lock, released in the same round trip (None: it
    took none, or the pickup that follows releases it).
    """
    rates = rates_of(task)
    key = throttle_key(space, digest)
    conflict = throttle_conflict(getattr(task, "throttle_conflict", None))
    member = call_id(request.id, request.retries)
    reserved = header(request, THROTTLE_HEADER)
    reserved = str(reserved) if reserved is not None and not request.is_eager else ""
    starter = throttles.starter_of(INSTANCE if heartbeat_enabled() else "", os.getpid())
    # With a running lock, the lock decides whether a copy of an execution runs (``redelivery``).
    copies = "count" if task.running_lock else "ignore"
    # A copy that waited a lease on another copy's start (``_copy_of_a_start``); AFTER_HEADER is the running
    # lock's where the task has one.
    waited = str(header(request, AFTER_HEADER) or "") if copies == "ignore" and reserved else ""
    call = throttles.take(key, member, rates, conflict, starter, reserved, copies, gone=waited)
    queue = side.pickup() if side is not None else None
    # Where a running lock (or slot) is taken next, its pickup records the execution's span.
    recording = telemetry.active and not task.running_lock
    if recording:
        telemetry.picking_up(task, settings, request, THROTTLE_PICKUP, digest, 1 + (queue is not None))
    try:
        store = store_for(task, settings)
        if waited and not _starter_gone(store, throttles.instance_of(waited)):
            _let_go(task, request, key, waited, store, recording)
        replies, maybe_applied = store.runner.run([call] if queue is None else [queue, call])
        answered = time.monotonic()
        gate = throttles.gate_of(replies[-1])
        if gate.code == throttles.STARTED and maybe_applied and gate.started_by(starter):
            pass  # its own earlier try, whose reply was lost: it starts on it
        elif gate.code == throttles.STARTED:
            if not _starter_gone(store, gate.starter):
                _copy_of_a_start(task, settings, request, key, gate, store, recording)
            # Its worker died: the execution runs again, as a new start, claiming the old one.
            call = throttles.take(key, member, rates, conflict, starter, reserved, copies, gone=gate.start)
            (reply,), _ = store.runner.run([call])
            answered, gate = time.monotonic(), throttles.gate_of(reply)
            if gate.code == throttles.STARTED and not gate.started_by(starter):
                # Another copy claimed it first (its own claim, where a lost reply was sent again, starts).
                _copy_of_a_start(task, settings, request, key, gate, store, recording)
    except RedisError as exc:
        owner = RunningOwner.for_execution(request.id, request.retries, space.holder_task)
        store_down(task, settings, digest, request, None, owner, exc)
        return  # fail_open, or eager: it runs unthrottled, as store_down logged
    if gate.code in (throttles.STARTS, throttles.STARTED):  # STARTED here: its own earlier try, whose reply was lost
        if recording:
            telemetry.picked_up(task, request, store.client)
        return
    limits = ", ".join(map(str, rates))
    if gate.code == throttles.REJECTED:
        if recording:
            telemetry.executed(task, request, "rejected", policy="reject", client=store.client)
        _reject(task, request, key, limits, gate)
    if request.is_eager:
        _wait_here(task, request, store, key, call, gate)
        if recording:
            telemetry.picked_up(task, request, store.client)
        return
    # Where RabbitMQ's native delayed delivery carries the copy, its countdown is whole seconds: it is sent
    # up to a second early, not late -- a copy later than its reservation starts over at the end of the line,
    # and late again after every rounding up -- and waits out the fraction here.
    whole_seconds = delays.native_delayed_delivery(task.app)
    early_wait = EARLY_WAIT + (1.0 if whole_seconds else 0.0)
    if reserved == str(round(gate.at * 1000)) and gate.wait <= early_wait:
        # This copy's own reservation, a moment ahead (the broker's timer and the store's clock differ, or the
        # countdown was whole seconds): it waits here, then takes its start on the reservation in one more round
        # trip, so that another copy of the same message finds that start and is let go.
        time.sleep(max(0.0, gate.wait - (time.monotonic() - answered)))
        return check(task, settings, space, digest, request, None)
    if recording:
        telemetry.executed(task, request, "postponed", client=store.client)
    if side is not None and (maybe_applied or queue_reply(replies[0])[0]):
        _keep_queue_lock(task, settings, store, request, side, gate.wait)
    execution_throttled.send(sender=task, task_id=request.id, key=key, outcome="postponed", start_at=gate.at,
                             limits=limits)
    logger.info("%s[%s]: execution postponed: throttle %s of %s allows its start in %.3fs", task.name, request.id,
                limits, key, gate.wait)
    # Timed from the store's answer, so that the copy arrives on its reservation.
    countdown = max(0.0, gate.wait - (time.monotonic() - answered))
    if whole_seconds:
        countdown = float(math.floor(countdown))
    defer(task, request, {DIGEST_HEADER: digest, THROTTLE_HEADER: str(round(gate.at * 1000))}, countdown)
    raise Ignore()


def _starter_gone(store: LockStore, instance: str) -> bool:
    """Whether the worker that started a call is gone: only one that kept a heartbeat can be known gone."""
    return bool(instance) and not store.leases.instance_alive(instance)


def _copy_of_a_start(task: TaskLike, settings: Settings, request: TaskRequest, key: str, gate: throttles.Gate,
                     store: LockStore, recording: bool) -> NoReturn:
    """A copy of a postponed call that another copy started on its reservation, in a living worker.

    It never runs beside that start's execution. Its worker may have been
    killed, though, and its heartbeat still runs a lease on: the copy waits a
    lease (published again, ``AFTER_HEADER`` naming the start) and is let go
    then if that worker lives (``check``), or runs as a new start if it is
    gone. A pool process killed in its run is no such case: its worker's main
    process marks its start lost before the broker has the message again.
    """
    if header(request, AFTER_HEADER) == gate.start:
        _let_go(task, request, key, gate.start, store, recording)
    if recording:
        telemetry.executed(task, request, "postponed", holder=gate.start, client=store.client)
    countdown = Lease(settings.heartbeat_timeout).ttl
    logger.info("%s[%s]: execution waiting: a copy of this call started on its reservation of %s (worker %s); "
                "deferred by %.1fs", task.name, request.id, key, gate.starter or "unknown", countdown)
    defer(task, request, {AFTER_HEADER: gate.start}, countdown)
    raise Ignore()


def _let_go(task: TaskLike, request: TaskRequest, key: str, start: str, store: LockStore,
            recording: bool) -> NoReturn:
    """The copy's call started on its reservation in a worker that lives: it ran, or runs; this copy does not."""
    if recording:
        telemetry.executed(task, request, "finished_copy", client=store.client)
    logger.info("%s[%s]: execution ignored: a copy of this call started on its reservation of %s (worker %s)",
                task.name, request.id, key, throttles.instance_of(start) or "unknown")
    raise Ignore()


def _reject(task: TaskLike, request: TaskRequest, key: str, limits: str, gate: throttles.Gate) -> None:
    exc = OnceTaskThrottled(f"{task.name}[{request.id}]: rejected, throttle {limits} of {key} allows no start "
                            f"for {gate.wait:.3f}s")
    logger.warning("%s[%s]: execution rejected: throttle %s of %s allows no start for %.3fs", task.name, request.id,
                   limits, key, gate.wait)
    execution_throttled.send(sender=task, task_id=request.id, key=key, outcome="rejected", start_at=gate.at,
                             limits=limits)
    store_rejection(task, request, exc)
    raise exc


def _wait_here(task: TaskLike, request: TaskRequest, store: LockStore, key: str, call: Call,
               gate: throttles.Gate) -> None:
    """An eager execution waits in the calling process until its reservation, and starts on it."""
    logger.info("%s[%s]: execution waiting: throttle of %s allows its start in %.3fs", task.name, request.id, key,
                gate.wait)
    while gate.code != throttles.STARTS:
        time.sleep(gate.wait)
        (reply,), _ = store.runner.run([call])
        gate = throttles.gate_of(reply)


def _keep_queue_lock(task: TaskLike, settings: Settings, store: LockStore, request: TaskRequest, side: QueueSide,
                     wait: float) -> None:
    """Take back the queue lock the pickup released: a postponed call is still queued, its duplicates still drop."""
    try:
        taken = store.locks.acquire_queue(side.key, side.holder, settings.queue_lock_timeout + wait, renew=True)
    except RedisError as exc:
        logger.warning("%s[%s]: lock operation failed: could not keep queue lock %s of a postponed execution: %s",
                       task.name, request.id, side.key, exc)
        return
    if not taken.acquired:
        logger.info("%s[%s]: queue lock %s was taken by %s while this execution was postponed", task.name,
                    request.id, side.key, taken.holder)
