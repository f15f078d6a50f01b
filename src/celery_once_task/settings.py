"""Where each setting's value comes from, and which one wins: ``configure()``, the integrations, ``resolve()``.

The settings themselves -- their table, the types and defaults of their
values, ``Settings`` and validation -- are declared in ``settings_table``.
This module re-exports their public names: code outside the package imports
a setting's name, type or default from ``celery_once_task.settings``, beside
``configure()`` and ``resolve()``.

One value of each setting is resolved, for every lock operation, in this order:

1. the task's own option (a setting declared ``task_option``, passed to the
   task decorator or set on a ``OnceTask`` subclass);
2. the Celery app's configuration (``app.conf.once_redis_url`` ...; Django
   projects that load settings with ``namespace="CELERY"`` get
   ``CELERY_ONCE_REDIS_URL`` ... here), then what the readers of another
   library's configuration on the app make of it (``add_conf_reader``:
   ``compat``'s ``app.conf.ONCE``, ``singleton_*``);
3. ``configure()``;
4. the settings of a framework integration (Django's ``CELERY_ONCE_*``, read
   when a lock is needed, never at import);
5. the defaults.

Nothing is read at import time, so the order in which modules are imported
cannot change which value wins.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Callable, Optional

from . import telemetry as telemetry_
from .options import SettingSpec
from .protocols import AppConf, CeleryApp
from .settings_table import (
    APP_CONF_NAMES,
    DEFAULT_FAIL_OPEN,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_LEGACY_FORMATS,
    DEFAULT_QUEUE_LOCK_CONFLICT,
    DEFAULT_QUEUE_LOCK_TIMEOUT,
    DEFAULT_QUEUE_LOCK_UNTIL,
    DEFAULT_REDELIVERY_GUARD_TIMEOUT,
    DEFAULT_REDIS_URL,
    DEFAULT_RUNNING_LOCK_CONFLICT,
    DEFAULT_RUNNING_LOCK_TIMEOUT,
    DEFAULT_TELEMETRY,
    QUEUE_LOCK_CONFLICTS,
    QUEUE_LOCK_UNTIL,
    RUNNING_LOCK_CONFLICTS,
    SETTINGS,
    TASK_OPTIONS,
    QueueLockConflict,
    QueueLockUntil,
    RunningLockConflict,
    Settings,
    Telemetry,
    check_relations,
    validate,
)

__all__ = [
    "APP_CONF_NAMES", "DEFAULT_FAIL_OPEN", "DEFAULT_HEARTBEAT_TIMEOUT", "DEFAULT_LEGACY_FORMATS",
    "DEFAULT_QUEUE_LOCK_CONFLICT", "DEFAULT_QUEUE_LOCK_TIMEOUT", "DEFAULT_QUEUE_LOCK_UNTIL",
    "DEFAULT_REDELIVERY_GUARD_TIMEOUT", "DEFAULT_REDIS_URL", "DEFAULT_RUNNING_LOCK_CONFLICT",
    "DEFAULT_RUNNING_LOCK_TIMEOUT", "DEFAULT_TELEMETRY", "QUEUE_LOCK_CONFLICTS", "QUEUE_LOCK_UNTIL",
    "RUNNING_LOCK_CONFLICTS", "SETTINGS", "TASK_OPTIONS", "QueueLockConflict", "QueueLockUntil", "RunningLockConflict",
    "SettingSpec", "Settings", "check_relations", "configure", "configured", "for_publish", "reset_configuration",
    "resolve", "set_integration_source", "settings_changed", "validate",
]

#: ``configure()``'s arguments that are not settings: OpenTelemetry's providers, live objects of the process
#: handed to ``telemetry`` once -- never resolved per task, spelled in an app's or Django's settings, or shown.
CONFIGURE_ONLY = ("tracer_provider", "meter_provider")


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

    def swap(self, values: Mapping[str, Any]) -> Mapping[str, Any]:
        """Put ``values`` in place of everything configured; return what was."""
        with self._lock:
            before, self._values = self._values, dict(values)
            self.generation += 1
            return before

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
    redis_url: Optional[str] = None,
    queue_lock_timeout: Optional[int] = None,
    running_lock_timeout: Optional[int] = None,
    *,
    fail_open: Optional[bool] = None,
    heartbeat_timeout: Optional[int] = None,
    running_lock_conflict: Optional[RunningLockConflict] = None,
    queue_lock_conflict: Optional[QueueLockConflict] = None,
    redis_options: Optional[Mapping[str, Any]] = None,
    redelivery_guard_timeout: Optional[int] = None,
    debounce: Optional[float] = None,
    debounce_max: Optional[float] = None,
    queue_lock_until: Optional[QueueLockUntil] = None,
    unique_for: Optional[float] = None,
    key_prefix: Optional[str] = None,
    telemetry: Optional[Telemetry] = None,
    enabled: Optional[bool] = None,
    legacy_formats: Optional[bool] = None,
    tracer_provider: object = None,
    meter_provider: object = None,
) -> None:
    """Set the process-wide configuration; only the arguments given change.

    Every value is validated here, so a mistake fails at start-up with a
    ``ValueError`` that names the setting. A later call takes effect from the
    next lock operation on. An argument left ``None`` leaves its setting as it
    is.

    Args:
        redis_url: Where the locks live: a ``redis://``, ``rediss://``, ``unix://``, Sentinel or Cluster URL.
        queue_lock_timeout: Seconds a call whose message never starts keeps blocking its duplicates.
        running_lock_timeout: Seconds a running lock lasts where no worker's lease renews it.
        fail_open: Publish and run without a lock (with a warning) while Redis is unreachable.
        heartbeat_timeout: Seconds without a heartbeat after which a worker's running locks are free.
        running_lock_conflict: A duplicate execution fails (``"reject"``: ``OnceTaskLocked``) or runs after
            (``"wait"``).
        queue_lock_conflict: A duplicate call gets ``None`` (``"drop"``), the queued ``AsyncResult``
            (``"existing"``), ``OnceTaskDuplicate`` (``"raise"``), or replaces the queued call's arguments
            (``"replace"``).
        redis_options: The lock client's extra keyword arguments; they win over the URL's.
        redelivery_guard_timeout: Seconds a finished execution is remembered, so that its message delivered
            again does not run (default: what the app's broker needs).
        debounce: Calls of a key less than this many seconds apart form a burst, run once after it.
        debounce_max: The most seconds a burst may put its execution off, from its first call.
        queue_lock_until: A call is a duplicate of the same call until its execution starts (``"pickup"``) or ends
            (``"end"``).
        unique_for: Seconds from an accepted call during which the same call is a duplicate, whatever became of
            its execution.
        key_prefix: The start of every key the library writes: apps with different prefixes never see each
            other's keys.
        telemetry: Record each lock round trip as an OpenTelemetry span and in metrics: ``"on"``, ``"off"``, or
            ``"auto"`` (when ``opentelemetry-api`` is installed and a provider is set).
        enabled: Take locks at all; ``False`` makes every ``OnceTask`` a plain Celery task that never contacts
            the lock store (for tests).
        legacy_formats: Write running locks and finished records as the pre-release builds of 2.0 read them (a
            rolling deploy).
        tracer_provider: The OpenTelemetry ``TracerProvider`` the spans go to, instead of the global one.
        meter_provider: The OpenTelemetry ``MeterProvider`` the metrics go to, instead of the global one.

    Raises:
        ValueError: A value is not valid for its setting (the message names it); nothing changes then.
    """
    # Nothing but the parameters is bound yet, so these are exactly the settings and CONFIGURE_ONLY (a
    # test holds the signature to them); copied, as a frame's locals may change under iteration before
    # Python 3.13.
    given = dict(locals())
    providers = [given.pop(name) for name in CONFIGURE_ONLY]
    values = {name: validate(name, value) for name, value in given.items() if value is not None}
    # What configure() will hold must make sense together: refused here, not at the first lock operation.
    check_relations({**_configured.values(), **values}, "configure()")
    telemetry_.check_providers(*providers)
    _configured.update(values)
    # Whatever changed, the next lock operation decides again whether it records.
    telemetry_.reconfigure(*providers)


#: Reads another library's settings off a Celery app's configuration: ``(app, conf, task, values) -> settings``.
#: ``task``: the task resolved for (None: the app's own settings); ``values``: what ``configure()`` and the
#: integration set, so that a reader's fallback can stay below them. It validates what it returns (``validate``).
ConfReader = Callable[[Optional[CeleryApp], AppConf, object, Mapping[str, Any]], Mapping[str, Any]]

#: The readers added (``add_conf_reader``), by name, in the order they were added.
_conf_readers: tuple[tuple[str, ConfReader], ...] = ()


def add_conf_reader(name: str, conf_names: tuple[str, ...], reader: ConfReader) -> None:
    """Read another library's settings off every Celery app's configuration, below the app's ``once_*`` names.

    For ``compat``: a drop-in for another library adds one when it is
    imported, so that every process that defines its tasks -- producers,
    workers, the ``celery once`` command -- reads the same store from the
    same configuration. ``conf_names``: the names the reader looks at, so that
    settings kept on a task are resolved again when one of them changes. A
    second reader of one ``name`` is ignored.
    """
    global _conf_readers, _FINGERPRINTED
    if any(known == name for known, _ in _conf_readers):
        return
    _conf_readers = (*_conf_readers, (name, reader))
    _FINGERPRINTED = (*_FINGERPRINTED, *conf_names)
    _configured.changed()


def reset_configuration() -> None:
    """Forget everything ``configure()`` and integrations set (for tests)."""
    _configured.reset()
    telemetry_.reset()


@contextmanager
def configured(**values: Any) -> Iterator[None]:
    """``configure(**values)`` for the duration of a ``with`` block, then exactly what was configured before.

    For tests (``celery_once_task.testing``): a setting ``configure()`` had
    never been given is unset again afterwards, which ``configure()`` itself
    cannot do.
    """
    checked = {name: validate(name, value) for name, value in values.items() if value is not None}
    before = _configured.swap({**_configured.values(), **checked})
    telemetry_.reconfigure()
    try:
        yield
    finally:
        _configured.swap(before)
        telemetry_.reconfigure()


def set_integration_source(source: Optional[Callable[[], Mapping[str, Any]]]) -> None:
    """Register a callable that returns a framework's settings when a lock is needed."""
    _configured.integration = source


def settings_changed() -> None:
    """Tell the library that a framework's settings changed (Django's ``setting_changed``)."""
    _configured.changed()


def resolve(app: Optional[CeleryApp] = None, task: object = None) -> Settings:
    """The settings in force for ``task`` of ``app``, by the precedence above.

    Kept on the task between calls while nothing it depends on has changed:
    ``configure()``, the integration's settings (``settings_changed()``), and
    the ``once_*`` values set on the app's configuration. Resolving them again
    on every call would cost more than the lock's round trip does.
    """
    return _kept(app, task)[0]


def for_publish(app: CeleryApp, task: object) -> tuple[Settings, bool]:
    """The settings of ``task`` and Celery's ``task_always_eager``, kept together (asked on every call)."""
    return _kept(app, task)


def _kept(app: Optional[CeleryApp], task: object) -> tuple[Settings, bool]:
    conf: Optional[AppConf] = getattr(app, "conf", None)
    maps = getattr(conf, "maps", None)
    if not maps or task is None:  # nothing to tell a change by: resolved every time
        return _resolve(conf, task, app), bool(conf is not None and conf.get("task_always_eager"))
    # What can change while the process runs: configure() and the integration
    # (the generation), which conf, and the values set on it (app.conf.x = ...
    # goes to its first map).
    fingerprint = (_configured.generation, id(conf), len(maps), *map(maps[0].get, _FINGERPRINTED))
    cached = getattr(task, "_once_resolved", None)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]  # type: ignore[no-any-return]
    kept = (_resolve(conf, task, app), bool(conf is not None and conf.get("task_always_eager")))
    # On the task, which lives as long as the app: no registry of tasks to keep in step.
    setattr(task, "_once_resolved", (fingerprint, kept))  # noqa: B010
    # The task's telemetry setting may differ from what was decided before: look again.
    telemetry_.rearm()
    return kept


