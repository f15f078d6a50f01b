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
from kombu.utils.json import dumps

from benchmarks.counting import count, install, uninstall
from celery_once_task import OnceTask
from celery_once_task.ids import waiting_token
from celery_once_task.ownership import RunningOwner
from celery_once_task.record_keys import parked_keys
from celery_once_task.republish import republish
from celery_once_task.store import client_for
from celery_once_task.store.scripts import SCRIPTS
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


#: A waiting copy's entry the waiting probe leaves behind it while it runs, to be handed over at its end.
handover: dict[str, str] = {}


@app.task(base=OnceTask, name="tests.test_round_trips.waiting_probe", running_lock_conflict="wait")
def waiting_probe(tag: str) -> None:
    if handover:
        client_for(worker_app.LOCKS_URL).set(handover["key"], handover["value"])
    marks["body"] = sent()


@app.task(base=OnceTask, name="tests.test_round_trips.limited_probe", running_limit=3)
def limited_probe(tag: str) -> None:
    marks["body"] = sent()


@app.task(base=OnceTask, name="tests.test_round_trips.until_end_probe", queue_lock_until="end")
def until_end_probe(tag: str) -> None:
    marks["body"] = sent()


@app.task(base=OnceTask, name="tests.test_round_trips.replacing_probe", queue_lock_conflict="replace",
          queue_lock_until="end")
def replacing_probe(tag: str) -> None:
    marks["body"] = sent()


@app.task(base=OnceTask, name="tests.test_round_trips.throttled_probe_1", throttle=(1, 60), lock_args=["tag"])
def throttled_probe_1(tag: str) -> None:
    marks["body"] = sent()


@app.task(base=OnceTask, name="tests.test_round_trips.throttled_probe_1000", throttle="1000/s", lock_args=[])
def throttled_probe_1000(tag: str) -> None:
    marks["body"] = sent()


PROBES = (probe.name, waiting_probe.name, limited_probe.name, until_end_probe.name, replacing_probe.name,
          throttled_probe_1.name, throttled_probe_1000.name)


def on_prerun(task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) in PROBES:
        marks["prerun"] = sent()


def on_postrun(task: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) in PROBES:
        marks["postrun"] = sent()


@pytest.fixture(scope="module", autouse=True)
def counting_lock_client(redis_server: Any) -> Iterator[None]:
    """Count the round trips of the lock client of this process while this module runs."""
    client = client_for(worker_app.LOCKS_URL)
    for script in SCRIPTS:  # a script's first use on a server costs a load
        client.script_load(script.source)
    pool = client.connection_pool
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


def run_probe(task: Any = probe, tag: str = "") -> dict[str, int]:
    marks.clear()
    task.apply_async((tag or uuid.uuid4().hex,), queue=QUEUE)
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


def test_pickup_of_a_parked_copy_claims_it_in_the_same_round_trip(solo_worker: None, locks: Any) -> None:
    task_id = str(uuid.uuid4())
    marks.clear()
    # A copy the library puts off with a countdown (a deferral) is parked before it is published.
    republish(probe, (uuid.uuid4().hex,), {}, {"task_id": task_id, "countdown": 0.05, "queue": QUEUE})
    wait_until(lambda: "postrun" in marks, what="the parked probe to run")
    assert marks["body"] - marks["prerun"] == 1
    assert locks.hexists(parked_keys()[0], task_id) == 0


def test_end_takes_one_round_trip(solo_worker: None) -> None:
    mark = run_probe()
    assert mark["postrun"] - mark["body"] == 1


def test_pickup_and_end_of_a_limited_task_take_one_round_trip_each(solo_worker: None) -> None:
    mark = run_probe(limited_probe)
    assert (mark["body"] - mark["prerun"], mark["postrun"] - mark["body"]) == (1, 1)


@pytest.mark.parametrize("task", [throttled_probe_1, throttled_probe_1000], ids=["N=1", "N=1000"])
def test_pickup_of_a_throttled_task_takes_one_round_trip_whatever_n_and_its_end_none(solo_worker: None,
                                                                                      task: Any) -> None:
    # The throttle's check joins the queue lock's release; a throttled task holds no running lock by default.
    mark = run_probe(task)
    assert (mark["body"] - mark["prerun"], mark["postrun"] - mark["body"]) == (1, 0)


