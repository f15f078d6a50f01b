"""The key grammar: every key the library writes, how to read one back, and the ids inside values.

Every key starts with the ``key_prefix`` setting (``once_task`` by default),
a parameter of every function here: two apps with different prefixes never
meet. A call's keys are made of the name that stands for its task (its
``lock_name``, else its name) and the call's digest (``digest``)::

    {prefix}:{name}:{digest}:{queue|running|waiting}      a lock of its own
    {prefix}:{name}:{{digest}}:{slots|waiters|messages}   a limited key (``limits``)
    {prefix}:{name}:{{digest}}:burst                      a debounced key (``debounce``)
    {prefix}:{name}:{{digest}}:throttle                   a throttled key's log of starts (``throttle``)
    {prefix}:{{<queue key>}}:{unique|args}                a call's unique_for window, its replaced arguments
    {prefix}_done:{<slot tag>}<id>                         a finished record (``redelivery``)
    {prefix}_worker:{instance}                             a worker instance's heartbeat (``renewal``)
    {prefix}_parked:{{prefix}}:{entries|due}               the messages put off with a countdown (``parking``)
    {prefix}_parked:{{prefix}}:claimed:{task_id}           which copy of a put-off message was taken

The braces are Redis Cluster hash tags: the keys one script touches share a
hash slot. The limited and debounced forms tag the digest; a window and the
replaced arguments tag their queue key whole, which is what Redis hashes of a
queue key (``keys`` refuses braces in a prefix or a lock name). Every other
module builds a key, a sibling of a key, or an id stored in a value through
this module, and reads one back with ``parse_key``: nothing else slices key
strings.

Ids inside values use ``SEPARATOR`` (``\\x1f``), a character no task id,
digest or lock type contains:

* a queue lock's (and a window's) value is the holder's task id, followed,
  where the key is named by a ``lock_name``, by the separator and the
  holder's task name (``holder_value``);
* a waiting copy's entry is ``<task id>\\x1f<message>`` (``waiting_token``);
* a limited call's id is ``<task id>\\x1f<attempt>`` (``call_id``), and an
  entry of its line handed over is ``<call id>\\x1f<message>``.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import os
import string
from typing import NamedTuple, Optional, Protocol, Union

from .digest import (
    DIGEST_LENGTH,
    Select,
    call_digest,
    canonical_call,
    check_lock_args,
    signature_of,
    well_formed_digest,
)

__all__ = [
    "ARGUMENTS", "BURST", "CALL_KEY_TYPES", "DIGEST_LENGTH", "FINISHED_PREFIX", "KEY_PREFIX", "LOCK_TYPES", "MESSAGES",
    "QUEUE", "RUNNING", "SEPARATOR", "SLOTS", "THROTTLE", "UNIQUE", "WAITERS", "WAITING", "KeyParts", "KeySpace",
    "Select", "call_digest", "call_id", "canonical_call", "check_lock_args", "companion_key", "finished_key",
    "heartbeat_key", "heartbeat_pattern", "holder_id", "holder_value", "key_space", "legacy_finished_key",
    "limited_key", "lock_key", "new_task_id", "parked_claimed_key", "parked_keys", "parse_key", "short_tag_of_slot",
    "sibling", "signature_of", "slot_of", "split_call_id",
    "split_entry", "split_holder", "waiting_token", "well_formed_digest",
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

#: Between a task id and what follows it inside a value: no task id contains it.
SEPARATOR = "\x1f"

#: The finished records' prefix under the default ``key_prefix`` (see ``redelivery``): outside
#: ``once_task:*``, which holds locks only.
FINISHED_PREFIX = f"{KEY_PREFIX}_done"


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
        return f"{prefix}:{{{_tag_of_slot(slot_of(queue_key))}}}:{queue_key}:{kind}"
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
        """The value of a queue lock (or a window) ``task_id`` holds: ``holder_value``."""
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


def holder_value(task_id: str, task: str = "") -> str:
    """A queue lock's value: the holder's task id, and its task's name where ``task`` is given."""
    return f"{task_id}{SEPARATOR}{task}" if task else task_id


def split_holder(value: str) -> tuple[str, str]:
    """``(task id, task name or "")`` of a queue lock's (or a window's) value."""
    task_id, _, task = value.partition(SEPARATOR)
    return task_id, task


def holder_id(value: str) -> str:
    """The task id of a queue lock's (or a window's) value."""
    return value.partition(SEPARATOR)[0]


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


def waiting_token(task_id: str) -> str:
    """The prefix of a waiting copy's entry: its task id and the separator."""
    return f"{task_id}{SEPARATOR}"


def split_entry(value: str) -> tuple[str, str]:
    """``(task id or call id, message)`` of a waiting copy's entry or of a line's entry handed over.

    An entry of a line is ``<task id>\\x1f<attempt>\\x1f<message>``: its id is the call id.
    """
    first, _, rest = value.partition(SEPARATOR)
    return first, rest


def call_id(task_id: str, attempt: Union[int, str]) -> str:
    """A limited call's id in its key's line: one per attempt of a task id."""
    return f"{task_id}{SEPARATOR}{attempt}"


