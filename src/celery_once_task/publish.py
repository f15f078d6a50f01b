"""Publishing a call: its lock key, the queue lock, and what a duplicate call gets.

One round trip on every path: a ``SET NX PX GET`` that returns the holder's
task id when the lock is taken, so that a duplicate learns who holds it
without asking again -- or, for a call with a ``unique_for`` window or whose
duplicates replace its arguments, one script over those keys too
(``windows``). Taken: the message is published with the call's digest in a
header, for the worker. Not taken: the call is a duplicate, and gets what
``queue_lock_conflict`` says.

No lock is left without a message behind it:

* publishing fails after the lock was taken: the lock is released (by the
  janitor, if the store is away at that moment), and the error propagates;
* the store fails on every try (Celery's publish retry policy): the call is
  refused with ``LockStoreUnavailable``; if a try may have reached the server
  (its reply was lost), the lock it may have taken is deleted by owner token
  as soon as the store answers. A lost reply followed by a successful try is
  recognised by the task id the lock holds: the call's own.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

import celery
from celery.app.task import Context
from celery.result import AsyncResult
from redis.exceptions import RedisError

from . import replace, telemetry, windows
from .errors import LockStorePermissionError, LockStoreUnavailable, OnceTaskDuplicate, OnceTaskLocked
from .events import duplicate_call
from .headers import CALL_HEADER, CALLED_HEADER, DIGEST_HEADER
from .ids import holder_id, new_task_id
from .internals import called_by_beat
from .janitor import Cleanup, janitor, release_or_leave
from .keys import QUEUE, key_space
from .protocols import Signature, TaskLike, TaskRequest
from .redelivery import new_call
from .settings_table import Settings
from .store import Acquired, store_for
from .store.connection import redact_url
from .store.operations import QUEUE_ACQUIRE, QUEUE_RENEW, WINDOW_ACQUIRE
from .store.permissions import refusal, what_failed
from .telemetry import Operation

logger = logging.getLogger("celery_once_task")

#: Celery beat before 5.3.4 reads ``.id`` of what apply_async returns, and stops on None.
_BEAT_NEEDS_A_RESULT = tuple(celery.VERSION[:3]) < (5, 3, 4)

#: Canvas options: a member published with them has a result id someone waits on.
_CANVAS_OPTIONS = ("chain", "group_id", "chord")

#: Celery's own publish of the call, under a task id: its ``AsyncResult``.
Publish = Callable[[Optional[str]], Optional[AsyncResult]]
#: A call's callbacks or errbacks, as Celery takes them: a signature, or a list of them.
Links = Union[Signature, Sequence[Signature], None]


def current_request(task: TaskLike) -> Optional[TaskRequest]:
    """The request the task is executing, or None.

    Not ``task.request``: Celery binds a task class (``__bound__``) before it
    gives it a request stack, so threads making their first call at once can
    meet a bound task without one.
    """
    stack = getattr(task, "request_stack", None)
    return stack.top if stack is not None else None


def publish_once(
    task: TaskLike,
    settings: Settings,
    digest: str,
    queue_lock: bool,
    args: Optional[Sequence[Any]],
    kwargs: Optional[Mapping[str, Any]],
    task_id: Optional[str],
    link: Links,
    link_error: Links,
    options: dict[str, Any],
    publish: Publish,
) -> Optional[AsyncResult]:
    """Publish the call under its queue lock (and window); what a duplicate gets otherwise.

    ``queue_lock``: whether the call takes the queue lock (with ``queue_lock=False`` a call reaches here
    for its ``unique_for`` window alone).
    """
    space = key_space(task, settings)
    key = space.lock(digest, QUEUE)
    fixed_id = task_id is not None
    task_id = task_id or new_task_id()
    # Celery's retry publishes the same task id from inside the execution: a
    # call without a fixed id is never a retry, and need not look.
    request = current_request(task) if fixed_id else None
    retry = request is not None and not request.called_directly and request.id == task_id
    if retry and not queue_lock:
        return publish(task_id)  # a window is its call's, opened once
    holder = space.holder(task_id)
    ttl: float = settings.queue_lock_timeout
    if "countdown" in options or "eta" in options:
        ttl += seconds_until_start(options)
    # A retry renews its queue lock alone: its window and its arguments are its call's.
    call = None if retry else windows.acquisition(task, settings, space, digest, task_id, ttl, queue_lock,
                                                   replace.replaces(task, settings, queue_lock), args, kwargs)
    started = telemetry.started(settings) if telemetry.active else 0
    try:
        # Inside the try: a Redis Cluster client connects when it is made.
        store = store_for(task, settings)
        # A retry is never dropped; it takes the queue lock, or renews its own,
        # so that new calls are de-duplicated against it while it waits.
        outcome = (windows.acquire(store, call) if call is not None
                   else store.locks.acquire_queue(key, holder, ttl, renew=retry))
    except RedisError as exc:
        return _store_down(task, settings, key, task_id, holder, retry, exc, publish, call, started)

    if not outcome.acquired:
        if retry:
            if telemetry.active:  # published all the same: not a duplicate
                telemetry.called(task, settings, store.client, _operation(retry, call), key, task_id, started,
                                 "published",
                                 holder=outcome.holder)
            logger.info("%s[%s]: retry published; queue lock %s is held by %s", task.name, task_id, key, outcome.holder)
            return publish(task_id)
        met = call.key_met(outcome) if call is not None else key
        return _duplicate(task, settings, met, task_id, fixed_id, outcome, args, kwargs, link, link_error, options,
                          store.client, started, _operation(retry, call))

    if telemetry.active:
        telemetry.called(task, settings, store.client, _operation(retry, call), key, task_id, started,
                         "acquired")
    try:
        return publish(task_id)
    except BaseException as exc:
        # No message behind the lock: let the next call through. A duplicate
        # dropped against it meanwhile is lost with it (said in the log).
        logger.warning("%s[%s]: publish failed; queue lock %s released: %s: %s", task.name, task_id, key,
                       type(exc).__name__, exc)
        if call is not None:
            windows.give_back(store, settings, task, call)
        else:
            release_or_leave(store, settings, task, task_id, key, holder, "publish failed")
        raise


def _store_down(
    task: TaskLike, settings: Settings, key: str, task_id: str, holder: str, retry: bool, exc: RedisError,
    publish: Publish, call: Optional[windows.Acquisition], started: int,
) -> Optional[AsyncResult]:
    if telemetry.active:
        telemetry.called(task, settings, None, _operation(retry, call), key, task_id, started,
                         "store_unavailable", policy="fail_open" if settings.fail_open or retry else None, error=exc)
    # An ACL refusal is no outage: fail_open does not publish past it (a retry's message is never lost).
    denied = refusal(exc)
    if (settings.fail_open and denied is None) or retry:
        # Published under this task id: if a lost reply did take the lock, a
        # message is behind it, and the worker releases it at pickup.
        logger.warning(
            "%s[%s]: lock operation failed: %s; publishing without queue lock %s: %s",
            task.name, task_id, what_failed(exc), key, exc,
        )
        return publish(task_id)
    if getattr(exc, "maybe_applied", True):
        for cleanup in (windows.lost(settings, task, call) if call is not None else [
                Cleanup(settings.redis_url, key, holder, False, task, task_id, "call refused", uncertain=True,
                        options=settings.redis_options)]):
            janitor.add(cleanup)
    logger.warning(
        "%s[%s]: lock operation failed: call refused, %s (queue lock %s): %s",
        task.name, task_id, what_failed(exc), key, exc,
    )
    if denied is not None:
        raise LockStorePermissionError(
            f"{task.name}: the lock store {redact_url(settings.redis_url)} refused a command, so the call was not "
            f"published (queue lock {key}): permission denied: the ACL user lacks {denied}: {exc}", denied,
        ) from exc
    raise LockStoreUnavailable(
        f"{task.name}: the lock store {redact_url(settings.redis_url)} is unreachable, so the call was not "
        f"published (queue lock {key}): {exc}"
    ) from exc


def _operation(retry: bool, call: Optional[windows.Acquisition]) -> Operation:
    """How telemetry names the call's round trip: a retry's renewal, a window's script, or ``SET ... NX GET``."""
    if retry:
        return QUEUE_RENEW
    return WINDOW_ACQUIRE if call is not None else QUEUE_ACQUIRE


