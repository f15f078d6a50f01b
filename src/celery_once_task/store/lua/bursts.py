"""``debounce``: the bursts of calls of a debounced key (see ``debounce``)."""

from __future__ import annotations

import enum
from typing import NamedTuple

from . import CLOCK_LUA, Script

# -- debounce: bursts of calls (see ``debounce``) ----------------------------------------
#
# A debounced call's burst is a hash (``keys.limited_key(..., "burst")``), with the open
# burst's fields -- i (its task id), d (when it is due, server milliseconds), a (the last
# call's arguments), and only where they say more than their absence: f (its first call,
# in milliseconds before d; kept under debounce_max alone, which bounds d by it), n (the
# calls it covers, when more than one), b (the last call's token, when not i), r (when its
# message was last published again) -- and, once its execution started and until it ends,
# C<id> -> the arguments it runs with, B<id> -> the token of the call they came from,
# T<token> -> <id>; after it ended, p -> "<token> <id>" of the key's latest ended burst.
# One-letter names and integers keep a burst of one call a small listpack (about 200 bytes
# of MEMORY USAGE).
#
# 2.0.0 spelt them id, due, args, first (a time), count, by, rescued, closed:<id>, last:<id>,
# ran:<token>, prev, and wrote last (never read): every script first renames such fields
# (``upgrade``), which a process of that release may write during a rolling deploy.
#
# A call's token is the task id it would start a burst under. A call whose reply was lost
# is sent again with the same token, and must not count twice: its own open burst (i),
# the burst it is still the last call of (b), or the execution its arguments run in
# (T<token>, then p) answer it as the first try was answered.
_UPGRADE = r"""
local function upgrade(burst)
    local fields = redis.call('HGETALL', burst)
    local renamed = {}
    local names = {id = 'i', due = 'd', args = 'a', count = 'n', by = 'b', rescued = 'r', prev = 'p'}
    local prefixes = {['closed:'] = 'C', ['last:'] = 'B', ['ran:'] = 'T'}
    local due
    for i = 1, #fields, 2 do
        if fields[i] == 'due' then due = tonumber(fields[i + 1]) end
    end
    for i = 1, #fields, 2 do
        local name, value = fields[i], fields[i + 1]
        local new = names[name]
        if not new then
            for prefix, letter in pairs(prefixes) do
                if string.sub(name, 1, #prefix) == prefix then new = letter .. string.sub(name, #prefix + 1) end
            end
        end
        if name == 'first' and due then
            new, value = 'f', due - tonumber(value)
        elseif name == 'first' or name == 'last' then
            new = ''
        end
        if new then
            renamed[#renamed + 1] = name
            if new ~= '' then redis.call('HSET', burst, new, value) end
        end
    end
    if #renamed > 0 then redis.call('HDEL', burst, unpack(renamed)) end
end
"""

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
    + _UPGRADE
    + """
local burst = KEYS[1]
local token, debounce, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local arguments, keep, overdue = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
upgrade(burst)
local ran = redis.call('HGET', burst, 'T' .. token)
if ran then return {0, ran, 0} end
local prev = redis.call('HGET', burst, 'p')
if prev and string.sub(prev, 1, #token + 1) == token .. ' ' then
    return {0, string.sub(prev, #token + 2), 0}
end
local id = redis.call('HGET', burst, 'i')
if not id then
    local due = now + debounce
    redis.call('HSET', burst, 'i', token, 'd', due, 'a', arguments)
    if most > 0 then redis.call('HSET', burst, 'f', debounce) end
    keep_at_least(burst, debounce + keep)
    return {1, token, debounce}
end
local due = tonumber(redis.call('HGET', burst, 'd'))
if id == token then return {1, id, math.max(0, due - now)} end
if (redis.call('HGET', burst, 'b') or id) == token then return {0, id, math.max(0, due - now)} end
local code = 0
local rescued = tonumber(redis.call('HGET', burst, 'r') or '0')
if now > math.max(due, rescued) + overdue then
    code = 2
    redis.call('HSET', burst, 'r', now)
end
local later = now + debounce
local before = tonumber(redis.call('HGET', burst, 'f') or '')
-- A burst started where debounce_max was not set keeps no first call: it is bounded from now on.
local first = before and due - before or now
if most > 0 then later = math.min(later, first + most) end
later = math.max(later, due)
local count = tonumber(redis.call('HGET', burst, 'n') or '1') + 1
redis.call('HSET', burst, 'd', later, 'a', arguments, 'b', token, 'n', count)
if before or most > 0 then redis.call('HSET', burst, 'f', later - first) end
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
    + _UPGRADE
    + """
local burst = KEYS[1]
local id, keep = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
upgrade(burst)
if redis.call('HGET', burst, 'i') == id then
    local due = tonumber(redis.call('HGET', burst, 'd'))
    if now < due then return {0, due - now} end
    local args, by = redis.call('HGET', burst, 'a'), redis.call('HGET', burst, 'b') or id
    redis.call('HDEL', burst, 'i', 'f', 'd', 'n', 'a', 'b', 'r')
    redis.call('HSET', burst, 'C' .. id, args, 'B' .. id, by, 'T' .. by, id)
    keep_at_least(burst, keep)
    return {1, args}
end
local closed = redis.call('HGET', burst, 'C' .. id)
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
    _UPGRADE
    + """
local burst = KEYS[1]
local id, which, remember = ARGV[1], ARGV[2], ARGV[3]
upgrade(burst)
if which == 'closed' then
    local by = redis.call('HGET', burst, 'B' .. id)
    if by then
        redis.call('HDEL', burst, 'T' .. by)
        redis.call('HSET', burst, 'p', by .. ' ' .. id)
    end
    local forgotten = redis.call('HDEL', burst, 'C' .. id, 'B' .. id)
    if redis.call('HLEN', burst) == 1 and redis.call('HEXISTS', burst, 'p') == 1 then
        redis.call('PEXPIRE', burst, remember)
    end
    return math.min(forgotten, 1)
end
if redis.call('HGET', burst, 'i') ~= id then return 0 end
-- Calls that joined it since were told they are in it: it stays, for the next call to publish
-- its message again once overdue.
if which == 'open' and tonumber(redis.call('HGET', burst, 'n') or '1') > 1 then return 0 end
redis.call('HDEL', burst, 'i', 'f', 'd', 'n', 'a', 'b', 'r')
return 1
""",
)
