"""The keys of the library's own records, outside the lock namespace: finished records, heartbeats, parked messages.

Each starts with the ``key_prefix`` setting and a suffix of its own, so that
``{prefix}:*`` holds locks only (what operators list and clear, ``keys``)::

    {prefix}_done:{<slot tag>}<id>                         a finished record (``redelivery``)
    {prefix}_worker:{instance}                             a worker instance's heartbeat (``renewal``)
    {prefix}_parked:{{prefix}}:{entries|due}               the messages put off with a countdown (``parking``)
    {prefix}_parked:{{prefix}}:claimed:{task_id}           which copy of a put-off message was taken

The braces are Redis Cluster hash tags (``hash_slots``): a finished record
lives in its running lock's slot, and the keys of the parked registry in one
slot. Every other module builds these keys through this module.
"""

from __future__ import annotations

import hashlib

from .hash_slots import hashed_part, short_tag_of_slot, slot_of, tag_of_slot
from .ids import SEPARATOR
from .keys import KEY_PREFIX

__all__ = [
    "FINISHED_PREFIX", "finished_key", "heartbeat_key", "heartbeat_pattern", "legacy_finished_key",
    "parked_claimed_key", "parked_keys",
]

#: The finished records' prefix under the default ``key_prefix`` (see ``redelivery``): outside
#: ``once_task:*``, which holds locks only.
FINISHED_PREFIX = f"{KEY_PREFIX}_done"


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
    tag = hashed_part(running_key)
    if "}" in tag:  # a task name with braces that make no hash tag: any tag of the same slot will do
        tag = tag_of_slot(slot_of(running_key))
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
