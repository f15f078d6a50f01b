"""Putting an execution off: publishing its message again, to run later.

A worker that cannot decide now whether an execution may run -- the lock
store does not answer, another delivery of the same message still runs, a
result is being stored -- neither runs it nor drops it: it publishes the
message again, same task id and attempt, with a countdown, and acknowledges
the delivery in hand (``Ignore``). The copy carries what the decision needs
in headers of the library's own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

from celery.exceptions import Ignore
from redis.exceptions import RedisError

from . import telemetry
from .errors import LockStoreUnavailable
from .headers import DIGEST_HEADER, TAKEOVER_HEADER, message_headers
from .janitor import Cleanup, janitor
from .ownership import RunningOwner, pickup_reference
from .protocols import TaskLike, TaskRequest
from .republish import republish
from .settings_table import Settings
from .store.connection import redact_url
from .store.permissions import refusal, what_failed

logger = logging.getLogger("celery_once_task")

#: How long a message waits before it is tried again when the lock store is unreachable at pickup.
DEFER_SECONDS = 5.0



def defer(task: TaskLike, request: TaskRequest, headers: Mapping[str, Any], countdown: float) -> None:
    """Publish this message again, same id and attempt, to run ``countdown`` seconds from now.

    Past the queue lock, and past every ``apply_async`` override
    (``republish``): the caller has decided what the copy holds. If
    publishing fails the error propagates: the task fails visibly rather
    than vanish.
    """
    headers = {**message_headers(request), **headers}
    signature = task.signature_from_request(
        request, request.args, request.kwargs, countdown=countdown, retries=request.retries, headers=headers
    )
    republish(task, signature.args, signature.kwargs, signature.options)


def store_down(
    task: TaskLike,
    settings: Settings,
    digest: str,
    request: TaskRequest,
    running_key: Optional[str],
    owner: RunningOwner,
    exc: RedisError,
    lost: Optional[Cleanup] = None,
) -> None:
    """The lock store did not answer a pickup: defer the message, run unguarded (``fail_open``), or refuse.

    Returns where the execution runs without its lock (``fail_open``);
    raises ``LockStoreUnavailable`` for an eager execution (nothing can put
    it off), and ``Ignore`` where the message was published again.
    """
    if telemetry.active:
        telemetry.executed(task, request, "store_unavailable", policy="fail_open" if settings.fail_open else None,
                           error=exc)
    maybe_applied = getattr(exc, "maybe_applied", True)
    takeover = owner.token
    if running_key is not None and maybe_applied:
        # A lost reply may have taken the lock in this execution's name.
        cleanup = lost or Cleanup(settings.redis_url, running_key, owner.token, True, task, request.id,
                                  "pickup refused", options=settings.redis_options)
        cleanup.uncertain = True
        janitor.add(cleanup)
        takeover = pickup_reference(cleanup.token, cleanup.since)
    # An ACL refusal is no outage: fail_open does not run past it.
    if settings.fail_open and refusal(exc) is None:
        logger.warning(
            "%s[%s]: lock operation failed: %s; running without running lock %s: %s",
            task.name, request.id, what_failed(exc), running_key, exc,
        )
        return
    if request.is_eager:
        # Nothing to publish again, and no worker to put it off: the call is refused, as a call to a worker
        # is when the store does not answer at publish (``OnceTask.apply`` raises it).
        logger.warning(
            "%s[%s]: lock operation failed: call refused, %s (running lock %s): %s",
            task.name, request.id, what_failed(exc), running_key, exc,
        )
        raise LockStoreUnavailable(
            f"{task.name}: {what_failed(exc)} (lock store {redact_url(settings.redis_url)}), so the eager call did "
            f"not run (running lock {running_key}): {exc}"
        ) from exc
    # Neither run unguarded nor drop the message: publish it again, same id
    # and attempt, to run when the lock store is back. If publishing fails
    # too, the error propagates and the task fails visibly.
    logger.warning(
        "%s[%s]: lock operation failed: %s; deferred by %ss (running lock %s): %s",
        task.name, request.id, what_failed(exc), DEFER_SECONDS, running_key, exc,
    )
    defer(task, request, {DIGEST_HEADER: digest, **({TAKEOVER_HEADER: takeover} if maybe_applied else {})},
           DEFER_SECONDS)
    raise Ignore()
