"""``OnceTaskUnlockBootStep``: the worker's heartbeat, and lock release at cold shutdown.

Warm shutdown (SIGTERM) lets running tasks finish, and each releases its own
running lock; this step releases nothing then, so no lock is ever released
under a task that still runs. Cold shutdown (SIGQUIT) kills running tasks:
this step releases their running locks. Messages that were prefetched but
never started go back to the broker with their queue locks, as they never ran.

While the worker runs, the step keeps a heartbeat key for this worker
instance. A running lock whose instance has no heartbeat left belongs to a
worker that is gone, and a redelivery of its message may take it over.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from celery import bootsteps
from celery.worker import state as worker_state

from .connection import make_client
from .ownership import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, INSTANCE, register_worker
from .settings import resolve
from .store import LockStore

logger = logging.getLogger("celery_once_task")


class _HeartbeatThread(threading.Thread):
    def __init__(self, store: LockStore) -> None:
        super().__init__(name="celery-once-task-heartbeat", daemon=True)
        self.store = store
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.store.beat(INSTANCE, HEARTBEAT_TTL)
            except Exception as exc:
                logger.warning("heartbeat of worker instance %s not written: %s", INSTANCE, exc)
            self.stopped.wait(HEARTBEAT_INTERVAL)


class OnceTaskUnlockBootStep(bootsteps.StartStopStep):
    """Worker boot step: ``app.steps["worker"].add(OnceTaskUnlockBootStep)``."""

    requires = {"celery.worker.components:Pool"}
    label = "OnceTaskUnlock"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Before the pool forks: children write these into their tokens.
        register_worker(worker.hostname)
        self._heartbeat: Optional[_HeartbeatThread] = None

    def start(self, worker: Any) -> None:
        # A client of its own: the pool may fork while this thread holds a
        # connection of the shared client, and the children must not inherit it.
        settings = resolve(worker.app)
        store = LockStore(make_client(settings.redis_url, settings.redis_options))
        self._heartbeat = _HeartbeatThread(store)
        self._heartbeat.start()

    def stop(self, worker: Any) -> None:
        # Warm shutdown: tasks still run and release their own locks; the
        # heartbeat goes on until the process exits.
        pass

    def terminate(self, worker: Any) -> None:
        """Cold shutdown: release the running locks of the tasks being killed."""
        for request in list(worker_state.active_requests):
            release = getattr(request, "release_running_lock", None)
            if release is not None:
                release("cold shutdown")
        heartbeat = self._heartbeat
        if heartbeat is not None:
            heartbeat.stopped.set()
            try:
                heartbeat.store.forget_instance(INSTANCE)
            except Exception as exc:
                logger.warning("heartbeat of worker instance %s not removed: %s", INSTANCE, exc)
