"""Settings: their defaults, validation, ``configure()`` and where each value comes from.

One value of each setting is resolved, for every lock operation, in this order:

1. the task's own attribute (``queue_lock_timeout``/``running_lock_timeout``
   passed to the task decorator or set on a ``OnceTask`` subclass);
2. the Celery app's configuration (``app.conf.once_redis_url`` ...; Django
   projects that load settings with ``namespace="CELERY"`` get
   ``CELERY_ONCE_REDIS_URL`` ... here);
3. ``configure()``;
4. the settings of a framework integration (Django's ``CELERY_ONCE_*``, read
   when a lock is needed, never at import);
5. the defaults.

Nothing is read at import time, so the order in which modules are imported
cannot change which value wins.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from . import connection

DEFAULT_REDIS_URL = "redis://localhost:6379/3"
DEFAULT_QUEUE_LOCK_TIMEOUT = 3600
DEFAULT_RUNNING_LOCK_TIMEOUT = 3600
DEFAULT_FAIL_OPEN = False

#: Setting name -> name in the Celery app's configuration.
APP_CONF_NAMES = {
    "redis_url": "once_redis_url",
    "queue_lock_timeout": "once_queue_lock_timeout",
    "running_lock_timeout": "once_running_lock_timeout",
    "fail_open": "once_fail_open",
    "redis_options": "once_redis_options",
}


@dataclass(frozen=True)
class Settings:
    """The settings in force for one lock operation."""

    redis_url: str = DEFAULT_REDIS_URL
    queue_lock_timeout: int = DEFAULT_QUEUE_LOCK_TIMEOUT
    running_lock_timeout: int = DEFAULT_RUNNING_LOCK_TIMEOUT
    #: Publish and run without a lock (with a warning) when Redis is unreachable.
    fail_open: bool = DEFAULT_FAIL_OPEN
    #: The lock client's extra keyword arguments (see ``connection``).
    redis_options: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: never show a password.
        return (
            f"Settings(redis_url={connection.redact_url(self.redis_url)!r}, "
            f"queue_lock_timeout={self.queue_lock_timeout!r}, running_lock_timeout={self.running_lock_timeout!r}, "
            f"fail_open={self.fail_open!r}, redis_options={connection.redact_options(self.redis_options)!r})"
        )


def validate(name: str, value: Any, *, label: str | None = None) -> Any:
    """Return ``value`` if it is a valid value of setting ``name``, else raise ValueError.

    ``label`` is how the setting is spelled where the user set it
    (``CELERY_ONCE_REDIS_URL``, ``app.conf.once_redis_url``).
    """
    label = label or name
    if name == "redis_url":
        # The master name of a sentinel:// URL comes from redis_options: checked with it when a client is made.
        connection.parse_url(value, {"master_name": "-"}, label=label)
        return value
    if name == "redis_options":
        if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
            raise ValueError(f"{label} must be a dict of keyword arguments for the Redis client, got {type(value)}")
        return dict(value)
    if name in ("queue_lock_timeout", "running_lock_timeout"):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{label} must be a positive integer number of seconds, got {value!r}")
        return value
    if name == "fail_open":
        if not isinstance(value, bool):
            raise ValueError(f"{label} must be True or False, got {value!r}")
        return value
    raise ValueError(f"unknown setting {label!r}")


class _Configured:
    """What ``configure()`` and a framework integration have set, shared by all threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self.integration: Optional[Callable[[], Mapping[str, Any]]] = None

    def update(self, values: Mapping[str, Any]) -> None:
        with self._lock:
            self._values = {**self._values, **values}

    def reset(self) -> None:
        with self._lock:
            self._values = {}
            self.integration = None

    def values(self) -> Mapping[str, Any]:
        return self._values


_configured = _Configured()


def configure(
    redis_url: str | None = None,
    queue_lock_timeout: int | None = None,
    running_lock_timeout: int | None = None,
    *,
    fail_open: bool | None = None,
    redis_options: Mapping[str, Any] | None = None,
) -> None:
    """Set the process-wide configuration; only the arguments given change.

    Every value is validated here, so a mistake fails at start-up with a
    ``ValueError`` that names the setting. A later call takes effect from the
    next lock operation on.
    """
    given = {
        "redis_url": redis_url,
        "queue_lock_timeout": queue_lock_timeout,
        "running_lock_timeout": running_lock_timeout,
        "fail_open": fail_open,
        "redis_options": redis_options,
    }
    _configured.update({name: validate(name, value) for name, value in given.items() if value is not None})


def reset_configuration() -> None:
    """Forget everything ``configure()`` and integrations set (for tests)."""
    _configured.reset()


def set_integration_source(source: Optional[Callable[[], Mapping[str, Any]]]) -> None:
    """Register a callable that returns a framework's settings when a lock is needed."""
    _configured.integration = source


def resolve(app: Any = None, task: Any = None) -> Settings:
    """The settings in force for ``task`` of ``app``, by the precedence above."""
    values: dict[str, Any] = {}
    integration = _configured.integration
    if integration is not None:
        values.update(integration())
    values.update(_configured.values())
    conf = getattr(app, "conf", None)
    if conf is not None:
        for name, conf_name in APP_CONF_NAMES.items():
            # ``in`` first: these settings are usually absent, and Celery's
            # conf answers ``in`` for an absent key without raising and
            # catching a KeyError for every map and spelling of the key.
            if conf_name not in conf:
                continue
            value = conf.get(conf_name)
            if value is not None:
                values[name] = validate(name, value, label=f"app.conf.{conf_name}")
    if task is not None:
        for name in ("queue_lock_timeout", "running_lock_timeout"):
            value = getattr(task, name, None)
            if value is not None:
                values[name] = validate(name, value, label=f"{task.name}.{name}")
    return Settings(**values)
