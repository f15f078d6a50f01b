"""Executing a task: pickup, the hold around the body, and its release at the end.

Celery's tracer calls the task object (``OnceTask.__call__``) after
``task_prerun`` and before it stores the result or sends the next step of a
chain. There the worker, in one round trip, releases the queue lock (if this
message holds it) -- or keeps it until the run ends, and takes the arguments
a duplicate replaced: the call's ``windows.QueueSide`` -- and takes what the
execution holds while its body runs (``holds.Hold``): the running lock of its
call (``running``), or a slot of a limited key (``limits``). It runs the
body, and releases the hold, and what its call keeps, in a ``finally`` and one
round trip -- before the result is visible, so a caller that saw the result
can call again at once.

A copy of an attempt that already ended (a broker's redelivery) never runs
again: the execution's release records its end, the pickup's script reads
that record and takes nothing, and ``redelivery`` says what the copy gets.

Unknown outcomes: a pickup whose every try failed is published again, same
id and attempt, to run once the store answers, carrying its owner token: the
copy may take over the lock that a lost reply may have taken in its name,
and the janitor deletes that lock by token as soon as the store answers.
"""

from __future__ import annotations

from typing import Optional

from . import limits, rescue, running, telemetry, throttle, windows
from .headers import AFTER_HEADER, TAKEOVER_HEADER, WAITER_HEADER, header
from .holds import Hold
from .keys import key_space
from .ownership import running_ttl
from .parking import Claim
from .protocols import TaskLike, TaskRequest
from .settings_table import Settings
from .store.operations import QUEUE_RELEASE, RUNNING_PICKUP, SLOT_PICKUP


def pick_up(task: TaskLike, settings: Settings, digest: str, request: TaskRequest,
            queue_lock: bool, claim: Optional[Claim] = None) -> Optional[Hold]:
    """Release (or keep) the queue lock and take the running lock (or a slot); return what to release at the end.

    ``queue_lock``: whether the call took a queue lock (a call may have taken none: ``once={...}``).
    ``claim``: a parked copy's claim of its entry (``parking``): it rides in the running lock's pickup;
    before a slot's, a throttle's start, or arguments a duplicate replaced, it is made alone -- what they take
    could not be given back to the copy that runs instead.
    """
    # A throttle's start cannot be given back either, and its log forgets a start after the period: the claim,
    # remembered for as long as the broker may hand out a copy, is what keeps a rescued copy from running again.
    if claim is not None and (settings.queue_lock_conflict == "replace" or throttle.rates_of(task) or (
            task.running_lock and limits.limited(task, settings))):
        rescue.claim(task, settings, request, claim)
        claim = None
    space = key_space(task, settings)
    # Eager calls never took a queue lock, and are never delivered again.
    side = None if request.is_eager else windows.queue_side(task, settings, space, digest, request.id, queue_lock,
                                                              running_ttl(settings))
    if throttle.rates_of(task):
        if not task.running_lock:
            # One round trip: the queue lock's release and the throttle's check (``throttle``).
            throttle.check(task, settings, space, digest, request, side)
            return None
        throttle.check(task, settings, space, digest, request, None)
    takeover = header(request, TAKEOVER_HEADER)
    takeover = takeover if isinstance(takeover, str) else ""
    after = header(request, AFTER_HEADER) or ""
    if task.running_lock and limits.limited(task, settings):
        if telemetry.active:
            telemetry.picking_up(task, settings, request, SLOT_PICKUP, digest, 1 + (side is not None))
        held: Optional[Hold] = limits.pick_up(task, settings, space, digest, request, side, takeover, after)
    else:
        waiter = bool(header(request, WAITER_HEADER)) and side is not None
        if telemetry.active and (task.running_lock or side is not None):
            telemetry.picking_up(task, settings, request, RUNNING_PICKUP if task.running_lock else QUEUE_RELEASE,
                                 digest, task.running_lock + (side is not None) + waiter + (claim is not None))
        held = running.pick_up(task, settings, space, digest, request, side, takeover, waiter, after, claim)
    if telemetry.active:
        telemetry.picked_up(task, request, held.store.client if held is not None else None)
    return held


def release(task: TaskLike, held: Hold, task_id: Optional[str], outcome: Optional[BaseException] = None,
            reason: str = "task ended") -> None:
    """Release what the execution held, by its owner token, now or as soon as the store answers.

    ``outcome``: how the body ended (None: it returned). Where it finished,
    the release records its end in the same script (see ``redelivery``).
    """
    held.release(task, task_id, outcome, reason)
