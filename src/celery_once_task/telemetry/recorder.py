"""What each hook records: a round trip's span and duration, and the call, execution and lock metrics.

A call's round trip at publish is timed by its call site (``started``). An
execution's pickup is followed on its request, from ``picking_up`` to the
decision -- it runs (``picked_up``), or it does not (``executed``) -- and on
to its release: the request carries a ``Pickup`` (the pending round trip's
start, its operation, and once the execution holds its lock, since when).
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import Optional

from opentelemetry import metrics, trace
from opentelemetry.trace import Tracer
from redis.exceptions import ResponseError

from ..headers import CALLED_HEADER, header
from ..keys import parse_key
from ..protocols import TaskLike, TaskRequest
from . import SCOPE, STASH, Operation, TelemetrySettings
from .metrics import Instruments, instruments_of
from .spans import Attributes, error_type, execution_event, holder_id, lock_span, server_of

#: The outcomes of an execution that does not run: each is an event on Celery's ``run/{task}`` span too.
NOT_RUN = frozenset(("rejected", "waiting", "postponed", "finished_copy", "store_unavailable"))

_KEY_TYPES = ("queue", "running", "waiting", "slots", "burst")


class Pickup:
    """An execution's pickup as telemetry follows it, from its first round trip to its release."""

    __slots__ = ("batch", "decided", "digest", "lock_type", "mode", "operation", "outcome", "since", "started", "url")

    def __init__(self, settings: TelemetrySettings, operation: Operation, digest: str, batch: int) -> None:
        self.mode = settings.telemetry
        self.url = settings.redis_url
        self.operation = operation
        self.lock_type = operation.lock_type
        self.digest = digest
        self.batch = batch
        #: When the pending round trip started (``perf_counter_ns``); 0: none is pending.
        self.started = time.perf_counter_ns()
        #: The outcome the decision reports instead of "acquired" (a recovery).
        self.outcome: Optional[str] = None
        #: The execution's outcome is counted: it does not run, or runs without its lock (the store away).
        self.decided = False
        #: Since when the execution holds its lock (``perf_counter_ns``); 0: it holds none.
        self.since = 0


def pickup_of(request: Optional[TaskRequest]) -> Optional[Pickup]:
    pickup: Optional[Pickup] = getattr(request, STASH, None) if request is not None else None
    return pickup


def provider_set(on: bool, tracer_provider: object, meter_provider: object) -> bool:
    """Whether anything would record: a provider given, a global one set, or ``on``."""
    return on or tracer_provider is not None or meter_provider is not None or bool(
        _global_tracer_provider(False) or _global_meter_provider(False))


def make_recorder(on: bool, tracer_provider: object, meter_provider: object) -> Optional[Recorder]:
    """The recorder of the providers given, else of the global ones that are set (all of them ``on``)."""
    version = _version()
    tracer = instruments = None
    tracers = tracer_provider if tracer_provider is not None else _global_tracer_provider(on)
    if tracers is not None:
        tracer = tracers.get_tracer(SCOPE, version)  # type: ignore[attr-defined]
    meters = meter_provider if meter_provider is not None else _global_meter_provider(on)
    if meters is not None:
        instruments = instruments_of(meters, version)  # type: ignore[arg-type]
    return Recorder(tracer, instruments) if tracer is not None or instruments is not None else None


def _global_tracer_provider(on: bool) -> Optional[trace.TracerProvider]:
    provider = trace.get_tracer_provider()
    unset = isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return provider if on or not unset else None


def _global_meter_provider(on: bool) -> Optional[metrics.MeterProvider]:
    provider = metrics.get_meter_provider()
    # The API's default is a proxy that forwards to a provider set later (a private class: told by name).
    unset = isinstance(provider, metrics.NoOpMeterProvider) or type(provider).__name__ == "_ProxyMeterProvider"
    return provider if on or not unset else None


def _version() -> Optional[str]:
    try:
        return metadata.version("celery-once-task")
    except metadata.PackageNotFoundError:
        return None


