"""Worker liveness in the lock store: renew the leases of live executions with the heartbeat, ask after one.

The worker's main process renews every lock its executions hold together with
its heartbeat key, in one round trip (``renewal``); an execution that meets a
lock held by another delivery of its own message asks whether the holder's
worker still lives.

These go through redis-py's commands and pipelines: they run
``telemetry.quietly`` while telemetry may record, so that a Redis
instrumentor makes no root span per worker per renewal interval.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import telemetry
from ..ownership import heartbeat_key
from . import scripts
from .connection import is_cluster
from .lua.locks import RENEW
from .lua.slots import SLOT_RENEW
from .runner import Runner
from .scripts import Call
from .values import ms


class Leases:
    """The leases and worker heartbeats of one lock store."""

    __slots__ = ("_runner",)

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def renew(self, locks: Iterable[tuple[str, str, bool]], ttl: float, instance: str, heartbeat: str) -> list[bool]:
        """Extend each ``(key, token, slot)`` lock the token still holds, and write the heartbeat: one round trip.

        ``slot``: the lock is a slot of a limited key, not a running lock of
        its own. On a cluster: one pipeline per node, sent together. Sent
        once, without retries: the next renewal is the retry. Returns, per
        lock, whether it was extended.
        """
        client = self._runner.client
        calls = [Call(SLOT_RENEW if slot else RENEW, key, (token, ms(ttl))) for key, token, slot in locks]
        if is_cluster(client):
            client.set(heartbeat_key(instance), heartbeat, px=ms(ttl))
            replies = scripts.run(client, calls) if calls else []
        else:
            pipe = client.pipeline(transaction=False)
            pipe.set(heartbeat_key(instance), heartbeat, px=ms(ttl))
            replies = scripts.run_in(pipe, client, calls)
        return [bool(reply) for reply in replies]

    def forget_instance(self, instance: str) -> None:
        """Remove a worker instance's heartbeat: it is gone."""
        delete = self._runner.client.delete
        if telemetry.active:
            telemetry.quietly(delete, heartbeat_key(instance))
        else:
            delete(heartbeat_key(instance))

    def instance_alive(self, instance: str) -> bool:
        """Whether a worker instance's heartbeat lives."""
        exists = self._runner.client.exists
        if telemetry.active:
            alive, _ = self._runner.tries(lambda: telemetry.quietly(exists, heartbeat_key(instance)))
        else:
            alive, _ = self._runner.tries(lambda: exists(heartbeat_key(instance)))
        return bool(alive)
