"""A message that comes back after its execution finished: the finished record, and what the copy gets.

Brokers deliver at least once. RabbitMQ hands a consumer's unacknowledged
messages out again the moment its connection closes (a network blip, a node
restart) while the executions that had them may still run or have just
finished; Redis hands one out again after its ``visibility_timeout``; every
broker redelivers the messages of a worker that died before it
acknowledged them (``acks_late``). The copy carries the same task id and the
same attempt (``retries``).

So an execution that held the running lock records its end when it
releases it, in the same round trip and the same script: the *finished
record* ``once_task_done:{<tag>}<id>`` (``record_keys.finished_key``: a tag of the
running key's Redis Cluster slot, and 60 bits of a digest of the running key,
the task id and the call), kept for ``redelivery_guard_timeout`` seconds (by
default what the app's broker needs, ``brokers``). One is kept for every
finished execution, so it holds only what a copy needs to decide, as one
integer (which Redis stores inside its value object: about 90 bytes a record
on Redis 7)::

    <flag><instance><attempt>

* the flag: ``1`` no result follows (the body ended with ``Ignore``,
  ``Reject`` or a retry, or the task ignores results); ``2`` a result is being
  stored, and the worker instance that wrote it keeps a heartbeat; ``3`` a
  result is being stored by a worker without a heartbeat (without the boot
  step): its copy waits a lease from the record's end, which the record's
  remaining TTL tells;
* the worker instance (``ownership.INSTANCE``, 15 digits; zeros with flag 3);
* the attempt that ended (a later attempt's record is never replaced by an
  earlier one's).

The call -- which publish of the task id it was (the ``once_task_call``
header, given to calls whose task id the caller fixed, so that a new call
made with the same id is not taken for a copy of the old one) -- is in the
key's digest.

Pre-release builds of 2.0 wrote ``once_task_done:{<running key>}:<task id>``
(``record_keys.legacy_finished_key``), valued
``<attempt>:<call>:<instance>:<pid>:<r|n>:<time>``: a pickup reads that key
too, so a rolling deploy lets no copy through, and ``legacy_formats`` writes it
while processes of such a release still run.

The pickup reads the record in the script that takes the running lock: a
copy of a finished attempt is never given the lock, and costs nothing more
than the pickup it replaces. What the copy then gets (``verdict``):

* ignored (acknowledged, nothing run, its result left as the first
  execution stored it) -- if a later attempt ended, if no result is kept, or
  if the result is stored;
* put off for a moment -- if a result is due and not stored yet, and the
  worker that wrote the record lives: it is storing it (a result backend
  that stalls, or under gevent a task that computes in the greenlet next to
  it, can make that take seconds);
* run again -- if a result is due and the worker that wrote the record is
  gone (its heartbeat expired; without a heartbeat, once a lease has passed):
  only a run can give the call its result.

A prefork pool process that dies after its release and before its result
(the worker's main process sees ``WorkerLostError``) leaves its record
deleted by the main process, unless a result was stored: its copy runs.
An execution that did not end -- its process killed in the body, the worker
shut down cold -- records nothing, and its copy runs: at least once.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional, TypeVar

from celery import states
from celery.backends.base import DisabledBackend
from celery.exceptions import Ignore, Reject, Retry

from . import brokers, telemetry
from .deferral import defer
from .events import RESULT_LOST, lock_recovered
from .headers import CALL_HEADER, header
from .ownership import INSTANCE, Lease, heartbeat_enabled
from .protocols import TaskLike, TaskRequest
from .record_keys import finished_key, legacy_finished_key
from .settings_table import Settings
from .store import LockStore
from .store.finished import FinishedCheck

logger = logging.getLogger("celery_once_task")

_T = TypeVar("_T")

#: The ``call`` of messages without ``CALL_HEADER``.
NO_CALL = "-"


def new_call() -> str:
    return os.urandom(8).hex()


#: A record's flag: no result follows; one follows, from a worker with a heartbeat; one follows, from one without.
NO_RESULT, ASK_HEARTBEAT, WAIT_LEASE = "1", "2", "3"
#: The instance a record of a worker without a heartbeat names.
NO_INSTANCE = "0" * len(INSTANCE)


class Finished(NamedTuple):
    """A finished record: which attempt ended, who wrote it, whether a result follows, when."""

    attempt: int
    call: str
    #: The worker instance that ran it (``ownership.INSTANCE``); ``-`` where it keeps no heartbeat.
    instance: str
    #: The process that wrote it (0 where the record does not say: the compact form).
    pid: int
    stores_result: bool
    at: float
    #: The form pre-release builds of 2.0 write (see the module).
    legacy: bool = False

    def writer(self) -> str:
        """The start of the value that names the attempt and the process that wrote it (the legacy form)."""
        return writer_prefix(self.attempt, self.call, self.instance, self.pid)

    def value(self) -> str:
        if self.legacy:
            return f"{self.writer()}{'r' if self.stores_result else 'n'}:{self.at:.3f}"
        return compact_value(self.attempt, self.instance, self.stores_result)

    @classmethod
    def parse(cls, value: str | bytes, guard: float = 0.0) -> Optional[Finished]:
        """A record as a pickup reads it, either form; None if it is neither.

        The compact form comes from the scripts with its remaining TTL in
        milliseconds after a space: its end was ``guard`` seconds (the time it
        was kept for) before it expires.
        """
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        try:
            if ":" in text:
                done, call, instance, pid, kind, at = text.split(":", 5)
                return cls(int(done), call, instance, int(pid), kind == "r", float(at), legacy=True)
            digits, _, left = text.partition(" ")
            flag, instance, attempt = digits[0], digits[1:1 + len(INSTANCE)], int(digits[1 + len(INSTANCE):])
            if flag not in (NO_RESULT, ASK_HEARTBEAT, WAIT_LEASE):
                return None
            remaining = int(left) / 1000 if left.lstrip("-").isdigit() and int(left) > 0 else guard
            return cls(attempt, "", "-" if flag == WAIT_LEASE else instance, 0, flag != NO_RESULT,
                       time.time() - max(0.0, guard - remaining))
        except (ValueError, IndexError):
            return None


def compact_value(attempt: int, instance: str, stores_result: bool) -> str:
    """A record's value in the compact form: ``<flag><instance><attempt>`` (see the module)."""
    if not stores_result:
        return f"{NO_RESULT}{instance if instance != '-' else NO_INSTANCE}{attempt}"
    if instance == "-":
        return f"{WAIT_LEASE}{NO_INSTANCE}{attempt}"
    return f"{ASK_HEARTBEAT}{instance}{attempt}"


