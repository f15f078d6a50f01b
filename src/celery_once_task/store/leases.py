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
from typing import Literal

from .. import telemetry
from ..keys import KEY_PREFIX
from ..record_keys import heartbeat_key
from . import scripts
from .connection import is_cluster
from .lua.calls import QUEUE_LEASE
from .lua.locks import RENEW
from .lua.slots import SLOT_RENEW
from .runner import Runner
from .scripts import Call
from .values import ms

#: What a lease is of: a running lock, a slot of a limited key, or a call's queue lock held until its run ends.
LeaseKind = Literal["running", "slot", "queue"]


class Leases:
    """The leases and worker heartbeats of one lock store."""

    __slots__ = ("_prefix", "_runner")

    def __init__(self, runner: Runner, prefix: str = KEY_PREFIX) -> None:
        self._runner = runner
        #: The ``key_prefix`` of the heartbeats.
        self._prefix = prefix

    def renew(self, locks: Iterable[tuple[str, str, LeaseKind]], ttl: float, instance: str,
              heartbeat: str) -> list[bool]:
        """Extend each ``(key, token, kind)`` lock the token still holds, and write the heartbeat: one round trip.

        ``kind``: a running lock of its own, a slot of a limited key, or a
        call's queue lock held until its run ends (never shortened: a retry's
        publish may have set it longer). On a cluster: one pipeline per
        node, sent together. Sent once, without retries: the next renewal is
        the retry. Returns, per lock, whether it was extended.
        """
        client = self._runner.client
        ttl_ms = ms(ttl)
        calls = [Call(QUEUE_LEASE, key, (token, ttl_ms, "extend")) if kind == "queue"
                 else Call(SLOT_RENEW if kind == "slot" else RENEW, key, (token, ttl_ms))
                 for key, token, kind in locks]
        beat = heartbeat_key(instance, self._prefix)
        if is_cluster(client):
            client.set(beat, heartbeat, px=ttl_ms)
            replies = scripts.run(client, calls) if calls else []
        else:
            pipe = client.pipeline(transaction=False)
            pipe.set(beat, heartbeat, px=ttl_ms)
            replies = scripts.run_in(pipe, client, calls)
        return [bool(reply) for reply in replies]

    def forget_instance(self, instance: str) -> None:
        """Remove a worker instance's heartbeat: it is gone."""
        delete = self._runner.client.delete
        beat = heartbeat_key(instance, self._prefix)
        if telemetry.active:
            telemetry.quietly(delete, beat)
        else:
            delete(beat)

    def instance_alive(self, instance: str) -> bool:
        """Whether a worker instance's heartbeat lives."""
        exists = self._runner.client.exists
        beat = heartbeat_key(instance, self._prefix)
        if telemetry.active:
            alive, _ = self._runner.tries(lambda: telemetry.quietly(exists, beat))
        else:
            alive, _ = self._runner.tries(lambda: exists(beat))
        return bool(alive)
