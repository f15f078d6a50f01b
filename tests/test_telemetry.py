"""OpenTelemetry: each lock round trip a span under the current one, the calls and executions counted.

The providers are the SDK's, with an ``InMemorySpanExporter`` and an
``InMemoryMetricReader``, given to ``configure()`` for each test (a global
provider can be set only once per process; ``tests.telemetry_support``).
The locks are on the session's redis-server; the tasks are
``tests.worker_app``'s, called in this process: ``parked`` is routed to a
queue no worker consumes, ``add`` runs eagerly with ``apply()``. Through a
real worker: ``tests/test_telemetry_worker.py``; what telemetry never does
(off, without the API, ...): ``tests/test_telemetry_guards.py``.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from celery_once_task import LockStoreUnavailable, OnceTask, OnceTaskLocked, configure, telemetry
from celery_once_task.ownership import RunningOwner
from tests import worker_app as tasks
from tests.support import free_port, wait_until
from tests.telemetry_support import SCOPE, Recorded, otel, outcomes, providers

__all__ = ["otel"]

# An app and a queue of this module's own for the worker it runs in this process (see ``solo_worker``).
QUEUE = "telemetry_waits"
app = Celery("telemetry_waits", broker=tasks.BROKER_URL)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)


@app.task(base=OnceTask, name="tests.test_telemetry.probe")
def probe(tag: str) -> None:
    pass


def test_a_unique_call_and_a_dropped_duplicate_leave_queue_spans_under_the_callers_span(otel: Recorded) -> None:
    tag = uuid.uuid4().hex
    with otel.tracer.start_as_current_span("caller") as caller:
        first = tasks.parked.delay(tag)
        second = tasks.parked.delay(tag)
    assert first is not None and second is None
    spans = otel.lock_spans()
    assert outcomes(spans) == [("queue", "acquired"), ("queue", "duplicate")]
    assert {s.parent.span_id for s in spans if s.parent} == {caller.get_span_context().span_id}
    assert {s.kind for s in spans} == {SpanKind.CLIENT}


def test_a_duplicate_is_an_expected_outcome_not_an_error_and_names_its_holder(otel: Recorded) -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked.delay(tag)
    tasks.parked.delay(tag)
    duplicate = otel.lock_spans()[-1]
    assert duplicate.status.status_code is StatusCode.UNSET
    assert duplicate.attributes["celery_once.holder.task_id"] == first.id
    assert duplicate.attributes["celery_once.policy"] == "drop"
    assert duplicate.attributes["celery_once.task.name"] == tasks.parked.name


def test_calls_are_counted_by_outcome(otel: Recorded) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    tasks.parked.delay(tag)
    assert otel.counted("celery_once.calls", tasks.parked.name) == {"acquired": 1, "duplicate": 1}


def test_an_eager_execution_leaves_its_pickup_and_release(otel: Recorded) -> None:
    with otel.tracer.start_as_current_span("caller") as caller:
        assert tasks.add.apply((1, 2)).get() == 3
    spans = otel.lock_spans()
    assert outcomes(spans) == [("running", "acquired"), ("running", "released")]
    assert [s.name for s in spans] == ["running pickup", "running release"]
    assert {s.parent.span_id for s in spans if s.parent} == {caller.get_span_context().span_id}
    assert otel.counted("celery_once.executions", tasks.add.name) == {"acquired": 1}


def test_a_rejected_execution_is_a_span_and_an_event_on_the_current_span(otel: Recorded, locks: Any) -> None:
    tag = uuid.uuid4().hex
    other = RunningOwner("another-call", 0, "elsewhere@host", "0123456789abcdef", False)
    running = tasks.add.once_key((tag, 1), {}, "running")
    locks.set(running, other.value(), px=60_000)
    try:
        with otel.tracer.start_as_current_span("run/tests.worker_app.add"):
            result = tasks.add.apply((tag, 1))
    finally:
        locks.delete(running)
    assert isinstance(result.result, OnceTaskLocked)
    (pickup,) = otel.lock_spans()
    assert outcomes([pickup]) == [("running", "rejected")]
    assert pickup.attributes["celery_once.holder.task_id"] == "another-call"
    assert pickup.status.status_code is StatusCode.UNSET
    (run,) = [s for s in otel.spans.get_finished_spans() if s.name == "run/tests.worker_app.add"]
    assert [(e.name, e.attributes["celery_once.holder.task_id"]) for e in run.events] == [
        ("celery_once.rejected", "another-call")]
    assert otel.counted("celery_once.executions", tasks.add.name) == {"rejected": 1}


def test_a_limited_execution_takes_and_frees_a_slot(otel: Recorded) -> None:
    tasks.export.apply((uuid.uuid4().hex, 1, 0))
    spans = otel.lock_spans()
    assert [s.name for s in spans] == ["slot pickup", "slot release"]
    assert outcomes(spans) == [("slot", "acquired"), ("slot", "released")]
    assert spans[0].attributes["db.stored_procedure.name"] == "slot_acquire"


def test_a_throttled_execution_checks_its_keys_log_and_holds_nothing(otel: Recorded) -> None:
    tasks.throttled_twice.apply((uuid.uuid4().hex, 1))
    spans = otel.lock_spans()
    assert [s.name for s in spans] == ["throttle pickup"]
    assert outcomes(spans) == [("throttle", "acquired")]
    assert spans[0].attributes["db.stored_procedure.name"] == "throttle_take"


def test_debounced_calls_start_and_join_a_burst(otel: Recorded) -> None:
    doc = uuid.uuid4().hex
    first = tasks.parked_reindex.delay(doc, 1)
    joined = tasks.parked_reindex.delay(doc, 2)
    assert joined.id == first.id
    assert outcomes(otel.lock_spans()) == [("burst", "acquired"), ("burst", "joined")]
    assert otel.counted("celery_once.calls", tasks.parked_reindex.name) == {"acquired": 1, "joined": 1}


def test_an_eager_execution_that_finds_the_store_unreachable_is_an_error(otel: Recorded) -> None:
    tasks.app.conf.once_redis_url = f"redis://127.0.0.1:{free_port()}/2"
    retry = tasks.app.conf.task_publish_retry
    tasks.app.conf.task_publish_retry = False
    try:
        with pytest.raises(LockStoreUnavailable):  # eager, without fail_open: refused, not run
            tasks.add.apply((4, 4))
    finally:
        tasks.app.conf.pop("once_redis_url", None)
        tasks.app.conf.task_publish_retry = retry
    (pickup,) = otel.lock_spans()
    assert outcomes([pickup]) == [("running", "store_unavailable")]
    assert pickup.status.status_code is StatusCode.ERROR
    assert otel.counted("celery_once.executions", tasks.add.name) == {"store_unavailable": 1}


def test_a_round_trip_carries_the_redis_attributes_of_the_database_conventions(otel: Recorded,
                                                                                redis_server: Any) -> None:
    tasks.parked.delay(uuid.uuid4().hex)
    tasks.add.apply((2, 3))
    publish, pickup, _ = otel.lock_spans()
    for span in (publish, pickup):
        assert span.attributes["db.system.name"] == "redis"
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == redis_server.port
        assert span.attributes["db.namespace"] == "2"
    assert publish.attributes["db.operation.name"] == "SET"
    assert (pickup.attributes["db.operation.name"], pickup.attributes["db.stored_procedure.name"]) == (
        "EVALSHA", "acquire")


def test_a_key_appears_as_its_task_name_and_digest(otel: Recorded) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    span = otel.lock_spans()[0]
    key = tasks.parked.once_key((tag,), {}, "queue")
    assert f"once_task:{span.attributes['celery_once.task.name']}:{span.attributes['celery_once.lock.digest']}:queue" \
        == key
    assert key not in json.dumps(dict(span.attributes))


def test_no_argument_value_appears_in_any_span_or_metric(otel: Recorded) -> None:
    secret = f"secret-{uuid.uuid4().hex}"
    tasks.parked.delay(secret)
    tasks.parked.delay(secret)
    tasks.echo.apply((secret,), {"value": secret})
    recorded = [s.to_json() for s in otel.spans.get_finished_spans()]
    metrics = otel.collect("celery_once.calls", "celery_once.executions", "db.client.operation.duration",
                           "celery_once.lock.held", "celery_once.lock.hold.duration")
    recorded += [json.dumps(dict(p.attributes)) for points in metrics.values() for p in points]
    assert len(recorded) > 5
    assert not [text for text in recorded if secret in text]


def test_metric_attributes_never_hold_a_key_digest_or_task_id(otel: Recorded) -> None:
    tag = uuid.uuid4().hex
    result = tasks.add.apply((tag, "x"))
    metrics = otel.collect("celery_once.calls", "celery_once.executions", "celery_once.lock.held",
                           "celery_once.lock.hold.duration", "db.client.operation.duration")
    attributes = {key for points in metrics.values() for point in points for key in point.attributes}
    assert attributes and not attributes & {"celery_once.lock.digest", "messaging.message.id",
                                            "celery_once.holder.task_id"}
    values = json.dumps([dict(p.attributes) for points in metrics.values() for p in points])
    assert result.id not in values


def test_round_trip_durations_have_buckets_fine_enough_for_200_microseconds(otel: Recorded) -> None:
    tasks.parked.delay(uuid.uuid4().hex)
    (point,) = [p for p in otel.points("db.client.operation.duration") if p.attributes["db.operation.name"] == "SET"]
    assert point.count == 1
    assert {0.0001, 0.0002, 0.0003}.issubset(point.explicit_bounds)


def test_held_locks_and_hold_duration_follow_an_execution(otel: Recorded) -> None:
    tasks.add.apply((3, 4))
    metrics = otel.collect("celery_once.lock.held", "celery_once.lock.hold.duration")
    (held,), (hold,) = metrics["celery_once.lock.held"], metrics["celery_once.lock.hold.duration"]
    assert held.value == 0 and hold.count == 1


def test_an_unreachable_store_is_an_error_with_its_type() -> None:
    tracer_provider, exporter, meter_provider, _ = providers()
    configure(tracer_provider=tracer_provider, meter_provider=meter_provider)
    tasks.app.conf.once_redis_url = f"redis://127.0.0.1:{free_port()}/2"
    retry = tasks.app.conf.task_publish_retry
    tasks.app.conf.task_publish_retry = False
    try:
        with pytest.raises(LockStoreUnavailable):
            tasks.parked.delay(uuid.uuid4().hex)
    finally:
        tasks.app.conf.pop("once_redis_url", None)
        tasks.app.conf.task_publish_retry = retry
        telemetry.reset()
    (span,) = [s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == SCOPE]
    assert span.attributes["celery_once.outcome"] == "store_unavailable"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "redis.exceptions.ConnectionError"


def test_a_sampled_out_provider_records_no_span_but_the_metrics() -> None:
    tracer_provider, exporter, meter_provider, reader = providers(sampler=ALWAYS_OFF)
    configure(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        tasks.parked.delay(uuid.uuid4().hex)
        recorded = Recorded(exporter, reader, tracer_provider.get_tracer("tests"))
        assert recorded.lock_spans() == []
        assert recorded.counted("celery_once.calls", tasks.parked.name) == {"acquired": 1}
    finally:
        telemetry.reset()


@pytest.fixture(scope="module")
def solo_worker(redis_server: Any) -> Iterator[None]:
    """A solo worker in this process, consuming this module's queue: its pickups record with this test's providers."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    environ = dict(os.environ)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[QUEUE]):
            yield
    finally:
        # The worker set up logging for a worker process: give the session its own back.
        root.setLevel(level)
        root.handlers[:] = handlers
        os.environ.clear()
        os.environ.update(environ)


def test_an_execution_records_how_long_its_call_waited_to_start(solo_worker: None, otel: Recorded) -> None:
    probe.apply_async((uuid.uuid4().hex,), queue=QUEUE, countdown=0.5)
    (waited,) = wait_until(lambda: otel.points("celery_once.wait.duration"), what="the execution's wait")
    assert waited.count == 1
    assert 0.5 <= waited.sum < 10
    assert dict(waited.attributes) == {"celery_once.task.name": probe.name}
