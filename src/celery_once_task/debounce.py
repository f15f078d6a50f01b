"""``debounce``: a burst of calls becomes one execution, after the burst, with the last call's arguments.

Calls of one key (as ``lock_args`` chooses it) less than ``debounce``
seconds apart form a *burst*. The burst is a hash in the lock store
(``KeySpace.limited(digest, "burst")``: its task id, when it began, its last
call, when it is due, how many calls it covers, and the last call's
arguments); ``lua.bursts`` owns its scripts.

* **A call** is one round trip (``BURST_CALL``). The first call of a burst
  makes it, under a new task id, and publishes one message, to run
  ``debounce`` seconds later. A later call joins it -- it moves the burst's
  due time to ``debounce`` after itself, never later than ``debounce_max``
  after the first call, and leaves its arguments as the burst's -- and
  publishes nothing. Every call of a burst returns the burst's
  ``AsyncResult``: they all reach the final state of the one execution.
* **The message**, when it arrives (``BURST_TAKE``): if the burst is due, it
  is closed -- a call made from now on starts a new burst -- and the
  execution runs with the burst's last arguments; if calls moved the due
  time on, the message is published again to arrive then (at most once
  per move: a burst publishes a bounded number of messages). The running
  lock, its conflict policy and ``running_limit`` apply to the execution as
  to any other.
* **Faults.** The closed burst's arguments are kept until its execution ends,
  so that a copy of its message delivered again (its worker died) runs with
  them; the finished record and the running lock keep it from running
  twice. The burst's message, and each one published again, is parked
  (``parking``): a worker that dies holding it leaves it to the rescuer.
  A burst whose message is overdue by two leases (its publisher died
  before publishing it, or the broker lost it) has it published again by
  the next call that joins it, at most once per two leases. A call that finds the lock
  store unreachable is refused (``LockStoreUnavailable``), or -- with
  ``fail_open`` -- published at once, undebounced.

Calls whose task id is fixed in advance (``apply_async(task_id=...)``,
canvas members, retries) and eager calls are not debounced: something waits
on that id, or on the call itself. The queue lock has no part in a
debounced call: the burst takes its place.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple, Optional

from celery.exceptions import Ignore
from celery.result import AsyncResult
from kombu.utils.json import dumps, loads
from redis.exceptions import RedisError

from . import delays, telemetry
from .deferral import defer
from .errors import LockStorePermissionError, LockStoreUnavailable
from .headers import BURST_HEADER, header
from .ids import new_task_id
from .janitor import Cleanup, janitor
from .keys import BURST, KeySpace, key_space
from .ownership import Lease
from .parking import Claim, publish_parked, settle
from .protocols import TaskLike, TaskRequest
from .settings_table import Settings
from .store import LockStore, store_for
from .store.connection import redact_url
from .store.lua.bursts import Called, Taken
from .store.operations import BURST_DUE, BURST_END, BURST_OUTCOMES, BURST_START
from .store.permissions import refusal

logger = logging.getLogger("celery_once_task")


class Burst(NamedTuple):
    """The burst an execution runs: its key, forgotten when the execution ends."""

    store: LockStore
    settings: Settings
    key: str
    task_id: str


def burst_key(space: KeySpace, digest: str) -> str:
    return space.limited(digest, BURST)


def debounced(settings: Settings, task_id: Optional[str], eager: bool) -> bool:
    """Whether a call is debounced: the task has a ``debounce``, and the call neither a fixed id nor eager."""
    return bool(settings.debounce) and task_id is None and not eager


def publish(task: TaskLike, settings: Settings, digest: str, args: Optional[Sequence[Any]],
            kwargs: Optional[Mapping[str, Any]], options: dict[str, Any],
            send: Callable[[Optional[str], dict[str, Any]], Optional[AsyncResult]],
            beside: Optional[Mapping[str, Any]] = None) -> Optional[AsyncResult]:
    """Join the key's open burst, or start one and publish its message; the burst's result.

    ``beside``: the publish options ``send`` passes beside ``options`` (``link``, ...), kept with the parked message.
    """
    key = burst_key(key_space(task, settings), digest)
    try:
        # ``[args, kwargs]`` without blanks: a burst is kept per debounced key, the smaller the better.
        arguments: str = dumps([list(args or ()), dict(kwargs or {})],  # type: ignore[no-untyped-call]
                               separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{task.name}: a debounced call's arguments must be JSON (kombu's): {exc}") from None
    # A message overdue by two leases is taken for lost (a duplicate of one that was merely late
    # runs once all the same: see ``take``).
    overdue = 2 * Lease(settings.heartbeat_timeout).ttl
    started = telemetry.started(settings) if telemetry.active else 0
    try:
        store = store_for(task, settings)
        code, burst_id, due_ms = store.bursts.call(
            key, new_task_id(), debounce=settings.debounce or 0, most=settings.debounce_max, arguments=arguments,
            keep=settings.queue_lock_timeout + Lease(settings.heartbeat_timeout).ttl, overdue=overdue)
    except RedisError as exc:
        if telemetry.active:
            telemetry.called(task, settings, None, BURST_START, key, "", started, "store_unavailable",
                             policy="fail_open" if settings.fail_open else None, error=exc)
        denied = refusal(exc)
        if denied is not None:  # an ACL refusal is no outage: fail_open does not publish past it
            raise LockStorePermissionError(
                f"{task.name}: the lock store {redact_url(settings.redis_url)} refused a command, so the call was "
                f"not published (burst {key}): permission denied: the ACL user lacks {denied}: {exc}", denied,
            ) from exc
        if settings.fail_open:
            logger.warning("%s: lock operation failed: the lock store is unreachable; published at once, not "
                           "debounced (burst %s): %s", task.name, key, exc)
            return send(None, options)
        raise LockStoreUnavailable(
            f"{task.name}: the lock store {redact_url(settings.redis_url)} is unreachable, so the call was not "
            f"published (burst {key}): {exc}"
        ) from exc
    if telemetry.active:
        telemetry.called(task, settings, store.client, BURST_START, key, burst_id, started, BURST_OUTCOMES[code])
    if code is Called.JOINED:
        logger.info("%s[%s]: call joined burst %s; due in %.3fs", task.name, burst_id, key, due_ms / 1000)
        return task.AsyncResult(burst_id)
    headers = {**(options.get("headers") or {}), BURST_HEADER: "1"}
    message_options = {**options, "headers": headers, "countdown": delays.countdown(task.app, due_ms / 1000)}
    message_options.pop("eta", None)
    if code is Called.OVERDUE:
        logger.warning("%s[%s]: burst %s is overdue and its message was not seen: published again",
                       task.name, burst_id, key)
    try:
        # Parked: a worker that dies holding it does not keep the burst from running (``parking``).
        result = publish_parked(task, settings, burst_id, args, kwargs, message_options,
                                lambda: send(burst_id, message_options), beside)
    except BaseException:
        if code is Called.STARTED:
            # No message behind the burst: the next call starts a new one.
            try:
                if not store.bursts.forget(key, burst_id, "open"):
                    logger.error("%s[%s]: burst %s kept for the calls that joined it: its message could not be "
                                 "published; the next call made %.1fs after it was due publishes it again",
                                 task.name, burst_id, key, overdue)
            except RedisError as exc:
                logger.warning("%s[%s]: lock operation failed: burst %s not forgotten after its message could "
                               "not be published: %s", task.name, burst_id, key, exc)
        raise
    if code is Called.STARTED:
        logger.info("%s[%s]: burst %s started; due in %.3fs", task.name, burst_id, key, due_ms / 1000)
    return result


def is_burst(request: TaskRequest) -> bool:
    """Whether a message is a burst's."""
    return bool(header(request, BURST_HEADER))


