"""The lock-key grammar: every key of the lock namespace, and how to read one back.

Every key starts with the ``key_prefix`` setting (``once_task`` by default),
a parameter of every function here: two apps with different prefixes never
meet. A call's keys are made of the name that stands for its task (its
``lock_name``, else its name) and the call's digest (``digest``)::

    {prefix}:{name}:{digest}:{queue|running|waiting}      a lock of its own
    {prefix}:{name}:{{digest}}:{slots|waiters|messages}   a limited key (``limits``)
    {prefix}:{name}:{{digest}}:burst                      a debounced key (``debounce``)
    {prefix}:{name}:{{digest}}:throttle                   a throttled key's log of starts (``throttle``)
    {prefix}:{{<queue key>}}:{unique|args}                a call's unique_for window, its replaced arguments

The braces are Redis Cluster hash tags: the keys one script touches share a
hash slot. The limited and debounced forms tag the digest; a window and the
replaced arguments tag their queue key whole, which is what Redis hashes of a
queue key (``keys`` refuses braces in a prefix or a lock name). Every other
module builds a key or a sibling of a key through this module, and reads one
back with ``parse_key``: nothing else slices key strings.

The library's other records -- finished records, heartbeats, parked messages
-- live outside ``{prefix}:*`` (``record_keys``); the ids written inside the
values of these keys are ``ids``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Protocol

from .hash_slots import slot_of, tag_of_slot
from .ids import SEPARATOR

__all__ = [
    "ARGUMENTS", "BURST", "CALL_KEY_TYPES", "KEY_PREFIX", "LOCK_TYPES", "MESSAGES", "QUEUE", "RUNNING", "SLOTS",
    "THROTTLE", "UNIQUE", "WAITERS", "WAITING", "KeyParts", "KeySpace", "companion_key", "key_space", "limited_key",
    "lock_key", "parse_key", "sibling",
]

#: The default ``key_prefix``.
KEY_PREFIX = "once_task"

#: A call's own locks (``lock_key``).
QUEUE = "queue"
RUNNING = "running"
#: The waiting copy of ``running_lock_conflict="wait"`` (see ``waiting``).
WAITING = "waiting"
#: The keys of a call whose task has a ``running_limit`` (see ``limits``): its slots, its line, their messages.
SLOTS = "slots"
WAITERS = "waiters"
MESSAGES = "messages"
#: A debounced call's burst (see ``debounce``).
BURST = "burst"
#: A throttled key's log of starts (see ``throttle``).
THROTTLE = "throttle"
#: A call's ``unique_for`` window, and the arguments duplicates replaced (see ``windows``, ``replace``).
UNIQUE = "unique"
ARGUMENTS = "args"

#: The lock types operators list and clear (``ops.locks``).
LOCK_TYPES = (QUEUE, RUNNING, SLOTS, BURST, UNIQUE, THROTTLE)
#: The lock types whose digest is a hash tag.
_TAGGED = frozenset((SLOTS, WAITERS, MESSAGES, BURST, THROTTLE))
#: The keys tagged with their call's queue key (``companion_key``).
_COMPANIONS = frozenset((UNIQUE, ARGUMENTS))
_TYPES = frozenset((QUEUE, RUNNING, WAITING, *_TAGGED))
#: Every type of key a call can have, each in the form it is written in (``KeySpace.of_type``).
CALL_KEY_TYPES = (QUEUE, RUNNING, WAITING, SLOTS, WAITERS, MESSAGES, BURST, UNIQUE, ARGUMENTS, THROTTLE)


def lock_key(task_name: str, digest: str, lock_type: str, prefix: str = KEY_PREFIX) -> str:
    """``{prefix}:{task_name}:{digest}:{lock_type}`` (``task_name``: the name that stands for the task)."""
    return f"{prefix}:{task_name}:{digest}:{lock_type}"


def limited_key(task_name: str, digest: str, lock_type: str, prefix: str = KEY_PREFIX) -> str:
    """``{prefix}:{task_name}:{{digest}}:{slots|waiters|messages|burst}``: a limited or debounced call's keys.

    The braces around the digest are a Redis Cluster hash tag: the slots, the
    line of waiting calls and the finished records of one call share a hash
    slot, so that one script can take a slot and hand free ones over.
    """
    return f"{prefix}:{task_name}:{{{digest}}}:{lock_type}"


def companion_key(queue_key: str, kind: str, prefix: str = KEY_PREFIX) -> str:
    """``{prefix}:{{<queue key>}}:{unique|args}``: a key kept beside a call's queue lock, in its hash slot.

    Redis Cluster hashes a queue key whole (it has no braces), and hashes
    this key by what its braces hold: the queue key. So one script can take
    the queue lock and the window, or replace the arguments of the call
    that holds it.
    """
    if "{" in queue_key or "}" in queue_key:
        # A task name with braces: Redis would hash the queue key by them, and
        # this key by the first pair it finds. A short tag of the queue key's
        # own slot comes first, and the whole queue key after it keeps the key
        # the call's own.
        return f"{prefix}:{{{tag_of_slot(slot_of(queue_key))}}}:{queue_key}:{kind}"
    return f"{prefix}:{{{queue_key}}}:{kind}"


class KeySpace(NamedTuple):
    """How one task's keys are spelled: the prefix, the name that stands for the task, who holds its locks.

    Attributes:
        prefix: The ``key_prefix`` in force.
        name: The task's ``lock_name``, else its name.
        holder_task: The task's name where its keys are named by a ``lock_name`` (written beside its task
            ids in its locks' values, so that operators see which task holds a shared key); else "".
    """

    prefix: str
    name: str
    holder_task: str

    def lock(self, digest: str, lock_type: str) -> str:
        return f"{self.prefix}:{self.name}:{digest}:{lock_type}"

    def limited(self, digest: str, lock_type: str) -> str:
        return f"{self.prefix}:{self.name}:{{{digest}}}:{lock_type}"

    def companion(self, digest: str, kind: str) -> str:
        return companion_key(self.lock(digest, QUEUE), kind, self.prefix)

    def of_type(self, digest: str, lock_type: str) -> str:
        """The call's key of ``lock_type`` in the form that type is written in; ``ValueError`` for any other type."""
        if lock_type in _TAGGED:
            return self.limited(digest, lock_type)
        if lock_type in _COMPANIONS:
            return self.companion(digest, lock_type)
        if lock_type in _TYPES:
            return self.lock(digest, lock_type)
        raise ValueError(f"{lock_type!r} is not a type of lock key: one of {', '.join(CALL_KEY_TYPES)}")

    def holder(self, task_id: str) -> str:
        """The value of a queue lock (or a window) ``task_id`` holds: ``ids.holder_value``."""
        return f"{task_id}{SEPARATOR}{self.holder_task}" if self.holder_task else task_id


