"""The ids the library writes inside values, and how each is read back; new task ids.

Ids inside values use ``SEPARATOR`` (``\\x1f``), a character no task id,
digest or lock type contains:

* a queue lock's (and a window's) value is the holder's task id, followed,
  where the key is named by a ``lock_name``, by the separator and the
  holder's task name (``holder_value``);
* a waiting copy's entry is ``<task id>\\x1f<message>`` (``waiting_token``);
* a limited call's id is ``<task id>\\x1f<attempt>`` (``call_id``), and an
  entry of its line handed over is ``<call id>\\x1f<message>``.

Every other module builds such an id, or reads one back, through this
module. A running lock's value is the owner token (``ownership``).
"""

from __future__ import annotations

import os
from typing import Union

__all__ = [
    "SEPARATOR", "call_id", "holder_id", "holder_value", "new_task_id", "split_call_id", "split_entry",
    "split_holder", "waiting_token",
]

#: Between a task id and what follows it inside a value: no task id contains it.
SEPARATOR = "\x1f"


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
