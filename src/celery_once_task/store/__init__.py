"""The lock store: every round trip the library makes to Redis, by concern, over one runner.

* ``runner``: the process's clients, and an operation's tries (``Runner``);
* ``locks``: queue and running locks; ``waiting``: the waiting copy;
  ``slots``: the slots and line of a ``running_limit`` key; ``bursts``: the
  bursts of a debounced key; ``leases``: renewal and worker heartbeats;
* ``finished``: the finished record's arguments; ``values``: seconds and replies;
* below them: ``lua`` (every script), ``scripts`` (running them in one round
  trip), ``wire`` (the commands on a connection), ``addresses`` and
  ``connection`` (where the store is, and its clients).

Callers decide what an error means (raise at publish, defer at pickup, leave
to the janitor at release); this package only talks to Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Protocol

from ..protocols import CeleryApp
from .bursts import Bursts
from .connection import Client
from .finished import FinishedCheck, FinishedRecord
from .leases import Leases
from .locks import Acquired, Locks, Pickup
from .runner import NO_RETRY, TRANSIENT_ERRORS, PolicySource, RetryPolicy, Runner, StoreUnavailable, client_for
from .slots import Claim, Joining, SlotPickup, Slots
from .waiting import Waited, WaitingCopies

__all__ = [
    "NO_RETRY", "TRANSIENT_ERRORS", "Acquired", "Claim", "FinishedCheck", "FinishedRecord", "Joining", "LockStore",
    "Pickup", "RetryPolicy", "SlotPickup", "StoreUnavailable", "Waited", "client_for", "store_for",
]


class LockStore:
    """One lock store (a Redis server, Sentinel service or Cluster): its operations, by concern."""

    __slots__ = ("bursts", "client", "leases", "locks", "runner", "slots", "waiting")

    def __init__(self, client: Client, policy: PolicySource = NO_RETRY) -> None:
        self.client = client
        self.runner = Runner(client, policy)
        self.locks = Locks(self.runner)
        self.waiting = WaitingCopies(self.runner)
        self.slots = Slots(self.runner)
        self.bursts = Bursts(self.runner)
        self.leases = Leases(self.runner)

    @classmethod
    def for_url(cls, url: str, options: Optional[Mapping[str, Any]] = None,
                policy: PolicySource = NO_RETRY) -> LockStore:
        """The store at ``url``; a Redis Cluster client connects here, so call it where errors are handled."""
        return cls(client_for(url, options), policy)


class _StoreSettings(Protocol):
    @property
    def redis_url(self) -> str: ...
    @property
    def redis_options(self) -> Mapping[str, Any]: ...


class _Task(Protocol):
    @property
    def app(self) -> CeleryApp: ...


#: The attribute of a task that keeps its store, with the settings it was made for.
_KEPT = "_once_store"


def store_for(task: _Task, settings: _StoreSettings) -> LockStore:
    """The lock store of ``task`` under ``settings``, retrying by its app's publish retry policy.

    Kept on the task while its settings stay the same object (``settings``
    keeps them until something they depend on changes). A Redis Cluster
    client connects when it is made: call this where errors are handled.
    """
    kept = getattr(task, _KEPT, None)
    if kept is not None and kept[0] is settings:
        return kept[1]  # type: ignore[no-any-return]
    store = LockStore.for_url(settings.redis_url, settings.redis_options, lambda: RetryPolicy.of_app(task.app))
    setattr(task, _KEPT, (settings, store))
    return store
