"""The bursts of a debounced key: a call joins or starts one, its message takes it, its end forgets it.

What a burst is for is ``debounce``'s; these are its round trips, each one
script (``lua.bursts``) on the key's burst hash.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional

from .lua.bursts import BURST_CALL, BURST_FORGET, BURST_TAKE, BurstCallArgs, Called, Taken
from .runner import Runner
from .scripts import Call
from .values import ms, text

#: What ``forget`` forgets: the open burst unless others joined it, the open burst, or an ended execution's.
Forget = Literal["open", "drop", "closed"]


class BurstCall(NamedTuple):
    """What a debounced call found: whether it started, joined or rescued a burst, its id, when it is due."""

    code: Called
    burst_id: str
    due_ms: int


class BurstTake(NamedTuple):
    """What a burst's message found: not due yet (``due_ms``), due (``arguments``), or no such burst."""

    code: Taken
    due_ms: int = 0
    arguments: Optional[str] = None
    #: The reply of the call that rode in the same round trip (``also``), if any.
    also: Any = None


class Bursts:
    """The debounced keys of one lock store."""

    __slots__ = ("_runner",)

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def call(self, key: str, task_id: str, *, debounce: float, most: Optional[float], arguments: str, keep: float,
             overdue: float) -> BurstCall:
        """Join the key's open burst, or start one under ``task_id``: one round trip.

        Args:
            key: The key's burst.
            task_id: The task id a new burst gets (and this call's token, should it be sent again).
            debounce: Seconds a call puts the burst's execution off.
            most: The longest a burst may put its execution off from its first call (None: no bound).
            arguments: The call's arguments (kombu JSON).
            keep: Seconds a burst is kept past its due time.
            overdue: Seconds past its due time after which a burst's message is taken for lost.
        """
        args = BurstCallArgs(task_id=task_id, debounce_ms=ms(debounce), most_ms=ms(most) if most else 0,
                             arguments=arguments, keep_ms=ms(keep), overdue_ms=ms(overdue))
        (reply,), _ = self._runner.run([Call(BURST_CALL, key, args)])
        code, burst_id, due_ms = reply
        return BurstCall(Called(int(code)), str(text(burst_id)), int(due_ms))

    def take(self, key: str, task_id: str, keep: float, also: Optional[Call] = None) -> BurstTake:
        """Close the burst ``task_id`` runs if it is due; ``keep``: seconds its arguments are kept meanwhile.

        ``also``: a call of another concern sent in the same round trip (a parked copy's claim).
        """
        replies, _ = self._runner.run([Call(BURST_TAKE, key, (task_id, ms(keep))), *((also,) if also else ())])
        reply, other = replies[0], replies[1] if also else None
        code = Taken(int(reply[0]))
        if code is Taken.NOT_DUE:
            return BurstTake(code, due_ms=int(reply[1]), also=other)
        if code is Taken.DUE:
            return BurstTake(code, arguments=text(reply[1]), also=other)
        return BurstTake(code, also=other)

    def forget(self, key: str, task_id: str, which: Forget, remember: float = 60.0) -> bool:
        """Forget the open burst ``task_id`` ("open": unless others joined it; "drop") or its execution's ("closed").

        ``remember``: seconds an ended burst's last call is still recognised, should it be sent again.
        """
        (reply,), _ = self._runner.run([Call(BURST_FORGET, key, (task_id, which, ms(remember)))])
        return bool(reply)
