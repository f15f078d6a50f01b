"""Every Lua script the library runs, each headed by its KEYS, ARGV and return: here and beside.

* ``lua.locks``: the queue and running locks, and the finished records;
* ``lua.calls``: a call's keys beside its queue lock (its window, its
  replaced arguments, its queue lock held until its run ends);
* ``lua.slots``: the slots and the line of a key with a ``running_limit``;
* ``lua.bursts``: the bursts of a debounced key;
* ``lua.parked``: the messages put off with a countdown (``parking``).

``Script`` names a script and its SHA1; how they are sent, and loaded again
after a ``SCRIPT FLUSH`` or a failover, is ``scripts``. Each script's keys
lie in one Redis Cluster hash slot.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    """A Lua script and its SHA1."""

    name: str
    source: str
    sha: str = field(init=False)
    #: ``EVALSHA sha numkeys`` packed, with the array's length, by (number of KEYS, number of ARGV).
    _heads: dict[tuple[int, int], bytes] = field(init=False, default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode("utf-8")).hexdigest())

    def head(self, keys: int, argc: int) -> bytes:
        """The start of an ``EVALSHA`` of this script on ``keys`` keys with ``argc`` arguments, packed."""
        head = self._heads.get((keys, argc))
        if head is None:
            numkeys = b"%d" % keys
            head = self._heads[(keys, argc)] = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n$%d\r\n%b\r\n" % (
                keys + argc + 3, self.sha.encode("ascii"), len(numkeys), numkeys)
        return head


#: Lua helpers of the scripts that keep time (``now_ms``: the server's clock, in milliseconds) and
#: stretch a key's TTL (``keep_at_least``: never shortens it).
CLOCK_LUA = r"""
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function keep_at_least(key, ms)
    if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
"""
