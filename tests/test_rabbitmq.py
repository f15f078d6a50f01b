"""RabbitMQ as the broker: its own faults, against a node the tests start.

RabbitMQ hands a consumer's unacknowledged messages out again the moment its
connection closes -- while the execution that had one may still run in a
pool process, or has just finished and could not acknowledge it -- and a
node restart does the same to every message in flight. The copy carries the
same task id and attempt: it must never run beside the first execution, and
never again after it finished.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import celery
import pytest

from tests import worker_app as tasks
from tests.support import Worker, events, lock_key_of, running_worker, started, wait_until

pytestmark = pytest.mark.amqp_only


@pytest.fixture
def two_workers(redis_server: Any) -> Iterator[tuple[str, list[Worker]]]:
    """Two workers on a queue of their own: a redelivered copy may go to either."""
    queue = f"rabbit-{uuid.uuid4().hex[:8]}"
    with running_worker(redis_server.port, f"{queue}-a", queues=queue) as first, \
            running_worker(redis_server.port, f"{queue}-b", queues=queue) as second:
        yield queue, [first, second]


def logs(workers: list[Worker]) -> str:
    return "".join(worker.read_log() for worker in workers)


def deliveries(workers: list[Worker], task_id: str) -> int:
    """How many times the workers received the message of ``task_id`` (in Celery 5.0's words or later ones')."""
    return len(re.findall(rf"Received task: \S+\[{task_id}\]|Task \S+\[{task_id}\] received", logs(workers)))


#: Celery 5.0's prefork pool forgets which of its processes are busy when the broker connection is
#: lost (``AsynPool.flush`` clears ``_busy_workers``; later releases keep the ones still running), so
#: the copy delivered again can be written to the process that runs the first execution, and waits
#: there until it ends: it never meets that execution, and runs only after it (ignored as already run).
POOL_HOLDS_THE_COPY_BACK = celery.VERSION[:2] == (5, 0)


def copy_meets_the_running_execution(workers: list[Worker], task_id: str, timeout: float) -> None:
    """The message is delivered again while its first execution runs, and the copy meets its running lock."""
    wait_until(lambda: deliveries(workers, task_id) >= 2, timeout=timeout, what="the message to be delivered again")
    if not POOL_HOLDS_THE_COPY_BACK:
        wait_until(lambda: f"{task_id}]: execution waiting: another delivery of this task holds running lock"
                   in logs(workers), timeout=timeout, what="the redelivered copy to meet the running execution")


def test_connection_closed_under_a_running_task_never_runs_a_copy_beside_it(
    rabbit: Any, vhost: str, two_workers: tuple[str, list[Worker]], locks: Any, recs: Any
) -> None:
    queue, workers = two_workers
    tag = uuid.uuid4().hex
    result = tasks.gated_late.apply_async((tag,), queue=queue)
    started(recs, tag)
    rabbit.close_connections(vhost, "the network failed")
    # The broker hands the message out again while the first execution runs.
    copy_meets_the_running_execution(workers, result.id, timeout=30)
    recs.rpush(f"gate:{tag}", 1)
    assert result.get(timeout=30) == tag
    wait_until(lambda: f"{result.id}]: execution ignored: this attempt already ran" in logs(workers),
               timeout=30, what="the copy, back after a lease, to be ignored")
    assert len(events(recs, tag, "start")) == 1
    assert locks.exists(lock_key_of(tasks.gated_late, "running", tag), lock_key_of(tasks.gated_late, "queue", tag)) == 0


def test_connection_closed_before_the_ack_of_a_finished_task_never_runs_it_again(
    rabbit: Any, vhost: str, two_workers: tuple[str, list[Worker]], recs: Any
) -> None:
    queue, workers = two_workers
    tag = uuid.uuid4().hex
    result = tasks.ack_held.apply_async((tag,), queue=queue)
    wait_until(lambda: events(recs, tag, "hook-start"), what="the task to end and store its result")
    rabbit.close_connections(vhost, "the network failed")  # its acknowledgement can never be sent
    recs.rpush(f"gate:{tag}:hook", 1)
    assert result.get(timeout=30) == tag
    wait_until(lambda: f"{result.id}]: execution ignored: this attempt already ran" in logs(workers),
               timeout=30, what="the redelivered copy to be ignored")
    assert len(events(recs, tag, "run")) == 1


def test_node_restart_under_a_running_task_never_runs_it_twice(
    rabbit: Any, two_workers: tuple[str, list[Worker]], locks: Any, recs: Any
) -> None:
    queue, workers = two_workers
    tag = uuid.uuid4().hex
    result = tasks.gated_late.apply_async((tag,), queue=queue)
    started(recs, tag)
    rabbit.restart()  # every message in flight goes back to its queue
    copy_meets_the_running_execution(workers, result.id, timeout=60)
    recs.rpush(f"gate:{tag}", 1)
    assert result.get(timeout=30) == tag
    wait_until(lambda: f"{result.id}]: execution ignored: this attempt already ran" in logs(workers),
               timeout=30, what="the copy, back after a lease, to be ignored")
    assert len(events(recs, tag, "start")) == 1
    # And calls go on after the restart: a new one is de-duplicated and runs.
    again = tasks.gated_late.apply_async((tag,), queue=queue, countdown=1)
    assert tasks.gated_late.apply_async((tag,), queue=queue) is None
    started(recs, tag, count=2)
    recs.rpush(f"gate:{tag}", 1)
    assert again.get(timeout=30) == tag
    assert locks.exists(lock_key_of(tasks.gated_late, "running", tag)) == 0
