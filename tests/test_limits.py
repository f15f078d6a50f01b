"""``running_limit``: at most N executions of a key at once, fleet-wide, with every other call kept or refused.

The tasks run on a worker of four processes of this module's own, beside
the session's shared worker of two: a limit of two or three is reached with
processes to spare, so that it is the limit, not the pool, that holds calls.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from celery_once_task import OnceTask, OnceTaskLocked
from celery_once_task.keys import limited_key
from celery_once_task.ownership import Lease
from tests import worker_app as tasks
from tests.support import Worker, events, running_worker, started, wait_until
from tests.test_cli import once

pytestmark = pytest.mark.any_broker

QUEUE = "limits"
LEASE = Lease(tasks.HEARTBEAT_TIMEOUT)


@pytest.fixture(scope="module")
def limit_worker(redis_server: Any) -> Iterator[Worker]:
    with running_worker(redis_server.port, "limits", queues=QUEUE, concurrency=4) as worker:
        yield worker


def most_at_once(runs: list[dict[str, Any]]) -> int:
    """The most executions that ran at the same time, from start and end records."""
    moments = sorted((run["t"], 1 if run["event"] == "start" else -1) for run in runs)
    most = now = 0
    for _, step in moments:
        now += step
        most = max(most, now)
    return most


def slots_left(locks: Any, task: Any, tenant: str) -> int:
    """The slots held or reserved, and the keys of its line, left at a tenant's key (0: nothing left behind)."""
    digest = task.once_digest((tenant, 0), {})
    fields = locks.hgetall(limited_key(task.name, digest, "slots"))
    line = locks.exists(limited_key(task.name, digest, "waiters"), limited_key(task.name, digest, "messages"))
    return sum(1 for name in fields if name.startswith((b"S", b"R"))) + line


def test_bad_running_limit_is_an_error_at_definition_naming_the_task() -> None:
    with pytest.raises(ValueError, match=r"tests\.bad_limit: running_limit must be a positive integer"):
        @tasks.app.task(base=OnceTask, name="tests.bad_limit", running_limit=0, shared=False)
        def bad_limit() -> None: ...

        bad_limit.run  # noqa: B018 - a task is built when first used


def test_an_execution_beyond_the_limit_is_refused(limit_worker: Worker, locks: Any, recs: Any) -> None:
    tenant = uuid.uuid4().hex
    first = tasks.export_gated.apply_async((tenant, 1), queue=QUEUE)
    second = tasks.export_gated.apply_async((tenant, 2), queue=QUEUE)
    started(recs, tenant, count=2)
    third = tasks.export_gated.apply_async((tenant, 3), queue=QUEUE)
    with pytest.raises(OnceTaskLocked, match="running_limit 2"):
        third.get(timeout=20)
    other = tasks.export_gated.apply_async((f"{tenant}-other", 1), queue=QUEUE)  # another tenant runs meanwhile
    wait_until(lambda: events(recs, f"{tenant}-other", "start"), what="another tenant's export to start")
    recs.rpush(f"gate:{tenant}:1", 1)
    recs.rpush(f"gate:{tenant}:2", 1)
    recs.rpush(f"gate:{tenant}-other:1", 1)
    assert (first.get(timeout=20), second.get(timeout=20), other.get(timeout=20)) == (1, 2, 1)
    assert len(events(recs, tenant, "start")) == 2
    assert slots_left(locks, tasks.export_gated, tenant) == 0


def test_a_fleet_wide_limit_holds_across_workers_and_arguments(limit_worker: Worker, worker: Worker,
                                                               recs: Any) -> None:
    tag = uuid.uuid4().hex
    # One call on each worker, whatever the arguments: lock_args=[] is one key for the task.
    first = tasks.partner_call.apply_async((tag, 1), queue=QUEUE)
    second = tasks.partner_call.delay(tag, 2)
    started(recs, tag, count=2)
    with pytest.raises(OnceTaskLocked):
        tasks.partner_call.apply_async((tag, 3), queue=QUEUE).get(timeout=20)
    for n in (1, 2):
        recs.rpush(f"gate:{tag}:{n}", 1)
    assert (first.get(timeout=20), second.get(timeout=20)) == (1, 2)


