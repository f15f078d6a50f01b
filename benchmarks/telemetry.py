"""(k) telemetry: what recording the lock operations with OpenTelemetry costs, on the publish and execution paths.

Three settings of the library, side by side, on three paths:

``off``          ``telemetry="off"``: the paths test one flag and run no telemetry code
``sampled out``  the SDK's providers, the tracer's sampler ``ALWAYS_OFF`` (no span records: the
                 common case under ratio sampling) and the metrics recorded, as they are whatever
                 the sampler says
``recording``    the SDK's providers, every span recorded (``ALWAYS_ON``) and handed to a
                 ``BatchSpanProcessor`` whose exporter drops it, and the metrics recorded

``publish``      ``once_noop.delay(...)`` with new arguments each call: the queue lock, then the publish
``duplicate``    ``once_noop.delay(...)`` with the arguments of a call already queued: dropped
``execution``    ``once_noop.apply(...)``: an eager execution, its pickup and its release (the
                 worker's lock round trips, without a broker delivery)

Each path's minimum, median and 99th percentile, and each setting's ratio
to ``off`` and the time it adds (to the median, and to the minimum). The
settings take turns by blocks of calls (each block after an untimed
call, so that a decision made on the setting's first call is not timed),
every call timed on its own; no worker consumes the queue, and the messages
and locks are deleted between rounds, outside the timing. The providers are
given to ``configure()``; nothing is exported anywhere, so the figures are
the library's and the SDK's cost in the calling process.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Callable

import redis
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from celery_once_task import configure, telemetry

from . import tasks
from .stats import median, percentile, rotation

SETTINGS = ("off", "sampled out", "recording")
PATHS = ("publish", "duplicate", "execution")


class _Dropped(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _use(setting: str) -> Callable[[], None]:
    """Configure the library for ``setting``; returns what shuts its providers down."""
    if setting == "off":
        configure(telemetry="off")
        return lambda: None
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF if setting == "sampled out" else ALWAYS_ON)
    tracer_provider.add_span_processor(BatchSpanProcessor(_Dropped()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    configure(telemetry="auto", tracer_provider=tracer_provider, meter_provider=meter_provider)

    def shut_down() -> None:
        tracer_provider.shutdown()
        meter_provider.shutdown()

    return shut_down


def run(rounds: int, block: int, broker: redis.Redis, locks: redis.Redis) -> dict[str, Any]:
    """Each path's latency (µs) under each setting: median and p99, and the ratios to ``off``."""
    once = tasks.once_noop
    queue = tasks.app.conf.task_default_queue
    clock = time.perf_counter_ns
    # i = EDGE with n far above it: the body writes no record (see tasks._done).
    i, n = tasks.EDGE, 10**9
    latencies: dict[str, dict[str, list[float]]] = {s: {p: [] for p in PATHS} for s in SETTINGS}

    def reset() -> None:
        broker.delete(queue)
        locks.flushdb()

    for setting in SETTINGS:  # warm-up: connections open, every code path hot
        shut_down = _use(setting)
        for k in range(100):
            once.delay("warm", k, n)
            once.delay("warm", k, n)
            once.apply(("warm", i, n))
        shut_down()
    reset()

    for r in range(rounds):
        held = (f"held-{r}", i, n)
        once.delay(*held)
        for setting in rotation(SETTINGS, r):
            shut_down = _use(setting)
            once.delay(f"untimed-{setting}-{r}", i, n)  # the setting's first call decides: not timed
            sink = latencies[setting]
            for k in range(block):
                for path in rotation(PATHS, k):
                    if path == "execution":
                        run, args = once.apply, ((f"run-{setting}-{r}", i, n),)
                    else:
                        run, args = once.delay, (held if path == "duplicate" else (f"{setting}-{r}", k, n))
                    t0 = clock()
                    run(*args)
                    sink[path].append((clock() - t0) / 1000)
            shut_down()
        reset()
        gc.collect()
    configure(telemetry="auto")
    telemetry.reset()

    result: dict[str, Any] = {"rounds": rounds, "block": block, "paths": {}}
    for path in PATHS:
        off = median(latencies["off"][path])
        result["paths"][path] = {
            setting: {
                "calls": len(latencies[setting][path]),
                "min_us": min(latencies[setting][path]),
                "median_us": median(latencies[setting][path]),
                "p99_us": percentile(latencies[setting][path], 99),
                "ratio_to_off": median(latencies[setting][path]) / off,
                "added_us": median(latencies[setting][path]) - off,
                "added_min_us": min(latencies[setting][path]) - min(latencies["off"][path]),
            }
            for setting in SETTINGS
        }
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Telemetry: {result['rounds']} rounds x {result['block']} calls of each path under each setting",
        "",
        "| path | off: min / median / p99 (µs) | sampled out | recording | sampled out / off: median "
        "(added: median, min) | recording / off |",
        "|---|---|---|---|---|---|",
    ]
    for path, figures in result["paths"].items():
        cells = " | ".join(f"{figures[s]['min_us']:.0f} / {figures[s]['median_us']:.0f} / {figures[s]['p99_us']:.0f}"
                           for s in SETTINGS)
        ratios = " | ".join(f"{figures[s]['ratio_to_off']:.2f}x (+{figures[s]['added_us']:.0f}, "
                            f"+{figures[s]['added_min_us']:.0f} µs)" for s in SETTINGS[1:])
        lines.append(f"| {path} | {cells} | {ratios} |")
    lines += ["", "The minimum is a call no other process interrupted: on a busy machine, the closer measure of "
              "what a setting adds."]
    return "\n".join(lines)
