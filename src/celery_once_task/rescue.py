"""Parked messages at pickup and after a worker's death: the claim, and the rescuer that publishes the overdue.

What parking is, and why, is ``parking``'s. Here are its two readers:

* ``claim_of``/``claim``, where an execution is picked up: a copy that
  carries a parked token claims its entry, first in the pickup's round trip
  (a burst's message's, ``debounce.take``; the running lock's, which a
  superseded copy gives back: ``running``), or alone, before a ``running_limit``
  slot or replaced arguments are taken (``claim``). A copy another
  publish superseded (a rescued copy, a later deferral of the same message)
  is acknowledged without running, and logged with its task id. If the store
  does not answer, the copy is deferred (``deferral``), keeping its token:
  the copy that comes back claims the same entry, and a rescue that came
  first turns it away. A message without a token costs nothing here.
* ``Rescuer``, a daemon thread in each worker's main process (started by the
  boot step): about once a second one round trip asks for the entries due
  more than ``heartbeat_timeout`` ago, takes them (``store.parked.rescue``:
  a new token each, and a lease during which no other rescuer takes them),
  and publishes each again: the same task id, at once, its token in its
  headers, through the app's producer pool. The broker's restore of the
  dead worker's copy, whenever it comes, finds the entry another copy's and
  is turned away. A rescued copy that is itself lost (its publish failed, the
  broker dropped it) is rescued again when its lease ends, the lease doubling
  each time (to at most an hour), so a queue that is slow to reach it is not
  flooded with copies.

Idle, the rescuer costs one cheap command per second per worker. A thread of
the ``threading`` module, like the janitor's: under gevent or eventlet it is a
green thread of the hub that owns the producer pool's connections.

Nothing here raises into Celery's hooks but the ``Ignore`` of a copy turned
away or deferred.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, NoReturn, Optional

from celery import Task
from celery.exceptions import Ignore
from redis.exceptions import RedisError

from . import parking, telemetry
from .deferral import DEFER_SECONDS, defer
from .events import PARKED_RESCUED, lock_recovered
from .headers import PARKED_HEADER
from .ownership import Lease
from .parking import Claim, decode, new_token
from .protocols import CeleryApp, TaskLike, TaskRequest
from .record_keys import parked_keys
from .redelivery import guard_seconds
from .settings import resolve
from .settings_table import Settings
from .store import LockStore, Rescued, store_for
from .store.connection import make_client

logger = logging.getLogger("celery_once_task")

#: How often the rescuer looks for overdue entries.
RESCUE_INTERVAL = 1.0
#: The most entries one look takes.
RESCUE_BATCH = 100
#: Why a rescued copy was published, as ``lock_recovered`` gives it.
RESCUED = PARKED_RESCUED


def claim_seconds(task: TaskLike, settings: Settings) -> float:
    """How long a claim is remembered: as long as a broker may hand out an older copy, and a lease more."""
    return guard_seconds(task, settings) + Lease(settings.heartbeat_timeout).ttl


def claim_of(task: TaskLike, settings: Settings, request: TaskRequest) -> Optional[Claim]:
    """The claim this copy makes at pickup (to ride in its first round trip); None for a message never parked."""
    return parking.claim_of(task, settings, request, claim_seconds(task, settings))


def claim(task: TaskLike, settings: Settings, request: TaskRequest, claiming: Claim) -> None:
    """Claim this copy's parked entry, alone; ``Ignore`` where another copy is the one to run, or it is deferred."""
    try:
        (reply,), _ = store_for(task, settings).runner.run([claiming.call])
    except RedisError as exc:
        claim_failed(task, request, exc)
    parking.settle(task, request, claiming, reply)


def claim_failed(task: TaskLike, request: TaskRequest, exc: RedisError) -> NoReturn:
    """The store did not answer a claim: the copy is deferred, keeping its token (``Ignore``)."""
    if telemetry.active:
        telemetry.executed(task, request, "store_unavailable", error=exc)
    logger.warning("%s[%s]: lock operation failed: parked message not claimed; deferred by %ss: %s",
                   task.name, request.id, DEFER_SECONDS, exc)
    defer(task, request, {}, DEFER_SECONDS)
    raise Ignore() from None