def writer_prefix(attempt: int, call: str, instance: str, pid: int) -> str:
    return f"{attempt}:{call}:{instance}:{pid}:"


def ended(task: TaskLike, outcome: Optional[BaseException], legacy: bool = False) -> Optional[Finished]:
    """The record of a body that ended with ``outcome`` (None: it returned); None if it did not finish.

    A body interrupted by a ``BaseException`` that is not an ``Exception``
    (the worker shutting down cold, a greenlet killed) did not finish: its
    copy must run. ``Reject(requeue=True)`` asks for the message to run
    again: no record either. ``legacy``: the record in the form of pre-release builds of 2.0.
    """
    if outcome is not None and not isinstance(outcome, Exception):
        return None
    if isinstance(outcome, Reject) and outcome.requeue:
        return None
    no_result = isinstance(outcome, (Ignore, Reject, Retry)) or not stores_results(task)
    return Finished(int(task.request.retries or 0), call_of(task.request), writer_instance(), os.getpid(),
                    not no_result, time.time(), legacy)


def finished_check(running_key: str, request: TaskRequest, attempt: int, settings: Settings) -> FinishedCheck:
    """What a pickup of ``running_key`` reads to tell a copy: the record's key in both forms, the written one first."""
    call = call_of(request)
    compact = finished_key(running_key, request.id, call, settings.key_prefix)
    old = legacy_finished_key(running_key, request.id, settings.key_prefix)
    if settings.legacy_formats:
        return FinishedCheck(old, attempt, call, compact)
    return FinishedCheck(compact, attempt, call, old)


def writer_instance() -> str:
    """This worker instance, as a record names it: ``-`` where it keeps no heartbeat to tell its death by."""
    return INSTANCE if heartbeat_enabled() else "-"


def call_of(request: TaskRequest) -> str:
    """The call a request's message is (``NO_CALL`` without the header)."""
    return call_of_headers({CALL_HEADER: header(request, CALL_HEADER)})