def _duplicate(
    task: TaskLike,
    settings: Settings,
    key: str,
    task_id: str,
    fixed_id: bool,
    outcome: Acquired,
    args: Optional[Sequence[Any]],
    kwargs: Optional[Mapping[str, Any]],
    link: Links,
    link_error: Links,
    options: Mapping[str, Any],
    client: object,
    started: int,
    operation: Operation,
) -> Optional[AsyncResult]:
    holder = holder_id(outcome.holder or "")
    # A fixed id (a canvas member, apply_async(task_id=...)) keeps the
    # behaviour below whatever the policy: something waits on that id.
    policy = "drop" if fixed_id else settings.queue_lock_conflict
    if policy == "replace" and not outcome.replaced:
        policy = "existing"  # the holder runs, or holds a window alone: it has no arguments to replace
    # Which window the call met: its queue lock's, or a unique_for window.
    window = "unique_for" if outcome.window else settings.queue_lock_until
    if telemetry.active:
        telemetry.called(task, settings, client, operation, key, task_id, started, "duplicate", holder=holder,
                         policy=policy)
    duplicate_call.send(sender=task, key=key, holder_id=holder, policy=policy, window=window)
    if policy == "replace":
        logger.info("%s[%s]: duplicate call replaced the arguments of queued task %s (lock %s)", task.name, task_id,
                    holder, key)
        return task.AsyncResult(holder)
    if policy == "existing":
        logger.info(
            "%s[%s]: duplicate call returned existing: queue lock %s is held by %s", task.name, task_id, key, holder
        )
        return task.AsyncResult(holder)
    if policy == "raise":
        logger.info("%s[%s]: duplicate call raised: queue lock %s is held by %s", task.name, task_id, key, holder)
        raise OnceTaskDuplicate(task.name, holder, key)
    logger.info("%s[%s]: duplicate call dropped: queue lock %s is held by %s", task.name, task_id, key, holder)
    beat = _BEAT_NEEDS_A_RESULT and not fixed_id and _called_by_beat()
    if beat:
        # Old beat would stop on None: it gets the queued call's result.
        return task.AsyncResult(holder or task_id)
    if not fixed_id or holder == task_id:  # no id to answer for, or the same message published again
        return None
    # The caller fixed the id in advance (a canvas member, or
    # apply_async(task_id=...)): something may wait on that id, so it gets a
    # terminal state instead of staying PENDING for ever.
    exc = OnceTaskLocked(f"{task.name}[{task_id}]: not published, a duplicate of queued task {holder} (lock {key})")
    request = Context(
        {
            "id": task_id,
            "task": task.name,
            "args": list(args or ()),
            "kwargs": dict(kwargs or {}),
            "group": options.get("group_id"),
            "group_index": options.get("group_index"),
            "chord": options.get("chord"),
            "chain": options.get("chain"),
            "callbacks": as_list(link),
            "errbacks": as_list(link_error),
            "root_id": options.get("root_id"),
            "parent_id": options.get("parent_id"),
            "reply_to": options.get("reply_to"),
            "delivery_info": {},
            "called_directly": False,
        }
    )
    try:
        task.backend.mark_as_failure(task_id, exc, traceback=None, request=request)
    except Exception:
        logger.exception("%s[%s]: could not store the duplicate's failure", task.name, task_id)
    if any(options.get(name) is not None for name in _CANVAS_OPTIONS):
        return task.AsyncResult(task_id)
    return None


