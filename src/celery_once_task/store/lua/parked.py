"""The parked registry: messages the library published with a countdown, until a copy of each is taken.

See ``parking``. The registry's keys share one hash tag (``record_keys.parked_keys``):
``entries``, a hash ``<task id> -> <token>\\x1f<rescues>\\x1f<message>``,
and ``due``, a sorted set ``<task id> -> when it is due`` (server
milliseconds; a rescued entry's next rescue time, less the grace). Beside
them, ``claimed:<task id>`` names the copy that was taken (its token), for as
long as a broker may still hand an older copy out.
"""

from __future__ import annotations

import enum

from . import CLOCK_LUA, Script

# KEYS[1] entries, KEYS[2] due
# ARGV[1] the task id, ARGV[2] the publish's token, ARGV[3] the message, ARGV[4] ms until it is due
# return  the due time (server milliseconds). A parked entry of the same task id is replaced: the
#         copy that parks again is the one that runs (the other is turned away at its pickup).
PARK = Script(
    "parked_park",
    CLOCK_LUA
    + """
local due = now_ms() + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\\31' .. '0' .. '\\31' .. ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[1])
return due
""",
)


class Claimed(enum.IntEnum):
    """PARKED_CLAIM's reply code."""

    #: Another publish of this task id is the one to run (a rescued copy, or a later deferral).
    SUPERSEDED = 0
    #: This copy took its entry: it runs.
    TAKEN = 1
    #: Nothing is known of this task id (its record expired, or the store lost it): it runs.
    UNKNOWN = 2
    #: This very copy took it before (a redelivery of it, a retry of its execution): it runs.
    AGAIN = 3


# KEYS[1] entries, KEYS[2] due, KEYS[3] the task id's claimed marker
# ARGV[1] the task id, ARGV[2] the copy's token, ARGV[3] how long the marker is kept (ms)
# return  a ``Claimed`` code. Safe to send again: a second try finds its own marker (AGAIN).
PARKED_CLAIM = Script(
    "parked_claim",
    """
local id, token = ARGV[1], ARGV[2]
local value = redis.call('HGET', KEYS[1], id)
if value then
    if string.sub(value, 1, #token + 1) ~= token .. '\\31' then return 0 end
    redis.call('HDEL', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('SET', KEYS[3], token, 'PX', tonumber(ARGV[3]))
    return 1
end
local marker = redis.call('GET', KEYS[3])
if not marker then return 2 end
if marker == token then return 3 end
return 0
""",
)

# KEYS[1] entries, KEYS[2] due
# ARGV[1] grace (ms): an entry is rescued once it is due by more than this, ARGV[2] the first
#         rescue's lease (ms; doubled at each rescue of the same entry, to at most an hour),
#         ARGV[3] a fresh token (the i-th entry gets ``<token>.<i>``), ARGV[4] the most entries
# return  {{task id, new token, rescues, message}, ...}: the entries now the caller's to publish
#         again. Each is moved a lease on first: a rescuer that dies before publishing leaves it
#         to the next, and no two rescuers take one entry at once.
PARKED_RESCUE = Script(
    "parked_rescue",
    CLOCK_LUA
    + """
local now, grace, lease = now_ms(), tonumber(ARGV[1]), tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - grace, 'LIMIT', 0, tonumber(ARGV[4]))
local taken = {}
for i, id in ipairs(ids) do
    local value = redis.call('HGET', KEYS[1], id)
    if not value then
        redis.call('ZREM', KEYS[2], id)
    else
        local first = string.find(value, '\\31', 1, true)
        local second = string.find(value, '\\31', first + 1, true)
        local rescues = tonumber(string.sub(value, first + 1, second - 1)) + 1
        local message = string.sub(value, second + 1)
        local token = ARGV[3] .. '.' .. i
        redis.call('HSET', KEYS[1], id, token .. '\\31' .. rescues .. '\\31' .. message)
        local wait = math.min(lease * 2 ^ (rescues - 1), 3600000)
        redis.call('ZADD', KEYS[2], now + wait - grace, id)
        taken[#taken + 1] = {id, token, rescues, message}
    end
end
return taken
""",
)

# KEYS[1] entries, KEYS[2] due
# ARGV[1] the task id, ARGV[2] the token of the publish that failed
# return  1 if its entry was removed, else 0 (another publish parked the task id since)
PARKED_FORGET = Script(
    "parked_forget",
    """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value or string.sub(value, 1, #ARGV[2] + 1) ~= ARGV[2] .. '\\31' then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
""",
)
