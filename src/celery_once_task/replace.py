"""``queue_lock_conflict="replace"``: a duplicate of a queued call replaces its arguments; it runs once, the newest.

With ``lock_args`` a subset of the arguments, a queued call would otherwise
run with the arguments of the *first* call of its key. Under ``"replace"``:

* **A duplicate call** of a queued call writes its arguments (kombu JSON, as
  for ``debounce``) beside the queued call's queue lock, in the round trip
  that finds the lock held (``lua.calls.CALL_ACQUIRE``), and gets the
  queued call's ``AsyncResult``: no second message is published. Only the
  queued call's *arguments* change, never its key: the calls it replaces
  are duplicates of it, by ``lock_args``.
* **The pickup** of the queued call takes the newest arguments in its one
  round trip, with the queue lock's release (``ARGUMENTS_TAKE``): a call
  made after the pickup is a new call, and is queued. The execution runs
  with them (and a retry of it publishes them).
* **The end** of the execution forgets them, in its release's round trip.

Faults: a pickup sent again after a lost reply, a copy of the message
delivered again (its worker died), read the same arguments -- they are kept
until the execution ends; where the lock store lost them, the message runs
with its own. So the call runs once, with one of the accepted calls'
arguments, never with none. A duplicate refused with ``LockStoreUnavailable``
after a lost reply may have replaced them: the janitor undoes its
replacement (``ARGUMENTS_UNDO``) as soon as the store answers, unless a
later duplicate replaced it since or the execution took it.

A call whose execution holds its queue lock until its end
(``queue_lock_until="end"``), or a key held by a ``unique_for`` window
alone, has no arguments to replace: a duplicate gets the holder's
``AsyncResult``, as under ``"existing"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from kombu.utils.json import dumps, loads

from .janitor import Cleanup
from .keys import ARGUMENTS, QUEUE, KeySpace
from .protocols import TaskLike, TaskOptions
from .settings_table import Settings
from .store.calls import forget_arguments, take_arguments
from .store.scripts import Call


def replaces(task: TaskOptions, settings: Settings, queue_lock: bool) -> bool:
    """Whether a call's duplicates replace its arguments (its running lock marks the end that forgets them)."""
    return settings.queue_lock_conflict == "replace" and queue_lock and task.running_lock


def encode(task: TaskLike, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]]) -> str:
    """A call's arguments as kombu JSON; a ``TypeError`` naming the task where they are not."""
    try:
        encoded: str = dumps({"args": list(args or ()), "kwargs": dict(kwargs or {})})  # type: ignore[no-untyped-call]
    except (TypeError, ValueError) as exc:
        raise TypeError(f'{task.name}: with queue_lock_conflict="replace" a call\'s arguments must be JSON '
                        f"(kombu's): {exc}") from None
    return encoded


def decode(arguments: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments a duplicate replaced a call's with."""
    data: Any = loads(arguments)  # type: ignore[no-untyped-call]
    return tuple(data.get("args") or ()), dict(data.get("kwargs") or {})


def key(space: KeySpace, digest: str) -> str:
    """The key's replaced arguments, beside its queue lock."""
    return space.companion(digest, ARGUMENTS)


def take(space: KeySpace, digest: str, holder: str, lease: Optional[float], keep: float) -> Call:
    """The pickup's call: release the queue lock (or keep it for ``lease`` seconds), take the arguments.

    ``keep``: seconds the arguments are kept at least, for a copy of the message.
    """
    return take_arguments(space.lock(digest, QUEUE), key(space, digest), holder, lease, keep)


def forget(space: KeySpace, digest: str, holder: str) -> Call:
    """The release's call: the execution ended, its arguments go."""
    return forget_arguments(key(space, digest), holder)


def forgotten_later(settings: Settings, task: TaskLike, task_id: Optional[str], space: KeySpace, digest: str,
                    holder: str, reason: str, pid: Optional[int] = None) -> Cleanup:
    """The janitor's ``forget``, where the release could not make it (or a process's death ended the call)."""
    return Cleanup(settings.redis_url, key(space, digest), holder, False, task, task_id, reason, pid,
                   options=settings.redis_options, arguments="forget")


def undone_later(settings: Settings, task: TaskLike, task_id: str, arguments_key: str) -> Cleanup:
    """The janitor's undo of the replacement a duplicate refused after a lost reply may have made."""
    return Cleanup(settings.redis_url, arguments_key, task_id, False, task, task_id, "call refused",
                   options=settings.redis_options, arguments="undo", uncertain=True)