class Recorder:
    """Records through one tracer and one set of instruments (either may be None: not recorded)."""

    def __init__(self, tracer: Optional[Tracer], instruments: Optional[Instruments]) -> None:
        self.tracer = tracer
        self.instruments = instruments

    def _round_trip(self, operation: Operation, batch: int, client: object, url: str, started: int, outcome: str,
                    task_name: str, key: str, task_id: Optional[str], holder: Optional[str] = None,
                    policy: Optional[str] = None, error: Optional[BaseException] = None,
                    extra: Optional[Attributes] = None) -> None:
        """A round trip that started at ``started``, ending now: its span and its duration.

        ``key``: the lock's key, or its digest; ``holder``: the lock's value the round trip met.
        """
        if not started:
            return
        ended = time.perf_counter_ns()
        creation = server_of(client, url).database_attributes(operation, batch)
        if self.tracer is not None:
            lock_span(self.tracer, operation, creation, started, ended, outcome, task_name, key, task_id, holder,
                      policy, error, extra)
        if self.instruments is not None:
            attributes = creation if error is None else {**creation, "error.type": error_type(error)[0]}
            self.instruments.operation_duration.record((ended - started) / 1e9, attributes)

    def called(self, task: TaskLike, settings: TelemetrySettings, client: object, operation: Operation, key: str,
               task_id: str, started: int, outcome: str, holder: Optional[str], policy: Optional[str],
               error: Optional[BaseException]) -> None:
        outcome = _failed(outcome, error)
        self._round_trip(operation, 1, client, settings.redis_url, started, outcome, task.name, key, task_id, holder,
                         policy, error)
        if self.instruments is not None:
            self.instruments.calls.add(1, _bounded(task.name, outcome, operation.lock_type, policy))

    def picking_up(self, task: TaskLike, settings: TelemetrySettings, request: TaskRequest, operation: Operation,
                   digest: str, batch: int) -> None:
        setattr(request, STASH, Pickup(settings, operation, digest, batch))

    def step(self, request: TaskRequest, outcome: str, then: Optional[Operation], batch: int,
             holder: Optional[str], policy: Optional[str], client: object) -> None:
        pickup = pickup_of(request)
        if pickup is None:
            return
        self._end(pickup, request, outcome, holder, policy, None, client)
        if then is not None:
            pickup.operation, pickup.batch, pickup.started = then, batch, time.perf_counter_ns()

    def executed(self, task: TaskLike, request: TaskRequest, outcome: str, holder: Optional[str],
                 policy: Optional[str], error: Optional[BaseException], client: object) -> None:
        pickup = pickup_of(request)
        if pickup is None or pickup.decided:
            return
        pickup.decided = True
        outcome = _failed(outcome, error)
        self._end(pickup, request, outcome, holder, policy, error, client, task.name)
        if self.instruments is not None:
            self.instruments.executions.add(1, _bounded(task.name, outcome, pickup.lock_type, policy))
        if outcome in NOT_RUN:
            execution_event(outcome, {
                "celery_once.outcome": outcome, "celery_once.lock.type": pickup.lock_type,
                "celery_once.lock.digest": pickup.digest, **({"celery_once.policy": policy} if policy else {}),
                **({"celery_once.holder.task_id": holder_id(holder) or ""} if holder else {}),
            })

    def picked_up(self, task: TaskLike, request: TaskRequest, client: object) -> None:
        pickup = pickup_of(request)
        if pickup is None or pickup.decided:
            return
        pickup.decided = True
        # A task without a running lock only released its queue lock (or, throttled, entered its start in a log).
        holds = pickup.lock_type not in ("queue", "throttle")
        outcome = pickup.outcome or ("released" if pickup.lock_type == "queue" else "acquired")
        self._end(pickup, request, outcome, None, None, None, client, task.name)
        instruments = self.instruments
        if instruments is None:
            return
        instruments.executions.add(1, _bounded(task.name, outcome, pickup.lock_type, None))
        if holds:
            pickup.since = time.perf_counter_ns()
            instruments.held.add(1, {"celery_once.task.name": task.name, "celery_once.lock.type": pickup.lock_type})
        called = header(request, CALLED_HEADER)
        if not request.retries and not request.is_eager and isinstance(called, int) and called > 0:
            waited = time.time() - called / 1e6
            if waited >= 0:
                instruments.wait_duration.record(waited, {"celery_once.task.name": task.name})

    def _end(self, pickup: Pickup, request: TaskRequest, outcome: str, holder: Optional[str], policy: Optional[str],
             error: Optional[BaseException], client: object, task_name: str = "") -> None:
        """End the pickup's pending round trip (if one is) with ``outcome``."""
        started, pickup.started = pickup.started, 0
        self._round_trip(pickup.operation, pickup.batch, client, pickup.url, started, outcome,
                         task_name or _task_of(request), pickup.digest, request.id, holder, policy, error)

    def recovered(self, task: object, key: str, reason: str, request: Optional[TaskRequest]) -> None:
        pickup = pickup_of(request)
        if pickup is not None:
            pickup.outcome = "recovered"
        if self.instruments is not None:
            parts = parse_key(key, _KEY_TYPES)
            self.instruments.recoveries.add(1, {
                "celery_once.task.name": str(getattr(task, "name", task)),
                "celery_once.lock.type": _lock_type(parts.type) if parts else "running",
                "celery_once.reason": reason,
            })

    def released(self, task: TaskLike, settings: TelemetrySettings, client: object, operation: Operation, key: str,
                 started: int, error: Optional[BaseException], handed: int, batch: int) -> None:
        request = task.request
        outcome = _failed("store_unavailable", error) if error is not None else "released"
        self._round_trip(operation, batch, client, settings.redis_url, started, outcome, task.name, key,
                         request.id if request else None, error=error,
                         extra={"celery_once.handed_over": handed} if handed else None)
        pickup = pickup_of(request)
        if self.instruments is None or pickup is None or not pickup.since:
            return
        since, pickup.since = pickup.since, 0
        attributes = {"celery_once.task.name": task.name, "celery_once.lock.type": operation.lock_type}
        self.instruments.held.add(-1, attributes)
        self.instruments.hold_duration.record((time.perf_counter_ns() - since) / 1e9, attributes)

    def round_trip(self, task: TaskLike, settings: TelemetrySettings, client: object, operation: Operation, key: str,
                   started: int, outcome: str, error: Optional[BaseException]) -> None:
        request = task.request
        self._round_trip(operation, 1, client, settings.redis_url, started, _failed(outcome, error), task.name, key,
                         request.id if request else None, error=error)


def _failed(outcome: str, error: Optional[BaseException]) -> str:
    """``"error"`` where the store answered a lock operation with an error, not ``"store_unavailable"``."""
    return "error" if outcome == "store_unavailable" and isinstance(error, ResponseError) else outcome


def _bounded(task_name: str, outcome: str, lock_type: str, policy: Optional[str]) -> dict[str, str]:
    """A metric's attributes: the task name, the outcome, the lock type, the policy -- all of bounded number."""
    attributes = {"celery_once.task.name": task_name, "celery_once.outcome": outcome,
                  "celery_once.lock.type": lock_type}
    if policy:
        attributes["celery_once.policy"] = policy
    return attributes


def _lock_type(key_type: str) -> str:
    return "slot" if key_type == "slots" else key_type


def _task_of(request: TaskRequest) -> str:
    return str(getattr(request, "task", "") or "")
