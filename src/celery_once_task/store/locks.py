"""Queue and running locks: take, release, hand over; a running lock's pickup reads the finished record.

A queue lock's value is the task id that holds it (matched whole); a running
lock's value is its owner's token and when it was taken (``ownership``), matched
by the token as a prefix. Every operation is one round trip (``Runner``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

from ..ids import waiting_token
from ..ownership import RunningOwner
from . import scripts
from .finished import FinishedCheck, FinishedRecord
from .lua.locks import ACQUIRE, COMPARE_AND_DELETE, COMPARE_AND_SWAP, RECORD_FINISHED, RELEASE_RUNNING, Mode
from .runner import TRANSIENT_ERRORS, Runner
from .scripts import Call
from .values import ms, text


class Acquired(NamedTuple):
    """What an attempt at a queue lock found (a tuple: made on every call of the hottest path)."""

    #: The lock is now the caller's.
    acquired: bool
    #: The holder's value when it was not acquired.
    holder: Optional[str] = None
    #: Not acquired: the call met a ``unique_for`` window alone (its queue lock was free).
    window: bool = False
    #: Not acquired: the call's arguments replaced those of the queued call that holds it (``replace``).
    replaced: bool = False


#: The outcome of most acquisitions, made once.
TAKEN = Acquired(True)


class Pickup(NamedTuple):
    """What a pickup found: the running lock taken or its holder, the queue lock released, a finished record."""

    #: The running lock is now the execution's (or the task has none).
    acquired: bool
    #: The running lock's holder when it was not taken.
    holder: Optional[str] = None
    #: Whether the message's queue lock was still its own, and is now released.
    queue_released: bool = False
    #: The finished record that says this attempt already ended (nothing was taken).
    finished: Optional[str] = None
    #: The arguments a duplicate replaced the call's with, taken with the queue lock (``replace``).
    arguments: Optional[str] = None
    #: The replies of the calls of other concerns that rode in the same round trip (``also``).
    also: tuple[Any, ...] = ()


def compare_and_delete(key: str, token: str, mode: Mode) -> Call:
    """The call that deletes ``key`` if ``token`` holds it (``mode``: the whole value, or its prefix)."""
    return Call(COMPARE_AND_DELETE, key, (token, mode))


def acquire(key: str, value: str, ttl: float, takeover: str = "", mode: Mode = "prefix",
            check: Optional[FinishedCheck] = None) -> Call:
    """The call that takes ``key`` for ``value`` if it is free (or held by ``takeover``), reading ``check``."""
    call = Call(ACQUIRE, key, (value, ms(ttl), takeover, mode))
    if check is None:
        return call
    # Where the server refuses the record's key (an ACL without its pattern), the lock alone.
    return Call(ACQUIRE, key, (*call.args, check.attempt, check.call), check.keys(), call)


def queue_reply(reply: Any) -> tuple[bool, Optional[str]]:
    """A pickup's queue-side reply: whether the queue lock was the message's, and the arguments it took, if any."""
    if isinstance(reply, list):  # ``lua.calls.ARGUMENTS_TAKE``
        return reply[0] == 1, text(reply[1]) if reply[1] else None
    return reply == 1, None


def release_running(key: str, token: str, record: Optional[FinishedRecord], client: object) -> Call:
    """The call that releases a running lock by ``token`` and writes ``record`` (if any) in the same script."""
    release = compare_and_delete(key, token, "prefix")
    if record is None or scripts.refuses_more_keys(client):
        return release
    return Call(RELEASE_RUNNING, key, (token, *record.args()), (record.key,), release)


class Locks:
    """The queue and running locks of one lock store."""

    __slots__ = ("_runner",)

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def acquire_queue(self, key: str, task_id: str, ttl: float, *, renew: bool = False) -> Acquired:
        """Take the queue lock for ``task_id`` if it is free (or, with ``renew``, already ``task_id``'s)."""
        runner = self._runner
        if renew:
            (reply,), maybe_applied = runner.run([acquire(key, task_id, ttl, task_id, "exact")])
        else:
            ttl_ms = ms(ttl)
            # The first try inline: a new call and a duplicate are the library's hottest paths.
            try:
                reply, maybe_applied = scripts.acquire_free(runner.client, key, task_id, ttl_ms), False
            except TRANSIENT_ERRORS as exc:
                reply, maybe_applied = runner.tries(
                    lambda: scripts.acquire_free(runner.client, key, task_id, ttl_ms), exc)
        if reply == 1:
            return TAKEN
        holder = text(reply)
        # Our own earlier try took it and its reply was lost.
        if maybe_applied and holder == task_id:
            return TAKEN
        return Acquired(False, holder)

    def release(self, key: str, token: str, *, prefix: bool = False) -> bool:
        """Delete ``key`` if ``token`` holds it (the whole value, or with ``prefix`` its owner token)."""
        (reply,), _ = self._runner.run([compare_and_delete(key, token, "prefix" if prefix else "exact")])
        return bool(reply)

    def release_all(self, locks: Sequence[tuple[str, str, bool]], also: Sequence[Call] = ()) -> None:
        """Release each ``(key, token, prefix)`` its token holds, and run ``also``: one round trip."""
        self._runner.run([*(compare_and_delete(key, token, "prefix" if prefix else "exact")
                            for key, token, prefix in locks), *also])

    def pickup(self, queue_key: Optional[str], task_id: str, running_key: Optional[str], owner: RunningOwner,
               running_ttl: float, *, takeover: str = "", waiting_key: Optional[str] = None,
               finished: Optional[FinishedCheck] = None, queue: Optional[Call] = None,
               also: Sequence[Call] = (), since: Optional[float] = None) -> Pickup:
        """Release the task's queue lock and take its running lock, in one round trip.

        Args:
            queue_key: The queue lock to release if ``task_id`` holds it (None: the call took none).
            task_id: The message's task id.
            running_key: The running lock to take (None: the task has none).
            owner: The execution that takes it.
            running_ttl: The running lock's TTL in seconds.
            takeover: An owner token whose running lock this execution may take over: one its own
                earlier pickup may have taken.
            waiting_key: The entry of a waiting copy of this message, deleted with it.
            finished: The record that says this attempt already ended; if it does, the running lock
                is not taken and ``Pickup.finished`` holds it.
            queue: What to do with the queue lock instead of releasing ``queue_key`` (``windows``: keep it
                until the run ends, take the arguments a duplicate replaced).
            also: Calls of other concerns sent first in the same round trip (a parked copy's claim); their
                replies are ``Pickup.also``.
            since: When the running lock is taken, as its value says (None: now).
        """
        calls = list(also)
        if queue is None and queue_key is not None:
            queue = compare_and_delete(queue_key, task_id, "exact")
        if queue is not None:
            calls.append(queue)
        if waiting_key is not None:
            calls.append(compare_and_delete(waiting_key, waiting_token(task_id), "prefix"))
        value = owner.value(since)
        if running_key is not None:
            check = finished if finished is not None and not scripts.refuses_more_keys(self._runner.client) else None
            calls.append(acquire(running_key, value, running_ttl, takeover, "prefix", check))
        if not calls:
            return Pickup(True)
        replies, maybe_applied = self._runner.run(calls)
        extra, replies = tuple(replies[:len(also)]), replies[len(also):]
        if not replies:
            return Pickup(True, also=extra)
        ours, arguments = queue_reply(replies[0]) if queue is not None else (False, None)
        # A lost reply and a second try: the first try released it.
        queue_released = queue is not None and (ours or maybe_applied)
        reply = replies[-1]
        if running_key is None or reply == 1:
            return Pickup(True, queue_released=queue_released, arguments=arguments, also=extra)
        if isinstance(reply, list):
            return Pickup(False, queue_released=queue_released, finished=text(reply[0]), arguments=arguments,
                          also=extra)
        holder = text(reply)
        # The lock its own earlier try took, its reply lost: the exact value this pickup wrote. Not the token alone:
        # the pool processes of one worker share it, and another copy of this attempt may hold the lock.
        if maybe_applied and holder == value:
            return Pickup(True, queue_released=queue_released, arguments=arguments, also=extra)
        return Pickup(False, holder, queue_released=queue_released, arguments=arguments, also=extra)

    def retake(self, key: str, owner: RunningOwner, running_ttl: float) -> Pickup:
        """Try the running lock once more, with nothing else to release (a retry's or a waiting execution's)."""
        return self.pickup(None, owner.task_id, key, owner, running_ttl)

    def release_running(self, key: str, token: str, record: Optional[FinishedRecord],
                        also: Sequence[Call] = ()) -> bool:
        """Delete the running lock ``key`` if ``token`` holds it, writing ``record`` (if any) in the same script.

        ``also``: the calls that end the call's queue-side keys (``windows``), in the same round trip.
        """
        (reply, *_), _ = self._runner.run([release_running(key, token, record, self._runner.client), *also])
        return bool(reply)

    def record_finished(self, record: FinishedRecord, also: Sequence[Call] = ()) -> None:
        """Write the finished record of an attempt that ended without the running lock (a rejected duplicate)."""
        self._runner.run([Call(RECORD_FINISHED, record.key, record.args()), *also])

    def replace(self, key: str, expected: str, value: str, ttl: float) -> bool:
        """Hand ``key`` from the owner token ``expected`` to ``value``; False if someone else holds it."""
        (reply,), _ = self._runner.run([Call(COMPARE_AND_SWAP, key, (expected, value, ms(ttl)))])
        return bool(reply)
