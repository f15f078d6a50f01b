"""The ``throttle`` option's values: N starts per period, parsed and checked where a task is defined.

A throttle is ``"N/s"``, ``"N/m"``, ``"N/h"``, ``"N/d"`` (Celery's spelling of
a rate, plus days), ``(N, seconds)`` for any period, or a list of them for
several limits at once (``["10/s", "1000/d"]``). ``parse_throttle`` turns each
into a ``Rate``; a bad value is a ``ValueError`` naming the task and what is
wrong with it. ``check_throttle_options`` refuses the options a throttle
cannot be combined with (see docs/throttle.md, "Combinations").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, Optional

#: What an execution beyond the limit gets: postponed to when the window allows, or rejected.
ThrottleConflict = Literal["postpone", "reject"]
THROTTLE_CONFLICTS = ("postpone", "reject")

#: Seconds in each period a rate may be written with.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: The longest period: a day's log of a busy key is already large (memory is O(N) per key).
MAX_PERIOD = 366 * 86400
#: The most starts one limit may allow per period: the log holds one entry per start in the window.
MAX_COUNT = 1_000_000


class Rate(NamedTuple):
    """At most ``starts`` starts of a key in any window of ``period`` seconds."""

    starts: int
    period: float

    @property
    def period_ms(self) -> int:
        return max(1, round(self.period * 1000))

    def __str__(self) -> str:
        return f"{self.starts}/{self.period:g}s"


def _one(value: Any, label: str) -> Rate:
    if isinstance(value, str):
        count_text, slash, unit = value.strip().partition("/")
        if not slash or unit.strip() not in _UNITS or not count_text.strip().isdigit():
            raise ValueError(f"{label}: throttle {value!r} is not a rate: write \"N/s\", \"N/m\", \"N/h\", \"N/d\" "
                             "or (N, seconds)")
        count, period = int(count_text), float(_UNITS[unit.strip()])
    elif isinstance(value, tuple) and len(value) == 2:
        count, period = value
        if isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"{label}: throttle {value!r}: N must be a whole number of starts, got {count!r}")
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not 0.001 <= period <= MAX_PERIOD:
            raise ValueError(f"{label}: throttle {value!r}: the period must be a number of seconds from 0.001 to "
                             f"{MAX_PERIOD}, got {period!r}")
        period = float(period)
    else:
        raise ValueError(f"{label}: throttle {value!r} is not a rate: write \"N/s\", \"N/m\", \"N/h\", \"N/d\", "
                         "(N, seconds) or a list of them")
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"{label}: throttle {value!r}: N must be from 1 to {MAX_COUNT} starts, got {count!r}")
    return Rate(count, period)


def parse_throttle(value: Any, label: str) -> tuple[Rate, ...]:
    """The limits a ``throttle`` value sets (empty for ``None``); ``ValueError`` naming ``label`` if it is bad."""
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{label}: throttle is an empty list: give at least one rate, or None for no throttle")
    rates = tuple(_one(item, label) for item in values)
    periods = [rate.period for rate in rates]
    if len(set(periods)) != len(periods):
        raise ValueError(f"{label}: throttle {value!r} gives two limits for one period: keep the lower")
    return rates


def spec_of(rates: Sequence[Rate]) -> str:
    """The limits as the log records them for operators: ``<N>/<period ms>`` joined by commas."""
    return ",".join(f"{rate.starts}/{rate.period_ms}" for rate in rates)


def parse_spec(spec: str) -> tuple[Rate, ...]:
    """``spec_of`` read back (an operator's view of a log); empty where it cannot be read."""
    rates = []
    for part in spec.split(","):
        count, _, period = part.partition("/")
        if not count.isdigit() or not period.isdigit():
            return ()
        rates.append(Rate(int(count), int(period) / 1000))
    return tuple(rates)


def check_throttle_options(values: Mapping[str, Any], label: str) -> None:
    """Refuse what a throttle cannot be combined with: a ``ValueError`` naming ``label`` and both options."""
    if values.get("throttle") is None:
        return
    conflict = values.get("throttle_conflict")
    if conflict is not None and conflict not in THROTTLE_CONFLICTS:
        raise ValueError(f"{label}: throttle_conflict must be one of {', '.join(map(repr, THROTTLE_CONFLICTS))}, "
                         f"got {conflict!r}")
    if values.get("debounce") is not None:
        # A burst already decides when its one execution runs; the throttle would
        # put it off again after its burst was taken, and the burst's arguments with it.
        raise ValueError(f"{label}: throttle cannot be used with debounce: a debounced burst decides when its "
                         "execution runs; throttle the task its execution calls instead")


def throttle_conflict(value: Optional[str]) -> ThrottleConflict:
    return "reject" if value == "reject" else "postpone"
