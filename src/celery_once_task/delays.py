"""The countdown of a message the library delays: whole seconds where RabbitMQ's native delayed delivery takes them.

Celery 5.5 and later send a message with a ``countdown`` or ``eta`` through
RabbitMQ's *native delayed delivery* when the app declares a quorum queue
(``task_default_queue_type="quorum"``, ``worker_detect_quorum_queues``) on
a non-direct exchange: the delay becomes a routing key of whole seconds
(kombu's ``calculate_routing_key``). Celery passes it ``int(countdown)``:
less than one second raises ``ValueError: countdown must be a positive
number``, and 1.9 s would become 1 s -- early.

Every delay the library computes (a burst's due time, a deferred copy, a
waiting call's safety copy) goes through ``countdown`` (a re-published
copy's options through ``delayed_options``): there, a positive
countdown is rounded *up* to a whole second, so that a message never
arrives before it is due; one that comes early all the same (a clock a
little behind) is put off again by the path that receives it. On other
brokers and queue types, and on Celery before 5.5, the countdown is
published as computed, sub-second included. A countdown the user passes
to ``apply_async`` is the user's and is left alone.

The copy must also reach the queue its message came from. Celery's native
path takes the routing key from the ``queue`` the router picked, not from
the ``routing_key`` a copy carries (``signature_from_request`` gives the
delivery's exchange and routing key, no queue): a copy of a message from a
queue the task is not routed to would land in the default queue. So the
copy names the app's queue its routing key (less any delay prefix) belongs
to; one the app does not know is left to Celery's routing.

A leaf: this module imports Celery and nothing of the library's own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Callable, Optional


def _quorum_queue_detector() -> Optional[Callable[[Any, str], tuple[bool, str]]]:
    """Celery's test for quorum queues, which ``Celery.send_task`` makes before native delayed delivery.

    None on Celery before 5.5: no native delayed delivery, every countdown as it is.
    """
    try:
        from celery.utils.quorum_queues import detect_quorum_queues
    except ImportError:
        return None
    detector: Callable[[Any, str], tuple[bool, str]] = detect_quorum_queues
    return detector


_detect_quorum_queues = _quorum_queue_detector()

__all__ = ["countdown", "delayed_options", "native_delayed_delivery"]

#: The whole seconds native delayed delivery puts before a routing key: 28 bits, each followed by a dot.
_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")


def native_delayed_delivery(app: Any) -> bool:
    """Whether Celery sends this app's delayed messages through RabbitMQ's native delayed delivery.

    The same test as ``Celery.send_task``'s: the broker's driver is AMQP and
    one of the app's queues is a quorum queue.
    """
    if _detect_quorum_queues is None:
        return False
    driver_type = str(app.producer_pool.connections.connection.transport.driver_type)
    return bool(_detect_quorum_queues(app, driver_type)[0])


def countdown(app: Any, seconds: float) -> float:
    """The countdown to publish a message due ``seconds`` from now with: see the module's docstring."""
    if seconds > 0 and native_delayed_delivery(app):
        return float(math.ceil(seconds))
    return seconds


def delayed_options(app: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    """The publish options of a copy the library delays (``options["countdown"]``): see the module's docstring."""
    seconds = float(options.get("countdown") or 0)
    if seconds <= 0 or not native_delayed_delivery(app):
        return dict(options)
    delayed = {**options, "countdown": float(math.ceil(seconds))}
    routing_key = options.get("routing_key")
    if delayed.get("queue") is None and isinstance(routing_key, str):
        queue = _queue_of(app, _DELAY_PREFIX.sub("", routing_key, count=1))
        if queue is not None:
            delayed["queue"] = queue
    return delayed


def _queue_of(app: Any, routing_key: str) -> Optional[str]:
    """The name of the app's queue that messages with this routing key go to, if it has one."""
    queues = app.amqp.queues
    if routing_key in queues:
        return routing_key
    for name, queue in queues.items():
        if queue.routing_key == routing_key:
            return str(name)
    return None
