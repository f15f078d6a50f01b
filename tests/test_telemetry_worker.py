"""OpenTelemetry through a real worker: a prefork worker whose pool processes set their provider up after the fork.

The worker runs ``tests.telemetry_app`` (``tests.worker_app``'s tasks,
Celery instrumented in ``worker_process_init``) on a queue of this module's
own; its spans come back through a list on the test session's redis-server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests import worker_app as tasks
from tests.support import Worker, running_worker, started, wait_until
from tests.telemetry_app import SPANS, WORKER_ENV

QUEUE = "telemetry"
SCOPE = "celery_once_task"


@pytest.fixture(scope="module")
def instrumented_worker(redis_server: Any, recs: redis.Redis) -> Iterator[Worker]:
    recs.delete(SPANS)
    # Three pool processes: a limit of two held, and the call beyond it picked up.
    with running_worker(redis_server.port, "telemetry", app="tests.telemetry_app", queues=QUEUE,
                        concurrency=3, env={WORKER_ENV: "1"}) as worker:
        yield worker


def spans(recs: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(item) for item in recs.lrange(SPANS, 0, -1)]


def lock_spans(recs: redis.Redis, task_id: str) -> list[dict[str, Any]]:
    """The library's spans of one execution, in the order they ended."""
    return [span for span in spans(recs)
            if span["scope"] == SCOPE and span["attributes"].get("messaging.message.id") == task_id]


def named(recs: redis.Redis, task_id: str, *names: str) -> list[dict[str, Any]]:
    """The first of one execution's spans by each of ``names``, once they all ended."""
    def found() -> list[dict[str, Any]]:
        first: dict[str, dict[str, Any]] = {}
        for span in lock_spans(recs, task_id):
            first.setdefault(span["name"], span)
        return [first[name] for name in names] if all(name in first for name in names) else []

    return wait_until(found, what=f"the spans {', '.join(names)} of {task_id}")  # type: ignore[no-any-return]


def run_span(recs: redis.Redis, task: Any, span_id: str) -> dict[str, Any]:
    """Celery's ``run/{task}`` span whose id is ``span_id``, once it ended."""
    found = wait_until(lambda: [s for s in spans(recs) if s["span_id"] == span_id], what=f"run/{task.name}")
    assert found[0]["name"] == f"run/{task.name}"
    return found[0]  # type: ignore[no-any-return]


def test_an_execution_picks_up_and_releases_under_celerys_run_span(instrumented_worker: Worker,
                                                                   recs: redis.Redis) -> None:
    result = tasks.echo.apply_async((uuid.uuid4().hex,), queue=QUEUE)
    result.get(timeout=30)
    pickup, release = named(recs, result.id, "running pickup", "running release")
    assert (pickup["name"], pickup["attributes"]["celery_once.outcome"]) == ("running pickup", "acquired")
    assert (release["name"], release["attributes"]["celery_once.outcome"]) == ("running release", "released")
    assert pickup["kind"] == release["kind"] == "CLIENT"
    assert pickup["parent_id"] == release["parent_id"]
    run_span(recs, tasks.echo, pickup["parent_id"])


def test_a_rejected_duplicate_execution_is_a_span_and_an_event_of_its_run_span(instrumented_worker: Worker,
                                                                               recs: redis.Redis) -> None:
    tag = uuid.uuid4().hex
    first = tasks.without_queue_lock.apply_async((tag,), queue=QUEUE)
    started(recs, tag)
    second = tasks.without_queue_lock.apply_async((tag,), queue=QUEUE)
    (pickup,) = named(recs, second.id, "running pickup")
    recs.rpush(f"gate:{tag}", 1)
    first.get(timeout=30)
    assert pickup["attributes"]["celery_once.outcome"] == "rejected"
    assert pickup["attributes"]["celery_once.holder.task_id"] == first.id
    assert pickup["attributes"]["celery_once.policy"] == "reject"
    assert pickup["status"] == "UNSET"
    run = run_span(recs, tasks.without_queue_lock, pickup["parent_id"])
    (event,) = [event for event in run["events"] if event["name"].startswith("celery_once.")]
    assert event["name"] == "celery_once.rejected"
    assert event["attributes"]["celery_once.holder.task_id"] == first.id


def test_a_waiting_copy_is_its_pickup_its_wait_and_an_event_then_runs_when_handed_over(
        instrumented_worker: Worker, recs: redis.Redis) -> None:
    tag = uuid.uuid4().hex
    running = tasks.waiting_gated.apply_async((tag,), queue=QUEUE)
    started(recs, tag)
    # The first one's pickup released its queue lock: this call is published, and its execution waits.
    waiting = tasks.waiting_gated.apply_async((tag,), queue=QUEUE)
    pickup, wait = named(recs, waiting.id, "running pickup", "running wait")
    recs.rpush(f"gate:{tag}", 1, 1)
    running.get(timeout=30)
    waiting.get(timeout=30)
    assert [(s["name"], s["attributes"]["celery_once.outcome"]) for s in (pickup, wait)] == [
        ("running pickup", "waiting"), ("running wait", "waiting")]
    assert wait["attributes"]["db.operation.name"] == "PIPELINE EVALSHA"
    run = run_span(recs, tasks.waiting_gated, wait["parent_id"])
    assert [e["name"] for e in run["events"] if e["name"].startswith("celery_once.")] == ["celery_once.waiting"]
    (release,) = named(recs, running.id, "running release")
    assert release["attributes"]["celery_once.handed_over"] == 1


def test_a_call_beyond_the_running_limit_joins_the_line_and_runs_when_a_slot_frees(
        instrumented_worker: Worker, recs: redis.Redis) -> None:
    tenant = uuid.uuid4().hex
    first, second = (tasks.export_waiting_gated.apply_async((tenant, n), queue=QUEUE) for n in (1, 2))
    started(recs, tenant, 2)
    third = tasks.export_waiting_gated.apply_async((tenant, 3), queue=QUEUE)
    pickup, join = named(recs, third.id, "slot pickup", "slot join")
    for n in (1, 2, 3):
        recs.rpush(f"gate:{tenant}:{n}", 1)
    assert [result.get(timeout=30) for result in (first, second, third)] == [1, 2, 3]
    assert [(s["name"], s["attributes"]["celery_once.outcome"]) for s in (pickup, join)] == [
        ("slot pickup", "waiting"), ("slot join", "waiting")]
    assert join["attributes"]["celery_once.lock.type"] == "slot"
