"""What the library keeps in Redis stays small: ``MEMORY USAGE`` of the keys real worker runs leave.

A finished record is kept for every finished execution, and a lock for every
call in flight: at 1,000 tasks a second they are millions of keys (see
docs/benchmarks.md, part l). Targets: at most 100 bytes a finished record and
200 bytes a held lock, a limited key with one slot held and a debounced burst of
one call, on the test's own redis-server (Redis 7).

A key's name is part of its ``MEMORY USAGE``, allocated in steps of 16 bytes:
the limited and debounced keys are checked with a task name of 25 characters
(``benchmarks.memory.limited``'s length, the benchmark's), and a limited key of
the test app's (29 characters, one step more) after a real worker run.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from celery_once_task.keys import key_space, limited_key
from celery_once_task.ownership import INSTANCE, RunningOwner
from celery_once_task.record_keys import finished_key
from celery_once_task.store import LockStore
from celery_once_task.store.lua.throttles import THROTTLE_TAKE
from celery_once_task.store.slots import Claim
from celery_once_task.store.throttles import starter_of
from tests import worker_app as tasks
from tests.support import events, lock_key_of, run_script, started, wait_until

RECORD_TARGET = 100
LOCK_TARGET = 200
#: A limited key is a hash: its limit and a field per slot held (the owner token, its lease and since when), so
#: one slot costs a hash's overhead over a lock's (448 bytes before the compact token, 232 before the one-letter
#: fields); with the test app's task name, one more 16-byte step of the key's name.
SLOTS_TARGET = 200
SLOTS_TARGET_LONGER_NAME = 216
#: A throttle log with ten starts: about 70 bytes a start over a key's own cost.
THROTTLE_TARGET = 1000
#: A task name of 25 characters, as long as the benchmark's.
SHORT_NAME = "tests.memory_limits.short"


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


def test_a_limited_key_with_one_slot_held_takes_at_most_216_bytes_under_a_29_character_task_name(
        worker: Any, locks: Any, recs: Any) -> None:
    tenant = uuid.uuid4().hex
    result = tasks.export_gated.delay(tenant, 1)
    wait_until(lambda: events(recs, tenant, "start"), what="the export to start")
    task = tasks.export_gated
    slots = key_space(task, task.once_settings()).limited(task.once_digest((tenant, 1), {}), "slots")
    usage = locks.memory_usage(slots)
    recs.rpush(f"gate:{tenant}:1", 1)
    assert result.get(timeout=20) == 1
    assert usage is not None and usage <= SLOTS_TARGET_LONGER_NAME, (slots, usage)


def test_a_limited_key_with_one_slot_held_takes_at_most_200_bytes(locks: Any) -> None:
    key = limited_key(SHORT_NAME, uuid.uuid4().hex[:16], "slots")
    task_id = str(uuid.uuid4())
    # As a worker with the boot step names its executions: by its instance, whose heartbeat names the worker.
    owner = RunningOwner(task_id=task_id, retries=0, worker="celery@host", instance=INSTANCE, heartbeat=True)
    claim = Claim(key, owner.token, owner.attempt_prefix, f"{task_id}\x1f0", 2, 60.0, 60.0)
    assert LockStore(locks).slots.pickup(claim, str(int(time.time() * 1000))).code == 1
    usage = locks.memory_usage(key)
    assert usage is not None and usage <= SLOTS_TARGET, (key, locks.hgetall(key), usage)


def test_a_debounced_burst_of_one_call_takes_at_most_200_bytes(locks: Any) -> None:
    key = limited_key(SHORT_NAME, uuid.uuid4().hex[:16], "burst")
    LockStore(locks).bursts.call(key, str(uuid.uuid4()), debounce=600.0, most=None, arguments="[[0],{}]",
                                 keep=60.0, overdue=60.0)
    usage = locks.memory_usage(key)
    assert usage is not None and usage <= LOCK_TARGET, (key, locks.hgetall(key), usage)


def test_a_throttle_log_of_starts_stays_a_listpack(locks: Any) -> None:
    key = limited_key(SHORT_NAME, uuid.uuid4().hex[:16], "throttle")
    for _ in range(10):
        # A call id (task id, attempt) and a worker instance with a pool process's id (the largest Linux
        # gives), as a worker writes them: "10/m".
        run_script(locks, THROTTLE_TAKE, key, f"{uuid.uuid4()}\x1f0", 100, 60, "postpone", "10/60",
                   starter_of(INSTANCE, 4194304), "", "count", "", 10, 60_000)
    # A member over 64 bytes would make it a skiplist: several times the memory.
    assert locks.object("encoding", key) == b"listpack", locks.zrange(key, 0, -1)
    usage = locks.memory_usage(key)
    assert usage is not None and usage <= THROTTLE_TARGET, usage
