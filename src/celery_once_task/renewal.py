"""Leases: the worker's main process keeps its live executions' running locks, and its heartbeat.

Every ``Lease.interval`` the ``LeaseKeeper`` sends one pipeline per lock
store: the worker instance's heartbeat key and an owner-checked
``PEXPIRE`` of the running lock of each execution the worker is running
(and of its call's queue lock, where the call holds it until its run ends:
``windows``) -- one round trip per worker per interval, whatever the number
of tasks. The
owner tokens are rebuilt from the messages (task id, attempt) and this
worker's identity, which its pool children share, so a lock that changed
hands, or that its execution already released, is never touched.

A live execution keeps its lock however long it runs, whatever it does: the
keeper runs on an OS thread of its own (``native``) under every pool, with
Redis clients of its own, so a task body that never yields to a gevent or
eventlet hub cannot starve it. A worker that stops renewing -- killed, or its
main process stalled for ``heartbeat_timeout`` -- loses its locks when their
lease ends, and the keys are free again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping

from celery.worker import state as worker_state
from redis.exceptions import RedisError

from . import call_options, native, windows
from .cleanup import digest_from, is_once_task
from .headers import OPTIONS_HEADER
from .janitor import janitor
from .keys import RUNNING, key_space
from .limits import limited, slots_key
from .ownership import INSTANCE, Lease, RunningOwner
from .protocols import CeleryApp, WorkerRequest
from .settings import resolve
from .store import LeaseKind, LockStore
from .store.connection import make_client
from .store.permissions import what_failed

#: A lease the worker renews: (lock store URL, key, owner token, what it is of).
Renewed = tuple[str, str, str, LeaseKind]

logger = logging.getLogger("celery_once_task")


class LeaseKeeper:
    """Renews the running locks of the worker's active requests, and its heartbeat, on an OS thread of its own.

    Args:
        app: The worker's Celery app: its settings name the lock store and ``heartbeat_timeout``.
        nodename: The worker's node name, written into the heartbeat.
    """

    def __init__(self, app: CeleryApp, nodename: str) -> None:
        self.app = app
        settings = resolve(app)
        self.lease = Lease(settings.heartbeat_timeout)
        self.heartbeat = json.dumps(
            {"worker": nodename, "pid": os.getpid(), "heartbeat_timeout": settings.heartbeat_timeout}
        )
        self.stopped = native.Event()
        #: Set by the thread after its first renewal, and when it has ended.
        self.started = native.Event()
        self.ended = native.Event()
        self._forget = False
        self._stores: dict[str, LockStore] = {}
        self._locks: dict[str, tuple[Renewed, ...]] = {}
        self._failing = False
        self.url = settings.redis_url
        #: The heartbeat's ``key_prefix``: the app's.
        self.prefix = settings.key_prefix
        self._options: dict[str, Mapping[str, object]] = {settings.redis_url: settings.redis_options}

    def store(self, url: str) -> LockStore:
        store = self._stores.get(url)
        if store is None:
            # A client of its own, whose calls give up before the next
            # renewal is due: a renewal stuck on a dead connection would let
            # every lease run out. Its own, too, so that the pool never
            # forks while this thread holds a connection of the shared one.
            timeout = max(1.0, self.lease.interval)
            client = make_client(url, self._options.get(url), socket_timeout=timeout, socket_connect_timeout=timeout)
            store = LockStore(client, prefix=self.prefix)
            self._stores[url] = store
        return store

    def start(self) -> None:
        """Start renewing; return after the first renewal (or a few seconds if the store does not answer).

        The calling thread is held meanwhile (see ``native``): the first
        round trip makes what the thread's connections need, and the worker
        starts taking tasks with its heartbeat written.
        """
        native.start_thread(self.run)
        self.started.block(2 * max(1.0, self.lease.interval) + 1.0)

    def run(self) -> None:
        try:
            while True:
                try:
                    self.renew()
                except Exception:  # the thread must outlive anything one renewal meets
                    logger.exception("leases of worker instance %s not renewed", INSTANCE)
                self.started.set()
                if self.stopped.wait(self.lease.interval):
                    break
            if self._forget:
                self.forget(self.store(self.url))
        finally:
            self.started.set()
            self.ended.set()

    def renew(self) -> None:
        """One renewal: one round trip per lock store; none while the library is switched off (``enabled``)."""
        if not resolve(self.app).enabled:
            return
        by_url: dict[str, list[tuple[str, str, LeaseKind]]] = {self.url: []}
        active = {}
        for request in list(worker_state.active_requests):
            locks = self._locks_of(request)
            active[request.id] = locks
            for url, key, token, kind in locks:
                if not janitor.owes(key, token):
                    by_url.setdefault(url, []).append((key, token, kind))
        self._locks = active  # forget the requests that ended
        try:
            for url, leases in by_url.items():
                self.store(url).leases.renew(leases, self.lease.ttl, INSTANCE, self.heartbeat)
        except RedisError as exc:
            if not self._failing:
                logger.warning(
                    "lock operation failed: leases of worker instance %s not renewed (%s); retrying every %.1fs: %s",
                    INSTANCE, what_failed(exc), self.lease.interval, exc,
                )
            self._failing = True
            return
        if self._failing:
            logger.info("leases of worker instance %s renewed again", INSTANCE)
        self._failing = False

    def _locks_of(self, request: WorkerRequest) -> tuple[Renewed, ...]:
        """The leases a request's execution takes: its running lock (or slot), and its call's queue lock if kept."""
        if request.id in self._locks:
            return self._locks[request.id]
        locks: tuple[Renewed, ...] = ()
        task: object = getattr(request, "task", None)
        if is_once_task(task) and task.running_lock:
            try:
                request_dict = getattr(request, "request_dict", None) or {}
                digest = digest_from(request_dict) or task.once_digest(request.args, request.kwargs)
                settings, queue_lock = call_options.from_headers(task, resolve(task.app, task),
                                                                 request_dict.get(OPTIONS_HEADER))
                space = key_space(task, settings)
                token = RunningOwner.for_execution(request.id, request_dict.get("retries"), space.holder_task,
                                                   settings.legacy_formats).token
                url = settings.redis_url
                self._options.setdefault(url, settings.redis_options)
                if limited(task, settings):
                    locks = ((url, slots_key(space, digest), token, "slot"),)
                else:
                    locks = ((url, space.lock(digest, RUNNING), token, "running"),)
                side = windows.queue_side(task, settings, space, digest, request.id, queue_lock, self.lease.ttl)
                kept = side.renewed() if side is not None else None
                if kept is not None:
                    locks += ((url, kept[0], kept[1], "queue"),)
            except Exception:
                logger.exception("%s[%s]: running lock cannot be renewed", task.name, request.id)
        self._locks[request.id] = locks
        return locks

    def stop(self) -> None:
        """Stop renewing; the heartbeat and the leases run out by themselves."""
        self.stopped.set()

    def close(self, timeout: float) -> None:
        """Stop renewing and remove the heartbeat (the worker exits), waiting up to ``timeout`` seconds.

        The keeper's thread removes it itself: its clients are its own (under
        gevent and eventlet their sockets belong to its hub), and a renewal it
        is making cannot then write the heartbeat again after its removal.
        """
        if not resolve(self.app).enabled:  # no heartbeat was written (or it runs out): the store is not contacted
            self.stopped.set()
            return
        ran = not self.ended.is_set()
        self._forget = True
        self.stopped.set()
        if not (ran and self.ended.wait(timeout)):
            # The thread had stopped already (cold shutdown) or is stuck: a client of this thread's.
            self.forget(LockStore(make_client(self.url, self._options.get(self.url)), prefix=self.prefix))

    def forget(self, store: LockStore) -> None:
        """Remove the heartbeat: this worker instance is gone."""
        try:
            store.leases.forget_instance(INSTANCE)
        except RedisError as exc:
            logger.warning("heartbeat of worker instance %s not removed: %s", INSTANCE, exc)
