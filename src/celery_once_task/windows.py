"""Until when a call is a duplicate (``queue_lock_until``, ``unique_for``), and what an execution does with its keys.

Three windows make a later call of a key a duplicate of an accepted one,
each a key held by the call's *holder* value (``KeySpace.holder``):

* **queued** (``queue_lock_until="pickup"``, the default): from the call
  until its execution starts. The queue lock, released at pickup.
* **until the run ends** (``queue_lock_until="end"``): from the call until
  its execution ends -- it returned, failed, was rejected or revoked, or its
  worker was lost. The pickup keeps the queue lock as a lease of the
  execution's (``QUEUE_LEASE``), renewed with its running lock
  (``renewal``), so a lost worker frees the key within a lease; the release
  deletes it in the round trip that releases the running lock. A retry keeps
  it -- the call has not ended: its publish renews the queue lock, and the
  attempt's release leaves it. An execution that did not finish (a cold
  shutdown, ``Reject(requeue=True)``) leaves it to its lease: its message,
  delivered again, keeps it, or it expires.
* **for a period** (``unique_for=S``): for S seconds from the call, whatever
  becomes of its execution: the *window*, a key beside the queue lock
  (``keys.companion_key``), taken with it in the call's one round trip
  (``CALL_ACQUIRE``) and left to expire; it holds through worker deaths and
  store failovers as a queue lock does, and after S seconds the key is free
  even if nothing ran. With ``queue_lock=False`` it stands alone: at most one
  call of a key per S seconds, however many are queued or running.

The windows add up: a key is a duplicate while any of them holds it. A
duplicate gets what ``queue_lock_conflict`` says against whichever holds
it: under ``"existing"``, the ``AsyncResult`` of the call that is queued, that
runs (``"end"``), or that opened the window.

A call of a task with neither a window nor ``"replace"`` takes its queue lock
as it always did (``store.locks``); the others go through ``Acquisition``
here. What an execution does with its call's queue-side keys -- release the
queue lock at pickup or keep it until the end, take and forget the arguments
a duplicate replaced (``replace``) -- is its ``QueueSide``: one call in the
pickup's round trip, and the calls its release adds to its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Optional

from celery.exceptions import Reject, Retry
from redis.exceptions import RedisError

from . import replace
from .janitor import Cleanup, janitor
from .keys import QUEUE, UNIQUE, KeySpace
from .protocols import TaskLike
from .settings_table import Settings
from .store import Acquired, CallKeys, LockStore
from .store.calls import lease as queue_lease
from .store.locks import compare_and_delete
from .store.scripts import Call

logger = logging.getLogger("celery_once_task")

#: How an execution ended, for its call's keys: it finished, it asked to be retried, or it did not finish
#: (its message comes back).
FINISHED, RETRIED, UNFINISHED = "finished", "retried", "unfinished"


def end_of(outcome: Optional[BaseException]) -> str:
    """How an execution whose body ended with ``outcome`` (None: it returned) ended, for its call's keys."""
    if isinstance(outcome, Retry):
        return RETRIED
    if outcome is not None and not isinstance(outcome, Exception):
        return UNFINISHED  # the worker shutting down cold, a greenlet killed: its message comes back
    if isinstance(outcome, Reject) and outcome.requeue:
        return UNFINISHED
    return FINISHED


# -- the call ------------------------------------------------------------------------


class Acquisition(NamedTuple):
    """A call's acquisition where it takes more than its queue lock: a window, arguments to replace with."""

    keys: CallKeys
    #: The call's task id.
    token: str
    queue_ttl: float
    window_ttl: float
    #: The call's arguments as kombu JSON, where its duplicates replace a queued call's ("" : they do not).
    arguments: str

    def key_met(self, outcome: Acquired) -> str:
        """The key a duplicate met: the window, or the queue lock."""
        return str(self.keys.window if outcome.window or self.keys.queue is None else self.keys.queue)


def acquisition(task: TaskLike, settings: Settings, space: KeySpace, digest: str, task_id: str, queue_ttl: float,
                queue_lock: bool, replacing: bool, args: Optional[Sequence[Any]],
                kwargs: Optional[Mapping[str, Any]]) -> Optional[Acquisition]:
    """The call's ``Acquisition``; None where its queue lock is all it takes.

    Raises:
        TypeError: The call replaces a queued call's arguments, and its arguments are not JSON.
    """
    if settings.unique_for is None and not replacing:
        return None
    keys = CallKeys(space.lock(digest, QUEUE) if queue_lock else None,
                    space.companion(digest, UNIQUE) if settings.unique_for is not None else None,
                    replace.key(space, digest) if replacing else None, space.holder(task_id))
    return Acquisition(keys, task_id, queue_ttl, settings.unique_for or 0.0,
                       replace.encode(task, args, kwargs) if replacing else "")