def test_calls_beyond_the_limit_wait_their_turn_and_all_run(limit_worker: Worker, locks: Any, recs: Any) -> None:
    tenant = uuid.uuid4().hex
    results = [tasks.export_waiting_gated.apply_async((tenant, n), queue=QUEUE) for n in (1, 2, 3, 4)]
    started(recs, tenant, count=2)
    digest = tasks.export_waiting_gated.once_digest((tenant, 0), {})
    line = limited_key(tasks.export_waiting_gated.name, digest, "waiters")
    wait_until(lambda: locks.zcard(line) == 2, what="the third and fourth calls to wait in line")
    assert len(events(recs, tenant, "start")) == 2
    first_two = sorted(event["n"] for event in events(recs, tenant, "start"))
    waiting = [n for n in (1, 2, 3, 4) if n not in first_two]
    # A slot that frees goes to the call made first.
    recs.rpush(f"gate:{tenant}:{first_two[0]}", 1)
    assert started(recs, tenant, count=3)[2]["n"] == waiting[0]
    recs.rpush(f"gate:{tenant}:{first_two[1]}", 1)
    assert started(recs, tenant, count=4)[3]["n"] == waiting[1]
    for n in waiting:
        recs.rpush(f"gate:{tenant}:{n}", 1)
    assert [result.get(timeout=20) for result in results] == [1, 2, 3, 4]
    assert most_at_once(events(recs, tenant, "start") + events(recs, tenant, "end")) == 2
    assert slots_left(locks, tasks.export_waiting_gated, tenant) == 0
    assert locks.exists(line) == 0


def test_a_hundred_calls_of_one_tenant_all_run_never_more_than_three_at_once(limit_worker: Worker, worker: Worker,
                                                                           locks: Any, recs: Any) -> None:
    tenant, other = uuid.uuid4().hex, uuid.uuid4().hex
    results = [tasks.export.apply_async((tenant, n), queue=QUEUE) for n in range(100)]
    # Another tenant's calls are not held up behind them.
    others = [tasks.export.apply_async((other, n), queue=QUEUE) for n in range(3)]
    assert [result.get(timeout=30) for result in others] == [0, 1, 2]
    assert len(events(recs, tenant, "end")) < 100
    assert [result.get(timeout=120) for result in results] == list(range(100))
    runs = events(recs, tenant, "start") + events(recs, tenant, "end")
    assert len(events(recs, tenant, "start")) == 100
    assert most_at_once(runs) == 3
    assert slots_left(locks, tasks.export, tenant) == 0


def test_a_dead_workers_slots_free_within_the_lease_and_the_waiting_calls_run(
    redis_server: Any, limit_worker: Worker, locks: Any, recs: Any
) -> None:
    tenant = uuid.uuid4().hex
    queue = f"doomed-{tenant[:8]}"
    doomed = Worker(redis_server.port, f"doomed-{tenant[:6]}", queues=queue, concurrency=2).wait_ready()
    try:
        for n in (1, 2):
            tasks.export_waiting_gated.apply_async((tenant, n), queue=queue)
        started(recs, tenant, count=2)
        waiting = [tasks.export_waiting_gated.apply_async((tenant, n), queue=QUEUE) for n in (3, 4)]
        digest = tasks.export_waiting_gated.once_digest((tenant, 0), {})
        line = limited_key(tasks.export_waiting_gated.name, digest, "waiters")
        wait_until(lambda: locks.zcard(line) == 2, what="the third and fourth calls to wait in line")
        doomed.process.kill()  # the whole worker, and the two slots it held
        killed_at = time.monotonic()
        doomed.process.wait(10)
    finally:
        doomed.stop()
    slots = limited_key(tasks.export_waiting_gated.name, digest, "slots")
    wait_until(lambda: not [name for name in locks.hkeys(slots) if name.startswith(b"S")] or
               len(events(recs, tenant, "start")) > 2, timeout=LEASE.ttl + 10, what="the dead worker's slots to free")
    freed_after = time.monotonic() - killed_at
    later = started(recs, tenant, count=4)[2:]
    assert sorted(event["n"] for event in later) == [3, 4]
    for n in (3, 4):
        recs.rpush(f"gate:{tenant}:{n}", 1)
    assert [result.get(timeout=20) for result in waiting] == [3, 4]
    assert freed_after <= LEASE.ttl + 3


