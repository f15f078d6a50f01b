"""The lock store: one Redis client per process and URL, and every lock operation.

Each operation is one network round trip, tried again on a transient error
(a connection refused or reset, a timeout, a server loading its data or
demoted to a replica) by a ``RetryPolicy`` -- Celery's own publish retry
policy where a call is published. redis-py's own retries are off for these
clients: after a lost reply only this module knows whether an earlier try may
have run, and every operation is written so that running it again is safe
(see ``scripts``): a try that finds its own token already in place counts as
taken. An operation whose tries are used up raises ``StoreUnavailable``,
which says whether any try may have reached the server.

Callers decide what an error means (raise at publish, defer at pickup, leave
to the janitor at release); this module only talks to Redis.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, TypeVar

from redis import exceptions

from ..ownership import RunningOwner, heartbeat_key
from . import scripts
from .connection import Client, is_cluster, make_client
from .scripts import Call
from .wire import Arg

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


def waiting_token(task_id: str) -> str:
    """The prefix of a waiting copy's entry: its task id and a separator no task id has."""
    return f"{task_id}\x1f"


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _text(value: Any) -> Optional[str]:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


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
    def of_app(cls, app: Any) -> RetryPolicy:
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


class Acquired(NamedTuple):
    """What a lock acquisition found (a tuple: made on every call of the hottest paths)."""

    #: The lock is now the caller's.
    acquired: bool
    #: The holder's value when it was not acquired.
    holder: Optional[str] = None
    #: At pickup: whether the message's queue lock was still its own (and is now released).
    queue_released: bool = False
    #: At pickup: the finished record that says this attempt already ended (nothing was taken).
    finished: Optional[str] = None


class SlotPickup(NamedTuple):
    """What a limited call's pickup found (see ``scripts.SLOT_ACQUIRE`` and ``limits``)."""

    #: 1 a slot taken, 2 this attempt already ended, 3 waiting in line, 4 the same attempt holds
    #: a slot, 5 no slot free.
    code: int
    #: The finished record (2), the place in line (3), or a holder's owner token (4, 5).
    detail: Any
    #: The waiting calls' entries given a free slot here: to be published.
    handed: list[str]
    queue_released: bool = False


TAKEN_SLOT, FINISHED, IN_LINE, SAME_ATTEMPT, FULL = 1, 2, 3, 4, 5


class Joining(NamedTuple):
    """How a call joins a limited key's line when no slot is free (see ``limits``)."""

    #: The call's message, published when a slot is handed to it ("" where it is not JSON).
    message: str
    #: When the call was made (microseconds since the epoch): the line's order.
    called_at: int
    #: How long the line is kept without being touched.
    line_ttl: float
    #: The call's queue lock, taken back while it waits (None: the task has none).
    queue_key: Optional[str] = None


class FinishedCheck(NamedTuple):
    """What a pickup reads to tell a copy of an attempt that ended (see ``redelivery``)."""

    key: str
    attempt: int
    call: str


class FinishedRecord(NamedTuple):
    """What a release writes: the record of an attempt that ended, and for how long (see ``redelivery``)."""

    key: str
    value: str
    ttl: float
    attempt: int
    call: str

    def args(self) -> tuple[str, int, int, str]:
        return (self.value, _ms(self.ttl), self.attempt, self.call)


#: The outcome of most acquisitions, made once.
TAKEN = Acquired(True)


