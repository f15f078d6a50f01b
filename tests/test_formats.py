"""The compact formats of running locks and finished records, and those of releases before 1.2, read alike.

A rolling deploy runs both releases at once: a new process reads what an old
one wrote, and with ``legacy_formats`` writes what an old one reads.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from celery_once_task.ownership import INSTANCE, RunningOwner, owner_fields
from celery_once_task.record_keys import finished_key, legacy_finished_key
from celery_once_task.redelivery import Finished, finished_check
from celery_once_task.settings import Settings
from celery_once_task.store import FinishedCheck, FinishedRecord, LockStore


def keys() -> tuple[str, str]:
    return f"once_task:tests.formats:{uuid.uuid4().hex[:16]}:running", str(uuid.uuid4())


def test_a_running_lock_of_a_release_before_is_read_with_its_owner() -> None:
    value = json.dumps({"task_id": "t-1", "retries": 2, "worker": "celery@old", "instance": "0123456789abcdef",
                        "heartbeat": True, "since": 1.5}, separators=(",", ":"))
    owner = RunningOwner.parse(value)
    assert owner == RunningOwner("t-1", 2, "celery@old", "0123456789abcdef", True, legacy=True)
    # Its token is the old one: a takeover by the token matches the lock it read.
    assert owner is not None and owner.holds(value)


def test_a_compact_running_lock_is_read_with_its_owner() -> None:
    with_heartbeat = RunningOwner("t-1", 3, "celery@new", INSTANCE, True, task="app.shared")
    assert RunningOwner.parse(with_heartbeat.value(12.5)) == RunningOwner("t-1", 3, "", INSTANCE, True, "app.shared")
    without = RunningOwner("t-2", 0, "celery@new", INSTANCE, False)
    assert RunningOwner.parse(without.value()) == without
    assert owner_fields(without.value(12.5))["since"] == 12.5


def test_legacy_formats_write_the_running_lock_of_a_release_before() -> None:
    owner = RunningOwner("t-1", 0, "celery@new", INSTANCE, True, legacy=True)
    assert json.loads(owner.value(2.0)) == {"task_id": "t-1", "retries": 0, "worker": "celery@new",
                                            "instance": INSTANCE, "heartbeat": True, "since": 2.0}


def test_a_copy_is_told_by_a_finished_record_of_a_release_before(locks: Any) -> None:
    store = LockStore(locks)
    running, task_id = keys()
    old = Finished(0, "-", "0123456789abcdef", 42, False, time.time(), legacy=True)
    store.locks.record_finished(FinishedRecord(legacy_finished_key(running, task_id), old.value(), 60, 0, "-"))
    check = FinishedCheck(finished_key(running, task_id, "-"), 0, "-", legacy_finished_key(running, task_id))
    pickup = store.locks.pickup(None, task_id, running, RunningOwner(task_id, 0, "", INSTANCE, True), 60,
                                finished=check)
    assert not pickup.acquired and pickup.finished is not None
    assert Finished.parse(pickup.finished) == old._replace(at=round(old.at, 3))
    assert locks.exists(running) == 0


def test_a_compact_record_tells_its_end_by_its_ttl(locks: Any) -> None:
    store = LockStore(locks)
    running, task_id = keys()
    record = Finished(0, "-", "-", 0, True, time.time())
    key = finished_key(running, task_id, "-")
    store.locks.record_finished(FinishedRecord(key, record.value(), 60, 0, "-"))
    pickup = store.locks.pickup(None, task_id, running, RunningOwner(task_id, 0, "w", INSTANCE, False), 60,
                                finished=FinishedCheck(key, 0, "-"))
    assert pickup.finished is not None
    read = Finished.parse(pickup.finished, 60)
    assert read is not None and read.stores_result and read.instance == "-"
    assert abs(read.at - record.at) < 1.0


def test_legacy_formats_write_records_where_a_release_before_reads_them() -> None:
    request: Any = type("Request", (), {"id": "t-1", "headers": None})()
    running = "once_task:tests.formats:0123456789abcdef:running"
    legacy = finished_check(running, request, 0, Settings(legacy_formats=True))
    assert (legacy.key, legacy.other_key) == (legacy_finished_key(running, "t-1"), finished_key(running, "t-1", "-"))
    compact = finished_check(running, request, 0, Settings())
    assert (compact.key, compact.other_key) == (legacy.other_key, legacy.key)
