"""(e) lock-operation latency with many locks held, and (f) Redis memory per held lock.

Each level (1 thousand, 100 thousand, 1 million locks) gets a database of its
own on one redis-server, filled with locks as the library writes them: keys
``once_task:{task name}:{digest}:queue|running`` with a TTL, queue locks
holding a task id and running locks holding a running-owner token built by
``RunningOwner`` itself; half of each. A Lua loop writes them on the server,
100 thousand per call, so that filling a million takes seconds.

Latency: in each round, every level runs the same batch of lock lifecycles
through the library's ``LockStore`` (the levels' order rotates from round to
round): ``acquire_queue`` (publish: SET NX PX), ``pickup`` (release the
queue lock and take the running lock, one pipeline) and ``release``
(compare-and-delete), each on fresh keys and each timed on its own. The
server's own time per command (``INFO commandstats``) is kept as well: it
shows the cost inside Redis, without the network and the client.

Memory: ``used_memory`` before and after writing a million locks of one kind
into an empty server, divided by the number of locks.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from celery_once_task.keys import QUEUE, RUNNING, lock_key
from celery_once_task.ownership import INSTANCE, RunningOwner
from celery_once_task.store import LockStore

from . import tasks
from .servers import RedisServer
from .stats import median, percentile, rotation

TTL_SECONDS = 3600  # the default lock timeouts
OPERATIONS = ("acquire", "pickup", "release")
FILL_BATCH = 100_000

# Writes ARGV[2] locks, numbered from ARGV[1], of kind ARGV[3] ('queue' or
# 'running'). The digest and the task id are derived from the number and
# ARGV[4] (a per-run seed), so every key is distinct; a running lock's value is
# ARGV[6] .. task id .. ARGV[7], the token around its task id.
_FILL = """
local first, count, kind, seed = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local ttl, prefix, suffix = ARGV[5], ARGV[6], ARGV[7]
local key_head, key_tail = ARGV[8], ARGV[9]
for i = first, first + count - 1 do
    local h = redis.sha1hex(seed .. i)
    local task_id = h:sub(1, 8) .. '-' .. h:sub(9, 12) .. '-4' .. h:sub(13, 15) .. '-a' .. h:sub(16, 18)
        .. '-' .. h:sub(19, 30)
    local key = key_head .. h:sub(25, 40) .. key_tail
    if kind == 'queue' then
        redis.call('SET', key, task_id, 'PX', ttl)
    else
        redis.call('SET', key, prefix .. task_id .. suffix, 'PX', ttl)
    end
end
return count
"""

_TASK_ID_MARK = "00000000-0000-4000-a000-000000000000"
_DIGEST_MARK = "0123456789abcdef"


def worker_name() -> str:
    """The node name Celery gives a worker by default."""
    return f"celery@{socket.gethostname()}"


def running_owner(task_id: str) -> RunningOwner:
    """A running lock's owner as a worker with the unlock boot step (leases) is."""
    return RunningOwner(task_id=task_id, retries=0, worker=worker_name(), instance=INSTANCE, heartbeat=True)


def running_token(task_id: str) -> str:
    """A running lock's value as such a worker writes it."""
    return running_owner(task_id).value()


def fill(client: redis.Redis, kind: str, first: int, count: int, seed: str) -> None:
    """Write ``count`` locks of ``kind`` ('queue' or 'running'), numbered from ``first``."""
    prefix, suffix = running_token(_TASK_ID_MARK).split(_TASK_ID_MARK)
    key_head, key_tail = lock_key(tasks.once_noop.name, _DIGEST_MARK, kind).split(_DIGEST_MARK)
    script = client.register_script(_FILL)
    for start in range(first, first + count, FILL_BATCH):
        size = min(FILL_BATCH, first + count - start)
        script(args=[start, size, kind, seed, TTL_SECONDS * 1000, prefix, suffix, key_head, key_tail])


