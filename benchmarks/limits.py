"""(g) ``running_limit``: pickup and release of a limited key, at N = 1, 3 and 100, with and without a line.

Each case times pairs of operations through the library's ``LockStore`` on a
server of its own, with the key in the state that costs the most:

* N = 1: the running lock, as a worker takes and releases it (the queue
  lock's release and the running lock with its finished record; the
  release writing the record);
* N = 3 and N = 100: ``slots.pickup`` takes the last free slot, the other
  N - 1 held by other executions, and ``slots.release`` frees it again;
* N = 100 with 1,000 calls waiting: a release hands the freed slot to the
  head of the line, and the pickup is that call claiming its reservation;
  the line is filled again as it empties.

Each operation is timed on its own; its round trips are counted on the
connection (``counting``). Waiting calls cost nothing here: they are not
polled, only touched when a slot frees.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from celery_once_task.ids import call_id
from celery_once_task.keys import MESSAGES, QUEUE, RUNNING, SLOTS, WAITERS, limited_key, lock_key
from celery_once_task.limits import RESERVE_SECONDS
from celery_once_task.ownership import INSTANCE, RunningOwner
from celery_once_task.record_keys import finished_key
from celery_once_task.redelivery import Finished
from celery_once_task.store import Claim, FinishedCheck, FinishedRecord, Joining, LockStore

from .counting import count, install, uninstall
from .servers import RedisServer
from .stats import median, percentile

TASK = "benchmarks.tasks.export"
LEASE = 33.0
CASES = ((1, 0), (3, 0), (100, 0), (100, 1000))


@dataclass(frozen=True)
class Case:
    limit: int
    waiting: int
    pickup_us: list[float]
    release_us: list[float]
    pickup_round_trips: float
    release_round_trips: float

    def summary(self) -> dict[str, Any]:
        return {
            "limit": self.limit, "waiting": self.waiting,
            "pickup_median_us": round(median(self.pickup_us), 1),
            "pickup_p99_us": round(percentile(self.pickup_us, 99), 1),
            "release_median_us": round(median(self.release_us), 1),
            "release_p99_us": round(percentile(self.release_us, 99), 1),
            "pickup_round_trips": self.pickup_round_trips, "release_round_trips": self.release_round_trips,
        }


def owner(task_id: str) -> RunningOwner:
    return RunningOwner(task_id=task_id, retries=0, worker="celery@bench", instance=INSTANCE, heartbeat=True)


def run(pairs: int = 2000) -> list[dict[str, Any]]:
    server = RedisServer()
    try:
        client = server.client(2)
        store = LockStore(client)
        install(client.connection_pool, "limits")
        try:
            return [_case(store, client, limit, waiting, pairs).summary() for limit, waiting in CASES]
        finally:
            uninstall(client.connection_pool)
    finally:
        server.stop()


def _case(store: LockStore, client: Any, limit: int, waiting: int, pairs: int) -> Case:
    digest = uuid.uuid4().hex[:16]
    slots = limited_key(TASK, digest, SLOTS)
    line = (limited_key(TASK, digest, WAITERS), limited_key(TASK, digest, MESSAGES))
    if limit > 1:
        for index in range(limit - 1):  # the other executions
            other = owner(f"other-{index}")
            store.slots.pickup(claim(other, slots, limit, 3600), "0")
    pickups, releases, pickup_trips, release_trips = [], [], 0, 0
    for index in range(pairs + 1):  # the first pair loads the scripts: not counted
        if index == 1:
            pickups, releases, pickup_trips, release_trips = [], [], 0, 0
        task_id = str(uuid.uuid4())
        me = owner(task_id)
        if waiting:
            _fill_line(store, slots, line, limit, waiting)
            # Free a slot: the head of the line gets it; time the release that hands it over.
            holder = _a_holder(client, slots)
            before = count("limits")
            started = time.perf_counter()
            store.slots.release(slots, holder, limit, RESERVE_SECONDS, _record(slots, holder))
            releases.append((time.perf_counter() - started) * 1e6)
            release_trips += count("limits") - before
            head = _reserved(client, slots)
            me = owner(head)
            before = count("limits")
            started = time.perf_counter()
            store.slots.pickup(claim(me, slots, limit, LEASE), f"{time.time():.3f}",
                               finished=FinishedCheck(finished_key(slots, head), 0, "-"))
            pickups.append((time.perf_counter() - started) * 1e6)
            pickup_trips += count("limits") - before
            continue
        before = count("limits")
        started = time.perf_counter()
        if limit == 1:
            running = lock_key(TASK, digest, RUNNING)
            store.locks.pickup(lock_key(TASK, digest, QUEUE), task_id, running, me, LEASE,
                         finished=FinishedCheck(finished_key(running, task_id), 0, "-"))
        else:
            store.slots.pickup(claim(me, slots, limit, LEASE), f"{time.time():.3f}",
                               finished=FinishedCheck(finished_key(slots, task_id), 0, "-"))
        pickups.append((time.perf_counter() - started) * 1e6)
        pickup_trips += count("limits") - before
        before = count("limits")
        started = time.perf_counter()
        if limit == 1:
            running = lock_key(TASK, digest, RUNNING)
            store.locks.release_running(running, me.token, _record(running, me.token))
        else:
            store.slots.release(slots, me.token, limit, RESERVE_SECONDS, _record(slots, me.token))
        releases.append((time.perf_counter() - started) * 1e6)
        release_trips += count("limits") - before
    return Case(limit, waiting, pickups, releases, pickup_trips / pairs, release_trips / pairs)


def _record(key: str, token: str) -> FinishedRecord:
    task_id = token.split('"')[3]
    finished = Finished(0, "-", INSTANCE, 1, True, time.time())
    return FinishedRecord(finished_key(key, task_id), finished.value(), 3600, 0, "-")


def _fill_line(store: LockStore, slots: str, line: tuple[str, str], limit: int, waiting: int) -> None:
    """Keep ``waiting`` calls in line (not timed): each joins as a call that met a full key does."""
    missing = waiting - int(store.client.zcard(line[0]))
    for _ in range(missing):
        task_id = str(uuid.uuid4())
        me = owner(task_id)
        store.slots.pickup(claim(me, slots, limit, LEASE), "0", task_id=task_id,
                           joining=Joining("{}", time.time_ns() // 1000, 3600))


def claim(me: RunningOwner, slots: str, limit: int, lease: float) -> Claim:
    """What an execution of ``me`` asks a slot of ``slots`` with."""
    return Claim(slots, me.token, me.attempt_prefix, call_id(me.task_id, 0), limit, lease, RESERVE_SECONDS)


def _a_holder(client: Any, slots: str) -> str:
    for name in client.hkeys(slots):
        if name.startswith(b"s:"):
            return str(name[2:].decode())
    raise RuntimeError("no slot held")


def _reserved(client: Any, slots: str) -> str:
    for name in client.hkeys(slots):
        if name.startswith(b"r:"):
            return str(name[2:].decode().split("\x1f")[0])
    raise RuntimeError("no slot reserved")


def table(cases: list[dict[str, Any]]) -> str:
    lines = ["| running_limit | calls waiting | pickup median / p99 (µs) | release median / p99 (µs) | "
             "round trips (pickup / release) |", "|---|---|---|---|---|"]
    for case in cases:
        lines.append(f"| {case['limit']} | {case['waiting']:,} | {case['pickup_median_us']:.0f} / "
                     f"{case['pickup_p99_us']:.0f} | {case['release_median_us']:.0f} / {case['release_p99_us']:.0f} "
                     f"| {case['pickup_round_trips']:g} / {case['release_round_trips']:g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(run()))
