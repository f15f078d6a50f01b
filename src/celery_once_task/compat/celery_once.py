"""A drop-in for celery_once: ``QueueOnce`` and ``AlreadyQueued``; a project changes its imports only::

    from celery_once_task.compat.celery_once import AlreadyQueued, QueueOnce

    @app.task(base=QueueOnce, once={"keys": ["order_id"], "graceful": True})
    def send_invoice(order_id, month): ...

celery_once's options, as this library's (docs/migrating.md):

* a duplicate call raises ``AlreadyQueued`` (``queue_lock_conflict="raise"``,
  turned into celery_once's exception) while the call is queued *and* while
  it runs (``queue_lock_until="end"``); its ``countdown`` is the seconds
  until the key's lock expires, read from the store -- while the call runs,
  the lease its worker renews;
* ``graceful``: the duplicate gets an ``EagerResult`` in state ``REJECTED``;
* ``keys``: ``lock_args``; ``timeout``: ``queue_lock_timeout``;
* ``unlock_before_run``: the key is free from the start of the run
  (``queue_lock_until="pickup"``); a call made during the run is queued and
  runs after it (``running_lock_conflict="wait"``), never beside it.

``once`` is celery_once's, on the task and at ``apply_async(once=...)``
(``graceful``, ``timeout``); a call may give this library's own per-call
options in it too (``call_options.PER_CALL``).

``app.conf.ONCE = {"backend": ..., "settings": {"url": ..., "default_timeout": ...}}``
is read where present: ``url`` is the lock store (``redis_url``, for the whole
app: its workers' heartbeats live there too), ``default_timeout`` the
``queue_lock_timeout`` of ``QueueOnce`` tasks that give no ``timeout``. This
library's own spellings (``app.conf.once_redis_url`` ...) win over them. Only
celery_once's Redis backend maps to a lock store; another is a ``ValueError``
at a ``QueueOnce`` task's first call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from celery import states
from celery.result import AsyncResult, EagerResult
from kombu.messaging import Producer
from redis.exceptions import RedisError

from ..call_options import PER_CALL
from ..errors import OnceTaskDuplicate, OnceTaskError
from ..protocols import AppConf, CeleryApp
from ..publish import Links
from ..settings import add_conf_reader
from ..settings_table import QueueLockConflict, QueueLockUntil, validate
from ..store import store_for
from ..task import OnceTask

__all__ = ["AlreadyQueued", "QueueOnce"]

#: The options of celery_once's ``once``.
OPTIONS = ("keys", "graceful", "timeout", "unlock_before_run")
#: celery_once's Redis backend, as ``app.conf.ONCE["backend"]`` names it.
REDIS_BACKENDS = ("celery_once.backends.Redis", "celery_once.backends.redis.Redis")
#: The keys of celery_once's Redis backend settings this library reads, or accepts as they are.
_SETTINGS = ("url", "default_timeout", "blocking", "blocking_timeout")


class AlreadyQueued(OnceTaskError):
    """A call met a queued or running copy of itself: celery_once's exception, with its ``countdown`` and ``message``.

    Args:
        countdown: Seconds until the key's lock expires (while the call runs, the lease its worker renews).

    Attributes:
        countdown (float): Seconds until the key's lock expires.
        message (str): ``"Expires in {countdown} seconds"``.
    """

    def __init__(self, countdown: float) -> None:
        super().__init__(countdown)
        self.countdown = countdown
        self.message = f"Expires in {countdown} seconds"

    def __str__(self) -> str:
        return self.message


class QueueOnce(OnceTask):
    """celery_once's ``QueueOnce``: a duplicate call raises ``AlreadyQueued`` until the call's run ends.

    Attributes:
        once: celery_once's options: ``keys`` (the arguments of the key), ``graceful`` (a duplicate gets an
            ``EagerResult`` in state ``REJECTED``), ``timeout`` (seconds a queued call keeps the key),
            ``unlock_before_run`` (the key is free from the start of the run).
    """

    once: Mapping[str, Any] = {"graceful": False, "unlock_before_run": False}
    queue_lock_until: Optional[QueueLockUntil] = "end"
    #: Turned into ``AlreadyQueued``, or ``graceful``'s result.
    queue_lock_conflict: Optional[QueueLockConflict] = "raise"

    #: Lets the reader of ``app.conf.ONCE`` tell these tasks, without importing this module.
    __celery_once__ = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Set this library's options from the task's ``once``, before ``OnceTask`` checks them."""
        once = cls.__dict__.get("once")
        if once is not None:
            label = cls.__dict__.get("name") or f"{cls.__module__}.{cls.__qualname__}"
            for option, value in task_options(once, label).items():
                setattr(cls, option, value)
        super().__init_subclass__(**kwargs)

    def unlock_before_run(self) -> bool:
        """Whether the key is free from the start of the run (celery_once's method)."""
        return bool(self.once.get("unlock_before_run", False))

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
        """Publish the call, as ``OnceTask.apply_async`` does; ``once`` holds celery_once's call options.

        Args:
            args: The positional arguments of the call.
            kwargs: The keyword arguments of the call.
            task_id: A task id fixed in advance; else a new one.
            producer: The kombu producer to publish with, as Celery takes it.
            link: The callbacks, as Celery takes them.
            link_error: The errbacks, as Celery takes them.
            shadow: The name the call is shown under, as Celery takes it.
            **options: Celery's publish options, and ``once``: ``graceful`` and ``timeout`` for this call (and
                this library's per-call options, if any).

        Returns:
            The call's ``AsyncResult``; with ``graceful``, a duplicate's ``EagerResult`` in state ``REJECTED``.

        Raises:
            AlreadyQueued: A duplicate: the same call is queued or running.
            ValueError: ``once`` names an option a call cannot set, or gives a bad value.
        """
        graceful, own = self._call_options(options.pop("once", None))
        if own:
            options["once"] = own
        try:
            return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)
        except OnceTaskDuplicate as duplicate:
            if graceful:
                return EagerResult(None, None, states.REJECTED)
            raise AlreadyQueued(self._countdown(duplicate.key)) from duplicate

    def _call_options(self, once: object) -> tuple[bool, dict[str, Any]]:
        """(graceful, this library's ``once``) of a call's celery_once ``once``."""
        graceful = bool(self.once.get("graceful", False))
        if once is None:
            return graceful, {}
        if not isinstance(once, Mapping):
            raise TypeError(f"{self.name}: once must be a dict of celery_once's options, got {type(once).__name__}")
        own: dict[str, Any] = {}
        for name, value in once.items():
            label = f"{self.name}: once[{name!r}]"
            if name == "graceful":
                graceful = _flag(value, label)
            elif name == "timeout":
                own["queue_lock_timeout"] = _seconds(value, label)
            elif name in OPTIONS:
                raise ValueError(f"{label} is an option of the task (its once=...), not of a call")
            elif name in PER_CALL:
                own[name] = value
            else:
                raise ValueError(f"{label} is not an option a call may set; those are graceful, timeout, and "
                                 f"{', '.join(PER_CALL)}")
        return graceful, own

    def _countdown(self, key: str) -> float:
        """Seconds until ``key`` expires, read from the store; ``queue_lock_timeout`` where it does not answer."""
        settings = self.once_settings()
        try:
            pttl = store_for(self, settings).client.pttl(key)
        except RedisError:
            return float(settings.queue_lock_timeout)
        return max(0.0, int(pttl) / 1000.0)


