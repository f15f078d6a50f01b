"""The library's exceptions: one root, and every class pickles.

Exceptions raised in a prefork pool child are pickled to the worker's main
process, and the result backend rebuilds them from ``exc.args``; so every
class here keeps all of its state in ``args``.
"""

from __future__ import annotations

from typing import Optional

from celery.exceptions import Reject


class OnceTaskError(Exception):
    """Root of every exception this library raises: ``except OnceTaskError`` catches them all."""


class LockStoreUnavailable(OnceTaskError):
    """The Redis server that holds the locks could not be reached.

    Raised by ``apply_async()``/``delay()`` instead of publishing a task whose
    de-duplication cannot be guaranteed (unless ``fail_open`` is set). The
    message says which lock store, without its password.
    """


class LockStorePermissionError(LockStoreUnavailable):
    """The lock store refused a command by its ACL: its user lacks a command or a key pattern.

    Not an outage: the server answered, and trying again cannot help, so the
    call is refused at once (``fail_open`` does not publish past it: it is for
    a store that cannot be reached, not for one whose rules are wrong). A
    subclass of ``LockStoreUnavailable``, so that code catching that keeps
    catching every refused call.

    Args:
        message: What was refused, and what the user lacks.
        missing: What the user lacks: ``'hgetall' (add +hgetall to its rules)``.

    Attributes:
        missing (str): What the user lacks.
    """

    def __init__(self, message: str, missing: str = "") -> None:
        super().__init__(message, missing)
        self.missing = missing

    def __str__(self) -> str:
        return str(self.args[0])


class OnceTaskDuplicate(OnceTaskError):
    """A call met a queued copy of itself, with ``queue_lock_conflict="raise"``.

    Args:
        task_name: The task's name.
        holder_id: The queued call's task id (the value its queue lock holds), or
            None where the lock store's reply named none.
        key: The queue lock's key.

    Attributes:
        task_name (str): The task's name.
        holder_id (Optional[str]): The queued call's task id.
        key (str): The queue lock's key.
    """

    def __init__(self, task_name: str, holder_id: Optional[str], key: str) -> None:
        super().__init__(task_name, holder_id, key)
        self.task_name = task_name
        self.holder_id = holder_id
        self.key = key

    def __str__(self) -> str:
        return f"{self.task_name}: duplicate call, task {self.holder_id} is queued (lock {self.key})"


class OnceTaskLocked(Reject, OnceTaskError):
    """An execution was rejected because its running lock is held elsewhere.

    Keeps Celery's ``Reject(reason, requeue)`` signature so that Celery, the
    prefork pool and the result backend can rebuild it from its arguments.

    Args:
        reason: What the rejection says: the task, its id and who holds the lock.
        requeue: Whether the message goes back to the broker (Celery's ``Reject``).

    Attributes:
        reason (object): What the rejection says (``str(exc)``).
        requeue (bool): Whether the message goes back to the broker.
    """

    def __init__(self, reason: object = None, requeue: bool = False) -> None:
        super().__init__(reason, requeue)

    def __str__(self) -> str:
        return str(self.reason)

    def __reduce__(self) -> tuple[type[OnceTaskLocked], tuple[object, bool]]:
        return (type(self), (self.reason, self.requeue))


class OnceTaskThrottled(Reject, OnceTaskError):
    """An execution was rejected because its key's ``throttle`` allows no start now (``throttle_conflict="reject"``).

    Keeps Celery's ``Reject(reason, requeue)`` signature, as ``OnceTaskLocked``
    does: its result is a final FAILURE, never PENDING.

    Args:
        reason: What the rejection says: the task, its id, the key and the limit.
        requeue: Whether the message goes back to the broker (Celery's ``Reject``).
    """

    def __init__(self, reason: object = None, requeue: bool = False) -> None:
        super().__init__(reason, requeue)

    def __str__(self) -> str:
        return str(self.reason)

    def __reduce__(self) -> tuple[type[OnceTaskThrottled], tuple[object, bool]]:
        return (type(self), (self.reason, self.requeue))
