"""The soak's faults, mixed at random, and what the driver must know of them afterwards.

Every 1.5-3 s one of:

* ``child_kill``: SIGKILL of one pool process of a worker;
* ``worker_kill``: SIGKILL of a worker's main process (its pool processes die
  with it), started again a moment later;
* ``warm_restart``: SIGTERM, wait for the worker to exit, start it again;
* ``lock_stall``: SIGSTOP of the lock store for 2-4 s, then SIGCONT;
* ``lock_restart``: SIGKILL of the lock store, started again from its
  append-only file;
* ``broker_stall``: SIGSTOP of the broker and result backend for 2 s (with
  RabbitMQ as the broker, of the result backend alone);
* with RabbitMQ as the broker, ``broker_close``: the broker closes every
  connection (as a network failure or a load balancer would), and the
  workers' unacknowledged messages are handed out again at once while their
  executions still run or have just ended;
* and ``broker_restart``: the RabbitMQ node is stopped and started again,
  with every message in flight back in its queue.

``child_kill`` needs pool processes: it is made on prefork workers only.
``kinds(pool, broker)`` says which faults a soak makes.

A fault whose target is still recovering from an earlier one (a stalled
server, a worker not ready yet) is not chosen, and at least one worker other
than the target stays up. Each fault is logged with a timestamp. The driver
learns from here which pids were killed and when (an execution killed in its
body ends then), and, for each whole-worker kill, how long each running lock
the worker held at its death kept that value.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import redis
from redis.exceptions import RedisError

from soak.cluster import Servers, SoakWorker

KINDS = ("child_kill", "worker_kill", "warm_restart", "lock_stall", "lock_restart", "broker_stall", "broker_close",
         "broker_restart")
_WORKER_FAULTS = ("child_kill", "worker_kill", "warm_restart")
_BROKER_FAULTS = ("broker_stall", "broker_close", "broker_restart")


def kinds(pool: str, broker: str) -> tuple[str, ...]:
    """The faults of a soak on ``pool`` workers with ``broker``."""
    return tuple(kind for kind in KINDS
                 if (kind != "child_kill" or pool == "prefork")
                 and (kind not in ("broker_close", "broker_restart") or broker == "amqp"))

#: How long a warm shutdown may take before the worker is SIGKILLed (tasks last 0.5 s at most).
WARM_SHUTDOWN_TIMEOUT = 30.0
#: How long after a worker's death its locks are watched: far longer than a lease.
WATCH_SECONDS = 60.0
#: At most one RabbitMQ node restart in this many seconds.
RESTART_EVERY = 25.0


def _clock(t: float) -> str:
    """``HH:MM:SS.mmm`` UTC, as the worker logs and the fault log print times."""
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}"


class FaultLog:
    """Timestamped lines on stdout and in ``faults.log``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0 = time.time()
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        now = time.time()
        line = f"{_clock(now)} +{now - self.t0:6.1f}s {message}"
        with self._lock:
            print(line, flush=True)
            with open(self.path, "a") as log:
                log.write(line + "\n")


@dataclass(frozen=True)
class Kill:
    """A process the soak SIGKILLed: any execution it ran ended at ``t``."""

    pid: int
    t: float
    worker: str
    fault: str
    #: A worker's main process (the consumer), not a pool process.
    main: bool


@dataclass
class BlockedKey:
    """A running lock that a worker held when it was killed, and when the key stopped holding that value."""

    worker: str
    key: str
    value: str
    killed_at: float
    #: When the key stopped holding the value: when it was seen to, or, if
    #: that is later, when its TTL last seen said it would expire (the store
    #: may have been stalled or down in between, which is not the lock's doing).
    freed_at: Optional[float] = None
    #: When the soak saw the key without the value.
    seen_freed_at: Optional[float] = None
    #: When the key expires by the TTL last seen.
    expires_at: Optional[float] = None
    #: A slot of a limited key: its field in the key's hash (its value begins with its expiry, server ms).
    field: Optional[str] = None


