"""A drop-in for celery-singleton: ``Singleton`` and ``DuplicateTaskError``; a project changes its imports only::

    from celery_once_task.compat.celery_singleton import DuplicateTaskError, Singleton

    @app.task(base=Singleton, unique_on=["username"], lock_expiry=600)
    def refresh_profile(username, force=False): ...

celery-singleton's options, as this library's (docs/migrating.md):

* a duplicate call gets the ``AsyncResult`` of the call it duplicates -- the
  same task id -- while that call is queued *or running*
  (``queue_lock_until="end"``), from ``on_duplicate`` as in celery-singleton;
* ``raise_on_duplicate`` (or ``app.conf.singleton_raise_on_duplicate``): it
  raises ``DuplicateTaskError`` instead, whose ``task_id`` is that call's;
* ``unique_on``: ``lock_args``; ``lock_expiry`` (or
  ``app.conf.singleton_lock_expiry``): ``queue_lock_timeout``, the seconds a
  queued call keeps the key. A running call keeps it until its run ends, its
  lease renewed by its worker: a dead worker's key is free within a lease.

The app's configuration is read as celery-singleton reads it, for the whole
app (its workers' heartbeats and ``celery once`` go there too):
``singleton_backend_url`` is the lock store (``redis_url``) -- where it is not
set, nor any of this library's spellings of ``redis_url``, the result
backend's Redis, else the broker's, as celery-singleton did --
``singleton_key_prefix`` the ``key_prefix``, ``singleton_backend_kwargs`` the
``redis_options``. This library's own spellings (``app.conf.once_redis_url``
...) win over them. A custom ``singleton_backend_class`` or a
``singleton_json_encoder_class`` cannot be mapped: a ``ValueError`` at a
``Singleton`` task's first call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from celery.result import AsyncResult
from kombu.messaging import Producer

from ..errors import OnceTaskDuplicate, OnceTaskError
from ..internals import registered_tasks
from ..protocols import AppConf, CeleryApp
from ..publish import Links
from ..settings import add_conf_reader
from ..settings_table import QueueLockConflict, QueueLockUntil, validate
from ..task import OnceTask

__all__ = ["DuplicateTaskError", "Singleton", "clear_locks"]

logger = logging.getLogger("celery_once_task")

#: celery-singleton's Redis backend, the only one that maps to this library's lock store.
REDIS_BACKEND = "celery_singleton.backends.redis.RedisBackend"
#: The configuration names the reader looks at.
CONF_NAMES = ("singleton_backend_url", "singleton_backend_class", "singleton_backend_kwargs", "singleton_key_prefix",
              "singleton_lock_expiry", "singleton_json_encoder_class", "result_backend", "broker_url")


class DuplicateTaskError(OnceTaskError):
    """A call met a queued or running copy of itself, with ``raise_on_duplicate``: celery-singleton's exception.

    Args:
        message: What happened, naming the call's task id.
        task_id: The task id of the call it duplicates.

    Attributes:
        task_id (str): The task id of the call it duplicates.
    """

    def __init__(self, message: str, task_id: Optional[str]) -> None:
        # Both in args: the exception pickles, and crosses a prefork pool's boundary.
        super().__init__(message, task_id)
        self.task_id = task_id

    def __str__(self) -> str:
        return str(self.args[0])


class Singleton(OnceTask):
    """celery-singleton's ``Singleton``: a duplicate call gets the ``AsyncResult`` of the queued or running call.

    Attributes:
        unique_on: The arguments of the key, by name (a name, or a list of them); ``None``: all of them.
        raise_on_duplicate: A duplicate raises ``DuplicateTaskError``; ``None``: ``singleton_raise_on_duplicate``.
        lock_expiry: Seconds a queued call keeps the key; ``None``: ``singleton_lock_expiry``, else
            ``queue_lock_timeout``.
    """

    unique_on: Optional[Union[str, Sequence[str]]] = None
    raise_on_duplicate: Optional[bool] = None
    lock_expiry: Optional[int] = None
    queue_lock_until: Optional[QueueLockUntil] = "end"
    #: Turned into ``on_duplicate``'s answer.
    queue_lock_conflict: Optional[QueueLockConflict] = "raise"

    #: Lets the reader of the app's ``singleton_*`` settings tell these tasks, without importing this module.
    __celery_singleton__ = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Set this library's options from the task's own celery-singleton options, before ``OnceTask`` checks them."""
        own = cls.__dict__
        label = own.get("name") or f"{cls.__module__}.{cls.__qualname__}"
        unique_on = own.get("unique_on")
        if unique_on is not None:
            names = [unique_on] if isinstance(unique_on, str) else unique_on
            if not isinstance(names, Sequence) or not all(isinstance(name, str) for name in names):
                raise ValueError(f"{label}: unique_on must be an argument name or a list of them, got {unique_on!r}")
            cls.lock_args = [name for name in names if name]  # celery-singleton: [] or [""] is one key per task
        if own.get("lock_expiry") is not None:
            cls.queue_lock_timeout = validate("queue_lock_timeout", own["lock_expiry"], label=f"{label}: lock_expiry")
        raise_on_duplicate = own.get("raise_on_duplicate")
        if raise_on_duplicate is not None and not isinstance(raise_on_duplicate, bool):
            raise ValueError(f"{label}: raise_on_duplicate must be True or False, got {raise_on_duplicate!r}")
        super().__init_subclass__(**kwargs)

    def apply_async(
        self,
        args: Optional[Sequence[Any]] = None,
        kwargs: Optional[Mapping[str, Any]] = None,
        task_id: Optional[str] = None,
        producer: Optional[Producer] = None,
        link: Links = None,
        link_error: Links = None,
        shadow: Optional[str] = None,
        **options: Any,
    ) -> Optional[AsyncResult]:
        """Publish the call, as ``OnceTask.apply_async`` does; a duplicate gets ``on_duplicate``'s answer.

        Args:
            args: The positional arguments of the call.
            kwargs: The keyword arguments of the call.
            task_id: A task id fixed in advance; else a new one.
            producer: The kombu producer to publish with, as Celery takes it.
            link: The callbacks, as Celery takes them.
            link_error: The errbacks, as Celery takes them.
            shadow: The name the call is shown under, as Celery takes it.
            **options: Celery's publish options, and this library's ``once``.

        Returns:
            The call's ``AsyncResult``; for a duplicate, that of the queued or running call it duplicates.

        Raises:
            DuplicateTaskError: A duplicate, with ``raise_on_duplicate``.
        """
        try:
            return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)
        except OnceTaskDuplicate as duplicate:
            return self.on_duplicate(duplicate.holder_id)

    def on_duplicate(self, existing_task_id: Optional[str]) -> Optional[AsyncResult]:
        """What a duplicate call gets: the existing call's ``AsyncResult``, or ``DuplicateTaskError``.

        celery-singleton's hook: a task may override it.
        """
        if self._raise_on_duplicate:
            raise DuplicateTaskError(f"Attempted to queue a duplicate of task ID {existing_task_id}",
                                     task_id=existing_task_id)
        return self.AsyncResult(existing_task_id) if existing_task_id else None

    @property
    def _raise_on_duplicate(self) -> bool:
        if self.raise_on_duplicate is not None:
            return self.raise_on_duplicate
        return bool(self.app.conf.get("singleton_raise_on_duplicate"))


