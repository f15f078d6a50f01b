"""(d) the network round trips the lock client makes on each path.

The lock client (``celery_once_task.store.client_for(url)``, one per process)
and the publisher's broker connection get a counting connection class (see
``counting``). The publishing paths run in this thread; the worker paths run
in an in-process solo worker (``celery.contrib.testing.worker.start_worker``),
so that the counting class is in effect where the task runs. In the worker
thread, the pickup is what the lock client sends between ``task_prerun`` and
the task body, and the end is what it sends between the body and
``task_postrun``. The broker's round trips are counted for comparison only.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from celery import signals
from celery.contrib.testing.worker import start_worker

from celery_once_task.store import client_for

from . import counting, tasks
from .compare import wait_for

QUEUE = "bench.round_trips"


def run(broker: redis.Redis) -> dict[str, dict[str, int]]:
    once, probe, plain = tasks.once_noop, tasks.once_probe, tasks.plain_noop
    # The first calls open the connections; a handshake is not a round trip of the path.
    once.apply_async(("round-trips-warm", 0, 1), queue=QUEUE)
    counting.install(client_for(tasks.LOCKS_URL).connection_pool, "locks")
    with tasks.app.producer_or_acquire() as producer:
        counting.install(producer.channel.pool, "broker")
    once.apply_async(("round-trips-warm", 1, 1), queue=QUEUE)

    def publish_count(task: Any, args: tuple[Any, ...]) -> dict[str, int]:
        before = {name: counting.count(name) for name in ("locks", "broker")}
        task.apply_async(args, queue=QUEUE)
        return {name: counting.count(name) - value for name, value in before.items()}

    out = {
        "plain_publish": publish_count(plain, ("round-trips", 0, 1)),
        "publish": publish_count(once, ("round-trips", 1, 1)),
        "duplicate": publish_count(once, ("round-trips", 1, 1)),
    }
    broker.delete(QUEUE)

    marks: dict[str, int] = {}

    def thread_count() -> int:
        return counting.count("locks", threading.get_ident())

    def on_prerun(task: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) == probe.name:
            marks["prerun"] = thread_count()

    def in_body() -> None:
        marks["body"] = thread_count()

    def on_postrun(task: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) == probe.name:
            marks["postrun"] = thread_count()

    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    tasks.probe_hook = in_body
    try:
        with start_worker(tasks.app, pool="solo", perform_ping_check=False, queues=[QUEUE]):
            for i in range(2):  # the first opens the worker thread's connection
                marks.clear()
                probe.apply_async(("round-trips-probe", i, 1), queue=QUEUE)
                wait_for(lambda: "postrun" in marks, 30, "the probe task to run")
    finally:
        tasks.probe_hook = None
        signals.task_prerun.disconnect(on_prerun)
        signals.task_postrun.disconnect(on_postrun)
    out["pickup"] = {"locks": marks["body"] - marks["prerun"]}
    out["end"] = {"locks": marks["postrun"] - marks["body"]}
    return out
