"""Releasing an execution's locks from outside its own run: signals, the main process, shutdown.

Every path that cleans up after a task that could not clean up after itself
(revoked, killed, timed out, internal error, cold shutdown) comes through
``release_locks``. It rebuilds the owner tokens the execution used and deletes
only locks that still hold those tokens. A running lock is released only once
the process that ran the execution can no longer run it (``pid``): a child
being killed may still be running for a moment. Nothing here raises: it runs
inside Celery's hooks, where an exception would turn into a worker error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Optional

from redis.exceptions import RedisError

from . import call_options, debounce, replace, windows
from .digest import well_formed_digest
from .headers import BURST_HEADER, DIGEST_HEADER, OPTIONS_HEADER, THROTTLE_HEADER
from .ids import call_id, waiting_token
from .janitor import Cleanup, janitor, mark_lost, process_gone
from .keys import RUNNING, WAITING, KeySpace, key_space
from .limits import RESERVE_SECONDS, limit_of, limited, slots_key
from .ownership import INSTANCE, RunningOwner, heartbeat_enabled
from .protocols import TaskLike
from .record_keys import finished_key, legacy_finished_key
from .redelivery import call_of_headers, compact_value, result_stored, writer_instance, writer_prefix
from .settings import resolve
from .settings_table import Settings
from .store import LockStore, throttles
from .throttle import rates_of, throttle_key

if TYPE_CHECKING:  # typing.TypeGuard is Python 3.10+
    from typing_extensions import TypeGuard

logger = logging.getLogger("celery_once_task")


def is_once_task(task: object) -> TypeGuard[TaskLike]:
    """Whether ``task`` is a ``OnceTask`` (Celery's signals and the worker's requests carry any task)."""
    return bool(getattr(task, "__once_task__", False))


def digest_from(headers: Optional[Mapping[str, object]]) -> Optional[str]:
    """The digest a message carries, if it carries a well-formed one."""
    digest = headers.get(DIGEST_HEADER) if headers else None
    return digest if isinstance(digest, str) and well_formed_digest(digest) else None


def release_locks(
    task: object,
    *,
    task_id: Optional[str],
    retries: Optional[int],
    args: Optional[Sequence[object]],
    kwargs: Optional[Mapping[str, object]],
    headers: Optional[Mapping[str, object]],
    queue: bool,
    running: bool,
    reason: str,
    pid: Optional[int] = None,
    unfinished: bool = False,
    final: bool = False,
) -> None:
    """Release the queue lock held by ``task_id`` and/or the running lock held by this attempt.

    The deletes go to the janitor, which makes them now or once they can be
    made; nothing is done for a task that is no ``OnceTask``.

    Args:
        task: The message's task: any Celery task.
        task_id: The message's task id.
        retries: The attempt (``request.retries``) whose running lock is released.
        args: The message's positional arguments (for the digest, if no header carries it).
        kwargs: The message's keyword arguments.
        headers: The message's headers.
        queue: Release the queue lock held by ``task_id`` (and its place in a limited key's line, and the
            arguments duplicates replaced its own with).
        running: Release the running lock (or slot) of the attempt (and, where it ended for good, what its
            call kept until its end: ``windows``).
        reason: Why, for the log.
        pid: The process that ran the execution; its running lock is released
            once that process is gone.
        unfinished: That process died before its result was stored: the
            finished record it may have written goes too, and a throttled
            start it made on its reservation is marked lost, so that a copy
            of the message runs (see ``redelivery``, ``throttle``).
        final: No copy of the message will run again: the arguments a
            debounced burst ran with, kept for such a copy, go too (see ``debounce``).
    """
    if not task_id or not is_once_task(task) or not (queue or running):
        return
    try:
        settings, queue_lock = call_options.from_headers(task, resolve(task.app, task),
                                                         headers.get(OPTIONS_HEADER) if headers else None)
        if not settings.enabled:  # it took no lock
            return
        digest = digest_from(headers) or task.once_digest(args, kwargs)
        space = key_space(task, settings)
        url, options = settings.redis_url, settings.redis_options
        # The lease is the execution's, and renewed elsewhere: releases need none.
        side = windows.queue_side(task, settings, space, digest, task_id, queue_lock, 0.0)
        if queue and side is not None:
            janitor.add(Cleanup(url, side.key, side.holder, False, task, task_id, reason, options=options))
            if side.replacing:  # it never runs: the arguments duplicates replaced its own with go
                janitor.add(replace.forgotten_later(settings, task, task_id, space, digest, side.holder, reason))
        if not task.running_lock:
            if running and unfinished and pid is not None:
                _lose_throttled_start(task, settings, space, digest, task_id, retries, headers, reason, pid)
            return
        owner = RunningOwner.for_execution(task_id, retries, space.holder_task, settings.legacy_formats)
        if limited(task, settings):
            slots = slots_key(space, digest)
            if queue:
                # A call waiting in the key's line leaves it (or the slot reserved for it).
                janitor.add(Cleanup(url, slots, call_id(task_id, owner.retries), False, task, task_id, reason,
                                    options=options, slot=True, limit=limit_of(task), reserve=RESERVE_SECONDS,
                                    forget=True))
            if running:
                janitor.add(Cleanup(url, slots, owner.token, True, task, task_id, reason, pid, options=options,
                                    slot=True, limit=limit_of(task), reserve=RESERVE_SECONDS))
            running_key = slots
        else:
            running_key = space.lock(digest, RUNNING)
            if queue and task.queue_lock and settings.running_lock_conflict == "wait":
                # A waiting copy's message, left for the hand-over.
                waiting = space.lock(digest, WAITING)
                janitor.add(Cleanup(url, waiting, waiting_token(task_id), True, task, task_id, reason, options=options))
            if running:
                janitor.add(Cleanup(url, running_key, owner.token, True, task, task_id, reason, pid, options=options))
        if running and final and side is not None:
            # The call ended with its execution: what it kept until its end goes (once its process is gone).
            for cleanup in side.later(settings, task, task_id, windows.FINISHED, reason, pid):
                janitor.add(cleanup)
        if running and final and headers and headers.get(BURST_HEADER):
            janitor.add(debounce.ended(task, settings, debounce.burst_key(space, digest), task_id, reason, pid))
        if running and unfinished and pid is not None and not result_stored(task, task_id):
            call = call_of_headers(headers)
            if settings.legacy_formats:
                writer = writer_prefix(owner.retries, call, writer_instance(), pid)
                janitor.add(Cleanup(url, legacy_finished_key(running_key, task_id, space.prefix), writer, True, task,
                                    task_id, reason, pid, options=options))
            else:
                # The compact record does not name the process: the values this instance writes for the attempt.
                record_key = finished_key(running_key, task_id, call, space.prefix)
                for stores_result in (True, False):
                    janitor.add(Cleanup(url, record_key, compact_value(owner.retries, writer_instance(), stores_result),
                                        False, task, task_id, reason, pid, options=options))
    except Exception:
        logger.exception("%s[%s]: lock operation failed: could not release its locks (%s)", task.name, task_id, reason)


def _lose_throttled_start(task: TaskLike, settings: Settings, space: KeySpace, digest: str, task_id: str,
                          retries: Optional[int], headers: Optional[Mapping[str, object]], reason: str,
                          pid: int) -> None:
    """A throttled execution's process died: mark lost the start it made on its reservation (``throttle``).

    Only a postponed call's copy carries a reservation, and only such a copy
    is ever let go for a start another copy made: one without runs anyway.
    The start is named by the dead process, never by another process of this
    worker that a copy of the same message may run in. Marked now, where the
    process is gone already (a pool process lost: Celery gives the message
    back to the broker right after this), so that the copy finds the mark;
    else, or where the store does not answer, by the janitor.
    """
    reserved = headers.get(THROTTLE_HEADER) if headers else None
    if reserved is None or not rates_of(task) or result_stored(task, task_id):
        return
    starter = throttles.starter_of(INSTANCE if heartbeat_enabled() else "", pid)
    cleanup = Cleanup(settings.redis_url, throttle_key(space, digest), call_id(task_id, int(retries or 0)), False,
                      task, task_id, reason, pid, options=settings.redis_options, lost_start=str(reserved),
                      starter=starter)
    if process_gone(pid):
        try:
            mark_lost(LockStore.for_url(cleanup.url, cleanup.options), cleanup)
            return
        except RedisError as exc:
            logger.warning("%s[%s]: lock operation failed: could not mark the start on %s lost (%s): %s; retrying "
                           "until the lock store answers", task.name, task_id, cleanup.key, reason, exc)
    janitor.add(cleanup)