class LockStore:
    """Lock operations against one Redis server."""

    def __init__(self, client: Client, policy: RetryPolicy | Callable[[], RetryPolicy] = NO_RETRY) -> None:
        self.client = client
        # A callable is asked only when a try fails: the happy path reads no configuration.
        self._policy = policy

    @property
    def policy(self) -> RetryPolicy:
        policy = self._policy
        if not isinstance(policy, RetryPolicy):
            policy = self._policy = policy()
        return policy

    @classmethod
    def for_url(
        cls,
        url: str,
        options: Optional[Mapping[str, Any]] = None,
        policy: RetryPolicy | Callable[[], RetryPolicy] = NO_RETRY,
    ) -> LockStore:
        """The store at ``url``; a Redis Cluster client connects here, so call it where errors are handled."""
        return cls(client_for(url, options), policy)

    def _tries(self, operation: Callable[[], _T], failed: Optional[Exception] = None) -> tuple[_T, bool]:
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
                if isinstance(exc, _MAYBE_APPLIED) and not isinstance(exc, _NEVER_APPLIED):
                    maybe_applied = True
                if retry >= self.policy.max_retries:
                    raise StoreUnavailable(
                        f"{type(exc).__name__}: {exc} (after {retry + 1} tries)", maybe_applied
                    ) from exc
                time.sleep(self.policy.pause(retry))
                retry += 1

    def _run(self, calls: Sequence[Call]) -> tuple[list[Any], bool]:
        # The first try inline: pickup and release are on every task's path.
        try:
            return scripts.run(self.client, calls), False
        except TRANSIENT_ERRORS as exc:
            return self._tries(lambda: scripts.run(self.client, calls), exc)

    # -- queue lock ---------------------------------------------------------

    def acquire_queue(self, key: str, task_id: str, ttl: float, *, renew: bool = False) -> Acquired:
        """Take the queue lock for ``task_id`` if it is free (or, with ``renew``, already ``task_id``'s)."""
        ms = _ms(ttl)
        if renew:
            call = Call(scripts.ACQUIRE, key, (task_id, ms, task_id, "exact"))
            (reply,), maybe_applied = self._run([call])
        else:
            # The first try inline: a new call and a duplicate are the library's hottest paths.
            try:
                reply, maybe_applied = scripts.acquire_free(self.client, key, task_id, ms), False
            except TRANSIENT_ERRORS as exc:
                reply, maybe_applied = self._tries(lambda: scripts.acquire_free(self.client, key, task_id, ms), exc)
        if reply == 1:
            return TAKEN
        holder = _text(reply)
        # Our own earlier try took it and its reply was lost.
        if maybe_applied and holder == task_id:
            return TAKEN
        return Acquired(False, holder)

    # -- both ---------------------------------------------------------------

    def release(self, key: str, token: str, *, prefix: bool = False) -> bool:
        """Delete ``key`` if ``token`` holds it (the whole value, or with ``prefix`` its owner token)."""
        (reply,), _ = self._run([Call(scripts.COMPARE_AND_DELETE, key, (token, "prefix" if prefix else "exact"))])
        return bool(reply)

    def pickup(
        self,
        queue_key: Optional[str],
        task_id: str,
        running_key: Optional[str],
        owner: RunningOwner,
        running_ttl: float,
        takeover: str = "",
        waiting_key: Optional[str] = None,
        finished: Optional[FinishedCheck] = None,
    ) -> Acquired:
        """Release the task's queue lock and take its running lock, in one round trip.

        ``takeover`` is an owner token whose running lock this execution may
        take over: one its own earlier pickup may have taken. ``waiting_key``:
        the entry of a waiting copy of this message, deleted with it.
        ``finished``: the record that says this attempt already ended; if it
        does, the running lock is not taken and ``Acquired.finished`` holds it.
        """
        calls = []
        if queue_key is not None:
            calls.append(Call(scripts.COMPARE_AND_DELETE, queue_key, (task_id, "exact")))
        if waiting_key is not None:
            calls.append(Call(scripts.COMPARE_AND_DELETE, waiting_key, (waiting_token(task_id), "prefix")))
        if running_key is not None:
            acquire = Call(scripts.ACQUIRE, running_key, (owner.value(), _ms(running_ttl), takeover, "prefix"))
            if finished is not None and id(self.client) not in scripts.REFUSED_MORE_KEYS:
                acquire = Call(scripts.ACQUIRE, running_key, (*acquire.args, finished.attempt, finished.call),
                               (finished.key,), acquire)
            calls.append(acquire)
        if not calls:
            return Acquired(True)
        replies, maybe_applied = self._run(calls)
        # A lost reply and a second try: the first try released it.
        queue_released = queue_key is not None and (replies[0] == 1 or maybe_applied)
        if running_key is None or replies[-1] == 1:
            return Acquired(True, queue_released=queue_released)
        if isinstance(replies[-1], list):
            return Acquired(False, queue_released=queue_released, finished=_text(replies[-1][0]))
        holder = _text(replies[-1])
        if maybe_applied and owner.holds(holder):
            return Acquired(True, queue_released=queue_released)
        return Acquired(False, holder, queue_released=queue_released)

    def wait(
        self,
        queue_key: str,
        task_id: str,
        queue_ttl: float,
        waiting_key: str,
        message: Optional[str],
        running_key: str,
        owner: RunningOwner,
        running_ttl: float,
    ) -> Acquired:
        """Become the key's waiting copy: take the queue lock back, leave the message, try the running lock again.

        One round trip. The entry is written before the running lock is
        tried, on one connection: if the running copy still held its lock
        then, its release (which takes the entry) comes after, and hands
        the waiting copy over. Returns whether the running lock was taken
        after all (its holder released it in between).
        """
        ttl = _ms(queue_ttl)
        calls = [Call(scripts.ACQUIRE, queue_key, (task_id, ttl, task_id, "exact"))]
        if message is not None:
            calls.append(Call(scripts.ACQUIRE, waiting_key, (message, ttl, waiting_token(task_id), "prefix")))
        calls.append(Call(scripts.ACQUIRE, running_key, (owner.value(), _ms(running_ttl), "", "prefix")))
        replies, maybe_applied = self._run(calls)
        # ``queue_released`` here: whether the queue lock is now this copy's.
        queue_taken = replies[0] == 1
        if replies[-1] == 1:
            return Acquired(True, queue_released=queue_taken)
        holder = _text(replies[-1])
        if maybe_applied and owner.holds(holder):
            return Acquired(True, queue_released=queue_taken)
        return Acquired(False, holder, queue_released=queue_taken)

    def release_running(self, key: str, token: str, record: Optional[FinishedRecord]) -> bool:
        """Delete the running lock ``key`` if ``token`` holds it, writing ``record`` (if any) in the same script."""
        return bool(self._run([self._release_running(key, token, record)])[0][0])

    def release_taking_waiter(self, key: str, token: str, waiting_key: str,
                              record: Optional[FinishedRecord] = None) -> Optional[str]:
        """Release the running lock (``release_running``) and take the key's waiting copy, if any: one round trip."""
        replies, _ = self._run([self._release_running(key, token, record), Call(scripts.TAKE, waiting_key, ())])
        return _text(replies[1])

    def _release_running(self, key: str, token: str, record: Optional[FinishedRecord]) -> Call:
        release = Call(scripts.COMPARE_AND_DELETE, key, (token, "prefix"))
        if record is None or id(self.client) in scripts.REFUSED_MORE_KEYS:
            return release
        return Call(scripts.RELEASE_RUNNING, key, (token, *record.args()), (record.key,), release)

    def record_finished(self, record: FinishedRecord) -> None:
        """Write the finished record of an attempt that ended without the running lock (a rejected duplicate)."""
        self._run([Call(scripts.RECORD_FINISHED, record.key, record.args())])

    def release_all(self, locks: Sequence[tuple[str, str, bool]]) -> None:
        """Release each ``(key, token, prefix)`` its token holds: one round trip."""
        calls = [Call(scripts.COMPARE_AND_DELETE, key, (token, "prefix" if prefix else "exact"))
                 for key, token, prefix in locks]
        self._run(calls)

    def replace(self, key: str, expected: str, value: str, ttl: float) -> bool:
        """Hand ``key`` from the owner token ``expected`` to ``value``; False if someone else holds it."""
        (reply,), _ = self._run([Call(scripts.COMPARE_AND_SWAP, key, (expected, value, _ms(ttl)))])
        return bool(reply)

    # -- running_limit: slots ----------------------------------------------

    def slot_pickup(self, queue_key: Optional[str], task_id: str, slots: str, line: tuple[str, str], token: str,
                    since: str, lease: float, limit: int, call_id: str, same: str, *, reserve: float = 0,
                    takeover: str = "", finished: Optional[FinishedCheck] = None,
                    joining: Optional[Joining] = None) -> SlotPickup:
        """Release the queue lock and take a slot of a limited key, in one round trip (``scripts.SLOT_ACQUIRE``).

        With ``joining`` the call joins the line if no slot is free (and takes
        its queue lock back while it waits), in the same round trip.
        """
        calls = []
        if queue_key is not None:
            calls.append(Call(scripts.COMPARE_AND_DELETE, queue_key, (task_id, "exact")))
        wait, called, message, line_ttl = ("1", joining.called_at, joining.message, _ms(joining.line_ttl)) \
            if joining is not None else ("", 0, "", 0)
        args: tuple[Arg, ...] = (token, since, _ms(lease), limit, call_id, same, wait, called, message, line_ttl,
                                 _ms(reserve), takeover)
        more: tuple[str, ...] = line
        if finished is not None:
            args = (*args, finished.attempt, finished.call)
            more = (*line, finished.key)
        calls.append(Call(scripts.SLOT_ACQUIRE, slots, args, more))
        if joining is not None and joining.queue_key is not None:
            ttl = _ms(joining.line_ttl)
            calls.append(Call(scripts.ACQUIRE, joining.queue_key, (task_id, ttl, task_id, "exact")))
        replies, maybe_applied = self._run(calls)
        reply = replies[1 if queue_key is not None else 0]
        queue_released = queue_key is not None and (replies[0] == 1 or maybe_applied)
        code, detail, *handed = reply
        return SlotPickup(int(code), _text(detail) if isinstance(detail, bytes) else detail,
                          [str(_text(item)) for item in handed], queue_released)

    def slot_release(self, slots: str, line: tuple[str, str], token: str, limit: int, reserve: float,
                     record: Optional[FinishedRecord] = None) -> tuple[bool, list[str]]:
        """Free the token's slot, writing ``record``; hand free slots to the line: one round trip.

        ``line``: the key's line and its messages. Returns whether the token held
        a slot, and the entries handed over (to be published).
        """
        args: tuple[Arg, ...] = (token, limit, _ms(reserve))
        more: tuple[str, ...] = line
        if record is not None:
            args = (*args, *record.args())
            more = (*line, record.key)
        (reply,), _ = self._run([Call(scripts.SLOT_RELEASE, slots, args, more)])
        released, *handed = reply
        return bool(released), [str(_text(item)) for item in handed]

    def slot_forget(self, slots: str, line: tuple[str, str], call_id: str, limit: int,
                    reserve: float) -> tuple[bool, list[str]]:
        """Take a (revoked) call out of a key's line, or its reservation back; hand over: one round trip."""
        (reply,), _ = self._run([Call(scripts.SLOT_FORGET, slots, (call_id, limit, _ms(reserve)), line)])
        forgotten, *handed = reply
        return bool(forgotten), [str(_text(item)) for item in handed]

    def slot_clear(self, slots: str, field: str, value: str) -> bool:
        """Delete one field of a key's slots (a slot, a reservation) if it still holds ``value``."""
        (reply,), _ = self._run([Call(scripts.SLOT_CLEAR, slots, (field, value))])
        return bool(reply)

    # -- debounce: bursts ----------------------------------------------------

    def burst_call(self, key: str, task_id: str, debounce_ms: int, most_ms: int, arguments: str, keep_ms: int,
                   overdue_ms: int) -> tuple[int, str, int]:
        """Join the key's open burst, or start one under ``task_id``: one round trip (``lua.bursts.BURST_CALL``).

        Returns (0 joined | 1 started | 2 joined an overdue burst, the burst's task id, ms until it is due).
        """
        (reply,), _ = self._run([Call(scripts.BURST_CALL, key, (task_id, debounce_ms, most_ms, arguments, keep_ms,
                                                                 overdue_ms))])
        code, burst_id, due_ms = reply
        return int(code), str(_text(burst_id)), int(due_ms)

    def burst_take(self, key: str, task_id: str, keep_ms: int) -> tuple[int, Any]:
        """Close the burst ``task_id`` runs if it is due (``lua.bursts.BURST_TAKE``): (code, ms until due or args)."""
        (reply,), _ = self._run([Call(scripts.BURST_TAKE, key, (task_id, keep_ms))])
        return int(reply[0]), (_text(reply[1]) if len(reply) > 1 else None)

    def burst_forget(self, key: str, task_id: str, which: str, remember_ms: int = 60_000) -> bool:
        """Forget the open burst ``task_id`` ("open": unless others joined it; "drop") or its execution's ("closed").

        ``remember_ms``: how long an ended burst's last call is still recognised, should it be sent again.
        """
        (reply,), _ = self._run([Call(scripts.BURST_FORGET, key, (task_id, which, remember_ms))])
        return bool(reply)

    # -- worker liveness ----------------------------------------------------

    def renew(self, locks: Iterable[tuple[str, str, bool]], ttl: float, instance: str, heartbeat: str) -> list[bool]:
        """Extend each ``(key, token, slot)`` lock the token still holds, and write the heartbeat: one round trip.

        ``slot``: the lock is a slot of a limited key (``limits``), not a
        running lock of its own. On a cluster: one pipeline per node, sent
        together. Returns, per lock, whether it was extended.
        """
        locks = list(locks)
        calls = [Call(scripts.SLOT_RENEW if slot else scripts.RENEW, key, (token, _ms(ttl)))
                 for key, token, slot in locks]
        if is_cluster(self.client):
            self.client.set(heartbeat_key(instance), heartbeat, px=_ms(ttl))
            replies = scripts.run(self.client, calls) if calls else []
        else:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(heartbeat_key(instance), heartbeat, px=_ms(ttl))
            replies = scripts.run_in(pipe, self.client, calls)
        return [bool(reply) for reply in replies]

    def forget_instance(self, instance: str) -> None:
        self.client.delete(heartbeat_key(instance))

    def instance_alive(self, instance: str) -> bool:
        alive, _ = self._tries(lambda: self.client.exists(heartbeat_key(instance)))
        return bool(alive)
