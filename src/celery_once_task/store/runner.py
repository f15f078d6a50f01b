"""Running lock operations: the process's clients, and tries again after a transient error.

Each lock operation is one network round trip (``scripts.run``), tried again on
a transient error (a connection refused or reset, a timeout, a server loading
its data or demoted to a replica) by a ``RetryPolicy`` -- Celery's own publish
retry policy where a call is published. redis-py's own retries are off for
these clients: after a lost reply only the library knows whether an earlier
try may have run, and every operation is written so that running it again is
safe (see ``lua``): a try that finds its own token already in place counts as
taken. A connection refused outright is not tried again: nothing listens
there, and no request was sent. An operation whose tries are used up raises
``StoreUnavailable``, which says whether any try may have reached the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, TypeVar, Union

from redis import exceptions

from . import scripts
from .connection import Client, make_client
from .scripts import Call

_T = TypeVar("_T")

_clients: dict[tuple[str, str], Client] = {}
_clients_lock = threading.Lock()

#: Errors after which the same operation may succeed a moment later.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    exceptions.ConnectionError,  # refused, reset, killed (CLIENT KILL), BusyLoadingError
    exceptions.TimeoutError,
    exceptions.ReadOnlyError,  # a failover demoted the server we talk to
    *(getattr(exceptions, name) for name in ("TryAgainError", "ClusterDownError", "MasterDownError")
      if hasattr(exceptions, name)),
)
#: Errors after which the command may have run on the server: the reply, not the request, was lost.
_MAYBE_APPLIED: tuple[type[Exception], ...] = (exceptions.ConnectionError, exceptions.TimeoutError)
_NEVER_APPLIED: tuple[type[Exception], ...] = (exceptions.BusyLoadingError,)


def refused_outright(exc: BaseException) -> bool:
    """Whether ``exc`` comes of a connection refused (or a Unix socket that does not exist): nothing was sent.

    redis-py raises its own ``ConnectionError`` from the socket's error, which
    it chains (as the cause, or the context, by release).
    """
    seen: Optional[BaseException] = exc
    for _ in range(4):  # the chain is short; a cycle must not hang a lock operation
        if seen is None:
            return False
        if isinstance(seen, (ConnectionRefusedError, FileNotFoundError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def client_for(url: str, options: Optional[Mapping[str, Any]] = None) -> Client:
    """The process's client for ``url`` and ``options`` (``redis_options``), made on first use.

    redis-py's connection pool notices a fork (it compares pids) and opens new
    connections in the child, so one client serves a prefork worker's main
    process and all its children.
    """
    # Options may hold dicts (sentinel_kwargs): key on a canonical spelling.
    cache_key = (url, json.dumps(options, sort_keys=True, default=repr) if options else "")
    client = _clients.get(cache_key)
    if client is None:
        with _clients_lock:
            client = _clients.get(cache_key)
            if client is None:
                client = make_client(url, options)
                _clients[cache_key] = client
    return client


class StoreUnavailable(exceptions.ConnectionError):
    """A lock operation failed on every try; ``maybe_applied`` if one may have run anyway."""

    def __init__(self, message: str, maybe_applied: bool) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


@dataclass(frozen=True)
class RetryPolicy:
    """Celery's ``task_publish_retry_policy``, applied to lock operations."""

    max_retries: int = 3
    interval_start: float = 0.0
    interval_step: float = 0.2
    interval_max: float = 0.2

    @classmethod
    def of_app(cls, app: object) -> RetryPolicy:
        """The app's publish retry policy; no retries where ``task_publish_retry`` is off."""
        conf = getattr(app, "conf", None)
        if conf is None:
            return cls()
        if not conf.get("task_publish_retry", True):
            return NO_RETRY
        policy: Mapping[str, Any] = conf.get("task_publish_retry_policy") or {}
        return cls(**{name: policy[name] for name in cls.__dataclass_fields__ if policy.get(name) is not None})

    def pause(self, retry: int) -> float:
        return min(self.interval_max, self.interval_start + self.interval_step * retry)


NO_RETRY = RetryPolicy(max_retries=0)

#: A policy, or what makes it: asked only when a try fails, so the happy path reads no configuration.
PolicySource = Union[RetryPolicy, Callable[[], RetryPolicy]]


class Replies(NamedTuple):
    """An operation's replies, in the order of its calls, and whether an earlier try may have run it."""

    replies: list[Any]
    maybe_applied: bool


class Runner:
    """Runs the scripts of one lock operation on one client, by the retry policy: the store's one way to Redis."""

    __slots__ = ("_policy", "client")

    def __init__(self, client: Client, policy: PolicySource = NO_RETRY) -> None:
        self.client = client
        self._policy = policy

    @property
    def policy(self) -> RetryPolicy:
        # Asked again at each failure: the app's policy may have been changed since.
        policy = self._policy
        return policy if isinstance(policy, RetryPolicy) else policy()

    def run(self, calls: Sequence[Call]) -> Replies:
        """The calls' replies, in one round trip per try; ``StoreUnavailable`` once the tries are used up."""
        # The first try inline: pickup and release are on every task's path.
        try:
            return Replies(scripts.run(self.client, calls), False)
        except TRANSIENT_ERRORS as exc:
            replies, maybe_applied = self.tries(lambda: scripts.run(self.client, calls), exc)
            return Replies(replies, maybe_applied)

    def tries(self, operation: Callable[[], _T], failed: Optional[Exception] = None) -> tuple[_T, bool]:
        """Run ``operation`` by the retry policy; return its result and whether an earlier try may have run.

        ``failed``: the error of a first try the caller made itself (the hot
        paths make it inline); the tries go on from there.
        """
        maybe_applied = False
        retry = 0
        while True:
            try:
                if failed is not None:
                    raise failed
                return operation(), maybe_applied
            except TRANSIENT_ERRORS as exc:
                failed = None
                refused = refused_outright(exc)
                if isinstance(exc, _MAYBE_APPLIED) and not isinstance(exc, _NEVER_APPLIED) and not refused:
                    maybe_applied = True
                policy = self.policy
                # Refused: nothing listens there. A server that is not running does not start within the
                # policy's fraction of a second, so tries would only delay the caller's answer.
                if retry >= policy.max_retries or refused:
                    raise StoreUnavailable(
                        f"{type(exc).__name__}: {exc} (after {retry + 1} tries)", maybe_applied
                    ) from exc
                time.sleep(policy.pause(retry))
                retry += 1
