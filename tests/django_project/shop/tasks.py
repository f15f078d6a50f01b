"""The app's tasks, declared as the README tells Django users to: ``@shared_task(base=OnceTask)``.

Tasks record what they do in a Redis database of their own, so that tests can
see executions without touching the locks.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import redis
from celery import shared_task
from django.conf import settings

from celery_once_task import OnceTask

from .models import Order


@functools.cache
def _records() -> redis.Redis:
    # Longer than any gate a task waits at: redis-py 8 times sockets out after 5s by default.
    return redis.Redis.from_url(settings.ONCE_TEST_RECORDS_URL, socket_timeout=120)


def record(tag: str, event: str, **fields: Any) -> None:
    _records().rpush(f"records:{tag}", json.dumps({"event": event, "pid": os.getpid(), "t": time.time(), **fields}))


@shared_task(base=OnceTask)
def echo(tag: str) -> str:
    record(tag, "run")
    return tag


@shared_task(base=OnceTask)
def gated(tag: str) -> str:
    """Runs until the test opens its gate."""
    record(tag, "start")
    _records().blpop([f"gate:{tag}"], timeout=60)
    record(tag, "end")
    return tag


@shared_task(base=OnceTask)
def parked(tag: str) -> str:
    """Routed to a queue no worker consumes: its messages and queue locks stay."""
    return tag


@shared_task(base=OnceTask, queue_lock_timeout=77)
def parked_with_own_timeout(tag: str) -> str:
    return tag


@shared_task(base=OnceTask)
def ship_order(tag: str, order_id: int) -> str:
    """Reads a row the caller wrote in the transaction that published this task."""
    order = Order.objects.get(pk=order_id)
    item = str(order.item)
    record(tag, "shipped", item=item)
    return item
