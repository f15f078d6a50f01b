"""The key grammar: every key the library writes, how to read one back, and the ids inside values.

A call's keys are made of the task name and the call's digest (``digest``)::

    once_task:{task_name}:{digest}:{queue|running|waiting}      a lock of its own
    once_task:{task_name}:{{digest}}:{slots|waiters|messages}   a limited key (``limits``)
    once_task:{task_name}:{{digest}}:burst                      a debounced key (``debounce``)
    once_task_done:{<hash tag>}:{task_id}                        a finished record (``redelivery``)

The braces of the limited and debounced forms are a Redis Cluster hash tag:
the keys one script touches share a hash slot. Every other module builds a
key, a sibling of a key, or an id stored in a value through this module, and
reads one back with ``parse_key``: nothing else slices key strings.

Ids inside values use ``SEPARATOR`` (``\\x1f``), a character no task id,
digest or lock type contains:

* a waiting copy's entry is ``<task id>\\x1f<message>`` (``waiting_token``);
* a limited call's id is ``<task id>\\x1f<attempt>`` (``call_id``), and an
  entry of its line handed over is ``<call id>\\x1f<message>``.
"""

from __future__ import annotations

import binascii
import os
from typing import NamedTuple, Optional, Union

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
    "BURST", "DIGEST_LENGTH", "FINISHED_PREFIX", "KEY_PREFIX", "LOCK_TYPES", "MESSAGES", "QUEUE", "RUNNING",
    "SEPARATOR", "SLOTS", "WAITERS", "WAITING", "KeyParts", "Select", "call_digest", "call_id", "canonical_call",
    "check_lock_args", "finished_key", "limited_key", "lock_key", "new_task_id", "parse_key", "sibling",
    "signature_of",
    "slot_of", "split_call_id", "split_entry", "waiting_token", "well_formed_digest",
]

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

#: The lock types operators list and clear (``ops.locks``).
LOCK_TYPES = (QUEUE, RUNNING, SLOTS, BURST)
#: The lock types whose digest is a hash tag.
_TAGGED = frozenset((SLOTS, WAITERS, MESSAGES, BURST))

#: Between a task id and what follows it inside a value: no task id contains it.
SEPARATOR = "\x1f"

#: The prefix of finished records (see ``redelivery``): outside ``once_task:*``, which holds locks only.
FINISHED_PREFIX = "once_task_done"


def lock_key(task_name: str, digest: str, lock_type: str) -> str:
    """``once_task:{task_name}:{digest}:{lock_type}``."""
    return f"{KEY_PREFIX}:{task_name}:{digest}:{lock_type}"


def limited_key(task_name: str, digest: str, lock_type: str) -> str:
    """``once_task:{task_name}:{{digest}}:{slots|waiters|messages|burst}``: a limited or debounced call's keys.

    The braces around the digest are a Redis Cluster hash tag: the slots, the
    line of waiting calls and the finished records of one call share a hash
    slot, so that one script can take a slot and hand free ones over.
    """
    return f"{KEY_PREFIX}:{task_name}:{{{digest}}}:{lock_type}"


class KeyParts(NamedTuple):
    """What a lock key says: the task, the call's digest (without braces), the lock type."""

    task: str
    digest: str
    type: str


def parse_key(key: str, types: tuple[str, ...] = LOCK_TYPES) -> Optional[KeyParts]:
    """The parts of a lock key of one of ``types``, or None if ``key`` is not one."""
    if not key.startswith(f"{KEY_PREFIX}:"):
        return None
    # The task name may itself contain ':', the digest and the type never do.
    parts = key[len(KEY_PREFIX) + 1:].rsplit(":", 2)
    if len(parts) != 3 or parts[2] not in types or not parts[0]:
        return None
    task, digest, lock_type = parts
    if lock_type in _TAGGED:
        if not (digest.startswith("{") and digest.endswith("}")):
            return None
        digest = digest[1:-1]
    return KeyParts(task, digest, lock_type)


def sibling(key: str, lock_type: str) -> str:
    """The key of the same call of another ``lock_type``: ``running`` -> ``waiting``, ``slots`` -> ``waiters``."""
    parts = parse_key(key, (QUEUE, RUNNING, WAITING, *_TAGGED))
    if parts is None:
        raise ValueError(f"{key!r} is not a celery-once-task key")
    if lock_type in _TAGGED:
        return limited_key(parts.task, parts.digest, lock_type)
    return lock_key(parts.task, parts.digest, lock_type)


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


def finished_key(running_key: str, task_id: str) -> str:
    """``once_task_done:{<running key>}:{task_id}``: where an execution that held ``running_key`` records its end.

    In the running key's Redis Cluster hash slot, so that one script can
    take the lock and read the record, or release it and write the record:
    the braces make Redis hash only what they hold, and what they hold is
    the part of the running key that Redis hashes.
    """
    tag = _hashed_part(running_key)
    if "}" in tag:  # a task name with braces that make no hash tag: any tag of the same slot will do
        tag = _tag_of_slot(slot_of(running_key))
    return f"{FINISHED_PREFIX}:{{{tag}}}:{task_id}"


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
