"""Settings: their defaults, validation, ``configure()`` and where each value comes from.

One value of each setting is resolved, for every lock operation, in this order:

1. the task's own option (``queue_lock_timeout``, ``running_lock_timeout``,
   ``running_lock_conflict``, ``queue_lock_conflict``,
   ``redelivery_guard_timeout``, passed to the task decorator or set on a
   ``OnceTask`` subclass);
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

from .store import connection

DEFAULT_REDIS_URL = "redis://localhost:6379/3"
DEFAULT_QUEUE_LOCK_TIMEOUT = 3600
DEFAULT_RUNNING_LOCK_TIMEOUT = 3600
DEFAULT_FAIL_OPEN = False
DEFAULT_HEARTBEAT_TIMEOUT = 30
#: The Redis broker's default visibility_timeout: how late a redelivery comes there.
DEFAULT_REDELIVERY_GUARD_TIMEOUT = 3600
#: What an execution that meets a running copy of its call gets.
RUNNING_LOCK_CONFLICTS = ("reject", "wait")
#: What a call that meets a queued copy of itself gets.
QUEUE_LOCK_CONFLICTS = ("drop", "existing", "raise")
DEFAULT_RUNNING_LOCK_CONFLICT = "reject"
DEFAULT_QUEUE_LOCK_CONFLICT = "drop"

#: Setting name -> name in the Celery app's configuration (``once_`` and the name). Django's
#: ``CELERY_ONCE_`` spelling of each (``django.DJANGO_SETTINGS``) is made from these names.
APP_CONF_NAMES = {
    "redis_url": "once_redis_url",
    "queue_lock_timeout": "once_queue_lock_timeout",
    "running_lock_timeout": "once_running_lock_timeout",
    "fail_open": "once_fail_open",
    "heartbeat_timeout": "once_heartbeat_timeout",
    "running_lock_conflict": "once_running_lock_conflict",
    "queue_lock_conflict": "once_queue_lock_conflict",
    "redis_options": "once_redis_options",
    "redelivery_guard_timeout": "once_redelivery_guard_timeout",
    "debounce": "once_debounce",
    "debounce_max": "once_debounce_max",
}

#: Settings a task may set for itself (decorator keyword or subclass attribute).
TASK_OPTIONS = (
    "queue_lock_timeout", "running_lock_timeout", "running_lock_conflict", "queue_lock_conflict",
    "redelivery_guard_timeout", "debounce", "debounce_max",
)


@dataclass(frozen=True)
class Settings:
    """The settings in force for one lock operation."""

    redis_url: str = DEFAULT_REDIS_URL
    queue_lock_timeout: int = DEFAULT_QUEUE_LOCK_TIMEOUT
    running_lock_timeout: int = DEFAULT_RUNNING_LOCK_TIMEOUT
    #: Publish and run without a lock (with a warning) when Redis is unreachable.
    fail_open: bool = DEFAULT_FAIL_OPEN
    #: Seconds without a heartbeat after which a worker is gone and its running locks are free.
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
    running_lock_conflict: str = DEFAULT_RUNNING_LOCK_CONFLICT
    queue_lock_conflict: str = DEFAULT_QUEUE_LOCK_CONFLICT
    #: The lock client's extra keyword arguments (see ``connection``).
    redis_options: Mapping[str, Any] = field(default_factory=dict)
    #: Seconds a finished execution is remembered, so that a copy of its message delivered again does not run.
    redelivery_guard_timeout: int = DEFAULT_REDELIVERY_GUARD_TIMEOUT
    #: Seconds apart that calls of one key form a burst, run once after it (see ``debounce``); None: off.
    debounce: Optional[float] = None
    #: The longest a burst may put its execution off, from its first call; None: no bound.
    debounce_max: Optional[float] = None

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: never show a password.
        return (
            f"Settings(redis_url={connection.redact_url(self.redis_url)!r}, "
            f"queue_lock_timeout={self.queue_lock_timeout!r}, running_lock_timeout={self.running_lock_timeout!r}, "
            f"fail_open={self.fail_open!r}, heartbeat_timeout={self.heartbeat_timeout!r}, "
            f"running_lock_conflict={self.running_lock_conflict!r}, queue_lock_conflict={self.queue_lock_conflict!r}, "
            f"redis_options={connection.redact_options(self.redis_options)!r}, "
            f"redelivery_guard_timeout={self.redelivery_guard_timeout!r}, debounce={self.debounce!r}, "
            f"debounce_max={self.debounce_max!r})"
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
    if name in ("queue_lock_timeout", "running_lock_timeout", "heartbeat_timeout", "redelivery_guard_timeout"):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{label} must be a positive integer number of seconds, got {value!r}")
        return value
    if name in ("debounce", "debounce_max"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10**7:
            raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        return value
    if name in ("running_lock_conflict", "queue_lock_conflict"):
        choices = RUNNING_LOCK_CONFLICTS if name == "running_lock_conflict" else QUEUE_LOCK_CONFLICTS
        if value not in choices:
            raise ValueError(f"{label} must be one of {', '.join(map(repr, choices))}, got {value!r}")
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
        self._integration: Optional[Callable[[], Mapping[str, Any]]] = None
        #: Bumped by every change here and by ``settings_changed()``: settings resolved before are stale.
        self.generation = 0

    @property
    def integration(self) -> Optional[Callable[[], Mapping[str, Any]]]:
        return self._integration

    @integration.setter
    def integration(self, source: Optional[Callable[[], Mapping[str, Any]]]) -> None:
        with self._lock:
            self._integration = source
            self.generation += 1

    def update(self, values: Mapping[str, Any]) -> None:
        with self._lock:
            self._values = {**self._values, **values}
            self.generation += 1

    def reset(self) -> None:
        with self._lock:
            self._values = {}
            self._integration = None
            self.generation += 1

    def changed(self) -> None:
        with self._lock:
            self.generation += 1

    def values(self) -> Mapping[str, Any]:
        return self._values


_configured = _Configured()


def configure(
    redis_url: str | None = None,
    queue_lock_timeout: int | None = None,
    running_lock_timeout: int | None = None,
    *,
    fail_open: bool | None = None,
    heartbeat_timeout: int | None = None,
    running_lock_conflict: str | None = None,
    queue_lock_conflict: str | None = None,
    redis_options: Mapping[str, Any] | None = None,
    redelivery_guard_timeout: int | None = None,
    debounce: float | None = None,
    debounce_max: float | None = None,
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
        "heartbeat_timeout": heartbeat_timeout,
        "running_lock_conflict": running_lock_conflict,
        "queue_lock_conflict": queue_lock_conflict,
        "redis_options": redis_options,
        "redelivery_guard_timeout": redelivery_guard_timeout,
        "debounce": debounce,
        "debounce_max": debounce_max,
    }
    _configured.update({name: validate(name, value) for name, value in given.items() if value is not None})


def reset_configuration() -> None:
    """Forget everything ``configure()`` and integrations set (for tests)."""
    _configured.reset()


def set_integration_source(source: Optional[Callable[[], Mapping[str, Any]]]) -> None:
    """Register a callable that returns a framework's settings when a lock is needed."""
    _configured.integration = source


