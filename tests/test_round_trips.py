"""Network round trips to the lock store: one per publish, per dropped duplicate, at pickup, at the end.

The process's lock client (``store.client_for``) gets a connection class
that counts what it sends, per thread: one ``send_packed_command`` is one
round trip, a pipeline included; a new connection's handshake is not
counted. Publishing is counted in the test's thread. The worker paths run
in a solo worker in this process (``start_worker``), on an app and a queue of
this module's own, so that the counting class is in effect where the task
runs and the session's shared worker never sees these messages: the pickup
is what the worker thread sends between ``task_prerun`` and the task body,
the end what it sends between the body and ``task_postrun``.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals
from celery.contrib.testing.worker import start_worker

from benchmarks.counting import count, install, uninstall
from celery_once_task import OnceTask
from celery_once_task.store import client_for
from tests import worker_app
from tests.support import wait_until

QUEUE = "round_trips"

COUNTER = "locks"


def sent(thread: int | None = None) -> int:
    return count(COUNTER, thread)


# An app of this module's own (same broker, same lock store as worker_app,
# which configured it): starting a worker in this process changes the app's
# queue selection and logging, which the other tests' app must not see.
app = Celery("round_trips", broker=worker_app.BROKER_URL)
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)

#: Round trips the worker thread had sent at each point of the probe's execution.
marks: dict[str, int] = {}


@app.task(base=OnceTask, name="tests.test_round_trips.probe")
def probe(tag: str) -> None:
    marks["body"] = sent()


def on_prerun(task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) == probe.name:
        marks["prerun"] = sent()


def on_postrun(task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) == probe.name:
        marks["postrun"] = sent()


@pytest.fixture(scope="module", autouse=True)
def counting_lock_client(redis_server: Any) -> Iterator[None]:
    """Count the round trips of the lock client of this process while this module runs."""
    pool = client_for(worker_app.LOCKS_URL).connection_pool
    install(pool, COUNTER)
    try:
        yield
    finally:
        uninstall(pool)


@pytest.fixture(scope="module")
def solo_worker(redis_server: Any) -> Iterator[None]:
    """A solo worker in this process, consuming this module's queue."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    environ = dict(os.environ)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, queues=[QUEUE]):
            run_probe()  # the worker thread's first task opens its connection
            yield
    finally:
        signals.task_prerun.disconnect(on_prerun)
        signals.task_postrun.disconnect(on_postrun)
        # The worker set up logging for a worker process: give the session its own back.
        root.setLevel(level)
        root.handlers[:] = handlers
        os.environ.clear()
        os.environ.update(environ)


def run_probe() -> dict[str, int]:
    marks.clear()
    probe.apply_async((uuid.uuid4().hex,), queue=QUEUE)
    wait_until(lambda: "postrun" in marks, what="the probe task to run")
    return dict(marks)


def counted_publish(*args: Any) -> tuple[Any, int]:
    """Publish ``worker_app.parked`` (routed to a queue no worker consumes); return its result and round trips."""
    before = sent()
    result = worker_app.parked.delay(*args)
    return result, sent() - before


def test_publish_takes_one_round_trip() -> None:
    counted_publish("warm-up")  # opens this thread's connection
    result, round_trips = counted_publish(uuid.uuid4().hex)
    assert result is not None
    assert round_trips == 1


def test_dropped_duplicate_takes_one_round_trip() -> None:
    tag = uuid.uuid4().hex
    counted_publish(tag)
    result, round_trips = counted_publish(tag)
    assert result is None
    assert round_trips == 1


def test_pickup_takes_one_round_trip(solo_worker: None) -> None:
    mark = run_probe()
    assert mark["body"] - mark["prerun"] == 1


def test_end_takes_one_round_trip(solo_worker: None) -> None:
    mark = run_probe()
    assert mark["postrun"] - mark["body"] == 1
