"""The finished record's part in the lock operations: what a pickup reads and what a release writes.

What a record means, and who decides from it, is ``redelivery``'s; here are
only the arguments the scripts take (``lua.locks.FINISHED_LUA``).
"""

from __future__ import annotations

from typing import NamedTuple

from .values import ms


class FinishedCheck(NamedTuple):
    """What a pickup reads to tell a copy of an attempt that ended."""

    key: str
    attempt: int
    call: str
    #: The record's key in the other form (``redelivery``: the legacy one), read as well; "" for none.
    other_key: str = ""

    def keys(self) -> tuple[str, ...]:
        """The record's keys, as the scripts that read one take them after their own."""
        return (self.key, self.other_key) if self.other_key else (self.key,)


class FinishedRecord(NamedTuple):
    """What a release writes: the record of an attempt that ended, and for how long."""

    key: str
    value: str
    ttl: float
    attempt: int
    call: str

    def args(self) -> tuple[str, int, int, str]:
        """The record's ARGV, as every script that writes one takes them: value, TTL (ms), attempt, call."""
        return (self.value, ms(self.ttl), self.attempt, self.call)
