"""Test support for telemetry: the SDK's providers with an in-memory exporter and reader, and reading them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from celery_once_task import configure, telemetry

#: The library's instrumentation scope.
SCOPE = "celery_once_task"


class Recorded(NamedTuple):
    """What the library recorded in one test, and the tracer that test opens spans of its own with."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer: Tracer

    def lock_spans(self) -> list[ReadableSpan]:
        """The library's spans, in the order they ended."""
        return [s for s in self.spans.get_finished_spans() if s.instrumentation_scope.name == SCOPE]

    def collect(self, *names: str) -> dict[str, list[Any]]:
        """The data points of the library's metrics ``names``, from one collection.

        One: an SDK before 1.2x reports a histogram's point only in the collection after it changed.
        """
        data = self.metrics.get_metrics_data()
        found: dict[str, list[Any]] = {name: [] for name in names}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics if scope.scope.name == SCOPE else ():
                    if metric.name in found:
                        found[metric.name].extend(metric.data.data_points)
        return found

    def points(self, name: str) -> list[Any]:
        """The data points of the library's metric ``name``."""
        return self.collect(name)[name]

    def counted(self, name: str, task: str) -> dict[str, int]:
        """A counter's values for ``task``, by ``celery_once.outcome``."""
        return {p.attributes["celery_once.outcome"]: p.value for p in self.points(name)
                if p.attributes["celery_once.task.name"] == task}


def outcomes(spans: list[ReadableSpan]) -> list[tuple[Any, Any]]:
    """(lock type, outcome) of each span."""
    return [(s.attributes["celery_once.lock.type"], s.attributes["celery_once.outcome"]) for s in spans]


def providers(sampler: Any = None) -> tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]:
    """A tracer provider exporting to memory (``sampler``: the SDK's default), and a meter provider read in memory."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return tracer_provider, exporter, MeterProvider(metric_readers=[reader]), reader


@pytest.fixture
def otel() -> Iterator[Recorded]:
    """The library records through fresh providers given to ``configure()``, for one test."""
    tracer_provider, exporter, meter_provider, reader = providers()
    configure(telemetry="auto", tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Recorded(exporter, reader, tracer_provider.get_tracer("tests"))
    finally:
        configure(telemetry="auto")
        telemetry.reset()
