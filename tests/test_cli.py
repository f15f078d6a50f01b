"""The operators' command line, run as a subprocess against the test session's Redis."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import Any

from tests import worker_app as tasks
from tests.support import events, wait_until


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "celery_once_task", "--url", tasks.LOCKS_URL, *args],
                          capture_output=True, text=True, timeout=60)


def test_locks_lists_a_queue_lock_with_its_owner_and_ttl() -> None:
    tag = uuid.uuid4().hex
    result = tasks.parked.delay(tag)
    out = cli("locks", "--task", "tests.worker_app.parked").stdout
    assert f"{tasks.parked.once_key((tag,), {}, 'queue')}\n    queue lock, TTL 3600s, held by task {result.id}" in out


def test_locks_names_the_worker_and_attempt_of_a_running_lock(worker: Any, recs: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.gated.delay(tag)
    wait_until(lambda: events(recs, tag, "start"), what="the task to start")
    out = cli("locks", "--type", "running").stdout
    assert f"held by task {result.id}, attempt 0, worker {worker.name}" in out
    recs.rpush(f"gate:{tag}", 1)
    result.get(timeout=20)


def test_workers_lists_live_worker_instances(worker: Any) -> None:
    out = cli("workers").stdout
    assert "heartbeat expires in" in out


def test_release_with_the_owner_token_deletes_the_lock(locks: Any) -> None:
    tag = uuid.uuid4().hex
    result = tasks.parked.delay(tag)
    key = tasks.parked.once_key((tag,), {}, "queue")
    done = cli("release", key, "--owner", result.id)
    assert done.returncode == 0
    assert locks.exists(key) == 0


def test_release_with_another_token_leaves_the_lock(locks: Any) -> None:
    tag = uuid.uuid4().hex
    tasks.parked.delay(tag)
    key = tasks.parked.once_key((tag,), {}, "queue")
    refused = cli("release", key, "--owner", "someone-else")
    assert refused.returncode == 1
    assert "does not hold that owner token" in refused.stderr
    assert locks.exists(key) == 1


def test_unreachable_lock_store_is_one_clear_line() -> None:
    done = subprocess.run([sys.executable, "-m", "celery_once_task", "--url", "redis://127.0.0.1:1/0", "locks"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("celery-once-task: cannot reach the lock store at redis://127.0.0.1:1/0")