def fill_mixed(client: redis.Redis, n: int) -> None:
    """``n`` locks held: half queue locks, half running locks."""
    fill(client, QUEUE, 0, n // 2, "q")
    fill(client, RUNNING, 0, n - n // 2, "r")


@dataclass
class LatencyResult:
    #: microseconds, by level and operation.
    samples: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    #: the server's own microseconds per command, by level and command, one per round.
    server_usec: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    keys: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for level, by_op in self.samples.items():
            out[str(level)] = {
                "keys": self.keys[level],
                **{op: {"median_us": median(v), "p99_us": percentile(v, 99), "n": len(v)} for op, v in by_op.items()},
                "server_usec_per_call": {cmd: median(v) for cmd, v in self.server_usec[level].items()},
            }
        low, high = str(min(self.samples)), str(max(self.samples))
        out["flatness"] = {
            op: {
                "median_ratio": out[high][op]["median_us"] / out[low][op]["median_us"],
                "p99_ratio": out[high][op]["p99_us"] / out[low][op]["p99_us"],
            }
            for op in OPERATIONS
        }
        return out


def _lifecycle(store: LockStore, sink: dict[str, list[float]]) -> None:
    """Take a queue lock, pick it up, release the running lock: each operation timed on its own."""
    clock = time.perf_counter_ns
    digest = uuid.uuid4().hex[:16]
    task_id = str(uuid.uuid4())
    queue_key = lock_key(tasks.once_noop.name, digest, QUEUE)
    running_key = lock_key(tasks.once_noop.name, digest, RUNNING)
    owner = running_owner(task_id)
    t0 = clock()
    acquired = store.locks.acquire_queue(queue_key, task_id, TTL_SECONDS)
    t1 = clock()
    pickup = store.locks.pickup(queue_key, task_id, running_key, owner, TTL_SECONDS)
    t2 = clock()
    released = store.locks.release(running_key, owner.token, prefix=True)
    t3 = clock()
    if not (acquired.acquired and pickup.acquired and released):
        raise RuntimeError(f"lock lifecycle on {queue_key} did not complete")
    sink["acquire"].append((t1 - t0) / 1000)
    sink["pickup"].append((t2 - t1) / 1000)
    sink["release"].append((t3 - t2) / 1000)


def _server_usec(client: redis.Redis) -> dict[str, float]:
    stats = client.info("commandstats")
    return {
        name: float(stats[f"cmdstat_{name}"]["usec_per_call"])
        for name in ("set", "evalsha")
        if f"cmdstat_{name}" in stats
    }


def latency(levels: list[int], rounds: int, per_round: int) -> LatencyResult:
    result = LatencyResult()
    # One server, one database per level: separate redis-server processes
    # differ by tens of percent from one another (where the scheduler puts
    # them), which would swamp any effect of the number of keys.
    server = RedisServer()
    try:
        stores = {}
        for db, level in enumerate(levels, start=1):
            client = server.client(db)
            fill_mixed(client, level)
            result.keys[level] = int(client.dbsize())
            stores[level] = LockStore.for_url(f"{server.url}/{db}")
            result.samples[level] = {op: [] for op in OPERATIONS}
            for _ in range(100):  # warm-up
                _lifecycle(stores[level], {op: [] for op in OPERATIONS})
        names = [str(level) for level in levels]
        for r in range(rounds):
            # The levels take turns at every lifecycle, so that the machine's
            # other load falls on all of them alike.
            for i in range(per_round):
                for name in rotation(names, r + i):
                    _lifecycle(stores[int(name)], result.samples[int(name)])
            # Redis counts command time per server, not per database: a
            # shorter batch per level, alone, gives each level's.
            for name in rotation(names, r):
                server.client(0).config_resetstat()
                for _ in range(per_round // 4):
                    _lifecycle(stores[int(name)], {op: [] for op in OPERATIONS})
                for command, usec in _server_usec(server.client(0)).items():
                    result.server_usec.setdefault(int(name), {}).setdefault(command, []).append(usec)
    finally:
        server.stop()
    return result


def memory(n: int) -> dict[str, Any]:
    """Bytes of ``used_memory`` per held lock, by kind, with ``n`` locks of one kind held."""
    server = RedisServer()
    try:
        client = server.client(0)
        out: dict[str, Any] = {"locks": n}
        for kind in (QUEUE, RUNNING):
            client.flushall()
            before = int(client.info("memory")["used_memory"])
            fill(client, kind, 0, n, kind[0])
            after = int(client.info("memory")["used_memory"])
            found = next(client.scan_iter(count=10))
            sample_key = found.encode() if isinstance(found, str) else found
            value = client.get(sample_key) or b""
            sample_value = value.encode() if isinstance(value, str) else value
            out[kind] = {
                "bytes_per_lock": (after - before) / n,
                "key_length": len(sample_key),
                "value_length": len(sample_value),
                "sample_key": sample_key.decode(),
                "sample_value": sample_value.decode(),
            }
        out["mean_bytes_per_lock"] = (out[QUEUE]["bytes_per_lock"] + out[RUNNING]["bytes_per_lock"]) / 2
        return out
    finally:
        server.stop()