def call_of_headers(headers: Optional[Mapping[str, Any]]) -> str:
    call = headers.get(CALL_HEADER) if headers else None
    return call if isinstance(call, str) and call else NO_CALL


def result_stored(task: TaskLike, task_id: str) -> bool:
    """Whether the result backend holds a final state for ``task_id`` (False where it cannot tell)."""
    if not stores_results(task):
        return False
    try:
        return bool(task.AsyncResult(task_id).state in states.READY_STATES)
    except Exception:
        return False


def stores_results(task: TaskLike) -> bool:
    return not task.ignore_result and not isinstance(task.backend, DisabledBackend)


def guard_seconds(task: TaskLike, settings: Settings) -> float:
    """How long a finished record is kept: the setting, else what the app's broker needs (``brokers``).

    A setting the broker refuses (shorter than its visibility timeout) is logged, and the visibility timeout
    kept instead: lock operations never raise into Celery's hooks (a worker refuses it at start).
    """
    conf = task.app.conf
    try:
        return brokers.guard_seconds(conf, settings.redelivery_guard_timeout)
    except ValueError as exc:
        logger.error("%s: %s", task.name, exc)
        return max(float(settings.redelivery_guard_timeout or 0), brokers.visibility_timeout(conf) or 0.0)


class Verdict(enum.Enum):
    IGNORE = "ignore"
    DEFER = "defer"
    RUN = "run"


#: How long a copy waits before it looks again at a result that is being stored.
LOOK_AGAIN = 2.0


def verdict(task: TaskLike, request: TaskRequest, finished: Finished, settings: Settings,
            alive: Callable[[str], bool]) -> tuple[Verdict, float]:
    """What a copy of a finished attempt gets, and for ``DEFER`` how many seconds from now it looks again.

    ``alive(instance)``: whether a worker instance's heartbeat lives.
    """
    if finished.attempt > (request.retries or 0) or not finished.stores_result or not stores_results(task):
        return Verdict.IGNORE, 0.0
    try:
        state = task.AsyncResult(request.id).state
    except Exception:
        return Verdict.DEFER, LOOK_AGAIN  # the result backend cannot tell now
    if state in states.READY_STATES:
        return Verdict.IGNORE, 0.0
    if finished.instance != "-":
        return (Verdict.DEFER, LOOK_AGAIN) if alive(finished.instance) else (Verdict.RUN, 0.0)
    grace = Lease(settings.heartbeat_timeout).ttl - (time.time() - finished.at)
    return (Verdict.DEFER, max(0.5, min(LOOK_AGAIN, grace))) if grace > 0 else (Verdict.RUN, 0.0)


def copy_of_finished(task: TaskLike, settings: Settings, request: TaskRequest, store: LockStore,
                     running_key: Optional[str], value: str, again: Callable[[], _T]) -> _T:
    """A copy of an attempt that ended: ignored, put off (both raise ``Ignore``), or -- its result lost with its
    process -- picked up after all: what ``again()`` returns.
    """
    record = Finished.parse(value, guard_seconds(task, settings))
    outcome, seconds = verdict(task, request, record, settings, store.leases.instance_alive) if record else (
        Verdict.IGNORE, 0.0)
    if telemetry.active:
        if outcome is Verdict.RUN:
            telemetry.recovered(task, running_key or "", RESULT_LOST, request)
        else:
            telemetry.executed(task, request, "finished_copy" if outcome is Verdict.IGNORE else "postponed",
                               client=store.client)
    if outcome is Verdict.IGNORE:
        logger.info(
            "%s[%s]: execution ignored: this attempt already ran (a copy of its message delivered again; "
            "finished record %s)", task.name, request.id, value,
        )
        raise Ignore()
    if outcome is Verdict.DEFER:
        logger.info(
            "%s[%s]: execution waiting: this attempt ended a moment ago and its result is not stored yet; "
            "deferred by %.1fs", task.name, request.id, seconds,
        )
        defer(task, request, {}, seconds)
        raise Ignore()
    logger.warning(
        "%s[%s]: lock recovered: this attempt ended but its result was never stored (its worker is gone): "
        "it runs again (lock %s)", task.name, request.id, running_key,
    )
    if running_key is not None:
        lock_recovered.send(sender=task, key=running_key, holder=value, reason=RESULT_LOST)
    return again()