#: The app.conf names whose values a task's kept settings depend on.
_FINGERPRINTED = ("task_always_eager", *APP_CONF_NAMES.values())
#: What ``_resolve`` walks, made once: (name, app.conf name, spec) of each setting and task option.
_CONF_SPECS = tuple((spec.name, spec.conf_name, spec) for spec in SETTINGS)
_TASK_SPECS = tuple((spec.name, spec) for spec in SETTINGS if spec.task_option)


def _resolve(conf: Optional[AppConf], task: object, app: Optional[CeleryApp] = None) -> Settings:
    values: dict[str, Any] = {}
    integration = _configured.integration
    if integration is not None:
        values.update(integration())
    values.update(_configured.values())
    if conf is not None:
        for _, reader in _conf_readers:
            values.update(reader(app, conf, task, values))
        for name, conf_name, spec in _CONF_SPECS:
            # ``in`` first: these settings are usually absent, and Celery's
            # conf answers ``in`` for an absent key without raising and
            # catching a KeyError for every map and spelling of the key.
            if conf_name not in conf:
                continue
            value = conf.get(conf_name)
            if value is not None:
                values[name] = spec.check(value, f"app.conf.{conf_name}")
    if task is not None:
        for name, spec in _TASK_SPECS:
            value = getattr(task, name, None)
            if value is not None:
                values[name] = spec.check(value, f"{getattr(task, 'name', None)}.{name}")
    check_relations(values, getattr(task, "name", None) or "the configuration")
    return Settings(**values)