def test_a_call_in_an_open_burst_takes_one_round_trip_and_publishes_nothing(broker: Any) -> None:
    doc = uuid.uuid4().hex
    first = worker_app.parked_reindex.delay(doc, 0)  # starts the burst, and publishes its message
    queued = broker.llen("parked")
    before = sent()
    results = [worker_app.parked_reindex.delay(doc, version) for version in range(1, 101)]
    assert sent() - before == 100
    assert broker.llen("parked") == queued
    assert {result.id for result in results} == {first.id}


def test_existing_duplicate_takes_one_round_trip() -> None:
    tag = uuid.uuid4().hex
    first = worker_app.parked_existing.delay(tag)
    before = sent()
    duplicate = worker_app.parked_existing.delay(tag)
    assert duplicate.id == first.id
    assert sent() - before == 1


def test_waiting_copy_takes_its_pickup_one_round_trip_to_wait_and_one_to_park_its_safety_copy(
        solo_worker: None, locks: Any) -> None:
    tag = uuid.uuid4().hex
    running = waiting_probe.once_key((tag,), {}, "running")
    other = RunningOwner("another-call", 0, "elsewhere@host", "0123456789abcdef", False)
    locks.set(running, other.value(), px=60_000)
    try:
        mark = run_probe(waiting_probe, tag)
        assert "body" not in mark
        assert mark["postrun"] - mark["prerun"] == 3  # the safety copy, put off a lease, is parked (``parking``)
        assert locks.exists(waiting_probe.once_key((tag,), {}, "waiting")) == 1
    finally:
        locks.delete(running, waiting_probe.once_key((tag,), {}, "queue"))


def test_release_that_hands_a_waiting_copy_over_takes_one_round_trip(solo_worker: None, locks: Any) -> None:
    tag = uuid.uuid4().hex
    waiting = waiting_probe.once_key((tag,), {}, "waiting")
    message = dumps(dict(waiting_probe.signature((tag,), options={"queue": "parked"})))
    handover.update(key=waiting, value=waiting_token(str(uuid.uuid4())) + message)
    try:
        mark = run_probe(waiting_probe, tag)
    finally:
        handover.clear()
    assert mark["postrun"] - mark["body"] == 1
    assert locks.exists(waiting) == 0  # taken and published


# -- windows, replace, options per call ------------------------------------------------------


@pytest.mark.parametrize("once", [
    {"unique_for": 60}, {"unique_for": 60, "queue_lock": False}, {"queue_lock_conflict": "replace"},
    {"queue_lock_conflict": "existing", "queue_lock_until": "end"},
], ids=["window", "window-alone", "replace", "options"])
def test_a_call_with_its_own_options_and_its_duplicate_take_one_round_trip_each(once: dict[str, Any]) -> None:
    counted_publish("warm-up")
    tag = uuid.uuid4().hex
    before = sent()
    first = worker_app.parked.apply_async((tag,), once=once)
    assert first is not None
    assert sent() - before == 1
    before = sent()
    duplicate = worker_app.parked.apply_async((tag,), once=once)
    assert sent() - before == 1
    assert duplicate is None if "unique_for" in once else duplicate.id == first.id


def test_pickup_and_end_of_a_call_held_until_its_run_ends_take_one_round_trip_each(solo_worker: None,
                                                                                   locks: Any) -> None:
    tag = uuid.uuid4().hex
    mark = run_probe(until_end_probe, tag)
    assert (mark["body"] - mark["prerun"], mark["postrun"] - mark["body"]) == (1, 1)
    assert locks.exists(until_end_probe.once_key((tag,), {}, "queue")) == 0


def test_pickup_and_end_of_a_call_whose_duplicates_replaced_its_arguments_take_one_round_trip_each(
        solo_worker: None, locks: Any) -> None:
    tag = uuid.uuid4().hex
    marks.clear()
    first = replacing_probe.apply_async((tag,), queue=QUEUE, countdown=0.5)
    assert replacing_probe.apply_async((tag,), queue=QUEUE).id == first.id  # its arguments replaced (the same)
    wait_until(lambda: "postrun" in marks, what="the probe task to run")
    assert (marks["body"] - marks["prerun"], marks["postrun"] - marks["body"]) == (1, 1)
    assert locks.exists(replacing_probe.once_key((tag,), {}, "queue")) == 0
