"""The slots of a limited key (``running_limit``): take one or join the line, release, forget, clear.

What slots and the line are for is ``limits``'s; these are their round trips,
each one script (``lua.slots``) on the key's slots, its line and the line's
messages -- siblings in one Redis Cluster hash slot (``keys.sibling``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, Union

from ..keys import MESSAGES, WAITERS, sibling
from .finished import FinishedCheck, FinishedRecord
from .locks import acquire, compare_and_delete, queue_reply
from .lua.slots import SLOT_ACQUIRE, SLOT_CLEAR, SLOT_FORGET, SLOT_RELEASE, SlotAcquireArgs, SlotCode
from .runner import Runner
from .scripts import Call
from .values import ms, text

#: A slot's field: ``S<owner token>`` (held) or ``R<call id>`` (reserved); 2.0.0 wrote ``s:``, ``r:`` (``lua.slots``).
HELD, RESERVED, LEGACY_HELD, LEGACY_RESERVED = "S", "R", "s:", "r:"
#: The field of the key's limit; 2.0.0 wrote ``limit``.
LIMIT, LEGACY_LIMIT = "L", "limit"


def slot_field(name: str) -> Optional[tuple[bool, str]]:
    """Whether a field of a key's slots is a slot held (else reserved), and its token or call id; None: neither."""
    if name.startswith((LEGACY_HELD, LEGACY_RESERVED)):
        return name.startswith(LEGACY_HELD), name[2:]
    if len(name) > 1 and name[0] in (HELD, RESERVED):
        return name[0] == HELD, name[1:]
    return None


def held_since(value: str, legacy: bool) -> Optional[float]:
    """When a slot held was taken (seconds since the epoch), from its field's value; None if it does not say."""
    expiry, _, rest = value.partition(":")
    try:
        return float(rest) if legacy else (int(expiry) - int(rest)) / 1000
    except ValueError:
        return None


def line_of(slots: str) -> tuple[str, str]:
    """A limited key's line of waiting calls, and their messages."""
    return sibling(slots, WAITERS), sibling(slots, MESSAGES)


class Claim(NamedTuple):
    """What an execution of a limited key asks for a slot with: made once per execution, sent with each try."""

    #: The key's slots.
    key: str
    #: The execution's owner token.
    token: str
    #: The owner tokens of every delivery of this attempt begin with this (``RunningOwner.attempt_prefix``).
    attempt_prefix: str
    #: The call's id in the key's line (``ids.call_id``).
    call_id: str
    limit: int
    #: Seconds a slot is held without renewal.
    lease: float
    #: Seconds a slot handed to a waiting call is kept for its message to arrive.
    reserve: float


class Joining(NamedTuple):
    """How a call joins a limited key's line when no slot is free."""

    #: The call's message, published when a slot is handed to it ("" where it is not JSON).
    message: str
    #: When the call was made (microseconds since the epoch): the line's order.
    called_at: int
    #: Seconds the line is kept without being touched.
    line_ttl: float
    #: The call's queue lock, taken back while it waits (None: the task has none).
    queue_key: Optional[str] = None
    #: The value it is taken back with (``KeySpace.holder``; "" : the task id).
    holder: str = ""


class SlotPickup(NamedTuple):
    """What a limited call's pickup found."""

    code: SlotCode
    #: The finished record (FINISHED), the place in line (IN_LINE), or a holder's owner token (SAME_ATTEMPT, FULL).
    detail: Union[str, int]
    #: The waiting calls' entries given a free slot here: to be published.
    handed: list[str]
    queue_released: bool = False
    #: The arguments a duplicate replaced the call's with, taken with the queue lock (``replace``).
    arguments: Optional[str] = None


