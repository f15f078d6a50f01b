"""The library's metrics: its instruments, their units and bucket boundaries.

Every attribute is bounded: the task name, the outcome, the lock type, the
policy, a recovery's reason, the database attributes and ``error.type`` --
never a key, a digest, a task id or an argument, which would make a series
per call.

Bucket boundaries are given as the API's advisory
(``explicit_bucket_boundaries_advisory``, opentelemetry-api 1.23 and later);
an SDK's View overrides them. The conventions' advised buckets for
``db.client.operation.duration`` start at 1 ms, where a lock round trip
takes about 200 us: these start at 50 us. With an older API (or SDK) the
instruments are made without the advisory, and the SDK's default buckets
(made for milliseconds) apply unless a View gives these.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.metrics import Counter, Histogram, Meter, UpDownCounter

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


class Instruments:
    """The library's instruments, made once per meter."""

    __slots__ = ("calls", "executions", "held", "hold_duration", "operation_duration", "recoveries",
                 "wait_duration")

    def __init__(self, meter: Meter) -> None:
        self.calls: Counter = meter.create_counter(
            "celery_once.calls", unit="{call}",
            description="Calls of a task that took a lock at publish, by what they got (celery_once.outcome): "
                        "duplicate over all is the duplicate ratio")
        self.executions: Counter = meter.create_counter(
            "celery_once.executions", unit="{execution}",
            description="Executions at pickup, by what they got (celery_once.outcome)")
        self.recoveries: Counter = meter.create_counter(
            "celery_once.lock.recoveries", unit="{recovery}",
            description="Locks of a gone or finished owner taken over or released late, by reason")
        self.operation_duration: Histogram = histogram(
            meter, "db.client.operation.duration", "s", "Duration of the lock store's round trips",
            OPERATION_BUCKETS)
        self.hold_duration: Histogram = histogram(
            meter, "celery_once.lock.hold.duration", "s", "How long an execution held its running lock or slot",
            LONG_BUCKETS)
        self.wait_duration: Histogram = histogram(
            meter, "celery_once.wait.duration", "s", "From a call to the start of its execution", LONG_BUCKETS)
        self.held: UpDownCounter = meter.create_up_down_counter(
            "celery_once.lock.held", unit="{lock}", description="Running locks and slots held by this process")
