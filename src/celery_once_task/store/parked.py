"""The parked registry of one lock store: park a message, claim it at pickup, rescue the overdue, forget one.

What the registry is for is ``parking``'s; these are its round trips, each
one script (``lua.parked``) on keys of one hash slot (``record_keys.parked_keys``).
"""

from __future__ import annotations

from typing import NamedTuple

from ..keys import KEY_PREFIX
from ..record_keys import parked_claimed_key, parked_keys
from .lua.parked import PARK, PARKED_CLAIM, PARKED_FORGET, PARKED_RESCUE, Claimed
from .runner import Runner
from .scripts import Call
from .values import ms, text


def claim_call(task_id: str, token: str, keep: float, prefix: str = KEY_PREFIX) -> Call:
    """The call that claims ``task_id``'s entry for the copy ``token``; ``keep``: seconds the claim is remembered."""
    entries, due = parked_keys(prefix)
    return Call(PARKED_CLAIM, entries, (task_id, token, ms(keep)), (due, parked_claimed_key(task_id, prefix)))


class Rescued(NamedTuple):
    """An overdue entry a rescuer took: its task id, the token its new copy carries, its rescues, its message."""

    task_id: str
    token: str
    rescues: int
    message: str


class ParkedMessages:
    """The parked registry of one lock store, under one ``key_prefix``."""

    __slots__ = ("_due", "_entries", "_prefix", "_runner")

    def __init__(self, runner: Runner, prefix: str = KEY_PREFIX) -> None:
        self._runner = runner
        self._prefix = prefix
        self._entries, self._due = parked_keys(prefix)

    def park(self, task_id: str, token: str, message: str, countdown: float) -> int:
        """Record a message published with ``countdown`` seconds under ``token``; its due time (server ms)."""
        (reply,), _ = self._runner.run([
            Call(PARK, self._entries, (task_id, token, message, ms(countdown)), (self._due,))])
        return int(reply)

    def claim_call(self, task_id: str, token: str, keep: float) -> Call:
        """The call that claims ``task_id``'s entry for the copy ``token`` (see ``claim``), for a round trip."""
        return claim_call(task_id, token, keep, self._prefix)

    def claim(self, task_id: str, token: str, keep: float) -> Claimed:
        """Take ``task_id``'s entry for the copy ``token``; ``keep``: seconds the claim is remembered."""
        (reply,), _ = self._runner.run([self.claim_call(task_id, token, keep)])
        return Claimed(int(reply))

    def rescue(self, grace: float, lease: float, token: str, most: int = 100) -> list[Rescued]:
        """Take the entries due more than ``grace`` seconds ago, each for ``lease`` seconds (doubling per rescue)."""
        (reply,), _ = self._runner.run([
            Call(PARKED_RESCUE, self._entries, (ms(grace), ms(lease), token, most), (self._due,))])
        return [Rescued(str(text(task_id)), str(text(new)), int(rescues), str(text(message)))
                for task_id, new, rescues, message in reply]

    def forget(self, task_id: str, token: str) -> bool:
        """Remove ``task_id``'s entry if ``token`` still parks it (its publish failed)."""
        (reply,), _ = self._runner.run([Call(PARKED_FORGET, self._entries, (task_id, token), (self._due,))])
        return bool(reply)