def with_digest(options: dict[str, Any], digest: str, *, fixed_id: bool = False, stamped: bool = False) -> None:
    """Put the digest in the message headers, on a copy: canvas members share one dict.

    A call whose task id the caller fixed also gets a call id of its own
    (``redelivery.CALL_HEADER``), unless it carries one already -- a retry
    does, and keeps it: so that a new call made with the id of one that
    finished is not taken for a copy of that one's message. With ``stamped``
    (a task whose calls may wait in a line: ``limits``) the call carries
    when it was made, unless it carries it already (a retry keeps its place).
    """
    headers = dict(options.get("headers") or {})
    headers[DIGEST_HEADER] = digest
    if fixed_id and CALL_HEADER not in headers:
        headers[CALL_HEADER] = new_call()
    if stamped and CALLED_HEADER not in headers:
        headers[CALLED_HEADER] = time.time_ns() // 1000  # microseconds: calls a moment apart keep their order
    options["headers"] = headers


def _called_by_beat() -> bool:
    """Whether celery beat's scheduler (or one derived from it) made the ``apply_async`` call."""
    # From the caller of publish_once, a few frames up: task classes derived
    # from OnceTask may wrap apply_async.
    return called_by_beat(3, frames=8)


def as_list(value: Links) -> Optional[list[Signature]]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]  # type: ignore[list-item]  # a signature is a dict, never a list or a tuple


def seconds_until_start(options: Mapping[str, Any]) -> float:
    """How long a message waits for its countdown or ETA; the queue lock lives that much longer."""
    countdown = options.get("countdown")
    if countdown:
        return max(0.0, float(countdown))
    eta = options.get("eta")
    if eta is None:
        return 0.0
    if isinstance(eta, str):
        try:
            eta = datetime.datetime.fromisoformat(eta)
        except ValueError:
            return 0.0
    if not isinstance(eta, datetime.datetime):
        return 0.0
    now = datetime.datetime.now(datetime.timezone.utc)
    if eta.tzinfo is None:
        # A naive ETA is read in the app's time zone, which may be ahead of
        # UTC: count from the earlier of the two readings of "now".
        local = datetime.datetime.now()
        return max(0.0, (eta - min(local, now.replace(tzinfo=None))).total_seconds())
    return max(0.0, (eta - now).total_seconds())