class Slots:
    """The limited keys of one lock store."""

    __slots__ = ("_runner",)

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def pickup(self, claim: Claim, since: str, *, queue_key: Optional[str] = None, task_id: str = "",
               takeover: str = "", takeover_since: str = "", finished: Optional[FinishedCheck] = None,
               joining: Optional[Joining] = None, queue: Optional[Call] = None) -> SlotPickup:
        """Release the queue lock and take a slot, in one round trip (``lua.slots.SLOT_ACQUIRE``).

        Args:
            claim: The execution's claim.
            since: When the slot is taken (text): with the token, it tells this pickup's own try sent again.
            queue_key: The queue lock ``task_id`` releases (None: none to release).
            task_id: The message's task id, with ``queue_key``.
            takeover: A token whose slot this execution may take over ("": none).
            takeover_since: Only if that slot was taken at this moment (a ``since`` of an earlier pickup of
                this execution's; "": whenever).
            finished: The record that says this attempt already ended (FINISHED: nothing is taken).
            joining: Join the line if no slot is free, and take the queue lock back while waiting.
            queue: What to do with the queue lock instead of releasing ``queue_key`` (see ``Locks.pickup``).
        """
        calls = []
        if queue is None and queue_key is not None:
            queue = compare_and_delete(queue_key, task_id, "exact")
        if queue is not None:
            calls.append(queue)
        args = SlotAcquireArgs(
            token=claim.token, since=since, lease_ms=ms(claim.lease), limit=claim.limit, call_id=claim.call_id,
            attempt_prefix=claim.attempt_prefix, join="1" if joining is not None else "",
            called_at=joining.called_at if joining is not None else 0,
            message=joining.message if joining is not None else "",
            line_ttl_ms=ms(joining.line_ttl) if joining is not None else 0,
            reserve_ms=ms(claim.reserve), takeover=takeover, takeover_since=takeover_since,
        )
        keys = line_of(claim.key)
        if finished is None:
            calls.append(Call(SLOT_ACQUIRE, claim.key, args, keys))
        else:
            calls.append(Call(SLOT_ACQUIRE, claim.key, (*args, finished.attempt, finished.call),
                              (*keys, *finished.keys())))
        if joining is not None and joining.queue_key is not None:
            holder = joining.holder or task_id
            calls.append(acquire(joining.queue_key, holder, joining.line_ttl, holder, "exact"))
        replies, maybe_applied = self._runner.run(calls)
        reply = replies[1 if queue is not None else 0]
        ours, arguments = queue_reply(replies[0]) if queue is not None else (False, None)
        queue_released = queue is not None and (ours or maybe_applied)
        code, detail, *handed = reply
        found = SlotCode(int(code))
        shown: Union[str, int] = str(text(detail)) if isinstance(detail, bytes) else int(detail)
        if found == SlotCode.SAME_PICKUP:
            # The slot this pickup's own earlier try took, if an earlier try may have run; else the slot of
            # another copy of this attempt in this worker, picked up in the same millisecond: not this one's.
            found, shown = (SlotCode.TAKEN, "") if maybe_applied else (SlotCode.SAME_ATTEMPT, shown)
        return SlotPickup(found, shown, [str(text(item)) for item in handed], queue_released, arguments)

    def release(self, key: str, token: str, limit: int, reserve: float,
                record: Optional[FinishedRecord] = None, also: Sequence[Call] = (),
                since: str = "") -> tuple[bool, list[str]]:
        """Free the token's slot, writing ``record``; hand free slots to the line: one round trip.

        ``also``: the calls that end the call's queue-side keys (``windows``), in the same round trip.
        ``since``: free it only if it was taken at this moment (a pickup's own, whose reply was lost; "":
        whenever). Returns whether the token held a slot, and the entries handed over (to be published).
        """
        args: tuple[Any, ...] = (token, limit, ms(reserve), since)
        keys: tuple[str, ...] = line_of(key)
        if record is not None:
            args, keys = (*args, *record.args()), (*keys, record.key)
        (reply, *_), _ = self._runner.run([Call(SLOT_RELEASE, key, args, keys), *also])
        released, *handed = reply
        return bool(released), [str(text(item)) for item in handed]

    def forget(self, key: str, call_id: str, limit: int, reserve: float) -> tuple[bool, list[str]]:
        """Take a (revoked) call out of a key's line, or its reservation back; hand over: one round trip."""
        (reply,), _ = self._runner.run([Call(SLOT_FORGET, key, (call_id, limit, ms(reserve)), line_of(key))])
        forgotten, *handed = reply
        return bool(forgotten), [str(text(item)) for item in handed]

    def clear(self, key: str, field: str, value: str) -> bool:
        """Delete one field of a key's slots (a slot, a reservation) if it still holds ``value``."""
        (reply,), _ = self._runner.run([Call(SLOT_CLEAR, key, (field, value))])
        return bool(reply)
