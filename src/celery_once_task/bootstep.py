"""``OnceTaskUnlockBootStep``: the worker's leases and heartbeat, and lock release at cold shutdown.

While the worker runs, the step's ``LeaseKeeper`` (``renewal``) keeps the
running locks of its executions and a heartbeat key for this worker instance,
and its ``Rescuer`` (``rescue``) publishes again the messages put off with a
countdown whose worker died holding them.
Warm shutdown (SIGTERM) lets running tasks finish, and each releases its own
running lock; the leases are kept until then. Cold shutdown (SIGQUIT) kills
running tasks: this step releases their running locks once the processes
that ran them are gone -- never while an execution can still run. Messages
that were prefetched but never started go back to the broker with their
queue locks, as they never ran.

Pool children are made to die with the worker's main process (Linux's
parent-death signal, which Celery itself sets from 5.3 on): a child that
outlived a killed worker would run on after its leases ended.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
from typing import Optional

from celery import bootsteps
from celery import signals as celery_signals
from celery.worker import state as worker_state

from . import brokers
from .cleanup import is_once_task
from .janitor import janitor
from .ownership import register_worker
from .protocols import Worker
from .renewal import LeaseKeeper
from .rescue import Rescuer
from .settings import resolve

logger = logging.getLogger("celery_once_task")

_PR_SET_PDEATHSIG = 1


def _die_with_parent(**_: object) -> None:
    """In a pool child: be killed when the worker's main process dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError) as exc:
        logger.warning("pool child %s will not die with its worker: %s", os.getpid(), exc)


def refuse_short_guards(app: object) -> None:
    """Refuse to start where a task's ``redelivery_guard_timeout`` is shorter than the broker's visibility timeout.

    Raises ``ValueError`` naming the setting, the task and the timeout: a copy of a finished task's
    message would be delivered after its record expired, and run again.
    """
    conf = getattr(app, "conf", None)
    for name, task in sorted(getattr(app, "tasks", {}).items()):
        if not is_once_task(task):
            continue
        guard = resolve(task.app, task).redelivery_guard_timeout
        if guard is not None:
            try:
                brokers.check_guard(conf, guard)
            except ValueError as exc:
                raise ValueError(f"task {name}: {exc}") from None


class OnceTaskUnlockBootStep(bootsteps.StartStopStep):
    """The worker boot step: leases and a heartbeat while the worker runs, lock release at cold shutdown.

    Add it to the worker's steps in the module that makes the Celery app:

    ```python
    app.steps["worker"].add(OnceTaskUnlockBootStep)
    ```

    It starts after the pool (``requires``). Without it a worker's running
    locks are not renewed: each lasts its ``running_lock_timeout``, and no
    heartbeat tells the operators' tools that its worker is alive.

    Args:
        worker: The worker being started (Celery gives it).
        **kwargs: Celery's options for boot steps, passed on.
    """

    requires = {"celery.worker.components:Pool"}
    label = "OnceTaskUnlock"

    def __init__(self, worker: Worker, **kwargs: object) -> None:
        super().__init__(worker, **kwargs)
        refuse_short_guards(worker.app)
        # Before the pool forks: children write these into their tokens.
        register_worker(worker.hostname)
        celery_signals.worker_process_init.connect(_die_with_parent, weak=False, dispatch_uid="celery_once_task.pdeath")
        self._keeper: Optional[LeaseKeeper] = None
        self._rescuer: Optional[Rescuer] = None

    def start(self, worker: Worker) -> None:
        """Start renewing the leases and the heartbeat; at the process's exit, remove the heartbeat."""
        keeper = self._keeper = LeaseKeeper(worker.app, worker.hostname)
        keeper.start()
        # A worker that stops while the store is away keeps trying the releases it owes for a lease: an
        # execution's end left unrecorded would let a copy of its message run again once the lease is over.
        janitor.exit_timeout = max(janitor.exit_timeout, keeper.lease.ttl)
        # Messages put off with a countdown whose worker died: published again (``rescue``).
        self._rescuer = Rescuer(worker.app)
        self._rescuer.start()
        main = os.getpid()

        def at_exit() -> None:
            if os.getpid() == main:  # not in a pool child that inherited the handler
                keeper.close(timeout=max(1.0, keeper.lease.interval) + 1.0)

        atexit.register(at_exit)

    def stop(self, worker: Worker) -> None:
        """Warm shutdown: nothing to do; tasks still run and release their own locks, the leases are kept until exit."""

    def terminate(self, worker: Worker) -> None:
        """Cold shutdown: release the running locks of the tasks being killed, once their processes are gone."""
        for request in list(worker_state.active_requests):
            release = getattr(request, "release_running_lock", None)
            if release is not None:
                release("cold shutdown")
        # The pool kills its children after this step; the janitor's last
        # pass at exit releases the locks of those that are gone by then.
        if self._keeper is not None:
            self._keeper.stop()
        if self._rescuer is not None:
            self._rescuer.stop()
