"""The throttle's round trip: a call's start checked against its key's log, and reserved when postponed.

The check is one ``Call`` (``lua.throttles.THROTTLE_TAKE``), so that the
pickup sends it in the same round trip as the queue lock's release
(``throttle``). Every try of it is safe to send again: a call finds its own
entry and starts on it (or keeps its reservation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ..rates import Rate, spec_of
from .lua.throttles import THROTTLE_TAKE
from .scripts import Call

#: Added to every period, at the least (``margin_for``). Starts are measured by the task bodies some
#: milliseconds after the store's clock took them -- more where a slot is taken after the check, or the
#: machine is loaded -- and a postponed copy may start up to ``ON_TIME`` after its reservation: without it,
#: two starts a period apart by the store's clock could be a hair less than a period apart by the bodies'.
MARGIN = 0.1
#: The most margin a throttle gets: a tenth of its shortest period, between ``MARGIN`` and this.
MARGIN_MOST = 0.25


def margin_for(rates: Sequence[Rate]) -> float:
    """The margin added to every period of a throttle: a tenth of its shortest period, within 100-250 ms.

    As much room for the bodies' lag as the throttle can give without losing more than a tenth of its rate.
    """
    return min(MARGIN_MOST, max(MARGIN, 0.1 * min(rate.period for rate in rates)))
#: How late a postponed copy may arrive and start on its reservation (the broker's timer and a busy pool
#: take some milliseconds); later, it reserves again. Kept below ``MARGIN``: the rest covers measurement.
ON_TIME = 0.06

#: The reply codes of ``THROTTLE_TAKE``.
REJECTED, STARTS, POSTPONED, STARTED = 0, 1, 2, 3


class Gate(NamedTuple):
    """What the log said of a call: whether it starts, and when (the store's clock, in seconds)."""

    code: int
    #: When it starts: now, its reservation, or (rejected) the earliest a window would allow.
    at: float
    #: The store's clock when it answered.
    now: float
    #: ``STARTED``: the worker instance that started the call on its reservation ("" if unknown).
    starter: str = ""

    @property
    def wait(self) -> float:
        """Seconds from the store's answer to the start."""
        return max(0.0, self.at - self.now)


def take(key: str, member: str, rates: Sequence[Rate], conflict: str, instance: str = "", reserved: str = "",
         copies: str = "count") -> Call:
    """The call that starts ``member`` now on ``key``'s log, or reserves its start (``"postpone"``), or refuses it.

    ``instance``: who starts it (recorded in its start); ``reserved``: the reservation a postponed copy
    carries; ``copies``: ``"ignore"`` answers ``STARTED`` to a copy whose call already started on it.
    """
    args: list[Any] = [member, round(margin_for(rates) * 1000), round(ON_TIME * 1000), conflict, spec_of(rates),
                       instance, reserved, copies]
    for rate in rates:
        args += [rate.starts, rate.period_ms]
    return Call(THROTTLE_TAKE, key, args)


def gate_of(reply: Any) -> Gate:
    code, at, now = (int(part) for part in reply[:3])
    starter = ""
    if len(reply) > 3:
        start = reply[3].decode() if isinstance(reply[3], bytes) else str(reply[3])
        starter = start.rpartition("@")[2]
    return Gate(code, at / 1000, now / 1000, starter)