def split_call_id(ident: str) -> tuple[str, str]:
    """``(task id, attempt)`` of a call id, or of the start of a line's entry."""
    task_id, _, attempt = ident.partition(SEPARATOR)
    return task_id, attempt.partition(SEPARATOR)[0]


def new_task_id() -> str:
    """A random (version 4) UUID as text, as Celery's task ids are: ``str(uuid.uuid4())``, made in half the time."""
    bits = int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR | _UUID4_SET
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# The version (4, bits 76-79) and the RFC 4122 variant (bits 62-63), as uuid.UUID(version=4) sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)


def finished_key(running_key: str, task_id: str, call: str, prefix: str = KEY_PREFIX) -> str:
    """``{prefix}_done:{<tag>}<id>``: where an execution that held ``running_key`` records its end.

    ``<tag>``: the shortest alphanumeric text that Redis Cluster hashes to the
    running key's slot (one to three characters), so that one script can take
    the lock and read the record, or release it and write the record.
    ``<id>``: 60 bits of a BLAKE2b digest of the running key, the task id and
    the call (see ``redelivery``), in 12 base-36 digits: a new call made with a
    task id the caller fixed has a record of its own. Short, because a record
    is kept for every finished execution for ``redelivery_guard_timeout``.
    """
    digest = hashlib.blake2b(f"{running_key}{SEPARATOR}{task_id}{SEPARATOR}{call}".encode("utf-8", "surrogatepass"),
                             digest_size=8).digest()
    return f"{prefix}_done:{{{short_tag_of_slot(slot_of(running_key))}}}{_base36(int.from_bytes(digest, 'big') >> 4)}"


def legacy_finished_key(running_key: str, task_id: str, prefix: str = KEY_PREFIX) -> str:
    """``{prefix}_done:{<running key>}:{task_id}``: where pre-release builds of 2.0 recorded an execution's end.

    Still read by a pickup (a rolling deploy), and written with ``legacy_formats``. In the
    running key's slot: the braces hold the part of the running key that Redis hashes.
    """
    tag = _hashed_part(running_key)
    if "}" in tag:  # a task name with braces that make no hash tag: any tag of the same slot will do
        tag = _tag_of_slot(slot_of(running_key))
    return f"{prefix}_done:{{{tag}}}:{task_id}"


_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(number: int, width: int = 12) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits))


def heartbeat_key(instance: str, prefix: str = KEY_PREFIX) -> str:
    """``{prefix}_worker:{instance}``: the key a worker instance keeps alive while it runs (see ``renewal``)."""
    return f"{prefix}_worker:{instance}"


def parked_keys(prefix: str = KEY_PREFIX) -> tuple[str, str]:
    """``{prefix}_parked:{{prefix}}:entries`` and ``...:due``: the messages put off with a countdown (``parking``).

    One hash tag, the prefix, for every key of the registry: a script reads
    the entries and their due index together, on a Redis Cluster too.
    """
    return f"{prefix}_parked:{{{prefix}}}:entries", f"{prefix}_parked:{{{prefix}}}:due"


def parked_claimed_key(task_id: str, prefix: str = KEY_PREFIX) -> str:
    """``{prefix}_parked:{{prefix}}:claimed:{task_id}``: which copy of a put-off message was taken.

    In the registry's hash slot: the claim reads the entry and writes this in one script.
    """
    return f"{prefix}_parked:{{{prefix}}}:claimed:{task_id}"


def heartbeat_pattern(prefix: str = KEY_PREFIX) -> tuple[str, int]:
    """The start of every heartbeat key under ``prefix``, and its length (what precedes the instance)."""
    head = f"{prefix}_worker:"
    return head, len(head)


def slot_of(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16/XMODEM of its hashed part, modulo 16384)."""
    return binascii.crc_hqx(_hashed_part(key).encode("utf-8"), 0) % 16384


def _hashed_part(key: str) -> str:
    """What Redis Cluster hashes of a key: the first ``{...}`` with something inside, else the whole key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


_slot_tags: dict[int, str] = {}
#: The shortest alphanumeric text of each slot (``short_tag_of_slot``), made at its first use.
_short_tags: list[str] = []


def short_tag_of_slot(slot: int) -> str:
    """The shortest alphanumeric text that hashes to ``slot``: one to three characters cover all 16384 slots."""
    if not _short_tags:
        table: dict[int, str] = {}
        alphabet = string.digits + string.ascii_lowercase + string.ascii_uppercase
        for length in (1, 2, 3):  # about 0.1 s, once per process
            for letters in itertools.product(alphabet, repeat=length):
                candidate = "".join(letters)
                table.setdefault(binascii.crc_hqx(candidate.encode("ascii"), 0) % 16384, candidate)
        _short_tags.extend(table[index] for index in range(16384))
    return _short_tags[slot]


def _tag_of_slot(slot: int) -> str:
    """A short text that hashes to ``slot`` (made once per slot)."""
    tag = _slot_tags.get(slot)
    number = 0
    while tag is None:
        candidate = str(number)
        if slot_of(candidate) == slot:
            tag = _slot_tags[slot] = candidate
        number += 1
    return tag
