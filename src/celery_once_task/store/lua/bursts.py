"""``debounce``: the bursts of calls of a debounced key (see ``debounce``)."""

from __future__ import annotations

import enum
from typing import NamedTuple

from . import CLOCK_LUA, Script

# -- debounce: bursts of calls (see ``debounce``) ----------------------------------------
#
# A debounced call's burst is a hash (``keys.limited_key(..., "burst")``), with the open
# burst's fields -- id (its task id), first, last, due (server milliseconds), count, args
# (the last call's arguments), by (the last call's token), rescued -- and, once its
# execution started and until it ends, closed:<id> -> the arguments it runs with,
# last:<id> -> the token of the call they came from, ran:<token> -> <id>; after it ended,
# prev -> "<token> <id>" of the key's latest ended burst.
#
# A call's token is the task id it would start a burst under. A call whose reply was lost
# is sent again with the same token, and must not count twice: its own open burst (id),
# the burst it is still the last call of (by), or the execution its arguments run in
# (ran:<token>, then prev) answer it as the first try was answered.

# KEYS[1] the key's burst
# ARGV[1] a new task id, ARGV[2] debounce in milliseconds, ARGV[3] debounce_max in milliseconds
# (0: none), ARGV[4] the call's arguments, ARGV[5] how long past its due time a burst is kept,
# ARGV[6] how long past its due time (and past its last rescue) a burst is taken for one whose
#         message was lost
# return  {1, id, ms until due}: a new burst, under the new task id (the caller publishes its
#         message; also to a retry whose first try started it); {0, id, ms until due}: the call
#         joined the open burst (or its first try did: it is still the last call, or its
#         arguments run); {2, id, ms}: it joined a burst whose message is overdue (the caller
#         publishes it again: at most once per ARGV[6])


class Called(enum.IntEnum):
    """BURST_CALL's reply code."""

    JOINED = 0
    STARTED = 1
    OVERDUE = 2


class BurstCallArgs(NamedTuple):
    """BURST_CALL's ARGV, in order."""

    task_id: str
    debounce_ms: int
    most_ms: int
    arguments: str
    keep_ms: int
    overdue_ms: int


BURST_CALL = Script(
    "burst_call",
    CLOCK_LUA
    + """
local burst = KEYS[1]
local token, debounce, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local arguments, keep, overdue = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local ran = redis.call('HGET', burst, 'ran:' .. token)
if ran then return {0, ran, 0} end
local prev = redis.call('HGET', burst, 'prev')
if prev and string.sub(prev, 1, #token + 1) == token .. ' ' then
    return {0, string.sub(prev, #token + 2), 0}
end
local id = redis.call('HGET', burst, 'id')
if not id then
    local due = now + debounce
    redis.call('HSET', burst, 'id', token, 'first', now, 'last', now, 'due', due, 'count', 1, 'args', arguments,
               'by', token)
    keep_at_least(burst, debounce + keep)
    return {1, token, debounce}
end
local first, due = tonumber(redis.call('HGET', burst, 'first')), tonumber(redis.call('HGET', burst, 'due'))
if id == token then return {1, id, math.max(0, due - now)} end
if redis.call('HGET', burst, 'by') == token then return {0, id, math.max(0, due - now)} end
local code = 0
local rescued = tonumber(redis.call('HGET', burst, 'rescued') or '0')
if now > math.max(due, rescued) + overdue then
    code = 2
    redis.call('HSET', burst, 'rescued', now)
end
local later = now + debounce
if most > 0 then later = math.min(later, first + most) end
later = math.max(later, due)
redis.call('HSET', burst, 'last', now, 'due', later, 'args', arguments, 'by', token)
redis.call('HINCRBY', burst, 'count', 1)
keep_at_least(burst, later - now + keep)
return {code, id, later - now}
""",
)

# KEYS[1] the key's burst
# ARGV[1] the burst's task id (this message's), ARGV[2] how long a started burst's arguments are kept
# return  {0, ms until due}: the burst is still open and not due; {1, arguments}: it is due (now
#         closed: new calls start a new burst) or was closed by a copy of this message, and runs
#         with these arguments; {2}: no such burst (lost, or ended and cleared)


class Taken(enum.IntEnum):
    """BURST_TAKE's reply code."""

    NOT_DUE = 0
    DUE = 1
    NONE = 2


BURST_TAKE = Script(
    "burst_take",
    CLOCK_LUA
    + """
local burst = KEYS[1]
local id, keep = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
if redis.call('HGET', burst, 'id') == id then
    local due = tonumber(redis.call('HGET', burst, 'due'))
    if now < due then return {0, due - now} end
    local args, by = redis.call('HGET', burst, 'args'), redis.call('HGET', burst, 'by')
    redis.call('HDEL', burst, 'id', 'first', 'last', 'due', 'count', 'args', 'by', 'rescued')
    redis.call('HSET', burst, 'closed:' .. id, args, 'last:' .. id, by, 'ran:' .. by, id)
    keep_at_least(burst, keep)
    return {1, args}
end
local closed = redis.call('HGET', burst, 'closed:' .. id)
if closed then return {1, closed} end
return {2}
""",
)

# KEYS[1] the key's burst
# ARGV[1] a burst's task id
# ARGV[2] "open": forget the open burst if it is still this one and no other call joined it (its
#         message could not be published); "drop": forget the open burst if it is still this one
#         (an operator's clear); "closed": forget the arguments its execution ran with (it ended)
# ARGV[3] with "closed": how long the ended burst's last call is remembered, if nothing else is
#         left (milliseconds: its reply may have been lost, and the call sent again)
# return  1 if something was forgotten, else 0
BURST_FORGET = Script(
    "burst_forget",
    """
local burst = KEYS[1]
local id, which, remember = ARGV[1], ARGV[2], ARGV[3]
if which == 'closed' then
    local by = redis.call('HGET', burst, 'last:' .. id)
    if by then
        redis.call('HDEL', burst, 'ran:' .. by)
        redis.call('HSET', burst, 'prev', by .. ' ' .. id)
    end
    local forgotten = redis.call('HDEL', burst, 'closed:' .. id, 'last:' .. id)
    if redis.call('HLEN', burst) == 1 and redis.call('HEXISTS', burst, 'prev') == 1 then
        redis.call('PEXPIRE', burst, remember)
    end
    return math.min(forgotten, 1)
end
if redis.call('HGET', burst, 'id') ~= id then return 0 end
-- Calls that joined it since were told they are in it: it stays, for the next call to publish
-- its message again once overdue.
if which == 'open' and tonumber(redis.call('HGET', burst, 'count')) > 1 then return 0 end
redis.call('HDEL', burst, 'id', 'first', 'last', 'due', 'count', 'args', 'by', 'rescued')
return 1
""",
)
