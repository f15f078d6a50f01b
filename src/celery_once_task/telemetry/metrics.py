"""The library's metrics: its instruments, their units and bucket boundaries.

Every attribute is bounded: the task name, the outcome, the lock type, the
policy, a recovery's reason, the database attributes and ``error.type`` --
never a key, a digest, a task id or an argument, which would make a series
per call.

The counters (``celery_once.calls``, ``celery_once.executions``,
``celery_once.lock.recoveries``, and the up-down counter
``celery_once.lock.held``) are asynchronous instruments: the process keeps
its counts (``Tally``), and the SDK reads them when it collects. They export
as any counter does (a sum, monotonic but for ``held``); a count costs a
dict update instead of an SDK measurement, which on the hot paths is most
of what recording costs. A forked process starts its counts at zero.

Bucket boundaries are given as the API's advisory
(``explicit_bucket_boundaries_advisory``, opentelemetry-api 1.23 and later);
an SDK's View overrides them. The conventions' advised buckets for
``db.client.operation.duration`` start at 1 ms, where a lock round trip
takes about 200 us: these start at 50 us. With an older API (or SDK) the
histograms are made without the advisory, and the SDK's default buckets
(made for milliseconds) apply unless a View gives these.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation

from . import SCOPE

#: ``db.client.operation.duration`` (seconds): fine around a lock round trip (~200 us), coarse above 10 ms.
OPERATION_BUCKETS = (0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002,
                     0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: How long a lock is held or a call waits to start (seconds): from a moment to hours.
LONG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                600.0, 1800.0, 3600.0, 7200.0)


def histogram(meter: Meter, name: str, unit: str, description: str, boundaries: Sequence[float]) -> Histogram:
    """A histogram with ``boundaries`` advised where the API takes the advisory, else without."""
    try:
        return meter.create_histogram(name, unit=unit, description=description,
                                      explicit_bucket_boundaries_advisory=boundaries)
    except TypeError:  # opentelemetry-api (or SDK) before 1.23: no advisory
        return meter.create_histogram(name, unit=unit, description=description)


class Tally:
    """Counts by attributes, kept in the process and observed by the SDK when it collects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}
        _tallies.add(self)

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        key = tuple(attributes.items())
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._counts.items())
        return [Observation(count, dict(key)) for key, count in counts]

    def forget(self) -> None:
        self._lock = threading.Lock()
        self._counts = {}


_tallies: weakref.WeakSet[Tally] = weakref.WeakSet()


def _forked() -> None:
    # A forked process counts its own calls: its parent's counts are its parent's to report.
    for tally in list(_tallies):
        tally.forget()


os.register_at_fork(after_in_child=_forked)


class Instruments:
    """The library's instruments on one meter."""

    __slots__ = ("__weakref__", "calls", "executions", "held", "hold_duration", "operation_duration", "recoveries",
                 "wait_duration")

    def __init__(self, meter: Meter) -> None:
        self.calls = Tally()
        self.executions = Tally()
        self.recoveries = Tally()
        self.held = Tally()
        meter.create_observable_counter(
            "celery_once.calls", [self.calls.observe], unit="{call}",
            description="Calls of a task that took a lock at publish, by what they got (celery_once.outcome): "
                        "duplicate over all is the duplicate ratio")
        meter.create_observable_counter(
            "celery_once.executions", [self.executions.observe], unit="{execution}",
            description="Executions at pickup, by what they got (celery_once.outcome)")
        meter.create_observable_counter(
            "celery_once.lock.recoveries", [self.recoveries.observe], unit="{recovery}",
            description="Locks of a gone or finished owner taken over or released late, by reason")
        meter.create_observable_up_down_counter(
            "celery_once.lock.held", [self.held.observe], unit="{lock}",
            description="Running locks and slots held by this process's executions")
        self.operation_duration = histogram(
            meter, "db.client.operation.duration", "s", "Duration of the lock store's round trips",
            OPERATION_BUCKETS)
        self.hold_duration = histogram(
            meter, "celery_once.lock.hold.duration", "s", "How long an execution held its running lock or slot",
            LONG_BUCKETS)
        self.wait_duration = histogram(
            meter, "celery_once.wait.duration", "s", "From a call to the start of its execution", LONG_BUCKETS)


#: The instruments made on each meter provider: a decision made again on the same provider reuses them,
#: since an SDK gives back the instrument it made under a name, with the callbacks it was made with.
_made: weakref.WeakKeyDictionary[MeterProvider, Instruments] = weakref.WeakKeyDictionary()


def instruments_of(provider: MeterProvider, version: object) -> Instruments:
    """The library's instruments on ``provider``'s meter for the scope, made once per provider."""
    try:
        return _made[provider]
    except (KeyError, TypeError):
        pass
    made = Instruments(provider.get_meter(SCOPE, version if isinstance(version, str) else None))
    with contextlib.suppress(TypeError):  # a provider that takes no weak reference: made on each decision
        _made[provider] = made
    return made
