"""The waiting copy's operations: become it in one round trip, and hand it over with the running lock's release.

What a waiting copy is, and when an execution becomes one, is the ``waiting``
module's; these are its round trips. The copy's queue lock, its entry and the
running lock are the call's siblings (``keys.sibling``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Optional

from ..ids import waiting_token
from ..keys import QUEUE, WAITING, sibling
from ..ownership import RunningOwner
from .finished import FinishedRecord
from .locks import acquire, compare_and_delete, release_running
from .lua.locks import TAKE
from .runner import Runner
from .scripts import Call
from .values import text


class Waited(NamedTuple):
    """What an execution that became its key's waiting copy found."""

    #: The running lock was released in between, and is now this execution's: it runs now.
    running_taken: bool
    #: The running lock's holder, when it was not taken.
    holder: Optional[str]
    #: The queue lock is now this copy's: it is the key's waiting copy (else another call holds it).
    queue_taken: bool


class WaitingCopies:
    """The waiting copies of one lock store."""

    __slots__ = ("_runner",)

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def wait(self, running_key: str, owner: RunningOwner, running_ttl: float, queue_ttl: float,
             message: Optional[str], holder: str = "", since: Optional[float] = None) -> Waited:
        """Become the key's waiting copy: take the queue lock back, leave the message, try the running lock again.

        One round trip. The entry is written before the running lock is
        tried, on one connection: if the running copy still held its lock
        then, its release (which takes the entry) comes after, and hands
        the waiting copy over.

        Args:
            running_key: The running lock the execution met.
            owner: The waiting execution.
            running_ttl: The running lock's TTL, should it be taken after all.
            queue_ttl: How long the queue lock and the entry are kept.
            message: The entry's value (``waiting.entry``); None: no entry, only the safety copy brings it back.
            holder: The queue lock's value (``KeySpace.holder``; "" : the task id).
            since: When the running lock is taken, should it be, as its value says (None: now).
        """
        task_id = owner.task_id
        holder = holder or task_id
        calls = [acquire(sibling(running_key, QUEUE), holder, queue_ttl, holder, "exact")]
        if message is not None:
            calls.append(acquire(sibling(running_key, WAITING), message, queue_ttl, waiting_token(task_id), "prefix"))
        value = owner.value(since)
        calls.append(acquire(running_key, value, running_ttl))
        replies, maybe_applied = self._runner.run(calls)
        queue_taken = replies[0] == 1
        if replies[-1] == 1:
            return Waited(True, None, queue_taken)
        running_holder = text(replies[-1])
        # Its own earlier try's lock: the exact value, not the token (another copy in this worker shares that).
        if maybe_applied and running_holder == value:
            return Waited(True, None, queue_taken)
        return Waited(False, running_holder, queue_taken)

    def leave(self, running_key: str, task_id: str, holder: str = "") -> None:
        """Give back the queue lock and the entry a waiting copy took, in one round trip: it runs now after all."""
        self._runner.run([compare_and_delete(sibling(running_key, QUEUE), holder or task_id, "exact"),
                          compare_and_delete(sibling(running_key, WAITING), waiting_token(task_id), "prefix")])

    def release_taking_waiter(self, key: str, token: str, record: Optional[FinishedRecord] = None,
                              also: Sequence[Call] = ()) -> Optional[str]:
        """Release the running lock ``key`` (writing ``record``) and take its waiting copy's entry: one round trip.

        ``also``: the calls that end the call's queue-side keys (``windows``), in the same round trip.
        """
        replies, _ = self._runner.run([release_running(key, token, record, self._runner.client),
                                       Call(TAKE, sibling(key, WAITING), ()), *also])
        return text(replies[1])