def acquire(store: LockStore, call: Acquisition) -> Acquired:
    """Take the call's queue lock and window, or -- a duplicate -- replace the holder's arguments: one round trip."""
    return store.calls.acquire(call.keys, call.token, call.queue_ttl, call.window_ttl, call.arguments)


def give_back(store: LockStore, settings: Settings, task: TaskLike, call: Acquisition) -> None:
    """The call's message could not be published: what it took goes (by the janitor, if need be).

    Its queue lock, its window, and any arguments a duplicate replaced its own with in between.
    """
    try:
        store.calls.release(call.keys)
    except RedisError:
        for key in (call.keys.queue, call.keys.window):
            if key is not None:
                janitor.add(Cleanup(settings.redis_url, key, call.keys.holder, False, task, call.token,
                                    "publish failed", options=settings.redis_options))
        if call.keys.arguments is not None:
            janitor.add(Cleanup(settings.redis_url, call.keys.arguments, call.keys.holder, False, task, call.token,
                                "publish failed", options=settings.redis_options, arguments="forget"))


def lost(settings: Settings, task: TaskLike, call: Acquisition) -> list[Cleanup]:
    """What a refused call's lost reply may have written, for the janitor: its locks, or its replacement."""
    cleanups = [Cleanup(settings.redis_url, key, call.keys.holder, False, task, call.token, "call refused",
                        uncertain=True, options=settings.redis_options)
                for key in (call.keys.queue, call.keys.window) if key is not None]
    if call.keys.arguments is not None:
        cleanups.append(replace.undone_later(settings, task, call.token, call.keys.arguments))
    return cleanups


# -- the execution -------------------------------------------------------------------


class QueueSide(NamedTuple):
    """What an execution does with its call's queue lock and replaced arguments, at pickup and at its end."""

    space: KeySpace
    digest: str
    #: The queue lock's value (``KeySpace.holder``).
    holder: str
    #: Seconds the pickup keeps the queue lock, as the execution's lease (``"end"``); None: it releases it.
    lease: Optional[float]
    #: The call's duplicates replace its arguments: the pickup takes them, the end forgets them.
    replacing: bool
    #: Seconds the taken arguments are kept at least, for a copy of the message.
    keep: float

    @property
    def key(self) -> str:
        return self.space.lock(self.digest, QUEUE)

    def pickup(self) -> Call:
        """The pickup's call: release the queue lock, or keep it as a lease; take the replaced arguments."""
        if self.replacing:
            return replace.take(self.space, self.digest, self.holder, self.lease, self.keep)
        if self.lease is not None:
            return queue_lease(self.key, self.holder, self.lease, "set")
        return compare_and_delete(self.key, self.holder, "exact")

    def ended(self, how: str) -> list[Call]:
        """The calls the execution's release adds to its round trip, for an execution that ended ``how``."""
        calls = []
        if self.lease is not None and how == FINISHED:  # a retry keeps it; an unfinished run leaves it to its lease
            calls.append(compare_and_delete(self.key, self.holder, "exact"))
        if self.replacing and how != UNFINISHED:  # a retry publishes the arguments it ran with
            calls.append(replace.forget(self.space, self.digest, self.holder))
        return calls

    def later(self, settings: Settings, task: TaskLike, task_id: Optional[str], how: str, reason: str,
              pid: Optional[int] = None) -> list[Cleanup]:
        """What the janitor makes of ``ended(how)`` where the store does not answer, or a dead process ended it."""
        cleanups = []
        if self.lease is not None and how == FINISHED:
            cleanups.append(Cleanup(settings.redis_url, self.key, self.holder, False, task, task_id, reason, pid,
                                    options=settings.redis_options))
        if self.replacing and how != UNFINISHED:
            cleanups.append(replace.forgotten_later(settings, task, task_id, self.space, self.digest, self.holder,
                                                    reason, pid))
        return cleanups

    def renewed(self) -> Optional[tuple[str, str]]:
        """(key, holder) of the queue lock the worker renews with the execution's lease, if it keeps one."""
        return (self.key, self.holder) if self.lease is not None else None


def queue_side(task: TaskLike, settings: Settings, space: KeySpace, digest: str, task_id: str, queue_lock: bool,
               lease_ttl: float) -> Optional[QueueSide]:
    """What an execution of a call does with its queue-side keys; None where its call took no queue lock.

    ``lease_ttl``: the execution's lease (``ownership.running_ttl``). A task
    without a running lock releases its queue lock at pickup whatever the
    setting says: its end is known to no lock.
    """
    if not queue_lock:
        return None
    until_end = settings.queue_lock_until == "end" and task.running_lock
    return QueueSide(space, digest, space.holder(task_id), lease_ttl if until_end else None,
                     replace.replaces(task, settings, queue_lock), float(settings.queue_lock_timeout))
