"""What an option may be: the kinds of value a setting takes, and the combinations of options that make no sense.

``SettingSpec`` declares one setting (``settings_table.SETTINGS`` is the
table of them) and validates a value by its kind. ``check_combination``
refuses the options that contradict each other, with a ``ValueError`` naming
the task (or the configuration) and both options; it is asked where a task is
defined (its own options), where a task's settings are resolved (what is in
force), and at a call made with ``once={...}`` (that call's options). Why
each combination is refused is said where it is, and in docs/policies.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from .store import connection

#: The kinds of value a setting takes; each has its validation and error message (``SettingSpec.check``).
#: ``None`` is never validated: at every level it means "not set", so a ``None`` default means off.
Kind = Literal["url", "options", "int_seconds", "seconds", "choice", "bool", "name"]

#: The longest ``key_prefix`` or ``lock_name``: a part of every key, kept short.
MAX_NAME = 100


@dataclass(frozen=True)
class SettingSpec:
    """One setting, declared once: everything the library knows of it."""

    name: str
    default: object
    kind: Kind
    #: One line: what the setting means (``configure()``'s and ``OnceTask``'s docstrings begin with it).
    doc: str
    #: A task may set it for itself, as a decorator keyword or a ``OnceTask`` attribute.
    task_option: bool = False
    #: The values of a ``"choice"`` setting.
    choices: tuple[str, ...] = ()
    #: How a secret setting is shown in ``Settings``' repr; ``None``: as it is.
    redact: Optional[Callable[[Any], Any]] = None

    @property
    def conf_name(self) -> str:
        """The name in the Celery app's configuration: ``once_<name>``."""
        return f"once_{self.name}"

    @property
    def django_name(self) -> str:
        """The name in Django's settings: ``CELERY_ONCE_<NAME>``."""
        return f"CELERY_ONCE_{self.name.upper()}"

    def check(self, value: Any, label: str) -> Any:
        """``value`` (a ``dict`` for ``"options"``) if it is valid here, else a ``ValueError`` naming ``label``."""
        kind = self.kind
        if kind == "url":
            # The master name of a sentinel:// URL comes from redis_options: checked with it when a client is made.
            connection.parse_url(value, {"master_name": "-"}, label=label)
        elif kind == "options":
            if not isinstance(value, Mapping):
                # The type only: the value may hold a password.
                got = f"a {type(value).__name__}"
            else:
                odd = next((key for key in value if not isinstance(key, str)), None)
                if odd is None:
                    return dict(value)
                got = f"a mapping with the key {odd!r} ({type(odd).__name__}), which is no argument name"
            raise ValueError(f"{label} must be a mapping of the Redis client's keyword arguments (names as str: "
                             f"{{\"socket_timeout\": 1.0}}), got {got}")
        elif kind == "int_seconds":
            # bool is an int to Python, never a number of seconds to anyone.
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{label} must be a positive integer number of seconds, got {value!r}")
        elif kind == "seconds":
            # Bounded above: NaN and infinity fail the comparison, and so does a wait of over 115 days.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10**7:
                raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        elif kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{label} must be one of {', '.join(map(repr, self.choices))}, got {value!r}")
        elif kind == "name":
            check_name(value, label, colon=False)
        elif not isinstance(value, bool):  # "bool"
            raise ValueError(f"{label} must be True or False, got {value!r}")
        return value

    def shown(self, value: object) -> object:
        return value if self.redact is None else self.redact(value)


def check_name(value: Any, label: str, *, colon: bool = True) -> str:
    """``value`` if it may stand in every key the library writes (a ``lock_name``; without ``colon``, a ``key_prefix``).

    Braces would make a Redis Cluster hash tag of it, and whitespace or
    control characters make keys an operator cannot type. A prefix has no
    colon: "app" and "app:billing" would otherwise spell some keys alike.
    """
    if (not isinstance(value, str) or not value or len(value) > MAX_NAME or "{" in value or "}" in value
            or not value.isprintable() or any(character.isspace() for character in value)
            or (not colon and ":" in value)):
        raise ValueError(f"{label} must be a text of 1 to {MAX_NAME} printable characters, without braces or "
                         f"whitespace{'' if colon else ' or colons'}, got {value!r}")
    return value


def check_combination(values: Mapping[str, Any], label: str) -> None:
    """Refuse options that contradict each other: a ``ValueError`` naming ``label`` and both options.

    ``values`` holds the options known where it is asked; an option absent
    (or ``None``) is not known there yet -- a setting a task leaves to the
    configuration, at its definition -- and refuses nothing. ``queue_lock``
    and ``running_lock`` default to on, ``running_limit`` to 1.
    """
    until = values.get("queue_lock_until")
    unique_for = values.get("unique_for")
    conflict = values.get("queue_lock_conflict")
    waits = values.get("running_lock_conflict") == "wait"
    limit = values.get("running_limit") or 1
    debounced = values.get("debounce") is not None

    def refuse(first: str, second: str, why: str) -> None:
        raise ValueError(f"{label}: {first} cannot be used with {second}: {why}")

    if until == "end":
        # The queue lock is what holds the key until the run ends.
        if values.get("queue_lock") is False:
            refuse('queue_lock_until="end"', "queue_lock=False", "it keeps the call's queue lock until its run ends")
        # Held as the run's lease, renewed and released with its running lock (or slot).
        if values.get("running_lock") is False:
            refuse('queue_lock_until="end"', "running_lock=False",
                   "the queue lock is held as the run's lease, renewed and released with its running lock")
        if waits:
            refuse('queue_lock_until="end"', 'running_lock_conflict="wait"',
                   '"wait" runs a call made during a run after it, "end" makes that call a duplicate')
        if limit > 1:
            refuse('queue_lock_until="end"', f"running_limit={limit}",
                   '"end" lets one call of a key in at a time, so no second execution of it ever starts')
    if unique_for is not None and waits:
        refuse("unique_for", 'running_lock_conflict="wait"',
               '"wait" follows every call with an execution, unique_for drops the calls made within its window')
    if conflict == "replace":
        if values.get("queue_lock") is False:
            refuse('queue_lock_conflict="replace"', "queue_lock=False",
                   "only a call that met a queued call's queue lock has arguments to replace")
        if values.get("running_lock") is False:
            refuse('queue_lock_conflict="replace"', "running_lock=False",
                   "the arguments a call runs with are kept until its run ends, which its running lock marks")
    if debounced:
        # A debounced call takes no queue lock: its burst takes the queue lock's place.
        for option, given in (('queue_lock_until="end"', until == "end"), ("unique_for", unique_for is not None),
                              ('queue_lock_conflict="replace"', conflict == "replace")):
            if given:
                refuse(option, "debounce", "a debounced call takes no queue lock: its burst takes its place, and "
                                           "runs with the burst's last arguments")
