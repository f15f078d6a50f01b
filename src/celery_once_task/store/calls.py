"""A call's keys beside its queue lock: take them with the queue lock, keep its lease, take and forget arguments.

What a window is for is ``windows``'s, what replaced arguments are for
``replace``'s; these are their round trips and the calls that ride in the
pickup's and the release's round trips (``lua.calls``). Each key named here
is in its queue lock's Redis Cluster hash slot (``keys.companion_key``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from . import scripts
from .locks import Acquired, compare_and_delete
from .lua.calls import ARGUMENTS_FORGET, ARGUMENTS_TAKE, ARGUMENTS_UNDO, CALL_ACQUIRE, QUEUE_LEASE
from .runner import TRANSIENT_ERRORS, Runner
from .scripts import Call
from .values import ms, text


class CallKeys(NamedTuple):
    """A call's queue-side keys and what it takes them with."""

    #: Its queue lock (None: the call takes none, and its window stands alone).
    queue: Optional[str]
    #: Its ``unique_for`` window (None: it has none).
    window: Optional[str]
    #: The key's replaced arguments (None: the call replaces nothing).
    arguments: Optional[str]
    #: The value it holds them with (``KeySpace.holder``).
    holder: str


def lease(queue_key: str, holder: str, ttl: float, how: str) -> Call:
    """The call that keeps ``holder``'s queue lock as a lease: ``how`` "set" (from now) or "extend" (at least)."""
    return Call(QUEUE_LEASE, queue_key, (holder, ms(ttl), how))


def take_arguments(queue_key: str, arguments_key: str, holder: str, keep: Optional[float], ttl: float) -> Call:
    """The pickup's call that releases (``keep`` None) or keeps as a lease the queue lock, and takes the arguments."""
    return Call(ARGUMENTS_TAKE, queue_key, (holder, "release" if keep is None else ms(keep), ms(ttl)),
                (arguments_key,))


def forget_arguments(arguments_key: str, holder: str) -> Call:
    """The call that forgets ``holder``'s replaced arguments (its execution ended, or it was revoked)."""
    return Call(ARGUMENTS_FORGET, arguments_key, (holder,))


class Calls:
    """The calls' queue-side keys of one lock store."""

    __slots__ = ("_runner",)

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def acquire(self, keys: CallKeys, token: str, queue_ttl: float, window_ttl: float,
                arguments: str = "") -> Acquired:
        """Take the queue lock and the window, or -- a duplicate -- replace the holder's arguments: one round trip.

        Args:
            keys: The call's keys.
            token: The call's task id (its replacement is known by it).
            queue_ttl: The queue lock's TTL in seconds.
            window_ttl: The window's TTL in seconds (its ``unique_for``).
            arguments: The call's arguments as kombu JSON, where it replaces a queued call's ("" : none).
        """
        runner = self._runner
        if keys.queue is None:
            # The window alone: a free one is taken by one native command, as a queue lock is.
            assert keys.window is not None
            key, ttl_ms = keys.window, ms(window_ttl)
            try:
                reply, maybe_applied = scripts.acquire_free(runner.client, key, keys.holder, ttl_ms), False
            except TRANSIENT_ERRORS as exc:
                reply, maybe_applied = runner.tries(
                    lambda: scripts.acquire_free(runner.client, key, keys.holder, ttl_ms), exc)
            if reply == 1 or (maybe_applied and text(reply) == keys.holder):
                return Acquired(True)
            return Acquired(False, text(reply), window=True)
        more = [key for key in (keys.window, keys.arguments) if key is not None]
        args = (keys.holder, ms(queue_ttl), ms(window_ttl) if keys.window else 0, arguments, token)
        (reply,), maybe_applied = runner.run([Call(CALL_ACQUIRE, keys.queue, args, more)])
        if reply == 1:
            return Acquired(True)
        holder, how = text(reply[0]), int(reply[1])
        if maybe_applied and holder == keys.holder:  # our own earlier try took it, and its reply was lost
            return Acquired(True)
        return Acquired(False, holder, window=how == 2, replaced=how == 1)

    def release(self, keys: CallKeys) -> None:
        """Give back the queue lock and the window ``keys.holder`` holds (its message could not be published).

        A duplicate may have replaced its arguments in between: they go too.
        """
        calls = [compare_and_delete(key, keys.holder, "exact") for key in (keys.queue, keys.window) if key is not None]
        if keys.arguments is not None:
            calls.append(forget_arguments(keys.arguments, keys.holder))
        self._runner.run(calls)

    def forget_arguments(self, arguments_key: str, holder: str) -> bool:
        """Forget ``holder``'s replaced arguments; whether there were any."""
        (reply,), _ = self._runner.run([forget_arguments(arguments_key, holder)])
        return bool(reply)

    def undo_replacement(self, arguments_key: str, token: str) -> bool:
        """Undo the replacement the duplicate ``token`` may have made before its reply was lost; whether it was."""
        (reply,), _ = self._runner.run([Call(ARGUMENTS_UNDO, arguments_key, (token,))])
        return bool(reply)
