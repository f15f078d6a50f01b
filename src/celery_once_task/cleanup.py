"""Releasing an execution's locks from outside its own run: signals, the main process, shutdown.

Every path that cleans up after a task that could not clean up after itself
(revoked, killed, timed out, internal error, cold shutdown) comes through
``release_locks``. It rebuilds the owner tokens the execution used, deletes
only locks that still hold those tokens, and never raises: it runs inside
Celery's hooks, where an exception would turn into a worker error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from .keys import DIGEST_HEADER, QUEUE, RUNNING, lock_key
from .ownership import RunningOwner
from .settings import resolve
from .store import LockStore

logger = logging.getLogger("celery_once_task")


def is_once_task(task: Any) -> bool:
    from .task import OnceTask  # the task module imports this one

    return isinstance(task, OnceTask)


def digest_from(headers: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The digest a message carries, if it carries a well-formed one."""
    if not headers:
        return None
    digest = headers.get(DIGEST_HEADER)
    if isinstance(digest, str) and len(digest) == 16 and all(c in "0123456789abcdef" for c in digest):
        return digest
    return None


def release_locks(
    task: Any,
    *,
    task_id: Optional[str],
    retries: Optional[int],
    args: Optional[Sequence[Any]],
    kwargs: Optional[Mapping[str, Any]],
    headers: Optional[Mapping[str, Any]],
    queue: bool,
    running: bool,
    reason: str,
) -> None:
    """Release the queue lock held by ``task_id`` and/or the running lock held by this attempt."""
    if not task_id or not is_once_task(task):
        return
    queue = queue and task.queue_lock
    running = running and task.running_lock
    if not (queue or running):
        return
    key = None
    try:
        digest = digest_from(headers) or task.once_digest(args, kwargs)
        settings = resolve(task._get_app(), task)
        store = LockStore.for_url(settings.redis_url, settings.redis_options)
        if queue:
            key = lock_key(task.name, digest, QUEUE)
            if store.release(key, task_id):
                logger.info("%s[%s]: released queue lock %s (%s)", task.name, task_id, key, reason)
        if running:
            key = lock_key(task.name, digest, RUNNING)
            owner = RunningOwner.for_execution(task_id, retries)
            if store.release(key, owner.token):
                logger.info("%s[%s]: released running lock %s (%s)", task.name, task_id, key, reason)
    except Exception:
        logger.exception(
            "%s[%s]: could not release lock %s (%s); it expires at its TTL", task.name, task_id, key, reason
        )
