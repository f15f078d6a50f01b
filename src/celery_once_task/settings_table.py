"""Every setting, declared once: the table, the types and defaults of its values, ``Settings``, validation.

``SETTINGS`` is the one place a setting is declared: its name, default, kind
of value (which decides its validation and its error message), whether a task
may set it for itself, whether it is secret, and what it means. From it come
the ``once_*`` names of the Celery app's configuration, Django's
``CELERY_ONCE_*`` names (``django``), ``validate()``, ``configure()``,
``Settings``' repr and ``resolve()``. Where Python's typing needs a name
written out -- the ``Settings`` fields, ``configure()``'s keywords, the
``OnceTask`` options -- tests/test_settings.py holds it to the table.

Nothing here holds a value in force: where each value comes from, and which
one wins, is ``settings``, which re-exports the public names declared here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, get_args

from . import telemetry as telemetry_
from .keys import KEY_PREFIX
from .options import SettingSpec, check_combination
from .store import connection

__all__ = [
    "APP_CONF_NAMES", "DEFAULT_FAIL_OPEN", "DEFAULT_HEARTBEAT_TIMEOUT", "DEFAULT_LEGACY_FORMATS",
    "DEFAULT_QUEUE_LOCK_CONFLICT", "DEFAULT_QUEUE_LOCK_TIMEOUT", "DEFAULT_QUEUE_LOCK_UNTIL",
    "DEFAULT_REDELIVERY_GUARD_TIMEOUT", "DEFAULT_REDIS_URL", "DEFAULT_RUNNING_LOCK_CONFLICT",
    "DEFAULT_RUNNING_LOCK_TIMEOUT", "DEFAULT_TELEMETRY", "QUEUE_LOCK_CONFLICTS", "QUEUE_LOCK_UNTIL",
    "RUNNING_LOCK_CONFLICTS", "SETTINGS", "TASK_OPTIONS", "QueueLockConflict", "QueueLockUntil", "RunningLockConflict",
    "Settings", "Telemetry", "check_relations", "validate",
]

#: What an execution that meets a running copy of its call gets.
RunningLockConflict = Literal["reject", "wait"]
#: What a call that meets a queued copy of itself gets.
QueueLockConflict = Literal["drop", "existing", "raise", "replace"]
#: Until when a call's queue lock makes its duplicates: its execution's start, or its end.
QueueLockUntil = Literal["pickup", "end"]
#: Whether the lock operations are recorded with OpenTelemetry (see ``telemetry``).
Telemetry = telemetry_.Mode
RUNNING_LOCK_CONFLICTS: tuple[str, ...] = get_args(RunningLockConflict)
QUEUE_LOCK_CONFLICTS: tuple[str, ...] = get_args(QueueLockConflict)
QUEUE_LOCK_UNTIL: tuple[str, ...] = get_args(QueueLockUntil)

DEFAULT_REDIS_URL = "redis://localhost:6379/3"
DEFAULT_QUEUE_LOCK_TIMEOUT = 3600
DEFAULT_RUNNING_LOCK_TIMEOUT = 3600
DEFAULT_FAIL_OPEN = False
DEFAULT_HEARTBEAT_TIMEOUT = 30
#: None: the finished records are kept as long as the app's broker needs (``brokers``).
DEFAULT_REDELIVERY_GUARD_TIMEOUT: Optional[int] = None
DEFAULT_LEGACY_FORMATS = False
DEFAULT_RUNNING_LOCK_CONFLICT: RunningLockConflict = "reject"
DEFAULT_QUEUE_LOCK_CONFLICT: QueueLockConflict = "drop"
DEFAULT_QUEUE_LOCK_UNTIL: QueueLockUntil = "pickup"
DEFAULT_TELEMETRY: Telemetry = "auto"

#: Every setting, in the order of ``Settings``' fields (positional arguments, repr).
SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("redis_url", DEFAULT_REDIS_URL, "url", redact=connection.redact_url,
                doc="Where the locks live: a ``redis://``, ``rediss://``, ``unix://``, Sentinel or Cluster URL."),
    SettingSpec("queue_lock_timeout", DEFAULT_QUEUE_LOCK_TIMEOUT, "int_seconds", task_option=True,
                doc="Seconds a call whose message never starts keeps blocking its duplicates."),
    SettingSpec("running_lock_timeout", DEFAULT_RUNNING_LOCK_TIMEOUT, "int_seconds", task_option=True,
                doc="Seconds a running lock lasts where no worker's lease renews it."),
    SettingSpec("fail_open", DEFAULT_FAIL_OPEN, "bool",
                doc="Publish and run without a lock (with a warning) while Redis is unreachable."),
    SettingSpec("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT, "int_seconds",
                doc="Seconds without a heartbeat after which a worker's running locks are free."),
    SettingSpec("running_lock_conflict", DEFAULT_RUNNING_LOCK_CONFLICT, "choice", task_option=True,
                choices=RUNNING_LOCK_CONFLICTS,
                doc='A duplicate execution fails (``"reject"``: ``OnceTaskLocked``) or runs after (``"wait"``).'),
    SettingSpec("queue_lock_conflict", DEFAULT_QUEUE_LOCK_CONFLICT, "choice", task_option=True,
                choices=QUEUE_LOCK_CONFLICTS,
                doc='A duplicate call gets ``None`` (``"drop"``), the queued ``AsyncResult`` (``"existing"``), '
                    '``OnceTaskDuplicate`` (``"raise"``), or replaces the queued call\'s arguments (``"replace"``).'),
    SettingSpec("redis_options", {}, "options", redact=connection.redact_options,
                doc="The lock client's extra keyword arguments; they win over the URL's."),
    SettingSpec("redelivery_guard_timeout", DEFAULT_REDELIVERY_GUARD_TIMEOUT, "int_seconds", task_option=True,
                doc="Seconds a finished execution is remembered, so that its message delivered again does not run "
                    "(default: what the app's broker needs)."),
    SettingSpec("debounce", None, "seconds", task_option=True,
                doc="Calls of a key less than this many seconds apart form a burst, run once after it."),
    SettingSpec("debounce_max", None, "seconds", task_option=True,
                doc="The most seconds a burst may put its execution off, from its first call."),
    SettingSpec("queue_lock_until", DEFAULT_QUEUE_LOCK_UNTIL, "choice", task_option=True, choices=QUEUE_LOCK_UNTIL,
                doc='A call is a duplicate of the same call until its execution starts (``"pickup"``) or ends '
                    '(``"end"``).'),
    SettingSpec("unique_for", None, "seconds", task_option=True,
                doc="Seconds from an accepted call during which the same call is a duplicate, whatever became of its "
                    "execution."),
    SettingSpec("key_prefix", KEY_PREFIX, "name",
                doc="The start of every key the library writes: apps with different prefixes never see each other's "
                    "keys."),
    SettingSpec("telemetry", DEFAULT_TELEMETRY, "choice", choices=telemetry_.MODES,
                doc='Record each lock round trip as an OpenTelemetry span and in metrics: ``"on"``, ``"off"``, or '
                    '``"auto"`` (when ``opentelemetry-api`` is installed and a provider is set).'),
    SettingSpec("enabled", True, "bool",
                doc="Take locks at all; ``False`` makes every ``OnceTask`` a plain Celery task that never contacts "
                    "the lock store (for tests)."),
    SettingSpec("legacy_formats", DEFAULT_LEGACY_FORMATS, "bool",
                doc="Write running locks and finished records as the pre-release builds of 2.0 read them "
                    "(a rolling deploy)."),
)
_BY_NAME = {spec.name: spec for spec in SETTINGS}

#: Setting name -> name in the Celery app's configuration (``once_`` and the name).
APP_CONF_NAMES = {spec.name: spec.conf_name for spec in SETTINGS}

#: Settings a task may set for itself (decorator keyword or subclass attribute).
TASK_OPTIONS = tuple(spec.name for spec in SETTINGS if spec.task_option)


@dataclass(frozen=True)
class Settings:
    """The settings in force for one lock operation: a field for each of ``SETTINGS``, in its order."""

    redis_url: str = DEFAULT_REDIS_URL
    queue_lock_timeout: int = DEFAULT_QUEUE_LOCK_TIMEOUT
    running_lock_timeout: int = DEFAULT_RUNNING_LOCK_TIMEOUT
    fail_open: bool = DEFAULT_FAIL_OPEN
    heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT
    running_lock_conflict: RunningLockConflict = DEFAULT_RUNNING_LOCK_CONFLICT
    queue_lock_conflict: QueueLockConflict = DEFAULT_QUEUE_LOCK_CONFLICT
    redis_options: Mapping[str, Any] = field(default_factory=dict)
    redelivery_guard_timeout: Optional[int] = DEFAULT_REDELIVERY_GUARD_TIMEOUT
    debounce: Optional[float] = None
    debounce_max: Optional[float] = None
    queue_lock_until: QueueLockUntil = DEFAULT_QUEUE_LOCK_UNTIL
    unique_for: Optional[float] = None
    key_prefix: str = KEY_PREFIX
    telemetry: Telemetry = DEFAULT_TELEMETRY
    enabled: bool = True
    legacy_formats: bool = DEFAULT_LEGACY_FORMATS

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks: never show a password.
        shown = ", ".join(f"{spec.name}={spec.shown(getattr(self, spec.name))!r}" for spec in SETTINGS)
        return f"Settings({shown})"


def validate(name: str, value: Any, *, label: str | None = None) -> Any:
    """Return ``value`` if it is a valid value of setting ``name``, else raise ValueError.

    ``label`` is how the setting is spelled where the user set it
    (``CELERY_ONCE_REDIS_URL``, ``app.conf.once_redis_url``).
    """
    label = label or name
    spec = _BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"unknown setting {label!r}")
    return spec.check(value, label)


def check_relations(values: Mapping[str, Any], where: str) -> None:
    """Refuse settings that contradict each other (``debounce_max`` below ``debounce``, ...): a ``ValueError``.

    The settings in force only: the task-only options (queue_lock, running_limit ...) were checked with its own
    at its definition, and a default for every task is not refused for a task it does not concern.
    """
    debounce, most = values.get("debounce"), values.get("debounce_max")
    if debounce and most and most < debounce:
        raise ValueError(f"{where}: debounce_max ({most!r}) must be at least debounce ({debounce!r})")
    check_combination(values, where)
