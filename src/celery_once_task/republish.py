"""The library's own publishes of a message again: a deferred copy, a waiting call handed over.

A republish is the same message again, not a new call. So it goes straight to
``celery.Task.apply_async``, past ``OnceTask``'s (the copy's locks are decided
already) and past every ``apply_async`` override between the user's class and
Celery's: such an override ran when the call was made, and the copy carries
the headers and routing that call was published with -- running it again
would count, route or stamp one call twice.

A copy put off with a countdown is parked first (``parking``): no worker that
dies holding it keeps it from running. A copy published at once carries no
parked token.

Its countdown is the library's own (a deferral's, a safety copy's): it is
published as ``delays.delayed_options`` says, in whole seconds and to its
own queue where RabbitMQ's native delayed delivery carries it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from celery import Task
from celery.result import AsyncResult

from . import delays
from .parking import countdown_of, publish_parked, without_token
from .protocols import TaskLike


def republish(task: TaskLike, args: Optional[Sequence[Any]], kwargs: Optional[Mapping[str, Any]],
              options: Mapping[str, Any]) -> Optional[AsyncResult]:
    """Publish a copy of a message under its own task id, past every ``apply_async`` override."""
    # Whole seconds and its own queue where RabbitMQ's native delayed delivery carries it, and parked with the
    # due time the broker will hold it to.
    options = delays.delayed_options(task.app, options)
    task_id = options.get("task_id")
    if countdown_of(options) <= 0 or not isinstance(task_id, str):
        return Task.apply_async(task, args, kwargs, **without_token(dict(options)))
    publishing = dict(options)
    return publish_parked(task, None, task_id, args, kwargs, publishing,
                          lambda: Task.apply_async(task, args, kwargs, **publishing))
