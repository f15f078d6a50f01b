"""The library's signals: sent on every duplicate and every recovered lock, in the process where it happens.

``tests.worker_app`` connects a receiver to each signal that records what it
got in the records database, in this process and in every worker.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest

from celery_once_task import OnceTaskLocked
from celery_once_task.signals import duplicate_call
from tests import worker_app as tasks
from tests.support import Worker, events, wait_until


def received(recs: Any, name: str, key: str) -> list[dict[str, Any]]:
    return [entry for entry in map(json.loads, recs.lrange(f"signals:{name}", 0, -1)) if entry.get("key") == key]


def test_duplicate_call_is_sent_in_the_publishing_process(recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked.delay(tag)
    assert tasks.parked.delay(tag) is None
    (entry,) = received(recs, "duplicate_call", tasks.parked.once_key((tag,), {}, "queue"))
    assert entry == {"task": tasks.parked.name, "pid": os.getpid(), "key": entry["key"], "holder_id": first.id,
                     "policy": "drop", "window": "pickup"}


def test_duplicate_call_names_the_policy(recs: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.parked_existing.delay(tag)
    tasks.parked_existing.delay(tag)
    (entry,) = received(recs, "duplicate_call", tasks.parked_existing.once_key((tag,), {}, "queue"))
    assert entry["policy"] == "existing"


def test_duplicate_call_names_the_window_it_met(recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.parked.apply_async((tag,), once={"unique_for": 60, "queue_lock": False})
    tasks.parked.apply_async((tag,), once={"unique_for": 60, "queue_lock": False})
    window = f"once_task:{{{tasks.parked.once_key((tag,), {}, 'queue')}}}:unique"
    (entry,) = received(recs, "duplicate_call", window)
    assert (entry["holder_id"], entry["window"]) == (first.id, "unique_for")


def test_duplicate_call_says_it_replaced_the_queued_calls_arguments(recs: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.apply_async((tag,), once={"queue_lock_conflict": "replace", "queue_lock_until": "end"})
    tasks.parked.apply_async((tag,), once={"queue_lock_conflict": "replace"})
    (entry,) = received(recs, "duplicate_call", tasks.parked.once_key((tag,), {}, "queue"))
    assert (entry["policy"], entry["window"]) == ("replace", "pickup")


def test_duplicate_execution_is_sent_in_the_worker(worker: Worker, recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.gated.delay(tag)
    wait_until(lambda: events(recs, tag, "start"), what="the task to start")
    duplicate = tasks.app.send_task(tasks.gated.name, args=[tag])
    with pytest.raises(OnceTaskLocked):
        duplicate.get(timeout=20)
    recs.rpush(f"gate:{tag}", 1)
    first.get(timeout=20)
    (entry,) = received(recs, "duplicate_execution", tasks.gated.once_key((tag,), {}, "running"))
    assert entry["task_id"] == duplicate.id
    assert entry["holder_id"] == first.id
    assert entry["policy"] == "reject"
    assert entry["pid"] != str(os.getpid()) and int(entry["pid"]) != os.getpid()


def test_a_receiver_that_raises_never_breaks_the_call(caplog: Any) -> None:
    def broken(**_: Any) -> None:
        raise RuntimeError("receiver failed")

    tag = uuid.uuid4().hex
    duplicate_call.connect(broken, weak=False)
    try:
        tasks.parked.delay(tag)
        assert tasks.parked.delay(tag) is None
    finally:
        duplicate_call.disconnect(broken)
    assert "receiver failed" in caplog.text
