"""What the library needs of Celery's objects, as Protocols: Celery ships no type hints.

A task is any ``OnceTask`` (``TaskLike`` names the part of it the execution
and release paths use); a request is Celery's ``Context`` of the execution
at hand, or the worker's ``Request`` of a message (``TaskRequest``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Protocol


class TaskRequest(Protocol):
    """The request an execution runs (``task.request``), as the library reads it."""

    id: str
    retries: int
    is_eager: bool
    args: Sequence[Any]
    kwargs: Mapping[str, Any]
    #: The message's headers (Celery 5.0 flattens the library's onto the request instead: see ``headers``).
    headers: Optional[Mapping[str, Any]]


class TaskLike(Protocol):
    """A ``OnceTask``, as the paths below the task class use it."""

    name: str
    #: The Celery app (``celery.Celery``).
    app: Any
    #: The result backend.
    backend: Any
    ignore_result: bool
    queue_lock: bool
    running_lock: bool
    running_limit: int
    running_lock_conflict: Optional[str]

    @property
    def request(self) -> Any: ...

    def AsyncResult(self, task_id: str, **kwargs: Any) -> Any: ...

    def signature_from_request(self, request: Any = None, args: Any = None, kwargs: Any = None,
                               queue: Any = None, **extra_options: Any) -> Any: ...

    def once_digest(self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]]) -> str: ...
