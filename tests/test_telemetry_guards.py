"""What telemetry never does: ask a provider when off, need the API, fail a call, add a round trip, trace twice.

The providers are the SDK's, given to ``configure()`` (``tests.telemetry_support``); the tasks are
``tests.worker_app``'s, called in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from benchmarks.counting import count, install, uninstall
from celery_once_task import configure, telemetry
from celery_once_task.store import client_for
from tests import worker_app as tasks
from tests.support import ROOT
from tests.telemetry_support import Recorded, otel, outcomes

__all__ = ["otel"]


class Refusing:
    """A tracer or meter provider that fails the test if it is asked for anything."""

    calls: list[str]

    def __init__(self) -> None:
        self.calls = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("get_tracer")
        raise AssertionError("asked for a tracer")

    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("get_meter")
        raise AssertionError("asked for a meter")


def test_off_asks_no_provider_for_anything_and_lowers_the_flag() -> None:
    refusing = Refusing()
    configure(telemetry="off", tracer_provider=refusing, meter_provider=refusing)
    try:
        tag = uuid.uuid4().hex
        tasks.parked.delay(tag)
        tasks.parked.delay(tag)
        tasks.add.apply((5, 6))
        assert refusing.calls == []
        assert telemetry.active is False
    finally:
        configure(telemetry="auto")
        telemetry.reset()


def test_a_broken_telemetry_never_fails_a_call() -> None:
    class Broken:
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            return self

        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter down")

    configure(tracer_provider=Broken())
    try:
        tag = uuid.uuid4().hex
        assert tasks.parked.delay(tag) is not None
        assert tasks.parked.delay(tag) is None
        assert tasks.add.apply((1, 1)).get() == 2
    finally:
        telemetry.reset()


def test_recording_adds_no_round_trip(otel: Recorded) -> None:
    pool = client_for(tasks.LOCKS_URL).connection_pool
    install(pool, "telemetry")
    try:
        tasks.parked.delay("warm-up")  # opens this thread's connection
        before = count("telemetry")
        tag = uuid.uuid4().hex
        tasks.parked.delay(tag)
        tasks.parked.delay(tag)
        tasks.add.apply((tag, "y"))
        assert count("telemetry") - before == 4  # a publish, a duplicate, a pickup, a release
    finally:
        uninstall(pool)
    assert len(otel.lock_spans()) == 5


def test_the_librarys_own_redis_py_commands_are_not_traced_again(otel: Recorded, locks: Any) -> None:
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentor = RedisInstrumentor()
    tracer_provider = TracerProvider()
    redis_spans = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(redis_spans))
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        locks.script_flush()  # the pickup meets NOSCRIPT: its script is loaded again through redis-py
        redis_spans.clear()
        assert tasks.add.apply((7, 8)).get() == 15
        traced_by_redis = [s.name for s in redis_spans.get_finished_spans()]
        client_for(tasks.LOCKS_URL).ping()  # the instrumentor does trace redis-py's commands
    finally:
        instrumentor.uninstrument()
    assert traced_by_redis == []
    assert [s.name for s in redis_spans.get_finished_spans()] == ["PING"]
    assert outcomes(otel.lock_spans()) == [("running", "acquired"), ("running", "released")]


def test_without_the_api_calls_and_executions_run_and_nothing_is_recorded() -> None:
    # A process in which opentelemetry cannot be imported, even with telemetry "on".
    program = """
import json, sys, uuid
sys.modules["opentelemetry"] = None
from celery_once_task import configure, telemetry
from tests import worker_app as tasks
tag = uuid.uuid4().hex
first, second = tasks.parked.delay(tag), tasks.parked.delay(tag)
auto = telemetry.active
configure(telemetry="on")
eager = tasks.add.apply((1, 2)).get()
print(json.dumps({"published": first is not None, "dropped": second is None, "eager": eager, "auto": auto,
                  "on": telemetry.active,
                  "imported": [m for m, module in sys.modules.items() if m.startswith("opentelemetry") and module]}))
"""
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "published": True, "dropped": True, "eager": 3, "auto": False, "on": False, "imported": []}