def task_options(once: object, label: str) -> dict[str, Any]:
    """This library's task options for celery_once's ``once`` of the task ``label``; ``ValueError`` naming a bad one."""
    if not isinstance(once, Mapping):
        raise ValueError(f"{label}: once must be a dict of celery_once's options ({', '.join(OPTIONS)}), got "
                         f"{type(once).__name__}")
    options: dict[str, Any] = {}
    for name, value in once.items():
        where = f"{label}: once[{name!r}]"
        if name == "keys":
            if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where} must be a list of argument names, got {value!r}")
            options["lock_args"] = list(value)
        elif name == "timeout":
            options["queue_lock_timeout"] = _seconds(value, where)
        elif name == "unlock_before_run":
            if _flag(value, where):
                options["queue_lock_until"] = "pickup"
                options["running_lock_conflict"] = "wait"
        elif name == "graceful":
            _flag(value, where)
        else:
            raise ValueError(f"{where} is not an option of celery_once's once; those are {', '.join(OPTIONS)}")
    return options


def _flag(value: object, label: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{label} must be True or False, got {value!r}")
    return value


def _seconds(value: object, label: str) -> int:
    """A timeout in whole seconds (celery_once took a float too: one with a fraction is rounded up)."""
    if isinstance(value, float) and math.isfinite(value) and value > 0:
        value = math.ceil(value)
    return int(validate("queue_lock_timeout", value, label=label))


def read_once_conf(app: Optional[CeleryApp], conf: AppConf, task: object,
                   values: Mapping[str, Any]) -> Mapping[str, Any]:
    """The settings ``app.conf.ONCE`` gives: the lock store of the app; the ``default_timeout`` of its tasks."""
    once = conf.get("ONCE")
    if once is None:
        return {}
    ours = getattr(task, "__celery_once__", False)
    task_name = getattr(task, "name", None)

    def refuse(why: str) -> Mapping[str, Any]:
        if ours:  # the app's other tasks, its workers and the once command go on with this library's settings
            raise ValueError(f"{task_name}: {why}")
        return {}

    if not isinstance(once, Mapping) or not isinstance(once.get("settings", {}), Mapping):
        return refuse(f"app.conf.ONCE must be a dict with a backend and a dict of settings, got {once!r}")
    backend = once.get("backend", REDIS_BACKENDS[0])
    if backend not in REDIS_BACKENDS:
        return refuse(f"app.conf.ONCE['backend'] is {backend!r}: only celery_once's Redis backend "
                      f"({REDIS_BACKENDS[0]}) maps to this library's lock store, a Redis server")
    settings: Mapping[str, Any] = once.get("settings", {})
    unknown = [name for name in settings if name not in _SETTINGS]
    if unknown:
        return refuse(f"app.conf.ONCE['settings'] has {', '.join(map(repr, unknown))}, which this library cannot "
                      f"map; it reads {', '.join(_SETTINGS)}")
    if settings.get("blocking"):
        return refuse("app.conf.ONCE['settings']['blocking'] cannot be mapped: a duplicate call never waits for "
                      "the lock here (running_lock_conflict=\"wait\" runs a duplicate execution after the first)")
    read: dict[str, Any] = {}
    url = settings.get("url")
    if url is not None:
        if isinstance(url, str) and url.startswith("redis+socket://"):  # celery_once's spelling of a socket
            url = "unix://" + url[len("redis+socket://"):]
        read["redis_url"] = validate("redis_url", url, label="app.conf.ONCE['settings']['url']")
    timeout = settings.get("default_timeout")
    if ours and timeout is not None:
        read["queue_lock_timeout"] = _seconds(timeout, "app.conf.ONCE['settings']['default_timeout']")
    return read


add_conf_reader("celery_once", ("ONCE",), read_once_conf)