def clear_locks(app: object) -> None:
    """celery-singleton's ``clear_locks(app)``, kept so that its callers import: it deletes nothing.

    celery-singleton's users call it when a worker starts, to free the locks
    of a worker that crashed -- and delete the locks of every other live
    worker's calls with them. Here a dead worker's locks are freed within
    ``heartbeat_timeout`` by its lease, and no process deletes a lock it does
    not own; ``celery -A proj once clear`` deletes one by hand.
    """
    logger.info("clear_locks(%r) deletes nothing: a dead worker's locks are freed within heartbeat_timeout", app)


def read_singleton_conf(app: Optional[CeleryApp], conf: AppConf, task: object,
                        values: Mapping[str, Any]) -> Mapping[str, Any]:
    """The settings the app's ``singleton_*`` configuration gives: its lock store, key prefix, client options."""
    ours = getattr(task, "__celery_singleton__", False)
    task_name = getattr(task, "name", None)
    backend = conf.get("singleton_backend_class")
    if backend is not None and backend != REDIS_BACKEND:
        if ours:  # the app's other tasks, its workers and the once command go on with this library's settings
            raise ValueError(f"{task_name}: app.conf.singleton_backend_class is {backend!r}: only celery-singleton's "
                             f"Redis backend ({REDIS_BACKEND}) maps to this library's lock store, a Redis server")
        return {}
    if ours and conf.get("singleton_json_encoder_class") is not None:
        raise ValueError(f"{task_name}: app.conf.singleton_json_encoder_class cannot be mapped: the key is made of "
                         "the arguments' canonical form; override lock_arguments to key on values that have one")
    read: dict[str, Any] = {}
    url = conf.get("singleton_backend_url")
    if url is not None:
        read["redis_url"] = validate("redis_url", url, label="app.conf.singleton_backend_url")
    elif "redis_url" not in values and (ours or _has_singletons(app)):
        # celery-singleton's fallback: the result backend's Redis, else the broker's. For an app with Singleton
        # tasks only -- all of its tasks, its workers' heartbeats and the once command, so that they agree.
        for name in ("result_backend", "broker_url"):
            candidate = conf.get(name)
            if isinstance(candidate, str) and candidate.startswith(("redis://", "rediss://")):
                read["redis_url"] = validate("redis_url", candidate, label=f"app.conf.{name}")
                break
    prefix = conf.get("singleton_key_prefix")
    if prefix is not None:
        read["key_prefix"] = validate("key_prefix", prefix, label="app.conf.singleton_key_prefix")
    options = conf.get("singleton_backend_kwargs")
    if options:
        read["redis_options"] = validate("redis_options", options, label="app.conf.singleton_backend_kwargs")
    expiry = conf.get("singleton_lock_expiry")
    if ours and expiry is not None:
        read["queue_lock_timeout"] = validate("queue_lock_timeout", expiry, label="app.conf.singleton_lock_expiry")
    return read


def _has_singletons(app: Optional[CeleryApp]) -> bool:
    return any(getattr(task, "__celery_singleton__", False) for task in registered_tasks(app))


add_conf_reader("celery_singleton", CONF_NAMES, read_singleton_conf)