def take(task: TaskLike, settings: Settings, digest: str, request: TaskRequest, args: tuple[Any, ...],
         kwargs: dict[str, Any],
         claim: Optional[Claim] = None) -> tuple[Optional[Burst], tuple[Any, ...], dict[str, Any]]:
    """Close the burst this message runs, if it is due; the burst, and the arguments to run with.

    Not due (later calls moved it on): the message is published again to
    arrive when it is, and this delivery ends (``Ignore``). ``claim``: the
    copy's claim of its parked entry, in the same round trip (``parking``);
    a copy another one superseded ends there (``Ignore``) -- the burst it may
    have closed is the other copy's to run.
    """
    if not is_burst(request):
        return None, args, kwargs
    key = burst_key(key_space(task, settings), digest)
    keep = settings.queue_lock_timeout + Lease(settings.heartbeat_timeout).ttl
    if telemetry.active:
        telemetry.picking_up(task, settings, request, BURST_DUE, digest)
    try:
        store = store_for(task, settings)
        taken = store.bursts.take(key, request.id, keep, claim.call if claim is not None else None)
    except RedisError as exc:
        if telemetry.active:
            telemetry.executed(task, request, "store_unavailable", error=exc)
        # Neither run with arguments that may be stale nor drop it: look again in a moment.
        logger.warning("%s[%s]: lock operation failed: burst %s unreachable; deferred by %.1fs: %s",
                       task.name, request.id, key, Lease(settings.heartbeat_timeout).interval, exc)
        defer(task, request, {}, Lease(settings.heartbeat_timeout).interval)
        raise Ignore() from None
    if claim is not None:
        settle(task, request, claim, taken.also)
    if taken.code is Taken.NOT_DUE:
        if telemetry.active:
            telemetry.executed(task, request, "postponed", client=store.client)
        seconds = taken.due_ms / 1000
        logger.info("%s[%s]: execution waiting: burst %s was extended; due in %.3fs", task.name, request.id, key,
                    seconds)
        defer(task, request, {}, seconds)
        raise Ignore()
    if telemetry.active:  # the execution's pickup follows, and counts it
        telemetry.step(request, "acquired", client=store.client)
    if taken.code is Taken.NONE:
        # No such burst: the lock store lost it, or its execution ended (a copy of its message, which the
        # finished record turns away). It runs with the message's own arguments.
        logger.info("%s[%s]: burst %s not found: runs with its message's arguments", task.name, request.id, key)
        return Burst(store, settings, key, request.id), args, kwargs
    data: Any = loads(taken.arguments)  # type: ignore[no-untyped-call]
    if isinstance(data, list):
        data = {"args": data[0], "kwargs": data[1]}
    # Else a burst 2.0.0 wrote: ``{"args": [...], "kwargs": {...}}``.
    logger.info("%s[%s]: burst %s runs with its last call's arguments", task.name, request.id, key)
    return Burst(store, settings, key, request.id), tuple(data.get("args") or ()), dict(data.get("kwargs") or {})