class _Named(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def lock_name(self) -> Optional[str]: ...


class _Prefixed(Protocol):
    @property
    def key_prefix(self) -> str: ...


def key_space(task: _Named, settings: _Prefixed) -> KeySpace:
    """The key space of ``task`` under ``settings``: kept on the task while its settings stay the same object."""
    kept = getattr(task, "_once_keys", None)
    if kept is not None and kept[0] is settings:
        return kept[1]  # type: ignore[no-any-return]
    lock_name = task.lock_name
    space = KeySpace(settings.key_prefix, lock_name or task.name, task.name if lock_name else "")
    setattr(task, "_once_keys", (settings, space))  # noqa: B010 - on the task, which lives as long as its app
    return space


class KeyParts(NamedTuple):
    """What a lock key says: the task, the call's digest (without braces), the lock type."""

    task: str
    digest: str
    type: str


def parse_key(key: str, types: tuple[str, ...] = LOCK_TYPES, prefix: str = KEY_PREFIX) -> Optional[KeyParts]:
    """The parts of a lock key of one of ``types`` under ``prefix``, or None if ``key`` is not one.

    A window or replaced arguments (``companion_key``) reads as its queue
    key's task and digest, with its own type.
    """
    if not key.startswith(f"{prefix}:"):
        return None
    rest = key[len(prefix) + 1:]
    if rest.startswith("{"):
        queue_key, brace, kind = rest[1:].rpartition("}:")
        if brace and kind in _COMPANIONS and kind in types:
            queued = parse_key(queue_key, (QUEUE,), prefix)
            if queued is not None:
                return KeyParts(queued.task, queued.digest, kind)
    # The task name may itself contain ':', the digest and the type never do.
    parts = rest.rsplit(":", 2)
    if len(parts) != 3 or parts[2] not in types or not parts[0]:
        return None
    task, digest, lock_type = parts
    if lock_type in _TAGGED:
        if not (digest.startswith("{") and digest.endswith("}")):
            return None
        digest = digest[1:-1]
    return KeyParts(task, digest, lock_type)


def sibling(key: str, lock_type: str) -> str:
    """The key of the same call of another ``lock_type``: ``running`` -> ``waiting``, ``slots`` -> ``waiters``.

    Whatever the prefix: only the type changes, between types of one form
    (each tagged, or each not).
    """
    head, colon, kind = key.rpartition(":")
    if not colon or kind not in _TYPES or lock_type not in _TYPES or (kind in _TAGGED) != (lock_type in _TAGGED):
        raise ValueError(f"{key!r} is not a celery-once-task key of a type with a {lock_type} sibling")
    return f"{head}:{lock_type}"
