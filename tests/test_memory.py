"""What the library keeps in Redis stays small: ``MEMORY USAGE`` of the keys real worker runs leave.

A finished record is kept for every finished execution, and a lock for every
call in flight: at 1,000 tasks a second they are millions of keys (see
docs/benchmarks.md, part l). Targets: at most 100 bytes a finished record and
200 bytes a held lock, on the test's own redis-server (Redis 7); a limited key
with one slot held, 240.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery_once_task.keys import finished_key, key_space
from tests import worker_app as tasks
from tests.support import events, lock_key_of, started, wait_until

RECORD_TARGET = 100
LOCK_TARGET = 200
#: A limited key is a hash: its limit and a field per slot held (the owner token, its lease and since when), so
#: one slot costs a hash's overhead over a lock's; 448 bytes before the compact token.
SLOTS_TARGET = 240


def test_a_finished_record_takes_at_most_100_bytes(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    running = lock_key_of(tasks.echo, "running", tag, 1)
    result = tasks.echo.delay(tag, 1)
    assert result.get(timeout=20) == 1
    record = finished_key(running, result.id, "-")
    wait_until(lambda: locks.exists(record), what="the finished record")
    usage = locks.memory_usage(record)
    assert usage <= RECORD_TARGET, (record, locks.get(record), usage)


def test_a_held_running_lock_takes_at_most_200_bytes(worker: Any, locks: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.gated.delay(tag)
    started(recs, tag)
    running = lock_key_of(tasks.gated, "running", tag)
    usage = locks.memory_usage(running)
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=20)
    assert usage is not None and usage <= LOCK_TARGET, (running, usage)


def test_a_held_queue_lock_takes_at_most_200_bytes(worker: Any, locks: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)  # its queue has no worker: the queue lock stays held
    usage = locks.memory_usage(lock_key_of(tasks.parked, "queue", tag))
    assert usage is not None and usage <= LOCK_TARGET, usage


def test_a_limited_key_with_one_slot_held_takes_at_most_240_bytes(worker: Any, locks: Any, recs: Any) -> None:
    tenant = uuid.uuid4().hex
    result = tasks.export_gated.delay(tenant, 1)
    wait_until(lambda: events(recs, tenant, "start"), what="the export to start")
    task = tasks.export_gated
    slots = key_space(task, task.once_settings()).limited(task.once_digest((tenant, 1), {}), "slots")
    usage = locks.memory_usage(slots)
    recs.rpush(f"gate:{tenant}:1", 1)
    assert result.get(timeout=20) == 1
    assert usage is not None and usage <= SLOTS_TARGET, (slots, usage)