# -- what operators see ----------------------------------------------------------------


def once_json(*args: str) -> Any:
    done = once(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_locks_show_a_limited_key_slot_by_slot_with_its_waiting_calls(limit_worker: Worker, locks: Any,
                                                                       recs: Any) -> None:
    tenant = uuid.uuid4().hex
    results = [tasks.export_waiting_gated.apply_async((tenant, n), queue=QUEUE) for n in (1, 2, 3)]
    started(recs, tenant, count=2)
    digest = tasks.export_waiting_gated.once_digest((tenant, 0), {})
    key = limited_key(tasks.export_waiting_gated.name, digest, "slots")
    wait_until(lambda: locks.zcard(limited_key(tasks.export_waiting_gated.name, digest, "waiters")) == 1,
               what="the third call to wait in line")
    listed = [lock for lock in once_json("locks", "--type", "slots") if lock["key"] == key]
    running = {event["n"]: results[event["n"] - 1].id for event in events(recs, tenant, "start")}
    assert sorted(lock["task_id"] for lock in listed) == sorted(running.values())
    for lock in listed:
        assert (lock["type"], lock["limit"], lock["used"], lock["waiting"]) == ("slots", 2, 2, 1)
        assert (lock["worker"], lock["alive"], lock["attempt"]) == (limit_worker.name, True, 0)
        assert 0 <= lock["age"] < 60 and 0 < lock["ttl"] <= LEASE.ttl
    text = once("locks", "--task", tasks.export_waiting_gated.name).stdout
    assert f"{key}\n    slots 2 of 2 used, 1 waiting; slot held by task " in text
    assert len(once_json("show", key)) == 2
    for n in (1, 2, 3):
        recs.rpush(f"gate:{tenant}:{n}", 1)
    assert [result.get(timeout=20) for result in results] == [1, 2, 3]


def test_clear_frees_one_slot_by_its_holder_and_leaves_the_other(limit_worker: Worker, locks: Any,
                                                                 recs: Any) -> None:
    tenant = uuid.uuid4().hex
    results = [tasks.export_gated.apply_async((tenant, n), queue=QUEUE) for n in (1, 2)]
    started(recs, tenant, count=2)
    key = limited_key(tasks.export_gated.name, tasks.export_gated.once_digest((tenant, 0), {}), "slots")
    done = once("clear", "--key", key, "--holder", results[0].id, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"deleted {key} slot (held by task {results[0].id}" in done.stdout
    holders = [name for name in locks.hkeys(key) if name.startswith(b"S")]
    assert len(holders) == 1 and results[1].id.encode() in holders[0]
    # The freed slot takes a new execution at once.
    third = tasks.export_gated.apply_async((tenant, 3), queue=QUEUE)
    started(recs, tenant, count=3)
    for n in (1, 2, 3):
        recs.rpush(f"gate:{tenant}:{n}", 1)
    assert [result.get(timeout=20) for result in [*results, third]] == [1, 2, 3]
    assert slots_left(locks, tasks.export_gated, tenant) == 0


def test_wait_without_a_queue_lock_runs_every_call_one_at_a_time_in_call_order(limit_worker: Worker, locks: Any,
                                                                                recs: Any) -> None:
    tag = uuid.uuid4().hex
    first = tasks.in_turn.apply_async((tag, 0), queue=QUEUE)
    started(recs, tag)
    later = [tasks.in_turn.apply_async((tag, n), queue=QUEUE) for n in range(1, 6)]
    digest = tasks.in_turn.once_digest((tag, 0), {})
    wait_until(lambda: locks.zcard(limited_key(tasks.in_turn.name, digest, "waiters")) == 5,
               what="the five later calls to wait in line")
    # Whatever order the workers picked them up in, they run in the order they were made.
    for count, n in enumerate(range(6), start=1):
        assert [event["n"] for event in started(recs, tag, count=count)] == list(range(count))
        recs.rpush(f"gate:{tag}:{n}", 1)
    assert [result.get(timeout=20) for result in [first, *later]] == list(range(6))
    assert most_at_once(events(recs, tag, "start") + events(recs, tag, "end")) == 1
    assert slots_left(locks, tasks.in_turn, tag) == 0