def done(task: TaskLike, burst: Burst) -> None:
    """The burst's execution ended: forget the arguments it ran with (the janitor does, if the store is away)."""
    started = telemetry.started(burst.settings) if telemetry.active else 0
    try:
        burst.store.bursts.forget(burst.key, burst.task_id, "closed", remember(burst.settings))
    except RedisError as exc:
        if telemetry.active:
            telemetry.round_trip(task, burst.settings, burst.store.client, BURST_END, burst.key, started,
                                 "store_unavailable", error=exc)
        logger.warning("%s[%s]: lock operation failed: burst %s not cleared; left to the janitor: %s", task.name,
                       burst.task_id, burst.key, exc)
        janitor.add(ended(task, burst.settings, burst.key, burst.task_id, "task ended"))
        return
    if telemetry.active:
        telemetry.round_trip(task, burst.settings, burst.store.client, BURST_END, burst.key, started, "released")


def ended(task: TaskLike, settings: Settings, key: str, task_id: str, reason: str,
          pid: Optional[int] = None) -> Cleanup:
    """The janitor's delete of the arguments an execution ran with, for when it cannot forget them itself."""
    return Cleanup(settings.redis_url, key, task_id, False, task, task_id, reason, pid, options=settings.redis_options,
                   burst=True)


def remember(settings: Settings) -> float:
    """How long an ended burst's last call is recognised if sent again: one lease (its retries are over by then)."""
    return Lease(settings.heartbeat_timeout).ttl