class Rescuer:
    """Publishes again the parked messages no worker claimed in time, on a thread of its own.

    Args:
        app: The worker's Celery app: its settings name the lock store, the
            ``key_prefix`` and ``heartbeat_timeout``.
    """

    def __init__(self, app: CeleryApp, interval: float = RESCUE_INTERVAL) -> None:
        #: Any: the app's producer side (``tasks``, ``send_task``) is Celery's own, which no Protocol here names.
        self.app: Any = app
        settings = resolve(app)
        self.grace = float(settings.heartbeat_timeout)
        self.lease = Lease(settings.heartbeat_timeout).ttl
        self.interval = interval
        self.url = settings.redis_url
        self._options = settings.redis_options
        self._prefix = settings.key_prefix
        self._store: Optional[LockStore] = None
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failing = False

    @property
    def store(self) -> LockStore:
        if self._store is None:
            # A client of its own, that gives up before the next look is due, and that a prefork pool
            # never forks while this thread holds one of its connections.
            timeout = max(1.0, self.interval)
            client = make_client(self.url, self._options, socket_timeout=timeout, socket_connect_timeout=timeout)
            self._store = LockStore(client, prefix=self._prefix)
        return self._store

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="celery-once-task-rescuer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                self.rescue()
            except Exception:  # the thread must outlive anything one look meets
                logger.exception("parked messages not looked after")
            self._stopped.wait(self.interval)

    def rescue(self) -> int:
        """One look: publish again every entry overdue by ``heartbeat_timeout``; how many were published.

        None while the library is switched off (``enabled``): the store is not contacted.
        """
        if not resolve(self.app).enabled:
            return 0
        try:
            rescued = self.store.parked.rescue(self.grace, self.lease, new_token(), RESCUE_BATCH)
        except RedisError as exc:
            if not self._failing:
                logger.warning("lock operation failed: parked messages not looked after; retrying every %.1fs: %s%s",
                               self.interval, exc, parking.acl_hint(exc))
            self._failing = True
            return 0
        self._failing = False
        published = 0
        for entry in rescued:
            published += self.publish(entry)
        return published

    def publish(self, entry: Rescued) -> bool:
        """Publish a rescued entry's message again, at once, under its new token; whether it was published."""
        try:
            message = decode(entry.message, self.app.conf.get("accept_content"))
        except Exception as exc:
            logger.error("%s: parked message cannot be read back, not published again: %s", entry.task_id, exc)
            return False
        options: dict[str, Any] = dict(message.options)
        options["headers"] = {**(options.get("headers") or {}), PARKED_HEADER: entry.token}
        options["task_id"] = entry.task_id
        task = self.app.tasks.get(message.task_name)
        try:
            if task is not None:
                # Past every apply_async override, as any copy the library publishes again (``republish``).
                Task.apply_async(task, message.args, message.kwargs, **options)
            else:
                self.app.send_task(message.task_name, message.args, message.kwargs, **options)
        except Exception as exc:
            logger.warning("%s[%s]: parked message not published again (tried again in %.1fs): %s",
                           message.task_name, entry.task_id, self.lease * 2 ** (entry.rescues - 1), exc)
            return False
        logger.warning("%s[%s]: lock recovered: message put off with a countdown was not taken %.1fs after it was "
                       "due (its worker is gone, or too busy to start it): published again (rescue %d)",
                       message.task_name, entry.task_id, self.grace, entry.rescues)
        key = parked_keys(self._prefix)[0]
        if telemetry.active:
            telemetry.recovered(task if task is not None else message.task_name, key, RESCUED)
        lock_recovered.send(sender=task if task is not None else message.task_name, key=key, holder=entry.task_id,
                            reason=RESCUED)
        return True
