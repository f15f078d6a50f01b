"""``OnceTaskRequest``: cleanup in the worker's main process, for executions that cannot clean up.

A pool child that is killed (hard time limit, SIGKILL, out of memory,
``revoke(terminate=True)``, cold shutdown) runs none of its own ``finally``
blocks, so its running lock would stay until its TTL. The worker's main process
learns of each of these through this request object and releases the lock
the child held once the child is gone (a child that was sent a signal may run
on for a moment); the owner token is rebuilt from the message (task id,
attempt) and this worker's identity, which the child shares.

Every pool process of the worker shares that token, so a process that dies
while another delivery of the same attempt runs in another process of this
worker (a redelivery, a deferred copy, being put off) releases nothing: what
the token names may be that one's, which releases it at its own end.
"""

from __future__ import annotations

import logging
from typing import Optional

from celery.exceptions import Terminated, TimeLimitExceeded, WorkerLostError
from celery.worker import state as worker_state
from celery.worker.request import Request

from .cleanup import release_locks
from .internals import unwrap_child_exception
from .janitor import process_gone
from .protocols import ExceptionInfo

logger = logging.getLogger("celery_once_task")

# Exceptions the main process sees when the child never finished the body.
_CHILD_GONE = (WorkerLostError, TimeLimitExceeded, Terminated, SystemExit, KeyboardInterrupt)


class OnceTaskRequest(Request):
    """The worker's request for a ``OnceTask`` message (the task class's ``Request``).

    Releases the running lock of an execution whose process died, hit the
    hard time limit, or was terminated or cancelled, once the process is gone.
    """

    def release_running_lock(self, reason: str, *, unfinished: bool = False, final: bool = True) -> None:
        """Release the running lock this message's execution holds in this worker, once its process is gone.

        Args:
            reason: Why, for the log.
            unfinished: The process died: a finished record it may have
                written before its result was stored goes too (see ``redelivery``).
            final: The message is not delivered again.
        """
        twin = self._twin()
        if twin is not None:
            logger.info("%s[%s]: locks not released (%s): another delivery of this attempt runs in process %s of "
                        "this worker, and may hold them", self.task.name, self.id, reason, twin)
            return
        release_locks(
            self.task,
            task_id=self.id,
            retries=self.request_dict.get("retries"),
            args=self.args,
            kwargs=self.kwargs,
            headers=self.request_dict,
            queue=False,
            running=True,
            reason=reason,
            pid=self.worker_pid,
            unfinished=unfinished,
            final=final,
        )

    def _twin(self) -> Optional[int]:
        """The process of this worker in which another delivery of this attempt runs, if one does (else None)."""
        retries = self.request_dict.get("retries")
        for other in list(worker_state.active_requests):
            if other is self or other.id != self.id or other.request_dict.get("retries") != retries:
                continue
            pid = other.worker_pid
            if isinstance(pid, int) and pid != self.worker_pid and not process_gone(pid):
                return pid
        return None

    def on_failure(self, exc_info: ExceptionInfo, send_failed_event: bool = True, return_ok: bool = False) -> object:
        exc = unwrap_child_exception(exc_info.exception)
        if isinstance(exc, _CHILD_GONE):
            # Celery requeues the message of a lost child only for acks_late with reject_on_worker_lost.
            requeued = bool(self.task.acks_late and self.task.reject_on_worker_lost
                            and isinstance(exc, WorkerLostError))
            self.release_running_lock(type(exc).__name__, unfinished=True, final=not requeued)
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        try:
            super().on_timeout(soft, timeout)
        finally:
            if not soft:
                self.release_running_lock("hard time limit")

    def terminate(self, *args: object, **kwargs: object) -> object:
        # revoke(terminate=True): the child is sent a signal; its lock goes once it is gone.
        try:
            return super().terminate(*args, **kwargs)
        finally:
            if self.time_start:
                self.release_running_lock("terminated")

    def cancel(self, *args: object, **kwargs: object) -> object:
        # Celery >= 5.5 cancels running tasks at cold shutdown before the boot
        # steps are stopped; the pool child is killed right after. The message
        # comes back (Celery marks it for a retry): the call has not ended, so
        # what it keeps until its end (an "end" window, replaced arguments, a
        # burst's arguments) stays for the copy.
        try:
            return super().cancel(*args, **kwargs)
        finally:
            if self.time_start:
                self.release_running_lock("cancelled", unfinished=True, final=False)
