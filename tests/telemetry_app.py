"""The test workers' app with OpenTelemetry set up the standard way: in each pool process, after the fork.

``tests.worker_app``'s app and tasks, and a ``worker_process_init`` receiver
that gives each pool process a global tracer provider and instruments Celery
(``opentelemetry-instrumentation-celery``), as the instrumentation's docs tell
prefork workers to. Nothing is configured for the library: its ``"auto"``
telemetry finds the provider set after the fork. The provider exports every
span as it ends, as JSON, to a list on the test session's redis-server
(``SPANS``), where the test reads them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import redis
from celery import signals
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from tests.worker_app import RECORDS_URL, app

__all__ = ["SPANS", "app", "described"]

#: The list of the records database that the workers' spans are pushed to.
SPANS = "telemetry:spans"


def described(span: ReadableSpan) -> dict[str, Any]:
    """What a test reads of a span."""
    parent = span.parent
    return {
        "name": span.name,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
        "kind": span.kind.name,
        "span_id": format(span.context.span_id, "016x") if span.context else None,
        "parent_id": format(parent.span_id, "016x") if parent else None,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": event.name, "attributes": dict(event.attributes or {})} for event in span.events],
        "status": span.status.status_code.name,
    }


class RedisListExporter(SpanExporter):
    """Pushes each span, described, to ``SPANS``."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(RECORDS_URL)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.client.rpush(SPANS, *[json.dumps(described(span), default=str) for span in spans])
        return SpanExportResult.SUCCESS


#: Set in the environment of the worker that runs this app (``test_telemetry_worker``).
WORKER_ENV = "ONCE_TEST_TELEMETRY_WORKER"


@signals.worker_process_init.connect(weak=False)
def set_up_telemetry(**_: Any) -> None:
    # Connected wherever this module is imported, the test process included,
    # where a solo worker (start_worker) sends worker_process_init too: only
    # the instrumented worker's pool processes set up its provider.
    if os.environ.get(WORKER_ENV) != "1":
        return
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(RedisListExporter()))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()
