"""The lock store: every round trip the library makes to Redis, by concern, over one runner.

* ``runner``: the process's clients, and an operation's tries (``Runner``);
* ``locks``: queue and running locks; ``calls``: a call's keys beside its
  queue lock (its ``unique_for`` window, its replaced arguments, its queue
  lock held until its run ends); ``waiting``: the waiting copy; ``slots``:
  the slots and line of a ``running_limit`` key; ``bursts``: the bursts of a
  debounced key; ``leases``: renewal and worker heartbeats; ``parked``: the
  messages put off with a countdown;
* ``finished``: the finished record's arguments; ``values``: seconds and replies;
* ``permissions``: a refusal by the store's ACL told from an outage, and the
  commands each script runs;
* below them: ``lua`` (every script), ``scripts`` (running them in one round
  trip), ``wire`` (the commands on a connection), ``addresses`` and
  ``connection`` (where the store is, and its clients).

Callers decide what an error means (raise at publish, defer at pickup, leave
to the janitor at release); this package only talks to Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Protocol

from ..keys import KEY_PREFIX
from ..protocols import CeleryApp
from .bursts import Bursts
from .calls import CallKeys, Calls
from .connection import Client
from .finished import FinishedCheck, FinishedRecord
from .leases import LeaseKind, Leases
from .locks import Acquired, Locks, Pickup
from .parked import ParkedMessages, Rescued
from .runner import NO_RETRY, TRANSIENT_ERRORS, PolicySource, RetryPolicy, Runner, StoreUnavailable, client_for
from .slots import Claim, Joining, SlotPickup, Slots
from .waiting import Waited, WaitingCopies

__all__ = [
    "NO_RETRY", "TRANSIENT_ERRORS", "Acquired", "CallKeys", "Claim", "FinishedCheck", "FinishedRecord", "Joining",
    "LeaseKind", "LockStore", "ParkedMessages", "Pickup", "Rescued",
    "RetryPolicy", "SlotPickup", "StoreUnavailable", "Waited", "client_for",
    "store_for",
]


class LockStore:
    """One lock store (a Redis server, Sentinel service or Cluster): its operations, by concern."""

    __slots__ = ("bursts", "calls", "client", "leases", "locks", "parked", "runner", "slots", "waiting")

    def __init__(self, client: Client, policy: PolicySource = NO_RETRY, prefix: str = KEY_PREFIX) -> None:
        """``prefix``: the ``key_prefix`` of the keys the store names itself (the workers' heartbeats)."""
        self.client = client
        self.runner = Runner(client, policy)
        self.locks = Locks(self.runner)
        self.calls = Calls(self.runner)
        self.waiting = WaitingCopies(self.runner)
        self.slots = Slots(self.runner)
        self.bursts = Bursts(self.runner)
        self.leases = Leases(self.runner, prefix)
        self.parked = ParkedMessages(self.runner, prefix)

    @classmethod
    def for_url(cls, url: str, options: Optional[Mapping[str, Any]] = None,
                policy: PolicySource = NO_RETRY, prefix: str = KEY_PREFIX) -> LockStore:
        """The store at ``url``; a Redis Cluster client connects here, so call it where errors are handled."""
        return cls(client_for(url, options), policy, prefix)


class _StoreSettings(Protocol):
    @property
    def redis_url(self) -> str: ...
    @property
    def redis_options(self) -> Mapping[str, Any]: ...
    @property
    def key_prefix(self) -> str: ...


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
    if kept is not None and (kept[0] is settings or _same_store(kept[0], settings)):
        # Settings made for one call (``once={...}``) find the task's store too.
        return kept[1]  # type: ignore[no-any-return]
    store = LockStore.for_url(settings.redis_url, settings.redis_options, lambda: RetryPolicy.of_app(task.app),
                              settings.key_prefix)
    setattr(task, _KEPT, (settings, store))
    return store


def _same_store(kept: _StoreSettings, settings: _StoreSettings) -> bool:
    return (kept.redis_url == settings.redis_url and kept.redis_options == settings.redis_options
            and kept.key_prefix == settings.key_prefix)
