"""A task's options, checked where the task is defined: each on its own, and the combinations that make no sense.

``OnceTask.__init_subclass__`` calls ``check_task_class`` for every task
class (the task decorator makes one per task): a bad value is a
``ValueError`` naming the task and the option, raised at import, not at the
first call. Options a task leaves to the configuration are checked with the
rest once its settings are resolved (``settings.resolve``).
"""

from __future__ import annotations

from typing import Any

from .digest import check_lock_args, signature_of
from .internals import registered_tasks
from .options import check_combination, check_name
from .rates import check_throttle_options
from .settings_table import SETTINGS

#: The task options that are not settings, whose combinations are checked with the rest.
_TASK_ONLY = ("queue_lock", "running_lock", "running_limit")


def check_task_class(cls: type, label: str) -> None:
    """Raise ``ValueError`` naming ``label`` (the task) for a bad option of ``cls`` or options that contradict."""
    own = cls.__dict__
    for spec in SETTINGS:
        value = own.get(spec.name)
        if spec.task_option and value is not None:
            spec.check(value, f"{label}: {spec.name}")
    limit = own.get("running_limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{label}: running_limit must be a positive integer (executions of a key at once), "
                         f"got {limit!r}")
    lock_name = own.get("lock_name")
    if lock_name is not None:
        check_name(lock_name, f"{label}: lock_name")
    debounce, most = getattr(cls, "debounce", None), getattr(cls, "debounce_max", None)
    if debounce and most and most < debounce:
        raise ValueError(f"{label}: debounce_max ({most!r}) must be at least debounce ({debounce!r})")
    running_limit = getattr(cls, "running_limit", 1)
    if running_limit > 1 and not getattr(cls, "running_lock", True):
        raise ValueError(f"{label}: running_limit={running_limit} needs running_lock=True (the limit counts "
                         "running executions)")
    values: dict[str, Any] = {name: getattr(cls, name, None) for name in _TASK_ONLY}
    values.update((spec.name, getattr(cls, spec.name, None)) for spec in SETTINGS if spec.task_option)
    check_combination(values, label)
    check_throttle_options({"throttle": getattr(cls, "throttle", None), "debounce": getattr(cls, "debounce", None),
                            "throttle_conflict": getattr(cls, "throttle_conflict", None)}, label)
    lock_args = own.get("lock_args")
    if lock_args is not None and "run" in own:
        run = own["run"]
        bound_run = run.__func__ if isinstance(run, staticmethod) else run
        signature = signature_of(bound_run)
        if signature is not None and not isinstance(run, staticmethod):
            # A method, or a bind=True task: its first parameter is the task.
            signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        check_lock_args(label, signature, lock_args)


def check_shared_name(task: Any) -> None:
    """Tasks of one ``lock_name`` must take the same kinds of keys, or they would not exclude each other.

    Asked when a task with a ``lock_name`` is first used, of the tasks its
    app has registered by then (without finalizing it: a call must not import
    the project's task modules): a ``ValueError`` naming both tasks otherwise.
    """
    mine = _kinds_of_keys(task)
    for other in registered_tasks(task.app):
        if other is task or not getattr(other, "__once_task__", False) or other.lock_name != task.lock_name:
            continue
        if _kinds_of_keys(other) != mine:
            raise ValueError(
                f"{task.name} and {other.name} share lock_name {task.lock_name!r} but not the locks they take "
                "(queue_lock, running_lock, a running_limit or a line, debounce, throttle): they would not exclude "
                "each other")


def _kinds_of_keys(task: Any) -> tuple[bool, bool, bool, bool, bool]:
    """Which keys a task's calls take: a queue lock, a running lock (or slots), slots, a burst, a throttle's log."""
    limited = task.running_limit > 1 or (task.running_lock_conflict == "wait" and not task.queue_lock)
    throttled = bool(getattr(task, "_once_rates", ()))
    return bool(task.queue_lock), bool(task.running_lock), limited, task.debounce is not None, throttled
