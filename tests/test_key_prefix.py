"""``key_prefix``: every key the library writes starts with it; apps with different prefixes never meet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from celery import Celery

from celery_once_task import OnceTask, configure
from celery_once_task.settings import reset_configuration, resolve
from tests import worker_app as tasks
from tests.support import ROOT, events, running_worker, started, wait_until
from tests.test_cli import once


def app_with_prefix(prefix: str) -> Any:
    """An app of its own on the session's lock store, under ``prefix``, with a task parked in the broker."""
    app = Celery(f"prefixed-{prefix}", broker=tasks.BROKER_URL, set_as_current=False)
    app.conf.update(once_redis_url=tasks.LOCKS_URL, once_key_prefix=prefix, task_default_queue="parked")

    @app.task(base=OnceTask, name="tests.prefixed.send", shared=False)
    def send(tag: str) -> str:
        return tag

    return send


def test_two_apps_with_different_prefixes_on_one_redis_never_see_each_others_keys(locks: Any) -> None:
    first, second = f"app_a_{uuid.uuid4().hex[:6]}", f"app_b_{uuid.uuid4().hex[:6]}"
    send_a, send_b = app_with_prefix(first), app_with_prefix(second)
    tag = uuid.uuid4().hex
    assert send_a.delay(tag) is not None
    assert send_b.delay(tag) is not None  # the same call, in the other app: not a duplicate
    assert send_a.delay(tag) is None and send_b.delay(tag) is None
    keys_a = [key.decode() for key in locks.scan_iter(match=f"{first}:*")]
    keys_b = [key.decode() for key in locks.scan_iter(match=f"{second}:*")]
    assert keys_a == [f"{first}:tests.prefixed.send:{send_a.once_digest((tag,), {})}:queue"]
    assert keys_b == [f"{second}:tests.prefixed.send:{send_b.once_digest((tag,), {})}:queue"]


def test_a_bad_prefix_is_refused_naming_the_setting() -> None:
    try:
        for bad in ("", "two words", "{tag}", "app:billing", "x" * 101):
            with pytest.raises(ValueError, match="key_prefix must be a text of 1 to 100 printable characters"):
                configure(key_prefix=bad)
    finally:
        reset_configuration()
        configure(redis_url=tasks.LOCKS_URL)


@pytest.mark.slow
def test_a_worker_and_the_once_command_keep_to_the_configured_prefix(redis_server: Any, locks: Any,
                                                                     recs: Any) -> None:
    """Its running lock, its finished record and its heartbeat start with the prefix; the command reads it."""
    prefix = f"other_{uuid.uuid4().hex[:6]}"
    env = {"ONCE_TEST_KEY_PREFIX": prefix}
    tag = uuid.uuid4().hex
    queue = f"prefixed-{tag[:8]}"
    with running_worker(redis_server.port, f"prefixed-{tag[:6]}", queues=queue, concurrency=1, env=env):
        result = tasks.gated.apply_async((tag,), queue=queue)
        started(recs, tag)
        listed = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.worker_app", "once", "locks", "--json"],
                                cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                                timeout=60)
        workers = subprocess.run([sys.executable, "-m", "celery_once_task", "--url", tasks.LOCKS_URL, "--prefix",
                                  prefix, "workers", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        recs.rpush(f"gate:{tag}", 1)
        assert result.get(timeout=20) == tag
    running = [lock for lock in json.loads(listed.stdout) if lock["type"] == "running"]
    assert [lock["task_id"] for lock in running] == [result.id]
    assert running[0]["key"].startswith(f"{prefix}:tests.worker_app.gated:")
    assert [[lock["key"] for lock in worker["locks"]] for worker in json.loads(workers.stdout)] == [[running[0]["key"]]]
    assert [key.decode() for key in locks.scan_iter(match=f"{prefix}_done:*")] != []
    # Nothing under the default prefix: the session's own tests do not see it.
    assert result.id not in once("locks", "--type", "running").stdout
    wait_until(lambda: not list(locks.scan_iter(match=f"{prefix}_worker:*")), what="the heartbeat to go")
    assert len(events(recs, tag, "start")) == 1
    assert resolve(tasks.app).key_prefix == "once_task"