def settings_changed() -> None:
    """Tell the library that a framework's settings changed (Django's ``setting_changed``)."""
    _configured.changed()


def resolve(app: Any = None, task: Any = None) -> Settings:
    """The settings in force for ``task`` of ``app``, by the precedence above.

    Kept on the task between calls while nothing it depends on has changed:
    ``configure()``, the integration's settings (``settings_changed()``), and
    the ``once_*`` values set on the app's configuration. Resolving them again
    on every call would cost more than the lock's round trip does.
    """
    return _kept(app, task)[0]


def for_publish(app: Any, task: Any) -> tuple[Settings, bool]:
    """The settings of ``task`` and Celery's ``task_always_eager``, kept together (asked on every call)."""
    return _kept(app, task)


def _kept(app: Any, task: Any) -> tuple[Settings, bool]:
    conf: Any = getattr(app, "conf", None)
    maps = getattr(conf, "maps", None)
    if not maps or task is None:  # nothing to tell a change by: resolved every time
        return _resolve(conf, task), bool(conf is not None and conf.get("task_always_eager"))
    # What can change while the process runs: configure() and the integration
    # (the generation), which conf, and the values set on it (app.conf.x = ...
    # goes to its first map).
    fingerprint = (_configured.generation, id(conf), len(maps), *map(maps[0].get, _FINGERPRINTED))
    cached = getattr(task, "_once_resolved", None)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]  # type: ignore[no-any-return]
    kept = (_resolve(conf, task), bool(conf.get("task_always_eager")))
    task._once_resolved = (fingerprint, kept)
    return kept


#: The app.conf names whose values a task's kept settings depend on.
_FINGERPRINTED = ("task_always_eager", *APP_CONF_NAMES.values())


def _resolve(conf: Any, task: Any) -> Settings:
    values: dict[str, Any] = {}
    integration = _configured.integration
    if integration is not None:
        values.update(integration())
    values.update(_configured.values())
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
        for name in TASK_OPTIONS:
            value = getattr(task, name, None)
            if value is not None:
                values[name] = validate(name, value, label=f"{task.name}.{name}")
    debounce, most = values.get("debounce"), values.get("debounce_max")
    if debounce and most and most < debounce:
        where = getattr(task, "name", "the configuration")
        raise ValueError(f"{where}: debounce_max ({most!r}) must be at least debounce ({debounce!r})")
    return Settings(**values)
