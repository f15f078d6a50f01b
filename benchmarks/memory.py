"""(l) What the library keeps in Redis: memory per key of each kind, and at 1,000 tasks a second for an hour.

Every key is written by the library itself, on a redis-server of the
benchmark's own: calls published to a queue no worker consumes hold a queue
lock, a ``unique_for`` window and a debounced burst; an in-process solo worker
(with the boot step: leases and a heartbeat, as the README sets workers up)
runs a task that samples its own running lock and a ``running_limit`` task that
samples its key's slots, from inside their bodies, and every execution it
finishes leaves a finished record. Each kind's ``MEMORY USAGE`` is sampled,
key by key.

The steady state at 1,000 tasks a second: the finished records dominate, one
per execution kept for ``redelivery_guard_timeout`` (the library's default
on Celery's Redis transport), so 1,000 x that many records of the size
measured; checked by writing 1,000,000 records through the library's own
script (``RECORD_FINISHED``) into an empty database and reading
``used_memory`` (``INFO memory``) before and after.

Run it with ``bash scripts/bench.sh --memory``; ``--json`` keeps the figures, and
``benchmarks/memory_before.json`` holds the same figures measured on the
release before the compact formats, printed side by side.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from .servers import RedisServer

BEFORE = Path(__file__).with_name("memory_before.json")
RUNS = 200
SAMPLES = 20
RECORDS = 1_000_000
RATE = 1_000  # tasks a second
FILL_DB = 11  # a database no other part uses
KINDS = ("queue", "running", "slot", "burst", "window", "throttle", "finished")


def _publish_andsample() -> None:
    from .memory_tasks import debounced, queued, sample, windowed

    for kind, task, suffix in (("queue", queued, ":queue"), ("window", windowed, ":unique"),
                               ("burst", debounced, ":burst")):
        for i in range(SAMPLES):
            task.delay(i)
        sample(f"once_task*benchmarks.memory.{task.name.rsplit('.', 1)[1]}*{suffix}", kind, SAMPLES)


def _run_worker() -> None:
    from celery.contrib.testing.worker import start_worker

    from . import tasks
    from .memory_tasks import SAMPLED, limited, lock_client, runs, sample, throttled

    records = tasks.records()
    with start_worker(tasks.app, pool="solo", perform_ping_check=False, queues=["celery"], loglevel="WARNING"):
        for i in range(RUNS):
            runs.delay(i)
            limited.delay(i)
            if throttled is not None:
                throttled.delay(i)
        kinds = ("running", "slot", "throttle") if throttled is not None else ("running", "slot")
        deadline = time.monotonic() + 120
        while any(records.llen(SAMPLED + kind) < RUNS for kind in kinds) and time.monotonic() < deadline:
            time.sleep(0.1)
        # The last execution's release follows its body.
        while time.monotonic() < deadline and sum(1 for _ in lock_client().scan_iter(
                match="once_task:benchmarks.memory.runs:*:running")):
            time.sleep(0.05)
    sample("once_task_done:*", "finished", SAMPLES * 5)


def _guard_seconds() -> float:
    from celery_once_task.settings import resolve

    from . import tasks
    from .memory_tasks import runs

    settings = resolve(tasks.app, runs)
    try:
        from celery_once_task.redelivery import guard_seconds
    except ImportError:  # pragma: no cover - a release without it
        return float(settings.redelivery_guard_timeout)
    return guard_seconds(runs, settings)


def _record_args(i: int, guard: float) -> tuple[str, str, int, int, str]:
    """The key, value, TTL (ms), attempt and call of the ``i``-th finished record, as the library writes them."""
    from celery_once_task import redelivery

    try:
        from celery_once_task.record_keys import finished_key
    except ImportError:  # a release before record_keys: its key grammar spelled the finished records
        from celery_once_task.keys import finished_key  # type: ignore[attr-defined,no-redef]

    seed = hashlib.blake2b(b"%d" % i, digest_size=16).digest()
    running = f"once_task:benchmarks.memory.runs:{seed.hex()[:16]}:running"
    task_id = str(uuid.UUID(bytes=seed, version=4))
    # A record of an execution whose result is being stored, by a worker with a heartbeat.
    record = redelivery.Finished(0, redelivery.NO_CALL, redelivery.INSTANCE, os.getpid(), True, time.time())
    if "call" in inspect.signature(finished_key).parameters:
        key = finished_key(running, task_id, redelivery.NO_CALL)
    else:  # a pre-release build (1.1.0), measured for the figures before
        key = finished_key(running, task_id)  # type: ignore[call-arg]
    return key, record.value(), int(guard * 1000), 0, redelivery.NO_CALL


def _fill_records(server: RedisServer, guard: float) -> dict[str, Any]:
    from celery_once_task.store.lua.locks import RECORD_FINISHED
    from celery_once_task.store.scripts import Call, run

    client = server.client(FILL_DB)
    client.flushdb()
    before = int(client.info("memory")["used_memory"])
    batch = 5_000
    for start in range(0, RECORDS, batch):
        calls = []
        for i in range(start, min(RECORDS, start + batch)):
            key, value, ttl, attempt, call = _record_args(i, guard)
            calls.append(Call(RECORD_FINISHED, key, (value, ttl, attempt, call)))
        run(client, calls)
    after = int(client.info("memory")["used_memory"])
    sample_key = _record_args(0, guard)[0]
    figures = {"records": RECORDS, "used_memory_delta": after - before,
               "bytes_per_record": (after - before) / RECORDS,
               "sample_key": sample_key, "sample_value": client.get(sample_key).decode(),
               "sample_memory_usage": client.memory_usage(sample_key)}
    client.flushdb()
    client.close()
    return figures


def run(server: Optional[RedisServer] = None) -> dict[str, Any]:
    """Measure on ``server`` (the one ``tasks`` was imported for), or on a redis-server of its own."""
    own = server is None
    if server is None:
        server = RedisServer()
        os.environ["BENCH_REDIS_PORT"] = str(server.port)
    try:
        from . import tasks
        from .memory_tasks import SAMPLED

        for kind in KINDS:
            tasks.records().delete(SAMPLED + kind)
        _publish_andsample()
        _run_worker()
        guard = _guard_seconds()
        per_kind: dict[str, Any] = {}
        for kind in KINDS:
            rows = [json.loads(row) for row in tasks.records().lrange(SAMPLED + kind, 0, -1)]
            if rows:
                per_kind[kind] = {"median_bytes": statistics.median(r[1] for r in rows), "max_bytes": max(
                    r[1] for r in rows), "samples": len(rows), "key": rows[0][0],
                    "value": _value_of(rows[0][0], kind)}
        filled = _fill_records(server, guard)
        steady = RATE * guard
        return {"redis": server.client(0).info("server")["redis_version"], "guard_seconds": guard,
                "per_kind": per_kind, "fill": filled,
                "steady_state": {"tasks_per_second": RATE, "records": steady,
                                 "bytes": steady * filled["bytes_per_record"]}}
    finally:
        if own:
            server.stop()


def _value_of(key: str, kind: str) -> Optional[str]:
    """What the kind's keys hold, for the table: the string value, or a hash's fields."""
    del key
    return {"queue": "a task id", "window": "a task id", "running": "owner token and since",
            "slot": "hash: a field per slot", "burst": "hash: the burst", "throttle": "sorted set: the starts",
            "finished": "a record"}.get(kind)


def text(figures: dict[str, Any], before: Optional[dict[str, Any]] = None) -> str:
    """The figures as a Markdown table, beside ``before`` (the release before) where given."""
    lines = ["| key | MEMORY USAGE before | MEMORY USAGE now | a key now |", "|---|---|---|---|"]
    for kind in KINDS:
        now = figures["per_kind"].get(kind)
        then = (before or {}).get("per_kind", {}).get(kind)
        if now is None and then is None:
            lines.append(f"| {kind} | - | - | (no such key on this release) |")
            continue
        lines.append(f"| {kind} | {_bytes(then)} | {_bytes(now)} | `{now['key'] if now else ''}` |")
    fill, steady = figures["fill"], figures["steady_state"]
    lines += ["", "| 1,000 tasks a second | before | now |", "|---|---|---|"]
    old_fill = (before or {}).get("fill", {})
    old_steady = (before or {}).get("steady_state", {})
    lines.append(f"| finished records kept (redelivery_guard_timeout) | {_n(old_steady.get('records'))} "
                 f"({_n((before or {}).get('guard_seconds'))} s) | {_n(steady['records'])} "
                 f"({_n(figures['guard_seconds'])} s) |")
    lines.append(f"| used_memory per record, 1M written by RECORD_FINISHED | "
                 f"{_n(old_fill.get('bytes_per_record'))} B | {_n(fill['bytes_per_record'])} B |")
    lines.append(f"| steady-state memory of the records | {_gb(old_steady.get('bytes'))} | {_gb(steady['bytes'])} |")
    return "\n".join(lines)


def _bytes(row: Optional[dict[str, Any]]) -> str:
    return "-" if row is None else f"{row['median_bytes']:.0f} B"


def _n(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _gb(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 1e9:.2f} GB"


def before() -> Optional[dict[str, Any]]:
    return json.loads(BEFORE.read_text()) if BEFORE.exists() else None


def section(figures: dict[str, Any], before: Optional[dict[str, Any]] = None) -> list[str]:
    """Part (l) of docs/benchmarks.md."""
    fill, per_kind = figures["fill"], figures["per_kind"]
    return [
        "## (l) What the library keeps in Redis",
        "",
        "`bash scripts/bench.sh --memory`: every key written by the library itself, on a redis-server of the "
        "benchmark's own (Redis " + str(figures["redis"]) + "): calls published to a queue no worker consumes hold a "
        "queue lock, a `unique_for` window and a debounced burst; an in-process solo worker with the boot step runs "
        "tasks that sample their own running lock and a `running_limit` key's slots from inside their bodies, and "
        "each execution it finishes leaves a finished record. `MEMORY USAGE` per key (the median of the samples), "
        "beside the same measurement on a pre-release build, 1.1.0 (`benchmarks/memory_before.json`):",
        "",
        text(figures, before),
        "",
        f"The 1,000,000 records written through `RECORD_FINISHED` hold `{fill['sample_value']}`-like values "
        f"(`MEMORY USAGE` {fill['sample_memory_usage']} B; `used_memory` also counts the expiry table and the hash "
        "tables' buckets). At 1,000 tasks a second the finished records are the bulk of what the library keeps: "
        "every other key lives while its call is queued or running. On RabbitMQ (300 s) the same rate keeps "
        f"{RATE * 300:,} records, about {RATE * 300 * fill['bytes_per_record'] / 1e6:.0f} MB. "
        "A limited key is a hash (its limit and a field "
        f"per slot held), {per_kind.get('slot', {}).get('median_bytes', 0):.0f} B with one slot; a debounced burst "
        f"of one call {per_kind.get('burst', {}).get('median_bytes', 0):.0f} B; a throttle key (here one start and "
        f"its limits) {per_kind.get('throttle', {}).get('median_bytes', 0):.0f} B, about 72 B more a start while "
        "its starts are members of 64 bytes or less, which keeps it a listpack. A key's name counts in steps of 16 "
        "bytes: the same keys of a task whose name is a few characters longer take 16 B more.",
    ]