class Faults:
    """The fault thread, and the actions (resumes, restarts) it leaves running in the background."""

    def __init__(self, servers: Servers, workers: list[SoakWorker], log: FaultLog, rng: random.Random,
                 kinds: tuple[str, ...] = KINDS) -> None:
        self.kinds = kinds
        self.servers = servers
        self.workers = workers
        self.log = log
        self.rng = rng
        self.counts: Counter[str] = Counter()
        self.kills: list[Kill] = []
        #: When each warm restart sent its SIGTERM.
        self.restarts: list[float] = []
        self._last_restart = 0.0
        self.blocked: list[BlockedKey] = []
        #: When the last fault ended (a server resumed or started, a worker killed or stopped).
        self.last_fault_at = time.time()
        self._busy: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._actions: list[threading.Thread] = []
        self._watchers: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._run, name="soak-faults", daemon=True)

    # -- the loop -----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop injecting; wait for the servers to resume and the workers to be started again."""
        self._stop.set()
        self._thread.join()
        for action in self._actions:
            action.join()

    def wait_for_watchers(self) -> None:
        for watcher in self._watchers:
            watcher.join()

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(1.5, 3.0)):
            kinds = [kind for kind in self.kinds if self._possible(kind)]
            if not kinds:
                continue
            kind = self.rng.choice(kinds)
            try:
                getattr(self, f"_{kind}")()
            except Exception as exc:  # a fault that could not be made is logged, not fatal
                self.log(f"{kind}: not made: {type(exc).__name__}: {exc}")

    def _possible(self, kind: str) -> bool:
        if kind in _WORKER_FAULTS:
            idle = self._idle_workers()
            # A whole worker goes down only while another one runs.
            return len(idle) >= (1 if kind == "child_kill" else 2)
        if kind == "broker_restart" and time.time() - self._last_restart < RESTART_EVERY:
            return False  # a node restart takes seconds: now and then, between the other faults
        target = "broker" if kind in _BROKER_FAULTS else "locks"
        return target not in self._busy

    def _idle_workers(self) -> list[SoakWorker]:
        return [worker for worker in self.workers if worker.name not in self._busy and worker.ready()]

    def _later(self, target: str, action: Callable[[], None]) -> None:
        """Run ``action`` in the background; ``target`` can be faulted again once it is done."""

        def run() -> None:
            try:
                action()
            except Exception as exc:
                self.log(f"{target}: recovery failed: {type(exc).__name__}: {exc}")
            finally:
                self.last_fault_at = time.time()
                with self._lock:
                    self._busy.discard(target)

        with self._lock:
            self._busy.add(target)
        thread = threading.Thread(target=run, name=f"soak-fault-{target}", daemon=True)
        self._actions.append(thread)
        thread.start()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def record_kills(self, pids: list[int], t: float, worker: str, fault: str, *, first_is_main: bool) -> None:
        with self._lock:
            self.kills.extend(Kill(pid, t, worker, fault, first_is_main and i == 0) for i, pid in enumerate(pids))

    # -- worker faults ------------------------------------------------------

    def _child_kill(self) -> None:
        worker = self.rng.choice(self._idle_workers())
        children = worker.children()
        if not children:
            return
        pid = self.rng.choice(children)
        os.kill(pid, signal.SIGKILL)
        t = self.last_fault_at = time.time()
        self.record_kills([pid], t, worker.name, "child_kill", first_is_main=False)
        self._count("child_kill")
        self.log(f"child_kill: SIGKILL pool process {pid} of {worker.name}")

    def _worker_kill(self) -> None:
        worker = self.rng.choice(self._idle_workers())
        pause = self.rng.uniform(0.5, 2.0)

        def restart() -> None:
            pids = worker.kill()
            t = self.last_fault_at = time.time()
            self.record_kills(pids, t, worker.name, "worker_kill", first_is_main=True)
            self._count("worker_kill")
            self.log(f"worker_kill: SIGKILL {worker.name} main process {pids[0]} (pool processes "
                     f"{', '.join(map(str, pids[1:])) or 'none'}); start again in {pause:.1f}s")
            self._watch(worker.name, t)
            time.sleep(pause)
            worker.start()
            self.log(f"worker_kill: {worker.name} started again, pid {worker.pid}")

        self._later(worker.name, restart)

    def _warm_restart(self) -> None:
        worker = self.rng.choice(self._idle_workers())

        def restart() -> None:
            self._count("warm_restart")
            self.restarts.append(time.time())
            self.log(f"warm_restart: SIGTERM {worker.name} pid {worker.pid}")
            began = time.time()
            killed = worker.terminate(WARM_SHUTDOWN_TIMEOUT)
            if killed:
                self.record_kills(killed, time.time(), worker.name, "warm_restart", first_is_main=True)
                self.log(f"warm_restart: {worker.name} still ran after {WARM_SHUTDOWN_TIMEOUT:.0f}s: SIGKILLed")
            time.sleep(self.rng.uniform(0.2, 1.0))
            worker.start()
            self.log(f"warm_restart: {worker.name} exited after {time.time() - began:.1f}s and started again, "
                     f"pid {worker.pid}")

        self._later(worker.name, restart)

    # -- server faults ------------------------------------------------------

    def _lock_stall(self) -> None:
        seconds = self.rng.uniform(2.0, 4.0)
        server = self.servers.locks

        def stall() -> None:
            server.pause()
            self._count("lock_stall")
            self.log(f"lock_stall: SIGSTOP lock store for {seconds:.1f}s")
            time.sleep(seconds)
            server.resume()
            self.log("lock_stall: SIGCONT lock store")

        self._later("locks", stall)

    def _lock_restart(self) -> None:
        pause = self.rng.uniform(0.3, 1.5)
        server = self.servers.locks

        def restart() -> None:
            server.kill()
            self._count("lock_restart")
            self.log(f"lock_restart: SIGKILL lock store; start again in {pause:.1f}s")
            time.sleep(pause)
            server.start()
            self.log("lock_restart: lock store started again from its append-only file")

        self._later("locks", restart)

    def _broker_stall(self) -> None:
        server = self.servers.broker
        what = "result backend" if self.servers.rabbit is not None else "broker and result backend"

        def stall() -> None:
            server.pause()
            self._count("broker_stall")
            self.log(f"broker_stall: SIGSTOP {what} for 2.0s")
            time.sleep(2.0)
            server.resume()
            self.log(f"broker_stall: SIGCONT {what}")

        self._later("broker", stall)

    def _broker_close(self) -> None:
        rabbit = self.servers.rabbit
        assert rabbit is not None

        def close() -> None:
            rabbit.close_connections(self.servers.vhost, "soak: broker_close")
            self._count("broker_close")
            self.log("broker_close: RabbitMQ closed every connection; unacknowledged messages are handed out again")
            time.sleep(1.0)

        self._later("broker", close)

    def _broker_restart(self) -> None:
        rabbit = self.servers.rabbit
        assert rabbit is not None

        self._last_restart = time.time()

        def restart() -> None:
            self._count("broker_restart")
            self.log("broker_restart: stopping the RabbitMQ node")
            began = time.time()
            rabbit.restart()
            self.log(f"broker_restart: RabbitMQ node started again after {time.time() - began:.1f}s")

        self._later("broker", restart)

    # -- the locks of a killed worker ---------------------------------------

    def _watch(self, worker: str, killed_at: float) -> None:
        thread = threading.Thread(target=self._watch_locks, args=(worker, killed_at), name=f"soak-watch-{worker}",
                                  daemon=True)
        self._watchers.append(thread)
        thread.start()

    def _watch_locks(self, worker: str, killed_at: float) -> None:
        """Find the running locks that name ``worker``, then note when each stops holding its value.

        The locks are listed right after the kill (its pool processes died
        with it, so it can take no new one); if the lock store is stalled or
        restarting then, they are listed as soon as it answers.
        """
        client = redis.Redis.from_url(f"{self.servers.locks.url}/0", socket_timeout=1, socket_connect_timeout=1,
                                      decode_responses=True)
        deadline = killed_at + WATCH_SECONDS
        held: Optional[list[BlockedKey]] = None
        while held is None and time.time() < deadline:
            try:
                held = [BlockedKey(worker, key, value, killed_at, field=field)
                        for key, field, value in _running_locks(client, worker)]
            except RedisError:
                time.sleep(0.05)
        held = held or []
        with self._lock:
            self.blocked.extend(held)
        self.log(f"worker_kill: {worker} held {len(held)} running lock(s) at its death"
                 + "".join(f"\n    {item.key} = {item.value}" for item in held))
        watched = list(held)
        while held and time.time() < deadline:
            pipe = client.pipeline(transaction=False)
            for blocked in held:
                if blocked.field is None:
                    pipe.get(blocked.key)
                    pipe.pttl(blocked.key)
                else:
                    pipe.hget(blocked.key, blocked.field)
                    pipe.time()
            try:
                replies = pipe.execute()
            except RedisError:
                time.sleep(0.05)
                continue
            now = time.time()
            for blocked, value, pttl in zip(held, replies[::2], replies[1::2]):
                if blocked.field is not None and value == blocked.value:
                    # A slot holds its key until its expiry passes, by the server's clock (pttl: TIME here).
                    left = int(value.split(":", 1)[0]) - (int(pttl[0]) * 1000 + int(pttl[1]) // 1000)
                    value, pttl = (value, left) if left > 0 else (None, 0)
                if value != blocked.value:
                    blocked.seen_freed_at = now
                    blocked.freed_at = min(now, blocked.expires_at or now)
                elif pttl > 0:
                    blocked.expires_at = now + pttl / 1000
            held = [blocked for blocked in held if blocked.freed_at is None]
            time.sleep(0.05)
        client.close()
        if watched:
            self.log(f"worker_kill: the running locks {worker} held at its death (killed at {_clock(killed_at)}) "
                     "kept their keys for " + ", ".join(_held_for(item) for item in watched))


def _held_for(item: BlockedKey) -> str:
    if item.freed_at is None or item.seen_freed_at is None:
        return "ever"
    seen = item.seen_freed_at - item.killed_at
    held = item.freed_at - item.killed_at
    return f"{held:.2f}s" if seen - held < 0.2 else f"{held:.2f}s (seen free after {seen:.2f}s: the store was away)"


def _running_locks(client: redis.Redis, worker: str) -> list[tuple[str, Optional[str], str]]:
    """(key, slot field or None, value) of every running lock and slot that names ``worker`` (replies decoded)."""
    locks: list[tuple[str, Optional[str], str]] = []
    for key in client.scan_iter(match="once_task:*:running", count=1000):
        value = client.get(key)
        if value is None:
            continue
        try:
            owner = json.loads(value)
        except ValueError:
            continue
        if isinstance(owner, dict) and owner.get("worker") == worker:
            locks.append((str(key), None, str(value)))
    marker = f'"worker":{json.dumps(worker)},'
    for key in client.scan_iter(match="once_task:*:slots", count=1000):
        for field, value in client.hgetall(key).items():
            if str(field).startswith("s:") and marker in str(field):
                locks.append((str(key), str(field), str(value)))
    return locks
