"""The countdown of a message the library delays: whole seconds where RabbitMQ's native delayed delivery takes them.

Celery 5.5 and later send a message with a ``countdown`` or ``eta`` through
RabbitMQ's *native delayed delivery* when the app declares a quorum queue
(``task_default_queue_type="quorum"``, ``worker_detect_quorum_queues``) on
a non-direct exchange: the delay becomes a routing key of whole seconds
(kombu's ``calculate_routing_key``). Celery passes it ``int(countdown)``:
less than one second raises ``ValueError: countdown must be a positive
number``, and 1.9 s would become 1 s -- early.

Every delay the library computes (a burst's due time, a deferred copy, a
waiting call's safety copy) goes through ``countdown``: there, a positive
countdown is rounded *up* to a whole second, so that a message never
arrives before it is due; one that comes early all the same (a clock a
little behind) is put off again by the path that receives it. On other
brokers and queue types, and on Celery before 5.5, the countdown is
published as computed, sub-second included. A countdown the user passes
to ``apply_async`` is the user's and is left alone.

A leaf: this module imports Celery and nothing of the library's own.
"""

from __future__ import annotations

import math
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

__all__ = ["countdown", "native_delayed_delivery"]


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
