"""The operators' commands, run as ``celery -A tests.worker_app once ...`` subprocesses against the session's Redis.

The owner check of ``clear`` under a race is driven in-process instead, so
that the lock changes hands exactly between the listing and the delete.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any, Optional

import redis

from celery_once_task.keys import limited_key
from celery_once_task.ops import locks as lockinfo
from tests import worker_app as tasks
from tests.support import ROOT, Worker, free_port, gated_run, wait_until


def once(*args: str, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery", "-A", "tests.worker_app", "once", *args],
                          cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def once_json(*args: str) -> Any:
    done = once(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def parked_lock() -> tuple[str, str]:
    """A queue lock taken by a real call: a task published to a queue no worker consumes."""
    tag = uuid.uuid4().hex
    result = tasks.parked.delay(tag)
    return tasks.parked.once_key((tag,), {}, "queue"), result.id


# -- once locks ----------------------------------------------------------------------


def test_locks_lists_a_queue_lock_with_its_owner_and_ttl() -> None:
    key, task_id = parked_lock()
    lines = once("locks", "--task", "tests.worker_app.parked").stdout.splitlines()
    described = lines[lines.index(key) + 1]
    assert re.fullmatch(rf"    queue lock, TTL 3[56]\d\d\.\ds, held by task {task_id}", described)


def test_locks_json_gives_each_queue_lock_its_key_task_type_task_id_and_ttl() -> None:
    key, task_id = parked_lock()
    (lock,) = [lock for lock in once_json("locks", "--type", "queue") if lock["key"] == key]
    assert (lock["task"], lock["type"], lock["task_id"]) == ("tests.worker_app.parked", "queue", task_id)
    assert 3500 < lock["ttl"] <= 3600


def test_locks_json_gives_a_running_lock_its_worker_attempt_liveness_and_age(worker: Worker, recs: Any) -> None:
    tag = uuid.uuid4().hex
    with gated_run(tasks.gated, recs, tag) as result:
        listed = once_json("locks", "--task", "tests.worker_app.gated", "--type", "running")
    (lock,) = [lock for lock in listed if lock["task_id"] == result.id]
    assert lock["key"] == tasks.gated.once_key((tag,), {}, "running")
    assert (lock["type"], lock["worker"], lock["attempt"], lock["alive"]) == ("running", worker.name, 0, True)
    assert lock["ttl"] > 0
    # Values written before the lock recorded when it was taken have no age.
    assert lock["age"] is None or 0 <= lock["age"] < 60


def test_locks_of_one_task_leave_out_the_others() -> None:
    parked_lock()
    listed = once_json("locks", "--task", "tests.worker_app.add")
    assert all(lock["task"] == "tests.worker_app.add" for lock in listed)


def test_age_comes_from_when_the_lock_was_taken_and_liveness_from_the_heartbeat(locks: redis.Redis) -> None:
    # A running lock in the store's format, held by an instance that has no heartbeat.
    key = f"once_task:tests.worker_app.gated:{uuid.uuid4().hex[:16]}:running"
    value = {"task_id": "t-1", "retries": 2, "worker": "celery@gone", "instance": uuid.uuid4().hex[:16],
             "heartbeat": True, "since": time.time() - 30}
    locks.set(key, json.dumps(value, separators=(",", ":")), px=60_000)
    lock = lockinfo.get_lock(locks, key)
    assert lock is not None
    assert (lock.attempt, lock.worker, lock.alive) == (2, "celery@gone", False)
    assert lock.age is not None and 29 <= lock.age < 40
    locks.delete(key)


# -- once show -----------------------------------------------------------------------


def test_show_prints_one_lock_in_full() -> None:
    key, task_id = parked_lock()
    out = once("show", key).stdout
    assert f"key:       {key}\n" in out
    assert f"task id:   {task_id}\n" in out
    assert f"value:     {task_id}\n" in out


def test_show_json_gives_the_lock() -> None:
    key, task_id = parked_lock()
    shown = once_json("show", key)
    assert (shown["key"], shown["type"], shown["task_id"], shown["value"]) == (key, "queue", task_id, task_id)


def test_show_of_a_key_without_a_lock_exits_1() -> None:
    done = once("show", f"once_task:tests.worker_app.parked:{'0' * 16}:queue")
    assert done.returncode == 1
    assert "no lock at" in done.stderr


# -- once clear ----------------------------------------------------------------------


def test_clear_without_yes_deletes_nothing_and_says_how_to_confirm(locks: redis.Redis) -> None:
    key, _ = parked_lock()
    done = once("clear", "--key", key)
    assert done.returncode == 1
    assert f"would delete 1 lock(s):\n{key}" in done.stdout
    assert "add --yes to delete them" in done.stdout
    assert locks.exists(key) == 1


def test_clear_by_key_deletes_the_lock_and_prints_it(locks: redis.Redis) -> None:
    key, task_id = parked_lock()
    done = once("clear", "--key", key, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"deleted {key} (held by task {task_id})" in done.stdout
    assert locks.exists(key) == 0


def test_clear_by_task_and_type_deletes_exactly_those_locks(locks: redis.Redis) -> None:
    first, second = parked_lock(), parked_lock()
    cleared = once_json("clear", "--task", "tests.worker_app.parked", "--type", "queue", "--yes")
    assert {first[0], second[0]} <= {lock["key"] for lock in cleared["deleted"]}
    assert cleared["changed_hands"] == []
    assert all(lock["task"] == "tests.worker_app.parked" for lock in cleared["deleted"])
    assert locks.exists(first[0], second[0]) == 0


def test_clear_leaves_a_lock_that_changed_hands_after_it_was_listed(locks: redis.Redis) -> None:
    key, _ = parked_lock()
    listed = [lock for lock in lockinfo.iter_locks(locks, "tests.worker_app.parked") if lock.key == key]
    locks.set(key, "new-owner", px=60_000)  # between the listing and the delete
    cleared = lockinfo.clear(locks, listed)
    assert [lock.key for lock in cleared.changed_hands] == [key]
    assert cleared.deleted == ()
    assert locks.get(key) == b"new-owner"
    locks.delete(key)


# -- once workers --------------------------------------------------------------------


def test_workers_lists_the_live_worker_with_the_running_locks_it_holds(worker: Worker, recs: Any) -> None:
    tag = uuid.uuid4().hex
    with gated_run(tasks.gated, recs, tag) as result:
        workers = once_json("workers")
    (holder,) = [live for live in workers if any(lock["task_id"] == result.id for lock in live["locks"])]
    assert (holder["worker"], holder["alive"]) == (worker.name, True)
    assert 0 < holder["ttl"] <= 60


def test_workers_prints_node_name_and_heartbeat(worker: Worker) -> None:
    wait_until(lambda: once_json("workers"), what="the shared worker's heartbeat")
    out = once("workers").stdout
    assert "heartbeat expires in" in out
    assert "live worker instance(s)" in out


# -- the lock store ------------------------------------------------------------------


def test_unreachable_lock_store_gives_the_redacted_url_and_address_and_exit_code_2() -> None:
    port = free_port()
    done = once("locks", env={"ONCE_TEST_LOCKS_URL": f"redis://operator:s3cr3t-pw@127.0.0.1:{port}/2"})
    assert done.returncode == 2
    assert f"redis://operator:***@127.0.0.1:{port}/2 at 127.0.0.1:{port}" in done.stderr
    assert "s3cr3t-pw" not in done.stdout + done.stderr


def test_a_django_projects_lock_store_comes_from_its_celery_once_settings(redis_server: Any) -> None:
    # The project's second app reads no Django settings itself: CELERY_ONCE_REDIS_URL
    # (database 11) reaches it only through OnceTaskAppConfig, once Django is set up.
    key = f"once_task:tests.django_project.shop.tasks.parked:{uuid.uuid4().hex[:16]}:queue"
    redis_server.client(11).set(key, "django-task-id", px=60_000)
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.django_project.plain_celery", "once", "show", key, "--json"],
        cwd=ROOT, env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django_project.settings"},
        capture_output=True, text=True, timeout=60,
    )
    assert json.loads(done.stdout)["task_id"] == "django-task-id", done.stderr
    redis_server.client(11).delete(key)


def test_standalone_program_never_prints_the_password_of_a_url_it_refuses() -> None:
    done = subprocess.run([sys.executable, "-m", "celery_once_task", "--url", "http://user:s3cr3t-pw@host/", "locks"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "http://user:***@host/ is not a lock store URL" in done.stderr
    assert "redis+sentinel://" in done.stderr and "redis+cluster://" in done.stderr  # every form it takes
    assert "s3cr3t-pw" not in done.stdout + done.stderr


def test_standalone_program_runs_the_same_commands_against_a_url() -> None:
    key, task_id = parked_lock()
    done = subprocess.run([sys.executable, "-m", "celery_once_task", "--url", tasks.LOCKS_URL, "show", key, "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["task_id"] == task_id



def test_standalone_program_takes_the_lock_store_of_an_app() -> None:
    key, task_id = parked_lock()
    done = subprocess.run([sys.executable, "-m", "celery_once_task", "-A", "tests.worker_app", "show", key, "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout)["task_id"] == task_id, done.stderr


# -- once locks: keys 2.0.0 wrote (a rolling deploy) -----------------------------------------------------------


def test_locks_reads_a_limited_keys_slot_in_either_form(locks: Any) -> None:
    key = limited_key(tasks.export_gated.name, uuid.uuid4().hex[:16], "slots")
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    expiry = int(locks.time()[0]) * 1000 + 60_000
    since = time.time() - 5
    locks.hset(key, mapping={f"s:{old}\x1f0:123456789012345:\x1f": f"{expiry}:{since:.3f}", "limit": "3",
                             f"S{new}\x1f0:123456789012345:\x1f": f"{expiry}:{expiry - int(since * 1000)}"})
    locks.expire(key, 60)
    rows = {row.task_id: row for row in lockinfo.get_locks(locks, key)}
    assert set(rows) == {old, new}
    for row in rows.values():
        assert (row.limit, row.used, row.attempt, row.instance) == (3, 2, 0, "123456789012345")
        assert row.age is not None and 4 <= row.age <= 30
    assert (rows[old].slot or "").startswith("s:") and (rows[new].slot or "").startswith("S")


def test_locks_reads_a_debounced_keys_burst_in_either_form(locks: Any) -> None:
    key = limited_key(tasks.parked_reindex.name, uuid.uuid4().hex[:16], "burst")
    due = int(locks.time()[0]) * 1000 + 60_000
    locks.hset(key, mapping={"id": "open-1", "due": due, "count": 3, "args": "{}", "by": "t3", "closed:ran-1": "{}",
                             "Cran-2": "[[],{}]"})
    locks.expire(key, 60)
    rows = lockinfo.get_locks(locks, key)
    assert [(row.task_id, row.calls, row.value) for row in rows] == [
        ("open-1", 3, "open-1"), ("ran-2", None, "closed:ran-2"), ("ran-1", None, "closed:ran-1")]
    locks.delete(key)
    locks.hset(key, mapping={"i": "open-2", "d": due, "a": "[[],{}]"})
    (row,) = lockinfo.get_locks(locks, key)
    assert (row.task_id, row.calls) == ("open-2", 1) and row.due_in is not None and 50 < row.due_in <= 60
