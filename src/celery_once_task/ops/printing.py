"""How the operators' commands print what they found: a lock, its fields, durations, a JSON list streamed.

``cli`` talks to the operator; these are its words for a ``Lock``
(``rows``) and a worker instance's figures.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Optional

import click

from ..keys import BURST, QUEUE, RUNNING, SLOTS, THROTTLE, UNIQUE
from .rows import Lock

__all__ = ["age", "describe", "duration", "echo_json_list", "fields", "liveness"]


def describe(lock: Lock) -> str:
    if lock.type == THROTTLE:
        return f"{lock.key}\n    throttle {lock.describe_owner()}, TTL {duration(lock.ttl)}"
    if lock.type == BURST:
        return f"{lock.key}\n    {lock.describe_owner()}, TTL {duration(lock.ttl)}"
    if lock.type == SLOTS:
        line = (f"{lock.key}\n    slots {lock.used} of {lock.limit} used, {lock.waiting} waiting; "
                f"{'slot' if lock.slot else 'no slot'} held by {lock.describe_owner()}")
        if lock.slot and not lock.reserved:
            line += f", TTL {duration(lock.ttl)}, {liveness(lock.alive)}, {age(lock.age)}"
        return line
    kind = "unique_for window" if lock.type == UNIQUE else f"{lock.type} lock"
    line = f"{lock.key}\n    {kind}, TTL {duration(lock.ttl)}, held by {lock.describe_owner()}"
    if lock.type == RUNNING:
        line += f", {liveness(lock.alive)}, {age(lock.age)}"
    return line


def fields(lock: Lock) -> Iterable[tuple[str, str]]:
    yield "key", lock.key
    yield "type", lock.type
    yield "task", lock.task
    yield "digest", lock.digest
    if lock.type == BURST:
        yield "burst", lock.describe_owner()
    if lock.type == THROTTLE:
        yield "throttle", lock.describe_owner()
        yield "TTL", duration(lock.ttl)
        yield "limits", lock.value
        return
    if lock.type == SLOTS:
        yield "slots", f"{lock.used} of {lock.limit} used"
        yield "waiting", str(lock.waiting)
        if lock.slot is None:
            return
        yield "holder", lock.describe_owner()
    yield "task id", lock.task_id
    if lock.holder_task:
        yield "held by", lock.holder_task
    if lock.type == QUEUE:
        yield "call", "running (held until its run ends)" if lock.state == "running" else "queued"
    if lock.type in (RUNNING, SLOTS) and not lock.reserved:
        yield "attempt", "unknown" if lock.attempt is None else str(lock.attempt)
        yield "worker", lock.worker or "unknown"
        yield "instance", lock.instance or "unknown"
        yield "alive", liveness(lock.alive)
        yield "age", age(lock.age)
    yield "TTL", duration(lock.ttl)
    yield "value", lock.value


def liveness(alive: Optional[bool]) -> str:
    if alive is None:
        return "worker liveness unknown (no heartbeat kept)"
    return "worker alive" if alive else "worker gone (no heartbeat)"


def age(age: Optional[float]) -> str:
    return "taken at an unknown time" if age is None else f"taken {age:.1f}s ago"


def duration(seconds: Optional[float]) -> str:
    return "none (no expiry)" if seconds is None else f"{seconds:.1f}s"


def echo_json_list(items: Iterable[Mapping[str, object]]) -> None:
    # Streamed: a store with a million locks is never held in memory at once.
    # The first item is read before anything is printed, so that an
    # unreachable store leaves no half list on stdout.
    remaining = iter(items)
    first = next(remaining, None)
    if first is None:
        click.echo("[]")
        return
    click.echo("[\n  " + json.dumps(first), nl=False)
    for item in remaining:
        click.echo(",\n  " + json.dumps(item), nl=False)
    click.echo("\n]")
