"""What the library needs of Celery's objects, as Protocols: Celery ships no type hints.

A task is any ``OnceTask`` (``TaskLike`` names the part of it the paths
below the task class use); a request is Celery's ``Context`` of the
execution at hand, or the worker's ``Request`` of a message
(``TaskRequest``); an app is a ``celery.Celery`` (``CeleryApp``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional, Protocol


class AppConf(Protocol):
    """A Celery app's configuration (``app.conf``), as the library reads it."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def __contains__(self, key: object) -> bool: ...


class CeleryApp(Protocol):
    """A Celery app."""

    @property
    def conf(self) -> AppConf: ...


class TaskRequest(Protocol):
    """The request an execution runs (``task.request``), as the library reads it."""

    id: str
    retries: int
    is_eager: bool
    #: A plain function call of the task (``task(...)``), not an execution of a message.
    called_directly: bool
    args: Sequence[object]
    kwargs: Mapping[str, object]
    #: The message's headers (Celery 5.0 flattens the library's onto the request instead: see ``headers``).
    headers: Optional[Mapping[str, object]]


class Signature(Protocol):
    """A Celery signature (``celery.canvas.Signature``, a dict): a call and its publish options."""

    args: Sequence[object]
    kwargs: Mapping[str, object]
    options: Mapping[str, object]

    def keys(self) -> Iterator[str]: ...

    def __getitem__(self, key: str) -> object: ...


class ResultBackend(Protocol):
    """A Celery result backend, as the library stores a duplicate's failure in it."""

    def mark_as_failure(self, task_id: str, exc: BaseException, traceback: Optional[str] = None,
                        request: object = None, store_result: bool = True) -> object: ...


class AsyncResult(Protocol):
    """A Celery ``AsyncResult``: a call's id, and its state in the result backend."""

    id: str

    @property
    def state(self) -> str: ...


class TaskOptions(Protocol):
    """The options of a ``OnceTask`` class or instance that decide which path its executions take."""

    @property
    def queue_lock(self) -> bool: ...
    @property
    def running_lock(self) -> bool: ...
    @property
    def running_limit(self) -> int: ...
    @property
    def running_lock_conflict(self) -> Optional[str]: ...
    #: The name that stands for the task in its keys, where not its own (``keys.KeySpace``).
    @property
    def lock_name(self) -> Optional[str]: ...


class TaskLike(TaskOptions, Protocol):
    """A ``OnceTask``, as the paths below the task class use it."""

    name: str
    backend: ResultBackend
    ignore_result: bool
    store_errors_even_if_ignored: bool

    @property
    def app(self) -> CeleryApp: ...

    @property
    def request(self) -> TaskRequest: ...

    def AsyncResult(self, task_id: str, **kwargs: object) -> AsyncResult: ...

    def signature_from_request(self, request: Optional[TaskRequest] = None, args: Optional[Sequence[object]] = None,
                               kwargs: Optional[Mapping[str, object]] = None, queue: Optional[str] = None,
                               **extra_options: object) -> Signature: ...

    def once_digest(self, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]]) -> str: ...


# -- the worker's side -------------------------------------------------------------


class AppLoader(Protocol):
    """A Celery app's loader (``app.loader``)."""

    def import_default_modules(self) -> object: ...


class WorkerApp(CeleryApp, Protocol):
    """A Celery app as a worker starts it: its loader imports the project's task modules."""

    @property
    def loader(self) -> AppLoader: ...


class Worker(Protocol):
    """The worker a boot step is given (Celery's ``WorkController``)."""

    @property
    def hostname(self) -> str: ...

    @property
    def app(self) -> WorkerApp: ...


class WorkerRequest(Protocol):
    """The worker's ``Request`` of a message, in its main process (``celery.worker.request.Request``)."""

    @property
    def id(self) -> str: ...

    #: The task the message names: a ``OnceTask`` or any other Celery task.
    @property
    def task(self) -> object: ...

    #: The message's headers and Celery's fields (``retries`` ...), as the message carried them.
    @property
    def request_dict(self) -> Mapping[str, object]: ...

    @property
    def args(self) -> Sequence[object]: ...

    @property
    def kwargs(self) -> Mapping[str, object]: ...


class ExceptionInfo(Protocol):
    """An exception as the worker's main process is told of it (billiard's ``ExceptionInfo``)."""

    @property
    def exception(self) -> BaseException: ...
