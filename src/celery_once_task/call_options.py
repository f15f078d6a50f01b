"""Options per call: ``apply_async(..., once={...})``, validated at the call and carried to the worker.

A call may set for itself the options that concern it alone (``PER_CALL``):
whether it takes the queue lock, what it gets as a duplicate, until when it
makes its duplicates, its ``unique_for`` window, and its locks' timeouts::

    send_report.apply_async((42,), once={"queue_lock": False})            # queued whatever is queued
    send_report.apply_async((42,), once={"queue_lock_conflict": "raise"})  # OnceTaskDuplicate if it is

They win over the task's options (call option -> task option -> app
configuration -> ``configure()`` -> default). A name that is no option of a
call, or a bad value, is a ``ValueError`` naming it and the task (a ``once``
that is no dict, a ``TypeError``), raised at the call: nothing is published.
So are options that make no sense together (``options.check_combination``).

The call carries what it set in a header of its own (``OPTIONS_HEADER``), so
that the worker -- its pickup, its release, the lease renewal, the cleanup
after a dead process -- and a retry of the call act on them too. A call
without ``once`` carries nothing and costs nothing more.

``unique_for: None`` turns the task's window off for one call (``None``
means "not set" for every other option, and is refused there).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple, Optional

from .headers import OPTIONS_HEADER, header
from .options import check_combination
from .protocols import TaskLike
from .settings_table import SETTINGS, Settings

logger = logging.getLogger("celery_once_task")

#: The options a call may set for itself.
PER_CALL = ("queue_lock", "queue_lock_conflict", "queue_lock_until", "unique_for", "queue_lock_timeout",
            "running_lock_timeout")
_SPECS = {spec.name: spec for spec in SETTINGS if spec.name in PER_CALL}


class CallOptions(NamedTuple):
    """What is in force for one call: its settings, and whether it takes the queue lock."""

    settings: Settings
    queue_lock: bool


def for_call(task: TaskLike, settings: Settings, once: Optional[object], headers: dict[str, Any],
             task_id: Optional[str] = None) -> CallOptions:
    """The options of a call: ``once`` (else what its message carries) over the task's.

    Args:
        task: The task.
        settings: The task's settings.
        once: The call's ``once={...}`` (None: none given).
        headers: The call's message headers (a copy of its own): the options ``once`` sets are put there.
        task_id: The task id the call fixed, if any: a retry of the execution at hand sets what its
            message set (Celery 5.0 to 5.2 leave the library's headers off a retry's message).

    Raises:
        ValueError: A name that is no option of a call, a bad value, or options that make no sense together.
        TypeError: ``once`` is not a dict.
    """
    if once is None:
        once = headers.get(OPTIONS_HEADER)
        if once is None and task_id is not None:
            once = _retried(task, task_id)
        if not once:
            return CallOptions(settings, task.queue_lock)
    given = parse(task, once)
    headers[OPTIONS_HEADER] = given
    return apply(task, settings, given)


def _retried(task: TaskLike, task_id: str) -> object:
    """The options the message of the execution at hand carries, if ``task_id`` is its own (a retry)."""
    stack = getattr(task, "request_stack", None)  # Celery binds a task before it gives it a stack
    request = stack.top if stack is not None else None
    if request is None or getattr(request, "id", None) != task_id:
        return None
    return header(request, OPTIONS_HEADER)


def for_request(task: TaskLike, settings: Settings, request: object) -> CallOptions:
    """On the worker: the options the message of ``request`` carries, over the task's."""
    return from_headers(task, settings, header(request, OPTIONS_HEADER))


def from_headers(task: TaskLike, settings: Settings, carried: object) -> CallOptions:
    """The options a message carries (its ``OPTIONS_HEADER``) over the task's; unreadable ones are ignored."""
    if not carried:
        return CallOptions(settings, task.queue_lock)
    try:
        return apply(task, settings, parse(task, carried))
    except (TypeError, ValueError) as exc:
        # Written by another release, or by hand: the task's own options hold.
        logger.warning("%s: the options a message carries are ignored: %s", task.name, exc)
        return CallOptions(settings, task.queue_lock)


def parse(task: TaskLike, once: object) -> dict[str, Any]:
    """``once``, checked: each name an option of a call, each value valid for it."""
    if not isinstance(once, Mapping):
        raise TypeError(f"{task.name}: once must be a dict of options ({', '.join(PER_CALL)}), got "
                        f"{type(once).__name__}")
    checked: dict[str, Any] = {}
    for name, value in once.items():
        label = f"{task.name}: once[{name!r}]"
        if name not in PER_CALL:
            raise ValueError(f"{label} is not an option a call may set; those are {', '.join(PER_CALL)}")
        if name == "queue_lock":
            if not isinstance(value, bool):
                raise ValueError(f"{label} must be True or False, got {value!r}")
        elif value is not None or name != "unique_for":  # None: no window for this call
            _SPECS[name].check(value, label)
        checked[name] = value
    return checked


def apply(task: TaskLike, settings: Settings, given: Mapping[str, Any]) -> CallOptions:
    """The call's options in force: ``given`` over ``settings``; options that make no sense together refused."""
    changes = {name: value for name, value in given.items() if name != "queue_lock"}
    if changes:
        settings = dataclasses.replace(settings, **changes)
    # The queue lock's own rules were checked where the task was defined: a call that takes none bypasses them.
    check_combination({**{spec.name: getattr(settings, spec.name) for spec in SETTINGS},
                       "running_lock": task.running_lock, "running_limit": task.running_limit},
                      f"{task.name}: once={dict(given)!r}")
    return CallOptions(settings, bool(given.get("queue_lock", task.queue_lock)))
