"""What an execution holds while its body runs, and the conflicts a running lock and a slot share.

An execution holds a ``Hold``: the running lock of its call (``running``) or
one of the N slots of a limited key (``limits``). Both answer the same
protocol -- try again, take over from a gone worker, release -- so that the
paths they share exist once, here:

* ``refuse``: a duplicate execution is rejected with ``OnceTaskLocked`` and
  its end recorded, so a copy of its message does not run it after all (and
  its call's queue-side keys end with it: ``windows.QueueSide``);
* ``wait_here``: an eager execution waits in the calling process;
* ``same_attempt``: another delivery of this very attempt holds the lock --
  the copy never runs beside it, and takes over only from a worker that is
  gone;
* ``recovered``: a lock taken by a copy the library deferred, whose earlier
  delivery never ended;
* ``finished_record``: what a release writes (see ``redelivery``).
"""

from __future__ import annotations

import logging
import time
from typing import NoReturn, Optional, Protocol

from celery.exceptions import Ignore

from . import telemetry
from .deferral import defer
from .events import DEFERRED_COPY, WORKER_GONE, lock_recovered
from .headers import AFTER_HEADER
from .ownership import Lease, RunningOwner, running_ttl
from .protocols import TaskLike, TaskRequest
from .redelivery import ended, guard_seconds
from .rejection import record_rejection, reject_duplicate
from .settings_table import Settings
from .store import FinishedCheck, FinishedRecord, LockStore
from .windows import FINISHED, QueueSide

logger = logging.getLogger("celery_once_task")


class Hold(Protocol):
    """A running lock or a slot an execution holds, released when its body ends."""

    @property
    def store(self) -> LockStore: ...
    @property
    def settings(self) -> Settings: ...
    #: The key it is held on (a running lock, or a limited key's slots).
    @property
    def key(self) -> str: ...
    #: The execution's owner token.
    @property
    def token(self) -> str: ...
    #: Where the execution records its end (None in eager mode: nothing can be delivered again).
    @property
    def finished(self) -> Optional[FinishedCheck]: ...
    #: What the execution does with its call's queue lock and replaced arguments (None: its call took no queue lock).
    @property
    def side(self) -> Optional[QueueSide]: ...
    #: The arguments a duplicate replaced the call's with, taken at pickup (``replace``); None: its own.
    @property
    def arguments(self) -> Optional[str]: ...

    def describe(self) -> str:
        """What it is, for log lines: ``running lock <key>`` or ``a slot of <key>``."""

    def retake(self, task: TaskLike, request: TaskRequest) -> bool:
        """Try once more to take it, in this execution's name; whether it is now held."""

    def take_over(self, task: TaskLike, request: TaskRequest, holder_token: str) -> bool:
        """Take it from ``holder_token``, another delivery of this attempt whose worker is gone."""

    def release(self, task: TaskLike, task_id: Optional[str], outcome: Optional[BaseException], reason: str) -> None:
        """Release it by its owner token (now, or by the janitor once the store answers), recording the end."""


def finished_record(task: TaskLike, hold: Hold, outcome: Optional[BaseException]) -> Optional[FinishedRecord]:
    """The record a release writes for a body that ended with ``outcome``; None where none is due."""
    if hold.finished is None:
        return None
    finished = ended(task, outcome, hold.settings.legacy_formats)
    if finished is None:
        return None
    return FinishedRecord(hold.finished.key, finished.value(), guard_seconds(task, hold.settings),
                          finished.attempt, finished.call)


def refuse(task: TaskLike, request: TaskRequest, hold: Hold, holder_value: str, why: str = "") -> NoReturn:
    """Reject a duplicate execution (``OnceTaskLocked``); its end is recorded, for its result is final."""
    if telemetry.active:
        telemetry.executed(task, request, "rejected", holder=holder_value, policy="reject", client=hold.store.client)
    exc = reject_duplicate(task, request, hold.key, holder_value, why)
    if hold.finished is not None:
        # A copy of its message must not run it after all; the call has ended.
        side = hold.side
        record_rejection(task, hold.settings, hold.store, hold.finished, request, hold.key,
                         side.ended(FINISHED) if side is not None else (),
                         side.later(hold.settings, task, request.id, FINISHED, "rejected") if side is not None else ())
    raise exc


def wait_here(task: TaskLike, request: TaskRequest, hold: Hold, holder_value: str) -> Hold:
    """An eager execution waits in the calling process, trying again with a growing pause."""
    logger.info("%s[%s]: execution waiting: %s is held by %s", task.name, request.id, hold.describe(), holder_value)
    pause = 0.05
    while True:
        time.sleep(pause)
        if hold.retake(task, request):
            return hold
        pause = min(pause * 2, 1.0)


def same_attempt(task: TaskLike, request: TaskRequest, hold: Hold, holder_value: str) -> Hold:
    """Another delivery of this attempt holds it: take over if its worker is gone, else come back later.

    The copy never runs beside the original: it runs only if the original's
    worker is gone (its heartbeat expired), and else is deferred by the
    holder's lease, to see then which it is. Raises ``Ignore`` when deferred.
    """
    holder = RunningOwner.parse(holder_value)
    gone = holder is not None and holder.heartbeat and not hold.store.leases.instance_alive(holder.instance)
    if gone and holder is not None and hold.take_over(task, request, holder.token):
        logger.warning("%s[%s]: lock recovered: took over %s from gone worker %s", task.name, request.id,
                       hold.describe(), holder.worker)
        if telemetry.active:
            telemetry.recovered(task, hold.key, WORKER_GONE, request)
        lock_recovered.send(sender=task, key=hold.key, holder=holder_value, reason=WORKER_GONE)
        return hold
    if telemetry.active:
        telemetry.executed(task, request, "postponed", holder=holder_value, client=hold.store.client)
    countdown = running_ttl(hold.settings, holder) if holder is not None else Lease(
        hold.settings.heartbeat_timeout).ttl
    logger.info("%s[%s]: execution waiting: another delivery of this task holds %s (holder %s); deferred by %.1fs",
                task.name, request.id, hold.describe(), holder_value, countdown)
    defer(task, request, {AFTER_HEADER: holder.token if holder is not None else holder_value}, countdown)
    raise Ignore()


def recovered(task: TaskLike, request: TaskRequest, hold: Hold, holder: str) -> None:
    """A deferred copy took the lock: the delivery it waited on, or its own earlier pickup, never ended."""
    logger.warning("%s[%s]: lock recovered: %s taken by a deferred copy", task.name, request.id, hold.describe())
    if telemetry.active:
        telemetry.recovered(task, hold.key, DEFERRED_COPY, request)
    lock_recovered.send(sender=task, key=hold.key, holder=holder, reason=DEFERRED_COPY)
