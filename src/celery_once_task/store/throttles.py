"""The throttle's round trip: a call's start checked against its key's log, and reserved when postponed.

The check is one ``Call`` (``lua.throttles.THROTTLE_TAKE``), so that the
pickup sends it in the same round trip as the queue lock's release
(``throttle``). Every try of it is safe to send again: a call finds its own
entry and starts on it (or keeps its reservation). ``lost`` is the worker's
main process marking the start of a pool process that died
(``lua.throttles.THROTTLE_LOST``), so that a copy of its message runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ..rates import Rate, spec_of
from .lua.throttles import THROTTLE_LOST, THROTTLE_TAKE
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
    #: ``STARTED``: the start found, a member of the log ("" otherwise).
    start: str = ""

    @property
    def starter(self) -> str:
        """``STARTED``: the worker instance that started the call on its reservation ("" if unknown)."""
        return instance_of(self.start)

    def started_by(self, starter: str) -> bool:
        """``STARTED``: whether the start found is one the process ``starter`` made."""
        return self.start.endswith(f"@{starter}")

    @property
    def wait(self) -> float:
        """Seconds from the store's answer to the start."""
        return max(0.0, self.at - self.now)


def starter_of(instance: str, pid: int) -> str:
    """How a start names the process that made it: ``<worker instance>/<pid>``."""
    return f"{instance}/{pid}"


def instance_of(start: str) -> str:
    """The worker instance a start (a member of the log) names; "" where it names none."""
    return start.rpartition("@")[2].partition("/")[0] if "@" in start else ""


def take(key: str, member: str, rates: Sequence[Rate], conflict: str, starter: str = "", reserved: str = "",
         copies: str = "count", gone: str = "") -> Call:
    """The call that starts ``member`` now on ``key``'s log, or reserves its start (``"postpone"``), or refuses it.

    ``starter``: the process that starts it (``starter_of``, recorded in its start); ``reserved``: the
    reservation a postponed copy carries; ``copies``: ``"ignore"`` answers ``STARTED`` to a copy whose call
    already started on it; ``gone``: such a start, whose worker is gone: this copy claims it and runs.
    """
    args: list[Any] = [member, round(margin_for(rates) * 1000), round(ON_TIME * 1000), conflict, spec_of(rates),
                       starter, reserved, copies, gone]
    for rate in rates:
        args += [rate.starts, rate.period_ms]
    return Call(THROTTLE_TAKE, key, args)


def lost(key: str, member: str, starter: str, reserved: str) -> Call:
    """The call that marks lost the start ``starter`` made on its reservation (its process died mid-execution)."""
    return Call(THROTTLE_LOST, key, [member, starter, reserved])


def gate_of(reply: Any) -> Gate:
    code, at, now = (int(part) for part in reply[:3])
    start = ""
    if len(reply) > 3:
        start = reply[3].decode() if isinstance(reply[3], bytes) else str(reply[3])
    return Gate(code, at / 1000, now / 1000, start)
