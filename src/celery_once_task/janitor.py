"""The janitor: owner-checked deletes that could not be done when they were due.

A release that met the lock store unreachable, an acquisition whose reply
was lost, the running lock of an execution that is being killed: each leaves
a lock that must go, but only by its owner token, only once the store
answers again, and -- for an execution being killed -- only once its process
can no longer run. The janitor keeps these deletes for the process and a
daemon thread retries them until each is done; at exit it keeps trying for a
while (a worker: its lease, ``heartbeat_timeout``).

Nothing here raises: it runs after the fact, where no caller could act on an
error. Each delete is logged with the task name, task id and key.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from redis.exceptions import RedisError

from . import telemetry
from .events import RELEASED_LATE, lock_recovered
from .protocols import TaskLike
from .settings_table import Settings
from .store import FinishedRecord, LockStore, StoreUnavailable, throttles
from .store.permissions import what_failed
from .store.scripts import Call
from .waiting import hand_over_entries

logger = logging.getLogger("celery_once_task")

#: How often a waiting delete is tried again: soon while a killed process is
#: expected to exit, more slowly while the store is away.
_PROCESS_POLL = 0.05
_STORE_BACKOFF = (0.2, 0.5, 1.0, 2.0)
#: How long after the store answers again an uncertain delete is made once more.
_SECOND_PASS = 0.5
#: A process sent a signal that has not exited after this long ignores it: it
#: runs on, and its execution will release its own lock (or its lease ends).
_PROCESS_WAIT = 30.0
#: How long a process that is not a worker (a publisher) keeps trying its pending deletes at exit.
_EXIT_TIMEOUT = 3.0


@dataclass(eq=False)
class Cleanup:
    """One owner-checked delete still to do."""

    url: str
    key: str
    token: str
    #: Match ``token`` as the owner-token prefix of a running lock's value.
    prefix: bool
    #: The task, for the hand-over, the log and ``lock_recovered`` (a bare name, or None, is only logged).
    task: Union[TaskLike, str, None]
    task_id: Optional[str]
    reason: str
    #: Delete only once this process is gone (the pool child that ran the execution).
    pid: Optional[int] = None
    #: The lock client's ``redis_options``.
    options: Mapping[str, object] = field(default_factory=dict)
    #: The finished record of the execution that ended, written with the release (see ``redelivery``).
    record: Optional[FinishedRecord] = None
    #: ``key`` is a limited key's slots (see ``limits``): its limit, and how long a slot handed to a
    #: waiting call is reserved for it.
    slot: bool = False
    limit: int = 1
    reserve: float = 0.0
    #: With ``slot``: ``token`` is a revoked call's id, to be taken out of the line (no slot is freed).
    forget: bool = False
    #: With ``slot``: free the slot only if it was taken at this moment -- the one a pickup whose reply was
    #: lost may have taken, not that of another copy of the attempt in this worker, which shares the token.
    since: str = ""
    #: ``key`` is a debounced key's burst: forget the arguments the execution ``token`` ran with
    #: (see ``debounce``).
    burst: bool = False
    #: ``key`` is a key's replaced arguments (see ``replace``): forget those of the holder ``token``
    #: (its execution ended), or undo the replacement the refused duplicate ``token`` may have made.
    arguments: Literal["", "forget", "undo"] = ""
    #: ``key`` is a throttle's log, ``token`` a call id: mark lost the start the process ``starter``
    #: made on this reservation (ms), so that a copy of the message runs (see ``throttle``).
    lost_start: str = ""
    starter: str = ""
    #: A lock that a command with a lost reply may still write: once the
    #: store answers, commands it held from before run within moments, in any
    #: order with ours, so the delete is made twice, a moment apart.
    uncertain: bool = False
    failures: int = field(default=0)
    passes: int = field(default=0)
    released: bool = field(default=False)
    #: When to stop waiting for ``pid`` to exit (monotonic seconds).
    wait_until: float = field(default_factory=lambda: time.monotonic() + _PROCESS_WAIT)

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.url, self.key, self.token)


def process_gone(pid: int, *, exiting: bool = False) -> bool:
    """Whether process ``pid`` can no longer run code (gone, or a zombie)."""
    if pid == os.getpid():
        return exiting
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"Z", b"X")


class Janitor:
    """The deletes this process still owes, and the thread that does them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str, str], Cleanup] = {}
        self._thread: Optional[threading.Thread] = None
        self._wake = threading.Event()
        #: How long this process, exiting, keeps trying the deletes it still owes. A worker sets its lease
        #: (``bootstep``): a release left undone at exit -- an execution's end, its finished record --
        #: lets a copy of a message whose execution ended run again once the lease runs out.
        self.exit_timeout = _EXIT_TIMEOUT

    def add(self, cleanup: Cleanup) -> None:
        with self._lock:
            self._pending[cleanup.ident] = cleanup
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="celery-once-task-janitor", daemon=True)
                self._thread.start()
        self._wake.set()

    def owes(self, key: str, token: str) -> bool:
        """Whether a delete of ``key`` by ``token`` is pending (its execution is over)."""
        return any(c.key == key and c.token == token for c in list(self._pending.values()))

    def pending(self) -> list[Cleanup]:
        with self._lock:
            return list(self._pending.values())

    def sweep(self, *, exiting: bool = False) -> float:
        """Try every pending delete once; return how long to wait before the next try (0: none left)."""
        wait = 0.0
        for cleanup in self.pending():
            if cleanup.pid is not None and not process_gone(cleanup.pid, exiting=exiting):
                if time.monotonic() < cleanup.wait_until:
                    wait = min(wait or _PROCESS_POLL, _PROCESS_POLL)
                    continue
                with self._lock:
                    self._pending.pop(cleanup.ident, None)
                logger.info(
                    "%s[%s]: lock %s not released (%s): process %s still runs the execution",
                    _name(cleanup.task), cleanup.task_id, cleanup.key, cleanup.reason, cleanup.pid,
                )
                continue
            try:
                released, handed = _release(LockStore.for_url(cleanup.url, cleanup.options), cleanup)
            except RedisError as exc:
                cleanup.failures += 1
                backoff = _STORE_BACKOFF[min(cleanup.failures, len(_STORE_BACKOFF)) - 1]
                wait = min(wait or backoff, backoff)
                if cleanup.failures == 1:
                    logger.warning(
                        "%s[%s]: lock operation failed: could not release lock %s (%s): %s; retrying until the "
                        "lock store answers: %s",
                        _name(cleanup.task), cleanup.task_id, cleanup.key, cleanup.reason, what_failed(exc), exc,
                    )
                continue
            if handed and cleanup.task is not None and not isinstance(cleanup.task, str):
                hand_over_entries(cleanup.task, handed, cleanup.key)
            cleanup.passes += 1
            cleanup.released = cleanup.released or released
            if cleanup.uncertain and cleanup.passes < 2:
                wait = min(wait or _SECOND_PASS, _SECOND_PASS)
                continue
            with self._lock:
                self._pending.pop(cleanup.ident, None)
            if cleanup.released:
                logger.info(
                    "%s[%s]: released lock %s (%s)", _name(cleanup.task), cleanup.task_id, cleanup.key, cleanup.reason
                )
                if cleanup.failures:
                    _recovered(cleanup)
        return wait

    def flush(self, timeout: float) -> None:
        """At exit: try the pending deletes until they are done or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            wait = self.sweep(exiting=True)
            if not wait:
                return
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))

    def _work(self) -> None:
        while True:
            wait = self.sweep()
            with self._lock:
                if not self._pending:
                    self._thread = None
                    return
            self._wake.wait(wait or _PROCESS_POLL)
            self._wake.clear()

    def _forget_after_fork(self) -> None:
        # A forked child owes nothing: its parent's deletes stay with the parent.
        self._lock = threading.Lock()
        self._pending = {}
        self._thread = None
        self._wake = threading.Event()


def _release(store: LockStore, cleanup: Cleanup) -> tuple[bool, list[str]]:
    """Make one owner-checked delete; whether it deleted, and the waiting calls it handed a slot to."""
    if cleanup.burst:
        return store.bursts.forget(cleanup.key, cleanup.token, "closed"), []
    if cleanup.lost_start:  # no lock: mark_lost logs what it did
        mark_lost(store, cleanup)
        return False, []
    if cleanup.arguments == "forget":
        return store.calls.forget_arguments(cleanup.key, cleanup.token), []
    if cleanup.arguments == "undo":
        return store.calls.undo_replacement(cleanup.key, cleanup.token), []
    if cleanup.slot and cleanup.forget:
        return store.slots.forget(cleanup.key, cleanup.token, cleanup.limit, cleanup.reserve)
    if cleanup.slot:
        return store.slots.release(cleanup.key, cleanup.token, cleanup.limit, cleanup.reserve, cleanup.record,
                                   since=cleanup.since)
    if cleanup.record is not None:
        return store.locks.release_running(cleanup.key, cleanup.token, cleanup.record), []
    return store.locks.release(cleanup.key, cleanup.token, prefix=cleanup.prefix), []


def mark_lost(store: LockStore, cleanup: Cleanup) -> bool:
    """Mark lost a throttled start whose process died (``cleanup.lost_start``); whether there was one."""
    (marked,), _ = store.runner.run([throttles.lost(cleanup.key, cleanup.token, cleanup.starter,
                                                    cleanup.lost_start)])
    if marked:
        logger.info("%s[%s]: marked lost its start on %s (%s): a copy of its message runs again",
                    _name(cleanup.task), cleanup.task_id, cleanup.key, cleanup.reason)
    return bool(marked)


def release_or_leave(
    store: LockStore, settings: Settings, task: TaskLike, task_id: Optional[str], key: str, token: str, reason: str,
    *, prefix: bool = False, record: Optional[FinishedRecord] = None, also: Sequence[Call] = (),
    also_later: Sequence[Cleanup] = (),
) -> Optional[RedisError]:
    """Release a lock by its owner token now, or leave the delete to the janitor until the store answers.

    Args:
        store: The lock store.
        settings: The task's settings: where the janitor finds the store again.
        task: The lock's task.
        task_id: The task id, for the log.
        key: The lock's key.
        token: The owner token (with ``prefix``: the start of the value a running lock holds).
        reason: Why, for the log.
        prefix: ``token`` is the start of the lock's value, not all of it.
        record: The finished record to write with the release (see ``redelivery``).
        also: Further calls of the release's round trip (the call's queue-side keys: ``windows``).
        also_later: What the janitor makes of ``also`` should the store not answer.

    Returns:
        None where the lock was released now; else the error that left it to the janitor (or, an error
        reply, unreleased).
    """
    try:
        if record is None and not also:
            store.locks.release(key, token, prefix=prefix)
        elif record is None:
            store.locks.release_all([(key, token, prefix)], also)
        else:
            store.locks.release_running(key, token, record, also)
    except RedisError as exc:
        if isinstance(exc, StoreUnavailable) or getattr(exc, "maybe_applied", True):
            janitor.add(Cleanup(settings.redis_url, key, token, prefix, task, task_id, reason,
                                options=settings.redis_options, record=record))
            for cleanup in also_later:
                janitor.add(cleanup)
        else:  # an error reply: the store answered and will answer the same again
            logger.warning("%s[%s]: lock operation failed: could not release lock %s (%s): %s",
                           _name(task), task_id, key, reason, exc)
        return exc
    return None


def _name(task: object) -> str:
    return str(getattr(task, "name", task))


def _recovered(cleanup: Cleanup) -> None:
    reason = RELEASED_LATE.format(why=cleanup.reason)
    if telemetry.active:
        telemetry.recovered(cleanup.task, cleanup.key, reason)
    if cleanup.task is not None and not isinstance(cleanup.task, str):
        lock_recovered.send(sender=cleanup.task, key=cleanup.key, holder=cleanup.token, reason=reason)


janitor = Janitor()
os.register_at_fork(after_in_child=janitor._forget_after_fork)


@atexit.register
def _flush_at_exit() -> None:
    if janitor.pending():
        janitor.flush(timeout=janitor.exit_timeout)
