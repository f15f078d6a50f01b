"""The waiting copy: ``running_lock_conflict="wait"``, at most one running and one waiting per key.

An execution that meets the running lock of another task id, under "wait",
becomes the key's *waiting copy*, in one round trip (``store.waiting.wait``):

* it takes the queue lock back, so that new calls are dropped against it;
* it leaves its message in the key's waiting entry
  (``once_task:{name}:{digest}:waiting``, valued ``<task id>\\x1f<message>``);
* it tries the running lock once more, in case its holder just released it.

Then it goes back to the broker with a countdown of one lease
(``Lease.ttl``) -- its *safety copy* -- and its current delivery ends without
a result. No process holds it while it waits; a warm shutdown returns it to
the broker with its lock, and a revocation discards it and releases what it
holds (``cleanup``).

Hand-over: the running copy's release takes the waiting entry in the same
round trip (``store.waiting.release_taking_waiter``) and publishes the message
at once, so the waiting copy starts within moments of the end. If the
running copy's worker dies, nobody hands over: the safety copy comes back
within a lease, finds the dead worker's lock expired, and runs.

Of the copies of one waiting message (hand-over and safety copy) exactly one
runs: each releases the queue lock at pickup, and only the one that still
found it its own may run.

The calls of a limited key's line are handed over the same way
(``hand_over_entries``): see ``limits``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from kombu.utils.json import dumps, loads

from .ids import split_entry, waiting_token
from .protocols import TaskLike, TaskRequest
from .republish import republish

logger = logging.getLogger("celery_once_task")


def entry(task: TaskLike, request: TaskRequest, headers: dict[str, Any]) -> Optional[str]:
    """The waiting entry of this execution: its task id and the message to publish at hand-over.

    None where the message cannot be written as JSON (arguments kombu's JSON
    does not know): then only the safety copy brings it back.
    """
    message = message_of(task, request, headers)
    return None if message is None else waiting_token(request.id) + message


def message_of(task: TaskLike, request: TaskRequest, headers: dict[str, Any]) -> Optional[str]:
    """This execution's message as JSON, to be published again as it is; None where it is not JSON."""
    signature = task.signature_from_request(request, request.args, request.kwargs, headers=headers,
                                            retries=request.retries)
    try:
        message: str = dumps(dict(signature))  # type: ignore[no-untyped-call]
        return message
    except (TypeError, ValueError) as exc:
        logger.info("%s[%s]: waiting copy has no hand-over (its message is not JSON): %s", task.name, request.id, exc)
        return None


def hand_over(task: TaskLike, value: str, key: str) -> None:
    """Publish the waiting copy a released running lock had behind it."""
    task_id, message = split_entry(value)
    publish(task, task_id, message, key)


def publish(task: TaskLike, task_id: str, message: str, key: str) -> None:
    """Publish a waiting call's message (``message_of``), as it is and under its own task id."""
    try:
        data: Any = loads(message)  # type: ignore[no-untyped-call]
        options = dict(data.get("options") or {})
        options["task_id"] = task_id
        # Past the queue lock: the waiting copy holds it already.
        republish(task, data.get("args"), data.get("kwargs"), options)
    except Exception:
        logger.exception(
            "%s[%s]: waiting copy not handed over (lock %s); it runs from its safety copy", task.name, task_id, key
        )
        return
    logger.info("%s[%s]: waiting copy handed over (lock %s)", task.name, task_id, key)


def hand_over_entries(task: TaskLike, entries: list[str], key: str) -> None:
    """Publish the calls of a limited key's line that were given a slot (see ``limits``).

    Each entry is ``<task id>\\x1f<attempt>\\x1f<message>``; one without a
    message (it was not JSON) is brought by its safety copy.
    """
    for value in entries:
        task_id, rest = split_entry(value)
        _, message = split_entry(rest)
        if message:
            publish(task, task_id, message, key)
        else:
            logger.info("%s[%s]: waiting call has no message to hand over (lock %s); its safety copy brings it",
                        task.name, task_id, key)
